//! What a stream shares with the events it handed out: the settle window, the requeued
//! events waiting to go out again, and the checkpoint.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use asyncworker_core::{Action, Readiness, Settle, SettleError, Settlement};
use tokio::sync::Notify;

use crate::event::{EventData, SseEvent};
use crate::window::{Seq, SettleWindow};

/// The metric handles of one stream.
pub(crate) struct StreamMetrics {
    pub(crate) events: metrics::Counter,
    pub(crate) bytes: metrics::Counter,
    pub(crate) checkpoint: metrics::Gauge,
    pub(crate) unsettled: metrics::Gauge,
    pub(crate) connected: metrics::Gauge,
    route: String,
    path: String,
}

impl StreamMetrics {
    pub(crate) fn new(route: &str, path: &str) -> Self {
        let labels = [("route", route.to_owned()), ("path", path.to_owned())];
        StreamMetrics {
            events: metrics::counter!("asyncworker_sse_events_received_total", &labels),
            bytes: metrics::counter!("asyncworker_sse_bytes_received_total", &labels),
            checkpoint: metrics::gauge!("asyncworker_sse_checkpoint", &labels),
            unsettled: metrics::gauge!("asyncworker_sse_unsettled_events", &labels),
            connected: metrics::gauge!("asyncworker_sse_connected", &labels),
            route: route.to_owned(),
            path: path.to_owned(),
        }
    }

    pub(crate) fn reconnect(&self, cause: &'static str) {
        metrics::counter!(
            "asyncworker_sse_reconnects_total",
            "route" => self.route.clone(),
            "path" => self.path.clone(),
            "cause" => cause,
        )
        .increment(1);
    }
}

/// An event id; `None` when the server set none (then no `Last-Event-ID` is sent).
pub(crate) type Id = Option<Arc<str>>;

/// A stream's checkpoint, shared with the task that saves it.
pub(crate) struct Checkpoint {
    id: Mutex<Id>,
    /// Told on every move (a stored permit while the writer is busy: no wake-up per move).
    pub(crate) changed: Notify,
}

impl Checkpoint {
    pub(crate) fn get(&self) -> Id {
        self.id.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, id: Id) {
        *self.id.lock().unwrap_or_else(|e| e.into_inner()) = id;
        self.changed.notify_one();
    }
}

/// A requeued event, waiting to be handed out again.
pub(crate) struct Redelivery {
    pub(crate) data: Arc<EventData>,
    pub(crate) seq: Seq,
    pub(crate) delivery: u32,
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) window: SettleWindow<Id>,
    pub(crate) redeliver: VecDeque<Redelivery>,
}

/// Shared by a stream and every event it handed out.
pub(crate) struct Shared {
    state: Mutex<State>,
    /// Wakes the stream: an event was requeued or settled.
    pub(crate) notify: Notify,
    /// The checkpoint: the id of the last event of the settled prefix.
    pub(crate) checkpoint: Arc<Checkpoint>,
    /// Told when this is dropped (the stream and all its events are gone), so the checkpoint
    /// writer saves the last checkpoint at once.
    pub(crate) gone: Arc<Notify>,
    /// The stream is still running (a requeued event can be handed out again). Changed and
    /// read under the state's lock, so a requeue is either queued for a running stream or
    /// left for replay, never queued for one that has ended.
    alive: AtomicBool,
    pub(crate) max_redeliveries: u32,
    pub(crate) metrics: StreamMetrics,
    pub(crate) url: String,
}

