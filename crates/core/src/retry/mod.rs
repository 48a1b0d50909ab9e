//! Re-run a failed request with bounded exponential backoff and jitter.
//!
//! [`Retry`] wraps a service (in a worker, the handler of `Vec<M>` batches) and calls it again
//! when it fails, up to [`RetryConfig::max_attempts`] attempts in all. Between attempts it
//! sleeps for an exponentially growing, capped and jittered delay. A predicate
//! ([`RetryLayer::retry_if`]) chooses which errors are worth another attempt; by default every
//! error is ([`AlwaysRetry`]).
//!
//! Retry adds no failure mode of its own: its error type is the inner service's, and once it
//! gives up (attempts exhausted, an error the predicate declines, or shutdown) the *last* error
//! flows out unchanged, to the [`Ack`](crate::ack) layer's `on_error` policy in a worker stack.
//!
//! # Marks
//!
//! Marks belong to an attempt. Before each attempt after the first, Retry clears the
//! [mark](crate::Message::mark) of every message of the batch, so a batch is settled by its
//! last attempt alone: a `requeue()` made by an attempt that then failed does not override
//! the success of the next. A handler that wants a mark to stand makes it in the attempt that
//! decides (a deterministic handler simply marks again). Retry reaches the marks through the
//! [`Ack`](crate::ack) future that runs it (Ack lends its batch's slots to whatever it polls),
//! so this holds for any request type and any layers between the two; a Retry that no Ack
//! runs has no marks to clear. A message the handler *settled* by hand stays settled.
//!
//! # Shutdown
//!
//! Given a [`Shutdown`](crate::Shutdown) signal ([`RetryLayer::with_shutdown`]), Retry stops retrying once the
//! signal fires: an attempt that fails after that is not retried, and a backoff sleep (or a wait
//! for the inner service to become ready again) in progress ends at once with the last error.
//! An attempt already running is never cut short, and the first attempt always runs: shutdown
//! means "finish what you have, quickly", and the batch still needs its one try.
//!
//! # Readiness
//!
//! The first attempt goes to the inner service that [`Service::poll_ready`](tower::Service::poll_ready) made ready. Each
//! retry goes to a clone of the inner service, kept by the response future, which is driven to
//! readiness again before it is called, so the `poll_ready` / `call` contract holds for every
//! attempt. The request is cloned once per call (to keep a copy for retries) and once per
//! retry; for a batch of messages that is one `Arc` increment per message. With
//! `max_attempts(1)` nothing is cloned.
//!
//! # Timers
//!
//! Delays use [`tokio::time::sleep`], so the service must run inside a Tokio runtime with the
//! time driver enabled, and tests with paused time (`#[tokio::test(start_paused = true)]`)
//! are deterministic.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//!
//! use asyncworker_core::Jitter;
//! use asyncworker_core::retry::{RetryConfig, RetryLayer};
//! use asyncworker_core::{BoxError, Shutdown};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let config = RetryConfig::builder()
//!     .max_attempts(5)
//!     .initial_delay(Duration::from_millis(1))
//!     .multiplier(2.0)
//!     .max_delay(Duration::from_millis(20))
//!     .jitter(Jitter::Full)
//!     .build()?;
//! let shutdown = Shutdown::new();
//!
//! let mut handler = ServiceBuilder::new()
//!     .layer(
//!         RetryLayer::new(config)
//!             // Only transient failures deserve another attempt.
//!             .retry_if(|err: &BoxError| err.to_string().contains("transient"))
//!             .with_shutdown(shutdown.clone()),
//!     )
//!     .service_fn(|batch: Vec<u32>| async move {
//!         if batch.is_empty() {
//!             return Err::<(), BoxError>("empty batch: permanent".into());
//!         }
//!         Ok(())
//!     });
//!
//! handler.ready().await?.call(vec![1, 2, 3]).await?;
//! // A permanent error is not retried: it comes back after one attempt.
//! assert!(handler.ready().await?.call(Vec::new()).await.is_err());
//! # Ok(())
//! # }
//! ```

mod config;
pub mod future;
mod layer;
mod predicate;
mod service;

pub use config::{RetryConfig, RetryConfigBuilder};
pub use layer::RetryLayer;
pub use predicate::{AlwaysRetry, RetryPredicate};
pub use service::Retry;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::Jitter;

    #[test]
    fn defaults_are_three_attempts_100ms_doubling_capped_at_10s() {
        let c = RetryConfig::default();
        assert_eq!(c.max_attempts(), 3);
        assert_eq!(c.backoff().initial_delay(), Duration::from_millis(100));
        assert_eq!(c.backoff().multiplier(), 2.0);
        assert_eq!(c.backoff().max_delay(), Duration::from_secs(10));
        assert_eq!(c.backoff().jitter(), Jitter::Proportional(0.5));
        assert_eq!(RetryConfig::builder().build().unwrap(), c);
        assert_eq!(*RetryLayer::default().config(), c);
    }

    #[test]
    fn invalid_backoff_values_are_retry_config_errors() {
        let err = RetryConfig::builder().multiplier(0.5).build().unwrap_err();
        assert!(err.to_string().contains("multiplier must be at least 1.0"));
    }
}
