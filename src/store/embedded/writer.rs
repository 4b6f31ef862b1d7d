//! The writer thread: the only place that writes the database.
//!
//! Commands arrive on a channel. The thread takes the first one, then every other command
//! already waiting (up to [`MAX_BATCH`]), applies them all in one write transaction and commits
//! it with one fsync before it replies to any of them. Under load, the requests that arrived during
//! one fsync share the next, which is where the embedded store's accept rate comes from (group
//! commit). The thread also purges expired idempotency keys every purge interval.

use super::Shared;
use super::tables::{self, Counters, WriteTables};
use crate::event::{Event, unix_millis};
use crate::store::{AcceptOutcome, Delivery, ReplaySelection, Replayed, Settlement, StoreError};
use redb::{Durability, WriteTransaction};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::oneshot;

/// Maximum commands applied in one transaction, so that one commit stays short.
const MAX_BATCH: usize = 1024;

/// Maximum dead letters moved back to the inbox in one transaction, so that a replay of a
/// long queue holds up accepts for one short commit at a time.
const REPLAY_CHUNK: usize = 1000;

/// Maximum idempotency keys removed in one purge transaction, so that an accept waits behind
/// one short purge commit at most.
const PURGE_CHUNK: usize = 10_000;

pub(super) enum Command {
    Accept {
        event: Event,
        key: String,
        window: Duration,
        reply: oneshot::Sender<Result<AcceptOutcome, StoreError>>,
    },
    Settle {
        seq: u64,
        delivery: Delivery,
        settlement: Settlement,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Purge {
        reply: oneshot::Sender<Result<usize, StoreError>>,
    },
    Replay {
        selection: ReplaySelection,
        reply: oneshot::Sender<Result<Vec<Replayed>, StoreError>>,
    },
    BringForward {
        sink: String,
        max: usize,
        due: SystemTime,
        reply: oneshot::Sender<Result<Vec<String>, StoreError>>,
    },
}

/// A write of a batch, split from the reply it owes.
enum Write {
    Accept {
        event: Event,
        key: String,
        window: Duration,
    },
    Settle {
        seq: u64,
        delivery: Delivery,
        settlement: Settlement,
    },
}

/// The reply one write owes, sent once its batch is committed or has failed.
enum Reply {
    Accept(oneshot::Sender<Result<AcceptOutcome, StoreError>>),
    Settle(oneshot::Sender<Result<(), StoreError>>),
}

pub(super) struct Writer {
    pub shared: Arc<Shared>,
    pub counters: Counters,
    pub purge_interval: Duration,
}

impl Writer {
    /// Serves commands until every sender is dropped.
    pub fn run(mut self, commands: Receiver<Command>) {
        let mut next_purge = Instant::now();
        loop {
            if Instant::now() >= next_purge {
                // One chunk at a time, with the commands that arrived meanwhile served in
                // between, so that a large backlog of expired keys does not hold up accepts.
                next_purge = match self.purge_chunk() {
                    Ok(removed) if removed == PURGE_CHUNK => Instant::now(),
                    Ok(_) => Instant::now() + self.purge_interval,
                    Err(error) => {
                        tracing::error!(%error, "cannot purge expired idempotency keys");
                        Instant::now() + self.purge_interval
                    }
                };
            }

            let timeout = next_purge.saturating_duration_since(Instant::now());
            let first = match commands.recv_timeout(timeout) {
                Ok(command) => command,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match commands.try_recv() {
                    Ok(command) => batch.push(command),
                    Err(_) => break,
                }
            }
            self.execute(batch);
        }
    }

