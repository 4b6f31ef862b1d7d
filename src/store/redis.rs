//! The Redis backend.
//!
//! Keys, all under one hash tag so that every script and transaction touches a single Redis
//! Cluster slot (`P` is the configured prefix):
//! - `P:{p0}:seen:<source>:<key>`: idempotency key, a string that expires with the window;
//! - `P:{p0}:inbox`: the inbox stream, read through the consumer group `hookrelay`;
//! - `P:{p0}:retry`: sorted set of inbox entry ids waiting for a retry, scored by due time (ms);
//! - `P:{p0}:state`: hash of entry id to `attempt|sink,sink`, the progress of entries retried;
//! - `P:{p0}:dlq`: the dead-letter stream.
//!
//! An entry stays in the inbox and in the group's pending list until it is settled with nothing
//! left to do. A process that dies mid-delivery therefore leaves it pending, and another worker
//! reclaims it once it has been idle for the visibility timeout. An entry waiting for a retry
//! is pending too; the reclaim pass leaves those alone because they are in the retry set.

use super::{
    AcceptOutcome, DeadLetterRecord, Delivery, ReplaySelection, Replayed, Settlement, Store,
    StoreError, StoreStats,
};
use crate::event::{Event, unix_millis};
use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

const GROUP: &str = "hookrelay";

/// Claims the idempotency key and appends the event, or reports a duplicate.
///
/// The stream entry is written before the key: if the key write then failed (out of memory),
/// the event would be stored without its key and a retry could store it again, which is a
/// duplicate at worst. The reverse order could leave a claimed key with no event, a loss.
///
/// The key's value is a token unique to the request, so that a retried call of the same
/// request, after a lost response, recognises its own earlier write and still reports
/// "accepted".
const ACCEPT_SCRIPT: &str = r"
local prior = redis.call('GET', KEYS[1])
if prior then
  if prior == ARGV[2] then
    return 1
  end
  return 0
end
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 3))
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[1])
return 1
";

/// Takes the retries that are due out of the retry set and claims their entries for this
/// consumer, in one step so two workers never take the same retry.
const PROMOTE_SCRIPT: &str = r"
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[3], 'LIMIT', 0, ARGV[4])
if #ids == 0 then
  return {}
end
redis.call('ZREM', KEYS[2], unpack(ids))
return redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, unpack(ids))
";

