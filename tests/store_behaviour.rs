//! The store contract, checked the same way against every backend. The embedded store runs in a
//! temporary directory with a manual clock. The Redis store runs on 127.0.0.1:6379 under a key
//! prefix of its own per test, where time passes for real.

use async_trait::async_trait;
use bytes::Bytes;
use hookrelay::event::Event;
use hookrelay::store::embedded::{EmbeddedStore, EmbeddedStoreOptions, ManualClock};
use hookrelay::store::redis::{RedisStore, RedisStoreOptions};
use hookrelay::store::{
    AcceptOutcome, DeadLetter, Delivery, ReplaySelection, Retry, Settlement, Store,
};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

const REDIS_URL: &str = "redis://127.0.0.1:6379";
const WINDOW: Duration = Duration::from_secs(3600);
/// Dedupe window and retry delay of the tests that let time pass. On Redis this is real time,
/// so it is long enough that a pause of the test machine does not end it early.
const DELAY: Duration = Duration::from_secs(2);

/// One backend under test, with the control over time and restarts the tests need.
#[async_trait]
trait Backend: Send {
    /// Opens the store; after the previous handle was dropped, opens it again, as a restarted
    /// process would.
    async fn open(&mut self) -> Arc<dyn Store>;
    /// Lets `step` pass for the store.
    async fn advance(&self, step: Duration);
    /// Returns the store's current time.
    fn now(&self) -> SystemTime;
    /// Returns how long an entry may stay claimed and unsettled before it is handed out again.
    fn visibility_timeout(&self) -> Duration;
    /// Returns the time after a crash before the entries the dead process claimed are
    /// claimable.
    fn reclaim_after_crash(&self) -> Duration;
}

struct EmbeddedBackend {
    dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
}

impl EmbeddedBackend {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temporary directory"),
            clock: Arc::new(ManualClock::new(SystemTime::now())),
        }
    }
}

#[async_trait]
impl Backend for EmbeddedBackend {
    async fn open(&mut self) -> Arc<dyn Store> {
        let mut options = EmbeddedStoreOptions::new(self.dir.path(), self.visibility_timeout());
        options.clock = self.clock.clone();
        Arc::new(
            EmbeddedStore::open(options)
                .await
                .expect("open embedded store"),
        )
    }

    async fn advance(&self, step: Duration) {
        self.clock.advance(step);
    }

    fn now(&self) -> SystemTime {
        use hookrelay::store::embedded::Clock;
        self.clock.now()
    }

    fn visibility_timeout(&self) -> Duration {
        Duration::from_secs(30)
    }

    /// Leases live in memory only, so a reopened store hands everything out at once.
    fn reclaim_after_crash(&self) -> Duration {
        Duration::ZERO
    }
}

struct RedisBackend {
    prefix: String,
}

impl RedisBackend {
    fn new() -> Self {
        Self {
            prefix: format!("test-store-{}", uuid::Uuid::new_v4().simple()),
        }
    }
}

#[async_trait]
impl Backend for RedisBackend {
    /// Opens a store with a new consumer name, as a restarted process does.
    async fn open(&mut self) -> Arc<dyn Store> {
        Arc::new(
            RedisStore::open(&RedisStoreOptions {
                url: REDIS_URL.into(),
                key_prefix: self.prefix.clone(),
                request_timeout: Duration::from_secs(2),
                visibility_timeout: self.visibility_timeout(),
            })
            .expect("open Redis store"),
        )
    }

    async fn advance(&self, step: Duration) {
        tokio::time::sleep(step).await;
    }

    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn visibility_timeout(&self) -> Duration {
        Duration::from_millis(500)
    }

    fn reclaim_after_crash(&self) -> Duration {
        self.visibility_timeout() + Duration::from_millis(200)
    }
}

impl Drop for RedisBackend {
    /// Deletes the test's stream, schedule and state keys.
    fn drop(&mut self) {
        let Ok(client) = ::redis::Client::open(REDIS_URL) else {
            return;
        };
        let Ok(mut conn) = client.get_connection() else {
            return;
        };
        // Known keys only: `KEYS` would block a shared Redis for a full scan. The idempotency
        // keys expire on their own.
        let tagged = format!("{}:{{p0}}", self.prefix);
        let keys = ["inbox", "retry", "state", "dlq"].map(|name| format!("{tagged}:{name}"));
        let _: ::redis::RedisResult<()> = ::redis::cmd("DEL").arg(&keys).query(&mut conn);
    }
}

