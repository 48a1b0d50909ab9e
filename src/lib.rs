//! Asynchronous message workers on [tower]: drain RabbitMQ queues (and other sources) in
//! batches, with acknowledgement policies, retry, timing and a graceful shutdown.
//!
//! A worker is a set of *routes*. Each route is a **source** — a `Stream` of deliveries: a
//! RabbitMQ consumer, a schedule of ticks, an in-memory queue — feeding a **handler**
//! through a stack of tower layers:
//!
//! ```text
//! source ──▶ Bulk ──▶ Ack ──▶ (Timeit) ──▶ Retry ──▶ handler(Vec<M>)
//!            batches   settles  times       re-runs
//! ```
//!
//! - [`bulk::Bulk`] groups single deliveries into `Vec<M>`: a batch goes to the handler when
//!   it is full, when its oldest message has waited the flush interval, or at shutdown.
//! - [`ack::Ack`] settles every message exactly once after the handler: its explicit mark
//!   ([`Message::accept`], [`Message::reject`], [`Message::requeue`]) if it has one, else
//!   the route policy — ack on success, requeue on error, as the Python original does.
//! - [`retry::Retry`] re-runs a failed batch with exponential backoff and jitter.
//! - the handler is an `async fn(Vec<M>) -> Result<(), E>` or any `Service<Vec<M>>`.
//!
//! The same layers work for every backend, and tower's own (`Timeout`, `ConcurrencyLimit`,
//! `RateLimit`, ...) drop into the stack. [`App`] is the flask-like face on top: routes with
//! options, startup and shutdown hooks, scheduled tasks, SIGINT/SIGTERM handling with a
//! graceful drain.
//!
//! # Example
//!
//! ```
//! use asyncworker::prelude::*;
//! use asyncworker::memory::{MemoryMessage, MemoryQueue};
//!
//! async fn drain_handler(messages: Vec<MemoryMessage>) -> Result<(), std::io::Error> {
//!     for message in &messages {
//!         match message.json::<serde_json::Value>() {
//!             Ok(body) => println!("{body}"),
//!             Err(_) => message.reject(), // not JSON: drop it instead of requeueing forever
//!         }
//!     }
//!     Ok(()) // unmarked messages are acked
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), asyncworker::Error> {
//! let queue = MemoryQueue::new();
//! queue.push_json(&serde_json::json!({"count": 1})).unwrap();
//! queue.close();
//!
//! let mut app = App::new();
//! app.route("counts", queue.source(), drain_handler).bulk_size(100);
//! app.run().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Features
//!
//! No feature is on by default: the core alone runs workers on the in-memory source and on
//! schedules.
//!
//! | feature | what it enables | crate |
//! |---|---|---|
//! | *(always)* | [`prelude`] (what a worker imports); messages and settlement ([`message`]), [`bulk`], [`ack`], [`retry`], [`runtime`], [`App`], [`ticks`], the in-memory source ([`memory`]), [`Settings`], the worker [`metrics`], [`init_logging`] | `asyncworker-core` (and `tracing-subscriber` for the logs) |
//! | `amqp` | [`amqp`]: RabbitMQ through `lapin` — consume, settle, reconnect, publish with confirms; TLS (`amqps://`) included; the AMQP types in the [`prelude`] | `asyncworker-amqp` |
//! | `sse` | [`sse`]: Server-Sent Events through `reqwest` — spec framing, `Last-Event-ID` checkpoints, reconnect with backoff; the SSE types in the [`prelude`] | `asyncworker-sse` |
//! | `timeit` | [`timeit`]: `Timeit` scopes and `TimeitLayer`, exported through `metrics`; `Timeit` in the [`prelude`] | `asyncworker-timeit` |
//! | `prometheus` | [`observe`]: a Prometheus `/metrics` endpoint and `/health/live`, `/health/ready` for an [`App`], served with axum | `metrics-exporter-prometheus`, `axum` |
//! | `full` | all of the above | |
//!
//! `https` base URLs for SSE need `asyncworker-sse`'s own `rustls` feature, which the facade
//! does not forward: add `asyncworker-sse = { version = "0.1", features = ["rustls"] }` next to
//! `asyncworker` (Cargo turns it on for the re-exported crate too).
//!
//! [tower]: https://docs.rs/tower

#![cfg_attr(docsrs, feature(doc_cfg))]

mod logging;
pub mod prelude;
mod report;

pub use asyncworker_core::{
    Action, App, Backoff, BackoffBuilder, BoxError, Error, Health, Jitter, LogFormat, Message,
    Readiness, Route, RouteContext, RouteHealth, RouteOptions, ServiceBuilderExt, Settings, Settle,
    SettleError, Settlement, Shutdown, Source, SourceContext, Variables,
};
pub use asyncworker_core::{ack, builder, bulk, memory, message, metrics, retry, runtime, ticks};
pub use logging::init_logging;
pub use report::Report;

/// RabbitMQ through `lapin` (the `asyncworker-amqp` crate; feature `amqp`).
#[cfg(feature = "amqp")]
#[cfg_attr(docsrs, doc(cfg(feature = "amqp")))]
pub use asyncworker_amqp as amqp;

/// Server-Sent Events (the `asyncworker-sse` crate; feature `sse`).
#[cfg(feature = "sse")]
#[cfg_attr(docsrs, doc(cfg(feature = "sse")))]
pub use asyncworker_sse as sse;

/// Timeit: timed scopes with nested transactions, the `TimeitLayer` tower layer, and export
/// through `metrics` (the `asyncworker-timeit` crate; feature `timeit`).
#[cfg(feature = "timeit")]
#[cfg_attr(docsrs, doc(cfg(feature = "timeit")))]
pub use asyncworker_timeit as timeit;

#[cfg(feature = "prometheus")]
#[cfg_attr(docsrs, doc(cfg(feature = "prometheus")))]
pub mod observe;

/// The README's code blocks, compiled (and run, where they are not `no_run`) as doctests.
#[cfg(all(
    doctest,
    feature = "amqp",
    feature = "sse",
    feature = "timeit",
    feature = "prometheus"
))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The code blocks of the guides under `docs/`, compiled as the README's are.
#[cfg(all(
    doctest,
    feature = "amqp",
    feature = "sse",
    feature = "timeit",
    feature = "prometheus"
))]
#[doc = include_str!("../docs/layers.md")]
#[doc = include_str!("../docs/migrating-from-python.md")]
#[doc = include_str!("../docs/observability.md")]
#[doc = include_str!("../docs/performance.md")]
#[doc = include_str!("../docs/quorum.md")]
#[doc = include_str!("../docs/rabbitmq.md")]
#[doc = include_str!("../docs/reliability.md")]
#[doc = include_str!("../docs/sse.md")]
#[doc = include_str!("../docs/timeit.md")]
pub struct DocsDoctests;
