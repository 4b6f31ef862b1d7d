//! Signature verification, one file per scheme behind the [`Scheme`] trait.
//!
//! Every scheme works on the raw body bytes before anything parses them, compares MACs in
//! constant time, and accepts a signature made with any of the source's secrets (rotation).

mod makini;
mod standard;

pub use makini::Makini;
pub use standard::{Standard, decode_secret as standard_decode_secret};

use crate::config::{ConfigError, SchemeKind, SecretBytes, SourceConfig, secret};
use axum::http::HeaderMap;
use std::time::{Duration, SystemTime};
use subtle::ConstantTimeEq;

/// Facts about the event that a valid signature vouches for, from signed headers.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The provider's event id, when the scheme carries one.
    pub event_id: Option<String>,
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
    /// A header is present but unreadable. The response is 400, because a retry cannot succeed.
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
    /// Checks the signature of `body` as received with `headers`, at local time `now`.
    fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: SystemTime,
    ) -> Result<Verified, VerifyError>;

    /// JSON pointers tried for the event id when the headers carry none.
    fn default_id_pointers(&self) -> &'static [&'static str] {
        &[]
    }

    /// JSON pointer of the event type in the body.
    fn default_event_type_pointer(&self) -> Option<&'static str> {
        None
    }
}

/// Builds the scheme of `source`, resolving its secrets.
pub fn build(source: &SourceConfig) -> Result<Box<dyn Scheme>, ConfigError> {
    let mut secrets = Vec::with_capacity(source.secrets.len());
    for (index, reference) in source.secrets.iter().enumerate() {
        let text = secret::resolve(reference).map_err(|error| ConfigError::Secret {
            source_name: source.name.clone(),
            index,
            error,
        })?;
        secrets.push(text);
    }

    let scheme: Box<dyn Scheme> = match source.scheme {
        SchemeKind::Makini => Box::new(Makini::new(
            secrets
                .into_iter()
                .map(|s| SecretBytes::new(s.into_bytes()))
                .collect(),
        )),
        SchemeKind::Standard => {
            let keys = secrets
                .iter()
                .map(|s| standard::decode_secret(s))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|reason| {
                    ConfigError::Invalid(format!("source {:?}: {reason}", source.name))
                })?;
            Box::new(Standard::new(keys, source.tolerance))
        }
    };
    Ok(scheme)
}

/// Compares two MACs in constant time. The length is not secret, so a length mismatch
/// returns early.
pub(crate) fn macs_equal(expected: &[u8], given: &[u8]) -> bool {
    expected.len() == given.len() && bool::from(expected.ct_eq(given))
}

/// Returns every value of a header, in order. A header sent twice yields both values, so that
/// either may carry the valid signature.
pub(crate) fn header_values<'a>(
    headers: &'a HeaderMap,
    name: &'static str,
) -> impl Iterator<Item = &'a [u8]> {
    headers.get_all(name).iter().map(|value| value.as_bytes())
}

/// Parses a Unix timestamp in seconds and checks it lies within `tolerance` of `now` on
/// either side.
pub(crate) fn check_timestamp(
    header: &'static str,
    raw: &[u8],
    now: SystemTime,
    tolerance: Duration,
) -> Result<u64, VerifyError> {
    let text = std::str::from_utf8(raw).map_err(|_| VerifyError::Malformed {
        header,
        reason: "not ASCII digits",
    })?;
    let seconds: u64 = text.trim().parse().map_err(|_| VerifyError::Malformed {
        header,
        reason: "not an integer number of seconds",
    })?;
    // 10^11 s is the year 5138; anything above it is a timestamp in milliseconds.
    if seconds >= 100_000_000_000 {
        return Err(VerifyError::Malformed {
            header,
            reason: "timestamp is in milliseconds, expected seconds",
        });
    }
    let now_secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if now_secs.abs_diff(seconds) > tolerance.as_secs() {
        return Err(VerifyError::Expired);
    }
    Ok(seconds)
}