/// Builds an event whose payload is not UTF-8, so a backend that mangles bytes fails the tests.
fn event(id: &str) -> Event {
    Event {
        id: id.into(),
        source: "makini".into(),
        event_type: "assets.updated".into(),
        received_at_ms: 1_700_000_000_123,
        payload: Bytes::from([b"{\"id\":\"", id.as_bytes(), b"\"}\xff\x00"].concat()),
    }
}

fn key(id: &str) -> String {
    format!("makini:{id}")
}

async fn claim_now(store: &Arc<dyn Store>, max: usize) -> Vec<Delivery> {
    store.claim(max, Duration::ZERO).await.expect("claim")
}

async fn duplicate_is_not_stored(mut backend: impl Backend) {
    let store = backend.open().await;

    let first = store.accept(&event("a"), &key("a"), WINDOW).await.unwrap();
    let second = store.accept(&event("a"), &key("a"), WINDOW).await.unwrap();
    let other = store.accept(&event("b"), &key("b"), WINDOW).await.unwrap();

    assert_eq!(first, AcceptOutcome::Accepted);
    assert_eq!(second, AcceptOutcome::Duplicate);
    assert_eq!(other, AcceptOutcome::Accepted);
    let ids: Vec<String> = claim_now(&store, 10)
        .await
        .into_iter()
        .map(|d| d.event.id)
        .collect();
    assert_eq!(ids, ["a", "b"]);
}

async fn concurrent_duplicates_store_one(mut backend: impl Backend) {
    let store = backend.open().await;

    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.accept(&event("same"), &key("same"), WINDOW).await })
        })
        .collect();
    let mut accepted = 0;
    let mut duplicates = 0;
    for task in tasks {
        match task.await.unwrap().unwrap() {
            AcceptOutcome::Accepted => accepted += 1,
            AcceptOutcome::Duplicate => duplicates += 1,
        }
    }

    assert_eq!(accepted, 1);
    assert_eq!(duplicates, 49);
    assert_eq!(claim_now(&store, 100).await.len(), 1);
}

async fn key_is_free_after_window(mut backend: impl Backend) {
    let store = backend.open().await;
    let window = DELAY;

    let first = store.accept(&event("a"), &key("a"), window).await.unwrap();
    backend.advance(DELAY / 4).await;
    let inside = store.accept(&event("a"), &key("a"), window).await.unwrap();
    backend.advance(DELAY).await;
    let after = store.accept(&event("a"), &key("a"), window).await.unwrap();

    assert_eq!(first, AcceptOutcome::Accepted);
    assert_eq!(inside, AcceptOutcome::Duplicate);
    assert_eq!(after, AcceptOutcome::Accepted);
    assert_eq!(claim_now(&store, 10).await.len(), 2);
}

async fn claim_returns_events_and_settle_removes(mut backend: impl Backend) {
    let store = backend.open().await;
    store.accept(&event("a"), &key("a"), WINDOW).await.unwrap();
    store.accept(&event("b"), &key("b"), WINDOW).await.unwrap();

    let claimed = claim_now(&store, 10).await;
    assert_eq!(claimed.len(), 2);
    assert_eq!(claimed[0].event, event("a"));
    assert_eq!(claimed[1].event, event("b"));
    assert_eq!(claimed[0].attempt, 0);
    assert_eq!(claimed[0].pending_sinks, None);
    assert!(
        claim_now(&store, 10).await.is_empty(),
        "claimed entries are not handed out twice"
    );

    for delivery in &claimed {
        store.settle(delivery, Settlement::default()).await.unwrap();
    }
    backend
        .advance(backend.visibility_timeout() + Duration::from_millis(200))
        .await;
    assert!(
        claim_now(&store, 10).await.is_empty(),
        "settled entries are gone"
    );
    assert!(store.dead_letters(10).await.unwrap().is_empty());
}

