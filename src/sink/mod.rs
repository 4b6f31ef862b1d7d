//! Downstream destinations, one file per kind behind the [`Sink`] trait.
//!
//! Every sink passes the event id to the destination where the destination can drop a
//! re-sent copy: a marker key on Redis, `Nats-Msg-Id` on JetStream, `message_id` on AMQP and
//! `Idempotency-Key` on HTTP.

mod amqp;
mod batch;
mod file;
mod http;
mod nats;
mod redis_stream;
mod template;

pub use amqp::AmqpSink;
pub use batch::Batched;
pub use file::FileSink;
pub use http::HttpSink;
pub use nats::NatsSink;
pub use redis_stream::RedisStreamSink;
pub use template::Template;

use crate::config::{SinkConfig, SinkKind};
use crate::event::Event;
use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use std::borrow::Cow;
use std::time::{Duration, UNIX_EPOCH};

/// Header carrying the source name on NATS, AMQP and HTTP deliveries.
pub const SOURCE_HEADER: &str = "Hookrelay-Source";
/// Header with the provider's event id, where the message id is the delivery id.
pub const EVENT_ID_HEADER: &str = "Hookrelay-Event-Id";
/// Header carrying the event type on NATS, AMQP and HTTP deliveries.
pub const EVENT_TYPE_HEADER: &str = "Hookrelay-Event-Type";

/// A failed delivery to one sink.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    pub message: String,
    /// Whether another attempt may succeed; a permanent failure goes straight to the
    /// dead-letter queue.
    pub retryable: bool,
    /// The earliest time the destination asked to be tried again (HTTP `Retry-After`).
    pub retry_after: Option<Duration>,
}

impl SinkError {
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
            retry_after: None,
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
            retry_after: None,
        }
    }

    /// Adds the destination's requested delay before the next attempt.
    pub fn with_retry_after(mut self, delay: Option<Duration>) -> Self {
        self.retry_after = delay;
        self
    }
}

#[async_trait]
pub trait Sink: Send + Sync {
    /// Delivers `event`. Delivering the same event id again must not create a second copy
    /// downstream where the destination allows it to be detected, because a crash between a
    /// delivery and its acknowledgement makes the worker send it again.
    async fn deliver(&self, event: &Event) -> Result<(), SinkError>;

    /// Delivers `events` and returns one result per event, in the order of `events`. The
    /// default delivers them concurrently one by one. A sink whose destination takes many
    /// events in one request overrides it, and [`Batched`] calls it.
    async fn deliver_many(&self, events: &[Event]) -> Vec<Result<(), SinkError>> {
        futures::future::join_all(events.iter().map(|event| self.deliver(event))).await
    }
}

/// Builds the sink `config` describes. Connections are made on first use, so a destination
/// that is down at startup delays its events without stopping the service.
pub fn build(config: &SinkConfig) -> Result<Box<dyn Sink>, String> {
    match &config.kind {
        SinkKind::RedisStream {
            url,
            stream,
            maxlen,
            dedupe_window,
        } => {
            let sink = RedisStreamSink::new(url, stream, *maxlen, *dedupe_window)?;
            Ok(Box::new(Batched::new(std::sync::Arc::new(sink))))
        }
        SinkKind::Nats { .. } => Ok(Box::new(NatsSink::new(&config.kind)?)),
        SinkKind::Amqp {
            url,
            exchange,
            routing_key,
            mandatory,
        } => Ok(Box::new(AmqpSink::new(
            &config.name,
            url,
            exchange,
            routing_key,
            *mandatory,
        )?)),
        SinkKind::Http { url, secret, body } => Ok(Box::new(HttpSink::new(url, secret, *body)?)),
        SinkKind::File { path } => Ok(Box::new(FileSink::new(path.clone()))),
    }
}

/// Replaces control characters, which no header format allows, with spaces. Ids and types
/// come from the provider's payload and may contain anything.
pub(crate) fn header_text(value: &str) -> Cow<'_, str> {
    if value.chars().any(char::is_control) {
        Cow::Owned(
            value
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect(),
        )
    } else {
        Cow::Borrowed(value)
    }
}

/// The JSON envelope of an event, with its keys in alphabetical order.
#[derive(serde::Serialize)]
struct Envelope<'a> {
    delivery_id: String,
    event_type: &'a str,
    id: &'a str,
    /// The payload's own bytes, so that large numbers, duplicate keys and spacing survive.
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a serde_json::value::RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_base64: Option<String>,
    received_at: String,
    source: &'a str,
}

/// Builds the JSON envelope: the payload as JSON when it is valid JSON, else as base64 in
/// `payload_base64`.
pub fn envelope(event: &Event) -> Vec<u8> {
    let received_at = UNIX_EPOCH + Duration::from_millis(event.received_at_ms);
    let payload = serde_json::from_slice::<&serde_json::value::RawValue>(&event.payload).ok();
    let envelope = Envelope {
        delivery_id: event.delivery_id(),
        event_type: &event.event_type,
        id: &event.id,
        payload,
        payload_base64: payload.is_none().then(|| BASE64.encode(&event.payload)),
        received_at: humantime::format_rfc3339_millis(received_at).to_string(),
        source: &event.source,
    };
    serde_json::to_vec(&envelope).expect("strings and raw JSON serialize")
}

#[cfg(test)]
mod tests {
    use super::{envelope, header_text};
    use crate::event::Event;

    fn event(payload: &[u8]) -> Event {
        Event {
            id: "evt_1".into(),
            source: "makini".into(),
            event_type: "a".into(),
            received_at_ms: 1_700_000_000_123,
            payload: payload.to_vec().into(),
        }
    }

    #[test]
    fn envelope_keeps_payload_bytes() {
        // Parsed into a serde_json::Value these would lose digits, a key or a trailing zero,
        // or fall back to base64 for 1e400.
        let payloads: [&[u8]; 4] = [
            br#"{"amount":123456789012345678901234567890}"#,
            br#"{"id":"first","id":"second"}"#,
            br#"{"price":1.10,"big":1e400}"#,
            br#"[{"a" : [ 1 , 2 ]}]"#,
        ];
        for payload in payloads {
            let text = String::from_utf8(envelope(&event(payload))).unwrap();
            let expected = format!(r#""payload":{}"#, std::str::from_utf8(payload).unwrap());
            assert!(text.contains(&expected), "{text}");
        }
    }

    #[test]
    fn envelope_of_deep_nesting_is_json() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let unclosed = "[".repeat(100_000);
        for payload in [deep, unclosed] {
            let text = String::from_utf8(envelope(&event(payload.as_bytes()))).unwrap();
            assert!(text.starts_with(r#"{"delivery_id":""#), "{}", &text[..100]);
            assert!(text.ends_with(r#""source":"makini"}"#));
        }
    }

    #[test]
    fn envelope_keeps_field_order() {
        let text = String::from_utf8(envelope(&event(b"{}"))).unwrap();
        assert!(text.starts_with(r#"{"delivery_id":""#), "{text}");
        assert!(
            text.ends_with(r#""event_type":"a","id":"evt_1","payload":{},"received_at":"2023-11-14T22:13:20.123Z","source":"makini"}"#),
            "{text}"
        );
    }

    #[test]
    fn header_text_replaces_line_breaks() {
        assert_eq!(header_text("a\r\nb"), "a  b");
        assert_eq!(header_text("work_orders.inserted"), "work_orders.inserted");
    }
}
