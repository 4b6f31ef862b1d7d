//! The HTTP sink against a real axum downstream that records each request.

mod sink_support;

use hookrelay::verify::{Scheme, SignedRequest, Standard, standard_decode_secret};
use sink_support::{Downstream, Reply, SINK_KEY, SOURCE, Service, unique, whsec};
use std::time::{Duration, SystemTime};

const SETTLE: Duration = Duration::from_secs(20);

fn http_sink(url: &str, body: &str, timeout: &str) -> String {
    format!(
        r#"
        [[sinks]]
        name = "downstream"
        type = "http"
        url = "{url}"
        secret = "SINK_SECRET"
        body = "{body}"
        timeout = "{timeout}"
        [[routes]]
        source = "{SOURCE}"
        events = ["orders.*"]
        sinks = ["downstream"]
        "#
    )
}

/// Verifies a request the way a downstream would, with hookrelay's Standard Webhooks scheme.
fn signature_valid(request: &sink_support::Received) -> bool {
    let key = standard_decode_secret(&whsec(SINK_KEY)).unwrap();
    Standard::new(vec![key], Duration::from_secs(300))
        .verify(
            &SignedRequest {
                headers: &request.headers,
                query: None,
                body: &request.body,
            },
            SystemTime::now(),
        )
        .is_ok()
}

fn header<'a>(request: &'a sink_support::Received, name: &str) -> &'a str {
    request
        .headers
        .get(name)
        .unwrap_or_else(|| panic!("missing header {name}"))
        .to_str()
        .unwrap()
}

#[tokio::test]
async fn http_delivers_once_signed() {
    let downstream = Downstream::start(vec![]).await;
    let service = Service::start(&http_sink(&downstream.url(), "payload", "2s")).await;
    let id = unique("evt");

    assert_eq!(service.send(&id, "orders.created", "x".into()).await, 200);
    assert!(service.settled(SETTLE).await, "event was not settled");

    let received = downstream.received();
    assert_eq!(received.len(), 1, "{received:?}");
    let request = &received[0];
    assert_eq!(header(request, "hookrelay-event-id"), id);
    let delivery_id = header(request, "idempotency-key");
    assert!(delivery_id.starts_with("dlv_"), "{delivery_id}");
    assert_eq!(header(request, "webhook-id"), delivery_id);
    assert_eq!(header(request, "hookrelay-source"), SOURCE);
    assert_eq!(header(request, "hookrelay-event-type"), "orders.created");
    assert_eq!(header(request, "content-type"), "application/json");
    let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(body["type"], "orders.created");
    assert_eq!(body["data"], "x");
    assert!(signature_valid(request), "signature does not verify");
    assert_eq!(service.stat(|s| &s.delivered), 1);
    assert!(service.dead_letters().await.is_empty());
    service.stop().await;
}

#[tokio::test]
async fn http_signature_verified_independently() {
    // HMAC-SHA256 over "id.timestamp.body" keyed with the secret's base64-decoded bytes,
    // as the Standard Webhooks specification describes it, without hookrelay's verifier.
    use base64::Engine;
    use hmac::{Hmac, Mac};

    let downstream = Downstream::start(vec![]).await;
    let service = Service::start(&http_sink(&downstream.url(), "payload", "2s")).await;
    let id = unique("evt");
    assert_eq!(service.send(&id, "orders.created", "y".into()).await, 200);
    assert!(service.settled(SETTLE).await);

    let request = &downstream.received()[0];
    let timestamp = header(request, "webhook-timestamp");
    let message_id = header(request, "webhook-id");
    assert_eq!(header(request, "hookrelay-event-id"), id);
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SINK_KEY).unwrap();
    mac.update(format!("{message_id}.{timestamp}.").as_bytes());
    mac.update(&request.body);
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    assert_eq!(header(request, "webhook-signature"), expected);
    let age = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .abs_diff(timestamp.parse().unwrap());
    assert!(age <= 60, "webhook-timestamp is {age} s off");
    service.stop().await;
}

