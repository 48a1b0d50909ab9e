//! [`BulkLayer`]: batch size, flush interval, limits, shutdown and metrics.

use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::Semaphore;
use tower::Service;
use tower_layer::Layer;

use super::Bulk;
use crate::metrics::LayerMetrics;
use crate::observe::Hook;
use crate::util::ServiceFailed;
use crate::{Error, Shutdown};

/// The default flush interval: 60 seconds, as in the Python original.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(60);

/// A layer that groups messages into batches. See the [module docs](super).
///
/// `M` is the message type; it is usually inferred. Cheap to clone. Each service it makes has
/// its own buffer; clones of the layer share the shutdown signal, the metrics hook and
/// (when set) the concurrent-batch limit, so services made from one layer share one limit.
pub struct BulkLayer<M> {
    size: usize,
    flush_interval: Duration,
    max_in_flight: Option<usize>,
    batch_limit: Option<Arc<Semaphore>>,
    shutdown: Shutdown,
    hook: Hook,
    _message: PhantomData<fn(M)>,
}

impl<M> Clone for BulkLayer<M> {
    fn clone(&self) -> Self {
        BulkLayer {
            size: self.size,
            flush_interval: self.flush_interval,
            max_in_flight: self.max_in_flight,
            batch_limit: self.batch_limit.clone(),
            shutdown: self.shutdown.clone(),
            hook: self.hook.clone(),
            _message: PhantomData,
        }
    }
}

impl<M> fmt::Debug for BulkLayer<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BulkLayer")
            .field("size", &self.size)
            .field("flush_interval", &self.flush_interval)
            .field("max_in_flight", &self.max_in_flight)
            .field(
                "max_concurrent_batches",
                &self.batch_limit.as_ref().map(|s| s.available_permits()),
            )
            .finish()
    }
}

impl<M> BulkLayer<M> {
    /// Batches of up to `size` messages, flushed after [`DEFAULT_FLUSH_INTERVAL`].
    ///
    /// # Errors
    ///
    /// When `size` is 0.
    pub fn new(size: usize) -> Result<Self, Error> {
        if size == 0 {
            return Err(Error::config("bulk size must be at least 1"));
        }
        Ok(BulkLayer {
            size,
            flush_interval: DEFAULT_FLUSH_INTERVAL,
            max_in_flight: None,
            batch_limit: None,
            shutdown: Shutdown::new(),
            hook: Hook::default(),
            _message: PhantomData,
        })
    }

    /// Flush a partial batch once its oldest message has waited `interval`.
    /// `Duration::MAX` (or any interval too large to add to the clock) means never flush on
    /// time: only on size and shutdown.
    pub fn flush_interval(mut self, interval: Duration) -> Self {
        self.flush_interval = interval;
        self
    }

    /// The most message futures the caller holds at once (the runtime's in-flight limit; for
    /// AMQP, the prefetch). Batches are clamped to it so they can always fill. Not set: no
    /// clamp.
    ///
    /// # Errors
    ///
    /// When `n` is 0.
    pub fn max_in_flight(mut self, n: usize) -> Result<Self, Error> {
        if n == 0 {
            return Err(Error::config("max in flight must be at least 1"));
        }
        self.max_in_flight = Some(n);
        Ok(self)
    }

    /// Run at most `n` batches at once; sealed batches beyond it wait for a slot.
    ///
    /// # Errors
    ///
    /// When `n` is 0.
    pub fn max_concurrent_batches(mut self, n: usize) -> Result<Self, Error> {
        if n == 0 {
            return Err(Error::config("max concurrent batches must be at least 1"));
        }
        self.batch_limit = Some(Arc::new(Semaphore::new(n)));
        Ok(self)
    }

    /// Flush open batches, and every later message at once, when `shutdown` fires.
    pub fn with_shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// Report each batch and its flush reason to `hook` (default: none recorded), e.g. a
    /// route's [`RouteMetrics`](crate::metrics::RouteMetrics).
    pub fn metrics(mut self, hook: impl LayerMetrics) -> Self {
        self.hook = Hook::new(hook);
        self
    }

    /// The batch size after the in-flight clamp.
    pub fn effective_size(&self) -> usize {
        match self.max_in_flight {
            Some(limit) => self.size.min(limit),
            None => self.size,
        }
    }
}

impl<S: Service<Vec<M>>, M> Layer<S> for BulkLayer<M> {
    type Service = Bulk<S, M>;

    fn layer(&self, inner: S) -> Bulk<S, M> {
        let effective = self.effective_size();
        if effective < self.size {
            tracing::info!(
                route = self.hook.route(),
                bulk_size = self.size,
                effective_size = effective,
                "bulk size clamped to the messages that can be in flight at once"
            );
        }
        Bulk::new(
            inner,
            Arc::new(Config {
                size: effective,
                flush_interval: self.flush_interval,
                batch_limit: self.batch_limit.clone(),
                shutdown: self.shutdown.clone(),
                hook: self.hook.clone(),
                failed: OnceLock::new(),
            }),
        )
    }
}

/// What one [`Bulk`] and its batches share.
pub(super) struct Config {
    pub(super) size: usize,
    pub(super) flush_interval: Duration,
    pub(super) batch_limit: Option<Arc<Semaphore>>,
    pub(super) shutdown: Shutdown,
    pub(super) hook: Hook,
    /// Set once the inner service failed; `Bulk::poll_ready` returns it from then on.
    pub(super) failed: OnceLock<ServiceFailed>,
}

impl Config {
    /// Record that the inner service failed (the first failure wins).
    pub(super) fn fail(&self, failed: &ServiceFailed) {
        if self.failed.set(failed.clone()).is_ok() {
            tracing::error!(
                route = self.hook.route(),
                error = %crate::util::Chain(failed),
                "bulk: the inner service failed; no more batches"
            );
        }
    }
}
