//! Slack: `X-Slack-Signature: v0=<hex>` carries HMAC-SHA256 of `v0:<ts>:<body>`, keyed with
//! the app's signing secret as UTF-8, where `<ts>` is `X-Slack-Request-Timestamp` as sent.
//!
//! Slash commands and interactive components post form-encoded bodies; those are verified
//! exactly as received, never re-encoded. The Events API's `url_verification` request is a
//! handshake, replied to with its `challenge` and not stored, so a Slack app can register the
//! endpoint.

use super::{
    Scheme, SignatureHeader, SignedRequest, Verified, VerifyError, any_secret_matches,
    decoded_signatures, form_field, hmac_of, is_form, timestamps_in_tolerance,
};
use crate::config::{HmacAlgorithm, SecretBytes};
use serde_json::{Value, json};
use std::time::{Duration, SystemTime};

const SIGNATURE: &str = "x-slack-signature";
const TIMESTAMP: &str = "x-slack-request-timestamp";
const PREFIX: &[u8] = b"v0=";

#[derive(Debug)]
pub struct Slack {
    secrets: Vec<SecretBytes>,
    tolerance: Duration,
}

impl Slack {
    pub fn new(secrets: Vec<SecretBytes>, tolerance: Duration) -> Self {
        Self { secrets, tolerance }
    }

    /// Returns the `X-Slack-Signature` value Slack sends for `body` at `timestamp`.
    pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
        let mac = mac(secret, timestamp.to_string().as_bytes(), body);
        format!("v0={}", hex::encode(mac))
    }
}

fn mac(secret: &[u8], timestamp: &[u8], body: &[u8]) -> Vec<u8> {
    hmac_of(
        HmacAlgorithm::Sha256,
        secret,
        &[b"v0:", timestamp, b":", body],
    )
}

/// Reads what a verified body reveals about itself: the handshake, or the form's JSON payload
/// and event type.
fn describe(request: &SignedRequest<'_>) -> Verified {
    if is_form(request.headers) {
        if let Some(payload) = form_field(request.body, "payload") {
            let event_type = serde_json::from_str::<Value>(&payload)
                .ok()
                .and_then(|value| value.get("type")?.as_str().map(str::to_owned));
            return Verified {
                event_type,
                document: Some(payload),
                ..Verified::default()
            };
        }
        return Verified {
            event_type: form_field(request.body, "command"),
            ..Verified::default()
        };
    }

    // Only the handshake needs the parsed body, so every other event skips the parse.
    if memchr::memmem::find(request.body, b"url_verification").is_none() {
        return Verified::default();
    }
    let Ok(value) = serde_json::from_slice::<Value>(request.body) else {
        return Verified::default();
    };
    if value.get("type").and_then(Value::as_str) == Some("url_verification") {
        let challenge = value.get("challenge").cloned().unwrap_or(Value::Null);
        return Verified {
            reply: Some(json!({ "challenge": challenge })),
            ..Verified::default()
        };
    }
    Verified::default()
}

impl Scheme for Slack {
    fn verify(
        &self,
        request: &SignedRequest<'_>,
        now: SystemTime,
    ) -> Result<Verified, VerifyError> {
        let headers = request.headers;
        let header = SignatureHeader {
            name: SIGNATURE,
            display: "X-Slack-Signature",
            expected: "expected v0= followed by hex",
        };
        let given = decoded_signatures(headers, &header, |value| {
            hex::decode(value.trim_ascii().strip_prefix(PREFIX)?).ok()
        })?;
        let timestamps = timestamps_in_tolerance(
            headers,
            TIMESTAMP,
            "X-Slack-Request-Timestamp",
            now,
            self.tolerance,
        )?;

        let mut matched = false;
        for timestamp in timestamps {
            matched |= any_secret_matches(&self.secrets, &given, |key| {
                mac(key, timestamp, request.body)
            });
        }
        match matched {
            true => Ok(describe(request)),
            false => Err(VerifyError::Mismatch),
        }
    }

