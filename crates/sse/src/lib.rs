//! asyncworker-sse: work in progress.
