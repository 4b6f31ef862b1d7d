//! Stripe: `Stripe-Signature: t=<ts>,v1=<hex>[,v1=<hex>...]` carries HMAC-SHA256 of
//! `<ts>.<body>`. The key is the whole `whsec_...` string as UTF-8, not decoded (unlike
//! Standard Webhooks). During a secret roll Stripe sends one `v1` per active secret, and any
//! may match. `v0` entries are test-mode signatures of an older scheme and are ignored, so a
//! header with only `v0` is rejected.

use super::{
    Scheme, SignedRequest, Verified, VerifyError, any_secret_matches, check_timestamp,
    header_values, hmac_of,
};
use crate::config::{HmacAlgorithm, SecretBytes};
use std::time::{Duration, SystemTime};

const SIGNATURE: &str = "stripe-signature";
const DISPLAY: &str = "Stripe-Signature";

#[derive(Debug)]
pub struct Stripe {
    secrets: Vec<SecretBytes>,
    tolerance: Duration,
}

/// One `Stripe-Signature` value: its timestamp as sent and its decoded `v1` signatures.
struct Parsed<'a> {
    timestamp: &'a [u8],
    v1: Vec<Vec<u8>>,
}

impl Stripe {
    pub fn new(secrets: Vec<SecretBytes>, tolerance: Duration) -> Self {
        Self { secrets, tolerance }
    }

    /// Returns the `Stripe-Signature` value Stripe sends for `body` at `timestamp`.
    pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
        let mac = mac(secret, timestamp.to_string().as_bytes(), body);
        format!("t={timestamp},v1={}", hex::encode(mac))
    }
}

fn mac(secret: &[u8], timestamp: &[u8], body: &[u8]) -> Vec<u8> {
    hmac_of(HmacAlgorithm::Sha256, secret, &[timestamp, b".", body])
}

/// Splits one header value into its timestamp and `v1` signatures; `None` without a `t`.
fn parse(value: &[u8]) -> Option<Parsed<'_>> {
    let mut timestamp = None;
    let mut v1 = Vec::new();
    for item in value.split(|b| *b == b',') {
        let item = item.trim_ascii();
        if let Some(text) = item.strip_prefix(b"t=") {
            timestamp = Some(text);
        } else if let Some(text) = item.strip_prefix(b"v1=") {
            // A `v1` that is not hex cannot match; skipping it lets another one match.
            if let Ok(bytes) = hex::decode(text) {
                v1.push(bytes);
            }
        }
    }
    Some(Parsed {
        timestamp: timestamp?,
        v1,
    })
}

impl Scheme for Stripe {
    fn verify(
        &self,
        request: &SignedRequest<'_>,
        now: SystemTime,
    ) -> Result<Verified, VerifyError> {
        let values: Vec<&[u8]> = header_values(request.headers, SIGNATURE).collect();
        if values.is_empty() {
            return Err(VerifyError::MissingHeader(DISPLAY));
        }

        // Each value carries its own timestamp, so each is checked on its own; the first
        // error is kept in case none verifies, a malformed one ahead of an expired one.
        let mut error = None;
        let mut matched = false;
        for parsed in values.iter().map(|value| parse(value)) {
            let Some(parsed) = parsed else {
                error = Some(VerifyError::Malformed {
                    header: DISPLAY,
                    reason: "no t= timestamp",
                });
                continue;
            };
            if let Err(timestamp_error) =
                check_timestamp(DISPLAY, parsed.timestamp, now, self.tolerance)
            {
                if !matches!(error, Some(VerifyError::Malformed { .. })) {
                    error = Some(timestamp_error);
                }
                continue;
            }
            matched |= any_secret_matches(&self.secrets, &parsed.v1, |key| {
                mac(key, parsed.timestamp, request.body)
            });
        }

        match (matched, error) {
            (true, _) => Ok(Verified::default()),
            (false, Some(error)) => Err(error),
            (false, None) => Err(VerifyError::Mismatch),
        }
    }

