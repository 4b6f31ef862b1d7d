//! The pause of a sink that keeps failing.
//!
//! A few failed deliveries in a row mean the sink is down rather than one event being bad. From
//! then on the worker stops sending to it: every event owed to the sink is held, that is set
//! aside in the store without a delivery round being counted, so an outage does not use up
//! the events' attempts. After a pause one held event is tried again (the probe). While the
//! sink stays down, the same event probes each time and the pause doubles up to a ceiling.
//! Once the sink takes an event, the worker makes every held event due at one time and only
//! then ends the pause, so that the held events are claimed, and forwarded, in the order they
//! arrived, ahead of anything newer.
//!
//! The state lives in the process, so each replica pauses the sinks that fail for it.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// Maximum pause between two probes, so that a recovered sink is found within this time.
pub const MAX_PAUSE: Duration = Duration::from_secs(10);

/// Time after requesting the probe event from the store before any held event may probe instead,
/// in case the requested one went to another replica.
const REQUEST_AGAIN_AFTER: Duration = Duration::from_secs(1);

/// The worker's decision about one delivery to a sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The sink is not paused: deliver as usual.
    Deliver,
    /// The sink is paused and this delivery tests whether it is back.
    Probe,
    /// The sink is paused: set the event aside until the sink is back. `generation` shows
    /// whether the sink came back between this decision and the settlement.
    Hold { generation: u64 },
}

/// A change the worker must act on after a delivery's outcome is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    None,
    Paused {
        pause: Duration,
    },
    /// The sink took an event while paused. The worker makes the held events due at `due`,
    /// then calls [`Breaker::resume`].
    Resuming {
        due: SystemTime,
    },
    StillDown {
        pause: Duration,
    },
}

#[derive(Debug)]
pub struct Breaker {
    state: Mutex<State>,
    /// Retryable failures in a row, with no success between them, that pause the sink; 0
    /// never pauses it.
    failures_to_pause: u32,
    first_pause: Duration,
    longest_pause: Duration,
}

#[derive(Debug, Default)]
struct State {
    /// Retryable failures in a row while not paused.
    failures: u32,
    paused: Option<Paused>,
    /// Incremented each time the sink comes back.
    generation: u64,
    /// The due time the held events got when the sink last came back.
    resumed_due: Option<SystemTime>,
}

#[derive(Debug)]
struct Paused {
    /// No probe before this time.
    until: Instant,
    /// Probes that failed during this pause.
    failed_probes: u32,
    probing: bool,
    /// The event that probed last; it probes again, so the oldest held event stays first.
    probe_event: Option<String>,
    /// When the worker last requested the probe event from the store.
    requested: Option<Instant>,
    /// Set once the sink took an event: the due time given to the held events.
    resuming: Option<SystemTime>,
}

