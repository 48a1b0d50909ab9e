//! The [`Retry`] service.

use std::fmt;
use std::task::{Context, Poll};

use tower::Service;
use tower_layer::Layer;

use super::future::{ResponseFuture, RetryParts};
use super::{AlwaysRetry, RetryConfig, RetryLayer, RetryPredicate};
use crate::Shutdown;

/// Calls the inner service again when it fails, with exponential backoff and jitter.
///
/// See the [module docs](super). Built by [`RetryLayer`] or [`Retry::new`].
#[derive(Clone)]
pub struct Retry<S, P = AlwaysRetry> {
    pub(super) inner: S,
    pub(super) config: RetryConfig,
    pub(super) predicate: P,
    pub(super) shutdown: Option<Shutdown>,
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
    type Future = ResponseFuture<S, Req, P>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        // The ready service takes the first attempt; retries go to a clone, which the future
        // drives to readiness before each call.
        let retry = (self.config.max_attempts > 1).then(|| RetryParts {
            service: self.inner.clone(),
            request: request.clone(),
            predicate: self.predicate.clone(),
            shutdown: self.shutdown.clone(),
        });
        let first = self.inner.call(request);
        ResponseFuture::new(first, retry, self.config)
    }
}
