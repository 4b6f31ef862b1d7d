//! Shared test fixtures: a service started in-process against real Redis, private
//! `redis-server` instances that tests may stop and restart, and request signing.

#![allow(dead_code)]

use hookrelay::app::{self, Running};
use hookrelay::config::Config;
use hookrelay::verify::Makini;
use redis::AsyncCommands;
use std::io::Write;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use tempfile::NamedTempFile;

pub const SECRET: &str = "makini-integration-secret";
pub const STANDARD_REDIS: &str = "redis://127.0.0.1:6379";

/// Returns a name no other test run uses, for key prefixes and stream names.
pub fn unique(label: &str) -> String {
    format!("test-{label}-{}", uuid::Uuid::new_v4().simple())
}

/// Writes `secret` to a temporary file, for a `file:` secret reference.
pub fn secret_file(secret: &str) -> NamedTempFile {
    let mut file = NamedTempFile::new().expect("temp file");
    file.write_all(secret.as_bytes()).expect("write secret");
    file
}

/// Settings of one test service; `config_toml` renders them.
pub struct ServiceSpec {
    pub store_url: String,
    pub sink_url: String,
    pub key_prefix: String,
    pub stream: String,
    pub secret_path: PathBuf,
    /// Extra TOML put at the top level before the tables.
    pub top: String,
    /// Extra TOML appended to the `[worker]` table.
    pub worker: String,
    /// Extra TOML appended to the Makini `[[sources]]` table.
    pub source: String,
    /// Extra TOML appended to the Standard Webhooks `[[sources]]` table.
    pub standard_source: String,
}

impl ServiceSpec {
    pub fn new(label: &str, secret: &NamedTempFile) -> Self {
        Self {
            store_url: STANDARD_REDIS.into(),
            sink_url: STANDARD_REDIS.into(),
            key_prefix: unique(label),
            stream: unique(&format!("{label}-sink")),
            secret_path: secret.path().to_owned(),
            top: String::new(),
            worker: "backoff_initial = \"50ms\"\nbackoff_max = \"200ms\"".into(),
            source: String::new(),
            standard_source: String::new(),
        }
    }

    pub fn config_toml(&self) -> String {
        format!(
            r#"
listen = "127.0.0.1:0"
{top}

[store]
redis_url = "{store_url}"
key_prefix = "{key_prefix}"

[worker]
{worker}

[[sources]]
name = "makini"
scheme = "makini"
secrets = ["file:{secret}"]
{source}

[[sources]]
name = "svix"
scheme = "standard"
secrets = ["file:{secret}.standard"]
# The published test vector is signed in 2021.
tolerance = "100years"
{standard_source}

[[sinks]]
name = "events"
type = "redis_stream"
url = "{sink_url}"
stream = "{stream}"

[[routes]]
source = "makini"
events = ["*"]
sinks = ["events"]

[[routes]]
source = "svix"
sinks = ["events"]
"#,
            top = self.top,
            store_url = self.store_url,
            key_prefix = self.key_prefix,
            worker = self.worker,
            secret = self.secret_path.display(),
            source = self.source,
            standard_source = self.standard_source,
            sink_url = self.sink_url,
            stream = self.stream,
        )
    }

    pub fn config(&self) -> Config {
        // The Standard Webhooks source reads the spec's published secret from a sibling file.
        let standard_path = format!("{}.standard", self.secret_path.display());
        std::fs::write(&standard_path, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let config = Config::from_toml(&self.config_toml()).expect("test config parses");
        config.validate().expect("test config is valid");
        config
    }
}

/// A service running in this process.
pub struct TestService {
    pub running: Running,
    pub base: String,
    pub spec: ServiceSpec,
    pub client: reqwest::Client,
}

/// Sends the service's logs to the test output, filtered by `RUST_LOG` (default `warn`).
pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

impl TestService {
    pub async fn start(spec: ServiceSpec) -> Self {
        init_logs();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let running = app::start(&spec.config(), listener)
            .await
            .expect("service starts");
        Self {
            base: format!("http://{}", running.addr),
            running,
            spec,
            client: reqwest::Client::new(),
        }
    }

    pub fn url(&self, source: &str) -> String {
        format!("{}/webhooks/{source}", self.base)
    }

    /// Posts `body` to the Makini source with the given signature header, if any.
    pub async fn post_makini(&self, body: &[u8], signature: Option<&str>) -> reqwest::Response {
        let mut request = self
            .client
            .post(self.url("makini"))
            .header("content-type", "application/json")
            .body(body.to_vec());
        if let Some(signature) = signature {
            request = request.header("x-webhook-signature", signature);
        }
        request.send().await.expect("request reaches the service")
    }

    /// Posts `body` signed with the test secret in hex.
    pub async fn post_signed(&self, body: &[u8]) -> reqwest::Response {
        let signature = Makini::sign_hex(SECRET.as_bytes(), body);
        self.post_makini(body, Some(&signature)).await
    }

    /// Stops the service and deletes the keys it wrote to the shared Redis, except the
    /// idempotency keys and sink markers, which expire on their own.
    pub async fn stop(self) {
        self.running.stop().await.expect("service stops cleanly");
        if let Ok(client) = redis::Client::open(STANDARD_REDIS)
            && let Ok(mut conn) = client
                .get_multiplexed_async_connection_with_config(&test_redis_config())
                .await
        {
            let tagged = format!("{}:{{p0}}", self.spec.key_prefix);
            let keys = ["inbox", "retry", "state", "dlq"].map(|name| format!("{tagged}:{name}"));
            let _: redis::RedisResult<()> = conn.del(&keys).await;
            let _: redis::RedisResult<()> = conn.del(&self.spec.stream).await;
        }
    }
}

/// Returns the response status and JSON body.
pub async fn status_and_json(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let json = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("response body {text:?} is not JSON: {e}"));
    (status, json)
}

