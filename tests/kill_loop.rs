//! SIGKILL in a loop under steady load, on both stores: the built binary is killed every one to
//! two seconds and restarted on the same port and data while senders keep posting signed
//! events and re-send some of them. Every event that got a 2xx must reach the sink exactly
//! once, and no event may reach it twice.
//!
//! The sink is a Redis Stream on a private durable `redis-server`; with the Redis store, the
//! inbox lives on the same server.

mod common;

use common::{PrivateRedis, SECRET, ServiceProcess, free_port, read_stream};
use hookrelay::verify::Makini;
use rand::Rng;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Concurrent senders.
const SENDERS: usize = 4;
/// Maximum events sent; sending also stops a second after the last restart.
const MAX_EVENTS: usize = 600;
/// Pause of each sender between two events, so the load is steady: about 50 events/s in all.
const SEND_INTERVAL: Duration = Duration::from_millis(80);
const KILLS: usize = 6;
/// Time from SIGKILL to the exit of the process.
const EXIT_LIMIT: Duration = Duration::from_secs(2);
/// Time from a restart until `/readyz` returns 200.
const READY_LIMIT: Duration = Duration::from_secs(5);
/// How long a sender retries one event over connection errors before it records the error.
const RETRY_LIMIT: Duration = Duration::from_secs(20);
/// Time the worker gets after sending ends to deliver every acknowledged event.
const DRAIN_LIMIT: Duration = Duration::from_secs(60);
/// `worker.visibility_timeout`: entries a killed process had claimed are handed out again
/// after this long.
const VISIBILITY_TIMEOUT: &str = "3s";

enum StoreKind {
    Redis,
    Embedded,
}

impl StoreKind {
    fn name(&self) -> &'static str {
        match self {
            StoreKind::Redis => "redis",
            StoreKind::Embedded => "embedded",
        }
    }
}

/// The final outcome of one send of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Accepted,
    Duplicate,
    Unavailable,
    /// Any other status: a defect.
    Unexpected(u16),
    /// Connection errors until [`RETRY_LIMIT`] passed.
    ConnectionError,
}

impl Outcome {
    fn acknowledged(self) -> bool {
        matches!(self, Outcome::Accepted | Outcome::Duplicate)
    }
}

/// One send of one event, with every retry over connection errors.
#[derive(Debug)]
struct Send {
    event: usize,
    resend: bool,
    outcome: Outcome,
    /// Whether a request of this send was cut: its connection failed after it was made.
    interrupted: bool,
}

/// State the killer and the senders share.
struct Shared {
    base: String,
    client: reqwest::Client,
    next_event: AtomicUsize,
    kills: AtomicUsize,
    stop: AtomicBool,
    sends: Mutex<Vec<Send>>,
}

fn event_id(store: &StoreKind, n: usize) -> String {
    format!("kill-{}-{n}", store.name())
}

fn write_config(dir: &Path, store: &StoreKind, port: u16, redis: &PrivateRedis) -> PathBuf {
    let secret_path = dir.join("makini.secret");
    std::fs::write(&secret_path, SECRET).expect("write the secret file");
    let store_table = match store {
        StoreKind::Redis => format!(
            "redis_url = \"{}\"\nkey_prefix = \"hookrelay\"",
            redis.url()
        ),
        StoreKind::Embedded => format!("data_dir = \"{}\"", dir.join("data").display()),
    };
    let config = format!(
        r#"
listen = "127.0.0.1:{port}"
ack_timeout = "2s"

[store]
{store_table}

[worker]
visibility_timeout = "{VISIBILITY_TIMEOUT}"
backoff_initial = "50ms"
backoff_max = "500ms"
sink_timeout = "2s"
max_attempts = 1000

[[sources]]
name = "makini"
scheme = "makini"
secrets = ["file:{secret}"]

[[sinks]]
name = "events"
type = "redis_stream"
url = "{sink_url}"
stream = "events"

[[routes]]
source = "makini"
sinks = ["events"]
"#,
        secret = secret_path.display(),
        sink_url = redis.url(),
    );
    let path = dir.join("hookrelay.toml");
    std::fs::write(&path, config).expect("write the config");
    path
}

