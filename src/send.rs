//! `hookrelay send`: signs a sample or given event the way a provider would and posts it, like
//! a provider dashboard's "send test webhook" button. Every scheme is supported.

use crate::config::{HmacConfig, SchemeKind};
use crate::verify::{
    GenericHmac, Github, Makini, Shopify, Slack, Standard, Stripe, Twilio, standard_decode_secret,
};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use sha2::{Digest, Sha256};
use std::time::{Duration, SystemTime};

/// Encoding of a Makini or generic HMAC signature.
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
    /// `Content-Type` of the body.
    pub content_type: String,
    /// Encoding of a Makini signature.
    pub encoding: Encoding,
    /// `webhook-id` of a Standard Webhooks delivery, `X-GitHub-Delivery` of a GitHub one and
    /// `X-Shopify-Webhook-Id` of a Shopify one.
    pub message_id: String,
    /// `X-GitHub-Event` or `X-Shopify-Topic`.
    pub event_type: String,
    /// URL Twilio would sign, when the receiver is reached through another URL; `url` if unset.
    pub public_url: Option<String>,
    /// Settings of the generic `hmac` scheme; its `encoding` wins over `encoding`.
    pub hmac: Option<HmacConfig>,
}

impl SendRequest {
    /// Creates a delivery with a fresh message id and the scheme's usual content type.
    pub fn new(url: String, scheme: SchemeKind, secret: String, body: Vec<u8>) -> Self {
        Self {
            url,
            scheme,
            secret,
            body,
            content_type: default_content_type(scheme).to_owned(),
            encoding: Encoding::Hex,
            message_id: format!("msg_{}", uuid::Uuid::new_v4().simple()),
            event_type: "ping".to_owned(),
            public_url: None,
            hmac: None,
        }
    }
}

/// Returns the media type a provider of `scheme` sends by default.
pub fn default_content_type(scheme: SchemeKind) -> &'static str {
    match scheme {
        SchemeKind::Twilio => "application/x-www-form-urlencoded",
        _ => "application/json",
    }
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

/// Returns a sample body shaped like the events of `scheme`, with a fresh id.
pub fn sample_body(scheme: SchemeKind, event_type: &str) -> Vec<u8> {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let value = match scheme {
        SchemeKind::Makini => return sample_makini_body(event_type),
        SchemeKind::Twilio => {
            return form_urlencoded::Serializer::new(String::new())
                .append_pair("MessageSid", &format!("SM{id}"))
                .append_pair("From", "+15005550006")
                .append_pair("To", "+15005550001")
                .append_pair("Body", "hookrelay test message")
                .finish()
                .into_bytes();
        }
        SchemeKind::Slack => serde_json::json!({
            "type": "event_callback",
            "event_id": format!("Ev{id}"),
            "event": { "type": event_type },
        }),
        SchemeKind::Github => serde_json::json!({ "zen": "hookrelay test delivery", "hook_id": 1 }),
        SchemeKind::Shopify => serde_json::json!({ "id": id, "note": "hookrelay test delivery" }),
        _ => serde_json::json!({ "id": format!("evt_{id}"), "type": event_type, "data": {} }),
    };
    serde_json::to_vec(&value).expect("a JSON literal serializes")
}

/// Returns the URL to post to. A Twilio delivery whose body is not a form carries the body's
/// SHA-256 in the query, as Twilio sends it.
pub fn request_url(request: &SendRequest) -> String {
    if request.scheme != SchemeKind::Twilio || is_form(&request.content_type) {
        return request.url.clone();
    }
    append_body_hash(&request.url, &request.body)
}

fn append_body_hash(url: &str, body: &[u8]) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!(
        "{url}{separator}bodySHA256={}",
        hex::encode(Sha256::digest(body))
    )
}

fn is_form(content_type: &str) -> bool {
    content_type
        .parse::<mime::Mime>()
        .is_ok_and(|media| media.essence_str() == "application/x-www-form-urlencoded")
}

