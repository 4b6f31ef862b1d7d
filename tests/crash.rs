//! A real process killed with SIGKILL after it acknowledged an event and before it could
//! forward it: after a restart the event reaches the sink exactly once.

mod common;

use common::{
    PrivateRedis, SECRET, STANDARD_REDIS, ServiceProcess, free_port, read_stream, unique,
    wait_for_entries,
};
use hookrelay::verify::Makini;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn write_config(
    dir: &Path,
    port: u16,
    prefix: &str,
    sink_url: &str,
    stream: &str,
) -> std::path::PathBuf {
    let secret_path = dir.join("makini.secret");
    std::fs::write(&secret_path, SECRET).unwrap();
    let config = format!(
        r#"
listen = "127.0.0.1:{port}"
[store]
redis_url = "{STANDARD_REDIS}"
key_prefix = "{prefix}"
[worker]
backoff_initial = "50ms"
backoff_max = "200ms"
visibility_timeout = "1s"
sink_timeout = "500ms"
[[sources]]
name = "makini"
scheme = "makini"
secrets = ["file:{secret}"]
[[sinks]]
name = "events"
type = "redis_stream"
url = "{sink_url}"
stream = "{stream}"
[[routes]]
source = "makini"
sinks = ["events"]
"#,
        secret = secret_path.display()
    );
    let path = dir.join("hookrelay.toml");
    std::fs::write(&path, config).unwrap();
    path
}

/// Starts the binary, with its log in `dir`, and waits until it accepts connections.
fn spawn_service(dir: &Path, config: &Path, port: u16) -> ServiceProcess {
    let mut service = ServiceProcess::start(config, &dir.join("hookrelay.log"), &[]);
    service.wait_for_port(port);
    service
}

#[tokio::test]
async fn killed_after_ack_forwards_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let prefix = unique("sigkill");
    let stream = unique("sigkill-sink");
    // The sink is down while the first process runs, so it cannot forward anything.
    let mut sink_redis = PrivateRedis::reserve();
    let config = write_config(dir.path(), port, &prefix, &sink_redis.url(), &stream);

    let mut first = spawn_service(dir.path(), &config, port);
    let body = br#"{"id":"acked-then-killed","event":"work_orders.inserted"}"#;
    let response = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/webhooks/makini"))
        .header("content-type", "application/json")
        .header(
            "x-webhook-signature",
            Makini::sign_hex(SECRET.as_bytes(), body),
        )
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);

    // Let it fail a round or two, then kill it without any chance to clean up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.kill();

    sink_redis.start();
    assert!(read_stream(&sink_redis.url(), &stream).await.is_empty());

    let mut second = spawn_service(dir.path(), &config, port);
    let entries = wait_for_entries(&sink_redis.url(), &stream, 1, Duration::from_secs(15)).await;
    assert_eq!(entries.len(), 1, "forwarded after restart");
    assert_eq!(entries[0].id, "acked-then-killed");
    assert_eq!(entries[0].payload, body);

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let entries = read_stream(&sink_redis.url(), &stream).await;
    assert_eq!(entries.len(), 1, "forwarded exactly once: {entries:?}");

    second.kill();
}

#[tokio::test]
async fn sigterm_exits_cleanly_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let prefix = unique("sigterm");
    let stream = unique("sigterm-sink");
    let mut sink_redis = PrivateRedis::reserve();
    let config = write_config(dir.path(), port, &prefix, &sink_redis.url(), &stream);

    let mut first = spawn_service(dir.path(), &config, port);
    let client = reqwest::Client::new();
    for n in 0..5 {
        let body = format!(r#"{{"id":"term-{n}","event":"assets.updated"}}"#);
        let response = client
            .post(format!("http://127.0.0.1:{port}/webhooks/makini"))
            .header("content-type", "application/json")
            .header(
                "x-webhook-signature",
                Makini::sign_hex(SECRET.as_bytes(), body.as_bytes()),
            )
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
    }

    // The sink is down, so deliveries are failing and being retried when the signal comes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let signalled = Command::new("kill")
        .args(["-TERM", &first.id().to_string()])
        .status()
        .unwrap();
    assert!(signalled.success());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = first.try_wait() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still running 10 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status:?}");

    sink_redis.start();
    let mut second = spawn_service(dir.path(), &config, port);
    let entries = wait_for_entries(&sink_redis.url(), &stream, 5, Duration::from_secs(15)).await;
    let mut ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["term-0", "term-1", "term-2", "term-3", "term-4"]);

    second.kill();
}
