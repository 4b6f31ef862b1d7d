//! Prometheus metrics: names, the process-wide recorder, and the text rendered at `/metrics`.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Duration;

/// Receive requests, by `source` and response `status`.
pub const REQUESTS: &str = "hookrelay_requests_total";
/// Signature checks that failed, by `source` and `reason`.
pub const VERIFY_FAILURES: &str = "hookrelay_verification_failures_total";
/// Deliveries recognised as duplicates, by `source`.
pub const DUPLICATES: &str = "hookrelay_duplicates_total";
/// Time from request start to response, in seconds, by `source`.
pub const ACK_SECONDS: &str = "hookrelay_ack_duration_seconds";
/// Inbox entries not yet settled.
pub const INBOX_DEPTH: &str = "hookrelay_inbox_depth";
/// Age of the oldest unsettled inbox entry, in seconds.
pub const INBOX_OLDEST_AGE: &str = "hookrelay_inbox_oldest_age_seconds";
/// Records in the dead-letter queue.
pub const DEAD_LETTERS: &str = "hookrelay_dead_letters";
/// Delivery attempts, by `sink` and `outcome` (`delivered`, `retry`, `dead_letter`, `held`).
pub const DELIVERIES: &str = "hookrelay_deliveries_total";
/// Events that matched no route, by `source`.
pub const UNROUTED: &str = "hookrelay_unrouted_total";
/// Time from receipt to acceptance by a sink, in seconds, by `sink`.
pub const END_TO_END_SECONDS: &str = "hookrelay_end_to_end_seconds";
/// 1 while a sink is paused after failing repeatedly, else 0.
pub const SINK_PAUSED: &str = "hookrelay_sink_paused";

/// Ack latency buckets: the request path is one store round trip, so most responses take
/// milliseconds, and 10 s is the longest any provider waits.
const ACK_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// End-to-end buckets reach an hour, because retries with backoff stretch delivery.
const END_TO_END_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// Time between two upkeeps of the recorder.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder on first use and returns its handle. Every service
/// started in one process shares it, as `metrics` has one global recorder.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(ACK_SECONDS.into()), ACK_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(END_TO_END_SECONDS.into()),
                    END_TO_END_BUCKETS,
                )
            })
            .expect("bucket lists are non-empty")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed; /metrics will stay empty");
        }
        describe();
        start_upkeep(handle.clone());
        handle
    })
}

/// Starts a thread that moves the recorded histogram samples into their buckets every
/// [`UPKEEP_INTERVAL`]. The recorder keeps every sample until then, so without the upkeep a
/// service that nothing scrapes would hold 8 bytes per request and per delivery, without
/// bound.
fn start_upkeep(handle: PrometheusHandle) {
    let started = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                handle.run_upkeep();
            }
        });
    if let Err(error) = started {
        tracing::warn!(%error, "failed to start the metrics upkeep thread; histogram samples wait for the next scrape of /metrics");
    }
}

fn describe() {
    metrics::describe_counter!(REQUESTS, "Webhook requests by source and response status.");
    metrics::describe_counter!(VERIFY_FAILURES, "Signature checks that failed, by reason.");
    metrics::describe_counter!(DUPLICATES, "Deliveries recognised as duplicates.");
    metrics::describe_histogram!(
        ACK_SECONDS,
        metrics::Unit::Seconds,
        "Time from request start to response."
    );
    metrics::describe_gauge!(INBOX_DEPTH, "Inbox entries not yet settled.");
    metrics::describe_gauge!(
        INBOX_OLDEST_AGE,
        metrics::Unit::Seconds,
        "Age of the oldest unsettled inbox entry."
    );
    metrics::describe_gauge!(DEAD_LETTERS, "Records in the dead-letter queue.");
    metrics::describe_counter!(DELIVERIES, "Delivery attempts by sink and outcome.");
    metrics::describe_counter!(UNROUTED, "Events that matched no route.");
    metrics::describe_gauge!(
        SINK_PAUSED,
        "1 while a sink is paused after repeated failures and its events are held."
    );
    metrics::describe_histogram!(
        END_TO_END_SECONDS,
        metrics::Unit::Seconds,
        "Time from receipt to acceptance by a sink."
    );
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::time::{Duration, Instant};

    fn thread_names() -> Vec<String> {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
            .map(|name| name.trim().to_owned())
            .collect()
    }

    #[test]
    fn recorder_starts_upkeep_thread() {
        super::handle();
        // A new thread carries its parent's name until it has started and named itself.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut names = thread_names();
        while !names.iter().any(|name| name == "metrics-upkeep") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            names = thread_names();
        }
        assert!(
            names.iter().any(|name| name == "metrics-upkeep"),
            "threads: {names:?}"
        );
    }
}