async fn claim_waits_for_new_event(mut backend: impl Backend) {
    let store = backend.open().await;

    let waiting = {
        let store = store.clone();
        tokio::spawn(async move { store.claim(10, Duration::from_secs(5)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    store.accept(&event("a"), &key("a"), WINDOW).await.unwrap();

    let claimed = tokio::time::timeout(Duration::from_secs(3), waiting)
        .await
        .expect("a waiting claim returns soon after an accept")
        .unwrap()
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].event.id, "a");
}

async fn retry_is_handed_out_when_due(mut backend: impl Backend) {
    let store = backend.open().await;
    store.accept(&event("a"), &key("a"), WINDOW).await.unwrap();
    let claimed = claim_now(&store, 10).await;
    assert_eq!(claimed.len(), 1);

    let retry = Retry {
        sinks: vec!["queue".into()],
        attempt: 1,
        due: backend.now() + DELAY,
    };
    let settlement = Settlement {
        dead: Vec::new(),
        retry: Some(retry),
    };
    store.settle(&claimed[0], settlement).await.unwrap();

    backend.advance(DELAY / 4).await;
    assert!(
        claim_now(&store, 10).await.is_empty(),
        "not before it is due"
    );

    backend.advance(DELAY).await;
    let retried = claim_now(&store, 10).await;
    assert_eq!(retried.len(), 1);
    assert_eq!(retried[0].event, event("a"));
    assert_eq!(retried[0].attempt, 1);
    assert_eq!(retried[0].pending_sinks, Some(vec!["queue".to_owned()]));

    store
        .settle(&retried[0], Settlement::default())
        .await
        .unwrap();
    backend
        .advance(backend.visibility_timeout() + Duration::from_millis(200))
        .await;
    assert!(claim_now(&store, 10).await.is_empty());
}

async fn second_retry_is_rescheduled(mut backend: impl Backend) {
    let store = backend.open().await;
    store.accept(&event("a"), &key("a"), WINDOW).await.unwrap();
    let claimed = claim_now(&store, 10).await;
    let first = Settlement {
        dead: Vec::new(),
        retry: Some(Retry {
            sinks: vec!["one".into(), "two".into()],
            attempt: 1,
            due: backend.now(),
        }),
    };
    store.settle(&claimed[0], first).await.unwrap();
    backend.advance(Duration::from_millis(50)).await;
    let retried = claim_now(&store, 10).await;
    assert_eq!(retried.len(), 1);

    let second = Settlement {
        dead: Vec::new(),
        retry: Some(Retry {
            sinks: vec!["two".into()],
            attempt: 2,
            due: backend.now() + DELAY,
        }),
    };
    store.settle(&retried[0], second).await.unwrap();
    backend.advance(DELAY / 4).await;
    assert!(
        claim_now(&store, 10).await.is_empty(),
        "not before the new due time"
    );

    backend.advance(DELAY).await;
    let again = claim_now(&store, 10).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].event, event("a"));
    assert_eq!(again[0].attempt, 2);
    assert_eq!(again[0].pending_sinks, Some(vec!["two".to_owned()]));
}

async fn new_event_passes_waiting_retry(mut backend: impl Backend) {
    let store = backend.open().await;
    store.accept(&event("a"), &key("a"), WINDOW).await.unwrap();
    let claimed = claim_now(&store, 10).await;
    let later = Settlement {
        dead: Vec::new(),
        retry: Some(Retry {
            sinks: vec!["queue".into()],
            attempt: 1,
            due: backend.now() + Duration::from_secs(3600),
        }),
    };
    store.settle(&claimed[0], later).await.unwrap();

    store.accept(&event("b"), &key("b"), WINDOW).await.unwrap();
    let next = claim_now(&store, 10).await;
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].event.id, "b");
}

async fn unsettled_claim_is_handed_out_again(mut backend: impl Backend) {
    let store = backend.open().await;
    store.accept(&event("a"), &key("a"), WINDOW).await.unwrap();
    let first = claim_now(&store, 10).await;
    assert_eq!(first.len(), 1);

    backend
        .advance(backend.visibility_timeout() + Duration::from_millis(200))
        .await;
    let again = claim_now(&store, 10).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].handle, first[0].handle);
    assert_eq!(again[0].event, event("a"));
}

