//! The message and settlement model every backend implements.
//!
//! A message travels through a stack as a cheap clone: its payload is a [`Bytes`] and its
//! [`Settlement`] slot lives behind an `Arc`, so [`Retry`](crate::retry::Retry) can hand the
//! same batch to the handler again and a handler can mark a message after the `Vec` holding
//! it has moved.
//!
//! Settling is two steps:
//!
//! 1. **Marking.** The handler may call [`Message::accept`], [`Message::reject`],
//!    [`Message::requeue`] or [`Message::reject_with`]. Marks only record an intent; the last
//!    one wins. Marks belong to an attempt: when [`Retry`](crate::retry::Retry) runs the
//!    batch again, every mark of the failed attempt is cleared first, so the outcome is
//!    decided by the last attempt alone (its marks, else the policy for its result).
//! 2. **Settling.** After the batch completes, the [`Ack`](crate::ack::Ack) layer settles
//!    every message exactly once: with its mark if it has one (a mark beats the handler's
//!    error), else with the route's policy.
//!
//! A message that is dropped without ever being settled — its batch was cancelled, its
//! handler panicked outside an `Ack` layer, a stack forgot to settle — is requeued when the
//! last clone goes away. Nothing is leaked unsettled.
//!
//! ```
//! use asyncworker_core::{Action, Message, memory::MemoryQueue};
//! use futures::StreamExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let queue = MemoryQueue::new();
//! let id = queue.push_bytes("not json");
//! queue.close();
//!
//! let message = queue.source().next().await.unwrap().unwrap();
//! let copy = message.clone(); // shares the payload and the settlement slot
//! copy.requeue();
//! copy.reject(); // marks only record an intent; the last one wins
//! assert_eq!(message.settlement().marked(), Some(Action::Reject));
//!
//! // What the Ack layer does once the batch is done: the mark, else the policy.
//! let settled = message.settlement().settle_marked_or(Action::Ack).unwrap();
//! assert_eq!(settled, Action::Reject);
//! assert!(message.settlement().is_settled());
//! assert_eq!(queue.settlement(id), Some(Action::Reject));
//! # }
//! ```

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use bytes::Bytes;
use serde::de::DeserializeOwned;

/// What happens to a message once its batch is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Action {
    /// Confirm the message: the broker forgets it.
    Ack,
    /// Reject the message without requeueing it: the broker drops it, or dead-letters it
    /// when the queue has a dead-letter exchange.
    Reject,
    /// Reject the message and put it back in its queue (RabbitMQ puts it near the head, so it
    /// comes back soon, with the redelivered flag set).
    Requeue,
    /// Publish a copy of the message to the tail of its queue with a requeue counter, then
    /// acknowledge the original. Backends that cannot re-publish treat it as
    /// [`Action::Requeue`].
    RequeueTail,
}

impl Action {
    /// A short lowercase name, used as a metrics label and in logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Action::Ack => "ack",
            Action::Reject => "reject",
            Action::Requeue => "requeue",
            Action::RequeueTail => "requeue_tail",
        }
    }

    /// Every action, in [`Action::index`] order.
    pub(crate) const ALL: [Action; 4] = [
        Action::Ack,
        Action::Reject,
        Action::Requeue,
        Action::RequeueTail,
    ];

    /// The action's position in [`Action::ALL`], for per-action tables.
    pub(crate) const fn index(self) -> usize {
        match self {
            Action::Ack => 0,
            Action::Reject => 1,
            Action::Requeue => 2,
            Action::RequeueTail => 3,
        }
    }

    const fn to_u8(self) -> u8 {
        match self {
            Action::Ack => 1,
            Action::Reject => 2,
            Action::Requeue => 3,
            Action::RequeueTail => 4,
        }
    }

    const fn from_u8(v: u8) -> Option<Action> {
        match v {
            1 => Some(Action::Ack),
            2 => Some(Action::Reject),
            3 => Some(Action::Requeue),
            4 => Some(Action::RequeueTail),
            _ => None,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Action {
    type Err = crate::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "ack" => Ok(Action::Ack),
            "reject" => Ok(Action::Reject),
            "requeue" => Ok(Action::Requeue),
            "requeue_tail" | "requeue-tail" => Ok(Action::RequeueTail),
            other => Err(crate::Error::config(format!(
                "unknown action {other:?} (expected ack, reject, requeue or requeue_tail)"
            ))),
        }
    }
}

/// Why a settlement did not reach its broker.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettleError {
    /// The message was already settled; nothing was sent.
    #[error("message already settled")]
    AlreadySettled,
    /// The channel the message arrived on is gone; the broker redelivers the message.
    #[error("the channel this message arrived on is closed; the broker will redeliver it")]
    ChannelClosed,
    /// Any other backend failure.
    #[error("settlement failed")]
    Backend(#[source] crate::BoxError),
}

/// The backend half of settlement: how one message is acked, rejected or requeued.
///
/// Each backend implements it for a small per-message value (a delivery tag and a handle to
/// its channel, say). It is called at most once per message, by [`Settlement`], and must not
/// block: a backend that needs I/O hands the request to a task of its own (which also lets it
/// coalesce acknowledgements). Errors are reported, never panicked on.
pub trait Settle: Send + Sync + 'static {
    /// Settle the message with `action`.
    ///
    /// # Errors
    ///
    /// When the backend can no longer reach the broker for this message.
    fn settle(&self, action: Action) -> Result<(), SettleError>;
}

/// A settler that does nothing: for sources without acknowledgements (ticks, SSE).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopSettle;

impl Settle for NoopSettle {
    fn settle(&self, _action: Action) -> Result<(), SettleError> {
        Ok(())
    }
}

