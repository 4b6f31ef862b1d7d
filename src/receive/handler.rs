//! The request handler of `POST /webhooks/{source}`.

use super::memory::Reservation;
use super::{ReceiveError, ReceiveState, SourceRuntime, decode, identify};
use crate::event::{Event, loggable, unix_millis};
use crate::ops::metrics::{ACK_SECONDS, DUPLICATES, REQUESTS, VERIFY_FAILURES};
use crate::store::AcceptOutcome;
use crate::verify::SignedRequest;
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

pub(super) async fn receive(
    State(state): State<Arc<ReceiveState>>,
    path: Result<Path<String>, PathRejection>,
    request: Request,
) -> Response {
    let started = Instant::now();
    // A path segment that is not valid UTF-8 cannot name a source.
    let Ok(Path(source_name)) = path else {
        return ReceiveError::UnknownSource.into_response();
    };
    let result = receive_event(&state, &source_name, request).await;

    // Unknown paths share one label, so that probing random names cannot grow the series.
    let label = match state.sources.contains_key(&source_name) {
        true => source_name,
        false => "unknown".to_owned(),
    };
    let status = match &result {
        Ok(_) => StatusCode::OK,
        Err(error) => error.status(),
    };
    metrics::counter!(REQUESTS, "source" => label.clone(), "status" => status.as_str().to_owned())
        .increment(1);
    metrics::histogram!(ACK_SECONDS, "source" => label).record(started.elapsed());
    result.into_response()
}

async fn receive_event(
    state: &ReceiveState,
    source_name: &str,
    request: Request,
) -> Result<Json<Value>, ReceiveError> {
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    let source = state
        .sources
        .get(source_name)
        .ok_or(ReceiveError::UnknownSource)?;

    check_policy(state, source, &parts).inspect_err(|error| {
        tracing::info!(source = %source.name, %error, "rejected delivery");
    })?;
    // Held until the response is built, so the bytes count while the event is stored.
    let mut reservation = state.body_memory.reservation();
    let body = read_body(state, source, headers, body, &mut reservation)
        .await
        .inspect_err(|error| {
            tracing::info!(source = %source.name, %error, "rejected delivery");
        })?;
    // Providers sign the body before they compress it, so the signature is checked over the
    // decoded bytes, and those are stored.
    // NOTE: decoding runs on the async worker thread, bounded by `body_limit` bytes of output.
    let body = if decode::is_encoded(headers) {
        let decoded = match reservation.grow(source.body_limit) {
            true => decode::decode_body(body, headers, source.body_limit),
            false => Err(overloaded(state)),
        };
        decoded.inspect_err(|error| {
            tracing::info!(source = %source.name, %error, "rejected delivery");
        })?
    } else {
        body
    };

    let received_at = SystemTime::now();
    let signed = SignedRequest {
        headers,
        query: parts.uri.query(),
        body: &body,
    };
    let mut verified = source
        .scheme
        .verify(&signed, received_at)
        .inspect_err(|error| {
            tracing::info!(source = %source.name, reason = error.reason(), %error, "rejected delivery");
            metrics::counter!(VERIFY_FAILURES, "source" => source.name.clone(), "reason" => error.reason())
                .increment(1);
        })?;
    if let Some(reply) = verified.reply.take() {
        tracing::info!(source = %source.name, "replied to a handshake; nothing stored");
        return Ok(Json(reply));
    }

    let identity = identify(source, headers, &body, verified);
    let event = Event {
        id: identity.event_id,
        source: source.name.clone(),
        event_type: identity.event_type,
        received_at_ms: unix_millis(received_at),
        payload: body,
    };

    let outcome = store_event(state, source, &event, &identity.dedupe_key, identity.window).await?;
    let status = match outcome {
        AcceptOutcome::Accepted => "accepted",
        AcceptOutcome::Duplicate => {
            metrics::counter!(DUPLICATES, "source" => source.name.clone()).increment(1);
            "duplicate"
        }
    };
    tracing::info!(
        source = %source.name,
        event_id = %loggable(&event.id),
        event_type = %loggable(&event.event_type),
        status,
        "received"
    );
    Ok(Json(json!({ "status": status, "id": event.id })))
}

