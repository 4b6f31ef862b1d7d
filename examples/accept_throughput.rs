//! Measures how many accepts per second a store completes: `--concurrency` tasks call
//! `Store::accept` with distinct keys in a loop for `--seconds`, as concurrent webhook requests
//! would. `--store xadd` measures one plain Redis `XADD` per call instead, the floor a minimal
//! Redis-backed receiver pays.
//!
//! ```text
//! cargo run --release --example accept_throughput -- --store embedded --concurrency 64
//! cargo run --release --example accept_throughput -- --store redis --concurrency 64
//! cargo run --release --example accept_throughput -- --store xadd --concurrency 64
//! ```
//!
//! The Redis modes use 127.0.0.1:6379 and delete the keys they wrote when they finish.

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use hookrelay::event::Event;
use hookrelay::store::Store;
use hookrelay::store::embedded::{EmbeddedStore, EmbeddedStoreOptions};
use hookrelay::store::redis::{RedisStore, RedisStoreOptions};
use redis::aio::ConnectionManager;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Target {
    Embedded,
    Redis,
    Xadd,
}

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, value_enum)]
    store: Target,
    /// Tasks calling accept at the same time.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Length of the measurement in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 1024)]
    payload: usize,
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
}

/// The operation each task repeats.
#[derive(Clone)]
enum Backend {
    Store(Arc<dyn Store>),
    Xadd(ConnectionManager, String),
}

impl Backend {
    async fn accept(&self, event: &Event, key: &str) {
        match self {
            Backend::Store(store) => {
                store
                    .accept(event, key, Duration::from_secs(60))
                    .await
                    .expect("accept");
            }
            Backend::Xadd(conn, stream) => {
                let mut conn = conn.clone();
                let _: String = redis::cmd("XADD")
                    .arg(stream)
                    .arg("*")
                    .arg("id")
                    .arg(&event.id)
                    .arg("payload")
                    .arg(event.payload.as_ref())
                    .query_async(&mut conn)
                    .await
                    .expect("XADD");
            }
        }
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let prefix = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let data_dir = tempfile::tempdir().expect("temporary directory");

    let backend = match args.store {
        Target::Embedded => {
            let options = EmbeddedStoreOptions::new(data_dir.path(), Duration::from_secs(60));
            let store = EmbeddedStore::open(options)
                .await
                .expect("open embedded store");
            println!("embedded store at {}", store.path().display());
            Backend::Store(Arc::new(store))
        }
        Target::Redis => {
            let store = RedisStore::open(&RedisStoreOptions {
                url: args.redis_url.clone(),
                key_prefix: prefix.clone(),
                request_timeout: Duration::from_secs(5),
                visibility_timeout: Duration::from_secs(60),
            })
            .expect("open Redis store");
            Backend::Store(Arc::new(store))
        }
        Target::Xadd => {
            let client = redis::Client::open(args.redis_url.as_str()).expect("Redis URL");
            let conn = ConnectionManager::new(client)
                .await
                .expect("connect to Redis");
            Backend::Xadd(conn, format!("{prefix}:stream"))
        }
    };

    let payload = Bytes::from(vec![b'x'; args.payload]);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let tasks: Vec<_> = (0..args.concurrency)
        .map(|task| {
            let backend = backend.clone();
            let payload = payload.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let id = format!("{task}-{n}");
                    let event = Event {
                        id: id.clone(),
                        source: "bench".into(),
                        event_type: "bench.event".into(),
                        received_at_ms: 0,
                        payload: payload.clone(),
                    };
                    let begun = Instant::now();
                    backend.accept(&event, &format!("bench:{id}")).await;
                    latencies.push(begun.elapsed());
                    n += 1;
                }
                latencies
            })
        })
        .collect();

    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("task"));
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let percentile = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p) as usize];

    println!(
        "{:?}: {} accepts in {:.1} s with {} tasks = {:.0} accepts/s; latency p50 {:?}, p99 {:?}",
        args.store,
        latencies.len(),
        elapsed.as_secs_f64(),
        args.concurrency,
        latencies.len() as f64 / elapsed.as_secs_f64(),
        percentile(0.5),
        percentile(0.99),
    );

    if !matches!(args.store, Target::Embedded) {
        delete_keys(&args.redis_url, &prefix).await;
    }
}

/// Deletes every key under `prefix`; the idempotency keys would expire on their own.
async fn delete_keys(url: &str, prefix: &str) {
    let client = redis::Client::open(url).expect("Redis URL");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to Redis");
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(10_000)
            .query_async(&mut conn)
            .await
            .expect("SCAN");
        if !keys.is_empty() {
            let _: () = redis::cmd("UNLINK")
                .arg(&keys)
                .query_async(&mut conn)
                .await
                .expect("UNLINK");
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
}
