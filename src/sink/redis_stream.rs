//! Redis Stream sink: one `XADD` per event with the fields `id`, `delivery_id`, `source`,
//! `event_type`, `received_at` (RFC 3339, UTC) and `payload` (the raw body).
//!
//! The write is idempotent on the delivery id: a marker key, in the stream's hash slot, records
//! that the event was added, and a script checks it before the `XADD` in the same atomic step.
//! One script call adds a whole batch of events, in order.

use super::{Sink, SinkError};
use crate::event::{Event, loggable};
use async_trait::async_trait;
use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::time::{Duration, UNIX_EPOCH};

/// For each event, adds its entry unless its marker exists, then sets the marker. Returns 1
/// per event added and 0 per event already there.
///
/// `KEYS` are the events' markers followed by the stream. `ARGV` are the marker lifetime in
/// ms, the `MAXLEN` (an empty string for none), then each event's six field-value pairs.
///
/// An entry is added before its marker is set: should the marker write fail, a re-send adds a
/// second copy, whereas a marker without its entry would lose the event. When the script
/// fails part-way, the events before the failure keep their entries and markers, so a re-send
/// skips them.
const XADD_ONCE_SCRIPT: &str = r"
local stream = KEYS[#KEYS]
local added = {}
for i = 1, #KEYS - 1 do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    added[i] = 0
  else
    local first = 3 + (i - 1) * 12
    local last = first + 11
    if ARGV[2] == '' then
      redis.call('XADD', stream, '*', unpack(ARGV, first, last))
    else
      redis.call('XADD', stream, 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, first, last))
    end
    redis.call('SET', KEYS[i], '1', 'PX', ARGV[1])
    added[i] = 1
  end
end
return added
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
///
/// NOTE: a name whose first braces are empty (`a{}b`) has no tag, so Cluster hashes the whole
/// name, and no other key can share its slot. The client here is not a Cluster client.
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

impl RedisStreamSink {
    /// Runs the script for `events` and returns, per event, whether it was added (else it was
    /// in the stream already).
    async fn add_once(&self, events: &[Event]) -> Result<Vec<bool>, SinkError> {
        let window_ms = u64::try_from(self.dedupe_window.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let maxlen = self.maxlen.map(|n| n.to_string()).unwrap_or_default();

        let mut invocation = self.script.prepare_invoke();
        invocation.arg(window_ms).arg(maxlen);
        for event in events {
            let delivery_id = event.delivery_id();
            let received_at = UNIX_EPOCH + Duration::from_millis(event.received_at_ms);
            invocation
                .key(format!("{}:{delivery_id}", self.marker_prefix))
                .arg("id")
                .arg(&event.id)
                .arg("delivery_id")
                .arg(delivery_id)
                .arg("source")
                .arg(&event.source)
                .arg("event_type")
                .arg(&event.event_type)
                .arg("received_at")
                .arg(humantime::format_rfc3339_millis(received_at).to_string())
                .arg("payload")
                .arg(event.payload.as_ref());
        }
        invocation.key(&self.stream);

        let mut conn = self.conn.clone();
        let mut result = invocation.invoke_async::<Vec<i64>>(&mut conn).await;
        // After an outage the connection manager hands the first command the broken
        // connection, or its failed reconnect, and connects again for the next. One more try
        // spares a sink that is back another round of backoff; the markers make it safe.
        if let Err(error) = &result
            && (error.is_io_error() || error.is_unrecoverable_error() || error.is_timeout())
        {
            result = invocation.invoke_async::<Vec<i64>>(&mut conn).await;
        }
        let added = result
            .map_err(|e| SinkError::retryable(format!("redis stream {}: {e}", self.stream)))?;
        if added.len() != events.len() {
            return Err(SinkError::retryable(format!(
                "redis stream {}: the script returned {} results for {} events",
                self.stream,
                added.len(),
                events.len()
            )));
        }
        Ok(added.into_iter().map(|flag| flag == 1).collect())
    }
}

#[async_trait]
impl Sink for RedisStreamSink {
    async fn deliver(&self, event: &Event) -> Result<(), SinkError> {
        self.deliver_many(std::slice::from_ref(event))
            .await
            .pop()
            .unwrap_or_else(|| Err(SinkError::retryable("no result for the event")))
    }

    async fn deliver_many(&self, events: &[Event]) -> Vec<Result<(), SinkError>> {
        if events.is_empty() {
            return Vec::new();
        }
        match self.add_once(events).await {
            Ok(added) => {
                for (event, added) in events.iter().zip(added) {
                    if !added {
                        let delivery_id = event.delivery_id();
                        tracing::info!(
                            stream = %self.stream,
                            source = %event.source,
                            event_id = %loggable(&event.id),
                            %delivery_id,
                            "already in the stream; skipped"
                        );
                    }
                }
                vec![Ok(()); events.len()]
            }
            Err(error) => vec![Err(error); events.len()],
        }
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
