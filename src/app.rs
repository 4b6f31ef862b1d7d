//! Startup: turns a [`Config`] into a running service, the same way for the binary and tests.

use crate::config::{Config, ConfigError};
use crate::ops::{self, OpsState};
use crate::receive::{self, ReceiveState, SourceRuntime};
use crate::server::{self, ServerLimits};
use crate::sink::{self, Sink};
use crate::store::Store;
use crate::store::embedded::{EmbeddedStore, EmbeddedStoreOptions};
use crate::store::redis::{RedisStore, RedisStoreOptions};
use crate::worker::{Router as EventRouter, Worker, WorkerStats};
use axum::body::Body;
use axum::http::{HeaderName, Request};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tower::util::MapRequestLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

/// A reason the service cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot open the store: {0}")]
    Store(String),
    #[error("sink {name:?}: {reason}")]
    Sink { name: String, reason: String },
    #[error("{0}")]
    Route(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server failed: {0}")]
    Serve(std::io::Error),
}

/// The parts of a service built from a config, before it runs.
pub struct App {
    pub router: axum::Router,
    pub store: Arc<dyn Store>,
    worker: Option<Worker>,
}

/// The parts of a service that a config yields without connecting anywhere: the sources with
/// their secrets resolved, and the sinks and routes of the worker.
pub struct Parts {
    pub sources: HashMap<String, SourceRuntime>,
    /// `None` when `worker.enabled` is false: a receive-only process builds no sinks, so it
    /// needs none of their secrets.
    pub delivery: Option<Delivery>,
}

/// The sinks and routes the worker forwards with.
pub struct Delivery {
    pub sinks: HashMap<String, Arc<dyn Sink>>,
    pub router: EventRouter,
}

/// Builds the sources, sinks and routes of `config`, the way [`build`] does for `serve`.
/// Resolving the secrets reads environment variables and files; nothing connects.
pub fn build_parts(config: &Config) -> Result<Parts, StartupError> {
    let mut sources = HashMap::new();
    for source in &config.sources {
        sources.insert(source.name.clone(), SourceRuntime::new(source)?);
    }
    if !config.worker.enabled {
        return Ok(Parts {
            sources,
            delivery: None,
        });
    }

    let mut sinks: HashMap<String, Arc<dyn Sink>> = HashMap::new();
    for sink_config in &config.sinks {
        let sink = sink::build(sink_config).map_err(|reason| StartupError::Sink {
            name: sink_config.name.clone(),
            reason,
        })?;
        sinks.insert(sink_config.name.clone(), Arc::from(sink));
    }
    let router = EventRouter::new(&config.routes).map_err(StartupError::Route)?;
    Ok(Parts {
        sources,
        delivery: Some(Delivery { sinks, router }),
    })
}

/// Checks everything [`build`] checks without opening the store: [`build_parts`], and the
/// Redis URL when one is set. The embedded store is left closed, because opening it locks
/// its data directory against a service that may be running.
pub fn check(config: &Config) -> Result<Parts, StartupError> {
    let parts = build_parts(config)?;
    if let Some(url) = config.store.redis_url.as_deref() {
        // Parses the URL and sets up lazy connections; nothing connects until first use.
        RedisStore::open(&redis_options(config, url))
            .map_err(|e| StartupError::Store(e.to_string()))?;
    }
    Ok(parts)
}

/// Builds the service: resolves secrets, opens the store, builds sinks and routes. Nothing
/// connects yet, so a Redis store or a sink that is down does not stop startup; the embedded
/// store opens its file here, so a file locked by another process does.
pub async fn build(config: &Config) -> Result<App, StartupError> {
    let Parts { sources, delivery } = build_parts(config)?;

    let store = open_store(config).await?;

    // Installed before anything records a metric.
    crate::ops::metrics::handle();

    let worker = delivery.map(|Delivery { sinks, router }| {
        let mut worker = Worker::new(store.clone(), sinks, router, config.worker.clone());
        for sink_config in &config.sinks {
            let timeout = sink_config.timeout.unwrap_or(config.worker.sink_timeout);
            worker = worker.limit_sink(&sink_config.name, sink_config.concurrency, timeout);
        }
        worker
    });

    let state = Arc::new(ReceiveState {
        sources,
        store: store.clone(),
        ack_timeout: config.ack_timeout,
        body_timeout: config.body_timeout,
        body_memory: receive::BodyMemory::new(config.max_body_memory),
        retry_after_secs: config.retry_after_secs,
        trusted_proxies: config.trusted_proxies.clone(),
    });
    let ops = Arc::new(OpsState {
        store: store.clone(),
        worker_running: worker.as_ref().map(Worker::running_flag),
    });
    let router = receive::router(state).merge(ops::router(ops));
    Ok(App {
        router: with_request_layers(router),
        store,
        worker,
    })
}

