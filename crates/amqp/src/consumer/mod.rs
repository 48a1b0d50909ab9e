//! The task that consumes one queue of a route: its own channel, QoS, consumer, settlements
//! and requeue-tail copies; retried with backoff when the queue cannot be consumed.
//!
//! - `queue`: [`QueueTask`], opening the channel and handing out deliveries;
//! - `channel`: the channel task's state, performing settlements;
//! - `tail`: [`Action::RequeueTail`](asyncworker_core::Action::RequeueTail) copies.

mod channel;
mod queue;
mod tail;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

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
    pub(crate) readiness: Readiness,
    /// Queues currently consuming, against the route's queue count.
    pub(crate) consuming: AtomicUsize,
    pub(crate) queue_count: usize,
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
        let now = if delta > 0 {
            self.consuming
                .fetch_add(1, Ordering::AcqRel)
                .saturating_add(1)
        } else {
            self.consuming
                .fetch_sub(1, Ordering::AcqRel)
                .saturating_sub(1)
        };
        self.readiness
            .set(now == self.queue_count && !self.stop.is_cancelled());
    }
}
