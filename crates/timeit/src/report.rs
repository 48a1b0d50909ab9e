//! What a finished root hands to its callback: transactions, outcome and error.

use std::{borrow::Cow, fmt, time::Duration};

use metrics::SharedString;

/// How a timed piece of work ended.
///
/// It is also the value of the `outcome` label of the histogram ([`Outcome::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// The work completed and did not report an error.
    Ok,
    /// The work completed with an error.
    Error,
    /// The work was dropped before it completed (a cancelled future, a guard that was never
    /// finished).
    Cancelled,
}

impl Outcome {
    /// The label value: `"ok"`, `"error"` or `"cancelled"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Cancelled => "cancelled",
        }
    }

    pub(crate) const fn index(self) -> usize {
        match self {
            Outcome::Ok => 0,
            Outcome::Error => 1,
            Outcome::Cancelled => 2,
        }
    }

    pub(crate) const ALL: [Outcome; 3] = [Outcome::Ok, Outcome::Error, Outcome::Cancelled];
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error a timed piece of work failed with, as the report carries it (the Python
/// original's `exc_type` and `exc_val`).
///
/// The report is handed to an async callback while the caller still gets the original error
/// back, so the report keeps an owned description instead of the error itself: the error's
/// static type name and its `Display` text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportedError {
    type_name: &'static str,
    message: String,
}

impl ReportedError {
    /// Describes `error`: its static type name and its `Display` text.
    pub fn new<E: fmt::Display + ?Sized>(error: &E) -> Self {
        ReportedError {
            type_name: std::any::type_name::<E>(),
            message: error.to_string(),
        }
    }

    /// The static type name of the error (`std::any::type_name`), the Python `exc_type`.
    ///
    /// For a type-erased error (`Box<dyn Error + Send + Sync>`) this is the name of the box
    /// type, not of the error inside it.
    pub fn type_name(&self) -> &'static str {
        self.type_name
    }

    /// The error's `Display` text, the Python `exc_val`.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ReportedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ReportedError {}

/// Tells a timed output's success from its failure, so a scope or a guard can report it.
///
/// Implemented for `()` (always a success) and for `Result<T, E>` with a displayable error.
/// Implement it for your own output types to time them with [`Timeit::run`](crate::Timeit::run).
pub trait Fallible {
    /// The error to report, or `None` when the output is a success.
    fn reported_error(&self) -> Option<ReportedError>;

    /// Whether the output is a failure, without describing it.
    fn is_error(&self) -> bool {
        self.reported_error().is_some()
    }
}

impl Fallible for () {
    fn reported_error(&self) -> Option<ReportedError> {
        None
    }
}

impl<T, E: fmt::Display> Fallible for Result<T, E> {
    fn reported_error(&self) -> Option<ReportedError> {
        self.as_ref().err().map(ReportedError::new)
    }

    fn is_error(&self) -> bool {
        self.is_err()
    }
}

/// One finished transaction: its name, how long it ran and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timing {
    pub(crate) name: SharedString,
    pub(crate) elapsed: Duration,
    pub(crate) outcome: Outcome,
}

impl Timing {
    /// The transaction's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How long the transaction ran, measured with `tokio::time::Instant`.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// How the transaction ended.
    pub fn outcome(&self) -> Outcome {
        self.outcome
    }
}

/// What the root's callback receives once, when the root finishes: every transaction that
/// finished within the root, and the error when the timed work failed.
///
/// # Duplicate names
///
/// Names may repeat within one report (a transaction opened in a loop, a child named like the
/// root): every finished transaction is its own [`Timing`], in the order the transactions
/// finished, and [`Report::total`] sums the durations of all entries with a name. The Python
/// original raised `ValueError` on a repeated name instead; a loop of timed steps is common
/// enough that keeping every entry serves better than failing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub(crate) transactions: Entries,
    pub(crate) error: Option<ReportedError>,
}

/// One entry without an allocation (the layer's case), or many.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Entries {
    One(Timing),
    Many(Vec<Timing>),
}

impl Report {
    /// Every finished transaction, in the order they finished: nested ones first, the root
    /// last (the Python example reports `c`, `b`, `a`).
    pub fn transactions(&self) -> &[Timing] {
        match &self.transactions {
            Entries::One(timing) => std::slice::from_ref(timing),
            Entries::Many(timings) => timings,
        }
    }

    /// The root transaction: the last entry.
    pub fn root(&self) -> &Timing {
        match &self.transactions {
            Entries::One(timing) => timing,
            // Invariant: `Many` is only built with the root pushed last, so it is never empty.
            Entries::Many(timings) => &timings[timings.len() - 1],
        }
    }

    /// The total duration of the transactions named `name`, or `None` when none is.
    ///
    /// With a repeated name, this is the sum over all its entries (see
    /// [Duplicate names](Report#duplicate-names)).
    pub fn total(&self, name: &str) -> Option<Duration> {
        self.transactions()
            .iter()
            .filter(|t| t.name() == name)
            .map(Timing::elapsed)
            .reduce(|a, b| a + b)
    }

    /// How the root ended.
    pub fn outcome(&self) -> Outcome {
        self.root().outcome
    }

    /// The error the root's work failed with (the Python `exc_type` and `exc_val`), or `None`.
    pub fn error(&self) -> Option<&ReportedError> {
        self.error.as_ref()
    }
}

/// Turns a user-given name into a `SharedString` whose clones never allocate: a `&'static str`
/// is borrowed, a `String` is moved into an `Arc<str>` once.
pub(crate) fn shared_name(name: impl Into<Cow<'static, str>>) -> SharedString {
    match name.into() {
        Cow::Borrowed(name) => SharedString::const_str(name),
        Cow::Owned(name) => SharedString::from_shared(name.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(name: &'static str, ms: u64) -> Timing {
        Timing {
            name: SharedString::const_str(name),
            elapsed: Duration::from_millis(ms),
            outcome: Outcome::Ok,
        }
    }

    #[test]
    fn total_sums_entries_with_the_same_name() {
        let report = Report {
            transactions: Entries::Many(vec![
                timing("step", 10),
                timing("step", 20),
                timing("root", 40),
            ]),
            error: None,
        };
        assert_eq!(report.total("step"), Some(Duration::from_millis(30)));
        assert_eq!(report.total("root"), Some(Duration::from_millis(40)));
        assert_eq!(report.total("missing"), None);
        assert_eq!(report.root().name(), "root");
    }

    #[test]
    fn result_error_is_reported_with_type_and_message() {
        let output: Result<(), std::num::ParseIntError> = "x".parse::<u8>().map(drop);
        let error = output.reported_error().expect("an error");
        assert_eq!(error.type_name(), "core::num::error::ParseIntError");
        assert_eq!(error.message(), "invalid digit found in string");
        assert_eq!(Ok::<(), String>(()).reported_error(), None);
    }

    #[test]
    fn owned_names_become_shared_so_clones_do_not_allocate() {
        let name = shared_name(String::from("dynamic"));
        let clone = name.clone();
        // A shared string's clone points at the same bytes.
        assert_eq!(name.as_ptr(), clone.as_ptr());
        assert_eq!(&*clone, "dynamic");
    }

    #[test]
    fn outcome_labels() {
        let labels: Vec<_> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(labels, ["ok", "error", "cancelled"]);
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(o.index(), i);
        }
    }
}
