//! Responses to requests that are not accepted.

use crate::verify::VerifyError;
use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Reason a request was not stored, mapped to its response status.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error("unknown source")]
    UnknownSource,
    /// The client address is outside the source's `allowed_ips`.
    #[error("client address {client} is not allowed")]
    Forbidden { client: String },
    /// The message lists the types or encodings the source accepts.
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("body larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("cannot read request body: {0}")]
    BodyRead(String),
    /// The body is not valid data in its declared `Content-Encoding`.
    #[error("cannot decode {coding} request body: {detail}")]
    BodyDecode { coding: String, detail: String },
    /// The client did not send the whole body within the body timeout.
    #[error("request body not received within {0}")]
    BodyTimeout(String),
    /// Request bodies in memory reached `max_body_memory`, so this one is not read further.
    #[error("request bodies in memory reached max_body_memory ({limit} bytes)")]
    Overloaded { limit: usize, retry_after_secs: u32 },
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("signature verification failed: {0}")]
    Verify(#[from] VerifyError),
    /// The store failed or did not respond within the ack timeout, so nothing is acknowledged.
    #[error("store unavailable: {detail}")]
    Unavailable {
        detail: String,
        retry_after_secs: u32,
    },
}

impl ReceiveError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::UnknownSource => StatusCode::NOT_FOUND,
            Self::Forbidden { .. } => StatusCode::FORBIDDEN,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyRead(_) | Self::BodyDecode { .. } => StatusCode::BAD_REQUEST,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Verify(VerifyError::Malformed { .. }) => StatusCode::BAD_REQUEST,
            Self::Verify(_) => StatusCode::UNAUTHORIZED,
            Self::Unavailable { .. } | Self::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Returns the message of the response body. Signature failures share one text so that a
    /// caller cannot probe which check failed, but a malformed header is named because the
    /// sender can fix it. Store errors are logged, not returned.
    fn client_message(&self) -> String {
        match self {
            Self::UnknownSource => "no source is configured at this path".into(),
            Self::Forbidden { .. } => "the client address is not allowed for this source".into(),
            Self::UnsupportedMediaType(message) => message.clone(),
            Self::TooLarge { limit } => format!("body exceeds the limit of {limit} bytes"),
            Self::BodyRead(_) => "the request body could not be read".into(),
            Self::BodyDecode { coding, .. } => {
                format!("the request body is not valid {coding} data")
            }
            Self::BodyTimeout(limit) => format!("the request body was not received within {limit}"),
            Self::MethodNotAllowed => "only POST is accepted here".into(),
            Self::Verify(error @ VerifyError::Malformed { .. }) => error.to_string(),
            Self::Verify(_) => "signature verification failed".into(),
            Self::Unavailable { .. } => "temporarily unable to store the event; retry later".into(),
            Self::Overloaded { .. } => {
                "too many request bodies are being received at once; retry later".into()
            }
        }
    }
}

impl IntoResponse for ReceiveError {
    fn into_response(self) -> Response {
        let status = self.status();
        let label = if status == StatusCode::SERVICE_UNAVAILABLE {
            "unavailable"
        } else {
            "rejected"
        };
        let body = Json(json!({ "status": label, "error": self.client_message() }));
        let mut response = (status, body).into_response();
        if let Self::MethodNotAllowed = self {
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
        }
        if let Self::Unavailable {
            retry_after_secs, ..
        }
        | Self::Overloaded {
            retry_after_secs, ..
        } = self
        {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        response
    }
}
