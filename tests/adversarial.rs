//! Hostile and malformed input against the receive path. Every case checks the status it gets,
//! that nothing panics or responds 500, and that the service still accepts and forwards a
//! correctly signed event afterwards.
//!
//! Cases already covered elsewhere: a stalled body (`receive::stalled_body_gets_408`), a body
//! over the limit sent whole or streamed by reqwest (`receive::body_over_limit_is_413`), idle
//! and half-sent header connections (`limits::slow_headers_are_cut_off`), and `%ff` in a
//! source name (`receive::unknown_path_is_json_404`).

mod common;

use common::{
    SECRET, STANDARD_REDIS, ServiceSpec, TestService, free_port, read_stream, secret_file,
    status_and_json, test_redis_config,
};
use flate2::Compression;
use flate2::write::{GzEncoder, ZlibEncoder};
use hookrelay::verify::Makini;
use redis::AsyncCommands;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const FORWARD_WAIT: Duration = Duration::from_secs(15);
/// Maximum wait for a raw response, generous for a loaded two-core machine.
const RAW_WAIT: Duration = Duration::from_secs(10);

async fn service_with(
    label: &str,
    top: &str,
    source: &str,
) -> (TestService, tempfile::NamedTempFile) {
    let secret = secret_file(SECRET);
    let mut spec = ServiceSpec::new(label, &secret);
    spec.top = top.into();
    spec.source = source.into();
    (TestService::start(spec).await, secret)
}

/// Posts a new correctly signed event and waits until the sink has it.
async fn assert_healthy(service: &TestService) {
    let id = format!("health-{}", uuid::Uuid::new_v4().simple());
    let body = format!(r#"{{"id":"{id}","event":"health.check"}}"#);
    let (status, json) = status_and_json(service.post_signed(body.as_bytes()).await).await;
    assert_eq!(status, 200, "signed event after the attack: {json}");
    assert_eq!(json["status"], "accepted", "{json}");
    assert_forwarded(&service.spec.stream, &id).await;
}

/// Waits until the sink stream contains an entry with `id`, and returns its payload.
async fn assert_forwarded(stream: &str, id: &str) -> Vec<u8> {
    let deadline = Instant::now() + FORWARD_WAIT;
    loop {
        let entries = read_stream(STANDARD_REDIS, stream).await;
        if let Some(entry) = entries.into_iter().find(|entry| entry.id == id) {
            return entry.payload;
        }
        assert!(
            Instant::now() < deadline,
            "event {id} did not reach the sink"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Builds a raw POST to `path` whose body is signed with the test secret. `extra` contains
/// further header lines, each ending in CRLF.
fn raw_post(path: impl AsRef<[u8]>, body: &[u8], extra: &[u8]) -> Vec<u8> {
    let signature = Makini::sign_hex(SECRET.as_bytes(), body);
    let mut request = b"POST ".to_vec();
    request.extend_from_slice(path.as_ref());
    request.extend_from_slice(
        format!(
            " HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
             x-webhook-signature: {signature}\r\ncontent-length: {}\r\n",
            body.len()
        )
        .as_bytes(),
    );
    request.extend_from_slice(extra);
    request.extend_from_slice(b"\r\n");
    request.extend_from_slice(body);
    request
}

/// One HTTP response read from a raw connection.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    head: String,
    body: Vec<u8>,
}

/// Reads one response: the head, then `content-length` bytes of body, or everything until
/// the connection closes when a response that may have a body gives no length. `None` when the connection closes or
/// `limit` passes before a whole head arrives.
async fn read_response(
    stream: &mut (impl AsyncReadExt + Unpin),
    buffer: &mut Vec<u8>,
    limit: Duration,
) -> Option<RawResponse> {
    let deadline = Instant::now() + limit;
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(position) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break position + 4;
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
            Ok(Ok(read)) => buffer.extend_from_slice(&chunk[..read]),
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let status = head
        .get(9..12)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {head:?}"));
    // Interim (1xx), 204 and 304 responses have no body.
    let bodyless = status < 200 || status == 204 || status == 304;
    let length = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())?
    });
    let length = if bodyless { Some(0) } else { length };
    buffer.drain(..head_end);

    loop {
        if length.is_some_and(|length| buffer.len() >= length) {
            break;
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(read)) => buffer.extend_from_slice(&chunk[..read]),
        }
    }
    let body_len = length.unwrap_or(buffer.len()).min(buffer.len());
    let body = buffer.drain(..body_len).collect();
    Some(RawResponse { status, head, body })
}

/// Sends `request` on a new connection and reads the first response. Write errors are
/// ignored, because the service may close the connection before the request is complete.
async fn exchange(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(request).await;
    let mut buffer = Vec::new();
    read_response(&mut stream, &mut buffer, RAW_WAIT)
        .await
        .unwrap_or_else(|| {
            panic!(
                "no response to {:?}",
                String::from_utf8_lossy(&request[..request.len().min(200)])
            )
        })
}

