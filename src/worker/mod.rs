//! The background worker: claims inbox entries, routes each event to its sinks, and settles
//! the round: done, retried later with backoff, or dead-lettered per sink.
//!
//! Up to `batch_size` entries are in flight at once, and the worker claims more as soon as one
//! settles, so an entry held up by a slow sink does not hold back the entries behind it. Each
//! sink has its own concurrency limit and timeout; the wait for a free slot counts against
//! the timeout, so a sink that falls behind fails its deliveries (to be retried later)
//! instead of piling them up.

mod route;

pub use route::Router;

use crate::config::WorkerConfig;
use crate::event::loggable;
use crate::ops::metrics::{DELIVERIES, END_TO_END_SECONDS, UNROUTED};
use crate::sink::{Sink, SinkError};
use crate::store::{DeadLetter, Delivery, Retry, Settlement, Store};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rand::Rng;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Maximum wait of a claim on an empty inbox before the worker checks for shutdown again.
const CLAIM_WAIT: Duration = Duration::from_secs(1);

/// At most this many distinct unrouted (source, type) pairs are remembered for logging.
const UNROUTED_LOG_LIMIT: usize = 1024;

/// Counts of what the worker did since it started.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Deliveries to one sink that succeeded.
    pub delivered: AtomicU64,
    /// Deliveries to one sink that failed and will be retried.
    pub retried: AtomicU64,
    /// Deliveries to one sink that failed for good and went to the dead-letter queue.
    pub dead_lettered: AtomicU64,
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
        let mut in_flight = FuturesUnordered::new();
        let mut store_failures = 0u32;
        while !shutdown.is_cancelled() {
            let room = self.config.batch_size.saturating_sub(in_flight.len());
            if room == 0 {
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
                    in_flight.extend(batch.into_iter().map(|d| self.process(d)));
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
        self.running.store(false, Ordering::Release);
        tracing::info!("worker stopped");
    }

    /// Makes one delivery round of one entry and settles it.
    async fn process(&self, delivery: Delivery) {
        let span = tracing::info_span!(
            "deliver",
            source = %delivery.event.source,
            event_id = %loggable(&delivery.event.id),
            attempt = delivery.attempt + 1,
        );
        self.process_in_span(delivery).instrument(span).await;
    }

    async fn process_in_span(&self, delivery: Delivery) {
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
        let outcomes = futures::future::join_all(
            sinks
                .iter()
                .map(|name| async move { (name, self.deliver_to(name, delivery_ref).await) }),
        )
        .await;

        let settlement = self.settlement(&delivery, outcomes);
        if let Err(error) = self.store.settle(&delivery, settlement).await {
            // The entry stays pending; it is reclaimed after the visibility timeout and the
            // sinks that already have it skip it by event id.
            tracing::error!(%error, "cannot record delivery outcome");
        }
    }

    async fn deliver_to(&self, name: &str, delivery: &Delivery) -> Result<(), SinkError> {
        let Some(slot) = self.sinks.get(name) else {
            return Err(SinkError::permanent(format!(
                "sink {name:?} is not configured"
            )));
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
        match tokio::time::timeout(slot.timeout, attempt).await {
            Ok(Ok(())) => {
                WorkerStats::add(&self.stats.delivered);
                tracing::info!(sink = name, "delivered");
                let received_at = UNIX_EPOCH + Duration::from_millis(delivery.event.received_at_ms);
                let latency = SystemTime::now()
                    .duration_since(received_at)
                    .unwrap_or_default();
                metrics::histogram!(END_TO_END_SECONDS, "sink" => name.to_owned()).record(latency);
                metrics::counter!(DELIVERIES, "sink" => name.to_owned(), "outcome" => "delivered")
                    .increment(1);
                Ok(())
            }
            Ok(Err(error)) => Err(error),
            Err(_) => Err(SinkError::retryable(format!(
                "timed out after {}",
                humantime::format_duration(slot.timeout)
            ))),
        }
    }

    /// Decides, for each sink that failed, between another round and the dead-letter queue.
    fn settlement(
        &self,
        delivery: &Delivery,
        outcomes: Vec<(&String, Result<(), SinkError>)>,
    ) -> Settlement {
        let attempt = delivery.attempt + 1;
        let mut settlement = Settlement::default();
        let mut retry_sinks = Vec::new();
        let mut requested_delay = Duration::ZERO;

        for (sink, outcome) in outcomes {
            let Err(error) = outcome else { continue };
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
            settlement.retry = Some(Retry {
                sinks: retry_sinks,
                attempt,
                due: SystemTime::now() + delay,
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
