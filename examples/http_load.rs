//! Sends signed Makini webhooks from `--concurrency` keep-alive connections for `--seconds`
//! and prints the rate and the latency of the 200 responses. Every request goes to a loopback
//! receiver such as `hookrelay serve` or the `xadd_receiver` example.
//!
//! The events are generated and signed before the clock starts: `--events` distinct bodies of
//! exactly `--body-size` bytes, with the ids `evt-0`, `evt-1`, ... Each is sent at most once,
//! so every request does the work of a new event, and two runs with the same flags send the
//! same events. A run that uses up the events stops early and says so.
//!
//! ```text
//! BENCH_SECRET=s cargo run --release --example http_load -- \
//!     --url http://127.0.0.1:18080/webhooks/makini --concurrency 64 --seconds 10
//! ```
//!
//! With `--rate`, requests start on a fixed schedule of that many per second in total; the
//! latency is measured from the moment each request is sent.

use bytes::Bytes;
use clap::Parser;
use hookrelay::verify::Makini;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
struct Args {
    #[arg(long)]
    url: String,
    /// Connections sending at the same time.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Length of the run in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Requests per second in total; as fast as the receiver responds when unset.
    #[arg(long)]
    rate: Option<f64>,
    /// Distinct events generated before the run; the run stops early when all are sent.
    #[arg(long, default_value_t = 200_000)]
    events: usize,
    /// Size of each body in bytes (at least 100).
    #[arg(long, default_value_t = 1024)]
    body_size: usize,
    /// Environment variable that contains the signing secret.
    #[arg(long, default_value = "BENCH_SECRET")]
    secret_env: String,
    /// Prints one JSON object instead of a sentence.
    #[arg(long)]
    json: bool,
}

/// A signed request, ready to send.
struct SignedEvent {
    body: Bytes,
    signature: HeaderValue,
}

/// Responses counted by one connection, with the latency of each 200 in microseconds.
#[derive(Default)]
struct Tally {
    ok: u64,
    other: u64,
    failed: u64,
    latencies_us: Vec<u32>,
}

