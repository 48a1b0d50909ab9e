//! [`AckLayer`]: the settlement policy and the metrics hook.

use tower_layer::Layer;

use super::Ack;
use crate::Action;
use crate::metrics::LayerMetrics;
use crate::observe::Hook;

/// A layer that settles every message of a batch after the inner service completes.
///
/// Cheap to clone; clones share the metrics hook.
#[derive(Debug, Clone)]
pub struct AckLayer {
    pub(super) on_success: Action,
    pub(super) on_error: Action,
    pub(super) hook: Hook,
}

impl AckLayer {
    /// The seed's defaults: ack on success, requeue on error.
    pub fn new() -> Self {
        AckLayer {
            on_success: Action::Ack,
            on_error: Action::Requeue,
            hook: Hook::default(),
        }
    }

    /// The action for unmarked messages when the handler succeeds (default [`Action::Ack`]).
    pub fn on_success(mut self, action: Action) -> Self {
        self.on_success = action;
        self
    }

    /// The action for unmarked messages when the handler fails or panics (default
    /// [`Action::Requeue`]).
    pub fn on_error(mut self, action: Action) -> Self {
        self.on_error = action;
        self
    }

    /// Report handler durations and settlement counts to `hook` (default: none recorded),
    /// e.g. a route's [`RouteMetrics`](crate::metrics::RouteMetrics).
    pub fn metrics(mut self, hook: impl LayerMetrics) -> Self {
        self.hook = Hook::new(hook);
        self
    }
}

impl Default for AckLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for AckLayer {
    type Service = Ack<S>;

    fn layer(&self, inner: S) -> Ack<S> {
        Ack::with_layer(inner, self.clone())
    }
}
