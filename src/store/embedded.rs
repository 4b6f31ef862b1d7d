//! The embedded backend: one database file in the data directory, for a single process that
//! needs nothing else installed.
//!
//! It is built on [redb](https://www.redb.org), a pure-Rust embedded key-value store with
//! ACID write transactions. redb fits this store because the accept must claim a key and
//! append an event atomically and durably: one redb write transaction does both, and a commit
//! with `Durability::Immediate` has reached the disk when it returns. Its B-tree also takes the
//! inbox's steady inserts and deletes without the tombstone build-up a log-structured engine
//! such as fjall has to compact away, and it locks its file, so a second process cannot open it.
//!
//! Tables (see `tables.rs`): `inbox` contains the events no round has settled yet, keyed by
//! sequence number, which is the [`Delivery::handle`]. A settlement with a retry moves the entry
//! to `retrying`, lists it in `retry_due` by due time and keeps its attempt and the sinks still
//! owed in `progress`. `seen` and `seen_expiry` contain the idempotency keys and their window
//! ends, and `dead_letters` the dead-letter records. A replay moves a dead letter to
//! `retrying`, due at once and owed to its sink alone.
//!
//! Writes (accept, settle, the purge of expired keys) go through one writer thread that
//! commits concurrent requests together (see `writer.rs`). Claims only read: a claimed entry
//! is leased in memory until it is settled or its visibility timeout passes, and then it is
//! handed out again. Leases are not stored because only this process can hold one: after a
//! crash or restart every unsettled entry is claimable at once.

mod tables;
mod writer;

use super::{
    AcceptOutcome, DeadLetterRecord, Delivery, ReplaySelection, Replayed, Settlement, Store,
    StoreError, StoreStats,
};
use crate::event::Event;
use async_trait::async_trait;
use redb::{Database, DatabaseError, ReadableDatabase};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};
use tokio::sync::{Notify, oneshot};
use writer::{Command, Writer, unavailable};

/// Name of the database file inside the data directory.
pub const DATA_FILE: &str = "hookrelay.redb";

/// Maximum time a waiting claim sleeps before it looks again for retries that became due and
/// leases that ran out; new events wake it at once.
const CLAIM_POLL: Duration = Duration::from_millis(200);

/// Memory redb may use to cache pages of the file. The inbox is small while the worker keeps
/// up, so 16 MiB kept the service under 50 MiB at its peak in the load test. A longer backlog
/// is read from the file, or from the operating system's page cache.
const CACHE_BYTES: usize = 16 * 1024 * 1024;

/// The source of the current time, so tests can move it instead of sleeping.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> SystemTime;
}

/// The system clock, used in production.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that moves only when [`ManualClock::advance`] is called.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<SystemTime>,
}

impl ManualClock {
    pub fn new(start: SystemTime) -> Self {
        Self {
            now: Mutex::new(start),
        }
    }

