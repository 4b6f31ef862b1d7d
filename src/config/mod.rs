//! Typed configuration: built-in defaults, then a TOML file, then `HOOKRELAY_*` environment
//! variables. Every key is documented in `docs/config.md`.

pub mod secret;

use ipnet::IpNet;
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
    /// Maximum time a request waits for the store before it gets a 503 response.
    #[serde(default = "defaults::ack_timeout", with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// Maximum time a client may take to send the request body. A stalled client gets a 408.
    #[serde(default = "defaults::body_timeout", with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Maximum time a request may take to send its headers.
    #[serde(default = "defaults::header_timeout", with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Maximum silence from a client before its connection is closed, whether it is between
    /// requests or inside one. Longer than `ack_timeout`, so no request waiting for its
    /// response is cut.
    #[serde(default = "defaults::idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Connections open at once; more are closed as they arrive.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    /// Time open connections get to finish their requests after a shutdown signal.
    #[serde(default = "defaults::shutdown_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Bytes of request bodies held in memory at once, over every connection. A request whose
    /// body would go past it gets a 503 with `Retry-After`.
    #[serde(default = "defaults::max_body_memory")]
    pub max_body_memory: usize,
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
    /// Addresses of proxies whose `X-Forwarded-For` header is believed; a request from any
    /// other peer is judged by its own address.
    #[serde(default, deserialize_with = "ip_ranges::deserialize")]
    pub trusted_proxies: Vec<IpNet>,
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
    /// Inbox entries in flight at once.
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
    /// Retryable failures of one sink in a row that pause it; 0 never pauses.
    #[serde(default = "defaults::pause_after_failures")]
    pub pause_after_failures: u32,
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
    /// GitHub: `X-Hub-Signature-256: sha256=<hex>` over the raw body.
    Github,
    /// Stripe: `Stripe-Signature: t=<ts>,v1=<hex>` over `<ts>.<body>`.
    Stripe,
    /// Shopify: base64 HMAC-SHA256 of the raw body in `X-Shopify-Hmac-Sha256`.
    Shopify,
    /// Slack: `X-Slack-Signature: v0=<hex>` over `v0:<ts>:<body>`.
    Slack,
    /// Twilio: base64 HMAC-SHA1 over the public URL and the sorted form parameters.
    Twilio,
    /// A generic HMAC configured by the source's `hmac` table.
    Hmac,
    /// No verification at all; for local testing only, and logged as a warning at startup.
    None,
}

impl SchemeKind {
    /// Every scheme with its config name.
    pub const ALL: [(&'static str, SchemeKind); 9] = [
        ("makini", Self::Makini),
        ("standard", Self::Standard),
        ("github", Self::Github),
        ("stripe", Self::Stripe),
        ("shopify", Self::Shopify),
        ("slack", Self::Slack),
        ("twilio", Self::Twilio),
        ("hmac", Self::Hmac),
        ("none", Self::None),
    ];

    /// Returns the name used in config files and on the command line.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, kind)| *kind == self)
            .map_or("unknown", |(name, _)| name)
    }
}

impl std::str::FromStr for SchemeKind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .iter()
            .find(|(name, _)| *name == text)
            .map(|(_, kind)| *kind)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|(name, _)| *name).collect();
                format!(
                    "unknown scheme {text:?}; expected one of {}",
                    names.join(", ")
                )
            })
    }
}

/// Hash function of the generic `hmac` scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum HmacAlgorithm {
    #[serde(rename = "sha1", alias = "sha-1")]
    Sha1,
    #[default]
    #[serde(rename = "sha256", alias = "sha-256")]
    Sha256,
    #[serde(rename = "sha512", alias = "sha-512")]
    Sha512,
}

/// Text encoding of a signature in a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignatureEncoding {
    #[default]
    Hex,
    Base64,
}

/// Content the generic `hmac` scheme signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignedContent {
    /// The raw body alone.
    #[default]
    Body,
    /// The timestamp header's value, the separator, then the raw body.
    TimestampBody,
}