/// Applies the source's client allow-list and accepted content types, before the body is
/// read.
fn check_policy(
    state: &ReceiveState,
    source: &SourceRuntime,
    parts: &axum::http::request::Parts,
) -> Result<(), ReceiveError> {
    if let Some(allowed) = &source.allowed_ips {
        // Missing only when the router is served without connect info; then no client is
        // known and the allow-list rejects the request.
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|info| info.0.ip());
        super::policy::check_client(allowed, &state.trusted_proxies, peer, &parts.headers)?;
    }
    super::policy::check_content(
        &source.content_types,
        &source.content_encodings,
        &parts.headers,
    )
}

/// Reads the whole body, stopping at the source's `body_limit`, within the body timeout. A
/// declared length above the limit is rejected before any byte is read. Each chunk is taken
/// from the shared body memory budget as it arrives.
async fn read_body(
    state: &ReceiveState,
    source: &SourceRuntime,
    headers: &HeaderMap,
    body: Body,
    reservation: &mut Reservation,
) -> Result<Bytes, ReceiveError> {
    let limit = source.body_limit;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(ReceiveError::TooLarge { limit });
    }

    let timeout = state.body_timeout;
    tokio::time::timeout(timeout, collect_body(state, source, body, reservation))
        .await
        .map_err(|_| ReceiveError::BodyTimeout(humantime::format_duration(timeout).to_string()))?
}

async fn collect_body(
    state: &ReceiveState,
    source: &SourceRuntime,
    mut body: Body,
    reservation: &mut Reservation,
) -> Result<Bytes, ReceiveError> {
    let limit = source.body_limit;
    // A body that arrives in one chunk is kept as it came, without a copy. When more chunks
    // follow, all of them are gathered in `collected`.
    // NOTE: the budget counts body bytes; the buffer's capacity can be up to twice that while
    // it grows.
    let mut first: Option<Bytes> = None;
    let mut collected = BytesMut::new();
    let mut length = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| ReceiveError::BodyRead(error.to_string()))?;
        let Ok(data) = frame.into_data() else {
            // Trailers carry nothing the body needs.
            continue;
        };
        if length + data.len() > limit {
            return Err(ReceiveError::TooLarge { limit });
        }
        if !reservation.grow(data.len()) {
            return Err(overloaded(state));
        }
        length += data.len();
        if first.is_none() && collected.is_empty() {
            first = Some(data);
            continue;
        }
        if let Some(first) = first.take() {
            collected.extend_from_slice(&first);
        }
        collected.extend_from_slice(&data);
    }
    Ok(first.unwrap_or_else(|| collected.freeze()))
}

fn overloaded(state: &ReceiveState) -> ReceiveError {
    ReceiveError::Overloaded {
        limit: state.body_memory.capacity(),
        retry_after_secs: state.retry_after_secs,
    }
}

/// Claims the key and stores the event, within the ack timeout.
async fn store_event(
    state: &ReceiveState,
    source: &SourceRuntime,
    event: &Event,
    key: &str,
    window: Duration,
) -> Result<AcceptOutcome, ReceiveError> {
    let unavailable = |detail: String| {
        tracing::warn!(source = %source.name, event_id = %loggable(&event.id), %detail, "cannot store event; responded 503");
        ReceiveError::Unavailable {
            detail,
            retry_after_secs: state.retry_after_secs,
        }
    };

    // NOTE: when the timeout fires the store may still complete the write. The provider then
    // retries, gets "duplicate", and the stored event is forwarded once, so nothing is lost.
    match tokio::time::timeout(state.ack_timeout, state.store.accept(event, key, window)).await {
        Ok(Ok(outcome)) => Ok(outcome),
        Ok(Err(error)) => Err(unavailable(error.to_string())),
        Err(_) => Err(unavailable(format!(
            "no answer within {}",
            humantime::format_duration(state.ack_timeout)
        ))),
    }
}
