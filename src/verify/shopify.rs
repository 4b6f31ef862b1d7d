//! Shopify: `X-Shopify-Hmac-Sha256` carries the base64 HMAC-SHA256 of the raw body, keyed with
//! the app's client secret as UTF-8. `X-Shopify-Topic` names the event (`orders/create`) and
//! `X-Shopify-Webhook-Id` stays the same across retries of one delivery.
//!
//! NOTE: Shopify signs the body only; the topic and id headers are taken as sent.

use super::makini::BASE64;
use super::{
    Scheme, SignatureHeader, SignedRequest, Verified, VerifyError, any_secret_matches,
    decoded_signatures, header_text, hmac_of,
};
use crate::config::{HmacAlgorithm, SecretBytes};
use base64::Engine;
use std::time::SystemTime;

const SIGNATURE: &str = "x-shopify-hmac-sha256";
const TOPIC: &str = "x-shopify-topic";
const WEBHOOK_ID: &str = "x-shopify-webhook-id";

#[derive(Debug)]
pub struct Shopify {
    secrets: Vec<SecretBytes>,
}

impl Shopify {
    pub fn new(secrets: Vec<SecretBytes>) -> Self {
        Self { secrets }
    }

    /// Returns the `X-Shopify-Hmac-Sha256` value Shopify sends for `body`.
    pub fn sign(secret: &[u8], body: &[u8]) -> String {
        BASE64.encode(hmac_of(HmacAlgorithm::Sha256, secret, &[body]))
    }
}

impl Scheme for Shopify {
    fn verify(
        &self,
        request: &SignedRequest<'_>,
        _now: SystemTime,
    ) -> Result<Verified, VerifyError> {
        let headers = request.headers;
        let header = SignatureHeader {
            name: SIGNATURE,
            display: "X-Shopify-Hmac-Sha256",
            expected: "not base64",
        };
        let given = decoded_signatures(headers, &header, |value| {
            BASE64.decode(value.trim_ascii()).ok()
        })?;

        let matched = any_secret_matches(&self.secrets, &given, |key| {
            hmac_of(HmacAlgorithm::Sha256, key, &[request.body])
        });
        if !matched {
            return Err(VerifyError::Mismatch);
        }
        Ok(Verified {
            event_id: header_text(headers, WEBHOOK_ID).map(str::to_owned),
            event_type: header_text(headers, TOPIC).map(str::to_owned),
            ..Verified::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue};

    // A fixture published with SQLPage's tests; Shopify publishes no vector of its own.
    const SECRET: &[u8] = b"test-webhook-secret";
    const BODY: &[u8] =
        br#"{"id":1234567890,"email":"customer@example.com","total_price":"123.45"}"#;
    const SIGNATURE_VALUE: &str = "QNyObTlKbMx2qDlPF/ZOZcBqg5OgPg+2oky3zldc0Gw=";

    fn scheme() -> Shopify {
        Shopify::new(vec![SecretBytes::new(SECRET.to_vec())])
    }

    fn headers(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(SIGNATURE, HeaderValue::from_str(value).unwrap());
        }
        headers.insert(TOPIC, HeaderValue::from_static("orders/create"));
        headers.insert(
            WEBHOOK_ID,
            HeaderValue::from_static("b54557e4-bdd9-4b37-8a5f-bf7d70bcd043"),
        );
        headers
    }

    fn verify(values: &[&str], body: &[u8]) -> Result<Verified, VerifyError> {
        scheme().verify(
            &SignedRequest::new(&headers(values), body),
            SystemTime::now(),
        )
    }

    #[test]
    fn fixture_signs_identically() {
        assert_eq!(Shopify::sign(SECRET, BODY), SIGNATURE_VALUE);
    }

    #[test]
    fn fixture_verifies_with_topic_and_id() {
        let verified = verify(&[SIGNATURE_VALUE], BODY).unwrap();
        assert_eq!(verified.event_type.as_deref(), Some("orders/create"));
        assert_eq!(
            verified.event_id.as_deref(),
            Some("b54557e4-bdd9-4b37-8a5f-bf7d70bcd043")
        );
    }

    #[test]
    fn fixture_with_changed_body_rejected() {
        let body = String::from_utf8(BODY.to_vec())
            .unwrap()
            .replace("123.45", "123.46");
        assert_eq!(
            verify(&[SIGNATURE_VALUE], body.as_bytes()),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn hex_signature_rejected() {
        let hex_value = hex::encode(hmac_of(HmacAlgorithm::Sha256, SECRET, &[BODY]));
        // 64 hex digits are also valid base64, of 48 bytes, so they cannot match.
        assert_eq!(verify(&[&hex_value], BODY), Err(VerifyError::Mismatch));
    }

    #[test]
    fn missing_header_rejected() {
        assert_eq!(
            verify(&[], BODY),
            Err(VerifyError::MissingHeader("X-Shopify-Hmac-Sha256"))
        );
    }

    #[test]
    fn non_base64_signature_is_malformed() {
        let result = verify(&["not base64!"], BODY);
        assert!(
            matches!(result, Err(VerifyError::Malformed { .. })),
            "{result:?}"
        );
    }

    #[test]
    fn rotated_secrets_accepted() {
        let scheme = Shopify::new(vec![
            SecretBytes::new(b"old".to_vec()),
            SecretBytes::new(SECRET.to_vec()),
        ]);
        let headers = headers(&[SIGNATURE_VALUE]);
        let result = scheme.verify(&SignedRequest::new(&headers, BODY), SystemTime::now());
        assert!(result.is_ok(), "{result:?}");
    }

    #[test]
    fn duplicated_header_accepts_any_valid_value() {
        assert!(verify(&["AAAA", SIGNATURE_VALUE], BODY).is_ok());
        assert!(verify(&[SIGNATURE_VALUE, "!!"], BODY).is_ok());
    }
}
