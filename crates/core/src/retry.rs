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
//! use asyncworker_core::retry::{Jitter, RetryConfig, RetryLayer};
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

use crate::{Error, Shutdown};

/// How the delay between attempts is randomised, so that many workers failing together do
/// not retry in lockstep.
///
/// Jitter only ever shortens a delay: the exponential schedule, capped at
/// [`RetryConfig::max_delay`], is the upper bound of every delay.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Jitter {
    /// No randomness: each delay is exactly the capped exponential schedule.
    None,
    /// "Full jitter": each delay is drawn uniformly from `[0, d]`, where `d` is the scheduled
    /// delay. Spreads retries the most; a delay may be close to zero.
    Full,
    /// Each delay is drawn uniformly from `[d × (1 − ratio), d]`, with `ratio` in `0.0..=1.0`.
    /// `Proportional(0.5)` is "equal jitter"; `Proportional(0.0)` is [`Jitter::None`] and
    /// `Proportional(1.0)` is [`Jitter::Full`].
    Proportional(f64),
}

impl Jitter {
    /// Apply this jitter to the scheduled delay `delay`.
    fn apply(self, delay: Duration) -> Duration {
        // Work in whole nanoseconds (saturating at ~584 years) so that no float conversion can
        // panic; jitter never lengthens a delay.
        let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        let jittered = match self {
            Jitter::None => return delay,
            Jitter::Full => fastrand::u64(..=nanos),
            Jitter::Proportional(ratio) => {
                let factor = 1.0 - ratio * fastrand::f64();
                // `as` saturates; `factor` is within [0, 1] for a validated ratio.
                ((nanos as f64) * factor) as u64
            }
        };
        Duration::from_nanos(jittered.min(nanos))
    }
}

/// The validated settings of a [`Retry`]: how many attempts, and the backoff between them.
///
/// Build one with [`RetryConfig::builder`]; [`RetryConfig::default`] gives the defaults listed
/// on the `DEFAULT_*` constants: 3 attempts, 100 ms initial delay, ×2 per retry, capped at
/// 10 s, with [`Jitter::Proportional(0.5)`](Jitter::Proportional).
///
/// The delay before retry `n` (`n = 1` before the second attempt) is
/// `min(initial_delay × multiplier^(n − 1), max_delay)`, then shortened by the [`Jitter`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryConfig {
    max_attempts: u32,
    initial_delay: Duration,
    multiplier: f64,
    max_delay: Duration,
    jitter: Jitter,
}

impl RetryConfig {
    /// Default total number of attempts, the first one included: 3.
    pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
    /// Default delay before the first retry: 100 ms.
    pub const DEFAULT_INITIAL_DELAY: Duration = Duration::from_millis(100);
    /// Default growth factor of the delay from one retry to the next: 2.
    pub const DEFAULT_MULTIPLIER: f64 = 2.0;
    /// Default cap on any single delay: 10 s.
    pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(10);
    /// Default jitter: each delay drawn from `[d / 2, d]`.
    pub const DEFAULT_JITTER: Jitter = Jitter::Proportional(0.5);

    /// A builder starting from the defaults.
    pub fn builder() -> RetryConfigBuilder {
        RetryConfigBuilder::default()
    }

    /// Total number of attempts, the first one included (at least 1).
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Delay before the first retry, before jitter.
    pub fn initial_delay(&self) -> Duration {
        self.initial_delay
    }

    /// Growth factor of the delay from one retry to the next (at least 1).
    pub fn multiplier(&self) -> f64 {
        self.multiplier
    }

    /// Cap on any single delay.
    pub fn max_delay(&self) -> Duration {
        self.max_delay
    }

    /// How delays are randomised.
    pub fn jitter(&self) -> Jitter {
        self.jitter
    }

    /// The scheduled delay before retry `retry` (1 before the second attempt), without jitter:
    /// `min(initial_delay × multiplier^(retry − 1), max_delay)`.
    pub fn scheduled_delay(&self, retry: u32) -> Duration {
        if self.initial_delay.is_zero() {
            return Duration::ZERO;
        }
        let exponent = i32::try_from(retry.saturating_sub(1)).unwrap_or(i32::MAX);
        // `multiplier` is finite and ≥ 1, so this is ≥ initial and at worst +∞: never NaN.
        let nanos = self.initial_delay.as_nanos() as f64 * self.multiplier.powi(exponent);
        if nanos >= self.max_delay.as_nanos() as f64 {
            return self.max_delay;
        }
        // Round to whole nanoseconds (100 ms × 2 is exactly 200 ms); `as` saturates.
        Duration::from_nanos(nanos.round() as u64).min(self.max_delay)
    }

    /// The delay before retry `retry`, jitter applied.
    fn delay(&self, retry: u32) -> Duration {
        self.jitter.apply(self.scheduled_delay(retry))
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: Self::DEFAULT_MAX_ATTEMPTS,
            initial_delay: Self::DEFAULT_INITIAL_DELAY,
            multiplier: Self::DEFAULT_MULTIPLIER,
            max_delay: Self::DEFAULT_MAX_DELAY,
            jitter: Self::DEFAULT_JITTER,
        }
    }
}

/// Builds a [`RetryConfig`], checking its parameters in [`build`](Self::build).
///
/// Every setter starts from the defaults of [`RetryConfig`].
#[derive(Debug, Clone, Default)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct RetryConfigBuilder {
    config: RetryConfig,
}