/// Maximum length in bytes of a client's `X-Request-Id` that is kept.
const MAX_REQUEST_ID_LEN: usize = 128;

/// Adds request ids and one span per request. The id comes from `X-Request-Id` when the
/// client sends a usable one, else a new UUID, and is returned in the response.
fn with_request_layers(router: axum::Router) -> axum::Router {
    let request_id = HeaderName::from_static("x-request-id");
    let trace = TraceLayer::new_for_http().make_span_with(|request: &Request<Body>| {
        let request_id = request
            .headers()
            .get("x-request-id")
            .and_then(|value| value.to_str().ok())
            .unwrap_or("");
        tracing::info_span!(
            "request",
            method = %request.method(),
            path = %request.uri().path(),
            request_id,
        )
    });
    router.layer(
        ServiceBuilder::new()
            .layer(MapRequestLayer::new(drop_unusable_request_id))
            .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
            .layer(trace)
            .layer(PropagateRequestIdLayer::new(request_id)),
    )
}

/// Removes a client's `X-Request-Id` that is empty, longer than [`MAX_REQUEST_ID_LEN`] or
/// not visible ASCII, so that the id logged with every line and echoed in the response is
/// short and printable. A new UUID takes its place.
fn drop_unusable_request_id(mut request: Request<Body>) -> Request<Body> {
    let usable = request.headers().get("x-request-id").is_none_or(|value| {
        let bytes = value.as_bytes();
        !bytes.is_empty()
            && bytes.len() <= MAX_REQUEST_ID_LEN
            && bytes.iter().all(u8::is_ascii_graphic)
    });
    if !usable {
        request.headers_mut().remove("x-request-id");
    }
    request
}

/// Opens the store the config names: Redis when `store.redis_url` is set, else the embedded
/// store, which fails while another process has it open.
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, StartupError> {
    match config.store.redis_url.as_deref() {
        Some(url) => open_redis(config, url).await,
        None => open_embedded(config).await,
    }
}

fn redis_options(config: &Config, url: &str) -> RedisStoreOptions {
    RedisStoreOptions {
        url: url.to_owned(),
        key_prefix: config.store.key_prefix.clone(),
        request_timeout: config.ack_timeout,
        visibility_timeout: config.worker.visibility_timeout,
    }
}

/// Opens the Redis store and warns when Redis would lose the inbox on restart.
async fn open_redis(config: &Config, url: &str) -> Result<Arc<dyn Store>, StartupError> {
    let redis = RedisStore::open(&redis_options(config, url))
        .map_err(|e| StartupError::Store(e.to_string()))?;
    // Nothing connects yet; a Redis that is down shows in /readyz and as 503 responses.
    tracing::info!(store = "redis", url = %redact_url(url), "store configured");
    match redis.append_only().await {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            "Redis runs without appendonly: a Redis restart loses every event in the inbox; \
             set `appendonly yes` in production"
        ),
        Err(error) => tracing::warn!(
            %error,
            "cannot read Redis's appendonly setting; check that Redis is reachable and that it is `yes`"
        ),
    }
    Ok(Arc::new(redis))
}

/// Opens the embedded store in `store.data_dir`. It fails when another process has it open.
async fn open_embedded(config: &Config) -> Result<Arc<dyn Store>, StartupError> {
    let options = EmbeddedStoreOptions::new(
        config.store.data_dir.clone(),
        config.worker.visibility_timeout,
    );
    let store = EmbeddedStore::open(options)
        .await
        .map_err(|e| StartupError::Store(e.to_string()))?;
    let path = std::path::absolute(store.path()).unwrap_or_else(|_| store.path().to_owned());
    tracing::info!(
        store = "embedded",
        path = %path.display(),
        "store opened; the embedded store serves this process only, \
         so set store.redis_url to run several replicas"
    );
    Ok(Arc::new(store))
}