    /// Moves the clock forward by `step`.
    pub fn advance(&self, step: Duration) {
        let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
        *now += step;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.now.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Settings of [`EmbeddedStore::open`].
#[derive(Debug, Clone)]
pub struct EmbeddedStoreOptions {
    /// Directory of the database file; created when missing.
    pub data_dir: PathBuf,
    /// How long a claimed entry may stay unsettled before it is handed out again.
    pub visibility_timeout: Duration,
    /// Time between two purges of expired idempotency keys.
    pub purge_interval: Duration,
    pub clock: Arc<dyn Clock>,
}

impl EmbeddedStoreOptions {
    /// Options with the system clock and a purge every minute.
    pub fn new(data_dir: impl Into<PathBuf>, visibility_timeout: Duration) -> Self {
        Self {
            data_dir: data_dir.into(),
            visibility_timeout,
            purge_interval: Duration::from_secs(60),
            clock: Arc::new(SystemClock),
        }
    }
}

/// State shared by the store handle, the writer thread and the claims.
struct Shared {
    db: Database,
    clock: Arc<dyn Clock>,
    visibility_timeout: Duration,
    /// Entries handed out and not yet settled, with the time their lease ends.
    leases: Mutex<HashMap<u64, SystemTime>>,
    /// Wakes waiting claims when the writer has stored new events.
    new_entries: Notify,
    writer_running: AtomicBool,
}

impl Shared {
    fn lock_leases(&self) -> MutexGuard<'_, HashMap<u64, SystemTime>> {
        self.leases.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Clears [`Shared::writer_running`] when the writer thread ends, by return or by panic.
struct RunningFlag(Arc<Shared>);

impl Drop for RunningFlag {
    fn drop(&mut self) {
        self.0.writer_running.store(false, Ordering::Release);
    }
}

pub struct EmbeddedStore {
    shared: Arc<Shared>,
    path: PathBuf,
    /// `None` only while the store is dropped.
    commands: Option<Sender<Command>>,
    writer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Opens, or creates, the database in `options.data_dir` and starts the writer thread.
    ///
    /// Fails when another process, or another store in this process, has the file open: the
    /// embedded store serves one process only.
    pub async fn open(options: EmbeddedStoreOptions) -> Result<Self, StoreError> {
        tokio::task::spawn_blocking(move || Self::open_blocking(options))
            .await
            .map_err(|e| StoreError::Unavailable(format!("opening the embedded store: {e}")))?
    }

    fn open_blocking(options: EmbeddedStoreOptions) -> Result<Self, StoreError> {
        let dir = &options.data_dir;
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Unavailable(format!(
                "cannot create data directory {}: {e}",
                dir.display()
            ))
        })?;
        let path = dir.join(DATA_FILE);

        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|error| open_error(&path, error))?;
        let txn = db.begin_write().map_err(unavailable)?;
        let counters = tables::initialize(&txn).map_err(unavailable)?;
        txn.commit().map_err(unavailable)?;

        let shared = Arc::new(Shared {
            db,
            clock: options.clock,
            visibility_timeout: options.visibility_timeout,
            leases: Mutex::new(HashMap::new()),
            new_entries: Notify::new(),
            writer_running: AtomicBool::new(true),
        });
        let (commands, receiver) = std::sync::mpsc::channel();
        let writer = Writer {
            shared: shared.clone(),
            counters,
            purge_interval: options.purge_interval,
        };
        let writer = std::thread::Builder::new()
            .name("hookrelay-store-writer".into())
            .spawn(move || {
                let _running = RunningFlag(writer.shared.clone());
                writer.run(receiver);
            })
            .map_err(|e| StoreError::Unavailable(format!("cannot start the store writer: {e}")))?;

        Ok(Self {
            shared,
            path,
            commands: Some(commands),
            writer: Some(writer),
        })
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the idempotency keys whose window has ended and returns how many it removed.
    /// The writer also does this every purge interval.
    pub async fn purge_expired(&self) -> Result<usize, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Purge { reply })?;
        answer.await.map_err(|_| writer_stopped())?
    }

    fn send(&self, command: Command) -> Result<(), StoreError> {
        self.commands
            .as_ref()
            .ok_or_else(writer_stopped)?
            .send(command)
            .map_err(|_| writer_stopped())
    }

    /// Hands out up to `max` claimable entries and leases them, without waiting.
    async fn claim_now(&self, max: usize) -> Result<Vec<Delivery>, StoreError> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let now = shared.clock.now();
            // The lease lock is held from before the read transaction begins until the leases
            // are recorded. The writer ends a lease only after committing the settlement, so
            // an entry unleased here is seen in its settled state by this read.
            let mut leases = shared.lock_leases();
            leases.retain(|_, ends| *ends > now);
            let txn = shared.db.begin_read().map_err(unavailable)?;
            let deliveries = tables::claimable(&txn, now, max, &leases).map_err(unavailable)?;
            let ends = now + shared.visibility_timeout;
            for delivery in &deliveries {
                if let Ok(seq) = delivery.handle.parse() {
                    leases.insert(seq, ends);
                }
            }
            Ok(deliveries)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("claim task failed: {e}")))?
    }
}

