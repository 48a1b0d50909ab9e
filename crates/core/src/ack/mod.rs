//! Settle every message of a batch exactly once, after its handler.
//!
//! [`Ack`] wraps a `Service<Vec<M>>` (the handler, or the layers around it). When the inner
//! future completes, every message of the batch is settled:
//!
//! - with its mark, if the handler made one ([`Message::accept`](crate::Message::accept), [`Message::reject`](crate::Message::reject), ...):
//!   a mark beats the policy, even when the handler failed;
//! - else with [`AckLayer::on_success`] (default [`Action::Ack`](crate::Action::Ack)) when the handler returned
//!   `Ok`, or [`AckLayer::on_error`] (default [`Action::Requeue`](crate::Action::Requeue)) when it returned an error
//!   or panicked.
//!
//! With [`Retry`](crate::retry) inside `Ack`, only the marks of the last attempt count: Retry
//! clears them before each new attempt (see [its docs](crate::retry#marks)).
//!
//! A panic in the handler is caught and treated as the batch's error (it comes out as a
//! [`HandlerPanicked`] error). A batch whose future is dropped before it completes — a
//! shutdown past its grace period, a cancelled task — has every message requeued, marks
//! notwithstanding: its processing never concluded. A settlement the backend cannot deliver
//! is logged and counted, never a panic.
//!
//! The handler's error is passed on (boxed) after settling, so outer layers and the runtime
//! can see that the batch failed; `Ack` logs it once per batch.
//!
//! # Readiness
//!
//! When the inner service fails in `poll_ready`, it can take no more work. `Ack` keeps that
//! error and reports itself ready: the batch it is then given (and any after it) fails at
//! once with [`ServiceFailed`], its messages settled by the `on_error` policy like any failed
//! batch. [`Bulk`](crate::bulk::Bulk) sees that error and fails its own `poll_ready`, so the
//! runtime stops the route.
//!
//! # Metrics
//!
//! [`AckLayer::metrics`] takes a [`LayerMetrics`](crate::metrics::LayerMetrics) hook (default
//! none): one handler duration per batch and one settlement count per action and batch.
//!
//! # Example
//!
//! ```
//! use asyncworker_core::{Action, Message, ack::AckLayer, memory::MemoryMessage};
//! use tower::{ServiceBuilder, service_fn};
//!
//! let handler = service_fn(|batch: Vec<MemoryMessage>| async move {
//!     for message in &batch {
//!         if message.payload().is_empty() {
//!             message.reject(); // dropped, or dead-lettered
//!         }
//!     }
//!     Ok::<_, std::io::Error>(())
//! });
//! let stack = ServiceBuilder::new()
//!     .layer(AckLayer::new().on_error(Action::Reject))
//!     .service(handler);
//! # let _ = stack;
//! ```

mod error;
mod future;
mod layer;
mod service;

pub use crate::util::ServiceFailed;
pub use error::HandlerPanicked;
pub use future::ResponseFuture;
pub(crate) use future::clear_marks_for_retry;
pub use layer::AckLayer;
pub use service::Ack;
