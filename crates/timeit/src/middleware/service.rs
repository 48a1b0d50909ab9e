use std::{
    borrow::Cow,
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use tokio::time::Instant;
use tower::Service;

use super::{Config, TimeitLayer, future::ResponseFuture};
use crate::Callback;

/// A service timing every call of `S`; built by [`TimeitLayer`].
///
/// Clones share one configuration (name, prebuilt metric keys, callback) behind an `Arc`.
pub struct TimeitService<S, C = ()> {
    inner: S,
    config: Arc<Config<C>>,
}

impl<S> TimeitService<S> {
    /// Wraps `inner`, timing each call as a transaction called `name`, without a callback.
    /// Use [`TimeitLayer`] to set a callback or a histogram name.
    pub fn new(inner: S, name: impl Into<Cow<'static, str>>) -> Self {
        Self::from_config(inner, TimeitLayer::new(name).config())
    }
}

impl<S, C> TimeitService<S, C> {
    pub(super) fn from_config(inner: S, config: Arc<Config<C>>) -> Self {
        TimeitService { inner, config }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The transaction's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }
}

impl<S, C, Request> Service<Request> for TimeitService<S, C>
where
    S: Service<Request>,
    S::Error: fmt::Display,
    C: Callback,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        // The clock includes the synchronous part of the inner `call`.
        let start = Instant::now();
        let future = self.inner.call(request);
        ResponseFuture::new(future, Arc::clone(&self.config), start)
    }
}

impl<S: Clone, C> Clone for TimeitService<S, C> {
    fn clone(&self) -> Self {
        TimeitService {
            inner: self.inner.clone(),
            config: Arc::clone(&self.config),
        }
    }
}

impl<S: fmt::Debug, C> fmt::Debug for TimeitService<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimeitService")
            .field("inner", &self.inner)
            .field("name", &&*self.config.name)
            .field("callback", &std::any::type_name::<C>())
            .finish()
    }
}