impl RetryConfigBuilder {
    /// Total number of attempts, the first one included. `1` disables retrying.
    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.config.max_attempts = max_attempts;
        self
    }

    /// Delay before the first retry, before jitter. May be zero (retry at once).
    pub fn initial_delay(mut self, delay: Duration) -> Self {
        self.config.initial_delay = delay;
        self
    }

    /// Growth factor of the delay from one retry to the next; `1.0` keeps it constant.
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.config.multiplier = multiplier;
        self
    }

    /// Cap on any single delay.
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.config.max_delay = delay;
        self
    }

    /// How delays are randomised.
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.config.jitter = jitter;
        self
    }

    /// Check the parameters and return the configuration.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when `max_attempts` is 0, the multiplier is not a finite number of
    /// at least 1.0, the initial delay exceeds the max delay, or a
    /// [`Jitter::Proportional`] ratio is not within `0.0..=1.0`.
    pub fn build(self) -> Result<RetryConfig, Error> {
        let c = self.config;
        if c.max_attempts == 0 {
            return Err(Error::config(
                "retry max_attempts must be at least 1 (the first attempt counts), got 0",
            ));
        }
        if !c.multiplier.is_finite() {
            return Err(Error::config(format!(
                "retry multiplier must be a finite number, got {}",
                c.multiplier
            )));
        }
        if c.multiplier < 1.0 {
            return Err(Error::config(format!(
                "retry multiplier must be at least 1.0 (delays may not shrink), got {}",
                c.multiplier
            )));
        }
        if c.initial_delay > c.max_delay {
            return Err(Error::config(format!(
                "retry initial_delay ({:?}) must not exceed max_delay ({:?})",
                c.initial_delay, c.max_delay
            )));
        }
        if let Jitter::Proportional(ratio) = c.jitter
            && !(0.0..=1.0).contains(&ratio)
        {
            return Err(Error::config(format!(
                "retry jitter ratio must be between 0.0 and 1.0, got {ratio}"
            )));
        }
        Ok(c)
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
                        let delay = this.config.delay(attempt);
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

    fn config(initial_ms: u64, multiplier: f64, max_ms: u64, jitter: Jitter) -> RetryConfig {
        RetryConfig::builder()
            .max_attempts(10)
            .initial_delay(Duration::from_millis(initial_ms))
            .multiplier(multiplier)
            .max_delay(Duration::from_millis(max_ms))
            .jitter(jitter)
            .build()
            .unwrap()
    }

    #[test]
    fn scheduled_delay_grows_exponentially_up_to_the_cap() {
        let c = config(100, 2.0, 1000, Jitter::None);
        let delays: Vec<u64> = (1..=6)
            .map(|n| c.scheduled_delay(n).as_millis() as u64)
            .collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn scheduled_delay_is_exact_for_fractional_multipliers() {
        let c = config(100, 1.5, 10_000, Jitter::None);
        assert_eq!(c.scheduled_delay(1), Duration::from_millis(100));
        assert_eq!(c.scheduled_delay(2), Duration::from_millis(150));
        assert_eq!(c.scheduled_delay(3), Duration::from_millis(225));
    }

    #[test]
    fn scheduled_delay_saturates_at_the_cap_for_huge_retry_numbers() {
        let c = config(100, 10.0, 5_000, Jitter::None);
        assert_eq!(c.scheduled_delay(u32::MAX), Duration::from_secs(5));
        let max = RetryConfig::builder()
            .max_delay(Duration::MAX)
            .build()
            .unwrap();
        assert_eq!(max.scheduled_delay(u32::MAX), Duration::MAX);
        assert!(max.delay(u32::MAX) <= Duration::MAX);
    }

    #[test]
    fn zero_initial_delay_never_waits() {
        let c = config(0, 3.0, 1000, Jitter::Full);
        assert_eq!(c.scheduled_delay(1), Duration::ZERO);
        assert_eq!(c.scheduled_delay(u32::MAX), Duration::ZERO);
        assert_eq!(c.delay(7), Duration::ZERO);
    }

    #[test]
    fn jitter_only_shortens_within_its_bounds() {
        let scheduled = Duration::from_millis(400);
        for _ in 0..1000 {
            assert_eq!(Jitter::None.apply(scheduled), scheduled);
            assert!(Jitter::Full.apply(scheduled) <= scheduled);
            let d = Jitter::Proportional(0.25).apply(scheduled);
            assert!(
                d >= Duration::from_millis(300) && d <= scheduled,
                "{d:?} outside [300ms, 400ms]"
            );
        }
    }

    #[test]
    fn full_jitter_spreads_delays() {
        let scheduled = Duration::from_secs(1);
        let distinct: std::collections::HashSet<Duration> =
            (0..100).map(|_| Jitter::Full.apply(scheduled)).collect();
        assert!(
            distinct.len() > 50,
            "only {} distinct delays",
            distinct.len()
        );
        assert!(distinct.iter().any(|d| *d < Duration::from_millis(500)));
    }

    #[test]
    fn defaults_are_three_attempts_100ms_doubling_capped_at_10s() {
        let c = RetryConfig::default();
        assert_eq!(c.max_attempts(), 3);
        assert_eq!(c.initial_delay(), Duration::from_millis(100));
        assert_eq!(c.multiplier(), 2.0);
        assert_eq!(c.max_delay(), Duration::from_secs(10));
        assert_eq!(c.jitter(), Jitter::Proportional(0.5));
        assert_eq!(RetryConfig::builder().build().unwrap(), c);
        assert_eq!(*RetryLayer::default().config(), c);
    }
}
