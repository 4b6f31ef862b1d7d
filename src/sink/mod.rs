//! Downstream destinations, one file per kind behind the [`Sink`] trait.

mod redis_stream;

pub use redis_stream::RedisStreamSink;

use crate::config::{SinkConfig, SinkKind};
use crate::event::Event;
use async_trait::async_trait;

/// A failed delivery to one sink.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    pub message: String,
    /// Whether another attempt may succeed; a permanent failure goes straight to the
    /// dead-letter queue.
    pub retryable: bool,
}

impl SinkError {
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
        }
    }
}

#[async_trait]
pub trait Sink: Send + Sync {
    /// Delivers `event`. Delivering the same event id again must not create a second copy
    /// downstream where the destination allows it to be detected, because a crash between a
    /// delivery and its acknowledgement makes the worker send it again.
    async fn deliver(&self, event: &Event) -> Result<(), SinkError>;
}

/// Builds the sink `config` describes. Connections are made on first use, so a destination
/// that is down at startup delays its events without stopping the service.
pub fn build(config: &SinkConfig) -> Result<Box<dyn Sink>, String> {
    match &config.kind {
        SinkKind::RedisStream {
            url,
            stream,
            maxlen,
            dedupe_window,
        } => Ok(Box::new(RedisStreamSink::new(
            url,
            stream,
            *maxlen,
            *dedupe_window,
        )?)),
    }
}
