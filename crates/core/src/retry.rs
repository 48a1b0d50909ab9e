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
//! # Shutdown
//!
//! Given a [`Shutdown`] signal ([`RetryLayer::with_shutdown`]), Retry stops retrying once the
//! signal fires: an attempt that fails after that is not retried, and a backoff sleep (or a wait
//! for the inner service to become ready again) in progress ends at once with the last error.
//! An attempt already running is never cut short, and the first attempt always runs: shutdown
//! means "finish what you have, quickly", and the batch still needs its one try.
//!
//! # Readiness
//!
//! The first attempt goes to the inner service that [`Service::poll_ready`] made ready. Each
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

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tokio_util::sync::WaitForCancellationFutureOwned;
use tower::Service;
use tower_layer::Layer;

use crate::{Backoff, BackoffBuilder, Error, Jitter, Shutdown};

/// The validated settings of a [`Retry`]: how many attempts, and the [`Backoff`] between them.
///
/// Build one with [`RetryConfig::builder`]; [`RetryConfig::default`] gives 3 attempts and
/// [`Backoff::default`]: 100 ms initial delay, ×2 per retry, capped at 10 s, with
/// [`Jitter::Proportional(0.5)`](Jitter::Proportional).
///
/// The delay before retry `n` (`n = 1` before the second attempt) is
/// [`Backoff::delay(n)`](Backoff::delay).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryConfig {
    max_attempts: u32,
    backoff: Backoff,
}

impl RetryConfig {
    /// Default total number of attempts, the first one included: 3.
    pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

    /// A builder starting from the defaults.
    pub fn builder() -> RetryConfigBuilder {
        RetryConfigBuilder::default()
    }

    /// Total number of attempts, the first one included (at least 1).
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The delays between attempts.
    pub fn backoff(&self) -> &Backoff {
        &self.backoff
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: Self::DEFAULT_MAX_ATTEMPTS,
            backoff: Backoff::default(),
        }
    }
}

/// Builds a [`RetryConfig`], checking its parameters in [`build`](Self::build).
///
/// Every setter starts from the defaults of [`RetryConfig`]; the delay setters are those of
/// [`BackoffBuilder`], with its rules.
#[derive(Debug, Clone, Default)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct RetryConfigBuilder {
    max_attempts: Option<u32>,
    backoff: BackoffBuilder,
}

impl RetryConfigBuilder {
    /// Total number of attempts, the first one included. `1` disables retrying.
    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = Some(max_attempts);
        self
    }

    /// Take every delay setting from `backoff`.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff.to_builder();
        self
    }

    /// Delay before the first retry, before jitter. May be zero (retry at once).
    pub fn initial_delay(mut self, delay: Duration) -> Self {
        self.backoff = self.backoff.initial_delay(delay);
        self
    }

    /// Growth factor of the delay from one retry to the next; `1.0` keeps it constant.
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.backoff = self.backoff.multiplier(multiplier);
        self
    }

    /// Cap on any single delay.
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.backoff = self.backoff.max_delay(delay);
        self
    }

    /// How delays are randomised.
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.backoff = self.backoff.jitter(jitter);
        self
    }

    /// Check the parameters and return the configuration.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when `max_attempts` is 0, or the backoff is invalid (see
    /// [`BackoffBuilder::build`]).
    pub fn build(self) -> Result<RetryConfig, Error> {
        let max_attempts = self
            .max_attempts
            .unwrap_or(RetryConfig::DEFAULT_MAX_ATTEMPTS);
        if max_attempts == 0 {
            return Err(Error::config(
                "retry max_attempts must be at least 1 (the first attempt counts), got 0",
            ));
        }
        Ok(RetryConfig {
            max_attempts,
            backoff: self.backoff.build()?,
        })
    }
}

/// Decides whether an error is worth another attempt.
///
/// Implemented by [`AlwaysRetry`] (the default) and by every `Fn(&E) -> bool` closure, so
/// [`RetryLayer::retry_if`] takes a closure directly.
pub trait RetryPredicate<E> {
    /// Whether to retry after `error`. Returning `false` gives up at once with `error`.
    fn should_retry(&self, error: &E) -> bool;
}

/// The default [`RetryPredicate`]: every error is retried.
#[derive(Debug, Clone, Copy, Default)]
pub struct AlwaysRetry;

impl<E> RetryPredicate<E> for AlwaysRetry {
    fn should_retry(&self, _error: &E) -> bool {
        true
    }
}

impl<E, F> RetryPredicate<E> for F
where
    F: Fn(&E) -> bool,
{
    fn should_retry(&self, error: &E) -> bool {
        self(error)
    }
}

/// A [`Layer`] that wraps services in [`Retry`].
///
/// Cheap to clone: the [`RetryConfig`] is `Copy`, the predicate is cloned, and the optional
/// [`Shutdown`] is shared, so every service built from clones of one layer stops retrying
/// when that one signal fires.
#[derive(Clone)]
pub struct RetryLayer<P = AlwaysRetry> {
    config: RetryConfig,
    predicate: P,
    shutdown: Option<Shutdown>,
}

