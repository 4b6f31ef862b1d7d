//! GitHub: `X-Hub-Signature-256: sha256=<hex>` carries HMAC-SHA256 of the raw body, keyed with
//! the webhook secret's UTF-8 bytes. `X-GitHub-Event` names the event and `X-GitHub-Delivery`
//! identifies the delivery; a manual redelivery reuses it, so it is the idempotency key.
//!
//! A webhook set to the `application/x-www-form-urlencoded` content type sends the JSON as
//! the `payload` form field. The signature covers the form body exactly as received, and the
//! id and type pointers then read the JSON inside `payload`.
//!
//! NOTE: GitHub signs the body only. The event and delivery headers are taken as sent, so a
//! party that captured one signed body could resend it under another delivery id.

use super::{
    Scheme, SignatureHeader, SignedRequest, Verified, VerifyError, any_secret_matches,
    decoded_signatures, form_field, header_text, hmac_of, is_form,
};
use crate::config::{HmacAlgorithm, SecretBytes};
use std::time::SystemTime;

const SIGNATURE: &str = "x-hub-signature-256";
const EVENT: &str = "x-github-event";
const DELIVERY: &str = "x-github-delivery";
const PREFIX: &[u8] = b"sha256=";

#[derive(Debug)]
pub struct Github {
    secrets: Vec<SecretBytes>,
}

impl Github {
    pub fn new(secrets: Vec<SecretBytes>) -> Self {
        Self { secrets }
    }

    /// Returns the `X-Hub-Signature-256` value GitHub sends for `body`.
    pub fn sign(secret: &[u8], body: &[u8]) -> String {
        let mac = hmac_of(HmacAlgorithm::Sha256, secret, &[body]);
        format!("sha256={}", hex::encode(mac))
    }
}

fn decode_signature(value: &[u8]) -> Option<Vec<u8>> {
    hex::decode(value.trim_ascii().strip_prefix(PREFIX)?).ok()
}

impl Scheme for Github {
    fn verify(
        &self,
        request: &SignedRequest<'_>,
        _now: SystemTime,
    ) -> Result<Verified, VerifyError> {
        let headers = request.headers;
        let header = SignatureHeader {
            name: SIGNATURE,
            display: "X-Hub-Signature-256",
            expected: "expected sha256= followed by hex",
        };
        let given = decoded_signatures(headers, &header, decode_signature)?;

        let matched = any_secret_matches(&self.secrets, &given, |key| {
            hmac_of(HmacAlgorithm::Sha256, key, &[request.body])
        });
        if !matched {
            return Err(VerifyError::Mismatch);
        }

        let document = match is_form(headers) {
            true => Some(
                form_field(request.body, "payload").ok_or(VerifyError::Malformed {
                    header: "Content-Type",
                    reason: "form-encoded body without a payload field",
                })?,
            ),
            false => None,
        };
        Ok(Verified {
            event_id: header_text(headers, DELIVERY).map(str::to_owned),
            event_type: header_text(headers, EVENT).map(str::to_owned),
            document,
            reply: None,
        })
    }

