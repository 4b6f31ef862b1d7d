//! Operations endpoints and logs: readiness follows the store, metrics parse as Prometheus
//! text, and JSON logs parse line by line without a secret in them.

mod common;

use common::{PrivateRedis, SECRET, ServiceSpec, TestService, free_port, secret_file};
use hookrelay::verify::Makini;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

async fn get(service: &TestService, path: &str) -> (u16, String) {
    let response = service
        .client
        .get(format!("{}{path}", service.base))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test]
async fn readiness_follows_the_store() {
    let mut store_redis = PrivateRedis::start_new();
    let secret = secret_file(SECRET);
    let mut spec = ServiceSpec::new("ready", &secret);
    spec.store_url = store_redis.url();
    let service = TestService::start(spec).await;

    assert_eq!(get(&service, "/healthz").await.0, 200);
    let (status, body) = get(&service, "/readyz").await;
    assert_eq!(status, 200, "{body}");

    store_redis.kill();
    let (status, body) = get(&service, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"store\":\"unavailable\""), "{body}");
    assert_eq!(
        get(&service, "/healthz").await.0,
        200,
        "the process itself is alive"
    );

    store_redis.start();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = get(&service, "/readyz").await;
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not ready after the store came back: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    service.stop().await;
}

/// Parses Prometheus text exposition: every line is a comment or `name{labels} value`.
fn parse_metrics(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
            let name_end = series.find('{').unwrap_or(series.len());
            let name = &series[..name_end];
            assert!(
                !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "invalid metric name in {line:?}"
            );
            if name_end < series.len() {
                assert!(series.ends_with('}'), "unclosed labels in {line:?}");
            }
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}"));
            (series.to_owned(), value)
        })
        .collect()
}

fn series_value(metrics: &[(String, f64)], series: &str) -> f64 {
    metrics
        .iter()
        .find(|(name, _)| name == series)
        .map_or(0.0, |(_, value)| *value)
}

#[tokio::test]
async fn metrics_parse_and_count_requests() {
    let secret = secret_file(SECRET);
    let service = TestService::start(ServiceSpec::new("metrics", &secret)).await;
    let accepted = r#"hookrelay_requests_total{source="makini",status="200"}"#;
    let rejected = r#"hookrelay_requests_total{source="makini",status="401"}"#;

    let (status, text) = get(&service, "/metrics").await;
    assert_eq!(status, 200);
    let before = parse_metrics(&text);

    let body = br#"{"event":"assets.updated","body":["m"]}"#;
    assert_eq!(service.post_signed(body).await.status().as_u16(), 200);
    assert_eq!(
        service
            .post_makini(body, Some("00"))
            .await
            .status()
            .as_u16(),
        401
    );

    let (_, text) = get(&service, "/metrics").await;
    let after = parse_metrics(&text);
    assert_eq!(
        series_value(&after, accepted) - series_value(&before, accepted),
        1.0
    );
    assert_eq!(
        series_value(&after, rejected) - series_value(&before, rejected),
        1.0
    );
    assert!(
        text.contains("hookrelay_ack_duration_seconds_bucket"),
        "{text}"
    );
    assert!(text.contains("hookrelay_inbox_depth"), "{text}");
    service.stop().await;
}

#[tokio::test]
async fn json_logs_parse_and_hide_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let secret_path = dir.path().join("makini.secret");
    std::fs::write(&secret_path, SECRET).unwrap();
    let redis_password = "redis-pass-never-logged";
    let config_path = dir.path().join("hookrelay.toml");
    std::fs::write(
        &config_path,
        format!(
            r#"
listen = "127.0.0.1:{port}"
[store]
redis_url = "redis://default:{redis_password}@127.0.0.1:6379"
key_prefix = "{prefix}"
[[sources]]
name = "makini"
scheme = "makini"
secrets = ["file:{secret}"]
"#,
            prefix = common::unique("jsonlogs"),
            secret = secret_path.display()
        ),
    )
    .unwrap();
    let log_path = dir.path().join("stderr.log");

    let mut child = Command::new(env!("CARGO_BIN_EXE_hookrelay"))
        .args(["serve", "--config"])
        .arg(&config_path)
        .env("HOOKRELAY_LOG_FORMAT", "json")
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "hookrelay did not start listening"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/webhooks/makini");
    let body = br#"{"event":"assets.updated","body":["logs"]}"#;
    for signature in [Makini::sign_hex(SECRET.as_bytes(), body), "00".into()] {
        client
            .post(&url)
            .header("content-type", "application/json")
            .header("x-webhook-signature", signature)
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let logs = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<&str> = logs.lines().collect();
    assert!(lines.len() >= 3, "{logs}");
    for line in &lines {
        let parsed: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(parsed["level"].is_string(), "{line}");
    }
    assert!(
        logs.contains("\"received\""),
        "the accepted request is logged: {logs}"
    );
    assert!(
        !logs.contains(SECRET),
        "the signing secret leaked into the logs"
    );
    assert!(
        !logs.contains(redis_password),
        "the Redis password leaked into the logs"
    );
}
