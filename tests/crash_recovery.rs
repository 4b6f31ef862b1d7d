//! The built binary with the embedded store: an event acknowledged with 200 survives a SIGKILL and is
//! forwarded after the restart, and a second process on the same data directory is rejected.
//! Each test starts its own hookrelay processes and, where it needs one, a private
//! `redis-server` on a free port.

mod common;

use common::{PrivateRedis, ServiceProcess, free_port, test_redis_config};
use hookrelay::config::SchemeKind;
use hookrelay::send::{SendRequest, sample_makini_body, signed_headers};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const SECRET_ENV: &str = "HOOKRELAY_TEST_MAKINI_SECRET";
const SECRET: &str = "crash-test-secret";
const STREAM: &str = "makini.events";

/// Starts `hookrelay serve` with its log in `log`.
fn start_hookrelay(config: &Path, log: &Path) -> ServiceProcess {
    ServiceProcess::start(config, log, &[(SECRET_ENV, SECRET)])
}

/// Writes a config with the embedded store in `data_dir` and, when `sink_port` is given, a
/// Redis Stream sink on that port for every Makini event.
fn write_config(
    dir: &Path,
    name: &str,
    port: u16,
    data_dir: &Path,
    sink_port: Option<u16>,
) -> PathBuf {
    let mut text = format!(
        r#"
listen = "127.0.0.1:{port}"

[store]
data_dir = "{data_dir}"

[worker]
backoff_initial = "100ms"
backoff_max = "300ms"
max_attempts = 1000
sink_timeout = "1s"

[[sources]]
name = "makini"
scheme = "makini"
secrets = ["env:{SECRET_ENV}"]
"#,
        data_dir = data_dir.display(),
    );
    if let Some(sink_port) = sink_port {
        text.push_str(&format!(
            r#"
[[sinks]]
name = "events"
type = "redis_stream"
url = "redis://127.0.0.1:{sink_port}"
stream = "{STREAM}"

[[routes]]
source = "makini"
sinks = ["events"]
"#
        ));
    }
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path
}

async fn post_signed(port: u16, body: &[u8]) -> (u16, String) {
    let request = SendRequest::new(
        format!("http://127.0.0.1:{port}/webhooks/makini"),
        SchemeKind::Makini,
        SECRET.into(),
        body.to_vec(),
    );
    let headers = signed_headers(&request).expect("sign request");
    let response = reqwest::Client::new()
        .post(&request.url)
        .headers(headers)
        .body(request.body.clone())
        .send()
        .await
        .expect("POST the event");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// Returns the payloads in the sink stream.
async fn stream_payloads(conn: &mut redis::aio::MultiplexedConnection) -> Vec<Vec<u8>> {
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(STREAM)
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await
        .expect("XRANGE the sink stream");
    reply
        .ids
        .iter()
        .map(|entry| entry.get::<Vec<u8>>("payload").expect("payload field"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_survives_sigkill_after_200() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let port = free_port();
    let mut redis = PrivateRedis::reserve();
    let config = write_config(
        dir.path(),
        "hookrelay.toml",
        port,
        &data_dir,
        Some(redis.port),
    );
    let first_log = dir.path().join("first.log");

    // The sink's Redis is not running, so the worker cannot forward before the kill.
    let mut first = start_hookrelay(&config, &first_log);
    first.wait_for_port(port);
    let body = sample_makini_body("assets.updated");
    let (status, answer) = post_signed(port, &body).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("accepted"), "{answer}");
    first.kill();

    let log = first.log();
    assert!(log.contains("embedded"), "{log}");
    assert!(log.contains("serves this process only"), "{log}");
    assert!(log.contains(&data_dir.display().to_string()), "{log}");

    redis.start();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&test_redis_config())
        .await
        .unwrap();
    assert!(
        stream_payloads(&mut conn).await.is_empty(),
        "nothing forwarded before the kill"
    );

    let second_log = dir.path().join("second.log");
    let mut second = start_hookrelay(&config, &second_log);
    second.wait_for_port(port);
    let deadline = Instant::now() + Duration::from_secs(20);
    while stream_payloads(&mut conn).await.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Waits so that a second copy, were one added, would be counted below.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let payloads = stream_payloads(&mut conn).await;
    assert_eq!(payloads.len(), 1, "log:\n{}", second.log());
    assert_eq!(payloads[0], body);
}

#[tokio::test]
async fn second_process_on_data_dir_fails() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let (first_port, second_port) = (free_port(), free_port());
    let first_config = write_config(dir.path(), "first.toml", first_port, &data_dir, None);
    let second_config = write_config(dir.path(), "second.toml", second_port, &data_dir, None);
    let first_log = dir.path().join("first.log");
    let second_log = dir.path().join("second.log");

    let mut first = start_hookrelay(&first_config, &first_log);
    first.wait_for_port(first_port);
    let mut second = start_hookrelay(&second_config, &second_log);

    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = second.try_wait() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "second process still running; log:\n{}",
            second.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = second.log();
    assert!(!status.success(), "{log}");
    assert!(log.contains("is locked by another process"), "{log}");
    assert!(log.contains("serves one process only"), "{log}");
    assert!(
        first.try_wait().is_none(),
        "the first process keeps running"
    );
    let (code, answer) = post_signed(first_port, &sample_makini_body("assets.updated")).await;
    assert_eq!(code, 200, "{answer}");
}