impl Drop for EmbeddedStore {
    /// Stops the writer after the batch it is committing and waits for it, so that the file
    /// is closed, and its lock released, once the last handle is gone.
    fn drop(&mut self) {
        drop(self.commands.take());
        if let Some(writer) = self.writer.take() {
            // NOTE: this blocks the dropping thread for up to one commit.
            let _ = writer.join();
        }
    }
}

fn writer_stopped() -> StoreError {
    StoreError::Unavailable("the embedded store's writer thread has stopped".into())
}

fn open_error(path: &Path, error: DatabaseError) -> StoreError {
    match error {
        DatabaseError::DatabaseAlreadyOpen => StoreError::Unavailable(format!(
            "{} is locked by another process: the embedded store serves one process only; \
             stop the other hookrelay, set a different store.data_dir, or use Redis \
             (store.redis_url) to run several processes",
            path.display()
        )),
        other => StoreError::Unavailable(format!("cannot open {}: {other}", path.display())),
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn accept(
        &self,
        event: &Event,
        key: &str,
        window: Duration,
    ) -> Result<AcceptOutcome, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Accept {
            event: event.clone(),
            key: key.to_owned(),
            window,
            reply,
        })?;
        answer.await.map_err(|_| writer_stopped())?
    }

    async fn claim(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, StoreError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before the read, so an accept committed after the read wakes it.
            let notified = self.shared.new_entries.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            let deliveries = self.claim_now(max).await?;
            let now = tokio::time::Instant::now();
            if !deliveries.is_empty() || now >= deadline {
                return Ok(deliveries);
            }
            let pause = (deadline - now).min(CLAIM_POLL);
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    async fn settle(&self, delivery: &Delivery, settlement: Settlement) -> Result<(), StoreError> {
        let seq = delivery.handle.parse().map_err(|_| {
            StoreError::Corrupt(format!("invalid inbox handle {:?}", delivery.handle))
        })?;
        let (reply, answer) = oneshot::channel();
        self.send(Command::Settle {
            seq,
            delivery: delivery.clone(),
            settlement,
            reply,
        })?;
        answer.await.map_err(|_| writer_stopped())?
    }

    async fn dead_letters(&self, max: usize) -> Result<Vec<DeadLetterRecord>, StoreError> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let txn = shared.db.begin_read().map_err(unavailable)?;
            tables::dead_letters(&txn, max).map_err(unavailable)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("dead-letter read failed: {e}")))?
    }

    async fn dead_letter(&self, handle: &str) -> Result<Option<DeadLetterRecord>, StoreError> {
        let Ok(seq) = handle.parse::<u64>() else {
            return Ok(None);
        };
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let txn = shared.db.begin_read().map_err(unavailable)?;
            tables::dead_letter(&txn, seq).map_err(unavailable)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("dead-letter read failed: {e}")))?
    }

    async fn replay(&self, selection: &ReplaySelection) -> Result<Vec<Replayed>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Replay {
            selection: selection.clone(),
            reply,
        })?;
        answer.await.map_err(|_| writer_stopped())?
    }

    async fn bring_forward(
        &self,
        sink: &str,
        max: usize,
        due: SystemTime,
    ) -> Result<Vec<String>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::BringForward {
            sink: sink.to_owned(),
            max,
            due,
            reply,
        })?;
        answer.await.map_err(|_| writer_stopped())?
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let txn = shared.db.begin_read().map_err(unavailable)?;
            tables::stats(&txn).map_err(unavailable)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("statistics read failed: {e}")))?
    }

    async fn ping(&self) -> Result<(), StoreError> {
        if !self.shared.writer_running.load(Ordering::Acquire) {
            return Err(writer_stopped());
        }
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let txn = shared.db.begin_read().map_err(unavailable)?;
            txn.open_table(tables::META).map_err(unavailable)?;
            Ok(())
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("ping failed: {e}")))?
    }
}
