//! The [`Bulk`] service: adds each message to the open batch.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use std::sync::Weak;
use tower::Service;

use super::FlushReason;
use super::cell::Cell;
use super::future::{BatchFuture, ResponseFuture};
use super::handle::Handle;
use super::layer::Config;
use crate::BoxError;

/// Groups messages into batches for the inner `Service<Vec<M>>`. See the
/// [module docs](super).
///
/// Not `Clone`: each `Bulk` owns the batch it is filling.
// The one bound is forced: the open batch holds a handle to the future of the inner call.
pub struct Bulk<S: Service<Vec<M>>, M> {
    inner: S,
    config: Arc<Config>,
    open: Option<OpenBatch<S, M>>,
}

/// The batch being filled: its buffer and a weak reference to the handle its message futures
/// share.
///
/// Only the message futures keep a batch alive: a batch whose futures were all dropped goes
/// away at once and requeues its buffered messages, instead of waiting for more messages or
/// for the service to be dropped.
type OpenBatch<S, M> = (Arc<Cell<M>>, Weak<Handle<S, M>>);

impl<S: Service<Vec<M>>, M> Bulk<S, M> {
    pub(super) fn new(inner: S, config: Arc<Config>) -> Self {
        Bulk {
            inner,
            config,
            open: None,
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

    /// Unwrap the inner service. The open batch keeps running through its message futures.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The batch size after the in-flight clamp.
    pub fn effective_size(&self) -> usize {
        self.config.size
    }
}

impl<S, M> fmt::Debug for Bulk<S, M>
where
    S: Service<Vec<M>> + fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bulk")
            .field("inner", &self.inner)
            .field("size", &self.config.size)
            .field("flush_interval", &self.config.flush_interval)
            .field("open", &self.open.is_some())
            .finish()
    }
}

impl<S, M> Service<M> for Bulk<S, M>
where
    S: Service<Vec<M>> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = ();
    type Error = BoxError;
    type Future = ResponseFuture<S, M>;

    /// Ready until the inner service fails (see the [module docs](super#readiness)): a
    /// message only joins a buffer here. Then the [`ServiceFailed`](crate::ack::ServiceFailed)
    /// error, whose source is the inner service's error.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self.config.failed.get() {
            None => Poll::Ready(Ok(())),
            Some(failed) => Poll::Ready(Err(Box::new(failed.clone()))),
        }
    }

    fn call(&mut self, message: M) -> Self::Future {
        let config = &self.config;
        if config.size == 1 {
            let reason = if config.shutdown.is_triggered() {
                FlushReason::Shutdown
            } else {
                FlushReason::Size
            };
            let future =
                BatchFuture::sealed(self.inner.clone(), config.clone(), vec![message], reason);
            return ResponseFuture::direct(future);
        }
        if let Some((cell, weak)) = &self.open {
            let mut state = cell.lock();
            // `upgrade` fails once every message future of the batch is gone; its guard is
            // then sealing the cell (if it has not yet), so start a new batch.
            if let Some(handle) = weak.upgrade().filter(|_| state.sealed.is_none()) {
                // No shutdown check here (it costs a lock per message): the batch future
                // watches the signal and seals the batch on its next poll, this message
                // included.
                state.messages.push(message);
                let full = state.messages.len() >= config.size;
                if full {
                    cell.seal(&mut state, FlushReason::Size);
                }
                drop(state);
                if full {
                    self.open = None;
                }
                return ResponseFuture::waiting(handle);
            }
        }
        let shutting_down = config.shutdown.is_triggered();
        // No open batch, or it was sealed by its timer or by shutdown: start a new one.
        let mut messages = Vec::with_capacity(config.size);
        messages.push(message);
        let cell = Arc::new(Cell::new(
            messages,
            shutting_down.then_some(FlushReason::Shutdown),
        ));
        let batch = BatchFuture::open(self.inner.clone(), config.clone(), cell.clone());
        if shutting_down {
            // Sealed already: no other message joins it.
            self.open = None;
            return ResponseFuture::direct(batch);
        }
        let handle = Arc::new(Handle::new());
        self.open = Some((cell, Arc::downgrade(&handle)));
        ResponseFuture::driver(batch, handle)
    }
}
