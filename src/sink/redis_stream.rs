//! Redis Stream sink: one `XADD` per event with the fields `id`, `source`, `event_type`,
//! `received_at` (RFC 3339, UTC) and `payload` (the raw body).
//!
//! The write is idempotent on the event id: a marker key, in the stream's hash slot, records
//! that the event was added, and a script checks it before the `XADD` in the same atomic step.

use super::{Sink, SinkError};
use crate::event::Event;
use async_trait::async_trait;
use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::time::{Duration, UNIX_EPOCH};

/// Adds the entry unless the marker exists, then sets the marker.
///
/// The entry is added before the marker is set: should the marker write fail, a re-send adds
/// a second copy, whereas a marker without its entry would lose the event.
const XADD_ONCE_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
if ARGV[2] == '' then
  redis.call('XADD', KEYS[2], '*', unpack(ARGV, 3))
else
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 3))
end
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
return 1
";

pub struct RedisStreamSink {
    conn: ConnectionManager,
    stream: String,
    marker_prefix: String,
    maxlen: Option<u64>,
    dedupe_window: Duration,
    script: Script,
}

impl RedisStreamSink {
    pub fn new(
        url: &str,
        stream: &str,
        maxlen: Option<u64>,
        dedupe_window: Duration,
    ) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("invalid Redis URL: {e}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(10)))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| format!("cannot set up Redis connection: {e}"))?;
        Ok(Self {
            conn,
            stream: stream.to_owned(),
            marker_prefix: format!("{}:hookrelay-sent", hash_tagged(stream)),
            maxlen,
            dedupe_window,
            script: Script::new(XADD_ONCE_SCRIPT),
        })
    }
}

/// Returns `stream` itself if it already carries a Redis Cluster hash tag, else `{stream}`, so
/// that a key starting with the result lives in the stream's slot.
fn hash_tagged(stream: &str) -> String {
    let has_tag = stream
        .find('{')
        .and_then(|open| stream[open + 1..].find('}'))
        .is_some_and(|len| len > 0);
    if has_tag {
        stream.to_owned()
    } else {
        format!("{{{stream}}}")
    }
}

#[async_trait]
impl Sink for RedisStreamSink {
    async fn deliver(&self, event: &Event) -> Result<(), SinkError> {
        let delivery_id = event.delivery_id();
        let marker = format!("{}:{delivery_id}", self.marker_prefix);
        let received_at = UNIX_EPOCH + Duration::from_millis(event.received_at_ms);
        let window_ms = u64::try_from(self.dedupe_window.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let maxlen = self.maxlen.map(|n| n.to_string()).unwrap_or_default();

        let mut invocation = self.script.prepare_invoke();
        invocation
            .key(marker)
            .key(&self.stream)
            .arg(window_ms)
            .arg(maxlen)
            .arg("id")
            .arg(&event.id)
            .arg("delivery_id")
            .arg(&delivery_id)
            .arg("source")
            .arg(&event.source)
            .arg("event_type")
            .arg(&event.event_type)
            .arg("received_at")
            .arg(humantime::format_rfc3339_millis(received_at).to_string())
            .arg("payload")
            .arg(event.payload.as_ref());

        let mut conn = self.conn.clone();
        let mut result = invocation.invoke_async::<i64>(&mut conn).await;
        // After an outage the connection manager hands the first command the broken
        // connection, or its failed reconnect, and connects again for the next. One more try
        // spares a sink that is back another round of backoff; the marker makes it safe.
        if let Err(error) = &result
            && (error.is_io_error() || error.is_unrecoverable_error() || error.is_timeout())
        {
            result = invocation.invoke_async::<i64>(&mut conn).await;
        }
        let added = result
            .map_err(|e| SinkError::retryable(format!("redis stream {}: {e}", self.stream)))?;
        if added == 0 {
            tracing::info!(stream = %self.stream, %delivery_id, "already in the stream; skipped");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::hash_tagged;

    #[test]
    fn plain_stream_gets_a_tag() {
        assert_eq!(hash_tagged("makini.events"), "{makini.events}");
    }

    #[test]
    fn tagged_stream_keeps_its_tag() {
        assert_eq!(hash_tagged("events{makini}"), "events{makini}");
    }

    #[test]
    fn empty_braces_are_not_a_tag() {
        assert_eq!(hash_tagged("a{}b"), "{a{}b}");
    }
}
