//! An in-memory source: push messages, drive a stack, read back every settlement.
//!
//! For testing handlers and stacks without a broker. [`MemoryQueue`] is a handle: push
//! messages into it, give [`MemoryQueue::source`] to a route or poll it as a `Stream`, then
//! ask what became of each message.
//!
//! ```
//! use asyncworker_core::{Action, Message, memory::MemoryQueue};
//! use futures::StreamExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let queue = MemoryQueue::new();
//! let id = queue.push_json(&serde_json::json!({"count": 1})).unwrap();
//! queue.close();
//!
//! let mut source = queue.source();
//! while let Some(Ok(message)) = source.next().await {
//!     message.reject();
//!     message.settlement().settle_marked_or(Action::Ack).unwrap();
//! }
//! assert_eq!(queue.settlement(id), Some(Action::Reject));
//! # }
//! ```

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures::Stream;
use tokio::sync::Notify;

use crate::{Action, Message, Settle, SettleError, Settlement};

/// Identifies a message pushed into a [`MemoryQueue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub u64);

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A message from a [`MemoryQueue`]. A clone is one reference-count increment.
#[derive(Clone)]
pub struct MemoryMessage {
    meta: Arc<Meta>,
}

struct Meta {
    payload: Bytes,
    settlement: Settlement,
    id: MessageId,
    redelivered: bool,
}

impl MemoryMessage {
    /// The id [`MemoryQueue::push_bytes`] returned for this message.
    pub fn id(&self) -> MessageId {
        self.meta.id
    }

    /// Whether the message was requeued before (with [`MemoryQueue::redeliver_requeued`]).
    pub fn redelivered(&self) -> bool {
        self.meta.redelivered
    }
}

impl Message for MemoryMessage {
    fn payload(&self) -> &Bytes {
        &self.meta.payload
    }

    fn settlement(&self) -> &Settlement {
        &self.meta.settlement
    }
}

impl fmt::Debug for MemoryMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryMessage")
            .field("id", &self.meta.id)
            .field("redelivered", &self.meta.redelivered)
            .field("len", &self.meta.payload.len())
            .field("settlement", &self.meta.settlement)
            .finish()
    }
}

/// A queue of messages in memory, whose settlements are recorded. Clones share the queue.
#[derive(Clone, Default)]
pub struct MemoryQueue {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    settled: Notify,
}

#[derive(Default)]
struct State {
    ready: VecDeque<MemoryMessage>,
    closed: bool,
    redeliver: bool,
    /// The wakers of the sources waiting for a message: every source of the queue, not only
    /// the last one polled, must hear of a push or of the close.
    wakers: Vec<Waker>,
    records: Vec<Record>,
    delivered: usize,
}

impl State {
    /// Wake every waiting source.
    fn wake_sources(&mut self) {
        for waker in self.wakers.drain(..) {
            waker.wake();
        }
    }
}

struct Record {
    payload: Bytes,
    settlements: Vec<Action>,
    /// Delivered and not yet settled.
    outstanding: bool,
}

impl MemoryQueue {
    /// An empty, open queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Put requeued messages back at the end of the queue, flagged as redelivered, as a
    /// broker would. Off by default: a requeue is only recorded.
    pub fn redeliver_requeued(self, on: bool) -> Self {
        self.lock().redeliver = on;
        self
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Push a message with `payload`.
    pub fn push_bytes(&self, payload: impl Into<Bytes>) -> MessageId {
        let payload = payload.into();
        let mut state = self.lock();
        let id = MessageId(state.records.len() as u64);
        state.records.push(Record {
            payload: payload.clone(),
            settlements: Vec::new(),
            outstanding: false,
        });
        let message = self.message(id, payload, false);
        state.ready.push_back(message);
        state.wake_sources();
        id
    }

    /// Push `value` serialized as JSON.
    ///
    /// # Errors
    ///
    /// When `value` cannot be serialized.
    pub fn push_json<T: serde::Serialize + ?Sized>(
        &self,
        value: &T,
    ) -> Result<MessageId, serde_json::Error> {
        Ok(self.push_bytes(serde_json::to_vec(value)?))
    }

    fn message(&self, id: MessageId, payload: Bytes, redelivered: bool) -> MemoryMessage {
        MemoryMessage {
            meta: Arc::new(Meta {
                payload,
                settlement: Settlement::new(MemorySettle {
                    id,
                    queue: Arc::downgrade(&self.shared),
                }),
                id,
                redelivered,
            }),
        }
    }

    /// Close the queue: its source ends once the queued messages are delivered.
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.wake_sources();
    }