async fn crash_leaves_claimed_entry_claimable(mut backend: impl Backend) {
    let store = backend.open().await;
    store.accept(&event("a"), &key("a"), WINDOW).await.unwrap();
    assert_eq!(claim_now(&store, 10).await.len(), 1);
    drop(store);

    let store = backend.open().await;
    backend.advance(backend.reclaim_after_crash()).await;
    let reclaimed = claim_now(&store, 10).await;
    assert_eq!(reclaimed.len(), 1);
    assert_eq!(reclaimed[0].event, event("a"));
    assert_eq!(reclaimed[0].attempt, 0);
}

async fn crash_keeps_scheduled_retry(mut backend: impl Backend) {
    let store = backend.open().await;
    store.accept(&event("a"), &key("a"), WINDOW).await.unwrap();
    let claimed = claim_now(&store, 10).await;
    let retry = Retry {
        sinks: vec!["queue".into()],
        attempt: 1,
        due: backend.now() + DELAY,
    };
    let settlement = Settlement {
        dead: Vec::new(),
        retry: Some(retry),
    };
    store.settle(&claimed[0], settlement).await.unwrap();
    drop(store);

    let store = backend.open().await;
    assert!(
        claim_now(&store, 10).await.is_empty(),
        "not before it is due"
    );
    backend
        .advance(backend.reclaim_after_crash().max(DELAY + DELAY / 4))
        .await;
    let retried = claim_now(&store, 10).await;
    assert_eq!(retried.len(), 1);
    assert_eq!(retried[0].attempt, 1);
    assert_eq!(retried[0].pending_sinks, Some(vec!["queue".to_owned()]));
}

async fn exhausted_sink_is_dead_lettered(mut backend: impl Backend) {
    let store = backend.open().await;
    store.accept(&event("a"), &key("a"), WINDOW).await.unwrap();
    let claimed = claim_now(&store, 10).await;

    let settlement = Settlement {
        dead: vec![DeadLetter {
            sink: "queue".into(),
            error: "connection refused".into(),
        }],
        retry: None,
    };
    store.settle(&claimed[0], settlement).await.unwrap();

    let dead = store.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].event, event("a"));
    assert_eq!(dead[0].sink, "queue");
    assert_eq!(dead[0].error, "connection refused");
    assert_eq!(dead[0].attempt, 1);
    backend
        .advance(backend.visibility_timeout() + Duration::from_millis(200))
        .await;
    assert!(
        claim_now(&store, 10).await.is_empty(),
        "the entry left the inbox"
    );
}

async fn dead_letter_beside_retry(mut backend: impl Backend) {
    let store = backend.open().await;
    store.accept(&event("a"), &key("a"), WINDOW).await.unwrap();
    let claimed = claim_now(&store, 10).await;

    let settlement = Settlement {
        dead: vec![DeadLetter {
            sink: "broken".into(),
            error: "rejected".into(),
        }],
        retry: Some(Retry {
            sinks: vec!["slow".into()],
            attempt: 1,
            due: backend.now(),
        }),
    };
    store.settle(&claimed[0], settlement).await.unwrap();
    backend.advance(Duration::from_millis(50)).await;

    let dead = store.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].sink, "broken");
    let retried = claim_now(&store, 10).await;
    assert_eq!(retried.len(), 1);
    assert_eq!(retried[0].pending_sinks, Some(vec!["slow".to_owned()]));
}

async fn restart_keeps_pending_entries(mut backend: impl Backend) {
    let store = backend.open().await;
    for id in ["a", "b", "c"] {
        store.accept(&event(id), &key(id), WINDOW).await.unwrap();
    }
    drop(store);

    let store = backend.open().await;
    let ids: Vec<String> = claim_now(&store, 10)
        .await
        .into_iter()
        .map(|d| d.event.id)
        .collect();
    assert_eq!(ids, ["a", "b", "c"]);
    let again = store.accept(&event("a"), &key("a"), WINDOW).await.unwrap();
    assert_eq!(again, AcceptOutcome::Duplicate, "keys survive a restart");
}