#[tokio::test]
async fn http_envelope_body() {
    let downstream = Downstream::start(vec![]).await;
    let service = Service::start(&http_sink(&downstream.url(), "envelope", "2s")).await;
    let id = unique("evt");
    assert_eq!(service.send(&id, "orders.created", "z".into()).await, 200);
    assert!(service.settled(SETTLE).await);

    let received = downstream.received();
    assert_eq!(received.len(), 1);
    let body: serde_json::Value = serde_json::from_slice(&received[0].body).unwrap();
    assert_eq!(body["id"], id.as_str());
    assert_eq!(body["source"], SOURCE);
    assert_eq!(body["event_type"], "orders.created");
    assert!(body["received_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(body["payload"]["data"], "z");
    assert!(signature_valid(&received[0]));
    service.stop().await;
}

#[tokio::test]
async fn http_500_twice_then_200() {
    let downstream = Downstream::start(vec![Reply::Status(500), Reply::Status(500)]).await;
    let service = Service::start(&http_sink(&downstream.url(), "payload", "2s")).await;
    let id = unique("evt");
    assert_eq!(service.send(&id, "orders.created", 1.into()).await, 200);
    assert!(service.settled(SETTLE).await);

    let received = downstream.received();
    assert_eq!(received.len(), 3, "{received:?}");
    // Every retry carries the same idempotency key, so the downstream can drop repeats.
    let first_key = header(&received[0], "idempotency-key");
    for request in &received {
        assert_eq!(header(request, "hookrelay-event-id"), id);
        assert_eq!(header(request, "idempotency-key"), first_key);
        assert!(signature_valid(request));
    }
    assert_eq!(service.stat(|s| &s.retried), 2);
    assert_eq!(service.stat(|s| &s.delivered), 1);
    assert!(service.dead_letters().await.is_empty());
    service.stop().await;
}

#[tokio::test]
async fn http_429_honours_retry_after() {
    let downstream = Downstream::start(vec![Reply::StatusRetryAfter(429, "2")]).await;
    // The hint is honoured up to backoff_max, so this one is above it.
    let worker = r#"
        backoff_initial = "50ms"
        backoff_max = "10s"
    "#;
    let service = Service::start_with(&http_sink(&downstream.url(), "payload", "2s"), worker).await;
    assert_eq!(
        service
            .send(&unique("evt"), "orders.created", 1.into())
            .await,
        200
    );
    assert!(service.settled(SETTLE).await);

    let received = downstream.received();
    assert_eq!(received.len(), 2, "{received:?}");
    // The backoff alone would retry within 50 ms.
    let gap = received[1].at - received[0].at;
    assert!(gap >= Duration::from_millis(1900), "retried after {gap:?}");
    assert!(service.dead_letters().await.is_empty());
    service.stop().await;
}

#[tokio::test]
async fn http_400_dead_lettered_at_once() {
    let downstream = Downstream::start(vec![Reply::Status(400)]).await;
    let service = Service::start(&http_sink(&downstream.url(), "payload", "2s")).await;
    assert_eq!(
        service
            .send(&unique("evt"), "orders.created", 1.into())
            .await,
        200
    );
    assert!(service.settled(SETTLE).await);

    assert_eq!(downstream.received().len(), 1);
    let dead = service.dead_letters().await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].0, "downstream");
    assert!(dead[0].1.contains("400"), "{}", dead[0].1);
    assert_eq!(service.stat(|s| &s.retried), 0);
    assert_eq!(service.stat(|s| &s.dead_lettered), 1);
    service.stop().await;
}

#[tokio::test]
async fn http_hang_past_timeout_is_retried() {
    let downstream = Downstream::start(vec![Reply::Hang(Duration::from_secs(3))]).await;
    let service = Service::start(&http_sink(&downstream.url(), "payload", "300ms")).await;
    let started = std::time::Instant::now();
    assert_eq!(
        service
            .send(&unique("evt"), "orders.created", 1.into())
            .await,
        200
    );
    assert!(service.settled(SETTLE).await);

    let received = downstream.received();
    assert_eq!(received.len(), 2, "{received:?}");
    assert_eq!(service.stat(|s| &s.retried), 1);
    assert_eq!(service.stat(|s| &s.delivered), 1);
    // The retry did not wait for the hanging request to finish.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    service.stop().await;
}

#[tokio::test]
async fn unrouted_event_is_counted_and_dropped() {
    let downstream = Downstream::start(vec![]).await;
    let service = Service::start(&http_sink(&downstream.url(), "payload", "2s")).await;
    assert_eq!(
        service
            .send(&unique("evt"), "invoices.paid", 1.into())
            .await,
        200
    );
    assert_eq!(
        service
            .send(&unique("evt"), "invoices.paid", 2.into())
            .await,
        200
    );
    assert!(service.settled(SETTLE).await);

    assert_eq!(service.stat(|s| &s.unrouted), 2);
    assert!(downstream.received().is_empty());
    assert!(service.dead_letters().await.is_empty());
    service.stop().await;
}
