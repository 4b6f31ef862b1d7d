//! The NATS JetStream sink against the machine's nats-server and a private one the test
//! restarts.

mod sink_support;

use async_nats::jetstream;
use async_nats::jetstream::message::StreamMessage;
use bytes::Bytes;
use hookrelay::config::Config;
use hookrelay::event::Event;
use sink_support::{NATS_URL, PrivateNats, SOURCE, Service, eventually, unique};
use std::collections::HashSet;
use std::time::Duration;

fn nats_sink(url: &str, stream: &str, subject_prefix: &str) -> String {
    format!(
        r#"
        [[sinks]]
        name = "bus"
        type = "nats"
        url = "{url}"
        subject = "{subject_prefix}.{{source}}.{{event}}"
        create_stream = true
        stream = "{stream}"
        [[routes]]
        source = "{SOURCE}"
        sinks = ["bus"]
        "#
    )
}

async fn jetstream_at(url: &str) -> jetstream::Context {
    jetstream::new(async_nats::connect(url).await.unwrap())
}

/// Reads every message of `stream`, in order.
async fn stream_messages(js: &jetstream::Context, stream: &str) -> Vec<StreamMessage> {
    let mut handle = js.get_stream(stream).await.unwrap();
    let state = handle.info().await.unwrap().state.clone();
    let mut messages = Vec::new();
    if state.messages == 0 {
        return messages;
    }
    for sequence in state.first_sequence..=state.last_sequence {
        messages.push(handle.get_raw_message(sequence).await.unwrap());
    }
    messages
}

fn header(message: &StreamMessage, name: &str) -> String {
    message
        .headers
        .get(name)
        .unwrap_or_else(|| panic!("missing header {name}"))
        .as_str()
        .to_owned()
}

#[tokio::test]
async fn nats_publishes_once_with_headers() {
    let stream = unique("HOOKTEST");
    let prefix = unique("hooktest");
    let service = Service::start(&nats_sink(NATS_URL, &stream, &prefix)).await;
    let plain_id = unique("evt");
    let odd_id = unique("evt");

    assert_eq!(
        service.send(&plain_id, "orders.created", "a".into()).await,
        200
    );
    assert_eq!(service.send(&odd_id, "bad type*", "b".into()).await, 200);
    assert!(service.settled(Duration::from_secs(20)).await);

    let js = jetstream_at(NATS_URL).await;
    let messages = stream_messages(&js, &stream).await;
    assert_eq!(messages.len(), 2, "{messages:?}");
    let plain = messages
        .iter()
        .find(|m| header(m, "Hookrelay-Event-Id") == plain_id)
        .expect("message of the plain event");
    assert_eq!(
        plain.subject.as_str(),
        format!("{prefix}.{SOURCE}.orders.created")
    );
    assert!(header(plain, "Nats-Msg-Id").starts_with("dlv_"));
    assert_eq!(header(plain, "Hookrelay-Source"), SOURCE);
    assert_eq!(header(plain, "Hookrelay-Event-Type"), "orders.created");
    let body: serde_json::Value = serde_json::from_slice(&plain.payload).unwrap();
    assert_eq!(body["data"], "a");

    // Space and wildcard become '_' in the subject; the header keeps the type as sent.
    let odd = messages
        .iter()
        .find(|m| header(m, "Hookrelay-Event-Id") == odd_id)
        .expect("message of the odd event");
    assert_eq!(odd.subject.as_str(), format!("{prefix}.{SOURCE}.bad_type_"));
    assert_eq!(header(odd, "Hookrelay-Event-Type"), "bad type*");

    js.delete_stream(&stream).await.unwrap();
    service.stop().await;
}

#[tokio::test]
async fn nats_resend_dropped_by_duplicate_window() {
    let stream = unique("HOOKTEST");
    let prefix = unique("hooktest");
    let config = Config::from_toml(&nats_sink(NATS_URL, &stream, &prefix)).unwrap();
    let sink = hookrelay::sink::build(&config.sinks[0]).unwrap();
    let event = Event {
        id: unique("evt"),
        source: SOURCE.into(),
        event_type: "orders.created".into(),
        received_at_ms: 1_700_000_000_000,
        payload: Bytes::from_static(b"{}"),
    };

    sink.deliver(&event).await.unwrap();
    sink.deliver(&event).await.unwrap();

    let js = jetstream_at(NATS_URL).await;
    let messages = stream_messages(&js, &stream).await;
    assert_eq!(messages.len(), 1, "{messages:?}");
    js.delete_stream(&stream).await.unwrap();
}

#[tokio::test]
async fn nats_restart_loses_nothing() {
    let store = tempfile::tempdir().unwrap();
    let mut nats = PrivateNats::new(store.path());
    nats.start().await;
    let stream = unique("HOOKTEST");
    let service = Service::start(&nats_sink(&nats.url(), &stream, "restart")).await;
    let mut ids = Vec::new();

    for _ in 0..5 {
        let id = unique("evt");
        assert_eq!(service.send(&id, "orders.created", 1.into()).await, 200);
        ids.push(id);
    }
    assert!(service.settled(Duration::from_secs(20)).await);

    nats.stop();
    for _ in 0..5 {
        let id = unique("evt");
        assert_eq!(service.send(&id, "orders.created", 2.into()).await, 200);
        ids.push(id);
    }
    let retried = eventually(Duration::from_secs(20), || async {
        service.stat(|s| &s.retried) > 0
    })
    .await;
    assert!(retried, "no delivery failed while NATS was down");
    assert!(service.inbox_len().await > 0);

    nats.start().await;
    assert!(service.settled(Duration::from_secs(60)).await);

    let js = jetstream_at(&nats.url()).await;
    let messages = stream_messages(&js, &stream).await;
    let received: HashSet<String> = messages
        .iter()
        .map(|m| header(m, "Hookrelay-Event-Id"))
        .collect();
    assert_eq!(messages.len(), 10, "{received:?}");
    assert_eq!(received, ids.into_iter().collect::<HashSet<_>>());
    assert!(service.dead_letters().await.is_empty());
    service.stop().await;
}
