//! Dead letters end to end, on both stores. A sink that is down makes every event a dead
//! letter. Once the sink is back, `hookrelay replay --all` (the real binary) returns them to
//! the inbox, and each event reaches the sink exactly once.

mod common;

use common::{PrivateRedis, SECRET, STANDARD_REDIS, read_stream, secret_file, unique};
use hookrelay::app::{self, Running};
use hookrelay::config::Config;
use hookrelay::verify::Makini;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const EVENTS: usize = 20;
const SINK_STREAM: &str = "replayed-events";

/// Writes the config of a service whose only sink is a Redis stream at `sink_url`, giving up
/// after two quick rounds, without pausing the sink.
fn write_config(dir: &Path, store_toml: &str, sink_url: &str, secret: &Path) -> std::path::PathBuf {
    let text = format!(
        r#"
listen = "127.0.0.1:0"

[store]
{store_toml}

[worker]
max_attempts = 2
# Every event must use up its attempts, so the sink is never paused.
pause_after_failures = 0
backoff_initial = "50ms"
backoff_max = "100ms"

[[sources]]
name = "makini"
scheme = "makini"
secrets = ["file:{secret}"]

[[sinks]]
name = "events"
type = "redis_stream"
url = "{sink_url}"
stream = "{SINK_STREAM}"

[[routes]]
source = "makini"
sinks = ["events"]
"#,
        secret = secret.display(),
    );
    let path = dir.join("hookrelay.toml");
    std::fs::write(&path, text).unwrap();
    path
}

async fn start(config_path: &Path) -> Running {
    common::init_logs();
    let config = Config::load(Some(config_path)).expect("config loads");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    app::start(&config, listener).await.expect("service starts")
}

fn event_ids() -> Vec<String> {
    (0..EVENTS).map(|i| format!("replay-{i}")).collect()
}

async fn post_events(running: &Running) {
    let client = reqwest::Client::new();
    let url = format!("http://{}/webhooks/makini", running.addr);
    for id in event_ids() {
        let body = format!(r#"{{"id":"{id}","event":"assets.updated"}}"#);
        let signature = Makini::sign_hex(SECRET.as_bytes(), body.as_bytes());
        let response = client
            .post(&url)
            .header("content-type", "application/json")
            .header("x-webhook-signature", signature)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "event {id} accepted");
    }
}

/// Waits until the worker has dead-lettered `count` deliveries, for at most 20 s.
async fn wait_for_dead_letters(running: &Running, count: u64) {
    let stats = running.worker_stats.clone().expect("worker runs");
    let deadline = Instant::now() + Duration::from_secs(20);
    while stats.dead_lettered.load(Ordering::Relaxed) < count && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stats.dead_lettered.load(Ordering::Relaxed), count);
}

