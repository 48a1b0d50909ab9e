//! Route options, and the one code path that turns them into a layer stack.

use std::time::Duration;

use tower::{Service, ServiceBuilder};

use super::RouteContext;
use crate::retry::{RetryConfig, RetryLayer};
use crate::runtime::{DEFAULT_MAX_IN_FLIGHT, effective_in_flight};
use crate::{Action, BoxError, Error, Message};

/// Options of a route; they become its layer stack. Defaults are the Python original's.
///
/// [`App::route`](super::App::route) returns a [`Route`](super::Route) that sets them one by
/// one; build a `RouteOptions` yourself to share one set between routes
/// ([`Route::options`](super::Route::options)) or to build the stack by hand
/// ([`RouteOptions::layers`]).
#[derive(Debug, Clone)]
pub struct RouteOptions {
    bulk_size: usize,
    flush_interval: Option<Duration>,
    on_success: Action,
    on_error: Action,
    retry: Option<RetryConfig>,
    max_concurrent_batches: Option<usize>,
    max_in_flight: Option<usize>,
}

impl Default for RouteOptions {
    fn default() -> Self {
        RouteOptions {
            bulk_size: 1,
            flush_interval: None,
            on_success: Action::Ack,
            on_error: Action::Requeue,
            retry: None,
            max_concurrent_batches: None,
            max_in_flight: None,
        }
    }
}

impl RouteOptions {
    /// Bulk size 1, flush interval from the settings (60 s), ack on success, requeue on
    /// error, no retry, no batch limit, the source's in-flight limit.
    pub fn new() -> Self {
        Self::default()
    }

    /// Messages per batch (default 1; 0 is an error). Clamped to the in-flight limit (the
    /// AMQP prefetch).
    pub fn bulk_size(mut self, n: usize) -> Self {
        self.bulk_size = n;
        self
    }

    /// Flush a partial batch once its oldest message has waited this long (default:
    /// `ASYNCWORKER_FLUSH_TIMEOUT`, else 60 s).
    pub fn flush_interval(mut self, interval: Duration) -> Self {
        self.flush_interval = Some(interval);
        self
    }

    /// What happens to unmarked messages when the handler succeeds (default ack).
    pub fn on_success(mut self, action: Action) -> Self {
        self.on_success = action;
        self
    }

    /// What happens to unmarked messages when the handler fails (default requeue).
    pub fn on_error(mut self, action: Action) -> Self {
        self.on_error = action;
        self
    }

    /// Re-run a failed batch in process before it counts as failed.
    pub fn retry(mut self, config: RetryConfig) -> Self {
        self.retry = Some(config);
        self
    }

    /// Run at most `n` batches of this route at once (default: no limit but the in-flight
    /// limit; 0 is an error).
    pub fn max_concurrent_batches(mut self, n: usize) -> Self {
        self.max_concurrent_batches = Some(n);
        self
    }

    /// Hold at most `n` unsettled messages (default: the source's limit, else
    /// `max(128, 2 × bulk size)`; 0 is an error — leave it unset for the default).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = Some(n);
        self
    }

    /// Check the options, without a route name.
    pub(super) fn validate(&self) -> Result<(), Error> {
        if self.bulk_size == 0 {
            return Err(Error::config("bulk size must be at least 1"));
        }
        if self.max_concurrent_batches == Some(0) {
            return Err(Error::config("max concurrent batches must be at least 1"));
        }
        if self.max_in_flight == Some(0) {
            return Err(Error::config("max in flight must be at least 1"));
        }
        Ok(())
    }

    /// The in-flight limit for a source whose own limit is `source_limit`.
    pub(super) fn in_flight(&self, source_limit: Option<usize>) -> usize {
        match (self.max_in_flight, source_limit) {
            (None, None) => DEFAULT_MAX_IN_FLIGHT.max(self.bulk_size.saturating_mul(2)),
            (configured, source) => effective_in_flight(configured, source),
        }
    }

    /// The layer stack these options stand for, around `handler`: `Bulk → Ack → Retry`.
    ///
    /// # Errors
    ///
    /// When an option is invalid (bulk size 0, ...).
    pub fn layers<M, S>(
        &self,
        cx: &RouteContext,
        handler: S,
    ) -> Result<
        impl Service<M, Response = (), Error = BoxError, Future: Send> + Send + 'static + use<M, S>,
        Error,
    >
    where
        M: Message,
        S: Service<Vec<M>, Response = ()> + Clone + Send + 'static,
        S::Error: Into<BoxError> + Send + Sync + 'static,
        S::Future: Send + 'static,
    {
        self.validate()?;
        let mut bulk = cx.bulk_layer(self.bulk_size)?;
        if let Some(interval) = self.flush_interval {
            bulk = bulk.flush_interval(interval);
        }
        if let Some(n) = self.max_concurrent_batches {
            bulk = bulk.max_concurrent_batches(n)?;
        }
        let ack = cx
            .ack_layer()
            .on_success(self.on_success)
            .on_error(self.on_error);
        let retry = self
            .retry
            .map(|config| RetryLayer::new(config).with_shutdown(cx.shutdown().clone()));
        Ok(ServiceBuilder::new()
            .layer(bulk)
            .layer(ack)
            .option_layer(retry)
            .map_err(Into::<BoxError>::into)
            .service(handler))
    }
}
