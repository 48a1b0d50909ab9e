//! Group messages into batches: flush on size, on the flush interval, on shutdown.
//!
//! [`Bulk`] turns a `Service<Vec<M>>` into a `Service<M>`. Each call adds one message to the
//! open batch and returns a future that completes when the batch containing that message has
//! been handled. A batch is sealed and handed to the inner service when
//!
//! - it holds the effective bulk size ([`FlushReason::Size`]);
//! - its oldest message has waited [`BulkLayer::flush_interval`] (default 60 s)
//!   ([`FlushReason::Interval`]) — measured from the first message of *that* batch, not on a
//!   fixed cadence;
//! - the [`Shutdown`](crate::Shutdown) signal fires ([`FlushReason::Shutdown`]): open batches flush at once,
//!   and so does every message that arrives afterwards.
//!
//! The effective size is `min(bulk_size, max_in_flight)`: a caller that never holds more than
//! `max_in_flight` message futures (an AMQP consumer never has more than its prefetch
//! unacknowledged) could otherwise wait forever for a batch that cannot fill. The clamp is
//! logged when the layer is applied.
//!
//! # Where it goes in a stack
//!
//! `Bulk` is the outermost layer of a route: it is where single deliveries become batches.
//! Everything inside it — [`Ack`](crate::ack::Ack), Timeit, [`Retry`](crate::retry::Retry),
//! tower's own `Timeout` or `ConcurrencyLimit`, the handler — sees `Vec<M>`. (The design
//! sketch draws Ack above Bulk; putting Ack inside means it settles a whole batch in one pass,
//! logs a failed batch once, and sees tower errors such as a timeout as the batch's error.)
//!
//! # Driving
//!
//! There is no background task. The message future whose message opened a batch drives it,
//! timer included; the others of the batch wait for its outcome, each woken once when it is
//! done. If the driving future is dropped first, a waiting one takes the batch over, so a
//! batch keeps moving as long as any of its message futures is alive. If all of them are
//! dropped, the buffered messages are dropped too, and their settlement slots requeue them.
//!
//! # Readiness
//!
//! `Bulk` is ready while its inner service is usable: a message only joins a buffer, and
//! backpressure comes from the caller's in-flight limit and, per batch, from the inner
//! service's readiness, which each batch waits for before its call. When the inner service
//! fails in `poll_ready` — or [`Ack`](crate::ack::Ack) inside reports that its own inner
//! service did, with [`ServiceFailed`](crate::ack::ServiceFailed) — the batch fails with that
//! error and `Bulk::poll_ready` returns it from then on, so the runtime stops the route.
//!
//! tower's middleware fits inside: `Timeout` and `ConcurrencyLimit` as they are; `RateLimit`,
//! which is not `Clone` (Bulk clones its inner service for each batch), behind a `Buffer`,
//! whose clones share the one rate limit:
//!
//! ```
//! use std::time::Duration;
//! use asyncworker_core::{ServiceBuilderExt, ack::AckLayer, bulk::BulkLayer};
//! use asyncworker_core::memory::MemoryMessage;
//! use tower::{ServiceBuilder, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), asyncworker_core::Error> {
//! let stack = ServiceBuilder::new()
//!     .bulk(BulkLayer::<MemoryMessage>::new(100)?)
//!     .ack(AckLayer::new())
//!     .timeout(Duration::from_secs(30))       // a timeout is the batch's error
//!     .concurrency_limit(4)                   // at most 4 batches in the handler
//!     .buffer(64)                             // Clone, in front of what is not
//!     .rate_limit(10, Duration::from_secs(1)) // at most 10 batches a second
//!     .service(service_fn(|batch: Vec<MemoryMessage>| async move {
//!         Ok::<_, asyncworker_core::BoxError>(())
//!     }));
//! # let _ = stack;
//! # Ok(())
//! # }
//! ```
//!
//! # Metrics
//!
//! [`BulkLayer::metrics`] takes a [`LayerMetrics`](crate::metrics::LayerMetrics) hook (default
//! none), told of each batch and its flush reason.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use asyncworker_core::{ack::AckLayer, bulk::BulkLayer, memory::MemoryMessage};
//! use tower::{ServiceBuilder, service_fn};
//!
//! # fn main() -> Result<(), asyncworker_core::Error> {
//! let stack = ServiceBuilder::new()
//!     .layer(BulkLayer::new(100)?.flush_interval(Duration::from_secs(5)))
//!     .layer(AckLayer::new())
//!     .service(service_fn(|batch: Vec<MemoryMessage>| async move {
//!         println!("{} messages", batch.len());
//!         Ok::<_, std::convert::Infallible>(())
//!     }));
//! # let _ = stack;
//! # Ok(())
//! # }
//! ```

mod cell;
mod error;
mod future;
mod handle;
mod layer;
mod service;

pub use crate::observe::FlushReason;
pub use error::BatchError;
pub use future::ResponseFuture;
pub use layer::{BulkLayer, DEFAULT_FLUSH_INTERVAL};
pub use service::Bulk;
