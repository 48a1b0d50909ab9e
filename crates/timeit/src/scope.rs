//! Timed scopes and guards with nested transactions.

use std::{
    borrow::Cow,
    fmt,
    future::Future,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use metrics::SharedString;
use tokio::time::Instant;

use crate::{
    Callback, Fallible, Outcome, Report, ReportedError, Timing,
    record::{self, DEFAULT_HISTOGRAM},
    report::{Entries, shared_name},
};

/// A named timer with an optional async callback: the Python original's `Timeit`.
///
/// `Timeit` is the configuration; time something with it in one of three ways:
///
/// - [`run`](Timeit::run) times a future, the `async with Timeit(...)` block of the original;
/// - [`scope`](Timeit::scope) times a future that opens nested transactions through a
///   [`Handle`], the original's `async with Timeit(...) as t`;
/// - [`start`](Timeit::start) returns a [`TimeitGuard`] to finish by hand.
///
/// When the root finishes, its duration and the duration of every nested transaction that
/// finished before it go to the root's [`Callback`] in one [`Report`], and each of them is
/// recorded to the `metrics` histogram ([`DEFAULT_HISTOGRAM`] unless
/// [`histogram`](Timeit::histogram) names another) with the labels `transaction` and
/// `outcome`. Time is measured with `tokio::time::Instant`, so it follows tokio's paused
/// clock in tests.
///
/// ```
/// use std::time::Duration;
/// use asyncworker_timeit::{Report, Timeit};
///
/// async fn print_report(report: Report) {
///     for t in report.transactions() {
///         println!("{}: {:?}", t.name(), t.elapsed());
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// Timeit::new("xablau")
///     .callback(print_report)
///     .run(tokio::time::sleep(Duration::from_millis(10)))
///     .await;
/// # }
/// ```
#[must_use = "a Timeit does nothing until it runs a future or starts a guard"]
pub struct Timeit<C = ()> {
    name: SharedString,
    histogram: SharedString,
    callback: C,
}

impl Timeit<()> {
    /// A timer whose root transaction is called `name`, without a callback.
    ///
    /// A `&'static str` name is used as is; a `String` is moved into a shared string once, so
    /// recording never copies it.
    pub fn new(name: impl Into<Cow<'static, str>>) -> Self {
        Timeit {
            name: shared_name(name),
            histogram: SharedString::const_str(DEFAULT_HISTOGRAM),
            callback: (),
        }
    }
}

impl<C> Timeit<C> {
    /// Sets the async callback that receives the [`Report`] when the root finishes.
    pub fn callback<C2: Callback>(self, callback: C2) -> Timeit<C2> {
        Timeit {
            name: self.name,
            histogram: self.histogram,
            callback,
        }
    }

    /// Records to the histogram called `name` instead of [`DEFAULT_HISTOGRAM`].
    pub fn histogram(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.histogram = shared_name(name);
        self
    }

    /// The root transaction's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Starts the clock and returns the root guard.
    pub fn start(self) -> TimeitGuard<C> {
        TimeitGuard {
            clock: Clock::start(self.name, Arc::new(Shared::new(self.histogram))),
            callback: self.callback,
        }
    }

    /// Times `future`: the clock starts at the first poll and stops when `future` completes;
    /// the callback is then awaited with the report, and `future`'s output is returned
    /// unchanged (an error is reported, never swallowed).
    ///
    /// The output decides the outcome through [`Fallible`]: an `Err` is an error, `()` and
    /// `Ok` a success. Dropping the returned future before it completes records the root as
    /// `cancelled` and does not call the callback.
    pub async fn run<F>(self, future: F) -> F::Output
    where
        C: Callback,
        F: Future,
        F::Output: Fallible,
    {
        let guard = self.start();
        let output = future.await;
        guard.finish_with(&output).await;
        output
    }

    /// Like [`run`](Timeit::run), for work that opens nested transactions: `scope` gets a
    /// [`Handle`] to the root (the `t` of the original's `async with Timeit(...) as t`).
    ///
    /// ```
    /// use asyncworker_timeit::{Report, Timeit};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// Timeit::new("a")
    ///     .callback(async |report: Report| println!("{:?}", report.transactions()))
    ///     .scope(async |t| {
    ///         t.transaction("b").run(async { /* ... */ }).await;
    ///     })
    ///     .await;
    /// # }
    /// ```
    pub async fn scope<F, Fut>(self, scope: F) -> Fut::Output
    where
        C: Callback,
        F: FnOnce(Handle) -> Fut,
        Fut: Future,
        Fut::Output: Fallible,
    {
        let guard = self.start();
        let output = scope(guard.handle()).await;
        guard.finish_with(&output).await;
        output
    }
}

impl<C> fmt::Debug for Timeit<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timeit")
            .field("name", &&*self.name)
            .field("histogram", &&*self.histogram)
            .field("callback", &std::any::type_name::<C>())
            .finish()
    }
}

