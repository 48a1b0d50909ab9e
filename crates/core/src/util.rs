//! Helpers shared by the layers and the runtime: below both, so neither depends on the other.

use std::fmt;
use std::sync::Arc;

use crate::BoxError;

/// The message of a caught panic: its `&str` or `String` payload, else a placeholder.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "non-string panic payload"
    }
}

/// The service behind [`Bulk`](crate::bulk::Bulk) failed in `poll_ready`: it can take no more
/// batches, and the route stops. The cause is the [`source`](std::error::Error::source).
///
/// [`Ack`](crate::ack::Ack) fails the batch it was about to run with this error (settling
/// its messages by the `on_error` policy), and so does `Bulk` when its inner service is not
/// an `Ack`; from then on `Bulk::poll_ready` returns it, so the runtime
/// [`Worker`](crate::runtime::Worker) stops taking messages and ends with it.
#[derive(Clone)]
pub struct ServiceFailed {
    cause: Arc<BoxError>,
}

impl ServiceFailed {
    pub(crate) fn new(cause: BoxError) -> Self {
        ServiceFailed {
            cause: Arc::new(cause),
        }
    }

    /// The first `ServiceFailed` in `error`'s source chain, `error` included.
    pub(crate) fn find<'a>(
        error: &'a (dyn std::error::Error + 'static),
    ) -> Option<&'a ServiceFailed> {
        let mut next = Some(error);
        while let Some(error) = next {
            if let Some(failed) = error.downcast_ref::<ServiceFailed>() {
                return Some(failed);
            }
            next = error.source();
        }
        None
    }

    /// The inner service's `poll_ready` error.
    pub fn cause(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &**self.cause
    }
}

impl fmt::Debug for ServiceFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceFailed")
            .field("cause", &self.cause)
            .finish()
    }
}

impl fmt::Display for ServiceFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the service failed and can take no more batches")
    }
}

impl std::error::Error for ServiceFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&**self.cause)
    }
}

/// Displays an error and its sources, `outer: inner: root`, for log lines.
pub(crate) struct Chain<'a>(pub(crate) &'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(error) = next {
            write!(f, ": {error}")?;
            next = error.source();
        }
        Ok(())
    }
}
