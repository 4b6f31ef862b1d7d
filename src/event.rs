//! The unit that moves through hookrelay: one verified provider event.

use bytes::Bytes;

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

/// Milliseconds since the Unix epoch of `time`, or 0 for a time before it.
pub fn unix_millis(time: std::time::SystemTime) -> u64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
