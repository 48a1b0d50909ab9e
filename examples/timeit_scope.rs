//! Run with: cargo run --example timeit_scope --features timeit
//!
//! Timeit around a piece of async work, the Python original's context-manager example:
//! the callback receives the report once the work is done.

use std::time::Duration;

use asyncworker::timeit::{Report, Timeit};

async fn log_callback(report: Report) {
    // [Timing { name: "xablau", elapsed: 1.00..s, outcome: Ok }], error: None
    println!(
        "transactions: {:?}, error: {:?}",
        report.transactions(),
        report.error()
    );
}

#[tokio::main]
async fn main() {
    Timeit::new("xablau")
        .callback(log_callback)
        .run(tokio::time::sleep(Duration::from_secs(1)))
        .await;
}
