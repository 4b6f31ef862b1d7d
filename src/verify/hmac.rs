//! A generic HMAC scheme for providers without a scheme of their own, configured by the
//! source's `hmac` table: the signature header and an optional prefix before the signature,
//! the hash (SHA-1, SHA-256 or SHA-512), the encoding (hex or base64), and the signed content,
//! either the raw body or `<timestamp><separator><body>` with the timestamp taken as sent
//! from its own header and checked against the source's tolerance.

use super::makini::BASE64;
use super::{
    Scheme, SignatureHeader, SignedRequest, Verified, VerifyError, any_secret_matches,
    decoded_signatures, hmac_of, timestamps_in_tolerance,
};
use crate::config::{HmacAlgorithm, HmacConfig, SecretBytes, SignatureEncoding, SignedContent};
use axum::http::HeaderName;
use base64::Engine;
use std::time::{Duration, SystemTime};

#[derive(Debug)]
pub struct GenericHmac {
    secrets: Vec<SecretBytes>,
    signature_header: HeaderName,
    /// The header name as configured, for error messages.
    signature_display: &'static str,
    prefix: Vec<u8>,
    algorithm: HmacAlgorithm,
    encoding: SignatureEncoding,
    /// The timestamp header (name, display name) when the timestamp is signed.
    timestamp: Option<(HeaderName, &'static str)>,
    separator: Vec<u8>,
    tolerance: Duration,
}

/// Parses a configured header name and keeps its spelling for error messages.
///
/// The name is leaked once at startup so that [`VerifyError`] can keep `&'static str` names;
/// a source is built once per process.
fn configured_header(name: &str, key: &str) -> Result<(HeaderName, &'static str), String> {
    let parsed = HeaderName::try_from(name)
        .map_err(|_| format!("hmac.{key} {name:?} is not a valid header name"))?;
    Ok((parsed, Box::leak(name.to_owned().into_boxed_str())))
}

impl GenericHmac {
    pub fn new(
        secrets: Vec<SecretBytes>,
        settings: &HmacConfig,
        tolerance: Duration,
    ) -> Result<Self, String> {
        let (signature_header, signature_display) = configured_header(&settings.header, "header")?;
        let timestamp = match (settings.signed_content, &settings.timestamp_header) {
            (SignedContent::TimestampBody, Some(name)) => {
                Some(configured_header(name, "timestamp_header")?)
            }
            (SignedContent::TimestampBody, None) => {
                return Err(
                    "hmac.signed_content = \"timestamp_body\" needs hmac.timestamp_header".into(),
                );
            }
            (SignedContent::Body, Some(_)) => {
                return Err(
                    "hmac.timestamp_header is only used with signed_content = \"timestamp_body\""
                        .into(),
                );
            }
            (SignedContent::Body, None) => None,
        };
        Ok(Self {
            secrets,
            signature_header,
            signature_display,
            prefix: settings.prefix.as_bytes().to_vec(),
            algorithm: settings.algorithm,
            encoding: settings.encoding,
            timestamp,
            separator: settings.separator.as_bytes().to_vec(),
            tolerance,
        })
    }

    /// Returns the signature header value for `body`, signed at `timestamp` when the scheme
    /// signs one.
    pub fn sign(&self, secret: &[u8], timestamp: Option<u64>, body: &[u8]) -> String {
        let timestamp = timestamp.map(|t| t.to_string());
        let mac = self.mac(secret, timestamp.as_deref().map(str::as_bytes), body);
        let encoded = match self.encoding {
            SignatureEncoding::Hex => hex::encode(mac),
            SignatureEncoding::Base64 => BASE64.encode(mac),
        };
        format!("{}{encoded}", String::from_utf8_lossy(&self.prefix))
    }

    /// Returns the timestamp header's name, when the scheme signs a timestamp.
    pub fn timestamp_header(&self) -> Option<&HeaderName> {
        self.timestamp.as_ref().map(|(name, _)| name)
    }

    /// Returns the signature header's name.
    pub fn signature_header(&self) -> &HeaderName {
        &self.signature_header
    }

    fn mac(&self, key: &[u8], timestamp: Option<&[u8]>, body: &[u8]) -> Vec<u8> {
        match timestamp {
            Some(timestamp) => hmac_of(self.algorithm, key, &[timestamp, &self.separator, body]),
            None => hmac_of(self.algorithm, key, &[body]),
        }
    }

