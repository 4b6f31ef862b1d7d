//! The background worker: claims inbox entries, routes each event to its sinks, and settles
//! the round: done, retried later with backoff, or dead-lettered per sink.
//!
//! Up to `batch_size` entries are in flight at once, and the worker claims more as soon as one
//! settles, so an entry held up by a slow sink does not hold back the entries behind it. Each
//! sink has its own concurrency limit and timeout; the wait for a free slot counts against
//! the timeout, so a sink that falls behind fails its deliveries (to be retried later)
//! instead of piling them up.

mod breaker;
mod route;

pub use route::Router;

use breaker::{Admission, Breaker, MAX_PAUSE, Transition};

use crate::config::WorkerConfig;
use crate::event::loggable;
use crate::ops::metrics::{DELIVERIES, END_TO_END_SECONDS, SINK_PAUSED, UNROUTED};
use crate::sink::{Sink, SinkError};
use crate::store::{DeadLetter, Delivery, Retry, Settlement, Store, StoreError};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rand::Rng;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Maximum wait of a claim on an empty inbox before the worker checks for shutdown again.
const CLAIM_WAIT: Duration = Duration::from_secs(1);

/// At most this many distinct unrouted (source, type) pairs are remembered for logging.
const UNROUTED_LOG_LIMIT: usize = 1024;

/// Most settlements written to the store in one batch.
const SETTLE_BATCH: usize = 256;

/// A write the worker hands to its store writer task, which makes them in the order sent.
enum StoreWrite {
    /// A settlement, and where to report how it went.
    Settle(
        Delivery,
        Settlement,
        oneshot::Sender<Result<(), StoreError>>,
    ),
    /// A release of the events held for a sink that is back, made after every settlement sent
    /// before it, so that events held just before the sink came back are released too.
    BringForward {
        sink: String,
        due: SystemTime,
        reply: oneshot::Sender<Result<Vec<String>, StoreError>>,
    },
}

type WriteSender = mpsc::UnboundedSender<StoreWrite>;

/// Makes the worker's store writes as they come, each run of settlements waiting in one store
/// call, so that a busy worker records many outcomes per round trip.
async fn write_in_batches(store: Arc<dyn Store>, mut writes: mpsc::UnboundedReceiver<StoreWrite>) {
    let mut received = Vec::with_capacity(SETTLE_BATCH);
    let mut settles = Vec::with_capacity(SETTLE_BATCH);
    while writes.recv_many(&mut received, SETTLE_BATCH).await > 0 {
        for write in received.drain(..) {
            match write {
                StoreWrite::Settle(delivery, settlement, reply) => {
                    settles.push(((delivery, settlement), reply));
                }
                StoreWrite::BringForward { sink, due, reply } => {
                    settle_all(store.as_ref(), &mut settles).await;
                    let _ = reply.send(store.bring_forward(&sink, usize::MAX, due).await);
                }
            }
        }
        settle_all(store.as_ref(), &mut settles).await;
    }
}

type PendingSettle = (
    (Delivery, Settlement),
    oneshot::Sender<Result<(), StoreError>>,
);

async fn settle_all(store: &dyn Store, pending: &mut Vec<PendingSettle>) {
    if pending.is_empty() {
        return;
    }
    let (items, replies): (Vec<_>, Vec<_>) = pending.drain(..).unzip();
    let results = store.settle_many(items).await;
    for (reply, result) in replies.into_iter().zip(results) {
        let _ = reply.send(result);
    }
}

/// Counts of what the worker did since it started.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Deliveries to one sink that succeeded.
    pub delivered: AtomicU64,
    /// Deliveries to one sink that failed and will be retried.
    pub retried: AtomicU64,
    /// Deliveries to one sink that failed for good and went to the dead-letter queue.
    pub dead_lettered: AtomicU64,
    /// Deliveries to one sink set aside because the sink was paused.
    pub held: AtomicU64,
    /// Events that no route matched; they are acknowledged and dropped.
    pub unrouted: AtomicU64,
}