/// Builds the signed headers for `request`.
pub fn signed_headers(request: &SendRequest) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::new();
    let header = |value: String| {
        HeaderValue::from_str(&value).map_err(|_| format!("cannot put {value:?} in a header"))
    };
    headers.insert(CONTENT_TYPE, header(request.content_type.clone())?);
    let mut set = |name: &'static str, value: String| -> Result<(), String> {
        headers.insert(HeaderName::from_static(name), header(value)?);
        Ok(())
    };
    let key = request.secret.as_bytes();
    let body = request.body.as_slice();
    let timestamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();

    match request.scheme {
        SchemeKind::Makini => {
            let signature = match request.encoding {
                Encoding::Hex => Makini::sign_hex(key, body),
                Encoding::Base64 => Makini::sign_base64(key, body),
            };
            set("x-webhook-signature", signature)?;
        }
        SchemeKind::Standard => {
            let key = standard_decode_secret(&request.secret).map_err(str::to_owned)?;
            let signature = Standard::sign(key.expose(), &request.message_id, timestamp, body);
            set("webhook-id", request.message_id.clone())?;
            set("webhook-timestamp", timestamp.to_string())?;
            set("webhook-signature", signature)?;
        }
        SchemeKind::Github => {
            set("x-hub-signature-256", Github::sign(key, body))?;
            set("x-github-event", request.event_type.clone())?;
            set("x-github-delivery", request.message_id.clone())?;
        }
        SchemeKind::Stripe => set("stripe-signature", Stripe::sign(key, timestamp, body))?,
        SchemeKind::Shopify => {
            set("x-shopify-hmac-sha256", Shopify::sign(key, body))?;
            set("x-shopify-topic", request.event_type.clone())?;
            set("x-shopify-webhook-id", request.message_id.clone())?;
        }
        SchemeKind::Slack => {
            set("x-slack-signature", Slack::sign(key, timestamp, body))?;
            set("x-slack-request-timestamp", timestamp.to_string())?;
        }
        SchemeKind::Twilio => {
            let form = is_form(&request.content_type);
            let signed_url = match (&request.public_url, form) {
                (Some(public), true) => public.clone(),
                (Some(public), false) => append_body_hash(public, body),
                (None, _) => request_url(request),
            };
            set(
                "x-twilio-signature",
                Twilio::sign(key, &signed_url, body, form),
            )?;
        }
        SchemeKind::Hmac => {
            let settings = request
                .hmac
                .as_ref()
                .ok_or("the hmac scheme needs --hmac-header and its other settings")?;
            let scheme = GenericHmac::new(Vec::new(), settings, Duration::ZERO)?;
            let signed_at = scheme.timestamp_header().map(|_| timestamp);
            let signature = scheme.sign(key, signed_at, body);
            headers.insert(scheme.signature_header().clone(), header(signature)?);
            if let Some(name) = scheme.timestamp_header() {
                headers.insert(name.clone(), header(timestamp.to_string())?);
            }
        }
        SchemeKind::None => {}
    }
    Ok(headers)
}

/// Posts the signed request and returns the status and body the receiver sent back.
pub async fn send(request: &SendRequest) -> Result<(u16, String), String> {
    let headers = signed_headers(request)?;
    let url = request_url(request);
    let response = reqwest::Client::new()
        .post(&url)
        .headers(headers)
        .body(request.body.clone())
        .send()
        .await
        .map_err(|e| format!("POST {url} failed: {e}"))?;
    let status = response.status().as_u16();
    let body = response
        .text()
        .await
        .map_err(|e| format!("cannot read the response from {url}: {e}"))?;
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn twilio_json_url_carries_body_hash() {
        let mut request = SendRequest::new(
            "http://127.0.0.1:8080/webhooks/twilio".into(),
            SchemeKind::Twilio,
            "token".into(),
            b"{}".to_vec(),
        );
        assert_eq!(request_url(&request), request.url);
        request.content_type = "application/json".into();
        assert_eq!(
            request_url(&request),
            format!(
                "{}?bodySHA256={}",
                request.url,
                hex::encode(Sha256::digest(b"{}"))
            )
        );
    }

    #[test]
    fn hmac_without_settings_is_an_error() {
        let request = SendRequest::new(
            "http://127.0.0.1:8080/webhooks/x".into(),
            SchemeKind::Hmac,
            "secret".into(),
            b"{}".to_vec(),
        );
        assert!(signed_headers(&request).is_err());
    }
}