    fn default_id_pointers(&self) -> &'static [&'static str] {
        &["/event_id"]
    }

    fn default_event_type_pointer(&self) -> Option<&'static str> {
        Some("/event/type")
    }

    fn default_content_types(&self) -> &'static [&'static str] {
        &["application/json", "application/x-www-form-urlencoded"]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue};

    // Slack's documented example.
    const SECRET: &[u8] = b"8f742231b10e8888abcd99yyyzzz85a5";
    const TS: u64 = 1_531_420_618;
    const BODY: &[u8] = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    const SIGNATURE_VALUE: &str =
        "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
    }

    fn scheme() -> Slack {
        Slack::new(
            vec![SecretBytes::new(SECRET.to_vec())],
            Duration::from_secs(300),
        )
    }

    fn headers(signatures: &[&str], timestamps: &[&str], content_type: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in signatures {
            headers.append(SIGNATURE, HeaderValue::from_str(value).unwrap());
        }
        for value in timestamps {
            headers.append(TIMESTAMP, HeaderValue::from_str(value).unwrap());
        }
        headers.insert("content-type", HeaderValue::from_static(content_type));
        headers
    }

    fn form_headers(signatures: &[&str], timestamps: &[&str]) -> HeaderMap {
        headers(signatures, timestamps, "application/x-www-form-urlencoded")
    }

    fn verify(headers: &HeaderMap, body: &[u8], now: u64) -> Result<Verified, VerifyError> {
        scheme().verify(&SignedRequest::new(headers, body), at(now))
    }

    #[test]
    fn documented_example_signs_identically() {
        assert_eq!(Slack::sign(SECRET, TS, BODY), SIGNATURE_VALUE);
    }

    #[test]
    fn documented_example_verifies() {
        let headers = form_headers(&[SIGNATURE_VALUE], &[&TS.to_string()]);
        let verified = verify(&headers, BODY, TS).unwrap();
        assert_eq!(verified.event_type.as_deref(), Some("/webhook-collect"));
        assert_eq!(verified.reply, None);
    }

    #[test]
    fn re_encoded_form_body_rejected() {
        // Lowercase percent escapes decode to the same form, but they are not the signed bytes.
        let reencoded = String::from_utf8(BODY.to_vec())
            .unwrap()
            .replace("%2F", "%2f");
        let original: Vec<_> = form_urlencoded::parse(BODY).collect();
        let decoded: Vec<_> = form_urlencoded::parse(reencoded.as_bytes()).collect();
        assert_eq!(decoded, original);
        let headers = form_headers(&[SIGNATURE_VALUE], &[&TS.to_string()]);
        assert_eq!(
            verify(&headers, reencoded.as_bytes(), TS),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn tolerance_applies_both_ways() {
        let headers = form_headers(&[SIGNATURE_VALUE], &[&TS.to_string()]);
        assert!(verify(&headers, BODY, TS + 300).is_ok());
        assert!(verify(&headers, BODY, TS - 300).is_ok());
        assert_eq!(verify(&headers, BODY, TS + 301), Err(VerifyError::Expired));
        assert_eq!(verify(&headers, BODY, TS - 301), Err(VerifyError::Expired));
    }

    #[test]
    fn millisecond_timestamp_is_malformed() {
        let headers = form_headers(&[SIGNATURE_VALUE], &["1531420618000"]);
        let result = verify(&headers, BODY, TS);
        assert!(
            matches!(result, Err(VerifyError::Malformed { .. })),
            "{result:?}"
        );
    }

    #[test]
    fn garbage_timestamp_is_malformed() {
        let headers = form_headers(&[SIGNATURE_VALUE], &["now"]);
        let result = verify(&headers, BODY, TS);
        assert!(
            matches!(result, Err(VerifyError::Malformed { .. })),
            "{result:?}"
        );
    }

    #[test]
    fn missing_timestamp_rejected() {
        let headers = form_headers(&[SIGNATURE_VALUE], &[]);
        assert_eq!(
            verify(&headers, BODY, TS),
            Err(VerifyError::MissingHeader("X-Slack-Request-Timestamp"))
        );
    }

    #[test]
    fn missing_signature_rejected() {
        let headers = form_headers(&[], &[&TS.to_string()]);
        assert_eq!(
            verify(&headers, BODY, TS),
            Err(VerifyError::MissingHeader("X-Slack-Signature"))
        );
    }

    #[test]
    fn duplicated_headers_accept_any_valid_value() {
        let headers = form_headers(
            &["v0=00", SIGNATURE_VALUE],
            &["1531420000", &TS.to_string()],
        );
        assert!(verify(&headers, BODY, TS).is_ok());
    }

    #[test]
    fn rotated_secrets_accepted() {
        let scheme = Slack::new(
            vec![
                SecretBytes::new(b"old-signing-secret".to_vec()),
                SecretBytes::new(SECRET.to_vec()),
            ],
            Duration::from_secs(300),
        );
        let headers = form_headers(&[SIGNATURE_VALUE], &[&TS.to_string()]);
        assert!(
            scheme
                .verify(&SignedRequest::new(&headers, BODY), at(TS))
                .is_ok()
        );
    }

    #[test]
    fn url_verification_answered_with_challenge() {
        let body = br#"{"token":"Jhj5dZrVaK7ZwHHjRyZWjbDl","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}"#;
        let signature = Slack::sign(SECRET, TS, body);
        let headers = headers(&[&signature], &[&TS.to_string()], "application/json");
        let verified = verify(&headers, body, TS).unwrap();
        assert_eq!(
            verified.reply,
            Some(json!({ "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P" }))
        );
    }

    #[test]
    fn unsigned_url_verification_rejected() {
        let body = br#"{"challenge":"abc","type":"url_verification"}"#;
        let headers = headers(&["v0=00"], &[&TS.to_string()], "application/json");
        assert_eq!(verify(&headers, body, TS), Err(VerifyError::Mismatch));
    }

    #[test]
    fn interactive_payload_becomes_document() {
        let json = r#"{"type":"block_actions","trigger_id":"1.2.3"}"#;
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("payload", json)
            .finish();
        let signature = Slack::sign(SECRET, TS, body.as_bytes());
        let headers = form_headers(&[&signature], &[&TS.to_string()]);
        let verified = verify(&headers, body.as_bytes(), TS).unwrap();
        assert_eq!(verified.document.as_deref(), Some(json));
        assert_eq!(verified.event_type.as_deref(), Some("block_actions"));
    }
}
