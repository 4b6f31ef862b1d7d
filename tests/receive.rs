//! The receive path against a real Redis: signatures, the status contract and deduplication.

mod common;

use common::{SECRET, ServiceSpec, TestService, secret_file, status_and_json, wait_for_entries};
use hookrelay::verify::Makini;
use std::time::Duration;

const BODY: &[u8] =
    br#"{"event":"work_orders.inserted","body":["3f2b8a94-0c1e-4d7a-9a57-2c1f0e6b5d10"]}"#;
const FORWARD_WAIT: Duration = Duration::from_secs(10);

async fn service(label: &str) -> (TestService, tempfile::NamedTempFile) {
    let secret = secret_file(SECRET);
    let service = TestService::start(ServiceSpec::new(label, &secret)).await;
    (service, secret)
}

#[tokio::test]
async fn hex_signature_accepted_and_forwarded() {
    let (service, _secret) = service("hex").await;

    let (status, json) = status_and_json(service.post_signed(BODY).await).await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["status"], "accepted");
    let id = json["id"].as_str().unwrap().to_owned();
    assert!(
        id.starts_with("sha256:"),
        "body without id is keyed by its hash: {id}"
    );

    let entries = wait_for_entries(
        common::STANDARD_REDIS,
        &service.spec.stream,
        1,
        FORWARD_WAIT,
    )
    .await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].id, id);
    assert_eq!(entries[0].source, "makini");
    assert_eq!(entries[0].event_type, "work_orders.inserted");
    assert_eq!(entries[0].payload, BODY);
    service.stop().await;
}

#[tokio::test]
async fn base64_signature_accepted() {
    let (service, _secret) = service("base64").await;
    let signature = Makini::sign_base64(SECRET.as_bytes(), BODY);

    let (status, json) = status_and_json(service.post_makini(BODY, Some(&signature)).await).await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["status"], "accepted");
    service.stop().await;
}

#[tokio::test]
async fn makini_id_field_is_the_event_id() {
    let (service, _secret) = service("idfield").await;
    let body = br#"{"id":"evt-42","event":"assets.updated","body":[]}"#;

    let (status, json) = status_and_json(service.post_signed(body).await).await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["id"], "evt-42");
    service.stop().await;
}

#[tokio::test]
async fn standard_webhooks_vector_accepted() {
    let (service, _secret) = service("standard").await;
    let response = service
        .client
        .post(service.url("svix"))
        .header("content-type", "application/json")
        .header("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek")
        .header("webhook-timestamp", "1614265330")
        .header(
            "webhook-signature",
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        )
        .body(r#"{"test": 2432232314}"#)
        .send()
        .await
        .unwrap();

    let (status, json) = status_and_json(response).await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["status"], "accepted");
    assert_eq!(json["id"], "msg_p5jXN8AQM9LWM0D4loKWxJek");
    service.stop().await;
}

#[tokio::test]
async fn bad_signatures_rejected() {
    let (service, _secret) = service("badsig").await;
    let valid = Makini::sign_hex(SECRET.as_bytes(), BODY);
    let wrong = Makini::sign_hex(b"not-the-secret", BODY);

    let cases: [(&str, Option<&str>, u16); 4] = [
        ("wrong secret", Some(&wrong), 401),
        ("missing header", None, 401),
        ("truncated", Some(&valid[..40]), 401),
        ("not hex or base64", Some("sha256=zz!!not-a-mac"), 400),
    ];
    for (case, signature, expected) in cases {
        let (status, json) = status_and_json(service.post_makini(BODY, signature).await).await;
        assert_eq!(status, expected, "{case}: {json}");
        assert_eq!(json["status"], "rejected", "{case}");
    }

    // A 401 body does not reveal which check failed.
    let (_, missing) = status_and_json(service.post_makini(BODY, None).await).await;
    let (_, mismatch) = status_and_json(service.post_makini(BODY, Some(&wrong)).await).await;
    assert_eq!(missing, mismatch);

    tokio::time::sleep(Duration::from_millis(300)).await;
    let entries = common::read_stream(common::STANDARD_REDIS, &service.spec.stream).await;
    assert!(
        entries.is_empty(),
        "rejected requests were forwarded: {entries:?}"
    );
    service.stop().await;
}