    fn decode(&self, value: &[u8]) -> Option<Vec<u8>> {
        let encoded = value.trim_ascii().strip_prefix(self.prefix.as_slice())?;
        match self.encoding {
            SignatureEncoding::Hex => hex::decode(encoded).ok(),
            SignatureEncoding::Base64 => BASE64.decode(encoded).ok(),
        }
    }
}

impl Scheme for GenericHmac {
    fn verify(
        &self,
        request: &SignedRequest<'_>,
        now: SystemTime,
    ) -> Result<Verified, VerifyError> {
        let headers = request.headers;
        let header = SignatureHeader {
            name: self.signature_header.as_str(),
            display: self.signature_display,
            expected: "prefix or encoding does not match the configuration",
        };
        let given = decoded_signatures(headers, &header, |value| self.decode(value))?;

        let matched = match &self.timestamp {
            None => any_secret_matches(&self.secrets, &given, |key| {
                self.mac(key, None, request.body)
            }),
            Some((name, display)) => {
                let timestamps =
                    timestamps_in_tolerance(headers, name.as_str(), display, now, self.tolerance)?;
                let mut matched = false;
                for timestamp in timestamps {
                    matched |= any_secret_matches(&self.secrets, &given, |key| {
                        self.mac(key, Some(timestamp), request.body)
                    });
                }
                matched
            }
        };
        match matched {
            true => Ok(Verified::default()),
            false => Err(VerifyError::Mismatch),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;
    use axum::http::HeaderValue;

    const SECRET: &[u8] = b"generic-secret";
    const BODY: &[u8] = br#"{"kind":"order.paid","id":"o-1"}"#;
    const NOW: u64 = 1_700_000_000;

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
    }

    fn settings(text: &str) -> HmacConfig {
        toml::from_str(text).unwrap()
    }

    fn scheme(text: &str) -> GenericHmac {
        GenericHmac::new(
            vec![SecretBytes::new(SECRET.to_vec())],
            &settings(text),
            Duration::from_secs(300),
        )
        .unwrap()
    }

    fn body_scheme() -> GenericHmac {
        scheme("header = \"X-Signature\"\nprefix = \"sha256=\"")
    }

    fn timestamp_scheme() -> GenericHmac {
        scheme(
            "header = \"X-Signature\"\nencoding = \"base64\"\nalgorithm = \"sha512\"\n\
             signed_content = \"timestamp_body\"\ntimestamp_header = \"X-Timestamp\"\nseparator = \":\"",
        )
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    fn verify(
        scheme: &GenericHmac,
        pairs: &[(&str, &str)],
        now: u64,
    ) -> Result<Verified, VerifyError> {
        scheme.verify(&SignedRequest::new(&headers(pairs), BODY), at(now))
    }

    #[test]
    fn body_signature_matches_independent_value() {
        // HMAC-SHA256 of GitHub's documented example, in the same sha256=<hex> shape.
        let scheme = GenericHmac::new(
            vec![],
            &settings("header = \"X-Hub-Signature-256\"\nprefix = \"sha256=\""),
            Duration::from_secs(300),
        )
        .unwrap();
        assert_eq!(
            scheme.sign(b"It's a Secret to Everybody", None, b"Hello, World!"),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }

    #[test]
    fn body_signature_accepted() {
        let scheme = body_scheme();
        let signature = scheme.sign(SECRET, None, BODY);
        assert!(verify(&scheme, &[("x-signature", &signature)], NOW).is_ok());
    }

    #[test]
    fn configured_header_name_is_case_insensitive() {
        let scheme = scheme("header = \"X-SIGNATURE\"");
        let signature = scheme.sign(SECRET, None, BODY);
        assert!(verify(&scheme, &[("X-Signature", &signature)], NOW).is_ok());
    }

    #[test]
    fn missing_prefix_is_malformed() {
        let scheme = body_scheme();
        let signature = scheme.sign(SECRET, None, BODY);
        let bare = signature.trim_start_matches("sha256=");
        let result = verify(&scheme, &[("x-signature", bare)], NOW);
        assert!(
            matches!(result, Err(VerifyError::Malformed { .. })),
            "{result:?}"
        );
    }

    #[test]
    fn every_algorithm_and_encoding_round_trips() {
        for algorithm in ["sha1", "sha256", "sha512"] {
            for encoding in ["hex", "base64"] {
                let scheme = scheme(&format!(
                    "header = \"x-sig\"\nalgorithm = \"{algorithm}\"\nencoding = \"{encoding}\""
                ));
                let signature = scheme.sign(SECRET, None, BODY);
                let result = verify(&scheme, &[("x-sig", &signature)], NOW);
                assert!(result.is_ok(), "{algorithm} {encoding}: {result:?}");
            }
        }
    }

    #[test]
    fn algorithms_differ() {
        let sha1 = scheme("header = \"x-sig\"\nalgorithm = \"sha1\"");
        let sha512 = scheme("header = \"x-sig\"\nalgorithm = \"sha512\"");
        assert_eq!(sha1.sign(SECRET, None, BODY).len(), 40);
        assert_eq!(sha512.sign(SECRET, None, BODY).len(), 128);
        let signature = sha1.sign(SECRET, None, BODY);
        assert_eq!(
            verify(&sha512, &[("x-sig", &signature)], NOW),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn timestamp_signature_accepted() {
        let scheme = timestamp_scheme();
        let signature = scheme.sign(SECRET, Some(NOW), BODY);
        let pairs = [
            ("x-signature", signature.as_str()),
            ("x-timestamp", &NOW.to_string()),
        ];
        assert!(verify(&scheme, &pairs, NOW).is_ok());
    }

    #[test]
    fn separator_is_signed() {
        let scheme = timestamp_scheme();
        let mac = hmac_of(
            HmacAlgorithm::Sha512,
            SECRET,
            &[NOW.to_string().as_bytes(), b":", BODY],
        );
        assert_eq!(scheme.sign(SECRET, Some(NOW), BODY), BASE64.encode(mac));
    }

    #[test]
    fn timestamp_tolerance_applies_both_ways() {
        let scheme = timestamp_scheme();
        let signature = scheme.sign(SECRET, Some(NOW), BODY);
        let ts = NOW.to_string();
        let pairs = [
            ("x-signature", signature.as_str()),
            ("x-timestamp", ts.as_str()),
        ];
        assert!(verify(&scheme, &pairs, NOW + 300).is_ok());
        assert!(verify(&scheme, &pairs, NOW - 300).is_ok());
        assert_eq!(
            verify(&scheme, &pairs, NOW + 301),
            Err(VerifyError::Expired)
        );
        assert_eq!(
            verify(&scheme, &pairs, NOW - 301),
            Err(VerifyError::Expired)
        );
    }

    #[test]
    fn millisecond_timestamp_is_malformed() {
        let scheme = timestamp_scheme();
        let signature = scheme.sign(SECRET, Some(NOW), BODY);
        let pairs = [
            ("x-signature", signature.as_str()),
            ("x-timestamp", "1700000000000"),
        ];
        let result = verify(&scheme, &pairs, NOW);
        assert!(
            matches!(result, Err(VerifyError::Malformed { .. })),
            "{result:?}"
        );
    }

    #[test]
    fn missing_timestamp_rejected() {
        let scheme = timestamp_scheme();
        let signature = scheme.sign(SECRET, Some(NOW), BODY);
        assert_eq!(
            verify(&scheme, &[("x-signature", &signature)], NOW),
            Err(VerifyError::MissingHeader("X-Timestamp"))
        );
    }

    #[test]
    fn missing_signature_rejected() {
        assert_eq!(
            verify(&body_scheme(), &[], NOW),
            Err(VerifyError::MissingHeader("X-Signature"))
        );
    }

    #[test]
    fn duplicated_header_accepts_any_valid_value() {
        let scheme = body_scheme();
        let signature = scheme.sign(SECRET, None, BODY);
        let pairs = [
            ("x-signature", "sha256=00"),
            ("x-signature", signature.as_str()),
        ];
        assert!(verify(&scheme, &pairs, NOW).is_ok());
    }

    #[test]
    fn rotated_secrets_accepted() {
        let scheme = GenericHmac::new(
            vec![
                SecretBytes::new(b"old".to_vec()),
                SecretBytes::new(b"new".to_vec()),
            ],
            &settings("header = \"x-sig\""),
            Duration::from_secs(300),
        )
        .unwrap();
        for secret in [&b"old"[..], b"new"] {
            let signature = scheme.sign(secret, None, BODY);
            assert!(verify(&scheme, &[("x-sig", &signature)], NOW).is_ok());
        }
    }

    #[test]
    fn timestamp_content_without_header_rejected_at_startup() {
        let result = GenericHmac::new(
            vec![],
            &settings("header = \"x-sig\"\nsigned_content = \"timestamp_body\""),
            Duration::from_secs(300),
        );
        assert!(result.is_err());
    }

    #[test]
    fn invalid_header_name_rejected_at_startup() {
        let result = GenericHmac::new(
            vec![],
            &settings("header = \"bad header\""),
            Duration::from_secs(300),
        );
        assert!(result.is_err());
    }
}