impl RetryLayer {
    /// A layer with `config`, retrying every error, with no shutdown signal.
    pub fn new(config: RetryConfig) -> Self {
        RetryLayer {
            config,
            predicate: AlwaysRetry,
            shutdown: None,
        }
    }
}

impl Default for RetryLayer {
    /// A layer with [`RetryConfig::default`].
    fn default() -> Self {
        RetryLayer::new(RetryConfig::default())
    }
}

impl<P> RetryLayer<P> {
    /// Retry only the errors for which `predicate` returns `true`; others flow out after the
    /// attempt that produced them. The closure takes the inner service's error type, e.g.
    /// `|err: &BoxError| ...`.
    pub fn retry_if<F>(self, predicate: F) -> RetryLayer<F> {
        RetryLayer {
            config: self.config,
            predicate,
            shutdown: self.shutdown,
        }
    }

    /// Stop retrying once `shutdown` fires (see the [module docs](self)).
    pub fn with_shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = Some(shutdown);
        self
    }

    /// The configuration.
    pub fn config(&self) -> &RetryConfig {
        &self.config
    }
}

// Written by hand rather than derived: a closure predicate has no `Debug`, and the layer
// should be `Debug` whatever the predicate.
impl<P> fmt::Debug for RetryLayer<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayer")
            .field("config", &self.config)
            .field("predicate", &std::any::type_name::<P>())
            .field("shutdown", &self.shutdown)
            .finish()
    }
}

impl<S, P: Clone> Layer<S> for RetryLayer<P> {
    type Service = Retry<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry {
            inner,
            config: self.config,
            predicate: self.predicate.clone(),
            shutdown: self.shutdown.clone(),
        }
    }
}

/// Calls the inner service again when it fails, with exponential backoff and jitter.
///
/// See the [module docs](self). Built by [`RetryLayer`] or [`Retry::new`].
#[derive(Clone)]
pub struct Retry<S, P = AlwaysRetry> {
    inner: S,
    config: RetryConfig,
    predicate: P,
    shutdown: Option<Shutdown>,
}

impl<S> Retry<S> {
    /// Wrap `inner`, retrying every error as `config` says, with no shutdown signal.
    pub fn new(inner: S, config: RetryConfig) -> Self {
        RetryLayer::new(config).layer(inner)
    }
}

impl<S, P> Retry<S, P> {
    /// Retry only the errors for which `predicate` returns `true`.
    pub fn retry_if<F>(self, predicate: F) -> Retry<S, F> {
        Retry {
            inner: self.inner,
            config: self.config,
            predicate,
            shutdown: self.shutdown,
        }
    }

    /// Stop retrying once `shutdown` fires.
    pub fn with_shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = Some(shutdown);
        self
    }

    /// The configuration.
    pub fn config(&self) -> &RetryConfig {
        &self.config
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwrap the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

// By hand for the same reason as `RetryLayer`'s.
impl<S: fmt::Debug, P> fmt::Debug for Retry<S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .field("predicate", &std::any::type_name::<P>())
            .field("shutdown", &self.shutdown)
            .finish()
    }
}

impl<S, P, Req> Service<Req> for Retry<S, P>
where
    Req: Clone,
    S: Service<Req> + Clone,
    S::Error: fmt::Display,
    P: RetryPredicate<S::Error> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = future::ResponseFuture<S, Req, P>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        // The ready service takes the first attempt; retries go to a clone, which the future
        // drives to readiness before each call.
        let retry = (self.config.max_attempts > 1).then(|| future::RetryParts {
            service: self.inner.clone(),
            request: request.clone(),
            predicate: self.predicate.clone(),
            shutdown: self.shutdown.clone(),
        });
        let first = self.inner.call(request);
        future::ResponseFuture::new(first, retry, self.config)
    }
}

/// The response future of [`Retry`].
pub mod future {
    use super::*;

    /// What a [`ResponseFuture`] keeps to make further attempts.
    pub(super) struct RetryParts<S, Req, P> {
        pub(super) service: S,
        pub(super) request: Req,
        pub(super) predicate: P,
        pub(super) shutdown: Option<Shutdown>,
    }

