//! Groups the deliveries that reach one sink at the same time into calls of
//! [`Sink::deliver_many`], for destinations where one request can carry many events.
//!
//! Each call of [`Sink::deliver`] carries one event. It goes to a task that collects the
//! deliveries waiting, sends them as one batch, and returns each event's result to its caller.
//! A lone delivery is sent at once, so batching adds no wait at low load.

use super::{Sink, SinkError};
use crate::event::Event;
use async_trait::async_trait;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, OnceLock};
use tokio::sync::{mpsc, oneshot};

/// Maximum events in one batch.
const MAX_BATCH_EVENTS: usize = 128;

/// Payload bytes after which a batch takes no more events, so that one call with large bodies
/// does not block the destination for long. A single larger event still goes alone.
const MAX_BATCH_BYTES: usize = 1 << 20;

/// Maximum batches awaiting the destination at once. More than one keeps the connection busy
/// while a batch's reply is on its way.
const MAX_BATCHES_IN_FLIGHT: usize = 4;

struct Request {
    event: Event,
    reply: oneshot::Sender<Result<(), SinkError>>,
}

/// A sink whose concurrent deliveries go out in batches.
pub struct Batched {
    inner: Arc<dyn Sink>,
    /// Started on the first delivery, because the task needs the runtime.
    queue: OnceLock<mpsc::UnboundedSender<Request>>,
}

impl Batched {
    pub fn new(inner: Arc<dyn Sink>) -> Self {
        Self {
            inner,
            queue: OnceLock::new(),
        }
    }

    fn queue(&self) -> &mpsc::UnboundedSender<Request> {
        self.queue.get_or_init(|| {
            let (sender, receiver) = mpsc::unbounded_channel();
            tokio::spawn(send_batches(self.inner.clone(), receiver));
            sender
        })
    }
}

#[async_trait]
impl Sink for Batched {
    async fn deliver(&self, event: &Event) -> Result<(), SinkError> {
        let stopped = || SinkError::retryable("the sink's batching task stopped");
        let (reply, result) = oneshot::channel();
        let request = Request {
            event: event.clone(),
            reply,
        };
        self.queue().send(request).map_err(|_| stopped())?;
        result.await.unwrap_or_else(|_| Err(stopped()))
    }
}

/// Sends the queued deliveries in batches until every [`Batched`] handle is dropped.
async fn send_batches(sink: Arc<dyn Sink>, mut queue: mpsc::UnboundedReceiver<Request>) {
    let mut in_flight = FuturesUnordered::new();
    // Batches split off by size that wait for a free slot.
    let mut ready = VecDeque::new();
    let mut received = Vec::with_capacity(MAX_BATCH_EVENTS);
    loop {
        while in_flight.len() < MAX_BATCHES_IN_FLIGHT
            && let Some(batch) = ready.pop_front()
        {
            in_flight.push(send_batch(sink.clone(), batch));
        }
        // One branch is always enabled: `ready` is empty here unless every slot is taken.
        tokio::select! {
            count = queue.recv_many(&mut received, MAX_BATCH_EVENTS),
                if ready.is_empty() && in_flight.len() < MAX_BATCHES_IN_FLIGHT =>
            {
                if count == 0 {
                    break;
                }
                ready.extend(split_by_bytes(std::mem::take(&mut received)));
            }
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
        }
    }
    while in_flight.next().await.is_some() {}
}