/// Returns whether the service closes `stream` within `limit`, reading and dropping whatever
/// it sends until then.
async fn closed_within(stream: &mut (impl AsyncReadExt + Unpin), limit: Duration) -> bool {
    let mut chunk = [0u8; 8192];
    let deadline = Instant::now() + limit;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

fn json_of(response: &RawResponse, case: &str) -> serde_json::Value {
    serde_json::from_slice(&response.body).unwrap_or_else(|error| {
        panic!(
            "{case}: body of {} is not JSON ({error}): {:?}",
            response.status,
            String::from_utf8_lossy(&response.body)
        )
    })
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut encoder = ZlibEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

// ---- Oversized bodies ----------------------------------------------------------------

#[tokio::test]
async fn declared_oversize_answered_before_body() {
    let (service, _secret) = service_with("cl413", "", "body_limit = 1024").await;

    let mut stream = TcpStream::connect(service.running.addr).await.unwrap();
    let head = "POST /webhooks/makini HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
                x-webhook-signature: 00\r\ncontent-length: 10000000\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();

    // Not one byte of the body is sent, so the response can only come from the header.
    let mut buffer = Vec::new();
    let response = read_response(&mut stream, &mut buffer, RAW_WAIT)
        .await
        .expect("413 before the body is sent");
    assert_eq!(response.status, 413, "{}", response.head);
    assert_eq!(
        json_of(&response, "413 for the declared length")["status"],
        "rejected"
    );
    assert!(
        closed_within(&mut stream, RAW_WAIT).await,
        "connection with an unread body kept open"
    );
    assert_healthy(&service).await;
    service.stop().await;
}

#[tokio::test]
async fn expect_continue_answered_by_limit() {
    let (service, _secret) = service_with("expect", "", "body_limit = 1024").await;
    let head = |length: usize| {
        format!(
            "POST /webhooks/makini HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
             x-webhook-signature: 00\r\nexpect: 100-continue\r\ncontent-length: {length}\r\n\r\n"
        )
    };

    // Over the limit the client gets 413 instead of an invitation to send the body.
    let mut stream = TcpStream::connect(service.running.addr).await.unwrap();
    stream.write_all(head(10_000_000).as_bytes()).await.unwrap();
    let mut buffer = Vec::new();
    let response = read_response(&mut stream, &mut buffer, RAW_WAIT)
        .await
        .expect("a response to the head");
    assert_eq!(response.status, 413, "{}", response.head);

    // Within the limit the client gets 100 Continue, then the response to its body.
    let mut stream = TcpStream::connect(service.running.addr).await.unwrap();
    stream.write_all(head(2).as_bytes()).await.unwrap();
    let mut buffer = Vec::new();
    let interim = read_response(&mut stream, &mut buffer, RAW_WAIT)
        .await
        .expect("100 Continue");
    assert_eq!(interim.status, 100, "{}", interim.head);
    stream.write_all(b"{}").await.unwrap();
    let response = read_response(&mut stream, &mut buffer, RAW_WAIT)
        .await
        .expect("a response to the body");
    assert_eq!(response.status, 401, "{}", response.head);
    assert_healthy(&service).await;
    service.stop().await;
}

#[tokio::test]
async fn chunked_oversize_not_read_to_end() {
    const CHUNK: usize = 16 * 1024;
    const TOTAL: usize = 64 * 1024 * 1024;
    let (service, _secret) = service_with("chunk413", "", "body_limit = 65536").await;

    let stream = TcpStream::connect(service.running.addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let sender = tokio::spawn(async move {
        let head = "POST /webhooks/makini HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
                    x-webhook-signature: 00\r\ntransfer-encoding: chunked\r\n\r\n";
        writer.write_all(head.as_bytes()).await?;
        let mut chunk = format!("{CHUNK:x}\r\n").into_bytes();
        chunk.extend(std::iter::repeat_n(b'a', CHUNK));
        chunk.extend_from_slice(b"\r\n");
        let mut sent = 0;
        while sent < TOTAL {
            writer.write_all(&chunk).await?;
            sent += CHUNK;
        }
        writer.write_all(b"0\r\n\r\n").await?;
        Ok::<usize, std::io::Error>(sent)
    });

    let mut buffer = Vec::new();
    let response = read_response(&mut reader, &mut buffer, Duration::from_secs(30))
        .await
        .expect("a response while the body is still arriving");
    assert_eq!(response.status, 413, "{}", response.head);
    assert_eq!(
        json_of(&response, "413 for the chunked body")["status"],
        "rejected"
    );

    let sent = tokio::time::timeout(Duration::from_secs(30), sender)
        .await
        .expect("the service closed or drained the connection")
        .unwrap();
    assert!(
        sent.is_err(),
        "the service read all {TOTAL} bytes of a body over its 64 KiB limit"
    );
    assert_healthy(&service).await;
    service.stop().await;
}

/// A body sent in several chunks, with pauses so that each arrives on its own, is verified and
/// stored as one.
#[tokio::test]
async fn chunked_body_stored_whole() {
    let (service, _secret) = service_with("chunkwhole", "", "").await;
    let id = format!("chunks-{}", uuid::Uuid::new_v4().simple());
    let body = format!(
        r#"{{"id":"{id}","event":"a","body":["{}"]}}"#,
        "x".repeat(3000)
    );
    let signature = Makini::sign_hex(SECRET.as_bytes(), body.as_bytes());

    let mut stream = TcpStream::connect(service.running.addr).await.unwrap();
    let head = format!(
        "POST /webhooks/makini HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
         x-webhook-signature: {signature}\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for part in body.as_bytes().chunks(1000) {
        let mut chunk = format!("{:x}\r\n", part.len()).into_bytes();
        chunk.extend_from_slice(part);
        chunk.extend_from_slice(b"\r\n");
        stream.write_all(&chunk).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stream.write_all(b"0\r\n\r\n").await.unwrap();

    let mut buffer = Vec::new();
    let response = read_response(&mut stream, &mut buffer, RAW_WAIT)
        .await
        .expect("a response to the chunked body");
    assert_eq!(response.status, 200, "{}", response.head);
    let payload = assert_forwarded(&service.spec.stream, &id).await;
    assert_eq!(payload, body.as_bytes(), "forwarded byte for byte");
    service.stop().await;
}

#[tokio::test]
async fn body_memory_budget_gets_503() {
    let secret = secret_file(SECRET);
    let mut spec = ServiceSpec::new("bodymemory", &secret);
    spec.top = "max_body_memory = 100000".into();
    spec.source = "body_limit = 100000".into();
    spec.standard_source = "body_limit = 100000".into();
    let service = TestService::start(spec).await;

    // One client keeps 89,999 bytes of a 90,000-byte body in the service's memory.
    let mut holder = TcpStream::connect(service.running.addr).await.unwrap();
    let head = "POST /webhooks/makini HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
                x-webhook-signature: 00\r\ncontent-length: 90000\r\n\r\n";
    holder.write_all(head.as_bytes()).await.unwrap();
    holder.write_all(&[b' '; 89_999]).await.unwrap();

    // A second body of 20,000 bytes does not fit beside it. Until the service has read the
    // first body it may still be accepted, so it is sent again until the budget is full.
    let padding = "p".repeat(20_000);
    let body = format!(r#"{{"id":"memory-second","event":"a","padding":"{padding}"}}"#);
    let deadline = Instant::now() + RAW_WAIT;
    let response = loop {
        let response = service.post_signed(body.as_bytes()).await;
        if response.status().as_u16() != 200 || Instant::now() >= deadline {
            break response;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let retry_after = response.headers().get("retry-after").cloned();
    let (status, json) = status_and_json(response).await;
    assert_eq!(status, 503, "{json}");
    assert_eq!(json["status"], "unavailable");
    assert_eq!(retry_after.unwrap(), "5");

    // Once the first body is complete and has its response, its bytes return to the budget.
    holder.write_all(b" ").await.unwrap();
    let mut buffer = Vec::new();
    let first = read_response(&mut holder, &mut buffer, RAW_WAIT)
        .await
        .expect("a response to the completed body");
    assert_eq!(first.status, 401, "{}", first.head);
    let (status, json) = status_and_json(service.post_signed(body.as_bytes()).await).await;
    assert_eq!(status, 200, "{json}");
    assert_forwarded(&service.spec.stream, "memory-second").await;
    assert_healthy(&service).await;
    service.stop().await;
}

// ---- Slow clients --------------------------------------------------------------------

#[tokio::test]
async fn dribbled_headers_cut_off() {
    let (service, _secret) = service_with(
        "dribblehead",
        "header_timeout = \"1s\"\nidle_timeout = \"30s\"",
        "",
    )
    .await;
    let request = raw_post("/webhooks/makini", br#"{"event":"slow"}"#, b"");

    let stream = TcpStream::connect(service.running.addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    // At 50 ms a byte the head takes over 10 s, far past the header timeout.
    let sender = tokio::spawn(async move {
        for byte in request {
            if writer.write_all(&[byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });

    let started = Instant::now();
    let mut received = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(8), reader.read_to_end(&mut received))
        .await
        .is_ok();
    assert!(closed, "dribbling client kept for {:?}", started.elapsed());
    let text = String::from_utf8_lossy(&received);
    assert!(
        !text.contains(" 200 "),
        "dribbled request was served: {text}"
    );
    sender.abort();
    assert_healthy(&service).await;
    service.stop().await;
}

#[tokio::test]
async fn dribbled_body_gets_408() {
    let (service, _secret) = service_with(
        "dribblebody",
        "body_timeout = \"1s\"\nidle_timeout = \"30s\"",
        "",
    )
    .await;

    let stream = TcpStream::connect(service.running.addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    // Each byte resets the idle timer, so only the whole-body timeout can stop this client.
    let sender = tokio::spawn(async move {
        let head = "POST /webhooks/makini HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
                    x-webhook-signature: 00\r\ncontent-length: 400\r\n\r\n";
        writer.write_all(head.as_bytes()).await?;
        for _ in 0..400 {
            writer.write_all(b" ").await?;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok::<(), std::io::Error>(())
    });

    let started = Instant::now();
    let mut buffer = Vec::new();
    let response = read_response(&mut reader, &mut buffer, RAW_WAIT)
        .await
        .expect("an answer while the body is still dribbling");
    let elapsed = started.elapsed();
    assert_eq!(response.status, 408, "{}", response.head);
    assert_eq!(
        json_of(&response, "408 for the dribbled body")["status"],
        "rejected"
    );
    assert!(
        elapsed < Duration::from_secs(8),
        "answered after {elapsed:?}"
    );
    sender.abort();
    assert_healthy(&service).await;
    service.stop().await;
}

// ---- Header injection ----------------------------------------------------------------

#[tokio::test]
async fn control_bytes_in_headers_are_400() {
    let (service, _secret) = service_with("ctlheaders", "", "").await;
    let body = br#"{"event":"injected"}"#;
    let cases: [(&str, &[u8], u16); 8] = [
        ("bare CR in a value", b"x-note: a\rb\r\n", 400),
        ("bare LF splitting a value", b"x-note: a\nb\r\n", 400),
        ("obsolete line folding", b"x-note: a\r\n folded\r\n", 400),
        ("NUL in a value", b"x-request-id: a\0b\r\n", 400),
        ("escape in a value", b"x-request-id: \x1b[31mred\r\n", 400),
        ("DEL in a value", b"x-note: a\x7fb\r\n", 400),
        ("space before the colon", b"x-webhook-id : 1\r\n", 400),
        // The blank line ends the head there, so the forged header and the real body are
        // read as the body, which the signature does not match.
        (
            "CR LF CR LF and a forged header",
            b"x-request-id: a\r\n\r\nx-forged: 1\r\n",
            401,
        ),
    ];
    for (case, extra, expected) in cases {
        let response = exchange(
            service.running.addr,
            &raw_post("/webhooks/makini", body, extra),
        )
        .await;
        assert_eq!(response.status, expected, "{case}: {}", response.head);
    }
    assert_healthy(&service).await;
    assert!(
        read_stream(STANDARD_REDIS, &service.spec.stream)
            .await
            .iter()
            .all(|entry| entry.payload != body),
        "a rejected request was forwarded"
    );
    service.stop().await;
}

#[tokio::test]
async fn unusable_request_id_replaced() {
    let (service, _secret) = service_with("requestid", "", "").await;
    let body = br#"{"event":"rid"}"#;
    let signature = Makini::sign_hex(SECRET.as_bytes(), body);
    let send = |request_id: reqwest::header::HeaderValue| {
        service
            .client
            .post(service.url("makini"))
            .header("content-type", "application/json")
            .header("x-webhook-signature", signature.clone())
            .header("x-request-id", request_id)
            .body(body.to_vec())
            .send()
    };
    let echoed = |response: &reqwest::Response| {
        response
            .headers()
            .get("x-request-id")
            .expect("a request id in every response")
            .as_bytes()
            .to_vec()
    };

    let kept = send(reqwest::header::HeaderValue::from_static("trace-42.a_b"))
        .await
        .unwrap();
    assert_eq!(kept.status().as_u16(), 200);
    assert_eq!(echoed(&kept), b"trace-42.a_b");

    let long = "r".repeat(10 * 1024);
    let cases = [
        ("10 KiB", long.as_bytes()),
        ("not UTF-8", &b"id-\xff\xfe"[..]),
        ("tab inside", &b"a\tb"[..]),
        ("space inside", &b"a b"[..]),
    ];
    for (case, value) in cases {
        let value = reqwest::header::HeaderValue::from_bytes(value).unwrap();
        let response = send(value.clone()).await.unwrap();
        assert_eq!(response.status().as_u16(), 200, "{case}");
        let replacement = echoed(&response);
        assert_ne!(replacement, value.as_bytes(), "{case}: echoed as sent");
        let text = String::from_utf8(replacement).expect("the replacement is ASCII");
        assert!(uuid::Uuid::parse_str(&text).is_ok(), "{case}: {text:?}");
    }
    assert_healthy(&service).await;
    service.stop().await;
}

#[tokio::test]
async fn duplicate_signature_headers_checked_each() {
    let (service, _secret) = service_with("dupsig", "", "").await;
    let post = |body: Vec<u8>, values: Vec<String>| {
        let mut request = service
            .client
            .post(service.url("makini"))
            .header("content-type", "application/json")
            .body(body);
        for value in values {
            request = request.header("x-webhook-signature", value);
        }
        request.send()
    };

    let cases: [(&str, &[&str], u16); 6] = [
        ("wrong then right", &["wrong", "right"], 200),
        ("right then wrong", &["right", "wrong"], 200),
        ("two wrong", &["wrong", "wrong"], 401),
        ("malformed and wrong", &["garbage", "wrong"], 401),
        ("two malformed", &["garbage", "garbage"], 400),
        ("empty and wrong", &["", "wrong"], 401),
    ];
    for (case, kinds, expected) in cases {
        let body = format!(r#"{{"id":"dupsig-{case}","event":"a"}}"#).into_bytes();
        let values = kinds
            .iter()
            .map(|kind| match *kind {
                "right" => Makini::sign_hex(SECRET.as_bytes(), &body),
                "wrong" => Makini::sign_hex(b"another-secret", &body),
                "garbage" => "!!not a signature!!".to_owned(),
                _ => String::new(),
            })
            .collect();
        let response = post(body, values).await.unwrap();
        assert_eq!(response.status().as_u16(), expected, "{case}");
    }

    // Each copy costs one comparison per secret; the header limit bounds the count.
    let body = br#"{"id":"dupsig-many","event":"a"}"#.to_vec();
    let wrong = Makini::sign_hex(b"another-secret", &body);
    let response = post(body, vec![wrong; 90]).await.unwrap();
    assert_eq!(response.status().as_u16(), 401, "90 wrong copies");
    assert_healthy(&service).await;
    service.stop().await;
}

// ---- Invalid UTF-8 -------------------------------------------------------------------

#[tokio::test]
async fn non_utf8_bodies_stored_verbatim() {
    let (service, _secret) = service_with("utf8body", "", "").await;
    let utf16: Vec<u8> = "\u{feff}{\"id\":\"utf16-id\",\"event\":\"a\"}"
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    let cases: [(&str, Vec<u8>); 4] = [
        (
            "invalid UTF-8",
            b"\xff\xfe{\"event\":\"\xc0\xaf\"}".to_vec(),
        ),
        ("UTF-16 JSON", utf16),
        (
            "lone surrogate escape",
            br#"{"id":"\ud800","event":"a"}"#.to_vec(),
        ),
        (
            "Latin-1 JSON",
            b"{\"id\":\"caf\xe9\",\"event\":\"a\"}".to_vec(),
        ),
    ];
    for (case, body) in cases {
        let (status, json) = status_and_json(service.post_signed(&body).await).await;
        assert_eq!(status, 200, "{case}: {json}");
        let id = json["id"].as_str().unwrap().to_owned();
        assert!(
            id.starts_with("sha256:"),
            "{case}: keyed by body hash, got {id}"
        );
        let payload = assert_forwarded(&service.spec.stream, &id).await;
        assert_eq!(payload, body, "{case}: forwarded byte for byte");
    }
    assert_healthy(&service).await;
    service.stop().await;
}

#[tokio::test]
async fn non_utf8_headers_and_paths() {
    let (service, _secret) = service_with("utf8head", "", "id_headers = [\"x-event-id\"]").await;
    let addr = service.running.addr;
    let body = br#"{"event":"utf8"}"#;

    let mut request =
        b"POST /webhooks/makini HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
                        x-webhook-signature: \xff\xfe\r\ncontent-length: 16\r\n\r\n"
            .to_vec();
    request.extend_from_slice(body);
    let response = exchange(addr, &request).await;
    assert_eq!(
        response.status, 400,
        "signature not ASCII: {}",
        response.head
    );

    let mut request = raw_post("/webhooks/makini", body, b"");
    let at = request
        .windows(16)
        .position(|w| w == b"application/json")
        .unwrap();
    request.splice(at..at + 16, b"application/\xffjson".iter().copied());
    let response = exchange(addr, &request).await;
    assert_eq!(
        response.status, 415,
        "content type not ASCII: {}",
        response.head
    );
    assert_eq!(
        json_of(&response, "content type not ASCII")["status"],
        "rejected"
    );

    let response = exchange(
        addr,
        &raw_post("/webhooks/makini", body, b"content-encoding: \xff\r\n"),
    )
    .await;
    assert_eq!(response.status, 415, "content encoding not ASCII");

    // An id header that is not ASCII is skipped, and the body hash keys the event.
    let response = exchange(
        addr,
        &raw_post("/webhooks/makini", body, b"x-event-id: \xe9v\xe9nement\r\n"),
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.head);
    let id = json_of(&response, "id header not ASCII")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(id.starts_with("sha256:"), "{id}");

    let response = exchange(addr, &raw_post(b"/webhooks/mak\xffini", body, b"")).await;
    assert_eq!(
        response.status, 400,
        "raw byte in the path: {}",
        response.head
    );
    let response = exchange(addr, &raw_post(b"/webhooks/makini?q=\xff", body, b"")).await;
    assert_eq!(
        response.status, 400,
        "raw byte in the query: {}",
        response.head
    );
    let other = br#"{"event":"utf8","n":2}"#;
    let response = exchange(addr, &raw_post("/webhooks/makini?q=%ff%fe&%00", other, b"")).await;
    assert_eq!(
        response.status, 200,
        "escaped bytes in the query: {}",
        response.head
    );
    assert_healthy(&service).await;
    service.stop().await;
}

// ---- Header size ---------------------------------------------------------------------

#[tokio::test]
async fn oversized_headers_get_431() {
    let (service, _secret) = service_with("bighead", "", "").await;
    let addr = service.running.addr;
    let body = br#"{"event":"headers"}"#;

    let huge = format!("x-padding: {}\r\n", "p".repeat(512 * 1024));
    let response = exchange(addr, &raw_post("/webhooks/makini", body, huge.as_bytes())).await;
    assert_eq!(response.status, 431, "one 512 KiB header");

    let many: String = (0..150).map(|i| format!("x-extra-{i}: {i}\r\n")).collect();
    let response = exchange(addr, &raw_post("/webhooks/makini", body, many.as_bytes())).await;
    assert_eq!(response.status, 431, "150 headers");

    // Under both limits the request reaches the handler.
    let some: String = (0..80).map(|i| format!("x-extra-{i}: {i}\r\n")).collect();
    let response = exchange(addr, &raw_post("/webhooks/makini", body, some.as_bytes())).await;
    assert_eq!(response.status, 200, "80 extra headers: {}", response.head);

    let mut request = raw_post("/webhooks/makini", body, b"");
    let start = request
        .windows(21)
        .position(|w| w == b"x-webhook-signature: ")
        .unwrap()
        + 21;
    request.splice(start..start + 64, std::iter::repeat_n(b'!', 64 * 1024));
    let response = exchange(addr, &request).await;
    assert_eq!(response.status, 400, "64 KiB signature: {}", response.head);
    assert_eq!(json_of(&response, "64 KiB signature")["status"], "rejected");
    assert_healthy(&service).await;
    service.stop().await;
}

// ---- Methods and paths ---------------------------------------------------------------

#[tokio::test]
async fn other_methods_get_json_405() {
    let (service, _secret) = service_with("methods", "", "").await;
    let addr = service.running.addr;
    for method in [
        "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "FOO", "CONNECT",
    ] {
        let request = format!(
            "{method} /webhooks/makini HTTP/1.1\r\nhost: test\r\ncontent-length: 0\r\n\r\n"
        );
        let response = exchange(addr, request.as_bytes()).await;
        assert_eq!(response.status, 405, "{method}: {}", response.head);
        assert!(
            response
                .head
                .to_ascii_lowercase()
                .contains("allow: post\r\n"),
            "{method}: {}",
            response.head
        );
        assert_eq!(json_of(&response, method)["status"], "rejected");
    }
    let response = exchange(
        addr,
        b"HEAD /webhooks/makini HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(response.status, 405, "HEAD");
    assert!(
        response
            .head
            .to_ascii_lowercase()
            .contains("allow: post\r\n"),
        "HEAD: {}",
        response.head
    );
    for path in ["/healthz", "/readyz", "/metrics"] {
        let request = format!("POST {path} HTTP/1.1\r\nhost: test\r\ncontent-length: 0\r\n\r\n");
        let response = exchange(addr, request.as_bytes()).await;
        assert_eq!(response.status, 405, "POST {path}: {}", response.head);
        assert!(
            response
                .head
                .to_ascii_lowercase()
                .contains("allow: get, head\r\n"),
            "POST {path}: {}",
            response.head
        );
        assert_eq!(
            json_of(&response, &format!("POST {path}"))["status"],
            "rejected"
        );
    }
    assert_healthy(&service).await;
    service.stop().await;
}

#[tokio::test]
async fn traversal_and_long_paths_get_404() {
    let (service, _secret) = service_with("paths", "", "").await;
    let addr = service.running.addr;
    let body = br#"{"event":"path"}"#;
    let long = format!("/webhooks/{}", "a".repeat(10_000));
    // (path, status of a signed POST, status of a GET). A path of one segment under
    // /webhooks/ matches the webhook route, so a GET there is 405 and never reaches /metrics.
    let paths = [
        ("/webhooks/../metrics", 404, 404),
        ("/webhooks/%2e%2e/metrics", 404, 404),
        ("/webhooks/./makini", 404, 404),
        ("//webhooks/makini", 404, 404),
        ("/webhooks/makini/", 404, 404),
        ("/webhooks/..%2fmetrics", 404, 405),
        ("/webhooks/%2E%2E%2Fmetrics", 404, 405),
        ("/webhooks/..%5cmetrics", 404, 405),
        ("/webhooks/makini%00", 404, 405),
        ("/webhooks/makini%2f..%2f..%2fetc%2fpasswd", 404, 405),
        (long.as_str(), 404, 405),
    ];
    for (path, post_status, get_status) in paths {
        let shown = &path[..path.len().min(60)];
        let get = format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n").into_bytes();
        let requests = [
            ("POST", raw_post(path, body, b""), post_status),
            ("GET", get, get_status),
        ];
        for (method, request, expected) in requests {
            let response = exchange(addr, &request).await;
            let case = format!("{method} {shown}");
            assert_eq!(response.status, expected, "{case}: {}", response.head);
            assert_eq!(json_of(&response, &case)["status"], "rejected");
        }
    }

    let too_long = format!("/webhooks/{}", "a".repeat(70_000));
    let response = exchange(addr, &raw_post(&too_long, body, b"")).await;
    assert_eq!(response.status, 414, "70 KB path: {}", response.head);

    // The absolute form names the same path, so the request is served.
    let response = exchange(
        addr,
        &raw_post("http://elsewhere.invalid/webhooks/makini", body, b""),
    )
    .await;
    assert_eq!(response.status, 200, "absolute form: {}", response.head);
    assert_healthy(&service).await;
    service.stop().await;
}

// ---- JSON that resists parsing -------------------------------------------------------

#[tokio::test]
async fn json_nesting_bomb_keyed_by_hash() {
    let (service, _secret) = service_with("jsonbomb", "", "").await;
    let brackets = "[".repeat(100_000).into_bytes();
    let deep_id = format!("{{\"id\":{}", "[".repeat(100_000)).into_bytes();
    let deep_objects = format!(
        "{{\"id\":\"deep-object\",\"event\":{}\"x\"{}}}",
        "{\"a\":".repeat(1_000),
        "}".repeat(1_000)
    )
    .into_bytes();
    let cases = [
        ("100,000 brackets", brackets),
        ("brackets at the id pointer", deep_id),
        ("1,000 objects at the type pointer", deep_objects),
    ];
    for (case, body) in cases {
        let (status, json) = status_and_json(service.post_signed(&body).await).await;
        assert_eq!(status, 200, "{case}: {json}");
        let id = json["id"].as_str().unwrap().to_owned();
        assert!(
            id.starts_with("sha256:"),
            "{case}: keyed by body hash, got {id}"
        );
        let payload = assert_forwarded(&service.spec.stream, &id).await;
        assert_eq!(payload, body, "{case}: forwarded byte for byte");
    }
    assert_healthy(&service).await;
    service.stop().await;
}

#[tokio::test]
async fn odd_json_values_at_pointers() {
    let (service, _secret) = service_with("jsonodd", "", "").await;
    let nested_type = format!(
        "{{\"id\":\"nested-type\",\"event\":{}1{}}}",
        "[".repeat(100),
        "]".repeat(100)
    );
    // (case, body, expected id or None for the body hash, expected event type)
    let cases: [(&str, String, Option<&str>, &str); 7] = [
        (
            "within the depth limit",
            nested_type,
            Some("nested-type"),
            "",
        ),
        (
            "duplicate keys: the last wins",
            r#"{"id":"first","id":"second","event":"a","event":"b"}"#.into(),
            Some("second"),
            "b",
        ),
        (
            "integer id beyond 64 bits",
            r#"{"id":123456789012345678901234567890,"event":"a"}"#.into(),
            None,
            "a",
        ),
        ("float id", r#"{"id":1.5,"event":"a"}"#.into(), None, "a"),
        (
            "number beyond f64",
            r#"{"id":"big-float","event":"a","amount":1e400}"#.into(),
            None,
            "",
        ),
        (
            "integer id",
            r#"{"id":-42,"event":"a"}"#.into(),
            Some("-42"),
            "a",
        ),
        (
            "escaped newline in the id",
            r#"{"id":"a\nb","event":"line\r\nbreak"}"#.into(),
            Some("a\nb"),
            "line\r\nbreak",
        ),
    ];
    for (case, body, expected_id, expected_type) in cases {
        let (status, json) = status_and_json(service.post_signed(body.as_bytes()).await).await;
        assert_eq!(status, 200, "{case}: {json}");
        let id = json["id"].as_str().unwrap().to_owned();
        match expected_id {
            Some(expected) => assert_eq!(id, expected, "{case}"),
            None => assert!(
                id.starts_with("sha256:"),
                "{case}: keyed by body hash, got {id}"
            ),
        }
        let payload = assert_forwarded(&service.spec.stream, &id).await;
        assert_eq!(payload, body.as_bytes(), "{case}: forwarded byte for byte");
        let entries = read_stream(STANDARD_REDIS, &service.spec.stream).await;
        let entry = entries.iter().find(|entry| entry.id == id).unwrap();
        assert_eq!(entry.event_type, expected_type, "{case}");
    }
    assert_healthy(&service).await;
    service.stop().await;
}

// ---- Compressed bodies ---------------------------------------------------------------

const COMPRESSED_SOURCE: &str =
    "content_encodings = [\"identity\", \"gzip\", \"deflate\"]\nbody_limit = 1048576";

/// Posts `encoded` with `Content-Encoding: coding` and the signature of `signed`.
async fn post_encoded(
    service: &TestService,
    source: &str,
    signed: &[u8],
    encoded: Vec<u8>,
    coding: &str,
) -> reqwest::Response {
    service
        .client
        .post(service.url(source))
        .header("content-type", "application/json")
        .header("content-encoding", coding)
        .header(
            "x-webhook-signature",
            Makini::sign_hex(SECRET.as_bytes(), signed),
        )
        .body(encoded)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn compressed_body_decoded_then_verified() {
    let (service, _secret) = service_with("gzip", "", COMPRESSED_SOURCE).await;
    let cases = [
        ("gzip", "gzip", gzip(br#"{"id":"gz-1","event":"packed"}"#)),
        (
            "x-gzip",
            "x-gzip",
            gzip(br#"{"id":"gz-2","event":"packed"}"#),
        ),
        (
            "deflate",
            "deflate",
            zlib(br#"{"id":"gz-3","event":"packed"}"#),
        ),
        (
            "gzip between identities",
            "identity, gzip, identity",
            gzip(br#"{"id":"gz-4","event":"packed"}"#),
        ),
    ];
    for (index, (case, coding, encoded)) in cases.into_iter().enumerate() {
        let plain = format!(r#"{{"id":"gz-{}","event":"packed"}}"#, index + 1);
        let response = post_encoded(&service, "makini", plain.as_bytes(), encoded, coding).await;
        let (status, json) = status_and_json(response).await;
        assert_eq!(status, 200, "{case}: {json}");
        assert_eq!(
            json["id"],
            format!("gz-{}", index + 1),
            "{case}: id read from the decoded body"
        );
        let payload = assert_forwarded(&service.spec.stream, json["id"].as_str().unwrap()).await;
        assert_eq!(
            payload,
            plain.as_bytes(),
            "{case}: the decoded body is stored"
        );
    }

    // A signature over the compressed bytes is not the provider's signature.
    let encoded = gzip(br#"{"id":"gz-5","event":"packed"}"#);
    let response = post_encoded(&service, "makini", &encoded.clone(), encoded, "gzip").await;
    assert_eq!(
        response.status().as_u16(),
        401,
        "signature over the gzip bytes"
    );

    // A source that lists no compression responds 415 before reading the body.
    let encoded = gzip(br#"{"event":"packed"}"#);
    let response = post_encoded(&service, "svix", b"", encoded, "gzip").await;
    assert_eq!(
        response.status().as_u16(),
        415,
        "gzip to a source without it"
    );
    let response = post_encoded(&service, "makini", b"{}", b"{}".to_vec(), "br").await;
    assert_eq!(response.status().as_u16(), 415, "br is not listed");

    // Each stacked coding would be another pass over up to body_limit bytes.
    let plain = br#"{"id":"gz-6","event":"packed"}"#;
    let stacked = gzip(&zlib(plain));
    let response = post_encoded(&service, "makini", plain, stacked, "deflate, gzip").await;
    assert_eq!(response.status().as_u16(), 415, "gzip over deflate");
    let twice = gzip(&gzip(plain));
    let response = post_encoded(&service, "makini", plain, twice, "gzip, gzip").await;
    assert_eq!(response.status().as_u16(), 415, "gzip twice");
    assert_healthy(&service).await;
    service.stop().await;
}

#[tokio::test]
async fn gzip_bomb_gets_413() {
    let (service, _secret) = service_with("gzbomb", "", COMPRESSED_SOURCE).await;
    let zeros = vec![0u8; 10 * 1024 * 1024];
    let bomb = gzip(&zeros);
    assert!(bomb.len() < 64 * 1024, "bomb is {} bytes", bomb.len());
    let deflated = zlib(&zeros);

    let cases = [
        ("10 MB of zeros in gzip", bomb, "gzip"),
        ("10 MB of zeros in deflate", deflated, "deflate"),
    ];
    for (case, encoded, coding) in cases {
        let started = Instant::now();
        let response = post_encoded(&service, "makini", &zeros, encoded, coding).await;
        let elapsed = started.elapsed();
        let (status, json) = status_and_json(response).await;
        assert_eq!(status, 413, "{case}: {json}");
        assert!(
            elapsed < Duration::from_secs(5),
            "{case}: answered after {elapsed:?}"
        );
    }

    let mut flipped = gzip(br#"{"event":"corrupt","padding":"0123456789abcdef"}"#);
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0xff;
    let cases = [
        ("flipped byte", flipped, "gzip"),
        (
            "plain text labelled gzip",
            b"{\"event\":\"a\"}".to_vec(),
            "gzip",
        ),
        ("truncated", gzip(&zeros[..4096])[..20].to_vec(), "gzip"),
        ("gzip labelled deflate", gzip(b"{}"), "deflate"),
    ];
    for (case, encoded, coding) in cases {
        let response = post_encoded(&service, "makini", b"{}", encoded, coding).await;
        let (status, json) = status_and_json(response).await;
        assert_eq!(status, 400, "{case}: {json}");
        assert_eq!(json["status"], "rejected", "{case}");
    }
    assert_healthy(&service).await;
    service.stop().await;
}

// ---- Framing ------------------------------------------------------------------------

#[tokio::test]
async fn ambiguous_framing_rejected() {
    let (service, _secret) = service_with("framing", "", "").await;
    let addr = service.running.addr;
    let head = "POST /webhooks/makini HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
                x-webhook-signature: 00\r\n";
    let cases: [(&str, String, u16); 7] = [
        (
            "two different lengths",
            format!("{head}content-length: 2\r\ncontent-length: 3\r\n\r\n{{}}"),
            400,
        ),
        (
            "negative length",
            format!("{head}content-length: -1\r\n\r\n"),
            400,
        ),
        (
            "length with a sign",
            format!("{head}content-length: +2\r\n\r\n{{}}"),
            400,
        ),
        (
            "length not a number",
            format!("{head}content-length: 2x\r\n\r\n{{}}"),
            400,
        ),
        (
            "coding list not ending in chunked",
            format!("{head}transfer-encoding: chunked, gzip\r\n\r\n"),
            400,
        ),
        (
            "chunk size not hex",
            format!("{head}transfer-encoding: chunked\r\n\r\nzz\r\n{{}}\r\n0\r\n\r\n"),
            400,
        ),
        (
            "chunk size overflowing",
            format!(
                "{head}transfer-encoding: chunked\r\n\r\nfffffffffffffffffffff\r\n{{}}\r\n0\r\n\r\n"
            ),
            400,
        ),
    ];
    for (case, request, expected) in cases {
        let response = exchange(addr, request.as_bytes()).await;
        assert_eq!(response.status, expected, "{case}: {}", response.head);
    }
    assert_healthy(&service).await;
    service.stop().await;
}

#[tokio::test]
async fn length_and_chunked_together() {
    let (service, _secret) = service_with("smuggle", "", "").await;
    let body = br#"{"id":"smuggle-outer","event":"a"}"#;
    let signature = Makini::sign_hex(SECRET.as_bytes(), body);
    // Read by Content-Length the body would end early and leave "GET /metrics" as a second
    // request; read as chunked it is one body.
    let smuggled = "GET /metrics HTTP/1.1\r\nhost: test\r\n\r\n";
    let request = format!(
        "POST /webhooks/makini HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
         x-webhook-signature: {signature}\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n\
         {:x}\r\n{}\r\n0\r\n\r\n{smuggled}",
        body.len(),
        String::from_utf8_lossy(body)
    );

    let mut stream = TcpStream::connect(service.running.addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buffer = Vec::new();
    let first = read_response(&mut stream, &mut buffer, RAW_WAIT)
        .await
        .expect("a response");
    // Transfer-Encoding wins over Content-Length (RFC 9112), so the body is the
    // whole chunked event.
    assert_eq!(first.status, 200, "both framings: {}", first.head);
    assert_eq!(json_of(&first, "both framings")["id"], "smuggle-outer");
    // The connection is closed after the response, so the bytes after the body are never read
    // as a request.
    let closed = tokio::time::timeout(RAW_WAIT, stream.read_to_end(&mut buffer)).await;
    assert!(closed.is_ok(), "connection kept after ambiguous framing");
    let rest = String::from_utf8_lossy(&buffer);
    assert!(
        !rest.contains("HTTP/1.1"),
        "the smuggled request was answered: {rest}"
    );
    assert_healthy(&service).await;
    service.stop().await;
}

#[tokio::test]
async fn old_and_pipelined_requests_served() {
    let (service, _secret) = service_with("pipeline", "", "").await;
    let addr = service.running.addr;

    let body = br#"{"id":"http10","event":"a"}"#;
    let signature = Makini::sign_hex(SECRET.as_bytes(), body);
    let mut request = format!(
        "POST /webhooks/makini HTTP/1.0\r\ncontent-type: application/json\r\n\
         x-webhook-signature: {signature}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    let response = exchange(addr, &request).await;
    assert_eq!(
        response.status, 200,
        "HTTP/1.0 without Host: {}",
        response.head
    );
    assert_eq!(json_of(&response, "HTTP/1.0")["id"], "http10");

    let no_host = raw_post("/webhooks/makini", br#"{"id":"nohost","event":"a"}"#, b"");
    let no_host = String::from_utf8(no_host)
        .unwrap()
        .replace("host: test\r\n", "");
    let response = exchange(addr, no_host.as_bytes()).await;
    assert_eq!(
        response.status, 200,
        "HTTP/1.1 without Host: {}",
        response.head
    );

    // The listener speaks HTTP/1.1 only: the HTTP/2 preface gets no HTTP/2 frames back and
    // its connection is closed at once, not after the idle timeout.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let mut received = Vec::new();
    let closed = tokio::time::timeout(RAW_WAIT, stream.read_to_end(&mut received)).await;
    assert!(closed.is_ok(), "HTTP/2 preface: connection kept open");
    let text = String::from_utf8_lossy(&received);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 4"),
        "HTTP/2 preface answered with {received:?}"
    );

    // Three requests in one write get three responses, in order.
    let mut pipelined = Vec::new();
    for index in 0..3 {
        let body = format!(r#"{{"id":"piped-{index}","event":"a"}}"#);
        pipelined.extend(raw_post("/webhooks/makini", body.as_bytes(), b""));
    }
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(&pipelined).await.unwrap();
    let mut buffer = Vec::new();
    for index in 0..3 {
        let response = read_response(&mut stream, &mut buffer, RAW_WAIT)
            .await
            .unwrap_or_else(|| panic!("no answer to pipelined request {index}"));
        assert_eq!(response.status, 200, "pipelined {index}: {}", response.head);
        assert_eq!(
            json_of(&response, "pipelined")["id"],
            format!("piped-{index}")
        );
    }
    for id in ["http10", "nohost", "piped-0", "piped-1", "piped-2"] {
        assert_forwarded(&service.spec.stream, id).await;
    }
    assert_healthy(&service).await;
    service.stop().await;
}

// ---- Floods, against the binary so that its memory can be measured ------------------

/// The `hookrelay` binary serving a [`ServiceSpec`] config, with JSON logs in a file.
struct Binary {
    child: Child,
    base: String,
    spec: ServiceSpec,
    log_path: std::path::PathBuf,
    _dir: tempfile::TempDir,
    _secret: tempfile::NamedTempFile,
}

impl Binary {
    async fn start(label: &str, source: &str) -> Self {
        let secret = secret_file(SECRET);
        let mut spec = ServiceSpec::new(label, &secret);
        spec.source = source.into();
        spec.config();
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("hookrelay.toml");
        let text = spec.config_toml().replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\""),
        );
        std::fs::write(&config_path, text).unwrap();
        let log_path = dir.path().join("hookrelay.log");
        let child = spawn_binary(&config_path, &log_path);

        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = client.get(format!("{base}/healthz")).send().await;
            if ready.is_ok_and(|response| response.status().is_success()) {
                break;
            }
            assert!(Instant::now() < deadline, "hookrelay binary did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self {
            child,
            base,
            spec,
            log_path,
            _dir: dir,
            _secret: secret,
        }
    }

    fn url(&self) -> String {
        format!("{}/webhooks/makini", self.base)
    }

    /// Resident memory of the process in bytes, from `/proc/PID/status`.
    fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status");
        kib * 1024
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap()
    }

    /// Kills the process, then deletes the keys it wrote to the shared Redis.
    async fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let client = redis::Client::open(STANDARD_REDIS).unwrap();
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&test_redis_config())
            .await
            .unwrap();
        let tagged = format!("{}:{{p0}}", self.spec.key_prefix);
        let keys = ["inbox", "retry", "state", "dlq"].map(|name| format!("{tagged}:{name}"));
        let _: redis::RedisResult<()> = conn.del(&keys).await;
        let _: redis::RedisResult<()> = conn.del(&self.spec.stream).await;
    }
}

/// Kills the process, also when a failed assertion unwinds the test.
impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_binary(config: &Path, log: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_hookrelay"))
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .env("HOOKRELAY_LOG_FORMAT", "json")
        .env_remove("HOOKRELAY_REDIS_URL")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("hookrelay binary starts")
}

/// Sends `count` requests with a wrong signature over `connections` keep-alive connections,
/// and returns the rate achieved in requests per second.
async fn flood(url: &str, body: &[u8], count: usize, connections: usize) -> f64 {
    let wrong = Makini::sign_hex(b"not-the-secret", body);
    let started = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|task| {
            let url = url.to_owned();
            let body = bytes::Bytes::copy_from_slice(body);
            let wrong = wrong.clone();
            let share = count / connections + usize::from(task < count % connections);
            tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .pool_max_idle_per_host(1)
                    .build()
                    .unwrap();
                for _ in 0..share {
                    let response = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .header("x-webhook-signature", &wrong)
                        .body(body.clone())
                        .send()
                        .await
                        .expect("the service answers under the flood");
                    assert_eq!(response.status().as_u16(), 401);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    count as f64 / started.elapsed().as_secs_f64()
}

async fn inbox_length(binary: &Binary) -> usize {
    let client = redis::Client::open(STANDARD_REDIS).unwrap();
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&test_redis_config())
        .await
        .unwrap();
    let inbox = format!("{}:{{p0}}:inbox", binary.spec.key_prefix);
    conn.xlen(inbox).await.unwrap()
}

#[tokio::test]
async fn invalid_signature_flood_bounded() {
    const MIB: u64 = 1024 * 1024;
    let binary = Binary::start("flood", COMPRESSED_SOURCE).await;
    let url = binary.url();
    let small = vec![b'k'; 1024];
    let large = vec![b'm'; 1024 * 1024];
    let bomb = gzip(&vec![0u8; 10 * 1024 * 1024]);

    // Warm-up, so that buffers the allocator keeps count in the baseline.
    flood(&url, &small, 500, 4).await;
    flood(&url, &large, 8, 4).await;
    let before = binary.rss_bytes();

    let small_rate = flood(&url, &small, 20_000, 4).await;
    let large_rate = flood(&url, &large, 100, 4).await;
    let client = reqwest::Client::new();
    let started = Instant::now();
    for _ in 0..50 {
        let response = client
            .post(&url)
            .header("content-type", "application/json")
            .header("content-encoding", "gzip")
            .header("x-webhook-signature", "00")
            .body(bomb.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 413, "gzip bomb");
    }
    let bomb_rate = 50.0 / started.elapsed().as_secs_f64();
    let after = binary.rss_bytes();
    println!(
        "wrong signatures: {small_rate:.0} requests/s with 1 KiB bodies, {large_rate:.1} requests/s \
         with 1 MiB bodies; gzip bombs: {bomb_rate:.1} requests/s; RSS {} MiB before, {} MiB after",
        before / MIB,
        after / MIB
    );
    assert!(
        after < before + 32 * MIB,
        "RSS grew from {} MiB to {} MiB",
        before / MIB,
        after / MIB
    );
    assert_eq!(
        inbox_length(&binary).await,
        0,
        "a rejected request was stored"
    );

    let body = br#"{"id":"after-flood","event":"a"}"#;
    let response = client
        .post(&url)
        .header("content-type", "application/json")
        .header(
            "x-webhook-signature",
            Makini::sign_hex(SECRET.as_bytes(), body),
        )
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status().as_u16(),
        200,
        "signed event after the flood"
    );
    assert_forwarded(&binary.spec.stream, "after-flood").await;

    let log = binary.log();
    assert!(!log.contains(SECRET), "the secret appears in the log");
    binary.stop().await;
}

#[tokio::test]
async fn log_lines_stay_one_per_event() {
    let binary = Binary::start("logs", "id_headers = [\"x-event-id\"]").await;
    let client = reqwest::Client::new();
    let post = |body: &'static [u8], request_id: String| {
        client
            .post(binary.url())
            .header("content-type", "application/json")
            .header(
                "x-webhook-signature",
                Makini::sign_hex(SECRET.as_bytes(), body),
            )
            .header("x-request-id", request_id)
            .body(body)
            .send()
    };

    // The id and type carry line breaks and a forged log line once decoded from JSON.
    let forged = br#"{"id":"evt\n{\"level\":\"ERROR\",\"fields\":{\"message\":\"forged\"}}\r\nend","event":"type\n\u001b[31mred"}"#;
    let response = post(forged, "x".repeat(10 * 1024)).await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let wrong = reqwest::header::HeaderValue::from_static("deadbeef");
    let rejected = client
        .post(binary.url())
        .header("content-type", "application/json")
        .header("x-webhook-signature", wrong)
        .header("x-event-id", "id-with\ttab")
        .body(&b"{}"[..])
        .send()
        .await
        .unwrap();
    assert_eq!(rejected.status().as_u16(), 401);
    let stream = binary.spec.stream.clone();
    let forged_id = "evt\n{\"level\":\"ERROR\",\"fields\":{\"message\":\"forged\"}}\r\nend";
    assert_forwarded(&stream, forged_id).await;

    let log = binary.log();
    let mut received = 0;
    for line in log.lines() {
        let record: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|error| panic!("log line is not one JSON object ({error}): {line}"));
        let fields = &record["fields"];
        assert_ne!(fields["message"], "forged", "{line}");
        if fields["message"] == "received" {
            received += 1;
            let event_id = fields["event_id"].as_str().unwrap();
            assert!(
                !event_id.contains('\n') && !event_id.contains('\r'),
                "{line}"
            );
            assert!(event_id.starts_with("evt\\n"), "{line}");
            let request_id = record["span"]["request_id"].as_str().unwrap_or_default();
            assert!(
                request_id.len() <= 128,
                "request id logged at {} bytes",
                request_id.len()
            );
        }
    }
    assert_eq!(received, 1, "one line per accepted event:\n{log}");
    assert!(!log.contains(SECRET), "the secret appears in the log");
    binary.stop().await;
}
