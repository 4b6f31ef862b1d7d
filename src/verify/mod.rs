//! Signature verification, one file per scheme behind the [`Scheme`] trait.
//!
//! Every scheme works on the raw body bytes before anything parses them, compares MACs in
//! constant time, and accepts a signature made with any of the source's secrets (rotation).
//! Header names are matched case-insensitively (a [`HeaderMap`] stores them lowercased), and
//! a signature header sent twice is accepted when any of its values is valid.

mod github;
mod hmac;
mod makini;
mod none;
mod shopify;
mod slack;
mod standard;
mod stripe;
mod twilio;

pub use github::Github;
pub use hmac::GenericHmac;
pub use makini::Makini;
pub use none::NoVerification;
pub use shopify::Shopify;
pub use slack::Slack;
pub use standard::{Standard, decode_secret as standard_decode_secret};
pub use stripe::Stripe;
pub use twilio::Twilio;

use crate::config::{ConfigError, HmacAlgorithm, SchemeKind, SecretBytes, SourceConfig, secret};
use ::hmac::digest::KeyInit;
use ::hmac::{Hmac, Mac};
use axum::http::{HeaderMap, header};
use std::time::{Duration, SystemTime};
use subtle::ConstantTimeEq;

/// The parts of a request a scheme may check.
#[derive(Debug, Clone, Copy)]
pub struct SignedRequest<'a> {
    pub headers: &'a HeaderMap,
    /// The query string as received, without the `?`.
    pub query: Option<&'a str>,
    /// The body exactly as received.
    pub body: &'a [u8],
}

impl<'a> SignedRequest<'a> {
    /// Creates a request without a query string.
    pub fn new(headers: &'a HeaderMap, body: &'a [u8]) -> Self {
        Self {
            headers,
            query: None,
            body,
        }
    }
}

/// Facts about the event that a valid signature vouches for.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The provider's event id, when the scheme carries one.
    pub event_id: Option<String>,
    /// The provider's event type, when a header carries it (such as `X-GitHub-Event`).
    pub event_type: Option<String>,
    /// The JSON document that the id and type pointers read, when the body wraps it in a
    /// form field (GitHub's and Slack's `payload=`); `None` means the body itself.
    pub document: Option<String>,
    /// A provider handshake rather than an event: the handler responds 200 with this JSON body
    /// at once, and stores and forwards nothing.
    pub reply: Option<serde_json::Value>,
}

/// Reason a request failed verification. The client only learns the status, and the reason is
/// logged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    #[error("no signature matches")]
    Mismatch,
    #[error("timestamp outside the tolerance")]
    Expired,
    /// A header or the body is present but unreadable. The response is 400, because a retry cannot
    /// succeed.
    #[error("malformed {header} header: {reason}")]
    Malformed {
        header: &'static str,
        reason: &'static str,
    },
}

impl VerifyError {
    /// Short label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MissingHeader(_) => "missing_signature",
            Self::Mismatch => "mismatch",
            Self::Expired => "timestamp_out_of_tolerance",
            Self::Malformed { .. } => "malformed",
        }
    }
}

/// A provider's signing scheme.
pub trait Scheme: Send + Sync + std::fmt::Debug {
    /// Checks the signature of `request` at local time `now`.
    fn verify(&self, request: &SignedRequest<'_>, now: SystemTime)
    -> Result<Verified, VerifyError>;

    /// JSON pointers tried for the event id when the headers carry none.
    fn default_id_pointers(&self) -> &'static [&'static str] {
        &[]
    }

    /// JSON pointer of the event type in the body.
    fn default_event_type_pointer(&self) -> Option<&'static str> {
        None
    }

    /// Media types the provider sends, accepted when the source lists none.
    fn default_content_types(&self) -> &'static [&'static str] {
        &["application/json"]
    }
}

