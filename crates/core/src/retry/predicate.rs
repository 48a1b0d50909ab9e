//! [`RetryPredicate`]: which errors are worth another attempt.

/// Decides whether an error is worth another attempt.
///
/// Implemented by [`AlwaysRetry`] (the default) and by every `Fn(&E) -> bool` closure, so
/// [`RetryLayer::retry_if`](super::RetryLayer::retry_if) takes a closure directly.
pub trait RetryPredicate<E> {
    /// Whether to retry after `error`. Returning `false` gives up at once with `error`.
    fn should_retry(&self, error: &E) -> bool;
}

/// The default [`RetryPredicate`]: every error is retried.
#[derive(Debug, Clone, Copy, Default)]
pub struct AlwaysRetry;

impl<E> RetryPredicate<E> for AlwaysRetry {
    fn should_retry(&self, _error: &E) -> bool {
        true
    }
}

impl<E, F> RetryPredicate<E> for F
where
    F: Fn(&E) -> bool,
{
    fn should_retry(&self, error: &E) -> bool {
        self(error)
    }
}
