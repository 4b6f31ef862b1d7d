//! Fault injection under load: the store is killed and restarted while signed events keep
//! arriving. Every request must get 200 or 503 within the ack budget, and every event that got a
//! 200 must reach the sink exactly once.

mod common;

use common::{
    PrivateRedis, SECRET, STANDARD_REDIS, ServiceSpec, TestService, read_stream, secret_file,
};
use hookrelay::verify::Makini;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SENDERS: usize = 4;
const ACK_TIMEOUT: Duration = Duration::from_millis(500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_killed_under_load_loses_nothing() {
    let mut store_redis = PrivateRedis::start_durable();
    let secret = secret_file(SECRET);
    let mut spec = ServiceSpec::new("storekill", &secret);
    spec.store_url = store_redis.url();
    spec.top = "ack_timeout = \"500ms\"".into();
    // Entries claimed when the store died stay pending until this timeout, then another round
    // takes them. It is short, so they arrive while the test waits.
    spec.worker
        .push_str("\nvisibility_timeout = \"2s\"\nsink_timeout = \"1s\"");
    let service = Arc::new(TestService::start(spec).await);

    // Senders post distinct events for three seconds; the store dies at one second and comes
    // back half a second later.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut senders = Vec::new();
    for sender in 0..SENDERS {
        let service = service.clone();
        senders.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            let mut n = 0;
            while Instant::now() < deadline && n < 2000 {
                let id = format!("fault-{sender}-{n}");
                let body = format!(r#"{{"id":"{id}","event":"assets.updated"}}"#);
                let signature = Makini::sign_hex(SECRET.as_bytes(), body.as_bytes());
                let started = Instant::now();
                let response = service.post_makini(body.as_bytes(), Some(&signature)).await;
                outcomes.push((id, response.status().as_u16(), started.elapsed()));
                n += 1;
            }
            outcomes
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    store_redis.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    store_redis.start();

    let mut outcomes = Vec::new();
    for sender in senders {
        outcomes.extend(sender.await.unwrap());
    }
    let acknowledged: Vec<&str> = outcomes
        .iter()
        .filter(|(_, status, _)| *status == 200)
        .map(|(id, _, _)| id.as_str())
        .collect();
    let unavailable = outcomes
        .iter()
        .filter(|(_, status, _)| *status == 503)
        .count();
    let slowest = outcomes.iter().map(|(_, _, took)| *took).max().unwrap();

    for (id, status, took) in &outcomes {
        assert!(*status == 200 || *status == 503, "{id}: status {status}");
        assert!(*took < ACK_TIMEOUT * 3, "{id}: answered after {took:?}");
    }
    assert!(unavailable > 0, "the outage was not observed");

    // Wait for the sink to hold every acknowledged event.
    let stream = service.spec.stream.clone();
    let wait_until = Instant::now() + Duration::from_secs(30);
    let counts = loop {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for entry in read_stream(STANDARD_REDIS, &stream).await {
            *counts.entry(entry.id).or_default() += 1;
        }
        let all_there = acknowledged.iter().all(|id| counts.contains_key(*id));
        if all_there || Instant::now() > wait_until {
            break counts;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let lost: Vec<&&str> = acknowledged
        .iter()
        .filter(|id| !counts.contains_key(**id))
        .collect();
    let duplicated = counts.values().filter(|count| **count > 1).count();
    println!(
        "store killed under load: sent {}, acknowledged {}, answered 503 {}, delivered {}, \
         duplicated {duplicated}, lost {}, slowest answer {slowest:?}",
        outcomes.len(),
        acknowledged.len(),
        unavailable,
        counts.len(),
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "acknowledged but never delivered: {lost:?}"
    );
    assert_eq!(duplicated, 0, "delivered more than once");

    Arc::try_unwrap(service).ok().unwrap().stop().await;
}