/// Accepts and claims each of `ids`, then settles it with every sink of `sinks` given up.
async fn dead_letter_all(store: &Arc<dyn Store>, ids: &[&str], sinks: &[&str]) {
    for id in ids {
        store.accept(&event(id), &key(id), WINDOW).await.unwrap();
    }
    for delivery in claim_now(store, ids.len()).await {
        let dead = sinks
            .iter()
            .map(|sink| DeadLetter {
                sink: (*sink).into(),
                error: format!("{sink} is down"),
            })
            .collect();
        let settlement = Settlement { dead, retry: None };
        store.settle(&delivery, settlement).await.unwrap();
    }
}

fn select_all() -> ReplaySelection {
    ReplaySelection::default()
}

fn select_handle(handle: &str) -> ReplaySelection {
    ReplaySelection {
        handle: Some(handle.into()),
        sink: None,
    }
}

async fn dead_letter_found_by_handle(mut backend: impl Backend) {
    let store = backend.open().await;
    dead_letter_all(&store, &["a"], &["queue"]).await;
    let listed = store.dead_letters(10).await.unwrap();
    assert_eq!(listed.len(), 1);

    let found = store.dead_letter(&listed[0].handle).await.unwrap();
    assert_eq!(found.as_ref(), Some(&listed[0]));
    assert_eq!(found.unwrap().event, event("a"));
    for unknown in ["999999", "1-1", "not-a-handle", ""] {
        assert_eq!(
            store.dead_letter(unknown).await.unwrap(),
            None,
            "{unknown:?}"
        );
    }
}

async fn replay_returns_dead_letters_to_inbox(mut backend: impl Backend) {
    let store = backend.open().await;
    dead_letter_all(&store, &["a"], &["queue", "archive"]).await;
    assert_eq!(store.dead_letters(10).await.unwrap().len(), 2);

    let replayed = store.replay(&select_all()).await.unwrap();
    assert_eq!(replayed.len(), 2);
    assert_eq!(replayed[0].event_id, "a");
    assert_eq!(replayed[0].sink, "queue");
    assert_eq!(replayed[1].sink, "archive");
    assert!(store.dead_letters(10).await.unwrap().is_empty());
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.dead_letters, 0);
    assert_eq!(stats.inbox_depth, 2);

    // The replay is durable: a restarted process finds the entries.
    drop(store);
    let store = backend.open().await;
    let mut claimed = claim_now(&store, 10).await;
    claimed.sort_by(|a, b| a.pending_sinks.cmp(&b.pending_sinks));
    assert_eq!(claimed.len(), 2);
    assert_eq!(claimed[0].event, event("a"));
    assert_eq!(claimed[0].attempt, 0, "attempts count from zero again");
    assert_eq!(claimed[0].pending_sinks, Some(vec!["archive".to_owned()]));
    assert_eq!(claimed[1].event, event("a"));
    assert_eq!(claimed[1].pending_sinks, Some(vec!["queue".to_owned()]));
    let handles: Vec<&str> = claimed.iter().map(|d| d.handle.as_str()).collect();
    assert!(handles.contains(&replayed[0].inbox.as_str()));
    assert!(handles.contains(&replayed[1].inbox.as_str()));
}

async fn replayed_entry_settles_like_any(mut backend: impl Backend) {
    let store = backend.open().await;
    dead_letter_all(&store, &["a", "b"], &["queue"]).await;
    store.replay(&select_all()).await.unwrap();

    let claimed = claim_now(&store, 10).await;
    assert_eq!(claimed.len(), 2);
    store
        .settle(&claimed[0], Settlement::default())
        .await
        .unwrap();
    let again = Settlement {
        dead: vec![DeadLetter {
            sink: "queue".into(),
            error: "still down".into(),
        }],
        retry: None,
    };
    store.settle(&claimed[1], again).await.unwrap();

    let dead = store.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].event, claimed[1].event);
    assert_eq!(dead[0].error, "still down");
    assert_eq!(dead[0].attempt, 1);
    assert_eq!(store.stats().await.unwrap().inbox_depth, 0);
    backend
        .advance(backend.visibility_timeout() + Duration::from_millis(200))
        .await;
    assert!(claim_now(&store, 10).await.is_empty());
}

