//! Helpers of the sink integration tests: a hookrelay instance on the standard Redis with a
//! unique key prefix, a signed sender, an HTTP downstream that records what it receives, and
//! private `nats-server` instances.

#![allow(dead_code)]

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use hookrelay::app::Running;
use hookrelay::config::Config;
use hookrelay::verify::Standard;
use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;

pub const REDIS_URL: &str = "redis://127.0.0.1:6379";
pub const NATS_URL: &str = "nats://127.0.0.1:4222";
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Source name of every test config.
pub const SOURCE: &str = "provider";
/// Key bytes of the test source's Standard Webhooks secret.
pub const SOURCE_KEY: &[u8] = b"hookrelay test source key 0123";
/// Key bytes of the secret the HTTP sinks sign with.
pub const SINK_KEY: &[u8] = b"hookrelay test sink key 456789";

/// `[worker]` keys that make retries quick.
pub const FAST_RETRIES: &str = r#"
    backoff_initial = "50ms"
    backoff_max = "400ms"
    sink_timeout = "3s"
"#;

/// Returns `name` with a random suffix, for stream, subject, exchange and key names.
pub fn unique(name: &str) -> String {
    format!("{name}_{}", uuid::Uuid::new_v4().simple())
}

pub fn whsec(key: &[u8]) -> String {
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

/// Polls `check` every 25 ms until it returns true or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A hookrelay instance started in-process for one test.
pub struct Service {
    pub running: Option<Running>,
    pub prefix: String,
    pub dir: tempfile::TempDir,
    redis: redis::aio::MultiplexedConnection,
    http: reqwest::Client,
}

impl Service {
    /// Starts hookrelay with one Standard Webhooks source named [`SOURCE`], the given
    /// `[[sinks]]` and `[[routes]]` TOML, and [`FAST_RETRIES`].
    pub async fn start(sinks_and_routes: &str) -> Self {
        Self::start_with(sinks_and_routes, FAST_RETRIES).await
    }

    /// Like [`Service::start`], with the given keys of the `[worker]` table.
    pub async fn start_with(sinks_and_routes: &str, worker: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let secret_path = dir.path().join("source-secret");
        std::fs::write(&secret_path, whsec(SOURCE_KEY)).unwrap();
        let sink_secret_path = dir.path().join("sink-secret");
        std::fs::write(&sink_secret_path, whsec(SINK_KEY)).unwrap();

        let prefix = unique("hookrelay-sinktest");
        let text = format!(
            r#"
            [store]
            redis_url = "{REDIS_URL}"
            key_prefix = "{prefix}"
            [worker]
            {worker}
            [[sources]]
            name = "{SOURCE}"
            scheme = "standard"
            secrets = ["file:{}"]
            {}
            "#,
            secret_path.display(),
            sinks_and_routes.replace(
                "SINK_SECRET",
                &format!("file:{}", sink_secret_path.display())
            ),
        );
        let config = Config::from_toml(&text).expect("test config parses");
        config.validate().expect("test config is valid");

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let running = hookrelay::app::start(&config, listener).await.unwrap();
        let client = redis::Client::open(REDIS_URL).unwrap();
        let redis = client
            .get_multiplexed_async_connection_with_config(&test_redis_config())
            .await
            .unwrap();
        Self {
            running: Some(running),
            prefix,
            dir,
            redis,
            http: reqwest::Client::new(),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.running.as_ref().unwrap().addr
    }

    pub fn stat(
        &self,
        pick: fn(&hookrelay::worker::WorkerStats) -> &std::sync::atomic::AtomicU64,
    ) -> u64 {
        let stats = self
            .running
            .as_ref()
            .unwrap()
            .worker_stats
            .as_ref()
            .unwrap();
        pick(stats).load(Ordering::Relaxed)
    }

    /// Posts an event signed like a Standard Webhooks provider; returns the status.
    pub async fn send(&self, id: &str, event_type: &str, extra: serde_json::Value) -> u16 {
        let body = serde_json::to_vec(&serde_json::json!({
            "type": event_type,
            "data": extra,
        }))
        .unwrap();
        self.send_raw(id, body).await
    }

    pub async fn send_raw(&self, id: &str, body: Vec<u8>) -> u16 {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let signature = Standard::sign(SOURCE_KEY, id, timestamp, &body);
        self.http
            .post(format!("http://{}/webhooks/{SOURCE}", self.addr()))
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    fn key(&self, name: &str) -> String {
        format!("{}:{{p0}}:{name}", self.prefix)
    }

    /// Returns the number of inbox entries not yet settled for good.
    pub async fn inbox_len(&self) -> u64 {
        let mut conn = self.redis.clone();
        redis::cmd("XLEN")
            .arg(self.key("inbox"))
            .query_async(&mut conn)
            .await
            .unwrap()
    }

    /// Waits until every accepted event is delivered or dead-lettered.
    pub async fn settled(&self, limit: Duration) -> bool {
        eventually(limit, || async { self.inbox_len().await == 0 }).await
    }

    /// Returns the dead-letter records as (sink, error) pairs.
    pub async fn dead_letters(&self) -> Vec<(String, String)> {
        let mut conn = self.redis.clone();
        let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(self.key("dlq"))
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .unwrap();
        entries
            .ids
            .iter()
            .map(|entry| {
                let sink: String = entry.get("sink").unwrap();
                let error: String = entry.get("error").unwrap();
                (sink, error)
            })
            .collect()
    }

    /// Stops the service and deletes the keys it wrote, except the idempotency keys, which
    /// expire on their own.
    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await.unwrap();
        }
        let mut conn = self.redis.clone();
        let tagged = format!("{}:{{p0}}", self.prefix);
        let keys = ["inbox", "retry", "state", "dlq"].map(|name| format!("{tagged}:{name}"));
        let _: () = redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}

/// Response of the recording downstream to one request.
#[derive(Debug, Clone)]
pub enum Reply {
    Status(u16),
    StatusRetryAfter(u16, &'static str),
    /// Waits this long before responding 200.
    Hang(Duration),
}

/// A request as the downstream received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Default)]
struct DownstreamState {
    replies: Mutex<VecDeque<Reply>>,
    received: Mutex<Vec<Received>>,
}

/// A real axum server that records every POST and responds from a script, then with 200.
pub struct Downstream {
    pub addr: SocketAddr,
    state: Arc<DownstreamState>,
    server: tokio::task::JoinHandle<()>,
}

impl Downstream {
    pub async fn start(replies: Vec<Reply>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, replies)
    }

    pub fn serve(listener: TcpListener, replies: Vec<Reply>) -> Self {
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(DownstreamState {
            replies: Mutex::new(replies.into()),
            received: Mutex::default(),
        });
        let app = axum::Router::new()
            .route("/hooks", axum::routing::post(record))
            .with_state(state.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            addr,
            state,
            server,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hooks", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }
}

impl Drop for Downstream {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn record(
    State(state): State<Arc<DownstreamState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.received.lock().unwrap().push(Received {
        at: Instant::now(),
        headers,
        body,
    });
    let reply = state.replies.lock().unwrap().pop_front();
    match reply {
        None => StatusCode::OK.into_response(),
        Some(Reply::Status(code)) => StatusCode::from_u16(code).unwrap().into_response(),
        Some(Reply::StatusRetryAfter(code, after)) => (
            StatusCode::from_u16(code).unwrap(),
            [("retry-after", after)],
        )
            .into_response(),
        Some(Reply::Hang(delay)) => {
            tokio::time::sleep(delay).await;
            StatusCode::OK.into_response()
        }
    }
}

/// Returns a TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `nats-server -js` of one test, on its own port and store directory.
pub struct PrivateNats {
    pub port: u16,
    store: PathBuf,
    child: Option<Child>,
}

impl PrivateNats {
    pub fn new(store: &Path) -> Self {
        Self {
            port: free_port(),
            store: store.to_owned(),
            child: None,
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server and waits until it accepts connections.
    pub async fn start(&mut self) {
        let child = Command::new("/usr/sbin/nats-server")
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
        let url = self.url();
        let up = eventually(Duration::from_secs(10), || {
            let url = url.clone();
            async move { async_nats::connect(url).await.is_ok() }
        })
        .await;
        assert!(
            up,
            "private nats-server did not come up on port {}",
            self.port
        );
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Connection settings for test clients of Redis: the client's default 500 ms response limit
/// fails tests on a loaded machine.
fn test_redis_config() -> redis::AsyncConnectionConfig {
    redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(std::time::Duration::from_secs(5)))
        .set_response_timeout(Some(std::time::Duration::from_secs(10)))
}
