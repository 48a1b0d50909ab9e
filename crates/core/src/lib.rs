//! The core of asyncworker: the message and settlement model, the tower layers that give a
//! worker its behaviour, and the runtime that drives sources through them.
//!
//! Most programs depend on the facade crate `asyncworker`, which re-exports this crate with
//! the backends behind features; depend on `asyncworker-core` directly to write a backend
//! or to use the layers without one.
//!
//! - [`Message`] and [`Settlement`]: what every backend's message implements, and the
//!   exactly-once settlement slot a handler marks ([module `message`](message)).
//! - The layers: [`bulk::Bulk`] (batches), [`ack::Ack`] (settles by policy),
//!   [`retry::Retry`] (backoff and jitter), stacked with [`ServiceBuilderExt`] or tower's
//!   `ServiceBuilder::layer`.
//! - [`runtime::Worker`]: drives one [`Source`] through one stack; [`App`]: routes, hooks,
//!   schedules ([`ticks`]), signals and a graceful drain, configured by [`Settings`].
//! - [`memory::MemoryQueue`]: an in-memory source for testing handlers without a broker.
//!
//! # Example
//!
//! ```
//! use asyncworker_core::{App, BoxError, Message};
//! use asyncworker_core::memory::{MemoryMessage, MemoryQueue};
//!
//! async fn drain_handler(messages: Vec<MemoryMessage>) -> Result<(), BoxError> {
//!     for message in &messages {
//!         if message.json::<serde_json::Value>().is_err() {
//!             message.reject(); // not JSON: drop it instead of requeueing it forever
//!         }
//!     }
//!     Ok(()) // unmarked messages are acked; an error would requeue them
//! }
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> Result<(), BoxError> {
//!     let queue = MemoryQueue::new();
//!     queue.push_json(&serde_json::json!({"count": 1}))?;
//!     queue.close(); // the route ends once the queue is drained
//!
//!     let mut app = App::new();
//!     app.route("counts", queue.source(), drain_handler).bulk_size(100);
//!     app.run().await?;
//!     Ok(())
//! }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod ack;
mod app;
mod backoff;
pub mod builder;
pub mod bulk;
pub mod memory;
pub mod message;
pub mod metrics;
mod observe;
pub mod retry;
pub mod runtime;
mod settings;
mod shutdown;
mod source;
pub mod ticks;
mod util;

pub use app::{App, Health, Route, RouteContext, RouteHealth, RouteOptions};
pub use backoff::{Backoff, BackoffBuilder, FailureStreak, Jitter};
pub use builder::ServiceBuilderExt;
pub use message::{Action, Message, NoopSettle, Settle, SettleError, Settlement};
pub use settings::{LogFormat, Settings, Variables};
pub use shutdown::Shutdown;
pub use source::{Readiness, Source, SourceContext};

/// A type-erased error, as tower uses: `Box<dyn Error + Send + Sync>`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A configuration or runtime error of asyncworker itself.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An option has a value that cannot work (a bulk size of 0, a malformed URL, ...).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A route failed to start.
    #[error("route {route:?} failed")]
    Route {
        /// The route's name.
        route: String,
        /// What went wrong (the error's `source()`).
        #[source]
        cause: BoxError,
    },
    /// A startup hook failed; the hook's error is the `source()`.
    #[error("startup hook failed")]
    Startup(#[source] BoxError),
    /// A second signal forced the shutdown before in-flight work finished.
    #[error("shutdown forced by a second signal; unfinished messages were requeued")]
    Forced,
}

impl Error {
    /// A configuration error with `message`.
    pub fn config(message: impl Into<String>) -> Self {
        Error::Config(message.into())
    }
}

/// The README's example (the crate docs' example above), compiled as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
