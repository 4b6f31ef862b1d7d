//! `hookrelay send`: signs a sample or given event the way a provider would and posts it, like
//! a provider dashboard's "send test webhook" button.

use crate::config::SchemeKind;
use crate::verify::{Makini, Standard, standard_decode_secret};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use std::time::SystemTime;

/// Encoding of a Makini signature.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Encoding {
    Hex,
    Base64,
}

/// One test delivery.
#[derive(Debug)]
pub struct SendRequest {
    /// Full endpoint URL.
    pub url: String,
    pub scheme: SchemeKind,
    pub secret: String,
    pub body: Vec<u8>,
    pub encoding: Encoding,
    /// `webhook-id` of a Standard Webhooks delivery.
    pub message_id: String,
}

/// Returns the endpoint URL: `base` itself when it already has a path, else
/// `base/webhooks/{source}`.
pub fn endpoint(base: &str, source: &str) -> String {
    let trimmed = base.trim_end_matches('/');
    let after_scheme = trimmed.split_once("://").map_or(trimmed, |(_, rest)| rest);
    if after_scheme.contains('/') {
        trimmed.to_owned()
    } else {
        format!("{trimmed}/webhooks/{source}")
    }
}

/// Returns a Makini-shaped sample body with a fresh record id.
pub fn sample_makini_body(event_type: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "event": event_type,
        "body": [uuid::Uuid::new_v4().to_string()],
    }))
    .expect("a JSON literal serializes")
}

/// Builds the signed headers for `request`.
pub fn signed_headers(request: &SendRequest) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let header = |value: String| {
        HeaderValue::from_str(&value).map_err(|_| format!("cannot put {value:?} in a header"))
    };

    match request.scheme {
        SchemeKind::Makini => {
            let key = request.secret.as_bytes();
            let signature = match request.encoding {
                Encoding::Hex => Makini::sign_hex(key, &request.body),
                Encoding::Base64 => Makini::sign_base64(key, &request.body),
            };
            headers.insert(
                HeaderName::from_static("x-webhook-signature"),
                header(signature)?,
            );
        }
        SchemeKind::Standard => {
            let key = standard_decode_secret(&request.secret).map_err(str::to_owned)?;
            let timestamp = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_err(|e| e.to_string())?
                .as_secs();
            let signature =
                Standard::sign(key.expose(), &request.message_id, timestamp, &request.body);
            headers.insert(
                HeaderName::from_static("webhook-id"),
                header(request.message_id.clone())?,
            );
            headers.insert(
                HeaderName::from_static("webhook-timestamp"),
                header(timestamp.to_string())?,
            );
            headers.insert(
                HeaderName::from_static("webhook-signature"),
                header(signature)?,
            );
        }
    }
    Ok(headers)
}

/// Posts the signed request and returns the status and body the receiver sent back.
pub async fn send(request: &SendRequest) -> Result<(u16, String), String> {
    let headers = signed_headers(request)?;
    let response = reqwest::Client::new()
        .post(&request.url)
        .headers(headers)
        .body(request.body.clone())
        .send()
        .await
        .map_err(|e| format!("POST {} failed: {e}", request.url))?;
    let status = response.status().as_u16();
    let body = response
        .text()
        .await
        .map_err(|e| format!("cannot read the response from {}: {e}", request.url))?;
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::endpoint;

    #[test]
    fn endpoint_appends_source_path_to_bare_url() {
        assert_eq!(
            endpoint("http://127.0.0.1:8080", "makini"),
            "http://127.0.0.1:8080/webhooks/makini"
        );
        assert_eq!(
            endpoint("http://127.0.0.1:8080/", "makini"),
            "http://127.0.0.1:8080/webhooks/makini"
        );
    }

    #[test]
    fn endpoint_keeps_explicit_path() {
        assert_eq!(
            endpoint("https://abc.ngrok.app/webhooks/other", "makini"),
            "https://abc.ngrok.app/webhooks/other"
        );
    }
}
