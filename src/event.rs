//! The unit that moves through hookrelay: one verified provider event.

use bytes::Bytes;
use sha2::{Digest, Sha256};

/// A verified event, as stored in the inbox and handed to sinks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The provider's event id, or `sha256:<hex>` of the body when the event carries none.
    pub id: String,
    /// Name of the source that received it.
    pub source: String,
    /// Event type such as `work_orders.inserted`; empty when the payload names none.
    pub event_type: String,
    /// Receipt time in milliseconds since the Unix epoch.
    pub received_at_ms: u64,
    /// The body exactly as the provider sent and signed it.
    pub payload: Bytes,
}

impl Event {
    /// Returns the id of this accepted event for downstream deduplication: the same on every
    /// re-delivery, and different for a later event with the same provider id or body that was
    /// accepted again once its dedupe window had passed.
    pub fn delivery_id(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(self.source.as_bytes());
        hasher.update([0]);
        hasher.update(self.id.as_bytes());
        hasher.update([0]);
        hasher.update(self.received_at_ms.to_be_bytes());
        let digest = hasher.finalize();
        format!("dlv_{}", hex::encode(&digest[..16]))
    }
}

/// Returns `text` fit for a log field: at most 128 characters, with control characters escaped,
/// because event ids and types come from the provider and could otherwise forge log lines.
pub fn loggable(text: &str) -> String {
    const MAX_CHARS: usize = 128;
    let mut shown: String = text
        .chars()
        .take(MAX_CHARS)
        .flat_map(char::escape_debug)
        .collect();
    if text.chars().nth(MAX_CHARS).is_some() {
        shown.push('…');
    }
    shown
}

/// Milliseconds since the Unix epoch of `time`, or 0 for a time before it.
pub fn unix_millis(time: std::time::SystemTime) -> u64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, received_at_ms: u64) -> Event {
        Event {
            id: id.into(),
            source: "makini".into(),
            event_type: String::new(),
            received_at_ms,
            payload: Bytes::new(),
        }
    }

    #[test]
    fn loggable_escapes_and_truncates() {
        assert_eq!(loggable("a\nb\u{1b}[31m"), "a\\nb\\u{1b}[31m");
        let long = "x".repeat(500);
        assert_eq!(loggable(&long).chars().count(), 129);
    }

    #[test]
    fn delivery_id_is_stable_per_acceptance() {
        assert_eq!(event("a", 1).delivery_id(), event("a", 1).delivery_id());
        assert_eq!(event("a", 1).delivery_id().len(), 36);
    }

    #[test]
    fn delivery_id_differs_for_later_acceptance() {
        assert_ne!(event("a", 1).delivery_id(), event("a", 2).delivery_id());
        assert_ne!(event("a", 1).delivery_id(), event("b", 1).delivery_id());
    }
}