    fn default_id_pointers(&self) -> &'static [&'static str] {
        &["/id"]
    }

    fn default_event_type_pointer(&self) -> Option<&'static str> {
        Some("/type")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue};

    const SECRET: &str = "whsec_test_secret_for_hookrelay";
    const BODY: &[u8] = br#"{"id":"evt_1","object":"event","type":"invoice.paid"}"#;
    const NOW: u64 = 1_700_000_000;

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
    }

    fn scheme() -> Stripe {
        Stripe::new(
            vec![SecretBytes::new(SECRET.as_bytes().to_vec())],
            Duration::from_secs(300),
        )
    }

    fn headers(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(SIGNATURE, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    fn verify(values: &[&str], now: u64) -> Result<Verified, VerifyError> {
        scheme().verify(&SignedRequest::new(&headers(values), BODY), at(now))
    }

    fn v1(secret: &str, timestamp: u64) -> String {
        Stripe::sign(secret.as_bytes(), timestamp, BODY)
            .split_once(",v1=")
            .unwrap()
            .1
            .to_owned()
    }

    #[test]
    fn signature_accepted() {
        let header = Stripe::sign(SECRET.as_bytes(), NOW, BODY);
        assert!(verify(&[&header], NOW).is_ok());
    }

    #[test]
    fn key_is_whole_secret_string_not_decoded() {
        let expected = hmac_of(
            HmacAlgorithm::Sha256,
            SECRET.as_bytes(),
            &[format!("{NOW}.").as_bytes(), BODY],
        );
        assert_eq!(
            Stripe::sign(SECRET.as_bytes(), NOW, BODY),
            format!("t={NOW},v1={}", hex::encode(expected))
        );
        let stripped = Stripe::sign(b"test_secret_for_hookrelay", NOW, BODY);
        assert_eq!(verify(&[&stripped], NOW), Err(VerifyError::Mismatch));
    }

    #[test]
    fn any_v1_may_match() {
        let header = format!("t={NOW},v1={},v1={}", v1("whsec_old", NOW), v1(SECRET, NOW));
        assert!(verify(&[&header], NOW).is_ok());
    }

    #[test]
    fn v0_alone_rejected() {
        let header = format!("t={NOW},v0={}", v1(SECRET, NOW));
        assert_eq!(verify(&[&header], NOW), Err(VerifyError::Mismatch));
    }

    #[test]
    fn v0_beside_valid_v1_accepted() {
        let header = format!("t={NOW},v1={},v0=00ff", v1(SECRET, NOW));
        assert!(verify(&[&header], NOW).is_ok());
    }

    #[test]
    fn tolerance_applies_both_ways() {
        let header = Stripe::sign(SECRET.as_bytes(), NOW, BODY);
        assert!(verify(&[&header], NOW + 300).is_ok());
        assert!(verify(&[&header], NOW - 300).is_ok());
        assert_eq!(verify(&[&header], NOW + 301), Err(VerifyError::Expired));
        assert_eq!(verify(&[&header], NOW - 301), Err(VerifyError::Expired));
    }

    #[test]
    fn millisecond_timestamp_is_malformed() {
        let header = format!("t={}000,v1={}", NOW, v1(SECRET, NOW));
        let result = verify(&[&header], NOW);
        assert!(
            matches!(result, Err(VerifyError::Malformed { .. })),
            "{result:?}"
        );
    }

    #[test]
    fn garbage_timestamp_is_malformed() {
        let header = format!("t=soon,v1={}", v1(SECRET, NOW));
        let result = verify(&[&header], NOW);
        assert!(
            matches!(result, Err(VerifyError::Malformed { .. })),
            "{result:?}"
        );
    }

    #[test]
    fn missing_timestamp_is_malformed() {
        let header = format!("v1={}", v1(SECRET, NOW));
        let result = verify(&[&header], NOW);
        assert!(
            matches!(result, Err(VerifyError::Malformed { .. })),
            "{result:?}"
        );
    }

    #[test]
    fn changed_timestamp_rejected() {
        let header = format!("t={},v1={}", NOW + 1, v1(SECRET, NOW));
        assert_eq!(verify(&[&header], NOW), Err(VerifyError::Mismatch));
    }

    #[test]
    fn missing_header_rejected() {
        assert_eq!(
            verify(&[], NOW),
            Err(VerifyError::MissingHeader("Stripe-Signature"))
        );
    }

    #[test]
    fn rotated_secrets_accepted() {
        let scheme = Stripe::new(
            vec![
                SecretBytes::new(b"whsec_old".to_vec()),
                SecretBytes::new(b"whsec_new".to_vec()),
            ],
            Duration::from_secs(300),
        );
        for secret in ["whsec_old", "whsec_new"] {
            let headers = headers(&[&Stripe::sign(secret.as_bytes(), NOW, BODY)]);
            let result = scheme.verify(&SignedRequest::new(&headers, BODY), at(NOW));
            assert!(result.is_ok(), "{result:?}");
        }
    }

    #[test]
    fn duplicated_header_accepts_any_valid_value() {
        let valid = Stripe::sign(SECRET.as_bytes(), NOW, BODY);
        assert!(verify(&["t=1,v1=00", &valid], NOW).is_ok());
        assert!(verify(&[&valid, "garbage"], NOW).is_ok());
    }

    #[test]
    fn event_pointers_default_to_id_and_type() {
        assert_eq!(scheme().default_id_pointers(), &["/id"]);
        assert_eq!(scheme().default_event_type_pointer(), Some("/type"));
    }
}
