//! The schemes and source policies over HTTP: the service starts in-process on a loopback
//! port with the standard Redis (127.0.0.1:6379) as store and sink. Each test uses its own
//! key prefix and stream, so tests run in parallel.
//!
//! The GitHub payloads under `tests/data/github/` are real example deliveries from the
//! `@octokit/webhooks-examples` package (MIT licence, see `SOURCE.md` there).

use hookrelay::app::{self, Running};
use hookrelay::config::Config;
use hookrelay::verify::{Github, Slack};
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};
use tokio::net::TcpListener;

const REDIS: &str = "redis://127.0.0.1:6379";
const GITHUB_SECRET: &str = "github-integration-secret";

/// A running service, its stream sink and the secret file it reads.
struct Service {
    running: Running,
    stream: String,
    _secret: tempfile::NamedTempFile,
}

impl Service {
    /// Starts a service with one source named `name`. `source` contains the source's keys after
    /// its name and secrets; `top` contains top-level keys.
    async fn start(name: &str, top: &str, source: &str, secret: &str) -> Service {
        let unique = uuid::Uuid::new_v4().simple().to_string();
        let stream = format!("hookrelay-test-schemes-{unique}");
        let mut secret_file = tempfile::NamedTempFile::new().unwrap();
        secret_file.write_all(secret.as_bytes()).unwrap();
        let secrets = match source.contains("scheme = \"none\"") {
            true => String::new(),
            false => format!("secrets = [\"file:{}\"]", secret_file.path().display()),
        };
        let text = format!(
            r#"
            {top}
            [store]
            redis_url = "{REDIS}"
            key_prefix = "hookrelay-test-schemes-{unique}"
            [worker]
            backoff_initial = "50ms"
            [[sources]]
            name = "{name}"
            {secrets}
            {source}
            [[sinks]]
            name = "events"
            type = "redis_stream"
            url = "{REDIS}"
            stream = "{stream}"
            dedupe_window = "10m"
            [[routes]]
            source = "{name}"
            sinks = ["events"]
            "#
        );
        let config = Config::from_toml(&text).unwrap();
        config.validate().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let running = app::start(&config, listener).await.unwrap();
        Service {
            running,
            stream,
            _secret: secret_file,
        }
    }

    fn url(&self, source: &str) -> String {
        format!("http://{}/webhooks/{source}", self.running.addr)
    }

    /// Waits until the sink stream contains `count` entries (at most 15 s) and returns them.
    async fn forwarded(&self, count: usize) -> Vec<HashMap<String, Vec<u8>>> {
        self.forwarded_within(count, Duration::from_secs(15)).await
    }

    /// Returns the sink stream's entries after the worker had 2 s to forward anything.
    async fn forwarded_after_pause(&self) -> Vec<HashMap<String, Vec<u8>>> {
        tokio::time::sleep(Duration::from_secs(2)).await;
        self.forwarded_within(0, Duration::ZERO).await
    }