/// Makes retries owed to sink `ARGV[2]` due at `ARGV[1]` (ms). Looks at up to `ARGV[4]`
/// retries from position `ARGV[3]` of those due in the range `ARGV[6]` to `ARGV[7]`, in order
/// of due time, and moves up to `ARGV[5]` of them. Returns the ids moved, then the count of
/// retries looked at and left alone, then the count looked at.
///
/// Every moved retry gets the same due time, so the next claims take them in the order of
/// their ids, which is the order of arrival.
const BRING_FORWARD_SCRIPT: &str = r"
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[6], ARGV[7], 'LIMIT', ARGV[3], ARGV[4])
local moved = {}
local skipped = 0
local limit = tonumber(ARGV[5])
for _, id in ipairs(ids) do
  if #moved >= limit then
    break
  end
  local owed = false
  local state = redis.call('HGET', KEYS[2], id)
  if state then
    local bar = string.find(state, '|', 1, true)
    if bar then
      for name in string.gmatch(string.sub(state, bar + 1), '[^,]+') do
        if name == ARGV[2] then
          owed = true
        end
      end
    end
  end
  if owed then
    redis.call('ZADD', KEYS[1], ARGV[1], id)
    moved[#moved + 1] = id
  else
    skipped = skipped + 1
  end
end
moved[#moved + 1] = skipped
moved[#moved + 1] = #ids
return moved
";

/// Retries looked at per call of [`BRING_FORWARD_SCRIPT`], so that one call stays short.
const BRING_FORWARD_PAGE: usize = 1000;

/// Moves dead letters back to the inbox. Each handle in `ARGV[2..]` that is still in the
/// dead-letter stream, and is of the sink `ARGV[1]` unless that is empty, is moved: its event is
/// appended to the inbox, recorded as owed to that sink alone with no round made, and the
/// record is deleted. Returns `[dead-letter id, inbox id, event id, sink]` per record moved.
///
/// Every field is checked before the first write of a record, because Redis does not roll a
/// script back when a command in it fails.
const REPLAY_SCRIPT: &str = r"
local moved = {}
for i = 2, #ARGV do
  local found = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])
  if #found == 1 then
    local flat = found[1][2]
    local record = {}
    for j = 1, #flat, 2 do
      record[flat[j]] = flat[j + 1]
    end
    local complete = record['id'] and record['source'] and record['type']
      and record['received_at'] and record['payload'] and record['sink']
    if complete and (ARGV[1] == '' or record['sink'] == ARGV[1]) then
      local entry = redis.call('XADD', KEYS[2], '*',
        'id', record['id'], 'source', record['source'], 'type', record['type'],
        'received_at', record['received_at'], 'payload', record['payload'])
      redis.call('HSET', KEYS[3], entry, '0|' .. record['sink'])
      redis.call('XDEL', KEYS[1], ARGV[i])
      moved[#moved + 1] = {ARGV[i], entry, record['id'], record['sink']}
    end
  end
end
return moved
";

/// Dead letters read and moved per round trip of a replay.
const REPLAY_PAGE: usize = 100;

/// Key names of one deployment.
#[derive(Debug, Clone)]
struct Keys {
    prefix: String,
    inbox: String,
    retry: String,
    state: String,
    dlq: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        let tagged = format!("{prefix}:{{p0}}");
        Self {
            prefix: tagged.clone(),
            inbox: format!("{tagged}:inbox"),
            retry: format!("{tagged}:retry"),
            state: format!("{tagged}:state"),
            dlq: format!("{tagged}:dlq"),
        }
    }

    fn seen(&self, key: &str) -> String {
        format!("{}:seen:{key}", self.prefix)
    }
}

/// Position of the reclaim pass over idle pending entries.
struct ReclaimCursor {
    start: String,
    next_run: Instant,
}

pub struct RedisStore {
    /// Serves the request path only, so it never waits behind a blocking worker read.
    accept_conn: ConnectionManager,
    worker_conn: ConnectionManager,
    /// Carries only the blocking `XREADGROUP`, so that settles of deliveries in flight do not
    /// queue behind it on the worker connection.
    blocking_conn: ConnectionManager,
    keys: Keys,
    /// A new name per process. NOTE: nothing deletes the names of processes that ended, so the
    /// group's consumer list grows by one per start (without pending entries once reclaimed).
    consumer: String,
    visibility_timeout: Duration,
    group_ready: AtomicBool,
    reclaim: Mutex<ReclaimCursor>,
    accept_script: Script,
    promote_script: Script,
    replay_script: Script,
    bring_forward_script: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("inbox", &self.keys.inbox)
            .field("consumer", &self.consumer)
            .finish_non_exhaustive()
    }
}

/// Settings of [`RedisStore::open`].
#[derive(Debug, Clone)]
pub struct RedisStoreOptions {
    pub url: String,
    pub key_prefix: String,
    /// Time limit of one request-path command.
    pub request_timeout: Duration,
    pub visibility_timeout: Duration,
}

fn unavailable(error: redis::RedisError) -> StoreError {
    StoreError::Unavailable(error.to_string())
}