#[tokio::test]
async fn body_changed_by_one_byte_rejected() {
    let (service, _secret) = service("changed").await;
    let original = r#"{"event":"assets.updated","name":"Pump \u00e9 1","body":["a"]}"#;
    let signature = Makini::sign_hex(SECRET.as_bytes(), original.as_bytes());

    let variants = [
        ("trailing newline", format!("{original}\n")),
        (
            "re-serialised spacing",
            original.replace(r#"":""#, r#"": ""#),
        ),
        ("escape decoded to UTF-8", original.replace(r"\u00e9", "é")),
        ("non-ASCII letter", original.replace("Pump", "Pümp")),
    ];
    for (case, body) in variants {
        assert_ne!(body, original, "{case} must change the body");
        let response = service.post_makini(body.as_bytes(), Some(&signature)).await;
        assert_eq!(response.status().as_u16(), 401, "{case}");
    }

    let response = service
        .post_makini(original.as_bytes(), Some(&signature))
        .await;
    assert_eq!(
        response.status().as_u16(),
        200,
        "the unchanged body is accepted"
    );
    service.stop().await;
}

#[tokio::test]
async fn duplicate_answered_and_not_forwarded() {
    let (service, _secret) = service("dup").await;

    let (first_status, first) = status_and_json(service.post_signed(BODY).await).await;
    let (second_status, second) = status_and_json(service.post_signed(BODY).await).await;
    assert_eq!(first_status, 200);
    assert_eq!(second_status, 200);
    assert_eq!(first["status"], "accepted");
    assert_eq!(second["status"], "duplicate");
    assert_eq!(first["id"], second["id"]);

    let entries = wait_for_entries(
        common::STANDARD_REDIS,
        &service.spec.stream,
        2,
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    service.stop().await;
}

#[tokio::test]
async fn concurrent_copies_forwarded_once() {
    let (service, _secret) = service("concurrent").await;
    let body = br#"{"id":"evt-concurrent","event":"assets.updated","body":["x"]}"#;

    let posts = (0..50).map(|_| service.post_signed(body));
    let responses = futures::future::join_all(posts).await;
    let mut accepted = 0;
    let mut duplicates = 0;
    for response in responses {
        let (status, json) = status_and_json(response).await;
        assert_eq!(status, 200, "{json}");
        match json["status"].as_str() {
            Some("accepted") => accepted += 1,
            Some("duplicate") => duplicates += 1,
            other => panic!("unexpected status {other:?}"),
        }
    }
    assert_eq!(accepted, 1);
    assert_eq!(duplicates, 49);

    let entries = wait_for_entries(
        common::STANDARD_REDIS,
        &service.spec.stream,
        2,
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].id, "evt-concurrent");
    service.stop().await;
}

#[tokio::test]
async fn unknown_source_is_404() {
    let (service, _secret) = service("404").await;
    let response = service
        .client
        .post(service.url("nobody"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    let (status, json) = status_and_json(response).await;
    assert_eq!(status, 404);
    assert_eq!(json["status"], "rejected");
    service.stop().await;
}

#[tokio::test]
async fn body_over_limit_is_413() {
    let secret = secret_file(SECRET);
    let mut spec = ServiceSpec::new("413", &secret);
    spec.source = "body_limit = 1024".into();
    let service = TestService::start(spec).await;

    let body = vec![b'a'; 2048];
    let (status, json) = status_and_json(service.post_signed(&body).await).await;
    assert_eq!(status, 413, "{json}");

    // Without a declared length the limit still applies while reading.
    let stream = futures::stream::iter(
        body.chunks(256)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let response = service
        .client
        .post(service.url("makini"))
        .header("content-type", "application/json")
        .header(
            "x-webhook-signature",
            Makini::sign_hex(SECRET.as_bytes(), &body),
        )
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 413);

    let small = br#"{"event":"a"}"#;
    assert_eq!(service.post_signed(small).await.status().as_u16(), 200);
    service.stop().await;
}

#[tokio::test]
async fn get_on_webhook_path_is_405() {
    let (service, _secret) = service("405").await;
    let response = service
        .client
        .get(service.url("makini"))
        .send()
        .await
        .unwrap();
    let (status, json) = status_and_json(response).await;
    assert_eq!(status, 405);
    assert_eq!(json["status"], "rejected");
    service.stop().await;
}

#[tokio::test]
async fn unknown_path_is_json_404() {
    let (service, _secret) = service("path404").await;
    for path in [
        "/",
        "/webhooks",
        "/webhooks/makini/extra",
        "/webhooks/%ff%fe",
    ] {
        let response = service
            .client
            .post(format!("{}{path}", service.base))
            .send()
            .await
            .unwrap();
        let (status, json) = status_and_json(response).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(json["status"], "rejected", "{path}");
    }
    service.stop().await;
}

#[tokio::test]
async fn same_body_after_window_forwarded_again() {
    let secret = secret_file(SECRET);
    let mut spec = ServiceSpec::new("rewindow", &secret);
    spec.source = "body_hash_window = \"500ms\"".into();
    let service = TestService::start(spec).await;

    let (_, first) = status_and_json(service.post_signed(BODY).await).await;
    assert_eq!(first["status"], "accepted");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (_, second) = status_and_json(service.post_signed(BODY).await).await;
    assert_eq!(
        second["status"], "accepted",
        "a new notification once the window passed"
    );

    let stream = &service.spec.stream;
    let entries = wait_for_entries(common::STANDARD_REDIS, stream, 2, FORWARD_WAIT).await;
    assert_eq!(
        entries.len(),
        2,
        "both acceptances reach the sink: {entries:?}"
    );
    assert_eq!(entries[0].id, entries[1].id);
    service.stop().await;
}

#[tokio::test]
async fn stalled_body_gets_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let secret = secret_file(SECRET);
    let mut spec = ServiceSpec::new("slowbody", &secret);
    spec.top = "body_timeout = \"300ms\"".into();
    let service = TestService::start(spec).await;

    let mut stream = tokio::net::TcpStream::connect(service.running.addr)
        .await
        .unwrap();
    let head = "POST /webhooks/makini HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
                x-webhook-signature: 00\r\ncontent-length: 100\r\n\r\n{\"event\":";
    stream.write_all(head.as_bytes()).await.unwrap();

    let mut response = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response));
    read.await
        .expect("the service answers a stalled body")
        .unwrap();
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    service.stop().await;
}
