//! Server-Sent Events for asyncworker: a route's endpoints as a [`Source`] of
//! [`SseEvent`]s, through the same Bulk → Ack → Retry stack as any other backend.
//!
//! ```no_run
//! use std::time::Duration;
//! use asyncworker_core::{BoxError, ack::AckLayer, bulk::BulkLayer, runtime::Worker};
//! use asyncworker_sse::{SseConfig, SseEvent, SseSource};
//! use tower::{ServiceBuilder, service_fn};
//!
//! async fn run() -> Result<(), BoxError> {
//!     let config = SseConfig::builder("http://172.18.0.31:8080/").build()?;
//!     let source = SseSource::new(&config, ["/v2/events"])?;
//!     let stack = ServiceBuilder::new()
//!         .layer(BulkLayer::new(2)?.flush_interval(Duration::from_secs(1)))
//!         .layer(AckLayer::new())
//!         .service(service_fn(|events: Vec<SseEvent>| async move {
//!             for event in &events {
//!                 println!("{} {:?}: {}", event.name(), event.id(), event.data());
//!             }
//!             Ok::<_, BoxError>(())
//!         }));
//!     Worker::new(source, stack).run().await?;
//!     Ok(())
//! }
//! ```
//!
//! # Framing
//!
//! The body is parsed by [`parse::Parser`], our own linear implementation of the WHATWG
//! framing (multi-line data, comments, BOM, `id`, `retry`, CR/LF/CRLF, a CR at the end of a
//! read dispatching at once); the [`parse`] module says why we do not parse with
//! eventsource-stream. Comments are never dispatched but count as liveness for the idle
//! timeout; an event cut off before its blank line is never dispatched.
//!
//! # Connecting
//!
//! Each path is its own GET with `Accept: text/event-stream`, `Cache-Control: no-cache`, the
//! configured basic auth and headers, and `Last-Event-ID` = the stream's checkpoint. Then:
//!
//! | response | what happens |
//! |---|---|
//! | 2xx with `text/event-stream` | events flow; the stream counts as connected |
//! | 204 | the stream stops (the spec's "don't reconnect"); the others go on |
//! | 5xx, 429, connection errors, a read error | an error item; reconnect after the backoff (at least `Retry-After`, in seconds, and the server's `retry:`) |
//! | 401, 403, 404, any other 4xx | a loud error; reconnect after the long [client-error delay](SseConfigBuilder::client_error_delay) |
//! | 2xx with another content type | the same: nothing is read from that body, even if it looks like SSE |
//! | no bytes for the idle timeout | an error item; reconnect after the backoff |
//! | the body ends | reconnect after the backoff (at least the server's `retry:`) |
//!
//! Errors name the URL (never with credentials) and the status. No wait is longer than a
//! day, whatever the server asks. The backoff is core's
//! [`Backoff`](asyncworker_core::Backoff) (default [`config::default_backoff`]); it starts
//! over once a connection has stayed up for [`healthy_after`](SseConfigBuilder::healthy_after).
//! The route's readiness is true only while every running stream is connected.
//!
//! # Settlement and checkpoints
//!
//! SSE has no broker-side acknowledgement: settling an event moves its stream's
//! **checkpoint**, the id of the last event before which every event of the stream is
//! settled (a [`window::SettleWindow`] keeps that prefix, holding only live entries).
//!
//! | action | meaning for an event |
//! |---|---|
//! | `Ack` | done: the checkpoint may move past it |
//! | `Reject` | done, dropped: the checkpoint may move past it too (there is no dead-letter queue) |
//! | `Requeue`, `RequeueTail` | handed to the handler again ([`SseEvent::delivery`] counts), at most [`max_redeliveries`](SseSource::max_redeliveries) more times, then rejected with a warning; while it is unsettled the checkpoint never passes it |
//!
//! A batch that is dropped or panics requeues its events (core's rule), so they too are
//! handed out again. The checkpoint is sent as `Last-Event-ID` on every reconnect and saved
//! to the [`CheckpointStore`] after it moves ([`MemoryCheckpoints`] by default,
//! [`FileCheckpoints`] to survive restarts, written atomically from a background task, at
//! most every [`checkpoint_interval`](SseSource::checkpoint_interval) and once more when the
//! stream ends). A
//! block that only sets `id:` moves the checkpoint like an event settled on arrival.
//!
//! **Delivery guarantee.** With a server that replays from `Last-Event-ID` (as the spec
//! intends), delivery is *at least once*: every event after the checkpoint is sent again on
//! reconnect or restart, including events that were handed out but not yet settled (an open
//! batch, a handler still running, an event requeued when the stream stopped), so a handler
//! may see an event twice and should be idempotent. With a server that ignores
//! `Last-Event-ID`, delivery is *at most once* across reconnects: what the server sends while
//! no connection is open is lost, and events in flight are still settled normally.
//!
//! # Metrics
//!
//! Labelled `route` and `path`: `asyncworker_sse_events_received_total`,
//! `asyncworker_sse_bytes_received_total`, `asyncworker_sse_reconnects_total` (plus `cause`:
//! `eof`, `idle`, `connect`, `read`, `parse`, `status_5xx`, `status_429`, `status_4xx`,
//! `content_type`, `checkpoint`: the stored checkpoint could not be loaded),
//! `asyncworker_sse_checkpoint` (the checkpoint when the id is a number),
//! `asyncworker_sse_unsettled_events` and `asyncworker_sse_connected` (0 or 1).
//!
//! # HTTP client
//!
//! reqwest 0.13 with `default-features = false` and only `stream` (for the body as a
//! stream of chunks): HTTP/1.1, no HTTP/2, no system proxy lookup, no TLS. An `https` base
//! URL needs the crate's **`rustls`** feature (without it, it fails at build time
//! with a clear error): reqwest's `rustls-no-provider` plus rustls with the *ring* provider,
//! which the AMQP backend already builds (reqwest's default provider, aws-lc-rs, needs a C
//! toolchain and cmake); certificates are checked with the platform verifier, plus any CA given
//! to `SseConfigBuilder::root_certificates_pem`. The feature
//! installs ring as the process's default rustls provider unless one is installed already.
//!
//! [`Source`]: asyncworker_core::Source

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod checkpoint;
pub mod config;
mod error;
mod event;
pub mod parse;
mod shared;
mod source;
mod stream;
pub mod window;

pub use checkpoint::{CheckpointStore, FileCheckpoints, MemoryCheckpoints};
pub use config::{SseConfig, SseConfigBuilder};
pub use error::SseError;
pub use event::{BodyError, SseEvent};
pub use source::{DEFAULT_CHECKPOINT_INTERVAL, DEFAULT_MAX_REDELIVERIES, SseSource, SseStream};

#[cfg(test)]
mod tests {
    use super::*;

    const fn assert_send_sync<T: Send + Sync + 'static>() {}
    const fn assert_send<T: Send + 'static>() {}

    #[test]
    fn public_types_are_send_and_sync() {
        assert_send_sync::<SseEvent>();
        assert_send_sync::<SseConfig>();
        assert_send_sync::<SseSource>();
        assert_send_sync::<SseError>();
        assert_send_sync::<BodyError>();
        assert_send_sync::<FileCheckpoints>();
        assert_send_sync::<MemoryCheckpoints>();
        assert_send_sync::<parse::Parser>();
        assert_send::<SseStream>();
    }
}

/// The README's example (the crate docs' example above), compiled as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
