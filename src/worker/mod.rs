//! The background worker: claims inbox entries, routes each event to its sinks, and settles
//! the round: done, retried later with backoff, or dead-lettered per sink.

mod route;

pub use route::Router;

use crate::config::WorkerConfig;
use crate::ops::metrics::{DELIVERIES, END_TO_END_SECONDS, UNROUTED};
use crate::sink::{Sink, SinkError};
use crate::store::{DeadLetter, Delivery, Retry, Settlement, Store};
use rand::Rng;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Maximum wait of a claim on an empty inbox before the worker checks for shutdown again.
const CLAIM_WAIT: Duration = Duration::from_secs(1);

/// At most this many distinct unrouted (source, type) pairs are remembered for logging.
const UNROUTED_LOG_LIMIT: usize = 1024;

pub struct Worker {
    store: Arc<dyn Store>,
    sinks: HashMap<String, Arc<dyn Sink>>,
    router: Router,
    config: WorkerConfig,
    /// (source, type) pairs already logged as unrouted, so each is logged once.
    unrouted_logged: Mutex<HashSet<(String, String)>>,
    /// True while [`Worker::run`] loops; read by the readiness probe.
    running: Arc<AtomicBool>,
}

impl Worker {
    pub fn new(
        store: Arc<dyn Store>,
        sinks: HashMap<String, Arc<dyn Sink>>,
        router: Router,
        config: WorkerConfig,
    ) -> Self {
        Self {
            store,
            sinks,
            router,
            config,
            unrouted_logged: Mutex::new(HashSet::new()),
            running: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Returns the flag that is true while the worker runs.
    pub fn running_flag(&self) -> Arc<AtomicBool> {
        self.running.clone()
    }

    /// Runs until `shutdown` is cancelled. A batch in progress is finished first; anything
    /// claimed and not settled stays pending and is reclaimed after the visibility timeout.
    pub async fn run(self, shutdown: CancellationToken) {
        self.running.store(true, Ordering::Release);
        let mut store_failures = 0u32;
        while !shutdown.is_cancelled() {
            let claimed = tokio::select! {
                claimed = self.store.claim(self.config.batch_size, CLAIM_WAIT) => claimed,
                () = shutdown.cancelled() => break,
            };
            match claimed {
                Ok(batch) => {
                    store_failures = 0;
                    if !batch.is_empty() {
                        tracing::debug!(entries = batch.len(), "claimed");
                    }
                    futures::future::join_all(batch.into_iter().map(|d| self.process(d))).await;
                }
                Err(error) => {
                    store_failures = store_failures.saturating_add(1);
                    let pause = Duration::from_millis(250) * store_failures.min(20);
                    tracing::warn!(%error, retry_in = ?pause, "cannot claim inbox entries");
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = shutdown.cancelled() => break,
                    }
                }
            }
        }
        self.running.store(false, Ordering::Release);
        tracing::info!("worker stopped");
    }

    /// Makes one delivery round of one entry and settles it.
    async fn process(&self, delivery: Delivery) {
        let span = tracing::info_span!(
            "deliver",
            source = %delivery.event.source,
            event_id = %delivery.event.id,
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
        let Some(sink) = self.sinks.get(name) else {
            return Err(SinkError::permanent(format!(
                "sink {name:?} is not configured"
            )));
        };
        match tokio::time::timeout(self.config.sink_timeout, sink.deliver(&delivery.event)).await {
            Ok(Ok(())) => {
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
                humantime::format_duration(self.config.sink_timeout)
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

        for (sink, outcome) in outcomes {
            let Err(error) = outcome else { continue };
            if error.retryable && attempt < self.config.max_attempts {
                tracing::warn!(sink = %sink, %error, "delivery failed; will retry");
                metrics::counter!(DELIVERIES, "sink" => sink.clone(), "outcome" => "retry")
                    .increment(1);
                retry_sinks.push(sink.clone());
            } else {
                tracing::error!(sink = %sink, %error, "delivery failed; moved to the dead-letter queue");
                metrics::counter!(DELIVERIES, "sink" => sink.clone(), "outcome" => "dead_letter")
                    .increment(1);
                settlement.dead.push(DeadLetter {
                    sink: sink.clone(),
                    error: error.message,
                });
            }
        }

        if !retry_sinks.is_empty() {
            settlement.retry = Some(Retry {
                sinks: retry_sinks,
                attempt,
                due: SystemTime::now() + self.backoff(attempt),
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
                event_type,
                "no route matches this event type; events of this type are acknowledged and dropped"
            );
        }
    }
}
