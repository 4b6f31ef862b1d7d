//! Event id and event type, taken from a verified request.

use super::SourceRuntime;
use crate::verify::Verified;
use axum::http::HeaderMap;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::time::Duration;

/// Ids longer than this are hashed before they become part of a store key.
const MAX_KEY_ID_LEN: usize = 200;

/// Identity of an event, derived from the request before it is stored.
#[derive(Debug, PartialEq, Eq)]
pub struct Identity {
    /// The provider's id, or `sha256:<hex>` of the body.
    pub event_id: String,
    pub event_type: String,
    /// Idempotency key in the store, unique per source.
    pub dedupe_key: String,
    pub window: Duration,
}

/// Finds the event id (scheme, then configured headers, then JSON pointers, then a body hash)
/// and the event type (scheme, then JSON pointer). The pointers read the scheme's JSON
/// document when it found one inside the body, such as a form's `payload` field.
pub fn identify(
    source: &SourceRuntime,
    headers: &HeaderMap,
    body: &[u8],
    verified: Verified,
) -> Identity {
    let header_id = verified
        .event_id
        .or_else(|| id_from_headers(headers, &source.id_headers));
    let scheme_type = verified.event_type.filter(|t| !t.is_empty());

    // Parsed at most once, and only when a pointer needs it. serde_json stops at 128 levels
    // of nesting, so a nesting bomb fails to parse instead of exhausting the stack.
    let needs_json = (scheme_type.is_none() && source.event_type_pointer.is_some())
        || (header_id.is_none() && !source.id_pointers.is_empty());
    let document = verified
        .document
        .as_ref()
        .map_or(body, |text| text.as_bytes());
    let json = needs_json
        .then(|| serde_json::from_slice::<Value>(document).ok())
        .flatten();

    let provided = header_id
        .or_else(|| {
            let json = json.as_ref()?;
            source
                .id_pointers
                .iter()
                .find_map(|pointer| id_from_value(json.pointer(pointer)?))
        })
        .filter(|id| !id.is_empty());

    let event_type = scheme_type
        .or_else(|| {
            let pointer = source.event_type_pointer.as_deref()?;
            match json.as_ref()?.pointer(pointer)? {
                Value::String(text) => Some(text.clone()),
                _ => None,
            }
        })
        .unwrap_or_default();

    let (event_id, window) = match provided {
        Some(id) => (id, source.dedupe_window),
        None => (
            format!("sha256:{}", hex::encode(Sha256::digest(body))),
            source.body_hash_window,
        ),
    };
    let key_id = if event_id.len() > MAX_KEY_ID_LEN {
        format!("long:{}", hex::encode(Sha256::digest(event_id.as_bytes())))
    } else {
        event_id.clone()
    };

    Identity {
        dedupe_key: format!("{}:{key_id}", source.name),
        event_id,
        event_type,
        window,
    }
}

fn id_from_headers(headers: &HeaderMap, names: &[axum::http::HeaderName]) -> Option<String> {
    names.iter().find_map(|name| {
        let value = headers.get(name)?.to_str().ok()?.trim();
        (!value.is_empty()).then(|| value.to_owned())
    })
}

/// Accepts a string or an integer id; other JSON values are not ids.
fn id_from_value(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) if number.is_u64() || number.is_i64() => Some(number.to_string()),
        _ => None,
    }
}
