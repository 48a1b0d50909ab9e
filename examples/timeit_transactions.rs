//! Run with: cargo run --example timeit_transactions --features timeit
//!
//! Multiple transactions in one execution context: nested transactions opened from the
//! root's handle are all reported once, to the root's callback, when the root finishes.

use std::time::Duration;

use asyncworker::timeit::{Report, Timeit};
use tokio::time::sleep;

async fn printit(report: Report) {
    // c: ~100ms, b: ~200ms, a: ~300ms
    for t in report.transactions() {
        println!("{}: {:?}", t.name(), t.elapsed());
    }
}

async fn foo() {
    Timeit::new("a")
        .callback(printit)
        .scope(async |timeit| {
            sleep(Duration::from_millis(100)).await;
            timeit
                .transaction("b")
                .run(async {
                    sleep(Duration::from_millis(100)).await;
                    timeit
                        .transaction("c")
                        .run(sleep(Duration::from_millis(100)))
                        .await;
                })
                .await;
        })
        .await;
}

#[tokio::main]
async fn main() {
    foo().await;
}
