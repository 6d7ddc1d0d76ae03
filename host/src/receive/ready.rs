//! Readiness (`GET /readyz`): whether the service can record deliveries
//! now. `/healthz` only says the process answers; `/readyz` fails while
//! the delivery queue cannot write (closed after an IO error, a full
//! disk), when webhooks would be answered 503.
//!
//! Each check writes a few bytes to the queue's database and flushes them,
//! as recording a delivery does. A result is reused for [`FRESH_FOR`], so
//! a client polling `/readyz` cannot make the service flush more than once
//! a second; concurrent checks wait for the one running.

use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::pipeline::queue::Queue;

/// How long a check's result stands.
const FRESH_FOR: Duration = Duration::from_secs(1);

/// The short reason `/readyz` gives when the queue cannot write (the log
/// names the path and the OS error).
pub(crate) const QUEUE_CANNOT_WRITE: &str = "the delivery queue cannot record deliveries";

/// The last check's time and result.
#[derive(Debug, Default)]
pub(crate) struct Readiness {
    last: Mutex<Option<(Instant, bool)>>,
}

impl Readiness {
    /// `Ok` when `queue` can record a delivery now, or the reason it cannot.
    pub(crate) async fn check(&self, queue: &Queue) -> Result<(), &'static str> {
        let mut last = self.last.lock().await;
        let ready = match *last {
            Some((at, ready)) if at.elapsed() < FRESH_FOR => ready,
            previous => {
                let ready = match queue.probe_write().await {
                    Ok(()) => true,
                    Err(error) => {
                        // Logged when readiness is lost, not at every check.
                        if previous.is_none_or(|(_, was_ready)| was_ready) {
                            tracing::warn!(%error, "not ready: {QUEUE_CANNOT_WRITE}");
                        }
                        false
                    }
                };
                if ready && previous.is_some_and(|(_, was_ready)| !was_ready) {
                    tracing::info!("ready: the delivery queue records deliveries again");
                }
                *last = Some((Instant::now(), ready));
                ready
            }
        };
        if ready {
            Ok(())
        } else {
            Err(QUEUE_CANNOT_WRITE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn a_result_stands_for_a_second_then_the_queue_is_asked_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let queue = Queue::open_dir(&dir.path().join("queue")).expect("queue");
        let readiness = Readiness::default();
        assert_eq!(readiness.check(&queue).await, Ok(()));
        // The result stands for a second, then the queue is asked again.
        *readiness.last.lock().await = Some((Instant::now() - FRESH_FOR, false));
        assert_eq!(readiness.check(&queue).await, Ok(()));
        *readiness.last.lock().await = Some((Instant::now(), false));
        assert_eq!(readiness.check(&queue).await, Err(QUEUE_CANNOT_WRITE));
    }
}
