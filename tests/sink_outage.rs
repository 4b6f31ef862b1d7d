//! A sink down for a minute under steady load, on each store. The ack path must stay fast
//! while the sink is down, the inbox must grow, nothing may be dead-lettered, and once the sink
//! is back the backlog must reach it once per event, in the order the events arrived.
//!
//! `HOOKRELAY_OUTAGE_SECS` shortens or lengthens the outage (60 s by default).

mod common;

use common::{PrivateRedis, SECRET, read_stream, secret_file, unique};
use hookrelay::app::{self, Running};
use hookrelay::config::Config;
use hookrelay::verify::Makini;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Time between two requests of the one sender; one sender keeps the arrival order plain.
const INTERVAL: Duration = Duration::from_millis(8);
const WARM_UP: Duration = Duration::from_secs(3);
const AFTER: Duration = Duration::from_secs(5);
/// The worker's default number of entries in flight.
const BATCH: usize = 256;
/// Maximum wait for the backlog to reach the sink after it is back.
const DRAIN_LIMIT: Duration = Duration::from_secs(60);

fn outage() -> Duration {
    let secs = std::env::var("HOOKRELAY_OUTAGE_SECS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(60);
    Duration::from_secs(secs)
}

enum StoreKind {
    Redis,
    Embedded,
}

/// One request's result and when it was sent, relative to the start.
struct Sent {
    n: u64,
    status: u16,
    sent_at: Duration,
    took: Duration,
}

fn config(store: &str, sink_url: &str, stream: &str, secret: &std::path::Path) -> Config {
    let toml = format!(
        r#"
listen = "127.0.0.1:0"
ack_timeout = "2s"

[store]
{store}

[worker]
backoff_initial = "100ms"
backoff_max = "1s"
sink_timeout = "1s"

[[sources]]
name = "makini"
scheme = "makini"
secrets = ["file:{secret}"]
# Long enough for the test; the keys it leaves in the shared Redis go soon after.
dedupe_window = "10m"

[[sinks]]
name = "events"
type = "redis_stream"
url = "{sink_url}"
stream = "{stream}"

[[routes]]
source = "makini"
sinks = ["events"]
"#,
        secret = secret.display(),
    );
    let config = Config::from_toml(&toml).expect("test config parses");
    config.validate().expect("test config is valid");
    config
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() - 1) as f64 * fraction).round() as usize;
    sorted[index]
}

fn latency_summary(sent: &[&Sent]) -> (Duration, Duration, Duration) {
    let mut took: Vec<Duration> = sent.iter().map(|s| s.took).collect();
    took.sort();
    (
        percentile(&took, 0.5),
        percentile(&took, 0.99),
        took.last().copied().unwrap_or_default(),
    )
}