/// Splits `requests` into runs of at most [`MAX_BATCH_BYTES`] of payload, in order.
fn split_by_bytes(requests: Vec<Request>) -> Vec<Vec<Request>> {
    let mut batches = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for request in requests {
        let size = request.event.payload.len();
        if !current.is_empty() && bytes + size > MAX_BATCH_BYTES {
            batches.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push(request);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

/// Delivers `batch` and sends each caller its result. A panic of the sink fails the batch
/// with a retryable error instead of stopping the task, which every later delivery needs.
async fn send_batch(sink: Arc<dyn Sink>, batch: Vec<Request>) {
    // A caller whose timeout passed has dropped its receiver and counts the delivery as
    // failed, so its event is left for the retry instead of being sent late.
    let (events, replies): (Vec<Event>, Vec<_>) = batch
        .into_iter()
        .filter(|request| !request.reply.is_closed())
        .map(|request| (request.event, request.reply))
        .unzip();
    if events.is_empty() {
        return;
    }
    let results = match AssertUnwindSafe(sink.deliver_many(&events))
        .catch_unwind()
        .await
    {
        Ok(results) => results,
        Err(_) => {
            tracing::error!(
                events = events.len(),
                "the sink panicked while delivering a batch; its events will be retried"
            );
            vec![Err(SinkError::retryable("the sink panicked")); events.len()]
        }
    };
    for (reply, result) in replies.into_iter().zip(results) {
        let _ = reply.send(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records the event ids of each batch. Fails the events whose id starts with `fail`, and
    /// panics on a batch with an id starting with `panic`.
    #[derive(Default)]
    struct Recording {
        batches: Mutex<Vec<Vec<String>>>,
    }

    #[async_trait]
    impl Sink for Recording {
        async fn deliver(&self, event: &Event) -> Result<(), SinkError> {
            self.deliver_many(std::slice::from_ref(event))
                .await
                .remove(0)
        }

        async fn deliver_many(&self, events: &[Event]) -> Vec<Result<(), SinkError>> {
            // Lets the other deliveries queue up behind this batch.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            if events.iter().any(|e| e.id.starts_with("panic")) {
                panic!("the test sink panics on purpose");
            }
            let ids = events.iter().map(|e| e.id.clone()).collect();
            self.batches.lock().unwrap().push(ids);
            events
                .iter()
                .map(|event| match event.id.starts_with("fail") {
                    true => Err(SinkError::permanent(format!("rejected {}", event.id))),
                    false => Ok(()),
                })
                .collect()
        }
    }

    fn event(id: &str, payload_len: usize) -> Event {
        Event {
            id: id.into(),
            source: "makini".into(),
            event_type: "a".into(),
            received_at_ms: 1,
            payload: vec![b'x'; payload_len].into(),
        }
    }

    #[tokio::test]
    async fn concurrent_deliveries_share_batches() {
        let inner = Arc::new(Recording::default());
        let sink = Batched::new(inner.clone());
        let ids: Vec<String> = (0..200)
            .map(|i| match i % 50 {
                7 => format!("fail-{i}"),
                _ => format!("ok-{i}"),
            })
            .collect();
        let events: Vec<Event> = ids.iter().map(|id| event(id, 10)).collect();
        let results = futures::future::join_all(events.iter().map(|e| sink.deliver(e))).await;

        for (id, result) in ids.iter().zip(&results) {
            match id.starts_with("fail") {
                true => assert_eq!(
                    result.as_ref().unwrap_err().message,
                    format!("rejected {id}")
                ),
                false => assert!(result.is_ok(), "{id}: {result:?}"),
            }
        }
        let batches = inner.batches.lock().unwrap();
        let delivered: Vec<&String> = batches.iter().flatten().collect();
        assert_eq!(delivered.len(), 200);
        assert!(
            batches.len() < 20,
            "{} batches for 200 events",
            batches.len()
        );
        assert!(batches.iter().all(|b| b.len() <= MAX_BATCH_EVENTS));
    }

    #[tokio::test]
    async fn lone_delivery_is_sent_alone() {
        let inner = Arc::new(Recording::default());
        let sink = Batched::new(inner.clone());
        sink.deliver(&event("ok-1", 10)).await.unwrap();
        sink.deliver(&event("ok-2", 10)).await.unwrap();
        assert_eq!(
            *inner.batches.lock().unwrap(),
            vec![vec!["ok-1".to_owned()], vec!["ok-2".to_owned()]]
        );
    }

    #[tokio::test]
    async fn panic_fails_batch_only() {
        let inner = Arc::new(Recording::default());
        let sink = Batched::new(inner.clone());
        let error = sink.deliver(&event("panic-1", 10)).await.unwrap_err();
        assert!(error.retryable);
        assert_eq!(error.message, "the sink panicked");
        sink.deliver(&event("ok-2", 10)).await.unwrap();
        assert_eq!(
            *inner.batches.lock().unwrap(),
            vec![vec!["ok-2".to_owned()]]
        );
    }

    #[tokio::test]
    async fn abandoned_delivery_is_not_sent() {
        let inner = Arc::new(Recording::default());
        let (kept, kept_result) = oneshot::channel();
        let (abandoned, abandoned_result) = oneshot::channel();
        drop(abandoned_result);
        let batch = vec![
            Request {
                event: event("ok-1", 10),
                reply: abandoned,
            },
            Request {
                event: event("ok-2", 10),
                reply: kept,
            },
        ];
        send_batch(inner.clone(), batch).await;
        assert!(kept_result.await.unwrap().is_ok());
        assert_eq!(
            *inner.batches.lock().unwrap(),
            vec![vec!["ok-2".to_owned()]]
        );
    }

    #[test]
    fn batches_stop_at_the_byte_limit() {
        let request = |len| Request {
            event: event("ok", len),
            reply: oneshot::channel().0,
        };
        let half = MAX_BATCH_BYTES / 2;
        let requests = vec![
            request(half),
            request(half),
            request(1),
            request(2 * MAX_BATCH_BYTES),
            request(1),
        ];
        let sizes: Vec<Vec<usize>> = split_by_bytes(requests)
            .iter()
            .map(|batch| batch.iter().map(|r| r.event.payload.len()).collect())
            .collect();
        assert_eq!(
            sizes,
            vec![
                vec![half, half],
                vec![1],
                vec![2 * MAX_BATCH_BYTES],
                vec![1]
            ]
        );
    }
}
