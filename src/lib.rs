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
//! | feature | what it adds |
//! |---|---|
//! | *(always)* | [`prelude`] (what a worker imports); the core: messages and settlement, [`bulk`], [`ack`], [`retry`], [`runtime`], [`App`], [`ticks`], the in-memory source ([`memory`]), [`Settings`] |
//! | `amqp` | [`amqp`]: RabbitMQ through `lapin` — consume, settle, reconnect, publish with confirms |
//! | `sse` | [`sse`]: Server-Sent Events through `reqwest` — spec framing, `Last-Event-ID` checkpoints, reconnect with backoff |
//! | `timeit` | [`timeit`]: `Timeit` scopes and `TimeitLayer`, exported through `metrics` |
//! | `full` | all of the above |
//!
//! [tower]: https://docs.rs/tower

#![cfg_attr(docsrs, feature(doc_cfg))]

mod logging;
pub mod prelude;

pub use asyncworker_core::{
    Action, App, Backoff, BackoffBuilder, BoxError, Error, Health, Jitter, LogFormat, Message,
    Readiness, Route, RouteContext, RouteHealth, RouteOptions, ServiceBuilderExt, Settings, Settle,
    SettleError, Settlement, Shutdown, Source, SourceContext, Variables,
};
pub use asyncworker_core::{ack, builder, bulk, memory, message, metrics, retry, runtime, ticks};
pub use logging::init_logging;

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
#[cfg(all(doctest, feature = "amqp", feature = "sse", feature = "timeit"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