/// Builds the scheme of `source`, resolving its secrets.
pub fn build(source: &SourceConfig) -> Result<Box<dyn Scheme>, ConfigError> {
    let secrets = resolve_secrets(source)?;
    let invalid =
        |reason: String| ConfigError::Invalid(format!("source {:?}: {reason}", source.name));
    let utf8_keys = || {
        secrets
            .iter()
            .map(|text| SecretBytes::new(text.as_bytes().to_vec()))
            .collect::<Vec<_>>()
    };

    let scheme: Box<dyn Scheme> = match source.scheme {
        SchemeKind::Makini => Box::new(Makini::new(utf8_keys())),
        SchemeKind::Standard => {
            let keys = secrets
                .iter()
                .map(|s| standard::decode_secret(s))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|reason| invalid(reason.to_owned()))?;
            Box::new(Standard::new(keys, source.tolerance))
        }
        SchemeKind::Github => Box::new(Github::new(utf8_keys())),
        SchemeKind::Stripe => Box::new(Stripe::new(utf8_keys(), source.tolerance)),
        SchemeKind::Shopify => Box::new(Shopify::new(utf8_keys())),
        SchemeKind::Slack => Box::new(Slack::new(utf8_keys(), source.tolerance)),
        SchemeKind::Twilio => {
            let url = source.public_url.as_deref().unwrap_or_default();
            Box::new(Twilio::new(utf8_keys(), url).map_err(invalid)?)
        }
        SchemeKind::Hmac => {
            let settings = source
                .hmac
                .as_ref()
                .ok_or_else(|| invalid("scheme \"hmac\" needs an [hmac] table".into()))?;
            Box::new(GenericHmac::new(utf8_keys(), settings, source.tolerance).map_err(invalid)?)
        }
        SchemeKind::None => {
            tracing::warn!(
                source = %source.name,
                "source accepts requests without any signature (scheme \"none\"); use it for local testing only"
            );
            Box::new(NoVerification)
        }
    };
    Ok(scheme)
}

fn resolve_secrets(source: &SourceConfig) -> Result<Vec<String>, ConfigError> {
    let mut secrets = Vec::with_capacity(source.secrets.len());
    for (index, reference) in source.secrets.iter().enumerate() {
        let text = secret::resolve(reference).map_err(|error| ConfigError::Secret {
            source_name: source.name.clone(),
            index,
            error,
        })?;
        secrets.push(text);
    }
    Ok(secrets)
}

/// Compares two MACs in constant time. The length is not secret, so a length mismatch
/// returns early.
pub(crate) fn macs_equal(expected: &[u8], given: &[u8]) -> bool {
    expected.len() == given.len() && bool::from(expected.ct_eq(given))
}

/// Returns whether any of `signatures` equals the MAC that `compute` returns for any of
/// `secrets`. Every pair is compared even after a match, so the time taken does not reveal
/// which secret matched.
pub(crate) fn any_secret_matches(
    secrets: &[SecretBytes],
    signatures: &[Vec<u8>],
    compute: impl Fn(&[u8]) -> Vec<u8>,
) -> bool {
    let mut matched = false;
    for secret in secrets {
        let expected = compute(secret.expose());
        for signature in signatures {
            matched |= macs_equal(&expected, signature);
        }
    }
    matched
}

/// Computes the HMAC of the concatenated `parts` with `key`.
pub(crate) fn hmac_of(algorithm: HmacAlgorithm, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    match algorithm {
        HmacAlgorithm::Sha1 => mac_with::<Hmac<sha1::Sha1>>(key, parts),
        HmacAlgorithm::Sha256 => mac_with::<Hmac<sha2::Sha256>>(key, parts),
        HmacAlgorithm::Sha512 => mac_with::<Hmac<sha2::Sha512>>(key, parts),
    }
}

fn mac_with<M: Mac + KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = <M as KeyInit>::new_from_slice(key).expect("HMAC takes a key of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

/// Returns every value of a header, in order. A header sent twice yields both values, so that either
/// may carry the valid signature.
pub(crate) fn header_values<'a>(
    headers: &'a HeaderMap,
    name: &str,
) -> impl Iterator<Item = &'a [u8]> {
    headers.get_all(name).iter().map(|value| value.as_bytes())
}