async fn replay_one_handle_leaves_rest(mut backend: impl Backend) {
    let store = backend.open().await;
    dead_letter_all(&store, &["a", "b"], &["queue"]).await;
    let before = store.dead_letters(10).await.unwrap();
    let first = before.iter().find(|record| record.event.id == "a").unwrap();

    let replayed = store.replay(&select_handle(&first.handle)).await.unwrap();
    assert_eq!(replayed.len(), 1);
    assert_eq!(replayed[0].dead_letter, first.handle);
    assert_eq!(replayed[0].event_id, "a");

    let left = store.dead_letters(10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].event.id, "b");
    let claimed = claim_now(&store, 10).await;
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].event, event("a"));
}

async fn replay_twice_moves_once(mut backend: impl Backend) {
    let store = backend.open().await;
    dead_letter_all(&store, &["a"], &["queue"]).await;
    let handle = store.dead_letters(10).await.unwrap()[0].handle.clone();

    let first = store.replay(&select_handle(&handle)).await.unwrap();
    let second = store.replay(&select_handle(&handle)).await.unwrap();
    let all = store.replay(&select_all()).await.unwrap();

    assert_eq!(first.len(), 1);
    assert!(second.is_empty());
    assert!(all.is_empty());
    assert_eq!(claim_now(&store, 10).await.len(), 1);
}

async fn replay_filters_by_sink(mut backend: impl Backend) {
    let store = backend.open().await;
    dead_letter_all(&store, &["a", "b"], &["queue", "archive"]).await;

    let selection = ReplaySelection {
        handle: None,
        sink: Some("queue".into()),
    };
    let replayed = store.replay(&selection).await.unwrap();

    assert_eq!(replayed.len(), 2);
    assert!(replayed.iter().all(|r| r.sink == "queue"));
    let left = store.dead_letters(10).await.unwrap();
    assert_eq!(left.len(), 2);
    assert!(left.iter().all(|r| r.sink == "archive"));
    let claimed = claim_now(&store, 10).await;
    assert_eq!(claimed.len(), 2);
    for delivery in &claimed {
        assert_eq!(delivery.pending_sinks, Some(vec!["queue".to_owned()]));
    }
}

async fn replay_handle_of_other_sink(mut backend: impl Backend) {
    let store = backend.open().await;
    dead_letter_all(&store, &["a"], &["archive"]).await;
    let handle = store.dead_letters(10).await.unwrap()[0].handle.clone();

    let selection = ReplaySelection {
        handle: Some(handle),
        sink: Some("queue".into()),
    };
    let replayed = store.replay(&selection).await.unwrap();

    assert!(replayed.is_empty());
    assert_eq!(store.dead_letters(10).await.unwrap().len(), 1);
    assert!(claim_now(&store, 10).await.is_empty());
}

async fn replay_unknown_handle_moves_nothing(mut backend: impl Backend) {
    let store = backend.open().await;
    dead_letter_all(&store, &["a"], &["queue"]).await;

    for unknown in ["999999", "1-1", "not-a-handle", "-", "+"] {
        let replayed = store.replay(&select_handle(unknown)).await.unwrap();
        assert!(replayed.is_empty(), "{unknown:?}");
    }
    assert_eq!(store.dead_letters(10).await.unwrap().len(), 1);
}