impl RedisStore {
    /// Opens the store without waiting for Redis: connections are made on first use and
    /// remade after a failure, so the service starts, and recovers, while Redis is down.
    pub fn open(options: &RedisStoreOptions) -> Result<Self, StoreError> {
        let client = redis::Client::open(options.url.as_str())
            .map_err(|e| StoreError::Unavailable(format!("invalid Redis URL: {e}")))?;

        let accept_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.request_timeout))
            .set_response_timeout(Some(options.request_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        // The worker's reads block for up to a second on the server, so its limit is longer.
        let worker_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(15)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));

        let accept_conn = ConnectionManager::new_lazy_with_config(client.clone(), accept_config)
            .map_err(unavailable)?;
        let worker_conn =
            ConnectionManager::new_lazy_with_config(client.clone(), worker_config.clone())
                .map_err(unavailable)?;
        let blocking_conn =
            ConnectionManager::new_lazy_with_config(client, worker_config).map_err(unavailable)?;

        Ok(Self {
            accept_conn,
            worker_conn,
            blocking_conn,
            keys: Keys::new(&options.key_prefix),
            consumer: format!("worker-{}", uuid::Uuid::new_v4().simple()),
            visibility_timeout: options.visibility_timeout,
            group_ready: AtomicBool::new(false),
            reclaim: Mutex::new(ReclaimCursor {
                start: "0-0".into(),
                next_run: Instant::now(),
            }),
            accept_script: Script::new(ACCEPT_SCRIPT),
            promote_script: Script::new(PROMOTE_SCRIPT),
            replay_script: Script::new(REPLAY_SCRIPT),
            bring_forward_script: Script::new(BRING_FORWARD_SCRIPT),
        })
    }

    /// Returns Redis's `appendonly` setting; an error when Redis is unreachable or forbids `CONFIG`.
    pub async fn append_only(&self) -> Result<bool, StoreError> {
        let mut conn = self.accept_conn.clone();
        let reply: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("appendonly")
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        reply
            .get(1)
            .map(|value| value == "yes")
            .ok_or_else(|| StoreError::Corrupt("CONFIG GET appendonly returned no value".into()))
    }

    async fn ensure_group(&self) -> Result<(), StoreError> {
        if self.group_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut conn = self.worker_conn.clone();
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.keys.inbox)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match created {
            Ok(()) => {}
            Err(e) if e.code() == Some("BUSYGROUP") => {}
            Err(e) => return Err(unavailable(e)),
        }
        self.group_ready.store(true, Ordering::Release);
        Ok(())
    }

    /// Notes that the consumer group is gone (Redis restarted without persistence), so the
    /// next claim creates it again.
    fn check_group_lost(&self, error: &redis::RedisError) {
        if error.code() == Some("NOGROUP") {
            self.group_ready.store(false, Ordering::Release);
        }
    }

    async fn promote_due_retries(&self, max: usize) -> Result<Vec<RawEntry>, StoreError> {
        let mut conn = self.worker_conn.clone();
        let now = unix_millis(std::time::SystemTime::now());
        let reply: Value = self
            .promote_script
            .key(&self.keys.inbox)
            .key(&self.keys.retry)
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(now)
            .arg(max)
            .invoke_async(&mut conn)
            .await
            .inspect_err(|e| self.check_group_lost(e))
            .map_err(unavailable)?;
        parse_entries(reply)
    }

    /// Claims entries that another consumer has held longer than the visibility timeout,
    /// skipping those that wait in the retry set. Runs at most every half timeout.
    async fn reclaim_idle(&self, max: usize) -> Result<Vec<RawEntry>, StoreError> {
        let mut cursor = self.reclaim.lock().await;
        if Instant::now() < cursor.next_run {
            return Ok(Vec::new());
        }

        let mut conn = self.worker_conn.clone();
        let idle_ms = u64::try_from(self.visibility_timeout.as_millis()).unwrap_or(u64::MAX);
        let reply: Value = redis::cmd("XAUTOCLAIM")
            .arg(&self.keys.inbox)
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(idle_ms)
            .arg(&cursor.start)
            .arg("COUNT")
            .arg(max)
            .query_async(&mut conn)
            .await
            .inspect_err(|e| self.check_group_lost(e))
            .map_err(unavailable)?;

        let Value::Array(mut parts) = reply else {
            return Err(StoreError::Corrupt(
                "XAUTOCLAIM reply is not an array".into(),
            ));
        };
        if parts.len() < 2 {
            return Err(StoreError::Corrupt("XAUTOCLAIM reply is too short".into()));
        }
        let entries = parse_entries(parts.swap_remove(1))?;
        let next = string_of(&parts[0]).unwrap_or_else(|| "0-0".into());
        if next == "0-0" {
            // A full pass is done; wait before the next one.
            cursor.next_run = Instant::now() + self.visibility_timeout / 2;
        }
        cursor.start = next;
        drop(cursor);

        if entries.is_empty() {
            return Ok(entries);
        }
        let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        let scores: Vec<Option<f64>> = redis::cmd("ZMSCORE")
            .arg(&self.keys.retry)
            .arg(&ids)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(entries
            .into_iter()
            .zip(scores)
            .filter_map(|(entry, score)| score.is_none().then_some(entry))
            .collect())
    }

    async fn read_new(&self, max: usize, wait: Duration) -> Result<Vec<RawEntry>, StoreError> {
        let mut conn = self.blocking_conn.clone();
        let mut command = redis::cmd("XREADGROUP");
        command
            .arg("GROUP")
            .arg(GROUP)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(max);
        // `BLOCK 0` would wait forever, so a zero wait sends no BLOCK at all.
        let block_ms = u64::try_from(wait.as_millis()).unwrap_or(1000);
        if block_ms > 0 {
            command.arg("BLOCK").arg(block_ms);
        }
        let reply: Value = command
            .arg("STREAMS")
            .arg(&self.keys.inbox)
            .arg(">")
            .query_async(&mut conn)
            .await
            .inspect_err(|e| self.check_group_lost(e))
            .map_err(unavailable)?;

        // The reply is [[stream, [entries]]], or nil when the wait ran out.
        match reply {
            Value::Nil => Ok(Vec::new()),
            Value::Array(mut streams) if !streams.is_empty() => match streams.swap_remove(0) {
                Value::Array(mut pair) if pair.len() == 2 => parse_entries(pair.swap_remove(1)),
                _ => Err(StoreError::Corrupt("XREADGROUP stream is malformed".into())),
            },
            _ => Err(StoreError::Corrupt("XREADGROUP reply is malformed".into())),
        }
    }

    /// Turns raw entries into deliveries, adding the progress saved by earlier rounds.
    async fn attach_state(&self, entries: Vec<RawEntry>) -> Result<Vec<Delivery>, StoreError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.worker_conn.clone();
        let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        let states: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(&self.keys.state)
            .arg(&ids)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;

        let mut deliveries = Vec::with_capacity(entries.len());
        for (mut entry, state) in entries.into_iter().zip(states) {
            let (attempt, pending_sinks) = match state.as_deref() {
                Some(state) => parse_state(state)?,
                None => (0, None),
            };
            deliveries.push(Delivery {
                event: entry.take_event()?,
                handle: entry.id,
                attempt,
                pending_sinks,
            });
        }
        Ok(deliveries)
    }

    /// Reads up to `max` dead-letter records with ids from `start` to `end`, both as `XRANGE`
    /// takes them.
    async fn dead_letter_range(
        &self,
        start: &str,
        end: &str,
        max: usize,
    ) -> Result<Vec<DeadLetterRecord>, StoreError> {
        let mut conn = self.worker_conn.clone();
        let reply: Value = redis::cmd("XRANGE")
            .arg(&self.keys.dlq)
            .arg(start)
            .arg(end)
            .arg("COUNT")
            .arg(max)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        parse_entries(reply)?
            .into_iter()
            .map(RawEntry::into_dead_letter)
            .collect()
    }

    /// Returns the id of the newest dead letter, if any.
    async fn last_dead_letter_id(&self) -> Result<Option<String>, StoreError> {
        let mut conn = self.worker_conn.clone();
        let reply: Value = redis::cmd("XREVRANGE")
            .arg(&self.keys.dlq)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(parse_entries(reply)?
            .into_iter()
            .next()
            .map(|entry| entry.id))
    }

    /// Runs [`REPLAY_SCRIPT`] over `handles`.
    async fn replay_handles(
        &self,
        handles: &[&str],
        sink: Option<&str>,
    ) -> Result<Vec<Replayed>, StoreError> {
        if handles.is_empty() {
            return Ok(Vec::new());
        }
        let mut invocation = self.replay_script.prepare_invoke();
        invocation
            .key(&self.keys.dlq)
            .key(&self.keys.inbox)
            .key(&self.keys.state)
            .arg(sink.unwrap_or(""));
        for handle in handles {
            invocation.arg(*handle);
        }
        let mut conn = self.worker_conn.clone();
        let moved: Vec<(String, String, String, String)> = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(moved
            .into_iter()
            .map(|(dead_letter, inbox, event_id, sink)| Replayed {
                dead_letter,
                inbox,
                event_id,
                sink,
            })
            .collect())
    }

    /// Adds the commands that record `settlement` of `delivery` to `pipe`.
    fn add_settlement(
        &self,
        pipe: &mut redis::Pipeline,
        delivery: &Delivery,
        settlement: &Settlement,
    ) {
        let event = &delivery.event;
        for dead in &settlement.dead {
            pipe.cmd("XADD")
                .arg(&self.keys.dlq)
                .arg("*")
                .arg("id")
                .arg(&event.id)
                .arg("source")
                .arg(&event.source)
                .arg("type")
                .arg(&event.event_type)
                .arg("received_at")
                .arg(event.received_at_ms)
                .arg("payload")
                .arg(event.payload.as_ref())
                .arg("sink")
                .arg(&dead.sink)
                .arg("error")
                .arg(&dead.error)
                .arg("attempt")
                .arg(delivery.attempt + 1)
                .ignore();
        }

        match &settlement.retry {
            Some(retry) => {
                let state = format!("{}|{}", retry.attempt, retry.sinks.join(","));
                pipe.hset(&self.keys.state, &delivery.handle, state)
                    .ignore();
                pipe.zadd(&self.keys.retry, &delivery.handle, unix_millis(retry.due))
                    .ignore();
            }
            None => {
                pipe.xack(&self.keys.inbox, GROUP, &[&delivery.handle])
                    .ignore();
                pipe.xdel(&self.keys.inbox, &[&delivery.handle]).ignore();
                // Progress and a retry time exist only for an entry that was retried or
                // replayed, which is what `pending_sinks` records; a first round has neither.
                if delivery.pending_sinks.is_some() {
                    pipe.hdel(&self.keys.state, &delivery.handle).ignore();
                    pipe.zrem(&self.keys.retry, &delivery.handle).ignore();
                }
            }
        }
    }

    /// Takes due retries, then idle entries of dead consumers, then new entries.
    async fn claim_once(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, StoreError> {
        self.ensure_group().await?;

        let mut entries = self.promote_due_retries(max).await?;
        if entries.len() < max {
            entries.extend(self.reclaim_idle(max - entries.len()).await?);
        }
        if entries.is_empty() {
            // Block only when there is nothing else to do, so retries are not delayed.
            entries = self.read_new(max, wait).await?;
        } else if entries.len() < max {
            entries.extend(self.read_new(max - entries.len(), Duration::ZERO).await?);
        }
        self.attach_state(entries).await
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn accept(
        &self,
        event: &Event,
        key: &str,
        window: Duration,
    ) -> Result<AcceptOutcome, StoreError> {
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1);
        let token = uuid::Uuid::new_v4().simple().to_string();
        let mut invocation = self.accept_script.prepare_invoke();
        invocation
            .key(self.keys.seen(key))
            .key(&self.keys.inbox)
            .arg(window_ms)
            .arg(&token)
            .arg("id")
            .arg(&event.id)
            .arg("source")
            .arg(&event.source)
            .arg("type")
            .arg(&event.event_type)
            .arg("received_at")
            .arg(event.received_at_ms)
            .arg("payload")
            .arg(event.payload.as_ref());

        let mut conn = self.accept_conn.clone();
        let mut result = invocation.invoke_async::<i64>(&mut conn).await;
        // The connection manager reports a broken connection to the command that finds it
        // and reconnects for the next one. One more try, on the new connection, spares the
        // provider a 503 after Redis comes back. The handler's timeout bounds both tries, and
        // the token makes a second try of a first that did run report "accepted" again.
        if let Err(error) = &result
            && (error.is_io_error() || error.is_unrecoverable_error() || error.is_timeout())
        {
            result = invocation.invoke_async::<i64>(&mut conn).await;
        }
        let claimed = result.map_err(unavailable)?;
        Ok(match claimed {
            1 => AcceptOutcome::Accepted,
            _ => AcceptOutcome::Duplicate,
        })
    }

    async fn claim(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, StoreError> {
        let group_was_ready = self.group_ready.load(Ordering::Acquire);
        match self.claim_once(max, wait).await {
            Err(_) if group_was_ready && !self.group_ready.load(Ordering::Acquire) => {
                tracing::info!(
                    "inbox consumer group missing, as after a Redis restart without persistence; \
                     recreating it"
                );
                self.claim_once(max, wait).await
            }
            result => result,
        }
    }

    async fn settle(&self, delivery: &Delivery, settlement: Settlement) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        self.add_settlement(&mut pipe, delivery, &settlement);
        let mut conn = self.worker_conn.clone();
        pipe.query_async::<()>(&mut conn).await.map_err(unavailable)
    }

    /// Writes every settlement in one transaction, so one round trip records them all.
    async fn settle_many(&self, items: Vec<(Delivery, Settlement)>) -> Vec<Result<(), StoreError>> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (delivery, settlement) in &items {
            self.add_settlement(&mut pipe, delivery, settlement);
        }
        let mut conn = self.worker_conn.clone();
        match pipe.query_async::<()>(&mut conn).await {
            Ok(()) => items.iter().map(|_| Ok(())).collect(),
            Err(error) => {
                let message = error.to_string();
                items
                    .iter()
                    .map(|_| Err(StoreError::Unavailable(message.clone())))
                    .collect()
            }
        }
    }

    async fn bring_forward(
        &self,
        sink: &str,
        max: usize,
        due: std::time::SystemTime,
    ) -> Result<Vec<String>, StoreError> {
        let now = unix_millis(due);
        let mut conn = self.worker_conn.clone();
        let mut moved = Vec::new();
        // Retries due before, then after, the new time; those due at it already are in place.
        // Moved retries leave the range looked at; skipped ones stay, so the next page starts
        // after them.
        for (from, to) in [
            ("-inf".to_owned(), format!("({now}")),
            (format!("({now}"), "+inf".to_owned()),
        ] {
            let mut skipped = 0usize;
            while moved.len() < max {
                let reply: Vec<Value> = self
                    .bring_forward_script
                    .key(&self.keys.retry)
                    .key(&self.keys.state)
                    .arg(now)
                    .arg(sink)
                    .arg(skipped)
                    .arg(BRING_FORWARD_PAGE)
                    .arg(max - moved.len())
                    .arg(&from)
                    .arg(&to)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(unavailable)?;
                let count = |value: Option<&Value>| match value {
                    Some(Value::Int(n)) => usize::try_from(*n).ok(),
                    _ => None,
                };
                let (Some(looked_at), Some(left)) =
                    (count(reply.last()), count(reply.iter().rev().nth(1)))
                else {
                    return Err(StoreError::Corrupt(
                        "bring-forward reply lacks its counts".into(),
                    ));
                };
                let ids = &reply[..reply.len() - 2];
                moved.extend(ids.iter().filter_map(string_of));
                skipped += left;
                if looked_at < BRING_FORWARD_PAGE {
                    break;
                }
            }
        }
        Ok(moved)
    }

    async fn dead_letters(&self, max: usize) -> Result<Vec<DeadLetterRecord>, StoreError> {
        self.dead_letter_range("-", "+", max).await
    }

    async fn dead_letter(&self, handle: &str) -> Result<Option<DeadLetterRecord>, StoreError> {
        // Anything but a full `<ms>-<seq>` id would make XRANGE read a range, or fail.
        if !is_stream_id(handle) {
            return Ok(None);
        }
        let mut found = self.dead_letter_range(handle, handle, 1).await?;
        Ok(found.pop())
    }

    async fn replay(&self, selection: &ReplaySelection) -> Result<Vec<Replayed>, StoreError> {
        let sink = selection.sink.as_deref();
        if let Some(handle) = &selection.handle {
            if !is_stream_id(handle) {
                return Ok(Vec::new());
            }
            return self.replay_handles(&[handle], sink).await;
        }

        // The scan stops at the newest record of the start, so that an event dead-lettered
        // again by a worker running meanwhile is not replayed in a loop.
        let Some(end) = self.last_dead_letter_id().await? else {
            return Ok(Vec::new());
        };
        let mut start = "-".to_owned();
        let mut replayed = Vec::new();
        loop {
            let page = self.dead_letter_range(&start, &end, REPLAY_PAGE).await?;
            let Some(last) = page.last() else { break };
            start = format!("({}", last.handle);
            let handles: Vec<&str> = page
                .iter()
                .filter(|record| sink.is_none_or(|sink| record.sink == sink))
                .map(|record| record.handle.as_str())
                .collect();
            replayed.extend(self.replay_handles(&handles, sink).await?);
            if page.len() < REPLAY_PAGE {
                break;
            }
        }
        Ok(replayed)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.accept_conn.clone();
        redis::cmd("PING")
            .query_async::<()>(&mut conn)
            .await
            .map_err(unavailable)
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        let mut pipe = redis::pipe();
        pipe.xlen(&self.keys.inbox)
            .cmd("XRANGE")
            .arg(&self.keys.inbox)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .xlen(&self.keys.dlq);
        let mut conn = self.accept_conn.clone();
        let (inbox_depth, oldest, dead_letters): (u64, Value, u64) =
            pipe.query_async(&mut conn).await.map_err(unavailable)?;

        // A stream entry id starts with the server time, in ms, at which it was added.
        let oldest_received_at = parse_entries(oldest)?.first().and_then(|entry| {
            let millis: u64 = entry.id.split('-').next()?.parse().ok()?;
            Some(std::time::UNIX_EPOCH + Duration::from_millis(millis))
        });
        Ok(StoreStats {
            inbox_depth,
            oldest_received_at,
            dead_letters,
        })
    }
}

