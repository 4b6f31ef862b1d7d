//! Sends signed Makini webhooks, each with a new event id, from `--concurrency` connections for
//! `--seconds`, and prints the rate of 200 responses. Every request goes to a loopback receiver
//! such as `hookrelay serve` or the `xadd_receiver` example.
//!
//! ```text
//! BENCH_SECRET=s cargo run --release --example http_load -- \
//!     --url http://127.0.0.1:18080/webhooks/makini --concurrency 64 --seconds 10
//! ```

use clap::Parser;
use hookrelay::config::SchemeKind;
use hookrelay::send::{SendRequest, signed_headers};
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
struct Args {
    #[arg(long)]
    url: String,
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Bytes of padding in each body, on top of about 100 bytes of JSON.
    #[arg(long, default_value_t = 512)]
    padding: usize,
    /// Environment variable that contains the signing secret.
    #[arg(long, default_value = "BENCH_SECRET")]
    secret_env: String,
}

#[derive(Default)]
struct Tally {
    ok: u64,
    other: u64,
    latencies: Vec<Duration>,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let host = reqwest::Url::parse(&args.url).expect("valid --url");
    let loopback = matches!(host.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
    assert!(loopback, "--url must point at a loopback address");
    let secret = std::env::var(&args.secret_env).expect("signing secret in the environment");

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()
        .expect("HTTP client");
    let padding = "x".repeat(args.padding);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);

    let tasks: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let (client, url, secret, padding) = (
                client.clone(),
                args.url.clone(),
                secret.clone(),
                padding.clone(),
            );
            tokio::spawn(async move {
                let mut tally = Tally::default();
                while Instant::now() < deadline {
                    let body = serde_json::to_vec(&serde_json::json!({
                        "id": uuid::Uuid::new_v4().to_string(),
                        "event": "assets.updated",
                        "body": [padding],
                    }))
                    .expect("JSON body");
                    let request =
                        SendRequest::new(url.clone(), SchemeKind::Makini, secret.clone(), body);
                    let headers = signed_headers(&request).expect("sign");
                    let begun = Instant::now();
                    let sent = client
                        .post(&url)
                        .headers(headers)
                        .body(request.body)
                        .send()
                        .await;
                    match sent {
                        Ok(response) if response.status() == 200 => {
                            let _ = response.bytes().await;
                            tally.ok += 1;
                            tally.latencies.push(begun.elapsed());
                        }
                        _ => tally.other += 1,
                    }
                }
                tally
            })
        })
        .collect();

    let mut total = Tally::default();
    for task in tasks {
        let tally = task.await.expect("load task");
        total.ok += tally.ok;
        total.other += tally.other;
        total.latencies.extend(tally.latencies);
    }
    let elapsed = started.elapsed().as_secs_f64();
    total.latencies.sort();
    let percentile = |p: f64| {
        let last = total.latencies.len().saturating_sub(1);
        total
            .latencies
            .get((last as f64 * p) as usize)
            .copied()
            .unwrap_or_default()
    };
    println!(
        "{} answered 200, {} other, in {elapsed:.1} s with {} connections = {:.0} req/s; \
         latency p50 {:?}, p99 {:?}",
        total.ok,
        total.other,
        args.concurrency,
        total.ok as f64 / elapsed,
        percentile(0.5),
        percentile(0.99),
    );
}
