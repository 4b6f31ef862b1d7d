//! Reads every entry of a Redis Stream written by hookrelay's `redis_stream` sink and prints
//! the end-to-end latency: the time the entry was added (the millisecond part of its id, from
//! the Redis server's clock) minus the time hookrelay received the event (its `received_at`
//! field, RFC 3339). Both clocks are the same host's when Redis runs on loopback.
//!
//! ```text
//! cargo run --release --example stream_latency -- \
//!     --redis-url redis://127.0.0.1:6379 --stream makini.events --json
//! ```

use clap::Parser;
use redis::Value;
use std::time::UNIX_EPOCH;

/// Entries read per `XRANGE`.
const PAGE: usize = 10_000;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    #[arg(long)]
    stream: String,
    /// Prints one JSON object instead of a sentence.
    #[arg(long)]
    json: bool,
}

/// Returns the latency of one entry in milliseconds; `None` when a field is missing or
/// unreadable.
fn entry_latency_ms(id: &str, fields: &[Value]) -> Option<i64> {
    let added_ms: i64 = id.split('-').next()?.parse().ok()?;
    let received_at = fields.chunks(2).find_map(|pair| match pair {
        [Value::BulkString(key), Value::BulkString(value)] if key == b"received_at" => {
            std::str::from_utf8(value).ok()
        }
        _ => None,
    })?;
    let received = humantime::parse_rfc3339(received_at).ok()?;
    let received_ms = i64::try_from(received.duration_since(UNIX_EPOCH).ok()?.as_millis()).ok()?;
    Some(added_ms - received_ms)
}

/// Reads one page after `start` (exclusive); returns the latencies and the last id read.
fn read_page(
    conn: &mut redis::Connection,
    stream: &str,
    start: &str,
) -> redis::RedisResult<(Vec<i64>, Option<String>, usize)> {
    let entries: Vec<(String, Vec<Value>)> = redis::cmd("XRANGE")
        .arg(stream)
        .arg(start)
        .arg("+")
        .arg("COUNT")
        .arg(PAGE)
        .query(conn)?;
    let unreadable = entries
        .iter()
        .filter(|(id, fields)| entry_latency_ms(id, fields).is_none())
        .count();
    let latencies = entries
        .iter()
        .filter_map(|(id, fields)| entry_latency_ms(id, fields))
        .collect();
    Ok((
        latencies,
        entries.last().map(|(id, _)| id.clone()),
        unreadable,
    ))
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    match sorted.len().checked_sub(1) {
        Some(last) => sorted[((last as f64) * p).round() as usize],
        None => 0,
    }
}

fn main() -> redis::RedisResult<()> {
    let args = Args::parse();
    let client = redis::Client::open(args.redis_url.as_str())?;
    let mut conn = client.get_connection()?;
    let length: usize = redis::cmd("XLEN").arg(&args.stream).query(&mut conn)?;

    let mut latencies = Vec::with_capacity(length);
    let mut unreadable = 0;
    let mut start = "-".to_owned();
    // Entries added while this runs are left out; one extra page covers a partial last one.
    for _ in 0..=length / PAGE {
        let (page, last, bad) = read_page(&mut conn, &args.stream, &start)?;
        latencies.extend(page);
        unreadable += bad;
        match last {
            Some(id) => start = format!("({id}"),
            None => break,
        }
    }
    latencies.sort_unstable();

    let (p50, p99, max) = (
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(0),
    );
    if args.json {
        let result = serde_json::json!({
            "entries": latencies.len(),
            "unreadable": unreadable,
            "p50_ms": p50,
            "p99_ms": p99,
            "max_ms": max,
        });
        println!("{result}");
    } else {
        println!(
            "{} entries ({unreadable} unreadable): end-to-end p50 {p50} ms, p99 {p99} ms, \
             max {max} ms",
            latencies.len()
        );
    }
    Ok(())
}
