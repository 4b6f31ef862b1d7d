//! Standard Webhooks (used by Svix and others): HMAC-SHA256 over `id.timestamp.body`, keyed
//! with the base64-decoded part of the secret after `whsec_`. `webhook-signature` is a
//! space-separated list of `v1,<base64>` entries and any match accepts. Svix sends the same
//! scheme under `svix-*` header names.

use super::makini::BASE64;
use super::{Scheme, SignedRequest, Verified, VerifyError, any_secret_matches, check_timestamp};
use crate::config::SecretBytes;
use axum::http::HeaderMap;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::time::{Duration, SystemTime};

/// Header names of one spelling of the scheme.
struct HeaderNames {
    id: &'static str,
    timestamp: &'static str,
    signature: &'static str,
}

const STANDARD: HeaderNames = HeaderNames {
    id: "webhook-id",
    timestamp: "webhook-timestamp",
    signature: "webhook-signature",
};

const SVIX: HeaderNames = HeaderNames {
    id: "svix-id",
    timestamp: "svix-timestamp",
    signature: "svix-signature",
};

#[derive(Debug)]
pub struct Standard {
    keys: Vec<SecretBytes>,
    tolerance: Duration,
}

/// Decodes a `whsec_<base64>` secret (the prefix is optional) into key bytes.
pub fn decode_secret(secret: &str) -> Result<SecretBytes, &'static str> {
    let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
    let key = BASE64
        .decode(encoded)
        .map_err(|_| "a Standard Webhooks secret must be base64, optionally after \"whsec_\"")?;
    // An empty key would let anyone compute a valid signature.
    if key.is_empty() {
        return Err("a Standard Webhooks secret has no key bytes after \"whsec_\"");
    }
    Ok(SecretBytes::new(key))
}

impl Standard {
    pub fn new(keys: Vec<SecretBytes>, tolerance: Duration) -> Self {
        Self { keys, tolerance }
    }

    /// Returns the `webhook-signature` value for an event, as a provider would send it.
    pub fn sign(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
        format!("v1,{}", BASE64.encode(mac(key, id, timestamp, body)))
    }
}

