//! Run with: cargo run --example amqp_publish --features amqp
//!
//! Publishes sample JSON messages to the queues the `amqp_worker` example consumes
//! (`asgard/counts` and `asgard/counts/errors` on vhost `fluentd`), declaring the queues
//! (durable) first. Each message is persistent, mandatory and confirmed by the broker before
//! the next line is printed.
//!
//! | variable | default |
//! |---|---|
//! | `AMQP_URL` | `amqp://guest:guest@127.0.0.1:5672` |
//! | `VHOST` | the vhost of `AMQP_URL` if it names one, else `fluentd` (must exist: `scripts/demo.sh` creates it on a local broker) |
//! | `QUEUES` | `asgard/counts,asgard/counts/errors` — messages go round-robin |
//! | `MESSAGES` | `25` |
//! | `POISON` | unset — when `1`, also publish one body that is not JSON, for the worker to reject |

use std::sync::Arc;

use asyncworker::Report;
use asyncworker::amqp::lapin::options::QueueDeclareOptions;
use asyncworker::amqp::lapin::types::FieldTable;
use asyncworker::amqp::{AmqpConfig, OutgoingMessage, Publisher};
use serde::Serialize;

/// The sample body: what the original's examples count.
#[derive(Serialize)]
struct Count {
    name: String,
    value: u64,
    source: &'static str,
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

#[tokio::main]
async fn main() -> Result<(), Report> {
    let url = env_or("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672");
    let queues: Vec<String> = env_or("QUEUES", "asgard/counts,asgard/counts/errors")
        .split(',')
        .map(|q| q.trim().to_owned())
        .filter(|q| !q.is_empty())
        .collect();
    if queues.is_empty() {
        return Err("QUEUES names no queue".into());
    }
    let messages: u64 = env_or("MESSAGES", "25")
        .parse()
        .map_err(|_| "MESSAGES must be a whole number")?;
    let poison = env_or("POISON", "0") == "1";

    // As amqp_worker: the original's vhost unless the URL names one, `VHOST` over both.
    let mut config = AmqpConfig::builder().vhost("fluentd").url(&url);
    if let Ok(vhost) = std::env::var("VHOST") {
        config = config.vhost(vhost);
    }
    let config = config
        .connection_name("asyncworker amqp_publish example")
        .build()?;
    let connection = Arc::new(config.connect().await?);

    let channel = connection.create_channel().await?;
    for queue in &queues {
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            )
            .await?;
    }
    channel.close(200, "declared".into()).await?;

    // Confirms are on by default; mandatory turns a missing queue into an error.
    let publisher = Publisher::builder()
        .mandatory(true)
        .from_connection(connection)
        .await?;

    println!("publishing {messages} messages to {queues:?} on {config}");
    for i in 0..messages {
        let queue = &queues[(i % queues.len() as u64) as usize];
        let body = Count {
            name: format!("count-{i}"),
            value: i * 10,
            source: "amqp_publish",
        };
        let message = OutgoingMessage::json("", queue.as_str(), &body)?
            .message_id(format!("msg-{i}"))
            .app_id("amqp_publish");
        publisher.publish(message).await?;
        println!(
            "confirmed msg-{i} -> {queue}: {}",
            serde_json::to_string(&body)?
        );
    }
    if poison {
        let queue = &queues[0];
        publisher
            .publish(
                OutgoingMessage::text("", queue.as_str(), "this is not json").message_id("poison"),
            )
            .await?;
        println!("confirmed poison -> {queue}: a body that is not JSON");
    }
    println!("done");
    Ok(())
}
