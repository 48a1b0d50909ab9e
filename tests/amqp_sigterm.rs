//! Process level, against the real broker: the `amqp_worker` example consuming a queue is sent
//! a real SIGTERM mid-bulk; it exits 0 and every message is either acked (handled) or back in
//! the queue — none lost, none left unacknowledged.
//!
//! The broker comes from `scripts/test.sh` (`AMQP_URL`, default the local test broker).

#![cfg(unix)]

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use asyncworker::amqp::lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use asyncworker::amqp::lapin::types::FieldTable;
use asyncworker::amqp::{AmqpConfig, OutgoingMessage, Publisher};
use support::Worker;

const MESSAGES: usize = 60;

fn broker_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// (ready messages, consumers) of `queue`, by passive declare.
async fn counts(channel: &asyncworker::amqp::lapin::Channel, queue: &str) -> (u32, u32) {
    let q = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("the queue exists");
    (q.message_count(), q.consumer_count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_bulk_acks_the_handled_and_returns_the_rest_to_the_queue() {
    let config = AmqpConfig::from_url(&broker_url()).expect("a valid AMQP_URL");
    let connection = config.connect().await.expect("the test broker answers");
    let channel = connection.create_channel().await.expect("a channel");
    let queue = format!("aw-test-sigterm-{:x}", fastrand_u64());
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare");
    let publisher = Publisher::connect(&config).await.expect("publisher");
    let outcomes = publisher
        .publish_all((0..MESSAGES).map(|i| {
            OutgoingMessage::json("", queue.as_str(), &serde_json::json!({ "n": i }))
                .expect("json")
                .message_id(format!("m{i}"))
        }))
        .await;
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");

    // Batches of 10, prefetch 30: three batches of 1.5 s each are in flight when SIGTERM
    // comes with the first one; they finish within the grace period and are acked, and the
    // rest goes back to the queue when the worker closes its channels.
    let binary = tokio::task::spawn_blocking(|| support::example_binary("amqp_worker"))
        .await
        .expect("build");
    let url = broker_url();
    let queue_env = queue.clone();
    let (status, lines) = tokio::task::spawn_blocking(move || {
        let mut worker = Worker::start(
            &binary,
            &[
                ("AMQP_URL", url.as_str()),
                ("QUEUES", queue_env.as_str()),
                ("VHOST", "/"),
                ("BULK_SIZE", "10"),
                ("PREFETCH", "30"),
                ("WORK_MS", "1500"),
            ],
        );
        worker.wait_for("batch received");
        worker.signal("TERM");
        worker.finish()
    })
    .await
    .expect("the worker process");
    let output = lines.join("\n");
    assert!(status.success(), "exit status {status}; output:\n{output}");

    // Every handled message was logged once by the handler, whose batches all succeeded.
    let handled: Vec<&str> = lines
        .iter()
        .filter(|l| l.contains("amqp_worker: message"))
        .filter_map(|l| l.split("id=\"").nth(1)?.split('"').next())
        .collect();
    let distinct: HashSet<&str> = handled.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        handled.len(),
        "no message handled twice:\n{output}"
    );
    assert!(
        handled.len() >= 10,
        "the batch in flight was finished:\n{output}"
    );

    let deadline = Instant::now() + Duration::from_secs(20);
    let (ready, consumers) = loop {
        let (ready, consumers) = counts(&channel, &queue).await;
        if consumers == 0 && ready as usize + handled.len() >= MESSAGES || Instant::now() > deadline
        {
            break (ready, consumers);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(consumers, 0, "the worker's consumers are gone");
    assert_eq!(
        ready as usize + handled.len(),
        MESSAGES,
        "every message is acked or back in the queue ({ready} ready, {} handled):\n{output}",
        handled.len()
    );
    assert!(
        ready > 0,
        "SIGTERM came mid-bulk, with messages left to consume"
    );

    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .expect("delete");
}

fn fastrand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}
