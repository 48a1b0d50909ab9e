//! Run with: cargo run --example amqp_worker --features amqp
//!
//! The Python original's first example, in Rust: one handler drains two queues
//! (`asgard/counts` and `asgard/counts/errors`) on vhost `fluentd`, in batches; success acks the
//! batch, an error requeues it, and the handler rejects (drops or dead-letters) any message
//! that is not JSON instead of requeueing it forever.
//!
//! Configuration comes from the environment, with the original's values as defaults:
//!
//! | variable | default |
//! |---|---|
//! | `AMQP_URL` | `amqp://guest:guest@127.0.0.1:5672` — or a comma-separated list, one URL per node (tried in order, failover to the next) |
//! | `QUEUES` | `asgard/counts,asgard/counts/errors` |
//! | `VHOST` | the vhost of `AMQP_URL` if it names one, else `fluentd` |
//! | `BULK_SIZE` | `1` |
//! | `PREFETCH` | `256` |
//! | `WORK_MS` | `0` — simulated work per batch, to watch load and shutdown |
//! | `ASYNCWORKER_FLUSH_TIMEOUT` | `60` — seconds a partial batch waits |
//! | `ASYNCWORKER_LOGLEVEL` | `info` |
//!
//! The worker never declares its queues, so it consumes a queue someone else declared with
//! whatever arguments they chose — a quorum queue (`x-queue-type: quorum`) included — with no
//! 406 from a differing redeclare. Each (re)connection logs a `connected` line with the
//! host and port of the node it reached. Against the local three-node cluster
//! (`scripts/rabbitmq-cluster.sh start`), list the three nodes; it connects to the first that
//! answers and, when that node goes, to the next (rotate the list to spread workers):
//! `AMQP_URL=amqp://guest:guest@127.0.0.1:5701/%2f,amqp://guest:guest@127.0.0.1:5702/%2f,amqp://guest:guest@127.0.0.1:5703/%2f`.
//! `crates/amqp/tests/cluster.rs` runs it so while nodes are killed and stopped.
//!
//! `scripts/demo.sh` starts a local broker, publishes sample messages and runs this worker on
//! them. SIGTERM or Ctrl-C shuts it down gracefully: intake stops, the partial batch is
//! flushed, in-flight batches finish (or are requeued after the grace period).

use std::time::Duration;

use asyncworker::prelude::*;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

fn env_number<T: std::str::FromStr>(name: &str, default: T) -> Result<T, BoxError> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v
            .parse()
            .map_err(|_| format!("{name}={v:?} is not a valid number").into()),
        _ => Ok(default),
    }
}

#[tokio::main]
async fn main() -> Result<(), Report> {
    // The settings are read from the environment once, here.
    let mut app = App::new();
    asyncworker::init_logging(app.settings()?);

    let url = env_or("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672");
    let queues: Vec<String> = env_or("QUEUES", "asgard/counts,asgard/counts/errors")
        .split(',')
        .map(|q| q.trim().to_owned())
        .filter(|q| !q.is_empty())
        .collect();
    let bulk_size: usize = env_number("BULK_SIZE", 1)?;
    let prefetch: u16 = env_number("PREFETCH", 256)?;
    let work = Duration::from_millis(env_number("WORK_MS", 0)?);

    // The original's vhost unless the URL names one (a URL without a path keeps the
    // builder's), and `VHOST` over both.
    let mut config = AmqpConfig::builder().vhost("fluentd").url(&url);
    if let Ok(vhost) = std::env::var("VHOST") {
        config = config.vhost(vhost);
    }
    let config = config
        .prefetch(prefetch)
        .connection_name("asyncworker amqp_worker example")
        .build()?;
    // The `connected` line then names the endpoint actually used (host and port).
    tracing::info!(broker = %config, endpoints = ?config.endpoints(), "AMQP endpoints, tried in order");
    let vhost = config.vhost().to_owned();
    // The source logs each failed connection attempt itself (with the endpoint, the attempt
    // and the delay before the next); `on_connection_error` is for acting on them.
    let source = AmqpSource::builder(config, queues.clone()).build()?;

    let drain_handler = move |messages: Vec<AmqpMessage>| async move {
        tracing::info!(size = messages.len(), "batch received");
        for message in &messages {
            match message.json::<serde_json::Value>() {
                Ok(body) => tracing::info!(
                    queue = message.queue(),
                    id = message.message_id().unwrap_or("-"),
                    redelivered = message.redelivered(),
                    %body,
                    "message"
                ),
                Err(error) => {
                    tracing::warn!(queue = message.queue(), %error, "not JSON; rejecting");
                    message.reject();
                }
            }
        }
        if !work.is_zero() {
            tokio::time::sleep(work).await;
        }
        Ok::<(), BoxError>(())
    };

    tracing::info!(?queues, %vhost, bulk_size, prefetch, "starting");
    app.route("drain", source, drain_handler)
        .bulk_size(bulk_size)
        .on_success(Action::Ack)
        .on_error(Action::Requeue);
    app.on_shutdown(|| async {
        tracing::info!("worker stopped; every message acked or back in its queue");
        Ok::<(), BoxError>(())
    });
    app.run().await?;
    Ok(())
}
