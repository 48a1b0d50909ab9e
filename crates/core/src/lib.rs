//! The core of asyncworker: the message and settlement model, the tower layers that give a
//! worker its behaviour, and the runtime that drives sources through them.
//!
//! See the facade crate `asyncworker` for an overview.

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