/// Header whose values carry signatures, and how the scheme reads one value.
pub(crate) struct SignatureHeader<'a> {
    /// Lowercase name looked up in the request.
    pub name: &'a str,
    /// Name as the provider documents it, for error messages.
    pub display: &'static str,
    /// Expected form, for the 400 when no value decodes.
    pub expected: &'static str,
}

/// Decodes every value of the signature header with `decode`. A missing header is
/// `MissingHeader` (401) and a header none of whose values decodes is `Malformed` (400).
pub(crate) fn decoded_signatures(
    headers: &HeaderMap,
    header: &SignatureHeader<'_>,
    decode: impl Fn(&[u8]) -> Option<Vec<u8>>,
) -> Result<Vec<Vec<u8>>, VerifyError> {
    if !headers.contains_key(header.name) {
        return Err(VerifyError::MissingHeader(header.display));
    }
    let decoded: Vec<Vec<u8>> = header_values(headers, header.name)
        .filter_map(decode)
        .collect();
    if decoded.is_empty() {
        return Err(VerifyError::Malformed {
            header: header.display,
            reason: header.expected,
        });
    }
    Ok(decoded)
}

/// Returns the first value of a header as text, when it is visible ASCII and not empty.
pub(crate) fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let text = headers.get(name)?.to_str().ok()?.trim();
    (!text.is_empty()).then_some(text)
}

/// Returns whether the request declares a form-encoded body.
pub(crate) fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse::<mime::Mime>().ok())
        .is_some_and(|media| media.essence_str() == "application/x-www-form-urlencoded")
}

/// Returns the decoded value of the first form field called `name`.
pub(crate) fn form_field(body: &[u8], name: &str) -> Option<String> {
    form_urlencoded::parse(body)
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

/// Parses a Unix timestamp in seconds and checks it lies within `tolerance` of `now` on
/// either side. Only ASCII digits are accepted, so the value signed is the value checked.
pub(crate) fn check_timestamp(
    header: &'static str,
    raw: &[u8],
    now: SystemTime,
    tolerance: Duration,
) -> Result<u64, VerifyError> {
    let malformed = |reason| VerifyError::Malformed { header, reason };
    if raw.is_empty() || !raw.iter().all(u8::is_ascii_digit) {
        return Err(malformed("not an integer number of seconds"));
    }
    // 10^11 s is the year 5138; anything at or above it is a timestamp in milliseconds.
    if raw.len() > 11 || (raw.len() == 11 && raw[0] != b'0') {
        return Err(malformed("timestamp is in milliseconds, expected seconds"));
    }
    let seconds: u64 = std::str::from_utf8(raw)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| malformed("not an integer number of seconds"))?;
    let now_secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if now_secs.abs_diff(seconds) > tolerance.as_secs() {
        return Err(VerifyError::Expired);
    }
    Ok(seconds)
}

/// Checks every value of the timestamp header `name` and returns those within tolerance, as
/// sent. With none, the error of the first malformed value wins over [`VerifyError::Expired`],
/// because the sender can fix it.
pub(crate) fn timestamps_in_tolerance<'a>(
    headers: &'a HeaderMap,
    name: &str,
    display: &'static str,
    now: SystemTime,
    tolerance: Duration,
) -> Result<Vec<&'a [u8]>, VerifyError> {
    let mut valid = Vec::new();
    let mut first_error = None;
    for raw in header_values(headers, name) {
        match check_timestamp(display, raw, now, tolerance) {
            Ok(_) => valid.push(raw),
            Err(error) => {
                let replace = matches!(
                    (&first_error, &error),
                    (None, _) | (Some(VerifyError::Expired), VerifyError::Malformed { .. })
                );
                if replace {
                    first_error = Some(error);
                }
            }
        }
    }
    match (valid.is_empty(), first_error) {
        (false, _) => Ok(valid),
        (true, Some(error)) => Err(error),
        (true, None) => Err(VerifyError::MissingHeader(display)),
    }
}

#[cfg(test)]
mod tamper_tests;
