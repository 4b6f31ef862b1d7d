//! Makini: `X-Webhook-Signature` carries HMAC-SHA256 of the exact raw body, keyed with the
//! secret's UTF-8 bytes. Makini's documentation has shown the digest both as lowercase hex and
//! as base64, so both encodings are accepted.

use super::{
    Scheme, SignatureHeader, SignedRequest, Verified, VerifyError, any_secret_matches,
    decoded_signatures,
};
use crate::config::SecretBytes;
use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::time::SystemTime;

pub(crate) const HEADER: &str = "x-webhook-signature";

/// Standard base64 alphabet, with or without `=` padding.
pub(crate) const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

#[derive(Debug)]
pub struct Makini {
    secrets: Vec<SecretBytes>,
}

impl Makini {
    pub fn new(secrets: Vec<SecretBytes>) -> Self {
        Self { secrets }
    }

    /// Returns the hex signature `send` puts in the header for `body`.
    pub fn sign_hex(secret: &[u8], body: &[u8]) -> String {
        hex::encode(mac(secret, body))
    }

    /// Returns the base64 signature, the encoding of Makini's earlier documentation.
    pub fn sign_base64(secret: &[u8], body: &[u8]) -> String {
        BASE64.encode(mac(secret, body))
    }
}

fn mac(secret: &[u8], body: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// Decodes a signature given as hex or base64; `None` when it is neither.
fn decode_signature(value: &[u8]) -> Option<Vec<u8>> {
    let value = value.trim_ascii();
    if let Ok(bytes) = hex::decode(value) {
        return Some(bytes);
    }
    BASE64.decode(value).ok()
}

impl Scheme for Makini {
    fn verify(
        &self,
        request: &SignedRequest<'_>,
        _now: SystemTime,
    ) -> Result<Verified, VerifyError> {
        let headers = request.headers;
        let header = SignatureHeader {
            name: HEADER,
            display: "X-Webhook-Signature",
            expected: "neither hex nor base64",
        };
        let given = decoded_signatures(headers, &header, decode_signature)?;

        let matched =
            any_secret_matches(&self.secrets, &given, |key| mac(key, request.body).to_vec());
        match matched {
            true => Ok(Verified::default()),
            false => Err(VerifyError::Mismatch),
        }
    }

    fn default_id_pointers(&self) -> &'static [&'static str] {
        &["/id", "/webhook_id", "/event_id"]
    }

    fn default_event_type_pointer(&self) -> Option<&'static str> {
        Some("/event")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue};

    const SECRET: &[u8] = b"makini-test-secret";
    const BODY: &[u8] =
        br#"{"event":"assets.updated","body":["7c9e6679-7425-40de-944b-e07fc1f90ae7"]}"#;

    fn scheme() -> Makini {
        Makini::new(vec![SecretBytes::new(SECRET.to_vec())])
    }

    fn headers(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(HEADER, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    fn verify(values: &[&str], body: &[u8]) -> Result<Verified, VerifyError> {
        scheme().verify(
            &SignedRequest::new(&headers(values), body),
            SystemTime::now(),
        )
    }

    #[test]
    fn hex_signature_accepted() {
        let signature = Makini::sign_hex(SECRET, BODY);
        assert_eq!(signature.len(), 64);
        assert!(verify(&[&signature], BODY).is_ok());
    }

    #[test]
    fn uppercase_hex_signature_accepted() {
        let signature = Makini::sign_hex(SECRET, BODY).to_uppercase();
        assert!(verify(&[&signature], BODY).is_ok());
    }

    #[test]
    fn base64_signature_accepted() {
        let signature = Makini::sign_base64(SECRET, BODY);
        assert!(verify(&[&signature], BODY).is_ok());
        assert!(verify(&[signature.trim_end_matches('=')], BODY).is_ok());
    }

    #[test]
    fn known_digest_matches_independent_value() {
        // HMAC-SHA256 of "Hello, World!" keyed "It's a Secret to Everybody", as GitHub
        // publishes it; Makini's MAC is the same construction without the prefix.
        let signature = Makini::sign_hex(b"It's a Secret to Everybody", b"Hello, World!");
        assert_eq!(
            signature,
            "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }

    #[test]
    fn wrong_secret_rejected() {
        let signature = Makini::sign_hex(b"another-secret", BODY);
        assert_eq!(verify(&[&signature], BODY), Err(VerifyError::Mismatch));
    }

    #[test]
    fn missing_header_rejected() {
        assert_eq!(
            verify(&[], BODY),
            Err(VerifyError::MissingHeader("X-Webhook-Signature"))
        );
    }

    #[test]
    fn truncated_signature_rejected() {
        let signature = Makini::sign_hex(SECRET, BODY);
        assert_eq!(
            verify(&[&signature[..62]], BODY),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn non_hex_signature_is_malformed() {
        let result = verify(&["zz-not-a-signature!"], BODY);
        assert!(
            matches!(result, Err(VerifyError::Malformed { .. })),
            "{result:?}"
        );
    }

    #[test]
    fn one_changed_byte_rejected() {
        let signature = Makini::sign_hex(SECRET, BODY);
        let mut body = BODY.to_vec();
        body.push(b'\n');
        assert_eq!(verify(&[&signature], &body), Err(VerifyError::Mismatch));
    }

    #[test]
    fn any_rotated_secret_accepted() {
        let scheme = Makini::new(vec![
            SecretBytes::new(b"old".to_vec()),
            SecretBytes::new(b"new".to_vec()),
        ]);
        for secret in [&b"old"[..], b"new"] {
            let signature = Makini::sign_hex(secret, BODY);
            let headers = headers(&[&signature]);
            let result = scheme.verify(&SignedRequest::new(&headers, BODY), SystemTime::now());
            assert!(result.is_ok());
        }
    }

    #[test]
    fn duplicated_header_accepts_any_valid_value() {
        let signature = Makini::sign_hex(SECRET, BODY);
        assert!(verify(&["00", &signature], BODY).is_ok());
        assert!(verify(&[&signature, "garbage!"], BODY).is_ok());
    }
}
