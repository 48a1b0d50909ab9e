//! Run with: cargo run --example timeit_error --features timeit
//!
//! When the timed work fails, the callback receives the error's description (type and
//! message, the original's `exc_type` and `exc_val`), and the error itself still reaches the
//! caller: Timeit never swallows it.

use std::fmt;

use asyncworker::timeit::{Report, Timeit};

#[derive(Debug)]
struct KeyError(&'static str);

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key not found: {}", self.0)
    }
}

impl std::error::Error for KeyError {}

async fn log_callback(report: Report) {
    // transactions: [Timing { name: "xablau", elapsed: ..., outcome: Error }]
    // error: Some(ReportedError { type_name: "timeit_error::KeyError", message: "key not found: error" })
    println!("transactions: {:?}", report.transactions());
    println!("error: {:?}", report.error());
}

#[tokio::main]
async fn main() {
    let result = Timeit::new("xablau")
        .callback(log_callback)
        .run(async { Err::<(), _>(KeyError("error")) })
        .await;
    // The error comes back unchanged.
    println!("result: {result:?}");
}
