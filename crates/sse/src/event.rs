//! [`SseEvent`]: one Server-Sent Event, as a core [`Message`].

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use asyncworker_core::{Message, Settlement};
use bytes::Bytes;

use crate::parse::RawEvent;

/// One event from an SSE stream. A clone is one reference-count increment.
///
/// The payload ([`Message::payload`]) is the event's data: its `data:` lines joined with
/// `\n`. [`Message::json`] decodes it into any type; [`SseEvent::body`] decodes it once into a
/// [`serde_json::Value`] and keeps it, the twin of the Python original's `event.body`:
///
/// ```
/// # use asyncworker_sse::SseEvent;
/// # fn handle(event: &SseEvent) -> Result<(), asyncworker_core::BoxError> {
/// if event.name() == "deployment_info" {
///     println!("{}", event.body()?["plan"]["id"]);
/// }
/// # Ok(())
/// # }
/// ```
///
/// Settling an event moves its stream's checkpoint; see [the crate docs](crate#settlement-and-checkpoints).
#[derive(Clone)]
pub struct SseEvent {
    inner: Arc<Inner>,
}

struct Inner {
    data: Arc<EventData>,
    settlement: Settlement,
    delivery: u32,
}

/// What an event is, shared by its deliveries (a requeued event is delivered again).
pub(crate) struct EventData {
    pub(crate) name: Arc<str>,
    pub(crate) id: Option<Arc<str>>,
    pub(crate) data: Bytes,
    pub(crate) retry: Option<Duration>,
    pub(crate) path: Arc<str>,
    body: OnceLock<Result<serde_json::Value, BodyError>>,
}

impl EventData {
    pub(crate) fn new(raw: RawEvent, path: Arc<str>) -> Self {
        EventData {
            name: raw.name,
            id: raw.id,
            data: raw.data,
            retry: raw.retry,
            path,
            body: OnceLock::new(),
        }
    }
}

impl SseEvent {
    pub(crate) fn new(data: Arc<EventData>, settlement: Settlement, delivery: u32) -> Self {
        SseEvent {
            inner: Arc::new(Inner {
                data,
                settlement,
                delivery,
            }),
        }
    }

    /// The event type: the block's `event:` field, `message` when it had none (as the spec
    /// says).
    pub fn name(&self) -> &str {
        &self.inner.data.name
    }

    /// The last event id when the event arrived (an earlier event's id carries over, as in
    /// the spec); `None` when the server set none.
    pub fn id(&self) -> Option<&str> {
        self.inner.data.id.as_deref()
    }

    /// The data as text (`data:` lines joined with `\n`; checked UTF-8 on arrival).
    pub fn data(&self) -> &str {
        // The parser only dispatches data it checked as UTF-8.
        std::str::from_utf8(&self.inner.data.data).unwrap_or_default()
    }

    /// The `retry:` of the event's block, if it had one (the source honours it already).
    pub fn retry(&self) -> Option<Duration> {
        self.inner.data.retry
    }

    /// The endpoint path the event came from, as the route lists it.
    pub fn path(&self) -> &str {
        &self.inner.data.path
    }

    /// 1 the first time the handler gets this event, 2 after one requeue, and so on.
    pub fn delivery(&self) -> u32 {
        self.inner.delivery
    }

    /// The data decoded as JSON, decoded once and kept: `event.body()?["plan"]["id"]`.
    ///
    /// # Errors
    ///
    /// [`BodyError`] when the data is not JSON.
    pub fn body(&self) -> Result<&serde_json::Value, BodyError> {
        self.inner
            .data
            .body
            .get_or_init(|| {
                serde_json::from_slice(&self.inner.data.data).map_err(|e| BodyError(Arc::new(e)))
            })
            .as_ref()
            .map_err(Clone::clone)
    }
}

impl Message for SseEvent {
    fn payload(&self) -> &Bytes {
        &self.inner.data.data
    }

    fn settlement(&self) -> &Settlement {
        &self.inner.settlement
    }
}

impl fmt::Debug for SseEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SseEvent")
            .field("name", &self.name())
            .field("id", &self.id())
            .field("path", &self.path())
            .field("len", &self.inner.data.data.len())
            .field("delivery", &self.inner.delivery)
            .field("settlement", &self.inner.settlement)
            .finish()
    }
}

/// An event's data is not JSON (from [`SseEvent::body`]). The cause is the
/// [`source`](std::error::Error::source).
#[derive(Debug, Clone, thiserror::Error)]
#[error("event data is not JSON")]
pub struct BodyError(#[source] Arc<serde_json::Error>);
