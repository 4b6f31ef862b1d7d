//! Failure paths against real Redis servers: a store that dies or stalls, a sink that fails
//! and recovers or never does, and a crash between forwarding and acknowledging.

mod common;

use common::{
    PrivateRedis, SECRET, STANDARD_REDIS, ServiceSpec, TestService, read_stream, secret_file,
    status_and_json, test_redis_config, unique, wait_for_entries,
};
use hookrelay::event::Event;
use hookrelay::sink::{RedisStreamSink, Sink};
use hookrelay::store::redis::{RedisStore, RedisStoreOptions};
use hookrelay::store::{Settlement, Store};
use redis::AsyncCommands;
use std::time::{Duration, Instant};

async fn standard_conn() -> redis::aio::MultiplexedConnection {
    redis::Client::open(STANDARD_REDIS)
        .unwrap()
        .get_multiplexed_async_connection_with_config(&test_redis_config())
        .await
        .unwrap()
}

#[tokio::test]
async fn store_down_answers_503_then_recovers() {
    let mut store_redis = PrivateRedis::start_new();
    let secret = secret_file(SECRET);
    let mut spec = ServiceSpec::new("storedown", &secret);
    spec.store_url = store_redis.url();
    spec.top = "ack_timeout = \"1s\"".into();
    let service = TestService::start(spec).await;

    let before = br#"{"id":"before-outage","event":"assets.updated"}"#;
    assert_eq!(service.post_signed(before).await.status().as_u16(), 200);
    let entries = wait_for_entries(
        STANDARD_REDIS,
        &service.spec.stream,
        1,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(entries.len(), 1, "forwarded before the outage");

    store_redis.kill();
    let during = br#"{"id":"during-outage","event":"assets.updated"}"#;
    let started = Instant::now();
    let response = service.post_signed(during).await;
    let elapsed = started.elapsed();
    let retry_after = response.headers().get("retry-after").cloned();
    let (status, json) = status_and_json(response).await;
    assert_eq!(status, 503, "{json}");
    assert_eq!(json["status"], "unavailable");
    assert!(retry_after.is_some(), "503 carries Retry-After");
    assert!(
        elapsed < Duration::from_millis(1500),
        "answered after {elapsed:?}"
    );

    store_redis.start();
    // The connection is remade on demand; the provider's retry gets through.
    let mut retried = None;
    for _ in 0..50 {
        let (status, json) = status_and_json(service.post_signed(during).await).await;
        if status == 200 {
            retried = Some(json);
            break;
        }
        assert_eq!(status, 503, "{json}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let retried = retried.expect("accepted after the store came back");
    assert_eq!(
        retried["status"], "accepted",
        "nothing was claimed by the 503"
    );

    let entries = wait_for_entries(
        STANDARD_REDIS,
        &service.spec.stream,
        2,
        Duration::from_secs(15),
    )
    .await;
    let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["before-outage", "during-outage"]);
    service.stop().await;
}

#[tokio::test]
async fn stalled_store_answers_503_within_ack_timeout() {
    let store_redis = PrivateRedis::start_new();
    let secret = secret_file(SECRET);
    let mut spec = ServiceSpec::new("stall", &secret);
    spec.store_url = store_redis.url();
    spec.top = "ack_timeout = \"300ms\"".into();
    let service = TestService::start(spec).await;
    let body = br#"{"id":"stalled","event":"assets.updated"}"#;

    // Warm the connection so the stall, not the connect, is what the request waits for.
    assert_eq!(
        service
            .post_signed(br#"{"event":"warm"}"#)
            .await
            .status()
            .as_u16(),
        200
    );

    let url = store_redis.url();
    let stall_started = Instant::now();
    let stall = tokio::spawn(async move {
        let mut conn = redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection_with_config(&test_redis_config())
            .await
            .unwrap();
        let _: redis::RedisResult<()> = redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg("1.5")
            .query_async(&mut conn)
            .await;
    });
    tokio::time::sleep(Duration::from_millis(100)).await;

    let started = Instant::now();
    let response = service.post_signed(body).await;
    let elapsed = started.elapsed();
    assert_eq!(response.status().as_u16(), 503);
    assert!(
        elapsed < Duration::from_millis(900),
        "answered after {elapsed:?}"
    );
    // The client gives up on DEBUG SLEEP before the server wakes, so wait out the stall.
    stall.await.unwrap();
    tokio::time::sleep_until((stall_started + Duration::from_millis(1700)).into()).await;

    // The write may have landed after the timeout; the retry then reads "duplicate". Either
    // way the event is forwarded exactly once.
    let (status, json) = status_and_json(service.post_signed(body).await).await;
    assert_eq!(status, 200, "{json}");
    let entries = wait_for_entries(
        STANDARD_REDIS,
        &service.spec.stream,
        3,
        Duration::from_secs(3),
    )
    .await;
    let stalled: Vec<_> = entries.iter().filter(|e| e.id == "stalled").collect();
    assert_eq!(stalled.len(), 1, "{entries:?}");
    service.stop().await;
}

#[tokio::test]
async fn sink_failing_then_recovering_gets_event_once() {
    let mut sink_redis = PrivateRedis::reserve();
    let secret = secret_file(SECRET);
    let mut spec = ServiceSpec::new("sinkrecover", &secret);
    spec.sink_url = sink_redis.url();
    let prefix = spec.key_prefix.clone();
    let service = TestService::start(spec).await;

    let body = br#"{"id":"wait-for-sink","event":"assets.updated"}"#;
    assert_eq!(service.post_signed(body).await.status().as_u16(), 200);

    // Let several rounds fail, then check the store recorded them.
    let mut conn = standard_conn().await;
    let state_key = format!("{prefix}:{{p0}}:state");
    let deadline = Instant::now() + Duration::from_secs(10);
    let attempts = loop {
        let states: Vec<String> = conn.hvals(&state_key).await.unwrap();
        let attempts: u32 = states
            .first()
            .and_then(|s| s.split('|').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        if attempts >= 3 || Instant::now() > deadline {
            break attempts;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(attempts >= 3, "expected failed rounds, saw {attempts}");

    sink_redis.start();
    let entries = wait_for_entries(
        &sink_redis.url(),
        &service.spec.stream,
        1,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(entries.len(), 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let entries = read_stream(&sink_redis.url(), &service.spec.stream).await;
    assert_eq!(entries.len(), 1, "forwarded once: {entries:?}");

    let inbox_len: usize = conn.xlen(format!("{prefix}:{{p0}}:inbox")).await.unwrap();
    assert_eq!(inbox_len, 0, "settled entries leave the inbox");
    service.stop().await;
}

#[tokio::test]
async fn exhausted_attempts_dead_lettered() {
    let sink_redis = PrivateRedis::reserve();
    let secret = secret_file(SECRET);
    let mut spec = ServiceSpec::new("dlq", &secret);
    spec.sink_url = sink_redis.url();
    spec.worker = "max_attempts = 3\nbackoff_initial = \"20ms\"\nbackoff_max = \"50ms\"".into();
    let prefix = spec.key_prefix.clone();
    let service = TestService::start(spec).await;

    let body = br#"{"id":"doomed","event":"assets.updated"}"#;
    assert_eq!(service.post_signed(body).await.status().as_u16(), 200);

    let store = RedisStore::open(&RedisStoreOptions {
        url: STANDARD_REDIS.into(),
        key_prefix: prefix.clone(),
        request_timeout: Duration::from_secs(2),
        visibility_timeout: Duration::from_secs(60),
    })
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let dead = loop {
        let dead = store.dead_letters(10).await.unwrap();
        if !dead.is_empty() || Instant::now() > deadline {
            break dead;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].event.id, "doomed");
    assert_eq!(dead[0].event.payload.as_ref(), body);
    assert_eq!(dead[0].sink, "events");
    assert_eq!(dead[0].attempt, 3);
    assert!(!dead[0].error.is_empty());

    let mut conn = standard_conn().await;
    let inbox_len: usize = conn.xlen(format!("{prefix}:{{p0}}:inbox")).await.unwrap();
    let retries: usize = conn.zcard(format!("{prefix}:{{p0}}:retry")).await.unwrap();
    assert_eq!(inbox_len, 0);
    assert_eq!(retries, 0);
    service.stop().await;
}

#[tokio::test]
async fn crash_between_forward_and_settle_yields_one_copy() {
    let prefix = unique("crash-settle");
    let stream = unique("crash-settle-sink");
    let options = |visibility_ms| RedisStoreOptions {
        url: STANDARD_REDIS.into(),
        key_prefix: prefix.clone(),
        request_timeout: Duration::from_secs(2),
        visibility_timeout: Duration::from_millis(visibility_ms),
    };
    let event = Event {
        id: "forwarded-not-settled".into(),
        source: "makini".into(),
        event_type: "assets.updated".into(),
        received_at_ms: 1,
        payload: bytes::Bytes::from_static(b"{}"),
    };
    let sink =
        RedisStreamSink::new(STANDARD_REDIS, &stream, None, Duration::from_secs(60)).unwrap();

    // The first worker forwards the event and dies before it settles.
    let crashed = RedisStore::open(&options(200)).unwrap();
    crashed
        .accept(
            &event,
            "makini:forwarded-not-settled",
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let claimed = crashed.claim(10, Duration::from_millis(100)).await.unwrap();
    assert_eq!(claimed.len(), 1);
    sink.deliver(&claimed[0].event).await.unwrap();
    drop(crashed);

    // Another worker reclaims it after the visibility timeout and forwards it again.
    let survivor = RedisStore::open(&options(200)).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reclaimed = survivor
        .claim(10, Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(
        reclaimed.len(),
        1,
        "the unsettled entry is handed out again"
    );
    assert_eq!(reclaimed[0].event, event);
    sink.deliver(&reclaimed[0].event).await.unwrap();
    survivor
        .settle(&reclaimed[0], Settlement::default())
        .await
        .unwrap();

    let entries = read_stream(STANDARD_REDIS, &stream).await;
    assert_eq!(
        entries.len(),
        1,
        "the sink skipped the second copy: {entries:?}"
    );
    let again = survivor
        .claim(10, Duration::from_millis(100))
        .await
        .unwrap();
    assert!(
        again.is_empty(),
        "settled entries are not handed out: {again:?}"
    );
}
