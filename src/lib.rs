//! facade

/// Timeit: timed scopes with nested transactions, the `TimeitLayer` tower layer, and export
/// through `metrics` (the `asyncworker-timeit` crate; feature `timeit`).
#[cfg(feature = "timeit")]
pub use asyncworker_timeit as timeit;