    /// Applies a batch in one transaction, commits it, then replies to every command in it.
    fn execute(&mut self, batch: Vec<Command>) {
        let mut writes = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        let mut purges = Vec::new();
        let mut replays = Vec::new();
        let mut bring_forwards = Vec::new();
        for command in batch {
            match command {
                Command::Accept {
                    event,
                    key,
                    window,
                    reply,
                } => {
                    writes.push(Write::Accept { event, key, window });
                    replies.push(Reply::Accept(reply));
                }
                Command::Settle {
                    seq,
                    delivery,
                    settlement,
                    reply,
                } => {
                    writes.push(Write::Settle {
                        seq,
                        delivery,
                        settlement,
                    });
                    replies.push(Reply::Settle(reply));
                }
                Command::Purge { reply } => purges.push(reply),
                Command::Replay { selection, reply } => replays.push((selection, reply)),
                Command::BringForward {
                    sink,
                    max,
                    due,
                    reply,
                } => bring_forwards.push((sink, max, due, reply)),
            }
        }

        if !writes.is_empty() {
            let mut counters = self.counters;
            match self.commit(&writes, &mut counters) {
                Ok(stored) => {
                    self.counters = counters;
                    self.release_leases(&writes);
                    answer(replies, &stored);
                    if stored.iter().any(|&s| s) {
                        self.shared.new_entries.notify_waiters();
                    }
                }
                Err(error) => {
                    tracing::error!(%error, "cannot commit to the embedded store");
                    fail(replies, &error);
                }
            }
        }

        for reply in purges {
            let _ = reply.send(self.purge());
        }
        for (selection, reply) in replays {
            let result = self.replay(&selection);
            if matches!(&result, Ok(replayed) if !replayed.is_empty()) {
                self.shared.new_entries.notify_waiters();
            }
            let _ = reply.send(result);
        }
        for (sink, max, due, reply) in bring_forwards {
            let result = self.bring_forward(&sink, max, due);
            if matches!(&result, Ok(moved) if !moved.is_empty()) {
                self.shared.new_entries.notify_waiters();
            }
            let _ = reply.send(result);
        }
    }

    /// Makes retries owed to `sink` due at `due`, in one transaction.
    fn bring_forward(
        &self,
        sink: &str,
        max: usize,
        due: SystemTime,
    ) -> Result<Vec<String>, StoreError> {
        let now_ms = unix_millis(due);
        let txn = self.begin()?;
        let moved = {
            let mut tables = WriteTables::open(&txn).map_err(unavailable)?;
            tables
                .bring_forward(sink, max, now_ms)
                .map_err(unavailable)?
        };
        txn.commit().map_err(unavailable)?;
        Ok(moved.iter().map(u64::to_string).collect())
    }

    /// Moves the selected dead letters back to the inbox, a chunk per transaction. Only the
    /// records present when it starts are looked at.
    fn replay(&mut self, selection: &ReplaySelection) -> Result<Vec<Replayed>, StoreError> {
        let range = match &selection.handle {
            Some(handle) => match handle.parse::<u64>() {
                Ok(seq) => seq..seq.saturating_add(1),
                Err(_) => return Ok(Vec::new()),
            },
            None => 0..self.counters.dead,
        };
        let sink = selection.sink.as_deref();

        let mut replayed = Vec::new();
        let mut start = range.start;
        while start < range.end {
            let now_ms = unix_millis(self.shared.clock.now());
            let mut counters = self.counters;
            let txn = self.begin()?;
            let (moved, next) = {
                let mut tables = WriteTables::open(&txn).map_err(unavailable)?;
                tables
                    .replay(&mut counters, start..range.end, sink, REPLAY_CHUNK, now_ms)
                    .map_err(unavailable)?
            };
            tables::save_counters(&txn, counters).map_err(unavailable)?;
            txn.commit().map_err(unavailable)?;
            self.counters = counters;
            replayed.extend(moved);
            start = next;
        }
        Ok(replayed)
    }