fn mac(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// Collects the decoded `v1` signatures of every signature header value. Entries of other
/// versions and entries that are not base64 are skipped, as the specification requires.
fn v1_signatures(headers: &HeaderMap, name: &'static str) -> Vec<Vec<u8>> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|value| value.as_bytes().split(|b| *b == b' '))
        .filter_map(|entry| entry.strip_prefix(b"v1,"))
        .filter_map(|encoded| BASE64.decode(encoded).ok())
        .collect()
}

impl Scheme for Standard {
    fn verify(
        &self,
        request: &SignedRequest<'_>,
        now: SystemTime,
    ) -> Result<Verified, VerifyError> {
        let headers = request.headers;
        let names =
            if headers.contains_key(STANDARD.signature) || !headers.contains_key(SVIX.signature) {
                &STANDARD
            } else {
                &SVIX
            };

        let id = headers
            .get(names.id)
            .ok_or(VerifyError::MissingHeader("webhook-id"))?
            .to_str()
            .map_err(|_| VerifyError::Malformed {
                header: "webhook-id",
                reason: "not visible ASCII",
            })?;
        let raw_timestamp = headers
            .get(names.timestamp)
            .ok_or(VerifyError::MissingHeader("webhook-timestamp"))?;
        if !headers.contains_key(names.signature) {
            return Err(VerifyError::MissingHeader("webhook-signature"));
        }

        let timestamp = check_timestamp(
            "webhook-timestamp",
            raw_timestamp.as_bytes(),
            now,
            self.tolerance,
        )?;
        let given = v1_signatures(headers, names.signature);

        let matched = any_secret_matches(&self.keys, &given, |key| {
            mac(key, id, timestamp, request.body).to_vec()
        });
        match matched {
            true => Ok(Verified {
                event_id: Some(id.to_owned()),
                ..Verified::default()
            }),
            false => Err(VerifyError::Mismatch),
        }
    }

    fn default_event_type_pointer(&self) -> Option<&'static str> {
        Some("/type")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    // The test vector of the Standard Webhooks reference libraries.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: u64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
    }

    fn scheme() -> Standard {
        Standard::new(
            vec![decode_secret(SECRET).unwrap()],
            Duration::from_secs(300),
        )
    }

    fn headers(prefix: &str, id: &str, timestamp: &str, signature: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let name = |suffix: &str| {
            axum::http::HeaderName::from_bytes(format!("{prefix}-{suffix}").as_bytes()).unwrap()
        };
        headers.insert(name("id"), HeaderValue::from_str(id).unwrap());
        headers.insert(name("timestamp"), HeaderValue::from_str(timestamp).unwrap());
        headers.insert(name("signature"), HeaderValue::from_str(signature).unwrap());
        headers
    }

    fn vector_headers(signature: &str) -> HeaderMap {
        headers("webhook", ID, &TIMESTAMP.to_string(), signature)
    }

    #[test]
    fn published_vector_signs_identically() {
        let key = decode_secret(SECRET).unwrap();
        assert_eq!(key.expose().len(), 24);
        assert_eq!(Standard::sign(key.expose(), ID, TIMESTAMP, BODY), SIGNATURE);
    }

    #[test]
    fn published_vector_verifies() {
        let verified = scheme()
            .verify(
                &SignedRequest::new(&vector_headers(SIGNATURE), BODY),
                at(TIMESTAMP),
            )
            .unwrap();
        assert_eq!(verified.event_id.as_deref(), Some(ID));
    }

    #[test]
    fn vector_with_last_char_changed_fails() {
        let wrong = SIGNATURE.replace("1OE=", "1OA=");
        let result = scheme().verify(
            &SignedRequest::new(&vector_headers(&wrong), BODY),
            at(TIMESTAMP),
        );
        assert_eq!(result, Err(VerifyError::Mismatch));
    }

    #[test]
    fn empty_secret_rejected() {
        assert!(decode_secret("whsec_").is_err());
        assert!(decode_secret("").is_err());
    }

    #[test]
    fn secret_without_prefix_accepted() {
        let bare = SECRET.trim_start_matches("whsec_");
        let scheme = Standard::new(vec![decode_secret(bare).unwrap()], Duration::from_secs(300));
        assert!(
            scheme
                .verify(
                    &SignedRequest::new(&vector_headers(SIGNATURE), BODY),
                    at(TIMESTAMP)
                )
                .is_ok()
        );
    }

    #[test]
    fn signature_list_any_match_accepts() {
        let list = format!("v1a,abc v1,bm90LXRoZS1zaWduYXR1cmU= {SIGNATURE}");
        assert!(
            scheme()
                .verify(
                    &SignedRequest::new(&vector_headers(&list), BODY),
                    at(TIMESTAMP)
                )
                .is_ok()
        );
    }

    #[test]
    fn svix_header_names_accepted() {
        let headers = headers("svix", ID, &TIMESTAMP.to_string(), SIGNATURE);
        assert!(
            scheme()
                .verify(&SignedRequest::new(&headers, BODY), at(TIMESTAMP))
                .is_ok()
        );
    }

    #[test]
    fn timestamp_tolerance_applies_both_ways() {
        let scheme = scheme();
        let headers = vector_headers(SIGNATURE);
        assert!(
            scheme
                .verify(&SignedRequest::new(&headers, BODY), at(TIMESTAMP + 300))
                .is_ok()
        );
        assert!(
            scheme
                .verify(&SignedRequest::new(&headers, BODY), at(TIMESTAMP - 300))
                .is_ok()
        );
        assert_eq!(
            scheme.verify(&SignedRequest::new(&headers, BODY), at(TIMESTAMP + 301)),
            Err(VerifyError::Expired)
        );
        assert_eq!(
            scheme.verify(&SignedRequest::new(&headers, BODY), at(TIMESTAMP - 301)),
            Err(VerifyError::Expired)
        );
    }

    #[test]
    fn millisecond_timestamp_is_malformed() {
        let headers = headers("webhook", ID, "1614265330000", SIGNATURE);
        let result = scheme().verify(&SignedRequest::new(&headers, BODY), at(TIMESTAMP));
        assert!(
            matches!(result, Err(VerifyError::Malformed { .. })),
            "{result:?}"
        );
    }

    #[test]
    fn garbage_timestamp_is_malformed() {
        let headers = headers("webhook", ID, "yesterday", SIGNATURE);
        let result = scheme().verify(&SignedRequest::new(&headers, BODY), at(TIMESTAMP));
        assert!(
            matches!(result, Err(VerifyError::Malformed { .. })),
            "{result:?}"
        );
    }

    #[test]
    fn changed_id_fails() {
        let headers = headers("webhook", "msg_other", &TIMESTAMP.to_string(), SIGNATURE);
        assert_eq!(
            scheme().verify(&SignedRequest::new(&headers, BODY), at(TIMESTAMP)),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn missing_signature_header_rejected() {
        let mut headers = vector_headers(SIGNATURE);
        headers.remove("webhook-signature");
        assert_eq!(
            scheme().verify(&SignedRequest::new(&headers, BODY), at(TIMESTAMP)),
            Err(VerifyError::MissingHeader("webhook-signature"))
        );
    }
}
