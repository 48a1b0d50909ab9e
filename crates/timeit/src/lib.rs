//! asyncworker-timeit: work in progress.