    /// Applies `writes` in one transaction and commits it. Returns, per write, whether it
    /// stored a new event. On failure nothing of the batch is stored.
    fn commit(&self, writes: &[Write], counters: &mut Counters) -> Result<Vec<bool>, StoreError> {
        let now_ms = unix_millis(self.shared.clock.now());
        let txn = self.begin()?;
        let stored = apply(&txn, writes, counters, now_ms).map_err(unavailable)?;
        tables::save_counters(&txn, *counters).map_err(unavailable)?;
        txn.commit().map_err(unavailable)?;
        Ok(stored)
    }

    fn begin(&self) -> Result<WriteTransaction, StoreError> {
        let mut txn = self.shared.db.begin_write().map_err(unavailable)?;
        // A 200 follows a committed accept, so the commit must reach the disk first.
        txn.set_durability(Durability::Immediate)
            .map_err(unavailable)?;
        Ok(txn)
    }

    /// Ends the leases of the settled entries, once their new state is committed, so that a
    /// claim never hands out an entry whose settlement it cannot see yet.
    fn release_leases(&self, writes: &[Write]) {
        let mut leases = self.shared.lock_leases();
        for write in writes {
            if let Write::Settle { seq, .. } = write {
                leases.remove(seq);
            }
        }
    }

    /// Removes every expired idempotency key, a chunk per transaction, and returns the count.
    fn purge(&self) -> Result<usize, StoreError> {
        let mut total = 0;
        loop {
            let removed = self.purge_chunk()?;
            total += removed;
            if removed < PURGE_CHUNK {
                return Ok(total);
            }
        }
    }

    /// Removes up to [`PURGE_CHUNK`] expired idempotency keys in one transaction.
    fn purge_chunk(&self) -> Result<usize, StoreError> {
        let now_ms = unix_millis(self.shared.clock.now());
        let txn = self.begin()?;
        let removed = tables::purge_expired(&txn, now_ms, PURGE_CHUNK).map_err(unavailable)?;
        txn.commit().map_err(unavailable)?;
        if removed > 0 {
            tracing::debug!(removed, "purged expired idempotency keys");
        }
        Ok(removed)
    }
}

fn apply(
    txn: &WriteTransaction,
    writes: &[Write],
    counters: &mut Counters,
    now_ms: u64,
) -> Result<Vec<bool>, redb::Error> {
    let mut tables = WriteTables::open(txn)?;
    let mut stored = Vec::with_capacity(writes.len());
    for write in writes {
        match write {
            Write::Accept { event, key, window } => {
                stored.push(tables.accept(counters, event, key, *window, now_ms)?);
            }
            Write::Settle {
                seq,
                delivery,
                settlement,
            } => {
                tables.settle(counters, *seq, delivery, settlement)?;
                stored.push(false);
            }
        }
    }
    Ok(stored)
}

/// Replies to the commands of a committed batch. `stored` marks which accepts stored an
/// event.
fn answer(replies: Vec<Reply>, stored: &[bool]) {
    for (reply, &stored) in replies.into_iter().zip(stored) {
        match reply {
            Reply::Accept(reply) => {
                let outcome = match stored {
                    true => AcceptOutcome::Accepted,
                    false => AcceptOutcome::Duplicate,
                };
                let _ = reply.send(Ok(outcome));
            }
            Reply::Settle(reply) => {
                let _ = reply.send(Ok(()));
            }
        }
    }
}

/// Replies with `error` to every command of a batch that was not committed.
fn fail(replies: Vec<Reply>, error: &StoreError) {
    let detail = match error {
        StoreError::Unavailable(detail) | StoreError::Corrupt(detail) => detail,
    };
    let copy = || StoreError::Unavailable(detail.clone());
    for reply in replies {
        match reply {
            Reply::Accept(reply) => {
                let _ = reply.send(Err(copy()));
            }
            Reply::Settle(reply) => {
                let _ = reply.send(Err(copy()));
            }
        }
    }
}

pub(super) fn unavailable(error: impl Into<redb::Error>) -> StoreError {
    StoreError::Unavailable(format!("embedded store: {}", error.into()))
}
