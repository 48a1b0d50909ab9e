//! Run with: cargo run --example memory_worker
//!
//! A minimal worker on the in-memory source: it pushes `MESSAGES` JSON messages into a
//! [`MemoryQueue`] and serves them in batches of `BULK_SIZE`, one batch at a time, each taking
//! `WORK_MS` of simulated work. The queue stays open, as a broker's would, so the worker keeps
//! running until SIGTERM or Ctrl-C. Then it shuts down gracefully — intake stops, a partial
//! batch is flushed, the running batch gets `GRACE_MS` to finish, batches past it are
//! requeued — and prints one machine-readable line before exiting 0:
//!
//! ```text
//! summary pushed=20 ack=10 reject=0 requeue=10 undelivered=0 unsettled=0
//! ```
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `MESSAGES` | 20 | messages pushed at start |
//! | `BULK_SIZE` | 5 | messages per batch |
//! | `WORK_MS` | 200 | simulated work per batch, in milliseconds |
//! | `GRACE_MS` | 30000 | grace period for in-flight batches at shutdown |
//! | `ASYNCWORKER_*` | | framework settings (`ASYNCWORKER_LOGLEVEL`, `ASYNCWORKER_FLUSH_TIMEOUT`, ...) |
//!
//! A message whose body is not the JSON the handler expects is rejected (not requeued): push
//! one with `POISON=1`.

use std::str::FromStr;
use std::time::Duration;

use asyncworker::init_logging;
use asyncworker::memory::{MemoryMessage, MemoryQueue};
use asyncworker::prelude::*;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Job {
    n: usize,
}

/// `name` from the environment, else `default`.
fn env_or<T: FromStr>(name: &str, default: T) -> Result<T, BoxError> {
    match std::env::var(name) {
        Ok(value) => value
            .trim()
            .parse()
            .map_err(|_| format!("{name}={value:?} is not a valid number").into()),
        Err(_) => Ok(default),
    }
}

#[tokio::main]
async fn main() -> Result<(), Report> {
    // The settings are read from the environment once, here.
    let mut app = App::new();
    init_logging(app.settings()?);
    let messages: usize = env_or("MESSAGES", 20)?;
    let bulk_size: usize = env_or("BULK_SIZE", 5)?;
    let work = Duration::from_millis(env_or("WORK_MS", 200)?);
    let grace = Duration::from_millis(env_or("GRACE_MS", 30_000)?);

    let queue = MemoryQueue::new();
    for n in 0..messages {
        queue.push_json(&Job { n })?;
    }
    if env_or("POISON", 0u8)? == 1 {
        queue.push_bytes("not json");
    }
    let pushed = queue.len();
    tracing::info!(
        pushed,
        bulk_size,
        work_ms = work.as_millis() as u64,
        "messages queued"
    );

    app.grace_period(grace);
    app.route(
        "jobs",
        queue.source(),
        move |batch: Vec<MemoryMessage>| async move {
            let jobs: Vec<usize> = batch
                .iter()
                .filter_map(|message| match message.json::<Job>() {
                    Ok(job) => Some(job.n),
                    Err(error) => {
                        tracing::warn!(%error, "not a job; rejected");
                        message.reject();
                        None
                    }
                })
                .collect();
            tracing::info!(?jobs, "batch started");
            tokio::time::sleep(work).await;
            tracing::info!(?jobs, "batch done");
            Ok::<(), BoxError>(())
        },
    )
    .bulk_size(bulk_size)
    .max_concurrent_batches(1);
    if let Err(error) = app.run().await {
        // A second signal forces the exit (in-flight batches are abandoned and requeued), or
        // the route could not start.
        tracing::error!(error = &error as &dyn std::error::Error, "worker stopped");
        std::process::exit(1);
    }

    let count = |action: Action| {
        queue
            .settlements()
            .iter()
            .filter(|(_, a)| *a == Some(action))
            .count()
    };
    println!(
        "summary pushed={pushed} ack={} reject={} requeue={} undelivered={} unsettled={}",
        count(Action::Ack),
        count(Action::Reject),
        count(Action::Requeue),
        queue.ready(),
        queue.outstanding(),
    );
    Ok(())
}