/// What a root and its nested transactions share: the histogram name and the timings that
/// finished so far. `None` once the root finished, so a late child is not reported.
#[derive(Debug)]
struct Shared {
    histogram: SharedString,
    finished: Mutex<Option<Vec<Timing>>>,
}

impl Shared {
    fn new(histogram: SharedString) -> Self {
        Shared {
            histogram,
            finished: Mutex::new(Some(Vec::new())),
        }
    }

    /// Adds a finished child to the report, unless the root already finished.
    fn push(&self, timing: Timing) {
        // No code panics while holding the lock, so a poisoned lock still holds a valid list.
        let mut finished = self.finished.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(finished) = finished.as_mut() {
            finished.push(timing);
        }
    }

    /// Closes the report and returns what finished so far.
    fn close(&self) -> Vec<Timing> {
        let mut finished = self.finished.lock().unwrap_or_else(PoisonError::into_inner);
        finished.take().unwrap_or_default()
    }
}

/// A running transaction: its name, its start and the shared state it reports to.
/// Records itself as `cancelled` when dropped before it was stopped.
#[derive(Debug)]
struct Clock {
    name: SharedString,
    start: Instant,
    shared: Arc<Shared>,
    stopped: bool,
}

impl Clock {
    fn start(name: SharedString, shared: Arc<Shared>) -> Self {
        Clock {
            name,
            start: Instant::now(),
            shared,
            stopped: false,
        }
    }

    /// Stops the clock and records the histogram sample; returns the timing.
    fn stop(&mut self, outcome: Outcome) -> Timing {
        self.stopped = true;
        let elapsed = self.start.elapsed();
        record::record(
            &record::key(&self.shared.histogram, &self.name, outcome),
            elapsed,
        );
        Timing {
            name: self.name.clone(),
            elapsed,
            outcome,
        }
    }