/// A service running in the background, as started by [`start`].
pub struct Running {
    pub addr: SocketAddr,
    /// The worker's counters; `None` when the worker is disabled.
    pub worker_stats: Option<Arc<WorkerStats>>,
    /// The store the service writes to, for inspection by its owner.
    pub store: Arc<dyn Store>,
    shutdown: CancellationToken,
    server: JoinHandle<Result<(), std::io::Error>>,
    worker: Option<JoinHandle<()>>,
}

impl Running {
    /// Stops accepting requests, lets those in flight finish, then stops the worker after its
    /// current batch.
    pub async fn stop(self) -> Result<(), StartupError> {
        self.shutdown.cancel();
        let served = self.server.await;
        if let Some(worker) = self.worker {
            let _ = worker.await;
        }
        match served {
            Ok(result) => result.map_err(StartupError::Serve),
            Err(join) => Err(StartupError::Serve(std::io::Error::other(join))),
        }
    }
}

/// Starts the service on `listener`, with its worker when enabled.
pub async fn start(config: &Config, listener: TcpListener) -> Result<Running, StartupError> {
    let app = build(config).await?;
    let addr = listener.local_addr().map_err(StartupError::Serve)?;
    let shutdown = CancellationToken::new();

    let worker_stats = app.worker.as_ref().map(Worker::stats);
    let worker = app
        .worker
        .map(|worker| tokio::spawn(worker.run(shutdown.clone())));
    let limits = ServerLimits {
        header_timeout: config.header_timeout,
        idle_timeout: config.idle_timeout,
        max_connections: config.max_connections,
        shutdown_grace: config.shutdown_grace,
    };
    let server = tokio::spawn(server::serve(
        listener,
        app.router,
        limits,
        shutdown.clone(),
    ));

    Ok(Running {
        addr,
        worker_stats,
        store: app.store,
        shutdown,
        server,
        worker,
    })
}

/// Lists settings that are valid but probably not what the operator meant.
pub fn config_warnings(config: &Config) -> Vec<String> {
    let mut warnings = Vec::new();
    if config.sources.is_empty() {
        warnings.push("no sources configured: every webhook request will get 404".to_owned());
    }
    if !config.worker.enabled {
        return warnings;
    }
    for source in &config.sources {
        if !config
            .routes
            .iter()
            .any(|route| route.source == source.name)
        {
            warnings.push(format!(
                "no route for source {:?}: its events are acknowledged and dropped",
                source.name
            ));
        }
    }
    for sink in &config.sinks {
        let routed = config
            .routes
            .iter()
            .any(|route| route.sinks.contains(&sink.name));
        if !routed {
            warnings.push(format!("no route sends events to sink {:?}", sink.name));
        }
    }
    warnings
}

/// Runs the service until SIGINT or SIGTERM.
pub async fn serve(config: Config) -> Result<(), StartupError> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartupError::Bind {
            addr: config.listen,
            source,
        })?;
    for warning in config_warnings(&config) {
        tracing::warn!("{warning}");
    }
    if !config.worker.enabled {
        tracing::info!(
            "worker disabled: this process receives and stores events but forwards none"
        );
    }
    let running = start(&config, listener).await?;
    for source in &config.sources {
        tracing::info!(
            "receiving {} webhooks at http://{}/webhooks/{}",
            source.scheme.name(),
            running.addr,
            source.name
        );
    }
    tracing::info!(addr = %running.addr, "hookrelay ready");

    shutdown_signal().await;
    tracing::info!("shutting down");
    running.stop().await
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("installing a SIGTERM handler succeeds on Unix");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

/// Hides the credentials of a URL for logs: the `user:password@` part and the whole query,
/// which can carry a password too (`unix:///run/redis.sock?pass=...`).
pub fn redact_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, _)) => (base, "?***"),
        None => (url, ""),
    };
    match (base.find("://"), base.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://***{}{query}", &base[..scheme_end], &base[at..])
        }
        _ => format!("{base}{query}"),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn redis_password_is_hidden() {
        assert_eq!(
            redact_url("redis://user:hunter2@127.0.0.1:6379/0"),
            "redis://***@127.0.0.1:6379/0"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }
}
