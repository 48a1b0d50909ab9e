//! [`Route`]: the options of a route just added to an [`App`](super::App).

use std::time::Duration;

use super::RouteOptions;
use crate::Action;
use crate::retry::RetryConfig;

/// The options of a route just added with [`App::route`](super::App::route) or
/// [`App::route_service`](super::App::route_service); each method sets one of its
/// [`RouteOptions`]. The route is added already: dropping the builder keeps it, with the
/// options set so far.
///
/// ```
/// # use asyncworker_core::{Action, App, memory::{MemoryMessage, MemoryQueue}};
/// # use std::time::Duration;
/// # async fn handler(_: Vec<MemoryMessage>) -> Result<(), std::io::Error> { Ok(()) }
/// let queue = MemoryQueue::new();
/// let mut app = App::new();
/// app.route("orders", queue.source(), handler)
///     .bulk_size(100)
///     .flush_interval(Duration::from_secs(5))
///     .on_error(Action::Reject);
/// ```
#[derive(Debug)]
pub struct Route<'a> {
    options: &'a mut RouteOptions,
}

impl<'a> Route<'a> {
    pub(super) fn new(options: &'a mut RouteOptions) -> Self {
        Route { options }
    }

    fn set(self, update: impl FnOnce(RouteOptions) -> RouteOptions) -> Self {
        *self.options = update(std::mem::take(self.options));
        self
    }

    /// Replace every option with `options` (to share one set between routes).
    pub fn options(self, options: RouteOptions) -> Self {
        self.set(|_| options)
    }

    /// See [`RouteOptions::bulk_size`].
    pub fn bulk_size(self, n: usize) -> Self {
        self.set(|o| o.bulk_size(n))
    }

    /// See [`RouteOptions::flush_interval`].
    pub fn flush_interval(self, interval: Duration) -> Self {
        self.set(|o| o.flush_interval(interval))
    }

    /// See [`RouteOptions::on_success`].
    pub fn on_success(self, action: Action) -> Self {
        self.set(|o| o.on_success(action))
    }

    /// See [`RouteOptions::on_error`].
    pub fn on_error(self, action: Action) -> Self {
        self.set(|o| o.on_error(action))
    }

    /// See [`RouteOptions::retry`].
    pub fn retry(self, config: RetryConfig) -> Self {
        self.set(|o| o.retry(config))
    }

    /// See [`RouteOptions::max_concurrent_batches`].
    pub fn max_concurrent_batches(self, n: usize) -> Self {
        self.set(|o| o.max_concurrent_batches(n))
    }

    /// See [`RouteOptions::max_in_flight`].
    pub fn max_in_flight(self, n: usize) -> Self {
        self.set(|o| o.max_in_flight(n))
    }
}
