//! Typed configuration: built-in defaults, then a TOML file, then `HOOKRELAY_*` environment
//! variables. Every key is documented in `docs/config.md`.

pub mod secret;

use serde::Deserialize;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use secret::{SecretBytes, SecretError};

/// The whole service configuration, as read from the file and the environment.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP listener binds.
    #[serde(default = "defaults::listen")]
    pub listen: SocketAddr,
    /// Longest time a request may wait for the store before it is answered 503.
    #[serde(default = "defaults::ack_timeout", with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// Seconds sent in `Retry-After` with a 503.
    #[serde(default = "defaults::retry_after_secs")]
    pub retry_after_secs: u32,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub worker: WorkerConfig,
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    #[serde(default)]
    pub sinks: Vec<SinkConfig>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Redis URL of the inbox and idempotency keys. When unset, the embedded store in
    /// `data_dir` is used.
    pub redis_url: Option<String>,
    /// Prefix of every key hookrelay writes, so several deployments can share one Redis.
    #[serde(default = "defaults::key_prefix")]
    pub key_prefix: String,
    /// Directory of the embedded store's database file, used when `redis_url` is unset.
    #[serde(default = "defaults::data_dir")]
    pub data_dir: PathBuf,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            redis_url: None,
            key_prefix: defaults::key_prefix(),
            data_dir: defaults::data_dir(),
        }
    }
}

/// Settings of the background worker that forwards inbox entries to sinks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// Runs the worker in this process. Turn it off for receive-only replicas.
    #[serde(default = "defaults::yes")]
    pub enabled: bool,
    /// Inbox entries claimed per read.
    #[serde(default = "defaults::batch_size")]
    pub batch_size: usize,
    /// Delivery rounds per sink before an event goes to the dead-letter stream.
    #[serde(default = "defaults::max_attempts")]
    pub max_attempts: u32,
    /// Delay before the first retry; each later retry doubles it, with jitter.
    #[serde(default = "defaults::backoff_initial", with = "humantime_serde")]
    pub backoff_initial: Duration,
    /// Upper bound of the retry delay.
    #[serde(default = "defaults::backoff_max", with = "humantime_serde")]
    pub backoff_max: Duration,
    /// How long an entry claimed by a worker may stay unacknowledged before another worker
    /// takes it over, on the assumption that its process died.
    #[serde(default = "defaults::visibility_timeout", with = "humantime_serde")]
    pub visibility_timeout: Duration,
    /// Time limit of one delivery to one sink.
    #[serde(default = "defaults::sink_timeout", with = "humantime_serde")]
    pub sink_timeout: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        toml::from_str("").expect("worker defaults deserialize from an empty table")
    }
}

/// The signature scheme a source verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SchemeKind {
    /// Makini: HMAC-SHA256 of the raw body in `X-Webhook-Signature`, hex or base64.
    Makini,
    /// Standard Webhooks, as sent by Svix and others.
    Standard,
}

/// One provider endpoint, served at `POST /webhooks/{name}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub name: String,
    pub scheme: SchemeKind,
    /// Secret references (`env:NAME` or `file:PATH`). A signature made with any of them is
    /// accepted, which is how a secret is rotated.
    pub secrets: Vec<String>,
    /// Largest accepted body in bytes.
    #[serde(default = "defaults::body_limit")]
    pub body_limit: usize,
    /// Maximum distance between a signed timestamp and the local clock, either way.
    #[serde(default = "defaults::tolerance", with = "humantime_serde")]
    pub tolerance: Duration,
    /// Headers that carry the provider's event id, tried in order after the scheme's own.
    #[serde(default)]
    pub id_headers: Vec<String>,
    /// JSON pointers (RFC 6901) to the event id in the body; the scheme's default if unset.
    pub id_pointers: Option<Vec<String>>,
    /// JSON pointer to the event type in the body; the scheme's default if unset.
    pub event_type_pointer: Option<String>,
    /// How long an event id is remembered. Longer than the provider's retry horizon.
    #[serde(default = "defaults::dedupe_window", with = "humantime_serde")]
    pub dedupe_window: Duration,
    /// How long a body hash is remembered when the event carries no id. Short, because an
    /// identical new notification inside this window is dropped as a duplicate.
    #[serde(default = "defaults::body_hash_window", with = "humantime_serde")]
    pub body_hash_window: Duration,
}

/// A downstream destination of forwarded events.
#[derive(Debug, Clone, Deserialize)]
pub struct SinkConfig {
    pub name: String,
    #[serde(flatten)]
    pub kind: SinkKind,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SinkKind {
    /// `XADD` to a Redis Stream.
    RedisStream {
        url: String,
        stream: String,
        /// Approximate stream length kept with `MAXLEN ~`; unbounded if unset.
        maxlen: Option<u64>,
        /// How long the sink remembers an event id, so a re-sent event is not added twice.
        #[serde(default = "defaults::dedupe_window", with = "humantime_serde")]
        dedupe_window: Duration,
    },
}

/// Sends the events of one source whose type matches one of `events` to every sink in `sinks`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub source: String,
    /// Event-type globs such as `work_orders.*`; `*` matches every event.
    #[serde(default = "defaults::all_events")]
    pub events: Vec<String>,
    pub sinks: Vec<String>,
}

