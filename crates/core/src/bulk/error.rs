//! [`BatchError`]: a batch's failure, shared by the message futures of the batch.

use std::fmt;
use std::sync::Arc;

use crate::BoxError;

/// The batch's failure as every message future of the batch sees it. The inner service's
/// error is the [`source`](std::error::Error::source), so
/// `error.source().and_then(|e| e.downcast_ref::<tower::timeout::error::Elapsed>())` tells a
/// timeout.
#[derive(Clone)]
pub struct BatchError(Arc<BoxError>);

impl BatchError {
    pub(super) fn new(error: BoxError) -> Self {
        BatchError(Arc::new(error))
    }

    /// The inner service's error.
    pub fn inner(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &**self.0
    }
}

impl fmt::Debug for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self.0, f)
    }
}

impl fmt::Display for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("batch failed")
    }
}

impl std::error::Error for BatchError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&**self.0)
    }
}