    fn handle(&self) -> Handle {
        Handle {
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The root of a timed scope, finished by hand: the guard form of the original's
/// `async with Timeit(...) as t`.
///
/// Finish it with [`finish`](TimeitGuard::finish), [`fail`](TimeitGuard::fail) or
/// [`finish_with`](TimeitGuard::finish_with) and await the returned future, which runs the
/// callback. Dropping it unfinished records the root as `cancelled` (no callback: a
/// destructor cannot await).
///
/// ```
/// use asyncworker_timeit::{Report, Timeit};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let t = Timeit::new("a").callback(async |report: Report| println!("{report:?}")).start();
/// let b = t.transaction("b");
/// // ... work ...
/// b.finish();
/// t.finish().await;
/// # }
/// ```
#[must_use = "dropping the guard ends the root as cancelled, without calling the callback"]
pub struct TimeitGuard<C = ()> {
    clock: Clock,
    callback: C,
}

impl<C> TimeitGuard<C> {
    /// Opens a nested transaction called `name`, reported to this root.
    pub fn transaction(&self, name: impl Into<Cow<'static, str>>) -> Transaction {
        self.handle().transaction(name)
    }

    /// A cloneable handle that opens nested transactions of this root, for code that cannot
    /// borrow the guard (a spawned task, a closure).
    pub fn handle(&self) -> Handle {
        self.clock.handle()
    }

    /// The root's name.
    pub fn name(&self) -> &str {
        &self.clock.name
    }

    /// The time since the root started.
    pub fn elapsed(&self) -> Duration {
        self.clock.start.elapsed()
    }

    fn complete(&mut self, error: Option<ReportedError>) -> Report {
        let outcome = if error.is_some() {
            Outcome::Error
        } else {
            Outcome::Ok
        };
        let root = self.clock.stop(outcome);
        let mut finished = self.clock.shared.close();
        let transactions = if finished.is_empty() {
            Entries::One(root)
        } else {
            finished.push(root);
            Entries::Many(finished)
        };
        Report {
            transactions,
            error,
        }
    }
}

impl<C: Callback> TimeitGuard<C> {
    /// Ends the root as a success. The histogram is recorded now; the returned future runs
    /// the callback.
    #[must_use = "the callback runs only when the returned future is awaited"]
    pub fn finish(self) -> C::Future {
        self.finish_with(&())
    }

    /// Ends the root as failed with `error`, which the report describes (the original's
    /// `exc_type`, `exc_val`). The histogram is recorded now; the returned future runs the
    /// callback.
    #[must_use = "the callback runs only when the returned future is awaited"]
    pub fn fail<E: fmt::Display + ?Sized>(mut self, error: &E) -> C::Future {
        let report = self.complete(Some(ReportedError::new(error)));
        self.callback.call(report)
    }

    /// Ends the root as `output` says: an error for an `Err`, a success otherwise (see
    /// [`Fallible`]). The histogram is recorded now; the returned future runs the callback.
    #[must_use = "the callback runs only when the returned future is awaited"]
    pub fn finish_with<O: Fallible + ?Sized>(mut self, output: &O) -> C::Future {
        let report = self.complete(output.reported_error());
        self.callback.call(report)
    }
}

impl<C> Drop for TimeitGuard<C> {
    fn drop(&mut self) {
        if !self.clock.stopped {
            self.clock.stop(Outcome::Cancelled);
            self.clock.shared.close();
        }
    }
}

impl<C> fmt::Debug for TimeitGuard<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimeitGuard")
            .field("clock", &self.clock)
            .field("callback", &std::any::type_name::<C>())
            .finish()
    }
}

/// A cloneable handle to a running root, that opens nested transactions.
#[derive(Debug, Clone)]
pub struct Handle {
    shared: Arc<Shared>,
}

impl Handle {
    /// Opens a nested transaction called `name`; its clock starts now.
    pub fn transaction(&self, name: impl Into<Cow<'static, str>>) -> Transaction {
        Transaction {
            clock: Clock::start(shared_name(name), Arc::clone(&self.shared)),
        }
    }
}

/// A nested transaction (the original's `t(name="b")`), reported to its root.
///
/// Its timing joins the root's report when it finishes, if the root has not finished yet;
/// its histogram sample is recorded either way. Dropping it unfinished ends it as
/// `cancelled`. Nested transactions have no callback of their own.
#[must_use = "dropping a transaction ends it as cancelled"]
#[derive(Debug)]
pub struct Transaction {
    clock: Clock,
}

impl Transaction {
    /// Opens another nested transaction of the same root; its clock starts now.
    pub fn transaction(&self, name: impl Into<Cow<'static, str>>) -> Transaction {
        self.clock.handle().transaction(name)
    }

    /// The transaction's name.
    pub fn name(&self) -> &str {
        &self.clock.name
    }

    /// The time since the transaction started.
    pub fn elapsed(&self) -> Duration {
        self.clock.start.elapsed()
    }

    /// Ends the transaction as a success.
    pub fn finish(self) {
        self.end(Outcome::Ok);
    }

    /// Ends the transaction as failed. The root's report carries the root's error only: let
    /// the error reach the root (with `?`) to have it reported.
    pub fn fail(self) {
        self.end(Outcome::Error);
    }

    /// Ends the transaction as `output` says (see [`Fallible`]).
    pub fn finish_with<O: Fallible + ?Sized>(self, output: &O) {
        let outcome = if output.is_error() {
            Outcome::Error
        } else {
            Outcome::Ok
        };
        self.end(outcome);
    }

    /// Times `future` as this transaction and returns its output unchanged. Dropping the
    /// returned future before it completes ends the transaction as `cancelled`.
    ///
    /// The clock started when the transaction was opened.
    pub async fn run<F>(self, future: F) -> F::Output
    where
        F: Future,
        F::Output: Fallible,
    {
        let output = future.await;
        self.finish_with(&output);
        output
    }

    fn end(mut self, outcome: Outcome) {
        let timing = self.clock.stop(outcome);
        self.clock.shared.push(timing);
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        if !self.clock.stopped {
            let timing = self.clock.stop(Outcome::Cancelled);
            self.clock.shared.push(timing);
        }
    }
}