/// A configuration that cannot be served, with the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: String,
        source: Box<toml::de::Error>,
    },
    #[error("invalid value {value:?} in environment variable {name}: {reason}")]
    Env {
        name: &'static str,
        value: String,
        reason: String,
    },
    #[error("source {source_name:?}, secret {index}: {error}")]
    Secret {
        source_name: String,
        index: usize,
        error: SecretError,
    },
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Loads defaults, then the file at `path` if given, then the environment, and checks
    /// that the result can be served.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let text = match path {
            Some(path) => std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.display().to_string(),
                source,
            })?,
            None => String::new(),
        };
        let display = path.map_or_else(|| "(defaults)".to_owned(), |p| p.display().to_string());
        let mut config = Self::from_toml(&text).map_err(|source| ConfigError::Parse {
            path: display,
            source: Box::new(source),
        })?;
        config.apply_env(|name| std::env::var(name).ok())?;
        config.validate()?;
        Ok(config)
    }

    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// Applies the `HOOKRELAY_*` overrides. `lookup` reads one variable, so tests need not
    /// touch the process environment.
    pub fn apply_env(
        &mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        if let Some(value) = lookup("HOOKRELAY_LISTEN") {
            self.listen =
                value
                    .parse()
                    .map_err(|e: std::net::AddrParseError| ConfigError::Env {
                        name: "HOOKRELAY_LISTEN",
                        value,
                        reason: e.to_string(),
                    })?;
        }
        if let Some(value) = lookup("HOOKRELAY_REDIS_URL") {
            self.store.redis_url = Some(value).filter(|url| !url.is_empty());
        }
        if let Some(value) = lookup("HOOKRELAY_DATA_DIR").filter(|dir| !dir.is_empty()) {
            self.store.data_dir = PathBuf::from(value);
        }
        if let Some(value) = lookup("HOOKRELAY_ACK_TIMEOUT") {
            self.ack_timeout = humantime::parse_duration(&value).map_err(|e| ConfigError::Env {
                name: "HOOKRELAY_ACK_TIMEOUT",
                value,
                reason: e.to_string(),
            })?;
        }
        Ok(())
    }

    /// Checks the references between sections and the bounds no deserializer can express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |message: String| Err(ConfigError::Invalid(message));

        // A provider waits 10 s at most (Makini, GitHub); an answer after that is a failure
        // whatever it says, and the provider sends the event again.
        if self.ack_timeout.is_zero() || self.ack_timeout >= Duration::from_secs(10) {
            return invalid(format!(
                "ack_timeout must be above zero and below 10s, got {}",
                humantime::format_duration(self.ack_timeout)
            ));
        }
        if self.worker.batch_size == 0 || self.worker.max_attempts == 0 {
            return invalid("worker.batch_size and worker.max_attempts must be at least 1".into());
        }

        let mut source_names = HashSet::new();
        for source in &self.sources {
            if !is_valid_name(&source.name) {
                return invalid(format!(
                    "source name {:?} must be 1-64 characters of letters, digits, '-' and '_'",
                    source.name
                ));
            }
            if !source_names.insert(source.name.as_str()) {
                return invalid(format!("source {:?} is defined twice", source.name));
            }
            if source.secrets.is_empty() {
                return invalid(format!("source {:?} has no secrets", source.name));
            }
            if source.body_limit == 0 {
                return invalid(format!(
                    "source {:?}: body_limit must be above 0",
                    source.name
                ));
            }
        }

        let mut sink_names = HashSet::new();
        for sink in &self.sinks {
            if !is_valid_name(&sink.name) {
                return invalid(format!(
                    "sink name {:?} must be 1-64 characters of letters, digits, '-' and '_'",
                    sink.name
                ));
            }
            if !sink_names.insert(sink.name.as_str()) {
                return invalid(format!("sink {:?} is defined twice", sink.name));
            }
        }

        for route in &self.routes {
            if !source_names.contains(route.source.as_str()) {
                return invalid(format!("route names unknown source {:?}", route.source));
            }
            if let Some(sink) = route
                .sinks
                .iter()
                .find(|s| !sink_names.contains(s.as_str()))
            {
                return invalid(format!(
                    "route for source {:?} names unknown sink {sink:?}",
                    route.source
                ));
            }
        }
        Ok(())
    }
}

/// Names appear in URLs and Redis keys, so they are kept to a safe alphabet.
fn is_valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

mod defaults {
    use std::net::SocketAddr;
    use std::path::PathBuf;
    use std::time::Duration;

