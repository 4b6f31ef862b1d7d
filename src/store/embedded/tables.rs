//! The tables of the embedded store and the reads and writes over them. Every function here
//! runs inside a transaction its caller opened, on a thread that may block.

use crate::event::Event;
use crate::store::{DeadLetterRecord, Delivery, Replayed, Settlement, StoreStats};
use bytes::Bytes;
use redb::{
    ReadTransaction, ReadableTable, ReadableTableMetadata, Table, TableDefinition, WriteTransaction,
};
use std::collections::HashMap;
use std::time::{Duration, SystemTime};

/// An event as stored: id, source, type, receipt time (ms since the epoch), payload.
type EventRow<'a> = (&'a str, &'a str, &'a str, u64, &'a [u8]);

/// Entries not yet settled by any delivery round, by sequence number (the handle the worker
/// gets), so in arrival order. An entry is here or in [`RETRYING`], never in both.
pub(super) const INBOX: TableDefinition<u64, EventRow> = TableDefinition::new("inbox");
/// Entries settled with a retry: moved out of the inbox, so that a claim scanning the inbox
/// for new work never walks past a backlog of retries.
pub(super) const RETRYING: TableDefinition<u64, EventRow> = TableDefinition::new("retrying");
/// The retry schedule: (due time in ms, sequence number) of every entry in [`RETRYING`].
pub(super) const RETRY_DUE: TableDefinition<(u64, u64), ()> = TableDefinition::new("retry_due");
/// Progress of the entries in [`RETRYING`]: rounds made, due time of the next (ms), sinks
/// still owed.
pub(super) const PROGRESS: TableDefinition<u64, (u32, u64, Vec<&str>)> =
    TableDefinition::new("progress");
/// Idempotency keys and the time (ms) their window ends.
pub(super) const SEEN: TableDefinition<&str, u64> = TableDefinition::new("seen");
/// The same keys ordered by window end, so that the purge finds expired ones without a scan.
pub(super) const SEEN_EXPIRY: TableDefinition<(u64, &str), ()> =
    TableDefinition::new("seen_expiry");
/// Dead-letter records: the event, then sink, error and attempt.
pub(super) const DEAD: TableDefinition<u64, (EventRow, &str, &str, u32)> =
    TableDefinition::new("dead_letters");
/// Counters that must survive a restart: the next inbox and dead-letter sequence numbers.
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

const NEXT_INBOX_SEQ: &str = "next_inbox_seq";
const NEXT_DEAD_SEQ: &str = "next_dead_seq";

/// The next free sequence numbers, kept by the writer and saved with each commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Counters {
    pub inbox: u64,
    pub dead: u64,
}

/// Creates every table, so that read transactions never meet a missing one, and loads the
/// counters.
pub(super) fn initialize(txn: &WriteTransaction) -> Result<Counters, redb::Error> {
    txn.open_table(INBOX)?;
    txn.open_table(RETRYING)?;
    txn.open_table(RETRY_DUE)?;
    txn.open_table(PROGRESS)?;
    txn.open_table(SEEN)?;
    txn.open_table(SEEN_EXPIRY)?;
    txn.open_table(DEAD)?;
    let meta = txn.open_table(META)?;
    let read = |name: &str| -> Result<u64, redb::Error> {
        Ok(meta.get(name)?.map_or(1, |value| value.value()))
    };
    Ok(Counters {
        inbox: read(NEXT_INBOX_SEQ)?,
        dead: read(NEXT_DEAD_SEQ)?,
    })
}

pub(super) fn save_counters(txn: &WriteTransaction, counters: Counters) -> Result<(), redb::Error> {
    let mut meta = txn.open_table(META)?;
    meta.insert(NEXT_INBOX_SEQ, counters.inbox)?;
    meta.insert(NEXT_DEAD_SEQ, counters.dead)?;
    Ok(())
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The tables a batch of accepts and settlements writes, opened once per transaction
/// (redb lets a transaction open each table once at a time).
pub(super) struct WriteTables<'txn> {
    inbox: Table<'txn, u64, EventRow<'static>>,
    retrying: Table<'txn, u64, EventRow<'static>>,
    retry_due: Table<'txn, (u64, u64), ()>,
    progress: Table<'txn, u64, (u32, u64, Vec<&'static str>)>,
    seen: Table<'txn, &'static str, u64>,
    seen_expiry: Table<'txn, (u64, &'static str), ()>,
    dead: Table<'txn, u64, (EventRow<'static>, &'static str, &'static str, u32)>,
}

