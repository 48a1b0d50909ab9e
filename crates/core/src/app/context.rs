//! What a route's stack builder gets from the [`App`](super::App).

use std::sync::Arc;
use std::time::Duration;

use crate::ack::AckLayer;
use crate::bulk::BulkLayer;
use crate::metrics::RouteMetrics;
use crate::{Error, Shutdown};

/// What a route's stack builder gets from the [`App`](super::App): the route's name, shutdown
/// signal, in-flight limit, default flush interval and metric handles, and layers already
/// wired to them.
#[derive(Debug, Clone)]
pub struct RouteContext {
    name: Arc<str>,
    shutdown: Shutdown,
    max_in_flight: usize,
    flush_interval: Duration,
    metrics: RouteMetrics,
}

impl RouteContext {
    pub(super) fn new(
        name: Arc<str>,
        shutdown: Shutdown,
        max_in_flight: usize,
        flush_interval: Duration,
        metrics: RouteMetrics,
    ) -> Self {
        RouteContext {
            name,
            shutdown,
            max_in_flight,
            flush_interval,
            metrics,
        }
    }

    /// The route's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The route's shutdown signal: give it to the layers that watch one (Bulk, Retry).
    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// The route's in-flight limit: give it to `BulkLayer::max_in_flight`.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    /// The default flush interval (from the settings).
    pub fn flush_interval(&self) -> Duration {
        self.flush_interval
    }

    /// The route's metric handles: give them to `BulkLayer::metrics` and `AckLayer::metrics`.
    pub fn metrics(&self) -> &RouteMetrics {
        &self.metrics
    }

    /// A [`BulkLayer`] of `size` already wired to this route: in-flight clamp, flush
    /// interval, shutdown signal and metrics.
    ///
    /// # Errors
    ///
    /// When `size` is 0.
    pub fn bulk_layer<M>(&self, size: usize) -> Result<BulkLayer<M>, Error> {
        Ok(BulkLayer::new(size)?
            .flush_interval(self.flush_interval)
            .max_in_flight(self.max_in_flight)?
            .with_shutdown(self.shutdown.clone())
            .metrics(self.metrics.clone()))
    }

    /// An [`AckLayer`] with this route's metrics and the default policy.
    pub fn ack_layer(&self) -> AckLayer {
        AckLayer::new().metrics(self.metrics.clone())
    }
}
