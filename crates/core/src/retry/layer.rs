//! [`RetryLayer`].

use std::fmt;

use tower_layer::Layer;

use super::{AlwaysRetry, Retry, RetryConfig};
use crate::Shutdown;

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

    /// Stop retrying once `shutdown` fires (see the [module docs](super)).
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