async fn replay_of_long_queue(mut backend: impl Backend) {
    let store = backend.open().await;
    let ids: Vec<String> = (0..250).map(|i| format!("e{i}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    dead_letter_all(&store, &ids, &["queue"]).await;

    let replayed = store.replay(&select_all()).await.unwrap();

    assert_eq!(replayed.len(), 250);
    assert_eq!(store.stats().await.unwrap().dead_letters, 0);
    assert_eq!(claim_now(&store, 1000).await.len(), 250);
}

/// Settles `delivery` with a retry owed to `sinks`, due `after` from now.
async fn hold(
    store: &Arc<dyn Store>,
    now: SystemTime,
    delivery: &Delivery,
    sinks: &[&str],
    after: Duration,
) {
    let retry = Retry {
        sinks: sinks.iter().map(|s| (*s).to_owned()).collect(),
        attempt: 0,
        due: now + after,
    };
    let settlement = Settlement {
        dead: Vec::new(),
        retry: Some(retry),
    };
    store.settle(delivery, settlement).await.unwrap();
}

async fn brought_forward_retries_come_in_arrival_order(mut backend: impl Backend) {
    let store = backend.open().await;
    let ids = ["a", "b", "c", "d", "e"];
    for id in ids {
        store.accept(&event(id), &key(id), WINDOW).await.unwrap();
    }
    store.accept(&event("x"), &key("x"), WINDOW).await.unwrap();
    let claimed = claim_now(&store, 10).await;
    assert_eq!(claimed.len(), 6);

    // Held in reverse: the later an event arrived, the sooner it was held, so its due time
    // is the earliest.
    let now = backend.now();
    for (n, delivery) in claimed.iter().rev().enumerate() {
        let sinks: &[&str] = match delivery.event.id.as_str() {
            "x" => &["other"],
            _ => &["queue", "other"],
        };
        let after = Duration::from_secs(3600) + Duration::from_secs(n as u64);
        hold(&store, now, delivery, sinks, after).await;
    }
    assert!(claim_now(&store, 10).await.is_empty());

    let moved = store
        .bring_forward("queue", usize::MAX, backend.now())
        .await
        .unwrap();
    assert_eq!(moved.len(), 5, "only the retries owed to the sink");
    let again = claim_now(&store, 10).await;
    let order: Vec<&str> = again.iter().map(|d| d.event.id.as_str()).collect();
    assert_eq!(order, ids, "claimed in arrival order");
    assert!(
        again
            .iter()
            .all(|d| d.pending_sinks == Some(vec!["queue".to_owned(), "other".to_owned()]))
    );
}

async fn bring_forward_one_takes_earliest_due(mut backend: impl Backend) {
    let store = backend.open().await;
    for id in ["a", "b"] {
        store.accept(&event(id), &key(id), WINDOW).await.unwrap();
    }
    let claimed = claim_now(&store, 10).await;
    let now = backend.now();
    let hour = Duration::from_secs(3600);
    let (a, b) = (&claimed[0], &claimed[1]);
    hold(&store, now, a, &["queue"], hour * 2).await;
    hold(&store, now, b, &["queue"], hour).await;

    let moved = store
        .bring_forward("queue", 1, backend.now())
        .await
        .unwrap();
    assert_eq!(moved, vec![b.handle.clone()]);
    let again = claim_now(&store, 10).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].event.id, "b");

    assert!(
        store
            .bring_forward("other", 10, backend.now())
            .await
            .unwrap()
            .is_empty()
    );
}

async fn settle_many_records_each(mut backend: impl Backend) {
    let store = backend.open().await;
    for id in ["a", "b", "c"] {
        store.accept(&event(id), &key(id), WINDOW).await.unwrap();
    }
    let claimed = claim_now(&store, 10).await;
    assert_eq!(claimed.len(), 3);

    let retry = Retry {
        sinks: vec!["queue".into()],
        attempt: 1,
        due: backend.now(),
    };
    let items: Vec<(Delivery, Settlement)> = claimed
        .iter()
        .map(|delivery| {
            let settlement = match delivery.event.id.as_str() {
                "b" => Settlement {
                    dead: Vec::new(),
                    retry: Some(retry.clone()),
                },
                _ => Settlement::default(),
            };
            (delivery.clone(), settlement)
        })
        .collect();
    let results = store.settle_many(items).await;
    assert_eq!(results.len(), 3);
    assert!(results.iter().all(Result::is_ok), "{results:?}");

    let again = claim_now(&store, 10).await;
    assert_eq!(again.len(), 1, "only the retry is left");
    assert_eq!(again[0].event.id, "b");
    assert_eq!(again[0].attempt, 1);
}