    /// A source (a `Stream`) of the queue's messages. Several sources of one queue share its
    /// messages.
    pub fn source(&self) -> MemorySource {
        MemorySource {
            queue: self.clone(),
        }
    }

    /// The last settlement of message `id`, if it has been settled.
    pub fn settlement(&self, id: MessageId) -> Option<Action> {
        self.lock()
            .records
            .get(id.0 as usize)
            .and_then(|r| r.settlements.last().copied())
    }

    /// Every settlement of message `id`, in order (more than one when requeued messages are
    /// redelivered).
    pub fn settlement_history(&self, id: MessageId) -> Vec<Action> {
        self.lock()
            .records
            .get(id.0 as usize)
            .map(|r| r.settlements.clone())
            .unwrap_or_default()
    }

    /// The last settlement of every message, in push order (`None`: not settled yet).
    pub fn settlements(&self) -> Vec<(MessageId, Option<Action>)> {
        self.lock()
            .records
            .iter()
            .enumerate()
            .map(|(i, r)| (MessageId(i as u64), r.settlements.last().copied()))
            .collect()
    }

    /// The payload of message `id`.
    pub fn payload(&self, id: MessageId) -> Option<Bytes> {
        self.lock()
            .records
            .get(id.0 as usize)
            .map(|r| r.payload.clone())
    }

    /// Messages pushed so far.
    pub fn len(&self) -> usize {
        self.lock().records.len()
    }

    /// Whether nothing was pushed yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Messages waiting to be delivered.
    pub fn ready(&self) -> usize {
        self.lock().ready.len()
    }

    /// Messages delivered and not settled yet.
    pub fn outstanding(&self) -> usize {
        self.lock().records.iter().filter(|r| r.outstanding).count()
    }

    /// Total deliveries so far (redeliveries included).
    pub fn delivered(&self) -> usize {
        self.lock().delivered
    }

    /// Wait until every message pushed so far has been settled at least once and nothing is
    /// outstanding or waiting for redelivery.
    pub async fn wait_settled(&self) {
        loop {
            let notified = self.shared.settled.notified();
            {
                let state = self.lock();
                let done = state.ready.is_empty()
                    && state
                        .records
                        .iter()
                        .all(|r| !r.outstanding && !r.settlements.is_empty());
                if done {
                    return;
                }
            }
            notified.await;
        }
    }
}

impl fmt::Debug for MemoryQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("MemoryQueue")
            .field("pushed", &state.records.len())
            .field("ready", &state.ready.len())
            .field("closed", &state.closed)
            .finish()
    }
}

struct MemorySettle {
    id: MessageId,
    queue: Weak<Shared>,
}

impl Settle for MemorySettle {
    fn settle(&self, action: Action) -> Result<(), SettleError> {
        let Some(shared) = self.queue.upgrade() else {
            // The queue is gone, and nobody is left to ask what became of the message.
            return Ok(());
        };
        let queue = MemoryQueue { shared };
        let mut state = queue.lock();
        let redeliver = state.redeliver && matches!(action, Action::Requeue | Action::RequeueTail);
        let Some(record) = state.records.get_mut(self.id.0 as usize) else {
            return Err(SettleError::Backend("unknown message id".into()));
        };
        record.settlements.push(action);
        record.outstanding = false;
        if redeliver {
            let payload = record.payload.clone();
            let message = queue.message(self.id, payload, true);
            state.ready.push_back(message);
            state.wake_sources();
        }
        drop(state);
        queue.shared.settled.notify_waiters();
        Ok(())
    }
}

/// The `Stream` of a [`MemoryQueue`]'s messages. It ends when the queue is closed and empty.
#[derive(Debug, Clone)]
pub struct MemorySource {
    queue: MemoryQueue,
}

impl MemorySource {
    /// The queue this source reads.
    pub fn queue(&self) -> &MemoryQueue {
        &self.queue
    }
}

impl Stream for MemorySource {
    type Item = Result<MemoryMessage, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut state = self.queue.lock();
        if let Some(message) = state.ready.pop_front() {
            state.delivered += 1;
            if let Some(record) = state.records.get_mut(message.id().0 as usize) {
                record.outstanding = true;
            }
            return Poll::Ready(Some(Ok(message)));
        }
        if state.closed {
            return Poll::Ready(None);
        }
        if !state.wakers.iter().any(|w| w.will_wake(cx.waker())) {
            state.wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}
