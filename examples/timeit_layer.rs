//! Run with: cargo run --example timeit_layer --features timeit
//!
//! The original's `@Timeit(...)` decorator is a tower layer here: `TimeitLayer` times every
//! call of any `Service`, for example a batch handler in a `ServiceBuilder` stack. The same
//! service is called three times; each call is reported on its own.

use std::{convert::Infallible, time::Duration};

use asyncworker::timeit::{Report, TimeitLayer};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

async fn log_callback(report: Report) {
    let root = report.root();
    println!("{}: {:?} ({})", root.name(), root.elapsed(), root.outcome());
}

async fn access_some_remote_content(batch: &[String]) {
    tokio::time::sleep(Duration::from_millis(50 * batch.len() as u64)).await;
}

async fn drain_handler(batch: Vec<String>) -> Result<usize, Infallible> {
    access_some_remote_content(&batch).await;
    Ok(batch.len())
}

#[tokio::main]
async fn main() {
    let mut handler = ServiceBuilder::new()
        .layer(TimeitLayer::new("xablau-access-time").callback(log_callback))
        .service(service_fn(drain_handler));

    for size in 1..=3 {
        let batch = vec![String::from("message"); size];
        let handled = handler.ready().await.unwrap().call(batch).await.unwrap();
        println!("handled {handled} messages");
    }
}