impl<'txn> WriteTables<'txn> {
    pub(super) fn open(txn: &'txn WriteTransaction) -> Result<Self, redb::Error> {
        Ok(Self {
            inbox: txn.open_table(INBOX)?,
            retrying: txn.open_table(RETRYING)?,
            retry_due: txn.open_table(RETRY_DUE)?,
            progress: txn.open_table(PROGRESS)?,
            seen: txn.open_table(SEEN)?,
            seen_expiry: txn.open_table(SEEN_EXPIRY)?,
            dead: txn.open_table(DEAD)?,
        })
    }

    /// Claims `key` until `now + window` and appends `event`, unless the key is still within
    /// an earlier window. Returns whether the event was stored.
    ///
    /// Several accepts of one batch run in one transaction, one after the other, and each reads
    /// the keys the earlier ones wrote, so two copies of a key in one batch store one event.
    pub(super) fn accept(
        &mut self,
        counters: &mut Counters,
        event: &Event,
        key: &str,
        window: Duration,
        now_ms: u64,
    ) -> Result<bool, redb::Error> {
        let prior_end = self.seen.get(key)?.map(|end| end.value());
        if let Some(end) = prior_end {
            if end > now_ms {
                return Ok(false);
            }
            // The old window has ended but the purge has not removed it yet.
            self.seen_expiry.remove((end, key))?;
        }

        let seq = counters.inbox;
        counters.inbox += 1;
        self.inbox.insert(seq, row_of(event))?;

        let end = now_ms.saturating_add(millis(window).max(1));
        self.seen.insert(key, end)?;
        self.seen_expiry.insert((end, key), ())?;
        Ok(true)
    }

    /// Records the outcome of a delivery round of entry `seq`: appends the dead letters, then
    /// either schedules the retry or removes the entry. Settling an entry that is gone (settled
    /// twice) only appends the dead letters.
    pub(super) fn settle(
        &mut self,
        counters: &mut Counters,
        seq: u64,
        delivery: &Delivery,
        settlement: &Settlement,
    ) -> Result<(), redb::Error> {
        let row = row_of(&delivery.event);
        for dead in &settlement.dead {
            let record = (
                row,
                dead.sink.as_str(),
                dead.error.as_str(),
                delivery.attempt + 1,
            );
            self.dead.insert(counters.dead, record)?;
            counters.dead += 1;
        }

        // The first retry moves the entry out of the inbox; later ones find it in `retrying`.
        let moved = self.inbox.remove(seq)?.map(|row| event_of(row.value()));
        if moved.is_none() && self.retrying.get(seq)?.is_none() {
            return Ok(());
        }
        let prior_due = self.progress.get(seq)?.map(|progress| progress.value().1);
        if let Some(due) = prior_due {
            self.retry_due.remove((due, seq))?;
        }

        match &settlement.retry {
            Some(retry) => {
                if let Some(event) = &moved {
                    self.retrying.insert(seq, row_of(event))?;
                }
                let due = crate::event::unix_millis(retry.due);
                let sinks: Vec<&str> = retry.sinks.iter().map(String::as_str).collect();
                self.progress.insert(seq, (retry.attempt, due, sinks))?;
                self.retry_due.insert((due, seq), ())?;
            }
            None => {
                self.progress.remove(seq)?;
                self.retrying.remove(seq)?;
            }
        }
        Ok(())
    }
}