    pub fn listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 8080))
    }
    pub fn ack_timeout() -> Duration {
        Duration::from_secs(3)
    }
    pub fn retry_after_secs() -> u32 {
        5
    }
    pub fn key_prefix() -> String {
        "hookrelay".into()
    }
    pub fn data_dir() -> PathBuf {
        PathBuf::from("./data")
    }
    pub fn yes() -> bool {
        true
    }
    pub fn batch_size() -> usize {
        64
    }
    pub fn max_attempts() -> u32 {
        10
    }
    pub fn backoff_initial() -> Duration {
        Duration::from_secs(1)
    }
    pub fn backoff_max() -> Duration {
        Duration::from_secs(600)
    }
    pub fn visibility_timeout() -> Duration {
        Duration::from_secs(60)
    }
    pub fn sink_timeout() -> Duration {
        Duration::from_secs(10)
    }
    /// GitHub sends bodies of up to 25 MB; a little above that.
    pub fn body_limit() -> usize {
        32 * 1024 * 1024
    }
    pub fn tolerance() -> Duration {
        Duration::from_secs(300)
    }
    /// Makini retries for up to 24 h and Standard Webhooks' schedule spans about 75 h.
    pub fn dedupe_window() -> Duration {
        Duration::from_secs(72 * 3600)
    }
    pub fn body_hash_window() -> Duration {
        Duration::from_secs(5 * 60)
    }
    pub fn all_events() -> Vec<String> {
        vec!["*".into()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
        listen = "127.0.0.1:9000"
        [store]
        redis_url = "redis://127.0.0.1:6379"
        [[sources]]
        name = "makini"
        scheme = "makini"
        secrets = ["env:MAKINI_WEBHOOK_SECRET"]
        [[sinks]]
        name = "events"
        type = "redis_stream"
        url = "redis://127.0.0.1:6379"
        stream = "makini.events"
        [[routes]]
        source = "makini"
        events = ["*"]
        sinks = ["events"]
    "#;

    #[test]
    fn example_parses_with_defaults() {
        let config = Config::from_toml(EXAMPLE).unwrap();
        config.validate().unwrap();
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(
            config.sources[0].dedupe_window,
            Duration::from_secs(72 * 3600)
        );
        assert_eq!(config.sources[0].body_hash_window, Duration::from_secs(300));
        assert_eq!(config.worker.max_attempts, 10);
    }

    #[test]
    fn env_overrides_file() {
        let mut config = Config::from_toml(EXAMPLE).unwrap();
        config
            .apply_env(|name| match name {
                "HOOKRELAY_LISTEN" => Some("0.0.0.0:8081".into()),
                "HOOKRELAY_REDIS_URL" => Some("redis://127.0.0.1:7000".into()),
                _ => None,
            })
            .unwrap();
        assert_eq!(config.listen.to_string(), "0.0.0.0:8081");
        assert_eq!(
            config.store.redis_url.as_deref(),
            Some("redis://127.0.0.1:7000")
        );
    }

    #[test]
    fn data_dir_defaults_to_data() {
        let config = Config::from_toml("").unwrap();
        assert_eq!(config.store.data_dir, PathBuf::from("./data"));
        assert_eq!(config.store.redis_url, None);
    }

    #[test]
    fn data_dir_env_overrides_file() {
        let mut config = Config::from_toml("[store]\ndata_dir = \"/srv/file\"").unwrap();
        assert_eq!(config.store.data_dir, PathBuf::from("/srv/file"));
        config
            .apply_env(|name| (name == "HOOKRELAY_DATA_DIR").then(|| "/srv/env".into()))
            .unwrap();
        assert_eq!(config.store.data_dir, PathBuf::from("/srv/env"));
    }

    #[test]
    fn bad_env_value_names_the_variable() {
        let mut config = Config::from_toml(EXAMPLE).unwrap();
        let err = config
            .apply_env(|name| (name == "HOOKRELAY_LISTEN").then(|| "nowhere".into()))
            .unwrap_err();
        assert!(err.to_string().contains("HOOKRELAY_LISTEN"), "{err}");
    }

    #[test]
    fn route_to_unknown_sink_is_rejected() {
        let text = EXAMPLE.replace(r#"sinks = ["events"]"#, r#"sinks = ["nowhere"]"#);
        let err = Config::from_toml(&text).unwrap().validate().unwrap_err();
        assert!(err.to_string().contains("nowhere"), "{err}");
    }

    #[test]
    fn unknown_key_is_rejected() {
        let text = format!("listne = \"127.0.0.1:1\"\n{EXAMPLE}");
        assert!(Config::from_toml(&text).is_err());
    }

    #[test]
    fn ack_timeout_must_stay_below_ten_seconds() {
        let text = format!("ack_timeout = \"10s\"\n{EXAMPLE}");
        let err = Config::from_toml(&text).unwrap().validate().unwrap_err();
        assert!(err.to_string().contains("ack_timeout"), "{err}");
    }
}
