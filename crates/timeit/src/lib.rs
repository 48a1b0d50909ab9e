//! Timeit for asyncworker: timed scopes with nested transactions, a tower layer, and export
//! through the `metrics` crate.
//!
//! This is the Python async-worker's `Timeit` in Rust:
//!
//! - [`Timeit`] times a future ([`Timeit::run`]), a scope that opens nested transactions
//!   ([`Timeit::scope`], the original's `async with Timeit(...) as t`) or a guard finished by
//!   hand ([`Timeit::start`]). When the root finishes, its optional async [`Callback`] gets one
//!   [`Report`]: every transaction's name and duration, and the error when the work failed.
//! - [`TimeitLayer`] is the original's decorator as a tower layer: it times every call of any
//!   `Service`, call after call.
//! - Every transaction, nested or root, scope or layer, is recorded to one `metrics`
//!   histogram, [`DEFAULT_HISTOGRAM`] (`asyncworker_timeit_seconds`, in seconds) unless
//!   renamed, labelled [`TRANSACTION_LABEL`] (the name) and [`OUTCOME_LABEL`] (`ok`,
//!   `error` or `cancelled`, see [`Outcome`]). Samples are recorded when the work ends, or by
//!   a drop guard when it is cancelled. Install any `metrics` recorder (a Prometheus
//!   exporter, say) to collect them; without one, recording is a no-op.
//!
//! Durations are measured with `tokio::time::Instant`, so tests under tokio's paused clock
//! see exact values.
//!
//! # Example
//!
//! The original's multiple-transactions example:
//!
//! ```
//! use std::time::Duration;
//! use asyncworker_timeit::{Report, Timeit};
//! use tokio::time::sleep;
//!
//! async fn print_report(report: Report) {
//!     // c: 100ms, b: 200ms, a: 300ms
//!     for t in report.transactions() {
//!         println!("{}: {:?}", t.name(), t.elapsed());
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! Timeit::new("a")
//!     .callback(print_report)
//!     .scope(async |t| {
//!         sleep(Duration::from_millis(100)).await;
//!         t.transaction("b")
//!             .run(async {
//!                 sleep(Duration::from_millis(100)).await;
//!                 t.transaction("c").run(sleep(Duration::from_millis(100))).await;
//!             })
//!             .await;
//!     })
//!     .await;
//! # }
//! ```
//!
//! # Differences from the original
//!
//! - A repeated transaction name is kept, not an error: see
//!   [Duplicate names](Report#duplicate-names).
//! - The report describes the error ([`ReportedError`]: type name and message) rather than
//!   holding it: the caller still gets the error itself back.
//! - A cancelled root (its future dropped) is recorded to the histogram as `cancelled` but
//!   does not call the callback, which a destructor cannot await.
//! - The layer works across calls; the original decorator failed on its second call.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod callback;
pub mod middleware;
mod record;
mod report;
mod scope;

pub use callback::Callback;
pub use middleware::{TimeitLayer, TimeitService};
pub use record::{DEFAULT_HISTOGRAM, OUTCOME_LABEL, TRANSACTION_LABEL};
pub use report::{Fallible, Outcome, Report, ReportedError, Timing};
pub use scope::{Handle, Timeit, TimeitGuard, Transaction};