impl Shared {
    pub(crate) fn new(
        checkpoint: Id,
        max_redeliveries: u32,
        metrics: StreamMetrics,
        url: String,
    ) -> Self {
        if let Some(n) = checkpoint.as_deref().and_then(|id| id.parse::<f64>().ok()) {
            metrics.checkpoint.set(n);
        }
        Shared {
            gone: Arc::new(Notify::new()),
            state: Mutex::default(),
            notify: Notify::new(),
            checkpoint: Arc::new(Checkpoint {
                id: Mutex::new(checkpoint),
                changed: Notify::new(),
            }),
            alive: AtomicBool::new(true),
            max_redeliveries,
            metrics,
            url,
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new event: enter it in the window, give it a settlement slot.
    pub(crate) fn admit(self: &Arc<Self>, data: Arc<EventData>) -> SseEvent {
        let seq = {
            let mut state = self.lock();
            let seq = state.window.push(data.id.clone());
            self.metrics.unsettled.set(state.window.unsettled() as f64);
            seq
        };
        self.event(data, seq, 1)
    }

    /// A block that only moved the id: settled on arrival.
    pub(crate) fn position(&self, id: Id) {
        let end = self.lock().window.push_settled(id).cloned();
        if let Some(end) = end {
            self.advance(end);
        }
    }

    pub(crate) fn event(
        self: &Arc<Self>,
        data: Arc<EventData>,
        seq: Seq,
        delivery: u32,
    ) -> SseEvent {
        let settler = EventSettler {
            shared: Arc::clone(self),
            data: Arc::clone(&data),
            seq,
            delivery,
        };
        SseEvent::new(data, Settlement::new(settler), delivery)
    }

    fn settle(&self, seq: Seq) {
        let (end, unsettled) = {
            let mut state = self.lock();
            let end = state.window.settle(seq).cloned();
            (end, state.window.unsettled())
        };
        self.metrics.unsettled.set(unsettled as f64);
        if let Some(end) = end {
            self.advance(end);
        }
    }

    fn advance(&self, id: Id) {
        if let Some(n) = id.as_deref().and_then(|id| id.parse::<f64>().ok()) {
            self.metrics.checkpoint.set(n);
        }
        tracing::trace!(url = %self.url, checkpoint = ?id, "checkpoint moved");
        self.checkpoint.set(id);
    }

    /// The checkpoint loaded late from the store (it could not be read at start).
    pub(crate) fn load_checkpoint(&self, id: Id) {
        self.advance(id);
    }

    /// End the stream's side unless a requeued event waits to be handed out; whether it
    /// ended. Events still unsettled keep settling through their own `Arc` of this; one
    /// requeued from now on is left for replay.
    pub(crate) fn end_if_idle(&self) -> bool {
        let state = self.lock();
        if !state.redeliver.is_empty() {
            return false;
        }
        self.alive.store(false, Ordering::Release);
        true
    }

    /// End the stream's side now (shutdown): requeued events still waiting are left for
    /// replay.
    pub(crate) fn end(&self) {
        let _state = self.lock();
        self.alive.store(false, Ordering::Release);
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // A permit is stored if the writer is not waiting yet.
        self.gone.notify_one();
    }
}

/// The settlement of one delivery of one event.
struct EventSettler {
    shared: Arc<Shared>,
    data: Arc<EventData>,
    seq: Seq,
    delivery: u32,
}

impl Settle for EventSettler {
    fn settle(&self, action: Action) -> Result<(), SettleError> {
        let shared = &self.shared;
        let requeue = matches!(action, Action::Requeue | Action::RequeueTail);
        if !requeue {
            shared.settle(self.seq);
            return Ok(());
        }
        if self.delivery > shared.max_redeliveries {
            tracing::warn!(
                url = %shared.url,
                id = ?self.data.id,
                name = %self.data.name,
                deliveries = self.delivery,
                "event requeued too many times; rejected so the checkpoint can move on"
            );
            shared.settle(self.seq);
            return Ok(());
        }
        {
            let mut state = shared.lock();
            if !shared.alive.load(Ordering::Acquire) {
                // The stream is gone: the event stays unsettled, the checkpoint stays before
                // it, and a replaying server sends it again after a restart.
                tracing::debug!(url = %shared.url, id = ?self.data.id, "requeue after the stream ended; left for replay");
                return Ok(());
            }
            state.redeliver.push_back(Redelivery {
                data: Arc::clone(&self.data),
                seq: self.seq,
                delivery: self.delivery + 1,
            });
        }
        shared.notify.notify_one();
        Ok(())
    }
}

/// Readiness of a source: true only while every running stream is connected.
#[derive(Debug)]
pub(crate) struct Health {
    readiness: Readiness,
    running: AtomicUsize,
    connected: AtomicUsize,
}

impl Health {
    pub(crate) fn new(readiness: Readiness, streams: usize) -> Self {
        readiness.set(false);
        Health {
            readiness,
            running: AtomicUsize::new(streams),
            connected: AtomicUsize::new(0),
        }
    }

    fn update(&self) {
        let running = self.running.load(Ordering::Acquire);
        let connected = self.connected.load(Ordering::Acquire);
        self.readiness.set(running > 0 && connected >= running);
    }

    pub(crate) fn up(&self) {
        self.connected.fetch_add(1, Ordering::AcqRel);
        self.update();
    }

    pub(crate) fn down(&self) {
        self.connected.fetch_sub(1, Ordering::AcqRel);
        self.update();
    }

    /// A stream ended for good (204, shutdown).
    pub(crate) fn stopped(&self) {
        self.running.fetch_sub(1, Ordering::AcqRel);
        self.update();
    }
}
