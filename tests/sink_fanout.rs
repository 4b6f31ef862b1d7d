//! One event routed to three sinks, one of them down: each sink gets it once.

mod sink_support;

use async_nats::jetstream;
use bytes::Bytes;
use hookrelay::config::Config;
use hookrelay::event::Event;
use hookrelay::sink::Sink;
use sink_support::{Downstream, PrivateNats, REDIS_URL, SOURCE, Service, eventually, unique};
use std::time::Duration;

async fn redis_conn() -> redis::aio::MultiplexedConnection {
    redis::Client::open(REDIS_URL)
        .unwrap()
        .get_multiplexed_async_connection_with_config(&test_redis_config())
        .await
        .unwrap()
}

async fn stream_len(conn: &mut redis::aio::MultiplexedConnection, stream: &str) -> u64 {
    redis::cmd("XLEN")
        .arg(stream)
        .query_async(conn)
        .await
        .unwrap()
}

/// Deletes `stream`. The sink's markers of its events expire on their own.
async fn delete_stream(conn: &mut redis::aio::MultiplexedConnection, stream: &str) {
    let _: () = redis::cmd("DEL")
        .arg(stream)
        .query_async(conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn fanout_with_one_sink_down() {
    let store = tempfile::tempdir().unwrap();
    let mut nats = PrivateNats::new(store.path());
    let downstream = Downstream::start(vec![]).await;
    let redis_stream = unique("hooktest-fanout");
    let nats_stream = unique("HOOKTEST");
    let sinks = format!(
        r#"
        [[sinks]]
        name = "log"
        type = "redis_stream"
        url = "{REDIS_URL}"
        stream = "{redis_stream}"
        [[sinks]]
        name = "web"
        type = "http"
        url = "{}"
        secret = "SINK_SECRET"
        [[sinks]]
        name = "bus"
        type = "nats"
        url = "{}"
        subject = "fanout.{{event}}"
        create_stream = true
        stream = "{nats_stream}"
        timeout = "1s"
        [[routes]]
        source = "{SOURCE}"
        sinks = ["log", "web", "bus"]
        "#,
        downstream.url(),
        nats.url(),
    );
    let service = Service::start(&sinks).await;
    let mut conn = redis_conn().await;
    let id = unique("evt");

    assert_eq!(service.send(&id, "orders.created", 1.into()).await, 200);
    let retried = eventually(Duration::from_secs(20), || async {
        service.stat(|s| &s.retried) >= 2
    })
    .await;
    assert!(retried, "the NATS sink was not retried while down");
    assert_eq!(stream_len(&mut conn, &redis_stream).await, 1);
    assert_eq!(downstream.received().len(), 1);
    assert_eq!(service.inbox_len().await, 1);

    nats.start().await;
    assert!(service.settled(Duration::from_secs(60)).await);

    assert_eq!(stream_len(&mut conn, &redis_stream).await, 1);
    assert_eq!(downstream.received().len(), 1);
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let mut handle = js.get_stream(&nats_stream).await.unwrap();
    assert_eq!(handle.info().await.unwrap().state.messages, 1);
    assert_eq!(service.stat(|s| &s.delivered), 3);
    assert!(service.dead_letters().await.is_empty());

    service.stop().await;
    delete_stream(&mut conn, &redis_stream).await;
}

/// Builds a Redis Stream sink on `stream` the way the service does, with `extra` TOML lines.
fn configured_stream_sink(stream: &str, extra: &str) -> Box<dyn Sink> {
    let config = Config::from_toml(&format!(
        r#"
        [[sinks]]
        name = "log"
        type = "redis_stream"
        url = "{REDIS_URL}"
        stream = "{stream}"
        {extra}
        "#
    ))
    .unwrap();
    hookrelay::sink::build(&config.sinks[0]).unwrap()
}

#[tokio::test]
async fn redis_stream_maxlen_trims() {
    let stream = unique("hooktest-maxlen");
    let sink = configured_stream_sink(&stream, "maxlen = 10");
    let mut conn = redis_conn().await;

    for n in 0..300 {
        let event = Event {
            id: format!("evt-{n}"),
            source: SOURCE.into(),
            event_type: "orders.created".into(),
            received_at_ms: 1_700_000_000_000,
            payload: Bytes::from_static(b"{}"),
        };
        sink.deliver(&event).await.unwrap();
    }

    // `MAXLEN ~` trims whole radix-tree nodes (100 entries each by default), so the stream
    // keeps at least 10 entries and far fewer than 300.
    let len = stream_len(&mut conn, &stream).await;
    assert!(len >= 10, "stream has {len} entries");
    assert!(len <= 110, "stream has {len} entries");
    delete_stream(&mut conn, &stream).await;
}

fn numbered_event(n: usize) -> Event {
    Event {
        id: format!("evt-{n}"),
        source: SOURCE.into(),
        event_type: "orders.created".into(),
        received_at_ms: 1_700_000_000_000,
        payload: Bytes::from(format!(r#"{{"n":{n}}}"#)),
    }
}

async fn stream_event_ids(
    conn: &mut redis::aio::MultiplexedConnection,
    stream: &str,
) -> Vec<String> {
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await
        .unwrap();
    reply
        .ids
        .iter()
        .map(|entry| entry.get::<String>("id").unwrap())
        .collect()
}

/// One script call adds a batch in order, skipping the event the stream already has and the
/// second copy inside the batch.
#[tokio::test]
async fn redis_stream_batch_keeps_order() {
    let stream = unique("hooktest-batch-order");
    let sink =
        hookrelay::sink::RedisStreamSink::new(REDIS_URL, &stream, None, Duration::from_secs(300))
            .unwrap();
    let mut conn = redis_conn().await;

    sink.deliver(&numbered_event(5)).await.unwrap();
    let batch: Vec<Event> = (0..200).chain([7]).map(numbered_event).collect();
    let results = sink.deliver_many(&batch).await;

    assert_eq!(results.len(), batch.len());
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let expected: Vec<String> = [5]
        .into_iter()
        .chain((0..200).filter(|n| *n != 5))
        .map(|n| format!("evt-{n}"))
        .collect();
    assert_eq!(stream_event_ids(&mut conn, &stream).await, expected);
    delete_stream(&mut conn, &stream).await;
}

/// Concurrent deliveries through the configured sink, which batches them, each land once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stream_concurrent_deliveries_land_once() {
    let stream = unique("hooktest-batch-concurrent");
    let sink =
        std::sync::Arc::<dyn Sink>::from(configured_stream_sink(&stream, "dedupe_window = \"5m\""));
    let mut conn = redis_conn().await;

    // Each event twice, from tasks on the runtime's threads.
    let tasks: Vec<_> = (0..500)
        .chain(0..500)
        .map(|n| {
            let sink = sink.clone();
            tokio::spawn(async move { sink.deliver(&numbered_event(n)).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }

    let mut ids = stream_event_ids(&mut conn, &stream).await;
    ids.sort();
    let mut expected: Vec<String> = (0..500).map(|n| format!("evt-{n}")).collect();
    expected.sort();
    assert_eq!(ids, expected);
    delete_stream(&mut conn, &stream).await;
}

/// Connection settings for test clients of Redis: the client's default 500 ms response limit
/// fails tests on a loaded machine.
fn test_redis_config() -> redis::AsyncConnectionConfig {
    redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(std::time::Duration::from_secs(5)))
        .set_response_timeout(Some(std::time::Duration::from_secs(10)))
}