    pin_project! {
        #[project = StateProj]
        #[project_replace = StateReplace]
        enum State<F, E> {
            // An attempt is running.
            Calling { #[pin] future: F },
            // An attempt failed with `error`; sleeping (until `slept`), then waiting for the
            // service to be ready for the next attempt.
            Backoff { #[pin] sleep: Sleep, slept: bool, error: E },
            // The output has been returned.
            Done,
        }
    }

    pin_project! {
        /// The response future of [`Retry`](super::Retry): runs attempts until one succeeds
        /// or Retry gives up, and resolves to the first success or the last error.
        ///
        /// # Panics
        ///
        /// When polled after it has completed, or polled for a retry outside a Tokio runtime
        /// with the time driver enabled.
        #[must_use = "futures do nothing unless you `.await` or poll them"]
        pub struct ResponseFuture<S, Req, P>
        where
            S: Service<Req>,
        {
            #[pin]
            state: State<S::Future, S::Error>,
            // Fires on shutdown; created with the first backoff, when there is a signal.
            #[pin]
            stop: Option<WaitForCancellationFutureOwned>,
            // `None` when `max_attempts` is 1: there is nothing to retry with.
            retry: Option<RetryParts<S, Req, P>>,
            // The attempt running or last run, from 1.
            attempt: u32,
            config: RetryConfig,
        }
    }

    impl<S, Req, P> ResponseFuture<S, Req, P>
    where
        S: Service<Req>,
    {
        pub(super) fn new(
            first: S::Future,
            retry: Option<RetryParts<S, Req, P>>,
            config: RetryConfig,
        ) -> Self {
            ResponseFuture {
                state: State::Calling { future: first },
                stop: None,
                retry,
                attempt: 1,
                config,
            }
        }
    }

    impl<S, Req, P> Future for ResponseFuture<S, Req, P>
    where
        Req: Clone,
        S: Service<Req>,
        S::Error: fmt::Display,
        P: RetryPredicate<S::Error>,
    {
        type Output = Result<S::Response, S::Error>;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            let mut this = self.project();
            loop {
                match this.state.as_mut().project() {
                    StateProj::Calling { future } => {
                        let error = match ready!(future.poll(cx)) {
                            Ok(response) => {
                                this.state.set(State::Done);
                                return Poll::Ready(Ok(response));
                            }
                            Err(error) => error,
                        };
                        let attempt = *this.attempt;
                        let max_attempts = this.config.max_attempts;
                        let retry = match this.retry.as_mut() {
                            Some(retry) if attempt < max_attempts => retry,
                            _ => {
                                if max_attempts > 1 {
                                    tracing::debug!(
                                        attempts = attempt,
                                        error = %error,
                                        "all attempts failed; giving up"
                                    );
                                }
                                this.state.set(State::Done);
                                return Poll::Ready(Err(error));
                            }
                        };
                        if !retry.predicate.should_retry(&error) {
                            tracing::debug!(
                                attempt,
                                error = %error,
                                "error is not retryable; giving up"
                            );
                            this.state.set(State::Done);
                            return Poll::Ready(Err(error));
                        }
                        if let Some(shutdown) = &retry.shutdown {
                            if shutdown.is_triggered() {
                                tracing::debug!(
                                    attempt,
                                    error = %error,
                                    "shutdown has begun; not retrying"
                                );
                                this.state.set(State::Done);
                                return Poll::Ready(Err(error));
                            }
                            if this.stop.is_none() {
                                this.stop.set(Some(shutdown.triggered()));
                            }
                        }
                        let delay = this.config.backoff.delay(attempt);
                        tracing::warn!(
                            attempt,
                            max_attempts,
                            delay = ?delay,
                            error = %error,
                            "attempt failed; retrying after backoff"
                        );
                        this.state.set(State::Backoff {
                            sleep: tokio::time::sleep(delay),
                            slept: delay.is_zero(),
                            error,
                        });
                    }
                    StateProj::Backoff { sleep, slept, .. } => {
                        let stopping = this
                            .stop
                            .as_mut()
                            .as_pin_mut()
                            .is_some_and(|stop| stop.poll(cx).is_ready());
                        if stopping {
                            tracing::debug!(
                                attempt = *this.attempt,
                                "shutdown began during backoff; not retrying"
                            );
                        } else if let Some(retry) = this.retry.as_mut() {
                            if !*slept {
                                ready!(sleep.poll(cx));
                                *slept = true;
                            }
                            match retry.service.poll_ready(cx) {
                                Poll::Pending => return Poll::Pending,
                                Poll::Ready(Err(error)) => {
                                    // The service itself broke: its error says more than the
                                    // one being retried.
                                    this.state.set(State::Done);
                                    return Poll::Ready(Err(error));
                                }
                                Poll::Ready(Ok(())) => {
                                    *this.attempt += 1;
                                    let future = retry.service.call(retry.request.clone());
                                    this.state.set(State::Calling { future });
                                    continue;
                                }
                            }
                        }
                        // Give up with the error of the last attempt.
                        if let StateReplace::Backoff { error, .. } =
                            this.state.as_mut().project_replace(State::Done)
                        {
                            return Poll::Ready(Err(error));
                        }
                    }
                    StateProj::Done => panic!("retry ResponseFuture polled after completion"),
                }
            }
        }
    }

    impl<S, Req, P> fmt::Debug for ResponseFuture<S, Req, P>
    where
        S: Service<Req>,
    {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let state = match self.state {
                State::Calling { .. } => "calling",
                State::Backoff { .. } => "backoff",
                State::Done => "done",
            };
            f.debug_struct("ResponseFuture")
                .field("state", &state)
                .field("attempt", &self.attempt)
                .field("max_attempts", &self.config.max_attempts)
                .finish()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