/// One entry of the sink stream.
#[derive(Debug, Clone)]
pub struct SinkEntry {
    pub id: String,
    pub source: String,
    pub event_type: String,
    pub payload: Vec<u8>,
}

/// Reads every entry of `stream` at `url`.
pub async fn read_stream(url: &str, stream: &str) -> Vec<SinkEntry> {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&test_redis_config())
        .await
        .unwrap();
    let reply: redis::streams::StreamRangeReply = conn.xrange_all(stream).await.unwrap();
    reply
        .ids
        .into_iter()
        .map(|entry| {
            let text = |name: &str| -> String {
                redis::from_redis_value(entry.map.get(name).cloned().unwrap_or(redis::Value::Nil))
                    .unwrap_or_default()
            };
            let payload: Vec<u8> = redis::from_redis_value(
                entry
                    .map
                    .get("payload")
                    .cloned()
                    .unwrap_or(redis::Value::Nil),
            )
            .unwrap_or_default();
            SinkEntry {
                id: text("id"),
                source: text("source"),
                event_type: text("event_type"),
                payload,
            }
        })
        .collect()
}

/// Polls `stream` until it contains at least `count` entries or `timeout` passes, and returns
/// its entries then.
pub async fn wait_for_entries(
    url: &str,
    stream: &str,
    count: usize,
    timeout: Duration,
) -> Vec<SinkEntry> {
    let deadline = Instant::now() + timeout;
    loop {
        let entries = read_stream(url, stream).await;
        if entries.len() >= count || Instant::now() >= deadline {
            return entries;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Returns a loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private `redis-server` on its own port, stopped on drop.
pub struct PrivateRedis {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// Runs with `appendonly yes` and `appendfsync always`, so a kill loses no write.
    durable: bool,
}

impl PrivateRedis {
    /// Reserves a port without starting the server.
    pub fn reserve() -> Self {
        Self {
            port: free_port(),
            child: None,
            dir: tempfile::tempdir().unwrap(),
            durable: false,
        }
    }

    /// Starts a server that syncs every write to its append-only file before replying.
    pub fn start_durable() -> Self {
        let mut redis = Self::reserve();
        redis.durable = true;
        redis.start();
        redis
    }

    pub fn start_new() -> Self {
        let mut redis = Self::reserve();
        redis.start();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Starts the server and waits until it replies to PING.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "private redis already running");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(match self.durable {
                true => ["--appendonly", "yes", "--appendfsync", "always"],
                false => ["--appendonly", "no", "--appendfsync", "everysec"],
            })
            .args(["--enable-debug-command", "yes"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        self.child = Some(child);

        let deadline = Instant::now() + Duration::from_secs(10);
        let client = redis::Client::open(self.url()).unwrap();
        loop {
            if let Ok(mut conn) = client.get_connection()
                && redis::cmd("PING").query::<String>(&mut conn).is_ok()
            {
                return;
            }
            assert!(Instant::now() < deadline, "private redis did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server at once, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Connection settings for test clients of Redis: the client's default 500 ms response limit
/// fails tests on a loaded machine.
pub fn test_redis_config() -> redis::AsyncConnectionConfig {
    redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(std::time::Duration::from_secs(5)))
        .set_response_timeout(Some(std::time::Duration::from_secs(10)))
}

/// `hookrelay serve` run from the built binary, killed when dropped.
pub struct ServiceProcess {
    child: Child,
    log: PathBuf,
}

impl ServiceProcess {
    /// Starts `hookrelay serve --config CONFIG` with `RUST_LOG=info`, the `HOOKRELAY_*`
    /// overrides of the test's environment removed, `envs` set, and stderr appended to `log`.
    pub fn start(config: &Path, log: &Path, envs: &[(&str, &str)]) -> Self {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open the service log");
        let child = Command::new(env!("CARGO_BIN_EXE_hookrelay"))
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .env_remove("HOOKRELAY_REDIS_URL")
            .env_remove("HOOKRELAY_DATA_DIR")
            .env_remove("HOOKRELAY_LISTEN")
            .env_remove("HOOKRELAY_CONFIG")
            .envs(envs.iter().copied())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start the hookrelay binary");
        Self {
            child,
            log: log.to_owned(),
        }
    }

    /// Waits until `port` accepts connections. Panics with the log if the process exits first
    /// or the port is still closed after 15 s.
    pub fn wait_for_port(&mut self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Some(status) = self.try_wait() {
                panic!(
                    "hookrelay exited with {status} before listening; log:\n{}",
                    self.log()
                );
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("port {port} not open after 15 s; log:\n{}", self.log());
    }

    /// Sends SIGKILL and waits for the exit; returns the time from the signal to the exit.
    pub fn kill(&mut self) -> Duration {
        let signalled = Instant::now();
        self.child.kill().expect("SIGKILL hookrelay");
        self.child.wait().expect("wait for hookrelay");
        signalled.elapsed()
    }

    /// Returns the exit status once the process has ended.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("poll hookrelay")
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Returns the log written so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