/// A stream entry as Redis returns it.
struct RawEntry {
    id: String,
    fields: Vec<(Vec<u8>, Vec<u8>)>,
}

impl RawEntry {
    fn field(&self, name: &str) -> Result<&[u8], StoreError> {
        self.fields
            .iter()
            .find(|(key, _)| key == name.as_bytes())
            .map(|(_, value)| value.as_slice())
            .ok_or_else(|| StoreError::Corrupt(format!("entry {} has no {name} field", self.id)))
    }

    fn text(&self, name: &str) -> Result<String, StoreError> {
        String::from_utf8(self.field(name)?.to_vec()).map_err(|_| {
            StoreError::Corrupt(format!("entry {} field {name} is not UTF-8", self.id))
        })
    }

    /// Builds the event, moving the payload out of the entry instead of copying it.
    fn take_event(&mut self) -> Result<Event, StoreError> {
        let id = self.text("id")?;
        let source = self.text("source")?;
        let event_type = self.text("type")?;
        let received_at_ms = self.text("received_at")?.parse().map_err(|_| {
            StoreError::Corrupt(format!("entry {} has an invalid received_at", self.id))
        })?;
        let payload = self
            .fields
            .iter_mut()
            .find(|(key, _)| key == b"payload")
            .map(|(_, value)| Bytes::from(std::mem::take(value)))
            .ok_or_else(|| {
                StoreError::Corrupt(format!("entry {} has no payload field", self.id))
            })?;
        Ok(Event {
            id,
            source,
            event_type,
            received_at_ms,
            payload,
        })
    }