    async fn forwarded_within(
        &self,
        count: usize,
        wait: Duration,
    ) -> Vec<HashMap<String, Vec<u8>>> {
        let client = redis::Client::open(REDIS).unwrap();
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&test_redis_config())
            .await
            .unwrap();
        let deadline = Instant::now() + wait;
        loop {
            let entries: Vec<(String, HashMap<String, Vec<u8>>)> = redis::cmd("XRANGE")
                .arg(&self.stream)
                .arg("-")
                .arg("+")
                .query_async(&mut conn)
                .await
                .unwrap();
            if entries.len() >= count || Instant::now() > deadline {
                return entries.into_iter().map(|(_, fields)| fields).collect();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the service, then deletes its sink stream and store keys, so that a late delivery
    /// cannot write them again. The idempotency keys expire on their own.
    async fn stop(self) {
        self.running.stop().await.unwrap();
        let client = redis::Client::open(REDIS).unwrap();
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&test_redis_config())
            .await
            .unwrap();
        // The key prefix is the stream's name.
        let tagged = format!("{}:{{p0}}", self.stream);
        let store_keys = ["inbox", "retry", "state", "dlq"].map(|name| format!("{tagged}:{name}"));
        let _: i64 = redis::cmd("DEL")
            .arg(&self.stream)
            .arg(&store_keys)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}

fn github_payloads() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/github");
    let mut payloads: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .filter(|path| path.file_name().is_some_and(|name| name != "package.json"))
        .map(|path| {
            let stem = path.file_name().unwrap().to_str().unwrap();
            let event = stem.split('.').next().unwrap().to_owned();
            (event, std::fs::read(&path).unwrap())
        })
        .collect();
    payloads.sort();
    payloads
}

async fn json_body(response: reqwest::Response) -> serde_json::Value {
    let bytes = response.bytes().await.unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn text(fields: &HashMap<String, Vec<u8>>, name: &str) -> String {
    String::from_utf8(fields[name].clone()).unwrap()
}

async fn post_github(
    client: &reqwest::Client,
    url: &str,
    event: &str,
    delivery: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, serde_json::Value) {
    let response = client
        .post(url)
        .header("content-type", content_type)
        .header(
            "x-hub-signature-256",
            Github::sign(GITHUB_SECRET.as_bytes(), &body),
        )
        .header("x-github-event", event)
        .header("x-github-delivery", delivery)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, json_body(response).await)
}

#[tokio::test]
async fn github_examples_accepted_and_forwarded() {
    let service = Service::start("github", "", "scheme = \"github\"", GITHUB_SECRET).await;
    let client = reqwest::Client::new();
    let payloads = github_payloads();
    assert!(payloads.len() >= 10, "only {} payloads", payloads.len());

    let mut expected = HashMap::new();
    for (event, body) in &payloads {
        let delivery = uuid::Uuid::new_v4().to_string();
        let (status, answer) = post_github(
            &client,
            &service.url("github"),
            event,
            &delivery,
            "application/json",
            body.clone(),
        )
        .await;
        assert_eq!(status, 200, "{event}: {answer}");
        assert_eq!(answer["status"], "accepted", "{event}");
        assert_eq!(answer["id"], delivery.as_str(), "{event}");
        expected.insert(delivery, (event.clone(), body.clone()));
    }

    let forwarded = service.forwarded(payloads.len()).await;
    assert_eq!(forwarded.len(), payloads.len());
    for fields in &forwarded {
        let id = text(fields, "id");
        let (event, body) = &expected[&id];
        assert_eq!(&text(fields, "event_type"), event);
        assert_eq!(text(fields, "source"), "github");
        assert_eq!(&fields["payload"], body, "payload of {event} changed");
    }
    service.stop().await;
}

#[tokio::test]
async fn github_redelivery_is_duplicate() {
    let service = Service::start("github", "", "scheme = \"github\"", GITHUB_SECRET).await;
    let client = reqwest::Client::new();
    let (event, body) = github_payloads().remove(0);
    let delivery = uuid::Uuid::new_v4().to_string();

    let url = service.url("github");
    let json = "application/json";
    let first = post_github(&client, &url, &event, &delivery, json, body.clone()).await;
    let second = post_github(&client, &url, &event, &delivery, json, body).await;
    assert_eq!(first.1["status"], "accepted");
    assert_eq!(second.0, 200);
    assert_eq!(second.1["status"], "duplicate");
    service.stop().await;
}

#[tokio::test]
async fn github_form_delivery_forwarded_as_received() {
    let service = Service::start("github", "", "scheme = \"github\"", GITHUB_SECRET).await;
    let client = reqwest::Client::new();
    let (event, json) = github_payloads()
        .into_iter()
        .find(|(event, _)| event == "issues")
        .unwrap();
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", std::str::from_utf8(&json).unwrap())
        .finish()
        .into_bytes();
    let delivery = uuid::Uuid::new_v4().to_string();

    let (status, answer) = post_github(
        &client,
        &service.url("github"),
        &event,
        &delivery,
        "application/x-www-form-urlencoded; charset=utf-8",
        form.clone(),
    )
    .await;
    assert_eq!(status, 200, "{answer}");

    let forwarded = service.forwarded(1).await;
    assert_eq!(forwarded.len(), 1);
    assert_eq!(text(&forwarded[0], "event_type"), "issues");
    assert_eq!(forwarded[0]["payload"], form);
    service.stop().await;
}

#[tokio::test]
async fn github_wrong_secret_is_401_and_not_forwarded() {
    let service = Service::start("github", "", "scheme = \"github\"", GITHUB_SECRET).await;
    let (event, body) = github_payloads().remove(0);
    let response = reqwest::Client::new()
        .post(service.url("github"))
        .header("content-type", "application/json")
        .header(
            "x-hub-signature-256",
            Github::sign(b"another secret", &body),
        )
        .header("x-github-event", event)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);

    let unsigned = reqwest::Client::new()
        .post(service.url("github"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status().as_u16(), 401);
    assert!(service.forwarded_after_pause().await.is_empty());
    service.stop().await;
}

#[tokio::test]
async fn unaccepted_content_type_is_415() {
    let service = Service::start("github", "", "scheme = \"github\"", GITHUB_SECRET).await;
    let body = b"{}".to_vec();
    let response = reqwest::Client::new()
        .post(service.url("github"))
        .header("content-type", "text/plain")
        .header(
            "x-hub-signature-256",
            Github::sign(GITHUB_SECRET.as_bytes(), &body),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 415);
    let answer = json_body(response).await;
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("application/json"),
        "{answer}"
    );
    service.stop().await;
}

