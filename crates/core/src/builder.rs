//! [`ServiceBuilderExt`]: asyncworker's layers as `ServiceBuilder` methods.
//!
//! The method names avoid tower's inherent `ServiceBuilder` methods (`retry`, `timeout`,
//! `buffer`, `concurrency_limit`, `rate_limit`, `filter`, `map_*`, ...): an inherent method
//! silently wins over a trait method of the same name, so `retry_batches`, not `retry`.
//!
//! ```
//! use std::time::Duration;
//! use asyncworker_core::{Action, ServiceBuilderExt, ack::AckLayer, bulk::BulkLayer};
//! use asyncworker_core::memory::MemoryMessage;
//! use asyncworker_core::retry::{RetryConfig, RetryLayer};
//! use tower::{ServiceBuilder, service_fn};
//!
//! # fn main() -> Result<(), asyncworker_core::Error> {
//! let stack = ServiceBuilder::new()
//!     .bulk(BulkLayer::<MemoryMessage>::new(64)?.flush_interval(Duration::from_secs(1)))
//!     .ack(AckLayer::new().on_error(Action::Reject))
//!     .timeout(Duration::from_secs(10)) // tower's own layers fit in between
//!     .retry_batches(RetryLayer::new(RetryConfig::builder().max_attempts(3).build()?))
//!     .service(service_fn(|batch: Vec<MemoryMessage>| async move {
//!         Ok::<_, std::io::Error>(())
//!     }));
//! # let _ = stack;
//! # Ok(())
//! # }
//! ```

use tower::ServiceBuilder;
use tower_layer::Stack;

use crate::ack::AckLayer;
use crate::bulk::BulkLayer;
use crate::retry::RetryLayer;

mod sealed {
    pub trait Sealed {}
    impl<L> Sealed for tower::ServiceBuilder<L> {}
}

/// asyncworker's layers as [`ServiceBuilder`] methods. Sealed: implemented for
/// `ServiceBuilder` only.
pub trait ServiceBuilderExt<L>: sealed::Sealed {
    /// Group messages into batches ([`BulkLayer`]); put it first, as everything after it
    /// sees `Vec<M>`.
    fn bulk<M>(self, layer: BulkLayer<M>) -> ServiceBuilder<Stack<BulkLayer<M>, L>>;

    /// Settle every message of a batch after the layers below it ([`AckLayer`]).
    fn ack(self, layer: AckLayer) -> ServiceBuilder<Stack<AckLayer, L>>;

    /// Re-run failed batches with backoff ([`RetryLayer`]).
    fn retry_batches<P>(self, layer: RetryLayer<P>) -> ServiceBuilder<Stack<RetryLayer<P>, L>>;
}

impl<L> ServiceBuilderExt<L> for ServiceBuilder<L> {
    fn bulk<M>(self, layer: BulkLayer<M>) -> ServiceBuilder<Stack<BulkLayer<M>, L>> {
        self.layer(layer)
    }

    fn ack(self, layer: AckLayer) -> ServiceBuilder<Stack<AckLayer, L>> {
        self.layer(layer)
    }

    fn retry_batches<P>(self, layer: RetryLayer<P>) -> ServiceBuilder<Stack<RetryLayer<P>, L>> {
        self.layer(layer)
    }
}