/// Polls `/readyz` until it returns 200; returns how long that took. Panics with the log when
/// the process exits or [`READY_LIMIT`] passes.
async fn wait_ready(process: &mut ServiceProcess, shared: &Shared) -> Duration {
    let started = Instant::now();
    loop {
        if let Some(status) = process.try_wait() {
            panic!("hookrelay exited with {status}; log:\n{}", process.log());
        }
        let probe = shared
            .client
            .get(format!("{}/readyz", shared.base))
            .timeout(Duration::from_secs(1))
            .send()
            .await;
        if probe.is_ok_and(|response| response.status().is_success()) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < READY_LIMIT,
            "not ready {READY_LIMIT:?} after the restart; log:\n{}",
            process.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Posts event `n` until an HTTP response arrives or [`RETRY_LIMIT`] passes. Returns the
/// outcome and whether a request was cut on a connection already made (by a kill).
async fn post_event(shared: &Shared, store: &StoreKind, n: usize) -> (Outcome, bool) {
    let body = format!(
        r#"{{"id":"{}","event":"work_orders.updated","data":{{"sequence":{n}}}}}"#,
        event_id(store, n)
    );
    let signature = Makini::sign_hex(SECRET.as_bytes(), body.as_bytes());
    let started = Instant::now();
    let mut interrupted = false;
    loop {
        match send_once(shared, &body, &signature).await {
            Ok((status, text)) => {
                let outcome = match status {
                    200 if text.contains("\"accepted\"") => Outcome::Accepted,
                    200 if text.contains("\"duplicate\"") => Outcome::Duplicate,
                    503 => Outcome::Unavailable,
                    other => Outcome::Unexpected(other),
                };
                return (outcome, interrupted);
            }
            Err(error) if started.elapsed() > RETRY_LIMIT => {
                eprintln!("{}: giving up after {error}", event_id(store, n));
                return (Outcome::ConnectionError, true);
            }
            Err(error) => interrupted |= !error.is_connect(),
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Posts `body` once and returns the status and the response body; an error when the
/// connection fails before the whole response has arrived.
async fn send_once(
    shared: &Shared,
    body: &str,
    signature: &str,
) -> Result<(u16, String), reqwest::Error> {
    let response = shared
        .client
        .post(format!("{}/webhooks/makini", shared.base))
        .header("content-type", "application/json")
        .header("x-webhook-signature", signature)
        .body(body.to_owned())
        .send()
        .await?;
    let status = response.status().as_u16();
    Ok((status, response.text().await?))
}

/// Sends events at a steady pace until the stop flag is set. Event numbers ending in 3 are
/// re-sent at once, and those ending in 7 after the next kill.
async fn run_sender(shared: Arc<Shared>, store: Arc<StoreKind>) {
    let mut ticks = tokio::time::interval(SEND_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Events to re-send, with the kill count at their first send.
    let mut deferred: Vec<(usize, usize)> = Vec::new();
    let record = |event, resend, (outcome, interrupted)| {
        let mut sends = shared.sends.lock().unwrap();
        sends.push(Send {
            event,
            resend,
            outcome,
            interrupted,
        });
    };
    while !shared.stop.load(Ordering::Acquire) {
        ticks.tick().await;
        let kills = shared.kills.load(Ordering::Acquire);
        let (due, waiting): (Vec<_>, Vec<_>) = deferred.into_iter().partition(|(_, k)| *k < kills);
        deferred = waiting;
        for (n, _) in due {
            record(n, true, post_event(&shared, &store, n).await);
        }

        let n = shared.next_event.fetch_add(1, Ordering::AcqRel);
        if n >= MAX_EVENTS {
            break;
        }
        record(n, false, post_event(&shared, &store, n).await);
        match n % 10 {
            3 => record(n, true, post_event(&shared, &store, n).await),
            7 => deferred.push((n, kills)),
            _ => {}
        }
    }
    for (n, _) in deferred {
        record(n, true, post_event(&shared, &store, n).await);
    }
}

/// Reads the inbox depth from `/metrics`; `None` while the service does not respond.
async fn inbox_depth(shared: &Shared) -> Option<f64> {
    let text = shared
        .client
        .get(format!("{}/metrics", shared.base))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("hookrelay_inbox_depth "))
        .and_then(|value| value.trim().parse().ok())
}

/// Counts the copies of each event id in the sink stream.
async fn sink_counts(redis: &PrivateRedis) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for entry in read_stream(&redis.url(), "events").await {
        *counts.entry(entry.id).or_default() += 1;
    }
    counts
}

/// Runs the scenario on `store`, prints its figures, and asserts that every acknowledged event
/// reached the sink exactly once.
async fn kill_loop(store: StoreKind) {
    let store = Arc::new(store);
    let dir = tempfile::tempdir().unwrap();
    let redis = PrivateRedis::start_durable();
    let port = free_port();
    let config = write_config(dir.path(), &store, port, &redis);
    let log = dir.path().join("hookrelay.log");

    let shared = Arc::new(Shared {
        base: format!("http://127.0.0.1:{port}"),
        client: reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
        next_event: AtomicUsize::new(0),
        kills: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        sends: Mutex::new(Vec::new()),
    });
    let mut process = ServiceProcess::start(&config, &log, &[]);
    wait_ready(&mut process, &shared).await;

    let senders: Vec<_> = (0..SENDERS)
        .map(|_| tokio::spawn(run_sender(shared.clone(), store.clone())))
        .collect();

    let mut longest_outage = Duration::ZERO;
    let mut slowest_exit = Duration::ZERO;
    for _ in 0..KILLS {
        let pause = rand::rng().random_range(1000..=2000);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let killed = Instant::now();
        let exit = process.kill();
        shared.kills.fetch_add(1, Ordering::AcqRel);
        assert!(exit < EXIT_LIMIT, "exit took {exit:?} after SIGKILL");
        slowest_exit = slowest_exit.max(exit);

        process = ServiceProcess::start(&config, &log, &[]);
        wait_ready(&mut process, &shared).await;
        longest_outage = longest_outage.max(killed.elapsed());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    shared.stop.store(true, Ordering::Release);
    for sender in senders {
        sender.await.expect("sender task");
    }

    let sends = std::mem::take(&mut *shared.sends.lock().unwrap());
    let unexpected: Vec<&Send> = sends
        .iter()
        .filter(|send| matches!(send.outcome, Outcome::Unexpected(_)))
        .collect();
    assert!(unexpected.is_empty(), "unexpected statuses: {unexpected:?}");
    let acknowledged: HashSet<usize> = sends
        .iter()
        .filter(|send| send.outcome.acknowledged())
        .map(|send| send.event)
        .collect();
    let mut accepted_times: HashMap<usize, usize> = HashMap::new();
    for send in sends
        .iter()
        .filter(|send| send.outcome == Outcome::Accepted)
    {
        *accepted_times.entry(send.event).or_default() += 1;
    }
    let accepted_twice: Vec<String> = accepted_times
        .iter()
        .filter(|(_, times)| **times > 1)
        .map(|(n, _)| event_id(&store, *n))
        .collect();
    let sent: HashSet<usize> = sends.iter().map(|send| send.event).collect();

    // Wait until the sink contains every acknowledged event and the inbox is empty, so that a
    // second copy from a reclaimed entry would be counted below.
    let deadline = Instant::now() + DRAIN_LIMIT;
    let counts = loop {
        let counts = sink_counts(&redis).await;
        let all_there = acknowledged
            .iter()
            .all(|n| counts.contains_key(&event_id(&store, *n)));
        if all_there && inbox_depth(&shared).await == Some(0.0) {
            break counts;
        }
        if Instant::now() > deadline {
            break counts;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };

    let lost: Vec<String> = acknowledged
        .iter()
        .map(|n| event_id(&store, *n))
        .filter(|id| !counts.contains_key(id))
        .collect();
    let duplicated: Vec<(&String, &usize)> =
        counts.iter().filter(|(_, copies)| **copies > 1).collect();
    let acknowledged_ids: HashSet<String> =
        acknowledged.iter().map(|n| event_id(&store, *n)).collect();
    let delivered_unacknowledged = counts
        .keys()
        .filter(|id| !acknowledged_ids.contains(*id))
        .count();
    let kills = shared.kills.load(Ordering::Acquire);
    let interrupted = sends.iter().filter(|send| send.interrupted).count();
    // Copies of entries a killed process had forwarded but not settled, dropped by the sink.
    let redelivered = process
        .log()
        .matches("already in the stream; skipped")
        .count();
    println!(
        "kill loop, {} store: sent {}, acknowledged {}, duplicates sent {}, kills {kills}, \
         delivered {}, duplicated {}, lost {}, delivered without a 2xx \
         {delivered_unacknowledged}, requests cut by a kill {interrupted}, re-deliveries \
         dropped by the sink {redelivered}, longest outage {longest_outage:?}, slowest exit \
         {slowest_exit:?}",
        store.name(),
        sent.len(),
        acknowledged.len(),
        sends.iter().filter(|send| send.resend).count(),
        counts.len(),
        duplicated.len(),
        lost.len(),
    );

    assert!(lost.is_empty(), "acknowledged, never delivered: {lost:?}");
    assert!(duplicated.is_empty(), "delivered twice: {duplicated:?}");
    assert!(
        accepted_twice.is_empty(),
        "accepted more than once: {accepted_twice:?}"
    );
    assert_eq!(
        inbox_depth(&shared).await,
        Some(0.0),
        "inbox not drained; log:\n{}",
        process.log()
    );
    assert!(
        acknowledged.len() >= 250,
        "only {} events acknowledged",
        acknowledged.len()
    );
    process.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_survives_kill_loop() {
    kill_loop(StoreKind::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_survives_kill_loop() {
    kill_loop(StoreKind::Embedded).await;
}