impl Breaker {
    /// Creates a breaker that pauses after `failures_to_pause` failures in a row (never when
    /// 0), whose first pause is `first_pause`, doubled after each failed probe up to
    /// `longest_pause`.
    pub fn new(failures_to_pause: u32, first_pause: Duration, longest_pause: Duration) -> Self {
        Self {
            state: Mutex::default(),
            failures_to_pause,
            first_pause: first_pause.min(longest_pause),
            longest_pause,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pause_after(&self, failed_probes: u32) -> Duration {
        self.first_pause
            .saturating_mul(1 << failed_probes.min(20))
            .min(self.longest_pause)
    }

    /// Decides about one delivery of the entry `handle`. Only a retry (`retry` true: an event
    /// held or failed before) may probe, so that a newer event never overtakes the held ones.
    /// Of those, the event that probed last goes first, unless it has not come back within
    /// [`REQUEST_AGAIN_AFTER`] of the request for it.
    pub fn admit(&self, handle: &str, retry: bool, now: Instant) -> Admission {
        let mut state = self.lock();
        let generation = state.generation;
        let Some(paused) = state.paused.as_mut() else {
            return Admission::Deliver;
        };
        let chosen = match &paused.probe_event {
            None => true,
            Some(event) => {
                event == handle
                    || paused.requested.is_some_and(|requested| {
                        now.duration_since(requested) >= REQUEST_AGAIN_AFTER
                    })
            }
        };
        let ready = paused.resuming.is_none() && !paused.probing && now >= paused.until;
        if retry && ready && chosen {
            paused.probing = true;
            return Admission::Probe;
        }
        Admission::Hold { generation }
    }

    /// Returns true when the sink is paused, its pause is over, no probe runs and the store
    /// had no request for the probe event during the last [`REQUEST_AGAIN_AFTER`]. Records the request.
    pub fn should_request_probe(&self, now: Instant) -> bool {
        let mut state = self.lock();
        let Some(paused) = state.paused.as_mut() else {
            return false;
        };
        let recently = paused
            .requested
            .is_some_and(|requested| now.duration_since(requested) < REQUEST_AGAIN_AFTER);
        if paused.resuming.is_some() || paused.probing || now < paused.until || recently {
            return false;
        }
        paused.requested = Some(now);
        true
    }

    /// Records a delivery that the sink took or rejected for good. Either way the sink
    /// responded, so it is up, and a pause moves on to resuming.
    pub fn succeeded(&self) -> Transition {
        let mut state = self.lock();
        state.failures = 0;
        match state.paused.as_mut() {
            Some(paused) if paused.resuming.is_none() => {
                let due = SystemTime::now();
                paused.resuming = Some(due);
                paused.probing = false;
                Transition::Resuming { due }
            }
            _ => Transition::None,
        }
    }

    /// Ends the pause once the held events have been made due.
    pub fn resume(&self) {
        let mut state = self.lock();
        if let Some(paused) = state.paused.take() {
            state.generation += 1;
            state.resumed_due = paused.resuming.or_else(|| Some(SystemTime::now()));
        }
    }

    /// Records a retryable failure of a delivery of the entry `handle`.
    pub fn failed(&self, probe: bool, handle: &str, now: Instant) -> Transition {
        let mut state = self.lock();
        if let Some(paused) = state.paused.as_mut() {
            if !probe {
                return Transition::None;
            }
            paused.failed_probes = paused.failed_probes.saturating_add(1);
            paused.probing = false;
            paused.probe_event = Some(handle.to_owned());
            paused.requested = None;
            let pause = self.pause_after(paused.failed_probes);
            paused.until = now + pause;
            return Transition::StillDown { pause };
        }
        state.failures = state.failures.saturating_add(1);
        if self.failures_to_pause == 0 || state.failures < self.failures_to_pause {
            return Transition::None;
        }
        let pause = self.pause_after(0);
        state.paused = Some(Paused {
            until: now + pause,
            failed_probes: 0,
            probing: false,
            probe_event: None,
            requested: None,
            resuming: None,
        });
        Transition::Paused { pause }
    }

    /// Returns the current generation while the sink is paused, else `None`.
    pub fn paused_generation(&self) -> Option<u64> {
        let state = self.lock();
        state.paused.as_ref().map(|_| state.generation)
    }

    /// Returns when an event held at `generation` should be due, if the sink has come back
    /// since, or is coming back: the same time the other held events got.
    pub fn due_after_hold(&self, generation: u64) -> Option<SystemTime> {
        let state = self.lock();
        if state.generation != generation {
            return state.resumed_due;
        }
        state.paused.as_ref().and_then(|paused| paused.resuming)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRST: Duration = Duration::from_millis(100);
    const FAILURES_TO_PAUSE: u32 = 3;

    fn breaker() -> Breaker {
        Breaker::new(FAILURES_TO_PAUSE, FIRST, Duration::from_millis(350))
    }

    #[test]
    fn zero_never_pauses() {
        let breaker = Breaker::new(0, FIRST, FIRST);
        let now = Instant::now();
        for n in 0..100 {
            assert_eq!(breaker.failed(false, &n.to_string(), now), Transition::None);
        }
        assert_eq!(breaker.admit("1", true, now), Admission::Deliver);
    }

    fn pause(breaker: &Breaker, now: Instant) {
        for _ in 0..FAILURES_TO_PAUSE - 1 {
            assert_eq!(breaker.failed(false, "1", now), Transition::None);
        }
        assert_eq!(
            breaker.failed(false, "1", now),
            Transition::Paused { pause: FIRST }
        );
    }

    #[test]
    fn failures_with_a_success_between_do_not_pause() {
        let breaker = breaker();
        let now = Instant::now();
        for _ in 0..5 {
            breaker.failed(false, "1", now);
            breaker.failed(false, "2", now);
            assert_eq!(breaker.succeeded(), Transition::None);
        }
        assert_eq!(breaker.admit("3", false, now), Admission::Deliver);
    }

    #[test]
    fn paused_sink_holds_until_a_retry_probes() {
        let breaker = breaker();
        let now = Instant::now();
        pause(&breaker, now);
        assert_eq!(breaker.paused_generation(), Some(0));
        let hold = Admission::Hold { generation: 0 };

        assert_eq!(breaker.admit("1", true, now), hold);
        let later = now + FIRST;
        // A new event never probes, so it cannot pass the held ones.
        assert_eq!(breaker.admit("9", false, later), hold);
        assert_eq!(breaker.admit("1", true, later), Admission::Probe);
        // One probe at a time.
        assert_eq!(breaker.admit("2", true, later), hold);
    }

    #[test]
    fn probe_repeats_with_same_event() {
        let breaker = breaker();
        let now = Instant::now();
        pause(&breaker, now);
        assert_eq!(breaker.admit("5", true, now + FIRST), Admission::Probe);
        let pause = FIRST * 2;
        assert_eq!(
            breaker.failed(true, "5", now + FIRST),
            Transition::StillDown { pause }
        );

        let next = now + FIRST + pause;
        assert!(breaker.should_request_probe(next));
        let hold = Admission::Hold { generation: 0 };
        assert_eq!(breaker.admit("6", true, next), hold);
        assert_eq!(breaker.admit("5", true, next), Admission::Probe);
    }

    #[test]
    fn probe_falls_back_to_other_event() {
        let breaker = breaker();
        let now = Instant::now();
        pause(&breaker, now);
        assert_eq!(breaker.admit("5", true, now + FIRST), Admission::Probe);
        breaker.failed(true, "5", now + FIRST);
        let next = now + Duration::from_secs(1);
        assert!(breaker.should_request_probe(next));
        let much_later = next + REQUEST_AGAIN_AFTER;
        assert_eq!(breaker.admit("6", true, much_later), Admission::Probe);
    }

    #[test]
    fn pause_doubles_up_to_maximum() {
        let breaker = breaker();
        let mut now = Instant::now();
        pause(&breaker, now);
        let mut pauses = Vec::new();
        for _ in 0..3 {
            now += Duration::from_secs(1);
            assert_eq!(breaker.admit("1", true, now), Admission::Probe);
            match breaker.failed(true, "1", now) {
                Transition::StillDown { pause } => pauses.push(pause),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(pauses, [200, 350, 350].map(Duration::from_millis).to_vec());
    }

    #[test]
    fn pause_ignores_earlier_delivery_failure() {
        let breaker = breaker();
        let now = Instant::now();
        pause(&breaker, now);
        assert_eq!(breaker.failed(false, "2", now + FIRST), Transition::None);
        assert_eq!(breaker.admit("2", true, now + FIRST), Admission::Probe);
    }

    #[test]
    fn success_resumes_after_the_held_events_are_released() {
        let breaker = breaker();
        let now = Instant::now();
        pause(&breaker, now);
        assert_eq!(breaker.admit("1", true, now + FIRST), Admission::Probe);
        let Transition::Resuming { due } = breaker.succeeded() else {
            panic!("a success while paused resumes");
        };
        // Until the held events are released, everything is held, due at the same time.
        assert_eq!(
            breaker.admit("2", true, now + FIRST),
            Admission::Hold { generation: 0 }
        );
        assert_eq!(breaker.due_after_hold(0), Some(due));

        breaker.resume();
        assert_eq!(breaker.paused_generation(), None);
        assert_eq!(breaker.due_after_hold(0), Some(due));
        assert_eq!(breaker.due_after_hold(1), None);
        assert_eq!(breaker.admit("3", false, now), Admission::Deliver);
    }

    #[test]
    fn probe_requested_once_per_interval() {
        let breaker = breaker();
        let now = Instant::now();
        assert!(!breaker.should_request_probe(now), "not paused");
        pause(&breaker, now);
        assert!(!breaker.should_request_probe(now), "pause not over");
        assert!(breaker.should_request_probe(now + FIRST));
        assert!(!breaker.should_request_probe(now + FIRST * 2));
        assert!(breaker.should_request_probe(now + FIRST + REQUEST_AGAIN_AFTER));
    }
}
