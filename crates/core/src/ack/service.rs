//! The [`Ack`] service.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::task::{Context, Poll};

use tower::Service;
use tower_layer::Layer;

use super::future::{ResponseFuture, SettleGuard, Settlements};
use super::{AckLayer, HandlerPanicked};
use crate::util::ServiceFailed;
use crate::{BoxError, Message};

/// Settles every message of a batch after the inner service completes. See the
/// [module docs](super).
#[derive(Debug, Clone)]
pub struct Ack<S> {
    inner: S,
    layer: AckLayer,
    // Set when the inner service failed in `poll_ready`: it is not polled again, and every
    // batch fails with this error, settled by policy.
    failed: Option<ServiceFailed>,
}

impl<S> Ack<S> {
    /// Wrap `inner` with the default policy (ack on success, requeue on error).
    pub fn new(inner: S) -> Self {
        AckLayer::new().layer(inner)
    }

    pub(super) fn with_layer(inner: S, layer: AckLayer) -> Self {
        Ack {
            inner,
            layer,
            failed: None,
        }
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

impl<S, M> Service<Vec<M>> for Ack<S>
where
    S: Service<Vec<M>>,
    S::Error: Into<BoxError>,
    M: Message,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    /// The inner service's readiness. When the inner service fails, `Ack` is ready thereafter
    /// and fails each batch with [`ServiceFailed`] (see the [module docs](super#readiness)).
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.failed.is_none()
            && let Err(error) = std::task::ready!(self.inner.poll_ready(cx))
        {
            let failed = ServiceFailed::new(error.into());
            tracing::error!(
                route = self.layer.hook.route(),
                error = %crate::util::Chain(&failed),
                "the service behind ack failed; failing its batches by policy"
            );
            self.failed = Some(failed);
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, batch: Vec<M>) -> Self::Future {
        let guard = SettleGuard::new(Settlements::of(&batch), self.layer.clone());
        if let Some(failed) = &self.failed {
            return ResponseFuture::failed(Box::new(failed.clone()), guard);
        }
        let inner = &mut self.inner;
        match catch_unwind(AssertUnwindSafe(|| inner.call(batch))) {
            Ok(future) => ResponseFuture::running(future, guard),
            Err(payload) => {
                ResponseFuture::panicked(HandlerPanicked::from_payload(&*payload), guard)
            }
        }
    }
}
