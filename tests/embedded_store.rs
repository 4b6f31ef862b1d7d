//! Behaviour of the embedded store that the Redis store does not share: the purge of expired
//! idempotency keys, the lock on the data directory and the batching of concurrent accepts.
//! The contract common to both backends is in `store_behaviour.rs`.

use bytes::Bytes;
use hookrelay::event::Event;
use hookrelay::store::embedded::{EmbeddedStore, EmbeddedStoreOptions, ManualClock};
use hookrelay::store::{AcceptOutcome, Store};
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

fn event(id: &str) -> Event {
    Event {
        id: id.into(),
        source: "makini".into(),
        event_type: "assets.updated".into(),
        received_at_ms: 1_700_000_000_000,
        payload: Bytes::from(format!("{{\"id\":\"{id}\"}}")),
    }
}

async fn open(dir: &Path, clock: &Arc<ManualClock>) -> EmbeddedStore {
    let mut options = EmbeddedStoreOptions::new(dir, Duration::from_secs(30));
    options.clock = clock.clone();
    EmbeddedStore::open(options)
        .await
        .expect("open embedded store")
}

#[tokio::test]
async fn purge_removes_only_expired_keys() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    let store = open(dir.path(), &clock).await;
    let short = Duration::from_secs(1);
    let long = Duration::from_secs(3600);
    store.accept(&event("a"), "k:a", short).await.unwrap();
    store.accept(&event("b"), "k:b", short).await.unwrap();
    store.accept(&event("c"), "k:c", long).await.unwrap();

    assert_eq!(
        store.purge_expired().await.unwrap(),
        0,
        "nothing expired yet"
    );
    clock.advance(Duration::from_secs(2));
    assert_eq!(store.purge_expired().await.unwrap(), 2);
    assert_eq!(store.purge_expired().await.unwrap(), 0);

    let expired = store.accept(&event("a"), "k:a", short).await.unwrap();
    let live = store.accept(&event("c"), "k:c", long).await.unwrap();
    assert_eq!(expired, AcceptOutcome::Accepted);
    assert_eq!(live, AcceptOutcome::Duplicate);
}

#[tokio::test]
async fn purge_keeps_key_claimed_again() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    let store = open(dir.path(), &clock).await;
    store
        .accept(&event("a"), "k:a", Duration::from_secs(1))
        .await
        .unwrap();
    clock.advance(Duration::from_secs(2));
    // Claimed again before any purge ran: the new window must outlive the old one's purge.
    let again = store
        .accept(&event("a"), "k:a", Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(again, AcceptOutcome::Accepted);

    clock.advance(Duration::from_secs(2));
    store.purge_expired().await.unwrap();
    let within = store
        .accept(&event("a"), "k:a", Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(within, AcceptOutcome::Duplicate);
}

#[tokio::test]
async fn second_open_of_directory_fails() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    let first = open(dir.path(), &clock).await;

    let options = EmbeddedStoreOptions::new(dir.path(), Duration::from_secs(30));
    let error = EmbeddedStore::open(options).await.unwrap_err().to_string();
    assert!(error.contains("is locked by another process"), "{error}");
    assert!(error.contains("hookrelay.redb"), "{error}");

    drop(first);
    let reopened = EmbeddedStore::open(EmbeddedStoreOptions::new(
        dir.path(),
        Duration::from_secs(30),
    ))
    .await;
    assert!(reopened.is_ok(), "the lock is released with the store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_accepts_all_stored() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    let store: Arc<dyn Store> = Arc::new(open(dir.path(), &clock).await);

    // Every id three times, all at once, so that copies of one key share a commit batch.
    let tasks: Vec<_> = (0..600)
        .map(|n| {
            let store = store.clone();
            let id = format!("e{}", n % 200);
            tokio::spawn(async move {
                let key = format!("k:{id}");
                store
                    .accept(&event(&id), &key, Duration::from_secs(60))
                    .await
            })
        })
        .collect();
    let mut accepted = 0;
    for task in tasks {
        if task.await.unwrap().unwrap() == AcceptOutcome::Accepted {
            accepted += 1;
        }
    }
    assert_eq!(accepted, 200);

    let claimed = store.claim(1000, Duration::ZERO).await.unwrap();
    let ids: HashSet<String> = claimed.iter().map(|d| d.event.id.clone()).collect();
    assert_eq!(claimed.len(), 200);
    assert_eq!(ids.len(), 200);
}

#[tokio::test]
async fn handles_stay_unique_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    let store = open(dir.path(), &clock).await;
    store
        .accept(&event("a"), "k:a", Duration::from_secs(60))
        .await
        .unwrap();
    let first = store.claim(10, Duration::ZERO).await.unwrap();
    store.settle(&first[0], Default::default()).await.unwrap();
    drop(store);

    // The inbox is empty now; a reused sequence number would reuse a handle.
    let store = open(dir.path(), &clock).await;
    store
        .accept(&event("b"), "k:b", Duration::from_secs(60))
        .await
        .unwrap();
    let second = store.claim(10, Duration::ZERO).await.unwrap();
    assert_eq!(second.len(), 1);
    assert_ne!(second[0].handle, first[0].handle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_removes_more_than_one_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    let store = Arc::new(open(dir.path(), &clock).await);

    // One purge transaction removes at most 10,000 keys, so this takes two.
    let total = 10_050;
    let tasks: Vec<_> = (0..50)
        .map(|task| {
            let store = store.clone();
            tokio::spawn(async move {
                for n in (task..total).step_by(50) {
                    let id = format!("e{n}");
                    let key = format!("k:{id}");
                    store
                        .accept(&event(&id), &key, Duration::from_secs(1))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }

    clock.advance(Duration::from_secs(2));
    assert_eq!(store.purge_expired().await.unwrap(), total);
}

#[tokio::test]
async fn writer_purges_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    let mut options = EmbeddedStoreOptions::new(dir.path(), Duration::from_secs(30));
    options.clock = clock.clone();
    options.purge_interval = Duration::from_millis(50);
    let store = EmbeddedStore::open(options).await.unwrap();
    for id in ["a", "b", "c"] {
        let key = format!("k:{id}");
        store
            .accept(&event(id), &key, Duration::from_secs(1))
            .await
            .unwrap();
    }

    clock.advance(Duration::from_secs(2));
    // Twenty purge intervals: the writer's own purge has removed the keys by then.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(store.purge_expired().await.unwrap(), 0);
}