impl WriteTables<'_> {
    /// Makes up to `max` retries that owe `sink` due at `now_ms`, earliest due first. Returns
    /// their sequence numbers.
    pub(super) fn bring_forward(
        &mut self,
        sink: &str,
        max: usize,
        now_ms: u64,
    ) -> Result<Vec<u64>, redb::Error> {
        let mut chosen = Vec::new();
        for item in self.retry_due.iter()? {
            if chosen.len() >= max {
                break;
            }
            let (key, _) = item?;
            let (due, seq) = key.value();
            if due == now_ms {
                continue;
            }
            let owed = self
                .progress
                .get(seq)?
                .is_some_and(|progress| progress.value().2.contains(&sink));
            if owed {
                chosen.push((due, seq));
            }
        }

        for &(due, seq) in &chosen {
            self.retry_due.remove((due, seq))?;
            self.retry_due.insert((now_ms, seq), ())?;
            let (attempt, sinks) = match self.progress.get(seq)? {
                Some(progress) => {
                    let (attempt, _, sinks) = progress.value();
                    (
                        attempt,
                        sinks.into_iter().map(str::to_owned).collect::<Vec<_>>(),
                    )
                }
                None => continue,
            };
            let sinks: Vec<&str> = sinks.iter().map(String::as_str).collect();
            self.progress.insert(seq, (attempt, now_ms, sinks))?;
        }
        Ok(chosen.into_iter().map(|(_, seq)| seq).collect())
    }

    /// Moves dead letters with sequence numbers in `range`, and of `sink` unless it is `None`,
    /// back to the inbox, up to `max` of them. Each becomes a retry due at `now_ms` with no
    /// round made, owed to its sink alone. Returns the records moved and the sequence number
    /// after the last record looked at.
    pub(super) fn replay(
        &mut self,
        counters: &mut Counters,
        range: std::ops::Range<u64>,
        sink: Option<&str>,
        max: usize,
        now_ms: u64,
    ) -> Result<(Vec<Replayed>, u64), redb::Error> {
        let mut selected = Vec::new();
        let mut next = range.end;
        for item in self.dead.range(range)? {
            let (key, value) = item?;
            let seq = key.value();
            if selected.len() >= max {
                next = seq;
                break;
            }
            let (row, record_sink, _, _) = value.value();
            if sink.is_none_or(|sink| sink == record_sink) {
                selected.push((seq, event_of(row), record_sink.to_owned()));
            }
        }

        let mut replayed = Vec::with_capacity(selected.len());
        for (dead_seq, event, sink) in selected {
            let seq = counters.inbox;
            counters.inbox += 1;
            self.dead.remove(dead_seq)?;
            self.retrying.insert(seq, row_of(&event))?;
            self.progress
                .insert(seq, (0, now_ms, vec![sink.as_str()]))?;
            self.retry_due.insert((now_ms, seq), ())?;
            replayed.push(Replayed {
                dead_letter: dead_seq.to_string(),
                inbox: seq.to_string(),
                event_id: event.id,
                sink,
            });
        }
        Ok((replayed, next))
    }
}

/// Removes up to `limit` idempotency keys whose window ended at or before `now_ms`, and
/// returns how many it removed.
pub(super) fn purge_expired(
    txn: &WriteTransaction,
    now_ms: u64,
    limit: usize,
) -> Result<usize, redb::Error> {
    let mut seen = txn.open_table(SEEN)?;
    let mut seen_expiry = txn.open_table(SEEN_EXPIRY)?;

    let mut expired = Vec::new();
    for item in seen_expiry
        .range(..(now_ms.saturating_add(1), ""))?
        .take(limit)
    {
        let (key, _) = item?;
        let (end, name) = key.value();
        expired.push((end, name.to_owned()));
    }

    for (end, name) in &expired {
        seen_expiry.remove((*end, name.as_str()))?;
        // A key accepted again after its window ended has a later end; that one stays.
        let current = seen.get(name.as_str())?.map(|value| value.value());
        if current == Some(*end) {
            seen.remove(name.as_str())?;
        }
    }
    Ok(expired.len())
}