/// Sends one signed event every [`INTERVAL`] until `stop` is set, one request at a time.
async fn send_steadily(
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    start: Instant,
) -> Vec<Sent> {
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/webhooks/makini");
    let mut ticks = tokio::time::interval(INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent = Vec::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Acquire) {
        ticks.tick().await;
        let body = format!(r#"{{"id":"outage-{n}","event":"assets.updated"}}"#);
        let signature = Makini::sign_hex(SECRET.as_bytes(), body.as_bytes());
        let sent_at = start.elapsed();
        let began = Instant::now();
        let status = match client
            .post(&url)
            .header("content-type", "application/json")
            .header("x-webhook-signature", signature)
            .body(body)
            .send()
            .await
        {
            Ok(response) => response.status().as_u16(),
            Err(_) => 0,
        };
        sent.push(Sent {
            n,
            status,
            sent_at,
            took: began.elapsed(),
        });
        n += 1;
    }
    sent
}

/// Samples the inbox depth every 200 ms and keeps the largest.
fn watch_inbox(
    running: &Running,
    stop: Arc<AtomicBool>,
) -> (Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let largest = Arc::new(AtomicU64::new(0));
    let store = running.store.clone();
    let seen = largest.clone();
    let task = tokio::spawn(async move {
        while !stop.load(Ordering::Acquire) {
            if let Ok(stats) = store.stats().await {
                seen.fetch_max(stats.inbox_depth, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    (largest, task)
}

async fn sink_down_for_a_minute(kind: StoreKind) {
    common::init_logs();
    let label = match kind {
        StoreKind::Redis => "redis",
        StoreKind::Embedded => "embedded",
    };
    let data_dir = tempfile::tempdir().unwrap();
    let prefix = unique("outage");
    let store = match kind {
        StoreKind::Redis => format!(
            "redis_url = \"{}\"\nkey_prefix = \"{prefix}\"",
            common::STANDARD_REDIS
        ),
        StoreKind::Embedded => format!("data_dir = \"{}\"", data_dir.path().display()),
    };
    // The sink keeps what it has across its restart, so the count at the end is complete.
    let mut sink = PrivateRedis::start_durable();
    let stream = unique("outage-sink");
    let secret = secret_file(SECRET);
    let config = config(&store, &sink.url(), &stream, secret.path());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = app::start(&config, listener).await.expect("service starts");

    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let sender = tokio::spawn(send_steadily(running.addr, stop.clone(), start));
    let stop_watch = Arc::new(AtomicBool::new(false));
    let (largest_inbox, watcher) = watch_inbox(&running, stop_watch.clone());

    tokio::time::sleep(WARM_UP).await;
    let down_at = start.elapsed();
    sink.kill();
    tokio::time::sleep(outage()).await;
    let depth_at_restart = running.store.stats().await.unwrap().inbox_depth;
    sink.start();
    let up_at = start.elapsed();
    tokio::time::sleep(AFTER).await;
    stop.store(true, Ordering::Release);
    let sent = sender.await.unwrap();

    // Wait until every acknowledged event is in the sink.
    let acknowledged: Vec<&Sent> = sent.iter().filter(|s| s.status == 200).collect();
    let drain_deadline = Instant::now() + DRAIN_LIMIT;
    let entries = loop {
        let entries = read_stream(&sink.url(), &stream).await;
        if entries.len() >= acknowledged.len() || Instant::now() >= drain_deadline {
            break entries;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let drained_after = start.elapsed().saturating_sub(up_at);
    stop_watch.store(true, Ordering::Release);
    watcher.await.unwrap();

    // Order: an event is out of order when it reached the sink before one that arrived
    // earlier.
    let order: Vec<u64> = entries
        .iter()
        .map(|entry| {
            entry
                .id
                .strip_prefix("outage-")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("unexpected event id {:?}", entry.id))
        })
        .collect();
    let mut counts: HashMap<u64, usize> = HashMap::new();
    for n in &order {
        *counts.entry(*n).or_default() += 1;
    }
    let mut earliest_after = u64::MAX;
    let mut early = Vec::new();
    for (position, n) in order.iter().enumerate().rev() {
        if *n > earliest_after {
            early.push((position, *n));
        }
        earliest_after = earliest_after.min(*n);
    }
    early.reverse();
    let out_of_order = early.len();
    // How many earlier arrivals the worst event overtook.
    let overtaken = early
        .iter()
        .map(|&(position, n)| order[position..].iter().filter(|&&m| m < n).count())
        .max()
        .unwrap_or(0);
    if !early.is_empty() {
        println!(
            "early ({label} store), as (position, event): {:?}",
            &early[..early.len().min(20)]
        );
    }
    let lost = acknowledged
        .iter()
        .filter(|s| !counts.contains_key(&s.n))
        .count();
    let duplicated = counts.values().filter(|count| **count > 1).count();
    let dead = running.store.dead_letters(10).await.unwrap();
    let held = running
        .worker_stats
        .as_ref()
        .map_or(0, |stats| stats.held.load(Ordering::Relaxed));

    let during: Vec<&Sent> = sent
        .iter()
        .filter(|s| s.sent_at >= down_at && s.sent_at < up_at)
        .collect();
    let before: Vec<&Sent> = sent.iter().filter(|s| s.sent_at < down_at).collect();
    let (p50_before, p99_before, _) = latency_summary(&before);
    let (p50, p99, slowest) = latency_summary(&during);
    println!(
        "sink down {:?} ({label} store): sent {}, acknowledged {}, during the outage {}; \
         ack p50/p99 before {p50_before:?}/{p99_before:?}, during {p50:?}/{p99:?}, slowest {slowest:?}; \
         inbox at restart {depth_at_restart}, largest {}; held {held}; drained {drained_after:?} \
         after the sink came back; delivered {}, duplicated {duplicated}, lost {lost}, \
         out of order {out_of_order} (the worst overtook {overtaken}), dead-lettered {}",
        up_at - down_at,
        sent.len(),
        acknowledged.len(),
        during.len(),
        largest_inbox.load(Ordering::Relaxed),
        counts.len(),
        dead.len(),
    );

    assert_eq!(
        acknowledged.len(),
        sent.len(),
        "every request is acknowledged"
    );
    assert_eq!(lost, 0, "acknowledged but never delivered");
    assert_eq!(duplicated, 0, "delivered more than once");
    assert!(dead.is_empty(), "an outage dead-lettered events: {dead:?}");
    assert!(
        p99 < Duration::from_secs(1),
        "ack p99 during the outage is {p99:?}"
    );
    assert!(
        depth_at_restart >= during.len() as u64 / 2,
        "the inbox did not grow: {depth_at_restart} entries for {} events",
        during.len()
    );
    // The probe passes the events that were in flight when the sink failed, and deliveries
    // running at once may swap places, but no event passes more than one batch.
    assert!(
        overtaken <= BATCH,
        "an event overtook {overtaken} that arrived before it, more than one batch"
    );

    running.stop().await.expect("service stops");
    if let StoreKind::Redis = kind {
        let client = redis::Client::open(common::STANDARD_REDIS).unwrap();
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&common::test_redis_config())
            .await
            .unwrap();
        let tagged = format!("{prefix}:{{p0}}");
        let keys = ["inbox", "retry", "state", "dlq"].map(|name| format!("{tagged}:{name}"));
        let _: redis::RedisResult<()> = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_down_for_a_minute_redis_store() {
    sink_down_for_a_minute(StoreKind::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_down_for_a_minute_embedded_store() {
    sink_down_for_a_minute(StoreKind::Embedded).await;
}