    fn into_dead_letter(mut self) -> Result<DeadLetterRecord, StoreError> {
        Ok(DeadLetterRecord {
            sink: self.text("sink")?,
            error: self.text("error")?,
            attempt: self.text("attempt")?.parse().unwrap_or(0),
            event: self.take_event()?,
            handle: self.id,
        })
    }
}

/// Tells whether `text` is a complete stream entry id, `<ms>-<seq>`.
fn is_stream_id(text: &str) -> bool {
    let is_number =
        |part: &str| part.bytes().all(|b| b.is_ascii_digit()) && part.parse::<u64>().is_ok();
    text.split_once('-')
        .is_some_and(|(ms, seq)| is_number(ms) && is_number(seq))
}

fn string_of(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(text) => Some(text.clone()),
        _ => None,
    }
}

/// Parses a list of `[id, [field, value, ...]]` entries. Entries deleted while pending come
/// back with a nil field list and are skipped.
fn parse_entries(value: Value) -> Result<Vec<RawEntry>, StoreError> {
    let items = match value {
        Value::Array(items) => items,
        Value::Nil => return Ok(Vec::new()),
        _ => {
            return Err(StoreError::Corrupt(
                "stream entries are not an array".into(),
            ));
        }
    };
    let mut entries = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(mut pair) = item else {
            return Err(StoreError::Corrupt("stream entry is not an array".into()));
        };
        if pair.len() != 2 {
            return Err(StoreError::Corrupt(
                "stream entry is not an [id, fields] pair".into(),
            ));
        }
        let id = string_of(&pair[0])
            .ok_or_else(|| StoreError::Corrupt("stream entry id is not a string".into()))?;
        let Value::Array(flat) = pair.swap_remove(1) else {
            continue;
        };
        let mut fields = Vec::with_capacity(flat.len() / 2);
        let mut values = flat.into_iter();
        while let (Some(key), Some(value)) = (values.next(), values.next()) {
            match (key, value) {
                (Value::BulkString(key), Value::BulkString(value)) => fields.push((key, value)),
                _ => {
                    return Err(StoreError::Corrupt(format!(
                        "entry {id} has a non-string field"
                    )));
                }
            }
        }
        entries.push(RawEntry { id, fields });
    }
    Ok(entries)
}

/// Parses `attempt|sink,sink` as written by [`RedisStore::settle`].
fn parse_state(state: &str) -> Result<(u32, Option<Vec<String>>), StoreError> {
    let corrupt = || StoreError::Corrupt(format!("invalid delivery state {state:?}"));
    let (attempt, sinks) = state.split_once('|').ok_or_else(corrupt)?;
    let attempt = attempt.parse().map_err(|_| corrupt())?;
    let sinks = sinks
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    Ok((attempt, Some(sinks)))
}