/// Picks up to `max` entries claimable at `now`: retries that are due first, then inbox
/// entries in arrival order, skipping those in `leased`.
pub(super) fn claimable(
    txn: &ReadTransaction,
    now: SystemTime,
    max: usize,
    leased: &HashMap<u64, SystemTime>,
) -> Result<Vec<Delivery>, redb::Error> {
    let now_ms = crate::event::unix_millis(now);
    let mut deliveries = Vec::new();

    let retry_due = txn.open_table(RETRY_DUE)?;
    let retrying = txn.open_table(RETRYING)?;
    let progress = txn.open_table(PROGRESS)?;
    for item in retry_due.range(..=(now_ms, u64::MAX))? {
        if deliveries.len() >= max {
            break;
        }
        let (key, _) = item?;
        let (_, seq) = key.value();
        if leased.contains_key(&seq) {
            continue;
        }
        let (Some(row), Some(state)) = (retrying.get(seq)?, progress.get(seq)?) else {
            continue;
        };
        let (attempt, _, sinks) = state.value();
        deliveries.push(Delivery {
            handle: seq.to_string(),
            event: event_of(row.value()),
            attempt,
            pending_sinks: Some(sinks.into_iter().map(str::to_owned).collect()),
        });
    }

    let inbox = txn.open_table(INBOX)?;
    for item in inbox.iter()? {
        if deliveries.len() >= max {
            break;
        }
        let (key, row) = item?;
        let seq = key.value();
        if leased.contains_key(&seq) {
            continue;
        }
        deliveries.push(Delivery {
            handle: seq.to_string(),
            event: event_of(row.value()),
            attempt: 0,
            pending_sinks: None,
        });
    }
    Ok(deliveries)
}

/// Lists up to `max` dead-letter records, oldest first.
pub(super) fn dead_letters(
    txn: &ReadTransaction,
    max: usize,
) -> Result<Vec<DeadLetterRecord>, redb::Error> {
    let dead = txn.open_table(DEAD)?;
    let mut records = Vec::new();
    for item in dead.iter()?.take(max) {
        let (key, value) = item?;
        let (row, sink, error, attempt) = value.value();
        records.push(DeadLetterRecord {
            handle: key.value().to_string(),
            event: event_of(row),
            sink: sink.to_owned(),
            error: error.to_owned(),
            attempt,
        });
    }
    Ok(records)
}

/// Returns the dead-letter record `seq`, if there is one.
pub(super) fn dead_letter(
    txn: &ReadTransaction,
    seq: u64,
) -> Result<Option<DeadLetterRecord>, redb::Error> {
    let dead = txn.open_table(DEAD)?;
    let Some(value) = dead.get(seq)? else {
        return Ok(None);
    };
    let (row, sink, error, attempt) = value.value();
    Ok(Some(DeadLetterRecord {
        handle: seq.to_string(),
        event: event_of(row),
        sink: sink.to_owned(),
        error: error.to_owned(),
        attempt,
    }))
}

fn row_of(event: &Event) -> EventRow<'_> {
    (
        &event.id,
        &event.source,
        &event.event_type,
        event.received_at_ms,
        &event.payload,
    )
}

fn event_of((id, source, event_type, received_at_ms, payload): EventRow) -> Event {
    Event {
        id: id.to_owned(),
        source: source.to_owned(),
        event_type: event_type.to_owned(),
        received_at_ms,
        payload: Bytes::copy_from_slice(payload),
    }
}

/// Counts unsettled entries (new and retrying) and dead letters, and finds the receipt time of
/// the oldest unsettled entry. Each count reads the table's length, not its rows.
pub(super) fn stats(txn: &ReadTransaction) -> Result<StoreStats, redb::Error> {
    let inbox = txn.open_table(INBOX)?;
    let retrying = txn.open_table(RETRYING)?;
    let dead = txn.open_table(DEAD)?;

    // Sequence numbers grow with arrival, so each table's first row is its oldest.
    let mut oldest_ms: Option<u64> = None;
    for table in [&inbox, &retrying] {
        if let Some((_, row)) = table.first()? {
            let received_at_ms = row.value().3;
            oldest_ms = Some(oldest_ms.map_or(received_at_ms, |ms| ms.min(received_at_ms)));
        }
    }
    Ok(StoreStats {
        inbox_depth: inbox.len()? + retrying.len()?,
        oldest_received_at: oldest_ms.map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms)),
        dead_letters: dead.len()?,
    })
}