/// Runs the `hookrelay` binary with `args` and `--config`.
fn hookrelay(config_path: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hookrelay"))
        .args(args)
        .arg("--config")
        .arg(config_path)
        .env_remove("HOOKRELAY_CONFIG")
        .env_remove("HOOKRELAY_REDIS_URL")
        .env_remove("HOOKRELAY_DATA_DIR")
        .output()
        .expect("hookrelay binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Checks `dlq list` and `dlq show` over the dead letters of every event.
fn check_listing(config_path: &Path) {
    let list = hookrelay(config_path, &["dlq", "list"]);
    assert!(list.status.success(), "dlq list: {}", stderr(&list));
    let listing = stdout(&list);
    assert!(
        listing.contains(&format!("{EVENTS} of {EVENTS} dead letters shown")),
        "{listing}"
    );
    for id in event_ids() {
        assert!(listing.contains(&id), "{id} listed:\n{listing}");
    }
    let row = listing
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.get(1) == Some(&"replay-0"))
        .expect("a row for replay-0");
    let handle = row[0];

    let show = hookrelay(config_path, &["dlq", "show", handle]);
    assert!(show.status.success(), "dlq show: {}", stderr(&show));
    let printed = stdout(&show);
    assert!(printed.contains("sink:      events"), "{printed}");
    assert!(printed.contains("attempts:  2"), "{printed}");
    assert!(printed.contains("payload:   "), "{printed}");
    assert!(
        printed.contains(r#"{"id":"replay-0","event":"assets.updated"}"#),
        "{printed}"
    );
}

fn replay_all(config_path: &Path) {
    let replay = hookrelay(config_path, &["replay", "--all"]);
    assert!(replay.status.success(), "replay: {}", stderr(&replay));
    let output = stdout(&replay);
    assert!(
        output.contains(&format!("{EVENTS} dead letters returned to the inbox")),
        "{output}"
    );
}

/// Waits until the sink stream contains every event, then a little longer for any extra copy,
/// and checks that each event arrived once.
async fn check_each_event_once(sink_url: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while read_stream(sink_url, SINK_STREAM).await.len() < EVENTS && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let entries = read_stream(sink_url, SINK_STREAM).await;
    let delivered: Vec<String> = entries.into_iter().map(|entry| entry.id).collect();
    let distinct: BTreeSet<&String> = delivered.iter().collect();
    let expected: Vec<String> = event_ids();
    let expected: BTreeSet<&String> = expected.iter().collect();
    assert_eq!(delivered.len(), EVENTS, "one copy each: {delivered:?}");
    assert_eq!(distinct, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_replay_after_sink_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(SECRET);
    let mut sink = PrivateRedis::reserve();
    let data_dir = dir.path().join("data");
    let store_toml = format!("data_dir = \"{}\"", data_dir.display());
    let config_path = write_config(dir.path(), &store_toml, &sink.url(), secret.path());

    let running = start(&config_path).await;
    post_events(&running).await;
    wait_for_dead_letters(&running, EVENTS as u64).await;

    // The embedded store allows one process at a time, so the commands need serve stopped.
    let locked = hookrelay(&config_path, &["dlq", "list"]);
    assert!(!locked.status.success());
    assert!(
        stderr(&locked).contains("stop `hookrelay serve` before running dlq or replay"),
        "{}",
        stderr(&locked)
    );
    running.stop().await.unwrap();

    sink.start();
    check_listing(&config_path);
    replay_all(&config_path);
    let after = hookrelay(&config_path, &["dlq", "list"]);
    assert!(
        stdout(&after).contains("0 of 0 dead letters shown"),
        "{}",
        stdout(&after)
    );

    let running = start(&config_path).await;
    check_each_event_once(&sink.url()).await;
    let stats = running.worker_stats.clone().unwrap();
    assert_eq!(stats.dead_lettered.load(Ordering::Relaxed), 0);
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_replay_while_serving() {
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(SECRET);
    let mut sink = PrivateRedis::reserve();
    let prefix = unique("replay");
    let store_toml = format!("redis_url = \"{STANDARD_REDIS}\"\nkey_prefix = \"{prefix}\"");
    let config_path = write_config(dir.path(), &store_toml, &sink.url(), secret.path());

    let running = start(&config_path).await;
    post_events(&running).await;
    wait_for_dead_letters(&running, EVENTS as u64).await;

    // With Redis the commands run beside the service.
    sink.start();
    check_listing(&config_path);
    replay_all(&config_path);

    check_each_event_once(&sink.url()).await;
    let stats = running.worker_stats.clone().unwrap();
    assert_eq!(stats.dead_lettered.load(Ordering::Relaxed), EVENTS as u64);
    let after = hookrelay(&config_path, &["dlq", "list"]);
    assert!(
        stdout(&after).contains("0 of 0 dead letters shown"),
        "{}",
        stdout(&after)
    );
    running.stop().await.unwrap();

    let client = redis::Client::open(STANDARD_REDIS).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let tagged = format!("{prefix}:{{p0}}");
    let keys = ["inbox", "retry", "state", "dlq"].map(|name| format!("{tagged}:{name}"));
    let _: redis::RedisResult<()> = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await;
}
