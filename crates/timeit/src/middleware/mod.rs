//! [`TimeitLayer`]: the Python original's `@Timeit(...)` decorator as a tower layer.
//!
//! Every call of the wrapped service is one root transaction named by the layer: its
//! duration is recorded to the histogram with outcome `ok` for an `Ok` response, `error` for
//! an `Err`, `cancelled` when the response future is dropped first; and a callback, if set,
//! receives a one-transaction [`Report`](crate::Report) per call. Unlike the original
//! decorator, which fails on its second call, the same layer and service time call after call,
//! concurrently too.
//!
//! ```
//! use std::convert::Infallible;
//! use asyncworker_timeit::TimeitLayer;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let handler = ServiceBuilder::new()
//!     .layer(TimeitLayer::new("drain_handler"))
//!     .service(service_fn(|batch: Vec<u32>| async move { Ok::<_, Infallible>(batch.len()) }));
//! assert_eq!(handler.oneshot(vec![1, 2, 3]).await, Ok(3));
//! # }
//! ```

pub mod future;
mod layer;
mod service;

pub use layer::TimeitLayer;
pub use service::TimeitService;

use metrics::SharedString;

use crate::record::Keys;

/// What every call of one service shares: the transaction's name, its keys and the callback.
#[derive(Debug)]
pub(crate) struct Config<C> {
    pub(crate) name: SharedString,
    pub(crate) keys: Keys,
    pub(crate) callback: C,
}
