//! Durable storage of accepted events: the idempotency keys, the inbox the worker reads, the
//! retry schedule and the dead-letter queue, behind the [`Store`] trait. Two backends keep it:
//! [`redis`] for production and several replicas, [`embedded`] for one process on its own.
//!
//! The contract every backend keeps:
//! - [`Store::accept`] claims the idempotency key and appends the event in one atomic step, so
//!   a claimed key always has its event stored. It reports a duplicate without storing twice.
//! - [`Store::claim`] hands out inbox entries to this process: new ones, retries whose time has
//!   come, and entries another process claimed but did not settle within the visibility
//!   timeout (it is presumed dead). An entry therefore reaches a worker at least once.
//! - [`Store::settle`] records the outcome of one delivery round atomically: dead-letter the
//!   sinks that gave up, schedule a retry for the rest, or remove the entry when nothing is left.
//! - [`Store::replay`] moves dead letters back to the inbox, each in one atomic step, as an
//!   entry owed to the sink that gave up only.

pub mod embedded;
pub mod redis;

use crate::event::Event;
use async_trait::async_trait;
use std::time::{Duration, SystemTime};

/// Result of [`Store::accept`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptOutcome {
    /// The key was new; the event is in the inbox.
    Accepted,
    /// The key was already claimed within its window; nothing was stored.
    Duplicate,
}

/// An inbox entry handed to this process by [`Store::claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The backend's handle of the entry (a stream entry id on Redis).
    pub handle: String,
    pub event: Event,
    /// Delivery rounds already made.
    pub attempt: u32,
    /// Sinks still owed the event; `None` until the first round routes it.
    pub pending_sinks: Option<Vec<String>>,
}

/// A sink that gave up on an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub sink: String,
    pub error: String,
}

/// Another round for the sinks that failed but may still succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    pub sinks: Vec<String>,
    /// Rounds made so far, this one included.
    pub attempt: u32,
    pub due: SystemTime,
}

/// Outcome of one delivery round of one entry. With no retry the entry leaves the inbox.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settlement {
    pub dead: Vec<DeadLetter>,
    pub retry: Option<Retry>,
}

/// A dead-letter record as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterRecord {
    pub handle: String,
    pub event: Event,
    pub sink: String,
    pub error: String,
    pub attempt: u32,
}

/// The dead letters [`Store::replay`] returns to the inbox.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplaySelection {
    /// Only the record with this handle; every record when `None`.
    pub handle: Option<String>,
    /// Only records of this sink; records of every sink when `None`.
    pub sink: Option<String>,
}

/// A dead letter that [`Store::replay`] moved back to the inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// Handle the record had in the dead-letter queue.
    pub dead_letter: String,
    /// Handle of the new inbox entry.
    pub inbox: String,
    pub event_id: String,
    /// The only sink the new entry is delivered to.
    pub sink: String,
}

/// Inbox and dead-letter figures, for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Inbox entries not yet settled, retries included.
    pub inbox_depth: u64,
    /// When the oldest unsettled entry was stored.
    pub oldest_received_at: Option<SystemTime>,
    pub dead_letters: u64,
}

/// A store operation that failed. The request gets a 503 response and the provider retries.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store returned unexpected data: {0}")]
    Corrupt(String),
}

#[async_trait]
pub trait Store: Send + Sync {
    /// Claims `key` for `window` and appends `event` to the inbox, atomically.
    async fn accept(
        &self,
        event: &Event,
        key: &str,
        window: Duration,
    ) -> Result<AcceptOutcome, StoreError>;

    /// Hands out up to `max` entries, waiting up to `wait` when none is ready.
    async fn claim(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, StoreError>;

    /// Records the outcome of a delivery round of `delivery`.
    async fn settle(&self, delivery: &Delivery, settlement: Settlement) -> Result<(), StoreError>;

    /// Records several outcomes, each atomically, and returns one result per item, in order.
    /// Backends override it to write them together.
    async fn settle_many(&self, items: Vec<(Delivery, Settlement)>) -> Vec<Result<(), StoreError>> {
        let settles = items
            .iter()
            .map(|(delivery, settlement)| self.settle(delivery, settlement.clone()));
        futures::future::join_all(settles).await
    }

    /// Makes up to `max` retries that still owe `sink` due at `due`, whether they were due
    /// before or after it, taking the earliest due first, and returns their handles. They all
    /// get the same due time, so claims hand them out in the order they arrived. The worker calls it when a
    /// paused sink is back, and with `max` 1 to get an event to probe a paused sink with.
    async fn bring_forward(
        &self,
        sink: &str,
        max: usize,
        due: SystemTime,
    ) -> Result<Vec<String>, StoreError>;

    /// Lists up to `max` dead-letter records, oldest first.
    async fn dead_letters(&self, max: usize) -> Result<Vec<DeadLetterRecord>, StoreError>;

    /// Returns the dead-letter record with `handle`, or `None` when there is none.
    async fn dead_letter(&self, handle: &str) -> Result<Option<DeadLetterRecord>, StoreError>;

    /// Moves the selected dead letters back to the inbox for another round, owed to the sink
    /// that gave up only and with their attempts counted from zero. Each record leaves the
    /// dead-letter queue in the same atomic step as its entry enters the inbox. Records
    /// dead-lettered while the replay runs are left for the next one.
    async fn replay(&self, selection: &ReplaySelection) -> Result<Vec<Replayed>, StoreError>;

    /// Checks that the store responds.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Counts the inbox and the dead-letter queue.
    async fn stats(&self) -> Result<StoreStats, StoreError>;
}
