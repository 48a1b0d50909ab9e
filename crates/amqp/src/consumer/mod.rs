//! The task that consumes one queue of a route: its own channel, QoS, consumer, settlements
//! and requeue-tail copies; retried with backoff when the queue cannot be consumed.
//!
//! - `queue`: [`QueueTask`], opening the channel and handing out deliveries;
//! - `channel`: the channel task's state, performing settlements;
//! - `tail`: [`Action::RequeueTail`](asyncworker_core::Action::RequeueTail) copies.

mod channel;
mod queue;
mod tail;

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use asyncworker_core::{Backoff, Readiness};
use tokio_util::sync::CancellationToken;

pub(crate) use queue::QueueTask;
pub(crate) use tail::TailPublisher;

use crate::error::{AmqpError, Endpoint};
use crate::message::AmqpMessage;

pub(crate) type Item = Result<AmqpMessage, AmqpError>;

/// What every queue task of a route shares.
pub(crate) struct RouteShared {
    pub(crate) route: Arc<str>,
    pub(crate) endpoint: Endpoint,
    pub(crate) prefetch: u16,
    pub(crate) backoff: Backoff,
    /// Failed connection attempts in a row before giving up (`None`: never).
    pub(crate) max_attempts: Option<u32>,
    pub(crate) requeue_tail_cap: Option<u64>,
    /// The publisher of requeue-tail copies, on a connection of its own.
    pub(crate) tail: Arc<TailPublisher>,
    /// Graceful stop: the runtime's shutdown, or the stream being dropped.
    pub(crate) stop: CancellationToken,
    /// The queues consuming, and the route's readiness derived from them.
    pub(crate) consuming: Consuming,
    /// Channels opened so far, to number channel generations.
    pub(crate) channels_opened: AtomicU64,
    /// What ended the current connection, as first noticed.
    pub(crate) loss_reason: Mutex<Option<String>>,
}

impl RouteShared {
    /// Record why the connection was lost, unless a reason is already known.
    pub(crate) fn note_loss(&self, reason: impl FnOnce() -> String) {
        let mut slot = self.loss_reason.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(reason());
        }
    }

    /// Take the recorded reason of the connection's loss.
    pub(crate) fn take_loss(&self) -> Option<String> {
        self.loss_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    fn consuming_changed(&self, delta: isize) {
        self.consuming.changed(delta > 0, self.stop.is_cancelled());
    }
}

/// How many of a route's queues are consuming, and the route's readiness derived from it:
/// ready while every queue is consuming and the source is not stopping.
///
/// The count and the flag change together, under one lock: with a counter and a separate
/// store, two queues starting at once could store their verdicts in the wrong order (the
/// first's "not yet" after the second's "ready"), leaving a fully consuming route not ready.
pub(crate) struct Consuming {
    count: Mutex<usize>,
    queues: usize,
    readiness: Readiness,
}

impl Consuming {
    /// None of `queues` queues consuming yet; the readiness goes to `readiness`.
    pub(crate) fn new(queues: usize, readiness: Readiness) -> Self {
        Consuming {
            count: Mutex::new(0),
            queues,
            readiness,
        }
    }

    /// A queue started (`started`) or stopped consuming; while `stopping`, the route is not
    /// ready whatever the count.
    pub(crate) fn changed(&self, started: bool, stopping: bool) {
        let mut count = self.count.lock().unwrap_or_else(|e| e.into_inner());
        *count = if started {
            count.saturating_add(1)
        } else {
            count.saturating_sub(1)
        };
        self.readiness.set(*count == self.queues && !stopping);
    }

    /// Whether the route is ready: every queue consuming, and the source not stopping.
    pub(crate) fn ready(&self) -> bool {
        self.readiness.get()
    }

    /// Not ready, whatever the count: the connection is gone, or the source stopped.
    pub(crate) fn not_ready(&self) {
        let _count = self.count.lock().unwrap_or_else(|e| e.into_inner());
        self.readiness.set(false);
    }
}

/// How long what a retry loop keeps up must stay healthy for its backoff to start over: the
/// connection, with every queue of the route consuming (the route ready), for the
/// supervisor; the consumer, for a queue task (each loop's [`FailureStreak`](asyncworker_core::FailureStreak)). A connection or
/// consumer that ends sooner is one more failure in a row, so a broker that ends each one right after it started (a user
/// allowed no channel, a queue deleted as soon as it is consumed) is retried with a growing
/// delay, not at once. The same period as the SSE source's default `healthy_after`.
pub(crate) const HEALTHY_AFTER: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::*;

    /// Two queues start consuming at the same time, from two threads, many times over:
    /// each time, once both have started the route is ready, and once both have stopped it
    /// is not. (The count and the readiness flag used to be two steps, so the first queue's
    /// "not yet" could be stored after the second queue's "ready".)
    #[test]
    fn queues_starting_together_leave_the_route_ready() {
        const ROUNDS: usize = 50_000;
        let readiness = Readiness::default();
        let consuming = Arc::new(Consuming::new(2, readiness.clone()));
        // Spinning rendezvous, so that both threads act within nanoseconds of each other:
        // `go` is the step the other thread may take, `done` the last step it took.
        let go = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicUsize::new(0));
        let abort = Arc::new(AtomicBool::new(false));
        let other = {
            let (consuming, go, done, abort) =
                (consuming.clone(), go.clone(), done.clone(), abort.clone());
            std::thread::spawn(move || {
                for step in 1..=2 * ROUNDS {
                    while go.load(Ordering::Acquire) < step {
                        if abort.load(Ordering::Relaxed) {
                            return;
                        }
                        std::hint::spin_loop();
                    }
                    consuming.changed(step % 2 == 1, false);
                    done.store(step, Ordering::Release);
                }
            })
        };
        let mut wrong = (0, 0);
        for step in 1..=2 * ROUNDS {
            go.store(step, Ordering::Release);
            let started = step % 2 == 1;
            consuming.changed(started, false);
            while done.load(Ordering::Acquire) < step {
                std::hint::spin_loop();
            }
            match (started, readiness.get()) {
                (true, false) => wrong.0 += 1,
                (false, true) => wrong.1 += 1,
                _ => {}
            }
        }
        abort.store(true, Ordering::Relaxed);
        other.join().unwrap();
        assert_eq!(
            wrong,
            (0, 0),
            "(rounds not ready with both queues consuming, rounds ready with none) of {ROUNDS}"
        );
    }
}
