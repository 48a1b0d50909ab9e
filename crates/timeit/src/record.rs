//! Recording to the `metrics` histogram.

use std::time::Duration;

use metrics::{Key, Label, Level, Metadata, SharedString};

use crate::Outcome;

/// The default name of the histogram every transaction is recorded to, in seconds.
pub const DEFAULT_HISTOGRAM: &str = "asyncworker_timeit_seconds";

/// The label that carries the transaction's name.
pub const TRANSACTION_LABEL: &str = "transaction";

/// The label that carries the [`Outcome`]: `ok`, `error` or `cancelled`.
pub const OUTCOME_LABEL: &str = "outcome";

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// The key of one (transaction, outcome) pair. Clones of `histogram` and `transaction` are
/// borrowed or shared strings (see `shared_name`), so this allocates only the label list.
pub(crate) fn key(histogram: &SharedString, transaction: &SharedString, outcome: Outcome) -> Key {
    Key::from_parts(
        histogram.clone(),
        vec![
            Label::new(TRANSACTION_LABEL, transaction.clone()),
            Label::from_static_parts(OUTCOME_LABEL, outcome.as_str()),
        ],
    )
}

/// Records `elapsed` (in seconds) to the histogram of `key`, through the current recorder
/// (the thread's local recorder if one is set, else the global one).
///
/// The histogram is looked up at each record rather than registered once, so a recorder
/// installed after a layer was built still receives its samples.
pub(crate) fn record(key: &Key, elapsed: Duration) {
    metrics::with_recorder(|recorder| {
        recorder
            .register_histogram(key, &METADATA)
            .record(elapsed.as_secs_f64());
    });
}

/// The three keys of one transaction, built once, so recording allocates nothing.
#[derive(Debug)]
pub(crate) struct Keys([Key; 3]);

impl Keys {
    pub(crate) fn new(histogram: &SharedString, transaction: &SharedString) -> Self {
        Keys(Outcome::ALL.map(|outcome| key(histogram, transaction, outcome)))
    }

    pub(crate) fn get(&self, outcome: Outcome) -> &Key {
        &self.0[outcome.index()]
    }
}
