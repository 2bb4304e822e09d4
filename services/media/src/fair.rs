//! Each system's share of media's work.
//!
//! Every data request takes a place among the requests in flight, for all
//! systems ([`limits::IN_FLIGHT`]) and for its own system
//! ([`limits::SYSTEM_IN_FLIGHT`]); without one it is answered "busy" at
//! once, which an agent retries. A request that has its place then waits
//! for one of its system's [`limits::SYSTEM_WORKERS`] turns before it reads
//! or writes the repository, so one system flooding media queues behind
//! itself while the others keep their turns and the blocking threads.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::MediaError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::limits;

/// The places and turns of every system.
pub(crate) struct Fairness {
    all: Arc<Semaphore>,
    systems: Mutex<HashMap<String, Share>>,
}

#[derive(Clone)]
struct Share {
    in_flight: Arc<Semaphore>,
    workers: Arc<Semaphore>,
}

/// A request's place in flight; [`Admitted::turn`] waits for its turn.
pub(crate) struct Admitted {
    _all: OwnedSemaphorePermit,
    _system: OwnedSemaphorePermit,
    workers: Arc<Semaphore>,
}

impl Admitted {
    /// Waits for one of the system's turns at the repository.
    pub(crate) async fn turn(&self) -> OwnedSemaphorePermit {
        self.workers
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }
}

impl Fairness {
    pub(crate) fn new() -> Self {
        Fairness {
            all: Arc::new(Semaphore::new(limits::IN_FLIGHT)),
            systems: Mutex::new(HashMap::new()),
        }
    }

    /// A place for a request of `system`, or the "busy" answer.
    pub(crate) fn admit(&self, system: &str) -> Result<Admitted, MediaError> {
        let share = self
            .systems
            .lock()
            .expect("fairness lock")
            .entry(system.to_owned())
            .or_insert_with(|| Share {
                in_flight: Arc::new(Semaphore::new(limits::SYSTEM_IN_FLIGHT)),
                workers: Arc::new(Semaphore::new(limits::SYSTEM_WORKERS)),
            })
            .clone();
        let system_place = share.in_flight.try_acquire_owned().map_err(|_| {
            limits::busy(
                system,
                &format!(
                    "{} requests of this system in flight",
                    limits::SYSTEM_IN_FLIGHT
                ),
            )
        })?;
        let all_place = self.all.clone().try_acquire_owned().map_err(|_| {
            limits::busy(system, &format!("{} requests in flight", limits::IN_FLIGHT))
        })?;
        Ok(Admitted {
            _all: all_place,
            _system: system_place,
            workers: share.workers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_system_over_its_share_is_busy_and_the_others_are_not() {
        let f = Fairness::new();
        let held: Vec<_> = (0..limits::SYSTEM_IN_FLIGHT)
            .map(|_| f.admit("evil").unwrap())
            .collect();
        let e = f.admit("evil").err().unwrap().to_reply();
        assert!(e.retryable && e.message.contains("evil"), "{e:?}");
        let other = f.admit("good").unwrap();
        // Turns: the flooding system's are taken, the other's are free.
        let _turns: Vec<_> =
            futures::future::join_all(held[..limits::SYSTEM_WORKERS].iter().map(|a| a.turn()))
                .await;
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), held[0].turn())
                .await
                .is_err()
        );
        let _turn = tokio::time::timeout(std::time::Duration::from_millis(50), other.turn())
            .await
            .unwrap();
        drop(held);
        f.admit("evil").unwrap();
    }
}
