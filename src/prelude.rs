//! What a worker needs, in one import: `use asyncworker::prelude::*;`.
//!
//! The [`App`], the [`Message`] trait (for `text`, `json`, `accept`, `reject`, ...), the
//! settlement [`Action`], [`BoxError`], [`Report`] (for `main`), the [`Shutdown`] signal and, under their features,
//! each backend's source and message types.
//!
//! ```
//! use asyncworker::prelude::*;
//! use asyncworker::memory::MemoryMessage;
//!
//! async fn drain_handler(messages: Vec<MemoryMessage>) -> Result<(), BoxError> {
//!     for message in &messages {
//!         if message.text().is_err() {
//!             message.reject(); // not UTF-8: drop it
//!         }
//!     }
//!     Ok(())
//! }
//!
//! let mut app = App::new();
//! app.route("drain", asyncworker::memory::MemoryQueue::new().source(), drain_handler)
//!     .on_error(Action::Requeue);
//! ```

pub use asyncworker_core::{Action, App, BoxError, Message, Shutdown};

pub use crate::Report;

#[cfg(feature = "amqp")]
#[cfg_attr(docsrs, doc(cfg(feature = "amqp")))]
pub use asyncworker_amqp::{AmqpConfig, AmqpMessage, AmqpSource};

#[cfg(feature = "sse")]
#[cfg_attr(docsrs, doc(cfg(feature = "sse")))]
pub use asyncworker_sse::{SseConfig, SseEvent, SseSource};

#[cfg(feature = "timeit")]
#[cfg_attr(docsrs, doc(cfg(feature = "timeit")))]
pub use asyncworker_timeit::Timeit;