/// Returns the JSON body of event `index`, padded to exactly `size` bytes.
fn event_body(index: usize, size: usize) -> Vec<u8> {
    let head = format!(r#"{{"id":"evt-{index}","event":"assets.updated","body":[""#);
    let tail = r#""]}"#;
    let padding = size.saturating_sub(head.len() + tail.len());
    let mut body = Vec::with_capacity(size);
    body.extend_from_slice(head.as_bytes());
    body.resize(head.len() + padding, b'x');
    body.extend_from_slice(tail.as_bytes());
    body
}

fn generate_events(count: usize, size: usize, secret: &[u8]) -> Vec<SignedEvent> {
    (0..count)
        .map(|index| {
            let body = event_body(index, size);
            let signature = HeaderValue::from_str(&Makini::sign_hex(secret, &body))
                .expect("a hex signature is a valid header value");
            SignedEvent {
                body: Bytes::from(body),
                signature,
            }
        })
        .collect()
}

/// Shared by every connection: the events and the position of the next one to send.
struct Plan {
    url: reqwest::Url,
    events: Vec<SignedEvent>,
    next: AtomicUsize,
    exhausted: AtomicBool,
    started: Instant,
    deadline: Instant,
    /// Time between two request starts, across all connections; `None` without `--rate`.
    interval: Option<Duration>,
}

impl Plan {
    /// Takes the next event and waits until its scheduled start; `None` when the run is over.
    async fn next_event(&self) -> Option<&SignedEvent> {
        let index = self.next.fetch_add(1, Ordering::Relaxed);
        let Some(event) = self.events.get(index) else {
            self.exhausted.store(true, Ordering::Relaxed);
            return None;
        };
        if let Some(interval) = self.interval {
            let due = self.started + interval.mul_f64(index as f64);
            if due >= self.deadline {
                return None;
            }
            tokio::time::sleep_until(due.into()).await;
        }
        (Instant::now() < self.deadline).then_some(event)
    }
}

async fn send_events(client: reqwest::Client, plan: Arc<Plan>) -> Tally {
    let mut tally = Tally::default();
    while let Some(event) = plan.next_event().await {
        let mut headers = HeaderMap::with_capacity(2);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert("x-webhook-signature", event.signature.clone());

        let begun = Instant::now();
        let sent = client
            .post(plan.url.clone())
            .headers(headers)
            .body(event.body.clone())
            .send()
            .await;
        match sent {
            Ok(response) => {
                let status = response.status();
                // The body is read so the connection can carry the next request.
                let _ = response.bytes().await;
                if status == 200 {
                    tally.ok += 1;
                    let micros = begun.elapsed().as_micros();
                    tally
                        .latencies_us
                        .push(u32::try_from(micros).unwrap_or(u32::MAX));
                } else {
                    tally.other += 1;
                }
            }
            Err(_) => tally.failed += 1,
        }
    }
    tally
}

/// Returns the `p` quantile (0 to 1) of sorted latencies, in milliseconds.
fn percentile_ms(sorted_us: &[u32], p: f64) -> f64 {
    let Some(last) = sorted_us.len().checked_sub(1) else {
        return 0.0;
    };
    let index = ((last as f64) * p).round() as usize;
    f64::from(sorted_us[index.min(last)]) / 1000.0
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let url = reqwest::Url::parse(&args.url).expect("valid --url");
    let loopback = matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
    assert!(loopback, "--url must point at a loopback address");
    assert!(args.body_size >= 100, "--body-size must be at least 100");
    let secret = std::env::var(&args.secret_env).expect("signing secret in the environment");

    let events = generate_events(args.events, args.body_size, secret.as_bytes());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()
        .expect("HTTP client");
    let started = Instant::now();
    let plan = Arc::new(Plan {
        url,
        events,
        next: AtomicUsize::new(0),
        exhausted: AtomicBool::new(false),
        started,
        deadline: started + Duration::from_secs(args.seconds),
        interval: args
            .rate
            .filter(|rate| *rate > 0.0)
            .map(|rate| Duration::from_secs_f64(1.0 / rate)),
    });

    let tasks: Vec<_> = (0..args.concurrency)
        .map(|_| tokio::spawn(send_events(client.clone(), plan.clone())))
        .collect();
    let mut total = Tally::default();
    for task in tasks {
        let tally = task.await.expect("load task");
        total.ok += tally.ok;
        total.other += tally.other;
        total.failed += tally.failed;
        total.latencies_us.extend(tally.latencies_us);
    }
    let elapsed = started.elapsed().as_secs_f64();
    total.latencies_us.sort_unstable();
    print_result(&args, &plan, &total, elapsed);
}

fn print_result(args: &Args, plan: &Plan, total: &Tally, elapsed: f64) {
    let rate = total.ok as f64 / elapsed;
    let exhausted = plan.exhausted.load(Ordering::Relaxed);
    let (p50, p99, p999) = (
        percentile_ms(&total.latencies_us, 0.50),
        percentile_ms(&total.latencies_us, 0.99),
        percentile_ms(&total.latencies_us, 0.999),
    );
    if args.json {
        let result = serde_json::json!({
            "ok": total.ok,
            "other_status": total.other,
            "failed": total.failed,
            "seconds": elapsed,
            "requests_per_second": rate,
            "p50_ms": p50,
            "p99_ms": p99,
            "p999_ms": p999,
            "events_exhausted": exhausted,
        });
        println!("{result}");
        return;
    }
    println!(
        "{} responded 200, {} other status, {} failed, in {elapsed:.1} s with {} connections \
         = {rate:.0} req/s; latency p50 {p50:.2} ms, p99 {p99:.2} ms, p99.9 {p999:.2} ms",
        total.ok, total.other, total.failed, args.concurrency,
    );
    if exhausted {
        println!(
            "all {} events were sent before the time ran out",
            plan.events.len()
        );
    }
}