/// Settings of the generic `hmac` scheme.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HmacConfig {
    /// Header that carries the signature; matched case-insensitively.
    pub header: String,
    /// Text before the encoded signature in the header value, such as `sha256=`.
    #[serde(default)]
    pub prefix: String,
    #[serde(default)]
    pub algorithm: HmacAlgorithm,
    #[serde(default)]
    pub encoding: SignatureEncoding,
    #[serde(default)]
    pub signed_content: SignedContent,
    /// Header with the Unix timestamp in seconds; required with `timestamp_body`.
    pub timestamp_header: Option<String>,
    /// Bytes between the timestamp and the body in the signed content.
    #[serde(default = "defaults::separator")]
    pub separator: String,
}

/// One provider endpoint, served at `POST /webhooks/{name}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub name: String,
    pub scheme: SchemeKind,
    /// Secret references (`env:NAME` or `file:PATH`). A signature made with any of them is
    /// accepted, which is how a secret is rotated. Required unless the scheme is `none`.
    #[serde(default, deserialize_with = "secret_references")]
    pub secrets: Vec<String>,
    /// URL the provider posts to, as the provider addresses it (the `twilio` scheme signs it).
    pub public_url: Option<String>,
    /// Settings of the `hmac` scheme.
    pub hmac: Option<HmacConfig>,
    /// Accepted media types, such as `application/json`; `type/*` and `*/*` match more.
    /// Parameters such as `charset` are ignored. The scheme's default if unset.
    pub content_types: Option<Vec<String>>,
    /// Accepted `Content-Encoding` values, from `identity`, `gzip`, `x-gzip` and `deflate`. A
    /// compressed body is decoded, then verified and stored.
    #[serde(default = "defaults::content_encodings")]
    pub content_encodings: Vec<String>,
    /// Client address ranges allowed to post, as CIDR ranges or single addresses; any
    /// address if unset.
    #[serde(default, deserialize_with = "ip_ranges::deserialize_option")]
    pub allowed_ips: Option<Vec<IpNet>>,
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

/// A downstream destination of forwarded events. Every sink is documented in `docs/sinks.md`.
#[derive(Debug, Clone, Deserialize)]
pub struct SinkConfig {
    pub name: String,
    /// Deliveries to this sink in flight at once, across all events.
    #[serde(default = "defaults::sink_concurrency")]
    pub concurrency: usize,
    /// Time limit of one delivery to this sink, the wait for a free concurrency slot included;
    /// `worker.sink_timeout` when unset.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    #[serde(flatten)]
    pub kind: SinkKind,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
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
    /// Publish to NATS JetStream and wait for the stream's acknowledgement.
    Nats {
        /// Server URL such as `nats://127.0.0.1:4222`.
        url: String,
        /// Subject template; `{source}` and `{event}` are replaced per event.
        subject: String,
        /// Creates `stream` on first use when it does not exist.
        #[serde(default)]
        create_stream: bool,
        /// Name of the stream to create; required with `create_stream`.
        stream: Option<String>,
        /// Subjects of the created stream; derived from `subject` when unset.
        stream_subjects: Option<Vec<String>>,
        /// Duplicate window of the created stream.
        #[serde(default = "defaults::nats_duplicate_window", with = "humantime_serde")]
        duplicate_window: Duration,
    },
    /// Publish to a RabbitMQ (AMQP 0-9-1) exchange with publisher confirms.
    Amqp {
        /// Broker URL such as `amqp://guest:guest@127.0.0.1:5672/%2f`.
        url: String,
        /// Exchange name; the empty string is the default exchange.
        exchange: String,
        /// Routing-key template; `{source}` and `{event}` are replaced per event.
        routing_key: String,
        /// Publishes with the mandatory flag, so a message no queue receives fails the
        /// delivery instead of vanishing.
        #[serde(default = "defaults::yes")]
        mandatory: bool,
    },
    /// POST to an HTTP endpoint, signed with the Standard Webhooks scheme.
    Http {
        url: String,
        /// Signing secret reference (`env:NAME` or `file:PATH`) whose value is a Standard
        /// Webhooks secret, `whsec_` followed by base64.
        secret: String,
        /// Request body: the original payload or a JSON envelope.
        #[serde(default)]
        body: HttpBody,
    },
    /// Appends one JSON envelope per line to a local file, for trying hookrelay without a
    /// broker.
    File { path: std::path::PathBuf },
}

