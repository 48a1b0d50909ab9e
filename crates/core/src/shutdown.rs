//! A cloneable signal that a graceful shutdown has begun.

use std::fmt;

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Tells layers and sources that a graceful shutdown has begun.
///
/// Clones share one signal. [`Bulk`](crate::bulk::Bulk) flushes partial batches when it
/// fires, [`Retry`](crate::retry::Retry) stops retrying, sources stop taking deliveries. The
/// [`App`](crate::App) triggers it on SIGINT/SIGTERM; [`App::shutdown_handle`](crate::App::shutdown_handle)
/// gives it out, so a program (or a test) can trigger it by hand.
#[derive(Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
}

impl Shutdown {
    /// A signal that has not fired.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fire the signal. Idempotent.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// Whether the signal has fired.
    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// A future that completes once the signal has fired.
    pub fn triggered(&self) -> WaitForCancellationFutureOwned {
        self.token.clone().cancelled_owned()
    }

    /// A signal that fires when this one does, and that can also be fired on its own.
    pub fn child(&self) -> Shutdown {
        Shutdown {
            token: self.token.child_token(),
        }
    }
}

impl fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shutdown")
            .field("triggered", &self.is_triggered())
            .finish()
    }
}
