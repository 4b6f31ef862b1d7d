//! The pure functions every webhook passes through: signature verification per scheme,
//! event id and type extraction, and the JSON envelope of the HTTP sink, on bodies of 1 KiB
//! and 1 MiB.
//!
//! ```text
//! cargo bench --bench hot_paths
//! ```

use axum::http::HeaderMap;
use base64::Engine;
use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hookrelay::config::{Config, SchemeKind};
use hookrelay::event::Event;
use hookrelay::receive::{SourceRuntime, identify};
use hookrelay::send::{SendRequest, signed_headers};
use hookrelay::sink::envelope;
use hookrelay::verify::{SignedRequest, Verified};
use std::hint::black_box;
use std::time::SystemTime;

const SIZES: [(&str, usize); 2] = [("1KiB", 1024), ("1MiB", 1024 * 1024)];

/// Schemes measured, with the signing secret each expects.
const SCHEMES: [(SchemeKind, &str); 7] = [
    (SchemeKind::Makini, "makini"),
    (SchemeKind::Standard, "standard"),
    (SchemeKind::Github, "github"),
    (SchemeKind::Stripe, "stripe"),
    (SchemeKind::Shopify, "shopify"),
    (SchemeKind::Slack, "slack"),
    (SchemeKind::Hmac, "hmac"),
];

/// Returns a JSON body of exactly `size` bytes with an id and an event type.
fn json_body(size: usize) -> Vec<u8> {
    let head = br#"{"id":"evt_0123456789","type":"work_orders.inserted","event":"work_orders.inserted","pad":""#;
    let mut body = Vec::with_capacity(size);
    body.extend_from_slice(head);
    body.resize(size - 2, b'x');
    body.extend_from_slice(b"\"}");
    body
}

fn secret_for(scheme: SchemeKind) -> String {
    match scheme {
        // A Standard Webhooks secret is `whsec_` and base64 of the key bytes.
        SchemeKind::Standard => format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode([7u8; 32])
        ),
        _ => "bench-signing-secret".to_owned(),
    }
}

/// Builds one source per scheme from a config file, with each secret in a file of `dir`.
fn sources(dir: &std::path::Path) -> Vec<(SchemeKind, &'static str, SourceRuntime)> {
    let mut toml = String::new();
    for (scheme, name) in SCHEMES {
        let path = dir.join(name);
        std::fs::write(&path, secret_for(scheme)).expect("write the secret file");
        toml.push_str(&format!(
            "[[sources]]\nname = \"{name}\"\nscheme = \"{name}\"\nsecrets = [\"file:{}\"]\n",
            path.display()
        ));
        if scheme == SchemeKind::Hmac {
            toml.push_str("hmac = { header = \"x-signature\", prefix = \"sha256=\" }\n");
        }
    }
    let config = Config::from_toml(&toml).expect("bench config parses");
    config
        .sources
        .iter()
        .zip(SCHEMES)
        .map(|(source, (scheme, name))| {
            let runtime = SourceRuntime::new(source).expect("bench source builds");
            (scheme, name, runtime)
        })
        .collect()
}

/// Signs `body` the way the provider of `scheme` would.
fn sign(scheme: SchemeKind, body: &[u8]) -> HeaderMap {
    let mut request = SendRequest::new(
        "http://127.0.0.1/webhooks/bench".into(),
        scheme,
        secret_for(scheme),
        body.to_vec(),
    );
    if scheme == SchemeKind::Hmac {
        request.hmac = Some(
            toml::from_str("header = \"x-signature\"\nprefix = \"sha256=\"")
                .expect("hmac settings parse"),
        );
    }
    signed_headers(&request).expect("sign the bench body")
}

fn verification(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let sources = sources(dir.path());
    let mut group = c.benchmark_group("verify");
    for (size_name, size) in SIZES {
        let body = json_body(size);
        group.throughput(Throughput::Bytes(size as u64));
        for (scheme, name, source) in &sources {
            let headers = sign(*scheme, &body);
            let request = SignedRequest::new(&headers, &body);
            let now = SystemTime::now();
            // A signature the scheme rejects would make the figure meaningless.
            source
                .scheme
                .verify(&request, now)
                .expect("bench signature verifies");
            group.bench_with_input(
                BenchmarkId::new(*name, size_name),
                &request,
                |b, request| b.iter(|| source.scheme.verify(black_box(request), now)),
            );
        }
    }
    group.finish();
}

fn identification(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let sources = sources(dir.path());
    let (_, _, makini) = &sources[0];
    let headers = HeaderMap::new();
    let mut group = c.benchmark_group("identify");
    for (size_name, size) in SIZES {
        let body = json_body(size);
        group.throughput(Throughput::Bytes(size as u64));
        let identity = identify(makini, &headers, &body, Verified::default());
        assert_eq!(identity.event_id, "evt_0123456789");
        group.bench_with_input(BenchmarkId::new("makini", size_name), &body, |b, body| {
            b.iter(|| identify(makini, &headers, black_box(body), Verified::default()))
        });
    }
    group.finish();
}

fn envelope_encoding(c: &mut Criterion) {
    let mut group = c.benchmark_group("http_envelope");
    for (size_name, size) in SIZES {
        let event = Event {
            id: "evt_0123456789".into(),
            source: "makini".into(),
            event_type: "work_orders.inserted".into(),
            received_at_ms: 1_700_000_000_123,
            payload: Bytes::from(json_body(size)),
        };
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("json", size_name), &event, |b, event| {
            b.iter(|| envelope(black_box(event)))
        });
    }
    group.finish();
}

criterion_group!(benches, verification, identification, envelope_encoding);
criterion_main!(benches);
