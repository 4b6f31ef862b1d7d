//! Operations endpoints: `/healthz` (the process runs), `/readyz` (the store responds and the
//! worker runs) and `/metrics` (Prometheus text).

pub mod healthcheck;
pub mod metrics;

use crate::store::Store;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

/// Maximum wait of a readiness or metrics probe for the store.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// State the operations endpoints read.
pub struct OpsState {
    pub store: Arc<dyn Store>,
    /// Set while the worker loop runs; `None` when this process runs no worker.
    pub worker_running: Option<Arc<AtomicBool>>,
}

pub fn router(state: Arc<OpsState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// Responds 405 to a method other than GET or HEAD, with the JSON error body of the webhook
/// routes.
async fn method_not_allowed() -> impl IntoResponse {
    let body = json!({ "status": "rejected", "error": "only GET is accepted here" });
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(header::ALLOW, "GET, HEAD")],
        axum::Json(body),
    )
}

async fn healthz() -> impl IntoResponse {
    axum::Json(json!({ "status": "ok" }))
}

async fn readyz(State(state): State<Arc<OpsState>>) -> impl IntoResponse {
    let store_ok = matches!(
        tokio::time::timeout(PROBE_TIMEOUT, state.store.ping()).await,
        Ok(Ok(()))
    );
    let worker_ok = state
        .worker_running
        .as_ref()
        .is_none_or(|running| running.load(Ordering::Acquire));

    let status = if store_ok && worker_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if status == StatusCode::OK { "ready" } else { "not_ready" },
        "store": if store_ok { "ok" } else { "unavailable" },
        "worker": match &state.worker_running {
            None => "disabled",
            Some(_) if worker_ok => "running",
            Some(_) => "stopped",
        },
    });
    (status, axum::Json(body))
}

/// Refreshes the store gauges, then renders every metric. A store that does not respond leaves
/// the gauges at their last value rather than failing the scrape.
async fn render_metrics(State(state): State<Arc<OpsState>>) -> impl IntoResponse {
    if let Ok(Ok(stats)) = tokio::time::timeout(PROBE_TIMEOUT, state.store.stats()).await {
        ::metrics::gauge!(metrics::INBOX_DEPTH).set(stats.inbox_depth as f64);
        ::metrics::gauge!(metrics::DEAD_LETTERS).set(stats.dead_letters as f64);
        let age = stats.oldest_received_at.map_or(0.0, |oldest| {
            SystemTime::now()
                .duration_since(oldest)
                .unwrap_or_default()
                .as_secs_f64()
        });
        ::metrics::gauge!(metrics::INBOX_OLDEST_AGE).set(age);
    }

    let handle = metrics::handle();
    handle.run_upkeep();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
}
