//! The async callback a root hands its [`Report`] to.

use std::future::{Future, Ready, ready};

use crate::Report;

/// An async callback that receives a root's [`Report`] once, when the root finishes.
///
/// Implemented for `()` (no callback: nothing is reported, only the histogram is recorded)
/// and for any `Fn(Report) -> impl Future<Output = ()>`, so an `async` closure or a function
/// returning an `async` block works:
///
/// ```
/// use asyncworker_timeit::{Report, Timeit};
///
/// async fn log_report(report: Report) {
///     println!("{:?}", report.transactions());
/// }
///
/// let timeit = Timeit::new("a").callback(log_report);
/// # drop(timeit);
/// ```
///
/// The callback is awaited by the scope or guard that finishes the root, before the timed
/// output is handed back, as the Python original awaits it in `__aexit__`. A root that is
/// dropped before it finishes (a cancelled future) does not call it: a destructor cannot
/// await. The histogram still records that root with outcome `cancelled`.
pub trait Callback {
    /// The future the callback returns.
    type Future: Future<Output = ()>;

    /// Hands `report` to the callback.
    fn call(&self, report: Report) -> Self::Future;
}

impl Callback for () {
    type Future = Ready<()>;

    fn call(&self, _report: Report) -> Self::Future {
        ready(())
    }
}

impl<F, Fut> Callback for F
where
    F: Fn(Report) -> Fut,
    Fut: Future<Output = ()>,
{
    type Future = Fut;

    fn call(&self, report: Report) -> Self::Future {
        self(report)
    }
}