    fn default_content_types(&self) -> &'static [&'static str] {
        &["application/json", "application/x-www-form-urlencoded"]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue};

    // GitHub's documented example.
    const DOC_SECRET: &[u8] = b"It's a Secret to Everybody";
    const DOC_BODY: &[u8] = b"Hello, World!";
    const DOC_SIGNATURE: &str =
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    const SECRET: &[u8] = b"github-test-secret";
    const BODY: &[u8] = br#"{"action":"opened","number":2}"#;

    fn scheme() -> Github {
        Github::new(vec![SecretBytes::new(SECRET.to_vec())])
    }

    fn headers(signatures: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in signatures {
            headers.append(SIGNATURE, HeaderValue::from_str(value).unwrap());
        }
        headers.insert(EVENT, HeaderValue::from_static("pull_request"));
        headers.insert(
            DELIVERY,
            HeaderValue::from_static("72d3162e-cc78-11e3-81ab-4c9367dc0958"),
        );
        headers
    }

    fn verify(headers: &HeaderMap, body: &[u8]) -> Result<Verified, VerifyError> {
        scheme().verify(&SignedRequest::new(headers, body), SystemTime::now())
    }

    #[test]
    fn documented_example_signs_identically() {
        assert_eq!(Github::sign(DOC_SECRET, DOC_BODY), DOC_SIGNATURE);
    }

    #[test]
    fn documented_example_verifies() {
        let scheme = Github::new(vec![SecretBytes::new(DOC_SECRET.to_vec())]);
        let headers = headers(&[DOC_SIGNATURE]);
        let result = scheme.verify(&SignedRequest::new(&headers, DOC_BODY), SystemTime::now());
        assert!(result.is_ok(), "{result:?}");
    }

    #[test]
    fn event_and_delivery_headers_are_reported() {
        let verified = verify(&headers(&[&Github::sign(SECRET, BODY)]), BODY).unwrap();
        assert_eq!(verified.event_type.as_deref(), Some("pull_request"));
        assert_eq!(
            verified.event_id.as_deref(),
            Some("72d3162e-cc78-11e3-81ab-4c9367dc0958")
        );
        assert_eq!(verified.document, None);
    }

    #[test]
    fn wrong_secret_rejected() {
        let headers = headers(&[&Github::sign(b"other", BODY)]);
        assert_eq!(verify(&headers, BODY), Err(VerifyError::Mismatch));
    }

    #[test]
    fn changed_body_rejected() {
        let headers = headers(&[&Github::sign(SECRET, BODY)]);
        assert_eq!(verify(&headers, b"{}"), Err(VerifyError::Mismatch));
    }

    #[test]
    fn missing_signature_rejected() {
        let mut headers = headers(&[]);
        headers.remove(SIGNATURE);
        assert_eq!(
            verify(&headers, BODY),
            Err(VerifyError::MissingHeader("X-Hub-Signature-256"))
        );
    }

    #[test]
    fn signature_without_prefix_is_malformed() {
        let signature = Github::sign(SECRET, BODY);
        let bare = signature.trim_start_matches("sha256=");
        let result = verify(&headers(&[bare]), BODY);
        assert!(
            matches!(result, Err(VerifyError::Malformed { .. })),
            "{result:?}"
        );
    }

    #[test]
    fn sha1_header_alone_is_not_accepted() {
        let mut headers = headers(&[]);
        headers.insert("x-hub-signature", HeaderValue::from_static("sha1=0000"));
        assert_eq!(
            verify(&headers, BODY),
            Err(VerifyError::MissingHeader("X-Hub-Signature-256"))
        );
    }

    #[test]
    fn any_rotated_secret_accepted() {
        let scheme = Github::new(vec![
            SecretBytes::new(b"old".to_vec()),
            SecretBytes::new(b"new".to_vec()),
        ]);
        for secret in [&b"old"[..], b"new"] {
            let headers = headers(&[&Github::sign(secret, BODY)]);
            let result = scheme.verify(&SignedRequest::new(&headers, BODY), SystemTime::now());
            assert!(result.is_ok(), "{result:?}");
        }
    }

    #[test]
    fn duplicated_header_accepts_any_valid_value() {
        let signature = Github::sign(SECRET, BODY);
        assert!(verify(&headers(&["sha256=00", &signature]), BODY).is_ok());
        assert!(verify(&headers(&[&signature, "junk"]), BODY).is_ok());
    }

    #[test]
    fn mixed_case_header_name_matches() {
        let mut headers = HeaderMap::new();
        let name = axum::http::HeaderName::from_bytes(b"X-Hub-Signature-256").unwrap();
        headers.insert(
            name,
            HeaderValue::from_str(&Github::sign(SECRET, BODY)).unwrap(),
        );
        assert!(verify(&headers, BODY).is_ok());
    }

    #[test]
    fn form_delivery_verified_as_received() {
        let json = r#"{"zen":"Keep it logically awesome.","hook_id":1}"#;
        let body: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("payload", json)
            .finish();
        let mut headers = headers(&[&Github::sign(SECRET, body.as_bytes())]);
        headers.insert(
            "content-type",
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        let verified = verify(&headers, body.as_bytes()).unwrap();
        assert_eq!(verified.document.as_deref(), Some(json));
    }

    #[test]
    fn form_delivery_signed_over_json_rejected() {
        let json = r#"{"zen":"Design for failure."}"#;
        let body: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("payload", json)
            .finish();
        let mut headers = headers(&[&Github::sign(SECRET, json.as_bytes())]);
        headers.insert(
            "content-type",
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        assert_eq!(
            verify(&headers, body.as_bytes()),
            Err(VerifyError::Mismatch)
        );
    }
}
