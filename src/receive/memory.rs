//! A budget of request body bytes held in memory at once, shared by every connection, so that
//! many large bodies arriving together get 503 responses instead of exhausting memory.

use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The shared budget, in bytes.
#[derive(Debug, Clone)]
pub struct BodyMemory {
    permits: Arc<Semaphore>,
    capacity: usize,
}

impl BodyMemory {
    /// Creates a budget of `capacity` bytes, at most [`Semaphore::MAX_PERMITS`].
    pub fn new(capacity: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(capacity.min(Semaphore::MAX_PERMITS))),
            capacity,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Starts an empty reservation for one request.
    pub fn reservation(&self) -> Reservation {
        Reservation {
            permits: self.permits.clone(),
            held: None,
        }
    }
}

/// Bytes that one request has taken from the budget; they return to it when this is dropped.
#[derive(Debug)]
pub struct Reservation {
    permits: Arc<Semaphore>,
    held: Option<OwnedSemaphorePermit>,
}

impl Reservation {
    /// Takes `bytes` more from the budget without waiting, and returns false when fewer are
    /// left. Bytes taken before a failure stay held until the reservation is dropped.
    pub fn grow(&mut self, bytes: usize) -> bool {
        let mut remaining = bytes;
        while remaining > 0 {
            let count = u32::try_from(remaining).unwrap_or(u32::MAX);
            let Ok(permit) = self.permits.clone().try_acquire_many_owned(count) else {
                return false;
            };
            match &mut self.held {
                Some(held) => held.merge(permit),
                None => self.held = Some(permit),
            }
            remaining -= count as usize;
        }
        true
    }

    /// Bytes held.
    pub fn held(&self) -> usize {
        self.held
            .as_ref()
            .map_or(0, OwnedSemaphorePermit::num_permits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_return_when_dropped() {
        let memory = BodyMemory::new(100);
        let mut first = memory.reservation();
        assert!(first.grow(60));
        assert!(first.grow(0));
        assert_eq!(first.held(), 60);

        let mut second = memory.reservation();
        assert!(!second.grow(41), "only 40 bytes are left");
        assert!(second.grow(40));
        assert!(!second.grow(1));

        drop(first);
        assert!(second.grow(60));
        assert_eq!(second.held(), 100);
    }
}
