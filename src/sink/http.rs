//! HTTP sink: one `POST` per event to a downstream URL.
//!
//! Each request carries `Idempotency-Key` (the event id), `Hookrelay-Source`,
//! `Hookrelay-Event-Type` and a Standard Webhooks signature (`webhook-id`,
//! `webhook-timestamp`, `webhook-signature`) made with the sink's own secret, so the
//! downstream verifies hookrelay the way hookrelay verified the provider. `webhook-id` is the
//! event id, so it stays the same across retries; the timestamp is the time of each attempt.
//!
//! A 2xx response is success. 408, 429, 5xx and network errors are retried, no sooner than a
//! `Retry-After` header requests. Any other status is permanent. Redirects are not followed,
//! because a redirected `POST` may lose its body.

use super::{
    EVENT_ID_HEADER, EVENT_TYPE_HEADER, SOURCE_HEADER, Sink, SinkError, envelope, header_text,
};
use crate::config::{HttpBody, SecretBytes, secret};
use crate::event::Event;
use crate::verify::{Standard, standard_decode_secret};
use async_trait::async_trait;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Limit of opening a TCP (and TLS) connection; the whole request is bounded by the sink's
/// timeout in the worker.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct HttpSink {
    client: reqwest::Client,
    url: reqwest::Url,
    key: SecretBytes,
    body: HttpBody,
}

impl std::fmt::Debug for HttpSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSink")
            .field("url", &self.url.as_str())
            .field("body", &self.body)
            .finish_non_exhaustive()
    }
}

impl HttpSink {
    /// Builds the sink; `secret` is a reference (`env:NAME` or `file:PATH`) to a Standard
    /// Webhooks secret.
    pub fn new(url: &str, secret: &str, body: HttpBody) -> Result<Self, String> {
        let url = reqwest::Url::parse(url).map_err(|e| format!("invalid url {url:?}: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("url {url} must start with http:// or https://"));
        }
        let text = secret::resolve(secret).map_err(|e| format!("secret: {e}"))?;
        let key = standard_decode_secret(&text).map_err(|e| format!("secret: {e}"))?;
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("hookrelay/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self {
            client,
            url,
            key,
            body,
        })
    }

    fn headers(&self, event: &Event, body: &[u8], json: bool) -> Result<HeaderMap, SinkError> {
        let value = |text: &str| {
            HeaderValue::from_bytes(header_text(text).as_bytes())
                .map_err(|e| SinkError::permanent(format!("invalid HTTP header value: {e}")))
        };
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        // The signature covers the id exactly as sent in `webhook-id`.
        let id = event.delivery_id();
        let signature = Standard::sign(self.key.expose(), &id, timestamp, body);

        let mut headers = HeaderMap::new();
        let content_type = if json {
            "application/json"
        } else {
            "application/octet-stream"
        };
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert("idempotency-key", value(&id)?);
        headers.insert("webhook-id", value(&id)?);
        headers.insert("webhook-timestamp", HeaderValue::from(timestamp));
        headers.insert("webhook-signature", value(&signature)?);
        headers.insert(EVENT_ID_HEADER, value(&event.id)?);
        headers.insert(SOURCE_HEADER, value(&event.source)?);
        headers.insert(EVENT_TYPE_HEADER, value(&event.event_type)?);
        Ok(headers)
    }
}

#[async_trait]
impl Sink for HttpSink {
    async fn deliver(&self, event: &Event) -> Result<(), SinkError> {
        let (body, json) = match self.body {
            HttpBody::Payload => {
                let json = serde_json::from_slice::<serde::de::IgnoredAny>(&event.payload).is_ok();
                (event.payload.to_vec(), json)
            }
            HttpBody::Envelope => (envelope(event), true),
        };
        let headers = self.headers(event, &body, json)?;

        let response = self
            .client
            .post(self.url.clone())
            .headers(headers)
            .body(body)
            .send()
            .await
            .map_err(|e| SinkError::retryable(format!("POST {}: {}", self.url, error_chain(&e))))?;
        classify(response.status(), response.headers(), SystemTime::now()).map_err(|e| SinkError {
            message: format!("POST {}: {}", self.url, e.message),
            ..e
        })
    }
}

/// Maps a response status to the delivery outcome.
fn classify(status: StatusCode, headers: &HeaderMap, now: SystemTime) -> Result<(), SinkError> {
    if status.is_success() {
        return Ok(());
    }
    let retryable = status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error();
    let message = format!("downstream responded {status}");
    if retryable {
        Err(SinkError::retryable(message).with_retry_after(retry_after(headers, now)))
    } else {
        Err(SinkError::permanent(message))
    }
}

/// Reads `Retry-After` as seconds or as an HTTP date (RFC 9110, section 10.2.3).
fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let text = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = httpdate::parse_http_date(text).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Formats an error with its causes, because reqwest's own message omits what failed
/// ("error sending request").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn event(payload: &'static [u8]) -> Event {
        Event {
            id: "evt_1".into(),
            source: "makini".into(),
            event_type: "work_orders.inserted".into(),
            received_at_ms: 1_700_000_000_123,
            payload: Bytes::from_static(payload),
        }
    }

    fn status(code: u16) -> Result<(), SinkError> {
        classify(
            StatusCode::from_u16(code).unwrap(),
            &HeaderMap::new(),
            SystemTime::now(),
        )
    }

    #[test]
    fn success_statuses() {
        assert!(status(200).is_ok());
        assert!(status(204).is_ok());
    }

    #[test]
    fn retryable_statuses() {
        for code in [408, 429, 500, 502, 503, 504] {
            let err = status(code).unwrap_err();
            assert!(err.retryable, "{code}");
        }
    }

    #[test]
    fn permanent_statuses() {
        for code in [301, 400, 401, 404, 410, 422] {
            let err = status(code).unwrap_err();
            assert!(!err.retryable, "{code}");
        }
    }

    #[test]
    fn retry_after_seconds() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        let err = classify(StatusCode::TOO_MANY_REQUESTS, &headers, SystemTime::now()).unwrap_err();
        assert_eq!(err.retry_after, Some(Duration::from_secs(7)));
    }

    #[test]
    fn retry_after_http_date() {
        let now = UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        let mut headers = HeaderMap::new();
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:30 GMT"),
        );
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(30)));
    }

    #[test]
    fn retry_after_garbage_is_ignored() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers, SystemTime::now()), None);
    }

    #[test]
    fn envelope_embeds_json_payload() {
        let body = envelope(&event(br#"{"a":1}"#));
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["id"], "evt_1");
        assert_eq!(value["source"], "makini");
        assert_eq!(value["event_type"], "work_orders.inserted");
        assert_eq!(value["received_at"], "2023-11-14T22:13:20.123Z");
        assert_eq!(value["payload"]["a"], 1);
        assert!(value.get("payload_base64").is_none());
    }

    #[test]
    fn envelope_encodes_other_payload_as_base64() {
        let body = envelope(&event(b"a=1&b=2"));
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["payload_base64"], "YT0xJmI9Mg==");
        assert!(value.get("payload").is_none());
    }
}
