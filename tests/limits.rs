//! Listener limits: slow or idle clients are cut off, the connection count is capped, and a
//! shutdown does not wait forever for a stalled client.

mod common;

use common::{SECRET, ServiceSpec, TestService, secret_file};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn service_with(label: &str, top: &str) -> (TestService, tempfile::NamedTempFile) {
    let secret = secret_file(SECRET);
    let mut spec = ServiceSpec::new(label, &secret);
    spec.top = top.into();
    (TestService::start(spec).await, secret)
}

/// Reads until the server closes the connection, or gives up after `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buffer = [0u8; 1024];
    let deadline = Instant::now() + limit;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn slow_headers_are_cut_off() {
    let (service, _secret) = service_with(
        "slowheaders",
        "header_timeout = \"300ms\"\nidle_timeout = \"400ms\"\nack_timeout = \"200ms\"",
    )
    .await;

    let mut idle = TcpStream::connect(service.running.addr).await.unwrap();
    let mut partial = TcpStream::connect(service.running.addr).await.unwrap();
    partial
        .write_all(b"POST /webhooks/makini HTTP/1.1\r\nhost: test\r\n")
        .await
        .unwrap();

    assert!(
        closed_within(&mut idle, Duration::from_secs(3)).await,
        "idle connection kept open"
    );
    assert!(
        closed_within(&mut partial, Duration::from_secs(3)).await,
        "connection with unfinished headers kept open"
    );
    service.stop().await;
}

#[tokio::test]
async fn connections_over_the_limit_are_closed() {
    let (service, _secret) = service_with("connlimit", "max_connections = 2").await;

    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(service.running.addr).await.unwrap();
        stream
            .write_all(b"POST /webhooks/makini HTTP/1.1\r\n")
            .await
            .unwrap();
        held.push(stream);
    }
    // Give the accept loop time to take both before the third arrives.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut extra = TcpStream::connect(service.running.addr).await.unwrap();
    assert!(
        closed_within(&mut extra, Duration::from_secs(2)).await,
        "a third connection was kept over the limit of two"
    );

    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let response = service
        .client
        .get(format!("{}/healthz", service.base))
        .send()
        .await;
    assert_eq!(
        response.unwrap().status().as_u16(),
        200,
        "served again once under the limit"
    );
    service.stop().await;
}

#[tokio::test]
async fn shutdown_does_not_wait_for_stalled_client() {
    let (service, _secret) = service_with(
        "grace",
        "shutdown_grace = \"500ms\"\nheader_timeout = \"60s\"\nbody_timeout = \"60s\"",
    )
    .await;

    // A request whose body never arrives keeps its connection busy.
    let mut stalled = TcpStream::connect(service.running.addr).await.unwrap();
    stalled
        .write_all(
            b"POST /webhooks/makini HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
              content-length: 100\r\n\r\n{",
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), service.stop())
        .await
        .expect("shutdown finished");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
}