/// Body of the requests of an `http` sink.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpBody {
    /// The body exactly as the provider sent it.
    #[default]
    Payload,
    /// A JSON object with the event's id, source, type, receipt time and payload.
    Envelope,
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
    /// The message names the key but the file's line is not quoted, as it may hold a secret
    /// pasted by mistake.
    #[error("invalid config file {path}, line {line}: {message}")]
    Parse {
        path: String,
        line: usize,
        message: String,
    },
    #[error("invalid value {value:?} in environment variable {name}: {reason}")]
    Env {
        name: &'static str,
        value: String,
        reason: String,
    },
    #[error("source {source_name:?}, secrets[{index}]: {error}")]
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
        let mut config = Self::from_toml(&text).map_err(|error| ConfigError::Parse {
            path: display,
            line: error
                .span()
                .map_or(0, |span| text[..span.start].matches('\n').count() + 1),
            message: error.message().trim_end().to_owned(),
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

        // A provider waits 10 s at most (Makini, GitHub). A response after that counts as a failure
        // whatever its status, so the provider sends the event again.
        if self.ack_timeout.is_zero() || self.ack_timeout >= Duration::from_secs(10) {
            return invalid(format!(
                "ack_timeout must be above zero and below 10s, got {}",
                humantime::format_duration(self.ack_timeout)
            ));
        }
        if self.body_timeout.is_zero() || self.header_timeout.is_zero() {
            return invalid("body_timeout and header_timeout must be above zero".into());
        }
        if self.idle_timeout <= self.ack_timeout {
            return invalid(format!(
                "idle_timeout must be longer than ack_timeout ({}), got {}",
                humantime::format_duration(self.ack_timeout),
                humantime::format_duration(self.idle_timeout)
            ));
        }
        if self.max_connections == 0 {
            return invalid("max_connections must be at least 1".into());
        }
        if self.max_body_memory == 0 || self.max_body_memory > tokio::sync::Semaphore::MAX_PERMITS {
            return invalid(format!(
                "max_body_memory must be between 1 and {} bytes, got {}",
                tokio::sync::Semaphore::MAX_PERMITS,
                self.max_body_memory
            ));
        }
        if self.worker.backoff_initial.is_zero()
            || self.worker.backoff_initial > self.worker.backoff_max
        {
            return invalid(format!(
                "worker.backoff_initial must be above zero and at most worker.backoff_max ({}), got {}",
                humantime::format_duration(self.worker.backoff_max),
                humantime::format_duration(self.worker.backoff_initial)
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
            validate_scheme_settings(source)?;
            if source.body_limit == 0 {
                return invalid(format!(
                    "source {:?}: body_limit must be above 0",
                    source.name
                ));
            }
            // A compressed body keeps its compressed and its decoded bytes in memory at once.
            let compressed = source
                .content_encodings
                .iter()
                .any(|coding| !coding.eq_ignore_ascii_case("identity"));
            let needed = match compressed {
                true => source.body_limit.saturating_mul(2),
                false => source.body_limit,
            };
            if needed > self.max_body_memory {
                let reason = match compressed {
                    true => ", twice body_limit because the source accepts compressed bodies",
                    false => "",
                };
                return invalid(format!(
                    "source {:?}: body_limit of {} bytes needs max_body_memory of at least \
                     {needed} bytes{reason}, got {}; raise max_body_memory or lower body_limit",
                    source.name, source.body_limit, self.max_body_memory
                ));
            }
            if source.dedupe_window.is_zero() || source.body_hash_window.is_zero() {
                return invalid(format!(
                    "source {:?}: dedupe_window and body_hash_window must be above zero",
                    source.name
                ));
            }
            // A pointer without the leading '/' never matches, which would silently fall back
            // to the short body-hash window.
            let pointers = source.id_pointers.iter().flatten();
            if let Some(pointer) = pointers
                .chain(source.event_type_pointer.as_ref())
                .find(|p| !p.is_empty() && !p.starts_with('/'))
            {
                return invalid(format!(
                    "source {:?}: JSON pointer {pointer:?} must start with '/', e.g. \"/{pointer}\"",
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
            if sink.concurrency == 0 {
                return invalid(format!(
                    "sink {:?}: concurrency must be at least 1",
                    sink.name
                ));
            }
            // A delivery still running when the visibility timeout ends is taken over by
            // another worker, which sends the event a second time.
            let timeout = sink.timeout.unwrap_or(self.worker.sink_timeout);
            if timeout.is_zero() || timeout >= self.worker.visibility_timeout {
                return invalid(format!(
                    "sink {:?}: timeout must be above zero and below worker.visibility_timeout ({}), got {}",
                    sink.name,
                    humantime::format_duration(self.worker.visibility_timeout),
                    humantime::format_duration(timeout)
                ));
            }
        }

        for route in &self.routes {
            if !source_names.contains(route.source.as_str()) {
                return invalid(format!("route names unknown source {:?}", route.source));
            }
            if route.sinks.is_empty() || route.events.is_empty() {
                return invalid(format!(
                    "route for source {:?} needs at least one sink and one event glob",
                    route.source
                ));
            }
            for pattern in &route.events {
                globset::Glob::new(pattern).map_err(|e| {
                    ConfigError::Invalid(format!(
                        "route for source {:?}: invalid event glob {pattern:?}: {e}",
                        route.source
                    ))
                })?;
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

/// Checks that a source has the settings its scheme needs, and none that it would ignore.
fn validate_scheme_settings(source: &SourceConfig) -> Result<(), ConfigError> {
    let name = &source.name;
    let scheme = source.scheme;
    let invalid =
        |message: String| Err(ConfigError::Invalid(format!("source {name:?}: {message}")));

    match (scheme, source.secrets.is_empty()) {
        (SchemeKind::None, false) => {
            return invalid("scheme \"none\" verifies nothing, so it takes no secrets".into());
        }
        (SchemeKind::None, true) => {}
        (_, true) => return invalid("has no secrets".into()),
        (_, false) => {}
    }
    match (scheme, &source.public_url) {
        (SchemeKind::Twilio, None) => {
            return invalid("scheme \"twilio\" needs public_url, the URL Twilio posts to".into());
        }
        (SchemeKind::Twilio, Some(_)) | (_, None) => {}
        (_, Some(_)) => return invalid("public_url is only used by scheme \"twilio\"".into()),
    }
    match (scheme, &source.hmac) {
        (SchemeKind::Hmac, None) => return invalid("scheme \"hmac\" needs an [hmac] table".into()),
        (SchemeKind::Hmac, Some(_)) | (_, None) => {}
        (_, Some(_)) => return invalid("the hmac table is only used by scheme \"hmac\"".into()),
    }
    if source.content_encodings.is_empty() {
        return invalid("content_encodings must list at least one encoding".into());
    }
    if let Some(coding) = source
        .content_encodings
        .iter()
        .find(|coding| !crate::receive::is_supported_encoding(coding))
    {
        return invalid(format!(
            "content_encodings: {coding:?} is not supported; use any of {}",
            crate::receive::SUPPORTED_ENCODINGS.join(", ")
        ));
    }
    if source.content_types.as_ref().is_some_and(Vec::is_empty) {
        return invalid("content_types must list at least one media type".into());
    }
    Ok(())
}

/// Reads address ranges written as CIDR (`10.0.0.0/8`) or as one address (`15.204.75.108`).
mod ip_ranges {
    use ipnet::IpNet;
    use serde::{Deserialize, Deserializer, de::Error};
    use std::net::IpAddr;

    pub fn parse(text: &str) -> Result<IpNet, String> {
        if let Ok(range) = text.parse::<IpNet>() {
            return Ok(range.trunc());
        }
        text.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
            format!(
                "invalid address range {text:?}; expected CIDR such as 10.0.0.0/8, or an address"
            )
        })
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<IpNet>, D::Error> {
        Vec::<String>::deserialize(deserializer)?
            .iter()
            .map(|text| parse(text).map_err(D::Error::custom))
            .collect()
    }

    pub fn deserialize_option<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Vec<IpNet>>, D::Error> {
        deserialize(deserializer).map(Some)
    }
}

/// Reads `secrets` as a list of strings. A single string is rejected without repeating it,
/// because it is most likely a secret pasted in place of a reference.
fn secret_references<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<String>, D::Error> {
    struct References;

    impl<'de> serde::de::Visitor<'de> for References {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a list of \"env:NAME\" or \"file:PATH\" references")
        }

        fn visit_str<E: serde::de::Error>(self, _value: &str) -> Result<Self::Value, E> {
            Err(E::custom(
                "secrets must be a list of references such as [\"env:MAKINI_WEBHOOK_SECRET\"]",
            ))
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut references = Vec::new();
            while let Some(reference) = seq.next_element::<String>()? {
                references.push(reference);
            }
            Ok(references)
        }
    }

    deserializer.deserialize_any(References)
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
    /// Long enough for a 32 MiB body over a slow link, short enough to free a stalled
    /// connection's buffer.
    pub fn body_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub fn header_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn idle_timeout() -> Duration {
        Duration::from_secs(30)
    }
    /// Below the common default limit of 1024 open files, which also covers store and sink
    /// connections.
    pub fn max_connections() -> usize {
        768
    }
    /// Sixteen bodies at the default `body_limit` of 32 MiB.
    pub fn max_body_memory() -> usize {
        512 * 1024 * 1024
    }
    pub fn shutdown_grace() -> Duration {
        Duration::from_secs(10)
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
        256
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
    pub fn pause_after_failures() -> u32 {
        3
    }
    pub fn sink_concurrency() -> usize {
        64
    }
    /// Above the default `worker.backoff_max` (10 min), so a retry after a lost
    /// acknowledgement still falls inside the window.
    pub fn nats_duplicate_window() -> Duration {
        Duration::from_secs(15 * 60)
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
    pub fn separator() -> String {
        ".".into()
    }
    /// Providers send bodies as they are; a compressed body would need decoding before any
    /// JSON pointer could read it.
    pub fn content_encodings() -> Vec<String> {
        vec!["identity".into()]
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
    fn literal_secret_is_not_echoed() {
        let text = EXAMPLE.replace(
            r#"secrets = ["env:MAKINI_WEBHOOK_SECRET"]"#,
            r#"secrets = "mk-Literal-Secret-777""#,
        );
        let error = Config::from_toml(&text).unwrap_err();
        assert!(
            !error.message().contains("Literal-Secret"),
            "{}",
            error.message()
        );
        assert!(error.message().contains("env:"), "{}", error.message());
    }

    #[test]
    fn pointer_without_slash_is_rejected() {
        let text = EXAMPLE.replace(
            r#"secrets = ["env:MAKINI_WEBHOOK_SECRET"]"#,
            "secrets = [\"env:X\"]\nid_pointers = [\"id\"]",
        );
        let err = Config::from_toml(&text).unwrap().validate().unwrap_err();
        assert!(err.to_string().contains("\"/id\""), "{err}");
    }

    #[test]
    fn route_without_sinks_is_rejected() {
        let text = EXAMPLE.replace(r#"sinks = ["events"]"#, "sinks = []");
        let err = Config::from_toml(&text).unwrap().validate().unwrap_err();
        assert!(err.to_string().contains("at least one sink"), "{err}");
    }

    #[test]
    fn unknown_key_is_rejected() {
        let text = format!("listne = \"127.0.0.1:1\"\n{EXAMPLE}");
        assert!(Config::from_toml(&text).is_err());
    }

    fn with_source(source: &str) -> Result<Config, String> {
        let text = format!("[[sources]]\nname = \"src\"\n{source}");
        let config = Config::from_toml(&text).map_err(|e| e.to_string())?;
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }

    #[test]
    fn scheme_none_takes_no_secrets() {
        assert!(with_source("scheme = \"none\"").is_ok());
        let err = with_source("scheme = \"none\"\nsecrets = [\"env:X\"]").unwrap_err();
        assert!(err.contains("none"), "{err}");
    }

    #[test]
    fn missing_scheme_is_rejected() {
        let err = with_source("secrets = [\"env:X\"]").unwrap_err();
        assert!(err.contains("scheme"), "{err}");
    }

    #[test]
    fn signing_scheme_needs_secrets() {
        let err = with_source("scheme = \"github\"").unwrap_err();
        assert!(err.contains("no secrets"), "{err}");
    }

    #[test]
    fn twilio_needs_public_url() {
        let err = with_source("scheme = \"twilio\"\nsecrets = [\"env:X\"]").unwrap_err();
        assert!(err.contains("public_url"), "{err}");
        let ok = "scheme = \"twilio\"\nsecrets = [\"env:X\"]\npublic_url = \"https://h.example/t\"";
        assert!(with_source(ok).is_ok());
    }

    #[test]
    fn public_url_on_other_scheme_is_rejected() {
        let text =
            "scheme = \"github\"\nsecrets = [\"env:X\"]\npublic_url = \"https://h.example/t\"";
        let err = with_source(text).unwrap_err();
        assert!(err.contains("public_url"), "{err}");
    }

    #[test]
    fn hmac_table_parses_with_defaults() {
        let text = "scheme = \"hmac\"\nsecrets = [\"env:X\"]\n[sources.hmac]\nheader = \"X-Sig\"";
        let config = with_source(text).unwrap();
        let hmac = config.sources[0].hmac.as_ref().unwrap();
        assert_eq!(hmac.algorithm, HmacAlgorithm::Sha256);
        assert_eq!(hmac.encoding, SignatureEncoding::Hex);
        assert_eq!(hmac.signed_content, SignedContent::Body);
        assert_eq!(hmac.separator, ".");
    }

    #[test]
    fn hmac_scheme_needs_its_table() {
        let err = with_source("scheme = \"hmac\"\nsecrets = [\"env:X\"]").unwrap_err();
        assert!(err.contains("hmac"), "{err}");
    }

    #[test]
    fn allowed_ips_take_ranges_and_addresses() {
        let text = "scheme = \"makini\"\nsecrets = [\"env:X\"]\n\
                    allowed_ips = [\"15.204.75.108\", \"10.0.0.0/8\", \"2001:db8::/32\"]";
        let config = with_source(text).unwrap();
        let ranges = config.sources[0].allowed_ips.as_ref().unwrap();
        assert_eq!(ranges[0].to_string(), "15.204.75.108/32");
        assert_eq!(ranges[1].to_string(), "10.0.0.0/8");
        assert_eq!(ranges[2].to_string(), "2001:db8::/32");
    }

    #[test]
    fn body_limit_must_fit_body_memory() {
        let base = "scheme = \"makini\"\nsecrets = [\"env:X\"]\nbody_limit = 1000\n";
        let fits = |memory: usize, extra: &str| {
            let text =
                format!("max_body_memory = {memory}\n[[sources]]\nname = \"src\"\n{base}{extra}");
            let config = Config::from_toml(&text).map_err(|e| e.to_string())?;
            config.validate().map_err(|e| e.to_string())
        };
        assert!(fits(1000, "").is_ok());
        let err = fits(999, "").unwrap_err();
        assert!(err.contains("at least 1000 bytes"), "{err}");
        let gzip = "content_encodings = [\"identity\", \"gzip\"]";
        assert!(fits(2000, gzip).is_ok());
        let err = fits(1999, gzip).unwrap_err();
        assert!(err.contains("at least 2000 bytes"), "{err}");
        let err = fits(0, "").unwrap_err();
        assert!(err.contains("max_body_memory must be between 1"), "{err}");
    }

    #[test]
    fn unsupported_encoding_is_rejected() {
        let base = "scheme = \"makini\"\nsecrets = [\"env:X\"]\n";
        let config = with_source(&format!(
            "{base}content_encodings = [\"identity\", \"GZIP\"]"
        ));
        assert!(config.is_ok(), "{config:?}");
        let err =
            with_source(&format!("{base}content_encodings = [\"gzip\", \"br\"]")).unwrap_err();
        assert!(err.contains("\"br\" is not supported"), "{err}");
        assert!(err.contains("identity, gzip, x-gzip, deflate"), "{err}");
    }

    #[test]
    fn invalid_address_range_is_rejected() {
        let text = "scheme = \"makini\"\nsecrets = [\"env:X\"]\nallowed_ips = [\"10.0.0.0/33\"]";
        let err = with_source(text).unwrap_err();
        assert!(err.contains("10.0.0.0/33"), "{err}");
    }

    #[test]
    fn trusted_proxies_parse() {
        let config =
            Config::from_toml("trusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\"]").unwrap();
        assert_eq!(config.trusted_proxies.len(), 2);
    }

    #[test]
    fn scheme_names_round_trip() {
        for (name, kind) in SchemeKind::ALL {
            assert_eq!(name.parse::<SchemeKind>(), Ok(kind));
            assert_eq!(kind.name(), name);
        }
        assert!("svix".parse::<SchemeKind>().is_err());
    }

    const BROKER_SINKS: &str = r#"
        [[sinks]]
        name = "bus"
        type = "nats"
        url = "nats://127.0.0.1:4222"
        subject = "makini.{event}"
        create_stream = true
        stream = "MAKINI"
        concurrency = 4
        timeout = "2s"
        [[sinks]]
        name = "rabbit"
        type = "amqp"
        url = "amqp://guest:guest@127.0.0.1:5672/%2f"
        exchange = "hooks"
        routing_key = "{source}.{event}"
        [[sinks]]
        name = "downstream"
        type = "http"
        url = "http://127.0.0.1:9000/hooks"
        secret = "env:DOWNSTREAM_SECRET"
        body = "envelope"
    "#;

    #[test]
    fn broker_sinks_parse_with_defaults() {
        let config = Config::from_toml(&format!("{EXAMPLE}{BROKER_SINKS}")).unwrap();
        config.validate().unwrap();
        let nats = &config.sinks[1];
        assert_eq!(nats.concurrency, 4);
        assert_eq!(nats.timeout, Some(Duration::from_secs(2)));
        assert!(matches!(
            &nats.kind,
            SinkKind::Nats { duplicate_window, .. } if *duplicate_window == Duration::from_secs(900)
        ));
        let amqp = &config.sinks[2];
        assert_eq!(amqp.concurrency, 64);
        assert_eq!(amqp.timeout, None);
        assert!(matches!(
            &amqp.kind,
            SinkKind::Amqp {
                mandatory: true,
                ..
            }
        ));
        assert!(matches!(
            &config.sinks[3].kind,
            SinkKind::Http {
                body: HttpBody::Envelope,
                ..
            }
        ));
    }

    #[test]
    fn unknown_sink_key_is_rejected() {
        let text = format!("{EXAMPLE}{BROKER_SINKS}").replace("exchange =", "exchnage =");
        let err = Config::from_toml(&text).unwrap_err();
        assert!(err.to_string().contains("exchnage"), "{err}");
    }

    #[test]
    fn sink_timeout_must_stay_below_visibility_timeout() {
        let text =
            format!("{EXAMPLE}{BROKER_SINKS}").replace(r#"timeout = "2s""#, r#"timeout = "60s""#);
        let err = Config::from_toml(&text).unwrap().validate().unwrap_err();
        assert!(err.to_string().contains("visibility_timeout"), "{err}");
    }

    #[test]
    fn zero_sink_concurrency_is_rejected() {
        let text = format!("{EXAMPLE}{BROKER_SINKS}").replace("concurrency = 4", "concurrency = 0");
        let err = Config::from_toml(&text).unwrap().validate().unwrap_err();
        assert!(err.to_string().contains("concurrency"), "{err}");
    }

    #[test]
    fn ack_timeout_must_stay_below_ten_seconds() {
        let text = format!("ack_timeout = \"10s\"\n{EXAMPLE}");
        let err = Config::from_toml(&text).unwrap().validate().unwrap_err();
        assert!(err.to_string().contains("ack_timeout"), "{err}");
    }
}