impl<F> Settle for F
where
    F: Fn(Action) -> Result<(), SettleError> + Send + Sync + 'static,
{
    fn settle(&self, action: Action) -> Result<(), SettleError> {
        self(action)
    }
}

const NO_MARK: u8 = 0;

struct Slot<T: Settle> {
    mark: AtomicU8,
    settled: AtomicBool,
    settler: T,
}

trait DynSlot: Send + Sync {
    fn mark(&self) -> &AtomicU8;
    fn settle_once(&self, action: Action) -> Result<(), SettleError>;
    fn is_settled(&self) -> bool;
}

impl<T: Settle> DynSlot for Slot<T> {
    fn mark(&self) -> &AtomicU8 {
        &self.mark
    }

    fn settle_once(&self, action: Action) -> Result<(), SettleError> {
        if self.settled.swap(true, Ordering::AcqRel) {
            return Err(SettleError::AlreadySettled);
        }
        self.settler.settle(action)
    }

    fn is_settled(&self) -> bool {
        self.settled.load(Ordering::Acquire)
    }
}

impl<T: Settle> Drop for Slot<T> {
    fn drop(&mut self) {
        if !*self.settled.get_mut() {
            *self.settled.get_mut() = true;
            if let Err(error) = self.settler.settle(Action::Requeue) {
                // No route is known here, so no route metric: backends count their own
                // failed settlements (the AMQP one by queue and reason).
                tracing::warn!(
                    error = %crate::util::Chain(&error),
                    "requeue of a message dropped unsettled failed"
                );
            } else {
                tracing::debug!("message dropped unsettled; requeued");
            }
        }
    }
}

/// A message's settlement slot: the handler's mark and the once-only settlement.
///
/// Clones share the slot. When the last clone of an unsettled slot is dropped, the message is
/// requeued.
#[derive(Clone)]
pub struct Settlement {
    slot: Arc<dyn DynSlot>,
}

impl Settlement {
    /// A slot that settles through `settler`.
    pub fn new<T: Settle>(settler: T) -> Self {
        Settlement {
            slot: Arc::new(Slot {
                mark: AtomicU8::new(NO_MARK),
                settled: AtomicBool::new(false),
                settler,
            }),
        }
    }

    /// A slot for a source without acknowledgements; settling it does nothing.
    pub fn noop() -> Self {
        Self::new(NoopSettle)
    }

    /// Record the handler's intent. The last mark wins.
    pub fn mark(&self, action: Action) {
        self.slot.mark().store(action.to_u8(), Ordering::Release);
    }

    /// Forget the mark: [`Retry`](crate::retry::Retry) does so before each new attempt.
    pub(crate) fn clear_mark(&self) {
        self.slot.mark().store(NO_MARK, Ordering::Release);
    }

    /// The current mark, if the handler made one.
    pub fn marked(&self) -> Option<Action> {
        Action::from_u8(self.slot.mark().load(Ordering::Acquire))
    }

    /// Whether the message has been settled.
    pub fn is_settled(&self) -> bool {
        self.slot.is_settled()
    }

    /// Settle the message with `action`, ignoring any mark. Only the first call reaches the
    /// backend.
    ///
    /// # Errors
    ///
    /// [`SettleError::AlreadySettled`] on every call after the first, or the backend's error.
    pub fn settle(&self, action: Action) -> Result<(), SettleError> {
        self.slot.settle_once(action)
    }

    /// Settle with the mark if there is one, else with `default`. Returns the action used.
    ///
    /// # Errors
    ///
    /// As [`Settlement::settle`]; the error carries the action that was attempted.
    pub fn settle_marked_or(&self, default: Action) -> Result<Action, (Action, SettleError)> {
        let action = self.marked().unwrap_or(default);
        self.settle(action)
            .map(|()| action)
            .map_err(|e| (action, e))
    }
}

impl fmt::Debug for Settlement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settlement")
            .field("mark", &self.marked())
            .field("settled", &self.is_settled())
            .finish()
    }
}

/// A delivery from any backend.
///
/// Implementations are cheap to clone (payload as [`Bytes`], everything else behind `Arc`)
/// and carry a [`Settlement`]. The marking methods are provided: a handler written against
/// `M: Message` works for every backend.
pub trait Message: Clone + Send + Sync + 'static {
    /// The message body.
    fn payload(&self) -> &Bytes;

    /// The message's settlement slot.
    fn settlement(&self) -> &Settlement;

    /// Decode the body as JSON into `T`.
    ///
    /// # Errors
    ///
    /// When the body is not the JSON `T` expects.
    fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(self.payload())
    }

    /// The body as UTF-8 text.
    ///
    /// # Errors
    ///
    /// When the body is not valid UTF-8.
    fn text(&self) -> Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(self.payload())
    }

    /// Mark the message to be acknowledged, whatever the handler returns.
    fn accept(&self) {
        self.settlement().mark(Action::Ack);
    }

    /// Mark the message to be rejected without requeue (dropped or dead-lettered).
    fn reject(&self) {
        self.settlement().mark(Action::Reject);
    }

    /// Mark the message to be put back in its queue.
    fn requeue(&self) {
        self.settlement().mark(Action::Requeue);
    }

    /// Reject the message, putting it back in its queue when `requeue` is true — the twin of
    /// the Python original's `message.reject(requeue=...)`.
    fn reject_with(&self, requeue: bool) {
        if requeue {
            self.requeue()
        } else {
            self.reject()
        }
    }

    /// Mark the message with any [`Action`].
    fn mark(&self, action: Action) {
        self.settlement().mark(action);
    }
}