impl WorkerStats {
    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A sink with its own limits.
struct SinkSlot {
    sink: Arc<dyn Sink>,
    permits: Semaphore,
    timeout: Duration,
    breaker: Breaker,
}

/// The outcome of one delivery to one sink.
enum Outcome {
    Delivered,
    Failed(SinkError),
    /// The sink is paused; the event waits for it without a round being counted.
    Held {
        /// The sink's generation when it was found paused.
        generation: u64,
        /// How long to hold a failed probe: until the next probe, which it makes again, so
        /// that the oldest held event is the first to reach the sink when it is back. Other
        /// events are held until the worker releases them.
        probe_again_in: Option<Duration>,
    },
}

pub struct Worker {
    store: Arc<dyn Store>,
    sinks: HashMap<String, SinkSlot>,
    router: Router,
    config: WorkerConfig,
    stats: Arc<WorkerStats>,
    /// (source, type) pairs already logged as unrouted, so each is logged once.
    unrouted_logged: Mutex<HashSet<(String, String)>>,
    /// True while [`Worker::run`] loops; read by the readiness probe.
    running: Arc<AtomicBool>,
}

impl Worker {
    /// Creates a worker whose sinks have no concurrency limit and `config.sink_timeout` as
    /// their timeout until [`Worker::limit_sink`] sets their own.
    pub fn new(
        store: Arc<dyn Store>,
        sinks: HashMap<String, Arc<dyn Sink>>,
        router: Router,
        config: WorkerConfig,
    ) -> Self {
        let sinks = sinks
            .into_iter()
            .map(|(name, sink)| {
                let slot = SinkSlot {
                    sink,
                    permits: Semaphore::new(Semaphore::MAX_PERMITS),
                    timeout: config.sink_timeout,
                    breaker: Breaker::new(
                        config.pause_after_failures,
                        config.backoff_initial,
                        MAX_PAUSE,
                    ),
                };
                (name, slot)
            })
            .collect();
        Self {
            store,
            sinks,
            router,
            config,
            stats: Arc::default(),
            unrouted_logged: Mutex::new(HashSet::new()),
            running: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Returns the flag that is true while the worker runs.
    pub fn running_flag(&self) -> Arc<AtomicBool> {
        self.running.clone()
    }

    /// Sets how many deliveries to sink `name` may be in flight at once and the time limit
    /// of each. An unknown name is ignored.
    pub fn limit_sink(mut self, name: &str, concurrency: usize, timeout: Duration) -> Self {
        if let Some(slot) = self.sinks.get_mut(name) {
            slot.permits = Semaphore::new(concurrency.clamp(1, Semaphore::MAX_PERMITS));
            slot.timeout = timeout;
        }
        self
    }

    /// Returns the worker's counters, which stay readable after it stops.
    pub fn stats(&self) -> Arc<WorkerStats> {
        self.stats.clone()
    }

    /// Runs until `shutdown` is cancelled. Entries in flight are finished first; anything
    /// claimed and not settled stays pending and is reclaimed after the visibility timeout.
    pub async fn run(self, shutdown: CancellationToken) {
        self.running.store(true, Ordering::Release);
        self.release_held_at_start().await;
        let (settle_sender, settle_requests) = mpsc::unbounded_channel();
        let settler = tokio::spawn(write_in_batches(self.store.clone(), settle_requests));
        let settles = &settle_sender;
        let mut in_flight = FuturesUnordered::new();
        let mut store_failures = 0u32;
        while !shutdown.is_cancelled() {
            self.request_probes().await;
            // Under load, claim only once a quarter of the window is free, so that each claim
            // takes a batch instead of an entry or two for the same round trips.
            let room = self.config.batch_size.saturating_sub(in_flight.len());
            let enough = (self.config.batch_size / 4).max(1);
            if room < enough && !in_flight.is_empty() {
                in_flight.next().await;
                continue;
            }

            // The claim is never dropped half-way, because entries it took from the store
            // would then wait for the visibility timeout; deliveries in flight progress
            // while it waits.
            let claim = self.store.claim(room, CLAIM_WAIT);
            tokio::pin!(claim);
            let claimed = loop {
                tokio::select! {
                    claimed = &mut claim => break claimed,
                    Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
                }
            };

            match claimed {
                Ok(batch) => {
                    store_failures = 0;
                    if !batch.is_empty() {
                        tracing::debug!(entries = batch.len(), "claimed");
                    }
                    in_flight.extend(batch.into_iter().map(|d| self.process(d, settles)));
                }
                Err(error) => {
                    store_failures = store_failures.saturating_add(1);
                    let pause = Duration::from_millis(250) * store_failures.min(20);
                    tracing::warn!(%error, retry_in = ?pause, "cannot claim inbox entries");
                    let sleep = tokio::time::sleep(pause);
                    tokio::pin!(sleep);
                    loop {
                        tokio::select! {
                            () = &mut sleep => break,
                            () = shutdown.cancelled() => break,
                            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
                        }
                    }
                }
            }
        }
        while in_flight.next().await.is_some() {}
        drop(in_flight);
        // Every delivery waited for its settlement, so the settler has nothing left to do.
        drop(settle_sender);
        let _ = settler.await;
        self.running.store(false, Ordering::Release);
        tracing::info!("worker stopped");
    }

    /// Makes one delivery round of one entry and settles it.
    async fn process(&self, delivery: Delivery, settles: &WriteSender) {
        let span = tracing::info_span!(
            "deliver",
            source = %delivery.event.source,
            event_id = %loggable(&delivery.event.id),
            attempt = delivery.attempt + 1,
        );
        self.process_in_span(delivery, settles)
            .instrument(span)
            .await;
    }

    async fn process_in_span(&self, delivery: Delivery, settles: &WriteSender) {
        let event = &delivery.event;
        let sinks = match &delivery.pending_sinks {
            Some(sinks) => sinks.clone(),
            None => self.router.sinks_for(&event.source, &event.event_type),
        };
        if sinks.is_empty() {
            WorkerStats::add(&self.stats.unrouted);
            self.log_unrouted(&event.source, &event.event_type);
        }

        let delivery_ref = &delivery;
        let outcomes =
            futures::future::join_all(sinks.iter().map(|name| async move {
                (name, self.deliver_to(name, delivery_ref, settles).await)
            }))
            .await;

        let settlement = self.settlement(&delivery, outcomes);
        let (reply, settled) = oneshot::channel();
        let stopped = || StoreError::Unavailable("the worker's store writer task stopped".into());
        let result = match settles.send(StoreWrite::Settle(delivery, settlement, reply)) {
            Ok(()) => settled.await.unwrap_or_else(|_| Err(stopped())),
            Err(_) => Err(stopped()),
        };
        if let Err(error) = result {
            // The entry stays pending; it is reclaimed after the visibility timeout and the
            // sinks that already have it skip it by event id.
            tracing::error!(%error, "cannot record delivery outcome");
        }
    }

    /// Makes the events held by an earlier process due now. Without this they would wait for
    /// their hold to run out.
    async fn release_held_at_start(&self) {
        for name in self.sinks.keys() {
            match self
                .store
                .bring_forward(name, usize::MAX, SystemTime::now())
                .await
            {
                Ok(moved) if !moved.is_empty() => {
                    tracing::info!(sink = %name, events = moved.len(), "retrying held events now");
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(sink = %name, %error, "failed to release held events"),
            }
        }
    }

    /// For each paused sink whose pause is over, makes the earliest held event due, so that
    /// the next claim takes it as the probe.
    async fn request_probes(&self) {
        let now = Instant::now();
        for (name, slot) in &self.sinks {
            if !slot.breaker.should_request_probe(now) {
                continue;
            }
            // When nothing is held yet, a retry already due, or the next event held, serves
            // as the probe later.
            if let Err(error) = self.store.bring_forward(name, 1, SystemTime::now()).await {
                tracing::warn!(sink = %name, %error, "failed to pick an event to probe with");
            }
        }
    }

    async fn deliver_to(&self, name: &str, delivery: &Delivery, writes: &WriteSender) -> Outcome {
        let Some(slot) = self.sinks.get(name) else {
            return Outcome::Failed(SinkError::permanent(format!(
                "sink {name:?} is not configured"
            )));
        };
        let probe = match slot.breaker.admit(
            &delivery.handle,
            delivery.pending_sinks.is_some(),
            Instant::now(),
        ) {
            Admission::Hold { generation } => {
                WorkerStats::add(&self.stats.held);
                return Outcome::Held {
                    generation,
                    probe_again_in: None,
                };
            }
            Admission::Probe => true,
            Admission::Deliver => false,
        };

        let attempt = async {
            // Nothing closes the semaphore, so this error path is unreachable today.
            let _permit = slot
                .permits
                .acquire()
                .await
                .map_err(|_| SinkError::retryable("sink is shutting down"))?;
            slot.sink.deliver(&delivery.event).await
        };
        let result = match tokio::time::timeout(slot.timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(SinkError::retryable(format!(
                "timed out after {}",
                humantime::format_duration(slot.timeout)
            ))),
        };

        match result {
            Ok(()) => {
                self.record_delivered(name, delivery);
                self.after_transition(name, slot.breaker.succeeded(), writes)
                    .await;
                Outcome::Delivered
            }
            // The sink responded, so it is up, even though it rejected this event.
            Err(error) if !error.retryable => {
                self.after_transition(name, slot.breaker.succeeded(), writes)
                    .await;
                Outcome::Failed(error)
            }
            Err(error) => {
                let transition = slot.breaker.failed(probe, &delivery.handle, Instant::now());
                self.after_transition(name, transition, writes).await;
                // A failed probe shows the sink is still down, not that the event is bad, so the
                // event stays held, probes again next time and uses none of its attempts.
                match (transition, slot.breaker.paused_generation()) {
                    (Transition::StillDown { pause }, Some(generation)) if probe => {
                        tracing::warn!(sink = name, %error, "probe failed; the sink stays paused");
                        WorkerStats::add(&self.stats.held);
                        Outcome::Held {
                            generation,
                            probe_again_in: Some(pause),
                        }
                    }
                    _ => Outcome::Failed(error),
                }
            }
        }
    }

    fn record_delivered(&self, name: &str, delivery: &Delivery) {
        WorkerStats::add(&self.stats.delivered);
        tracing::info!(sink = name, "delivered");
        let received_at = UNIX_EPOCH + Duration::from_millis(delivery.event.received_at_ms);
        let latency = SystemTime::now()
            .duration_since(received_at)
            .unwrap_or_default();
        metrics::histogram!(END_TO_END_SECONDS, "sink" => name.to_owned()).record(latency);
        metrics::counter!(DELIVERIES, "sink" => name.to_owned(), "outcome" => "delivered")
            .increment(1);
    }

    /// Logs a pause or a resumption of sink `name`; on resumption, makes every event held for
    /// it due at once.
    async fn after_transition(&self, name: &str, transition: Transition, writes: &WriteSender) {
        match transition {
            Transition::None => {}
            Transition::Paused { pause } => {
                metrics::gauge!(SINK_PAUSED, "sink" => name.to_owned()).set(1.0);
                tracing::warn!(
                    sink = name,
                    probe_in = %humantime::format_duration(pause),
                    "sink keeps failing; holding its events until a probe gets through"
                );
            }
            Transition::StillDown { pause } => {
                tracing::info!(
                    sink = name,
                    probe_in = %humantime::format_duration(pause),
                    "sink still paused"
                );
            }
            Transition::Resuming { due } => {
                // Events held meanwhile are settled due at this same time, so they take their
                // place among the others by arrival.
                let released = self.release_held(name, due, writes).await;
                if let Some(slot) = self.sinks.get(name) {
                    slot.breaker.resume();
                }
                metrics::gauge!(SINK_PAUSED, "sink" => name.to_owned()).set(0.0);
                match released {
                    Ok(moved) => {
                        tracing::info!(
                            sink = name,
                            held = moved.len(),
                            "sink is back; forwarding held events"
                        );
                    }
                    // The held events come back when their hold runs out.
                    Err(error) => {
                        tracing::warn!(sink = name, %error, "sink is back, but releasing its held events failed; they return when their hold ends")
                    }
                }
            }
        }
    }

    /// Makes the events held for sink `name` due at `due`, after every settlement sent so far
    /// is written. A second pass a second later catches the settlements of deliveries that
    /// were held while the first one ran.
    async fn release_held(
        &self,
        name: &str,
        due: SystemTime,
        writes: &WriteSender,
    ) -> Result<Vec<String>, StoreError> {
        let (reply, released) = oneshot::channel();
        let write = StoreWrite::BringForward {
            sink: name.to_owned(),
            due,
            reply,
        };
        let stopped = || StoreError::Unavailable("the worker's store writer task stopped".into());
        writes.send(write).map_err(|_| stopped())?;
        let moved = released.await.unwrap_or_else(|_| Err(stopped()))?;

        let store = self.store.clone();
        let sink = name.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if let Err(error) = store.bring_forward(&sink, usize::MAX, due).await {
                tracing::warn!(sink, %error, "failed to release events held while the sink came back");
            }
        });
        Ok(moved)
    }

    /// Decides, for each sink that failed, between another round and the dead-letter queue.
    fn settlement(&self, delivery: &Delivery, outcomes: Vec<(&String, Outcome)>) -> Settlement {
        let attempt = delivery.attempt + 1;
        let mut settlement = Settlement::default();
        let mut retry_sinks = Vec::new();
        let mut held_sinks = Vec::new();
        // How long to hold the event for the held sinks still paused, and when the earliest
        // held sink that came back meanwhile did.
        let mut hold: Option<Duration> = None;
        let mut resumed: Option<SystemTime> = None;
        let mut requested_delay = Duration::ZERO;

        for (sink, outcome) in outcomes {
            let error = match outcome {
                Outcome::Delivered => continue,
                Outcome::Held {
                    generation,
                    probe_again_in,
                } => {
                    metrics::counter!(DELIVERIES, "sink" => sink.clone(), "outcome" => "held")
                        .increment(1);
                    let back_at = self
                        .sinks
                        .get(sink)
                        .and_then(|slot| slot.breaker.due_after_hold(generation));
                    match back_at {
                        Some(at) => {
                            resumed = Some(resumed.map_or(at, |earliest| earliest.min(at)));
                        }
                        None => {
                            let this = probe_again_in.unwrap_or(self.config.visibility_timeout);
                            hold = Some(hold.map_or(this, |hold| hold.min(this)));
                        }
                    }
                    held_sinks.push(sink.clone());
                    continue;
                }
                Outcome::Failed(error) => error,
            };
            if error.retryable && attempt < self.config.max_attempts {
                tracing::warn!(sink = %sink, %error, retry_after = ?error.retry_after, "delivery failed; will retry");
                WorkerStats::add(&self.stats.retried);
                metrics::counter!(DELIVERIES, "sink" => sink.clone(), "outcome" => "retry")
                    .increment(1);
                retry_sinks.push(sink.clone());
                requested_delay = requested_delay.max(error.retry_after.unwrap_or_default());
            } else {
                tracing::error!(sink = %sink, %error, "delivery failed; moved to the dead-letter queue");
                WorkerStats::add(&self.stats.dead_lettered);
                metrics::counter!(DELIVERIES, "sink" => sink.clone(), "outcome" => "dead_letter")
                    .increment(1);
                settlement.dead.push(DeadLetter {
                    sink: sink.clone(),
                    error: error.message,
                });
            }
        }

        if !retry_sinks.is_empty() {
            // A delay the destination asked for (HTTP `Retry-After`) is a floor under the
            // backoff, capped at `backoff_max` so a far-off date cannot park an event.
            let delay = self
                .backoff(attempt)
                .max(requested_delay.min(self.config.backoff_max));
            retry_sinks.extend(held_sinks);
            settlement.retry = Some(Retry {
                sinks: retry_sinks,
                attempt,
                due: SystemTime::now() + delay,
            });
        } else if !held_sinks.is_empty() {
            // No round was made. A held event waits until its sink is back and the worker
            // brings it forward. The visibility timeout bounds the wait, in case the process
            // that held it stops first.

            settlement.retry = Some(Retry {
                sinks: held_sinks,
                attempt: delivery.attempt,
                due: resumed.unwrap_or_else(|| SystemTime::now() + hold.unwrap_or_default()),
            });
        }
        settlement
    }

    /// Returns the delay before round `attempt + 1`: the initial delay doubled per round,
    /// capped, and drawn uniformly from its upper half so that retries of many events spread.
    fn backoff(&self, attempt: u32) -> Duration {
        let doubled = self
            .config
            .backoff_initial
            .saturating_mul(1 << attempt.saturating_sub(1).min(30));
        let ceiling = doubled.min(self.config.backoff_max);
        let floor = ceiling / 2;
        floor + (ceiling - floor).mul_f64(rand::rng().random::<f64>())
    }

    fn log_unrouted(&self, source: &str, event_type: &str) {
        metrics::counter!(UNROUTED, "source" => source.to_owned()).increment(1);
        let mut logged = self
            .unrouted_logged
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if logged.len() < UNROUTED_LOG_LIMIT
            && logged.insert((source.to_owned(), event_type.to_owned()))
        {
            tracing::warn!(
                source,
                event_type = %loggable(event_type),
                "no route matches this event type; events of this type are acknowledged and dropped"
            );
        }
    }
}