async fn ping_succeeds(mut backend: impl Backend) {
    let store = backend.open().await;
    store.ping().await.unwrap();
}

/// Runs every contract test against one backend, each with a fresh instance of it.
macro_rules! behaviour_suite {
    ($module:ident, $backend:expr) => {
        mod $module {
            use super::*;

            #[tokio::test]
            async fn duplicate_is_not_stored() {
                super::duplicate_is_not_stored($backend).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn concurrent_duplicates_store_one() {
                super::concurrent_duplicates_store_one($backend).await;
            }

            #[tokio::test]
            async fn key_is_free_after_window() {
                super::key_is_free_after_window($backend).await;
            }

            #[tokio::test]
            async fn claim_returns_events_and_settle_removes() {
                super::claim_returns_events_and_settle_removes($backend).await;
            }

            #[tokio::test]
            async fn claim_waits_for_new_event() {
                super::claim_waits_for_new_event($backend).await;
            }

            #[tokio::test]
            async fn retry_is_handed_out_when_due() {
                super::retry_is_handed_out_when_due($backend).await;
            }

            #[tokio::test]
            async fn second_retry_is_rescheduled() {
                super::second_retry_is_rescheduled($backend).await;
            }

            #[tokio::test]
            async fn new_event_passes_waiting_retry() {
                super::new_event_passes_waiting_retry($backend).await;
            }

            #[tokio::test]
            async fn unsettled_claim_is_handed_out_again() {
                super::unsettled_claim_is_handed_out_again($backend).await;
            }

            #[tokio::test]
            async fn crash_leaves_claimed_entry_claimable() {
                super::crash_leaves_claimed_entry_claimable($backend).await;
            }

            #[tokio::test]
            async fn crash_keeps_scheduled_retry() {
                super::crash_keeps_scheduled_retry($backend).await;
            }

            #[tokio::test]
            async fn exhausted_sink_is_dead_lettered() {
                super::exhausted_sink_is_dead_lettered($backend).await;
            }

            #[tokio::test]
            async fn dead_letter_beside_retry() {
                super::dead_letter_beside_retry($backend).await;
            }

            #[tokio::test]
            async fn restart_keeps_pending_entries() {
                super::restart_keeps_pending_entries($backend).await;
            }

            #[tokio::test]
            async fn dead_letter_found_by_handle() {
                super::dead_letter_found_by_handle($backend).await;
            }

            #[tokio::test]
            async fn replay_returns_dead_letters_to_inbox() {
                super::replay_returns_dead_letters_to_inbox($backend).await;
            }

            #[tokio::test]
            async fn replayed_entry_settles_like_any() {
                super::replayed_entry_settles_like_any($backend).await;
            }

            #[tokio::test]
            async fn replay_one_handle_leaves_rest() {
                super::replay_one_handle_leaves_rest($backend).await;
            }

            #[tokio::test]
            async fn replay_twice_moves_once() {
                super::replay_twice_moves_once($backend).await;
            }

            #[tokio::test]
            async fn replay_filters_by_sink() {
                super::replay_filters_by_sink($backend).await;
            }

            #[tokio::test]
            async fn replay_handle_of_other_sink() {
                super::replay_handle_of_other_sink($backend).await;
            }

            #[tokio::test]
            async fn replay_unknown_handle_moves_nothing() {
                super::replay_unknown_handle_moves_nothing($backend).await;
            }

            #[tokio::test]
            async fn replay_of_long_queue() {
                super::replay_of_long_queue($backend).await;
            }

            #[tokio::test]
            async fn brought_forward_retries_come_in_arrival_order() {
                super::brought_forward_retries_come_in_arrival_order($backend).await;
            }

            #[tokio::test]
            async fn bring_forward_one_takes_earliest_due() {
                super::bring_forward_one_takes_earliest_due($backend).await;
            }

            #[tokio::test]
            async fn settle_many_records_each() {
                super::settle_many_records_each($backend).await;
            }

            #[tokio::test]
            async fn ping_succeeds() {
                super::ping_succeeds($backend).await;
            }
        }
    };
}

behaviour_suite!(embedded, EmbeddedBackend::new());
behaviour_suite!(redis, RedisBackend::new());