#[tokio::test]
async fn client_outside_allow_list_is_403() {
    let source = "scheme = \"github\"\nallowed_ips = [\"192.0.2.0/24\"]";
    let service = Service::start("github", "", source, GITHUB_SECRET).await;
    let (event, body) = github_payloads().remove(0);
    let (status, answer) = post_github(
        &reqwest::Client::new(),
        &service.url("github"),
        &event,
        "d-1",
        "application/json",
        body,
    )
    .await;
    assert_eq!(status, 403, "{answer}");
    assert_eq!(answer["status"], "rejected");
    service.stop().await;
}

#[tokio::test]
async fn trusted_proxy_forwards_allowed_client() {
    let top = "trusted_proxies = [\"127.0.0.1\"]";
    let source = "scheme = \"github\"\nallowed_ips = [\"15.204.75.108\"]";
    let service = Service::start("github", top, source, GITHUB_SECRET).await;
    let client = reqwest::Client::new();
    let body = br#"{"zen":"Speak like a human."}"#.to_vec();
    let signature = Github::sign(GITHUB_SECRET.as_bytes(), &body);

    let post = |forwarded_for: &'static str| {
        client
            .post(service.url("github"))
            .header("content-type", "application/json")
            .header("x-hub-signature-256", &signature)
            .header("x-github-event", "ping")
            .header("x-forwarded-for", forwarded_for)
            .body(body.clone())
            .send()
    };
    assert_eq!(post("15.204.75.108").await.unwrap().status().as_u16(), 200);
    assert_eq!(post("198.51.100.7").await.unwrap().status().as_u16(), 403);
    // The proxy appends the address it saw; an entry the client wrote itself is ignored.
    let spoofed = post("15.204.75.108, 198.51.100.7").await.unwrap();
    assert_eq!(spoofed.status().as_u16(), 403);
    service.stop().await;
}

#[tokio::test]
async fn untrusted_peer_cannot_claim_address() {
    let source = "scheme = \"github\"\nallowed_ips = [\"15.204.75.108\"]";
    let service = Service::start("github", "", source, GITHUB_SECRET).await;
    let body = b"{}".to_vec();
    let response = reqwest::Client::new()
        .post(service.url("github"))
        .header("content-type", "application/json")
        .header(
            "x-hub-signature-256",
            Github::sign(GITHUB_SECRET.as_bytes(), &body),
        )
        .header("x-forwarded-for", "15.204.75.108")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 403);
    service.stop().await;
}

#[tokio::test]
async fn slack_url_verification_answered_not_stored() {
    let secret = "slack-signing-secret";
    let service = Service::start("slack", "", "scheme = \"slack\"", secret).await;
    let body = br#"{"token":"t","challenge":"challenge-token-42","type":"url_verification"}"#;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let response = reqwest::Client::new()
        .post(service.url("slack"))
        .header("content-type", "application/json")
        .header(
            "x-slack-signature",
            Slack::sign(secret.as_bytes(), now, body),
        )
        .header("x-slack-request-timestamp", now.to_string())
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let answer = json_body(response).await;
    assert_eq!(answer["challenge"], "challenge-token-42");
    assert!(service.forwarded_after_pause().await.is_empty());
    service.stop().await;
}

#[tokio::test]
async fn slack_millisecond_timestamp_is_400() {
    let secret = "slack-signing-secret";
    let service = Service::start("slack", "", "scheme = \"slack\"", secret).await;
    let body = br#"{"type":"event_callback","event_id":"Ev1","event":{"type":"message"}}"#;
    let millis = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let response = reqwest::Client::new()
        .post(service.url("slack"))
        .header("content-type", "application/json")
        .header(
            "x-slack-signature",
            Slack::sign(secret.as_bytes(), millis, body),
        )
        .header("x-slack-request-timestamp", millis.to_string())
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let answer = json_body(response).await;
    assert!(
        answer["error"].as_str().unwrap().contains("milliseconds"),
        "{answer}"
    );
    service.stop().await;
}

/// Connection settings for test clients of Redis: the client's default 500 ms response limit
/// fails tests on a loaded machine.
fn test_redis_config() -> redis::AsyncConnectionConfig {
    redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(std::time::Duration::from_secs(5)))
        .set_response_timeout(Some(std::time::Duration::from_secs(10)))
}
