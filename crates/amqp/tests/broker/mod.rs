//! Helpers for the consume-side tests against the real broker (scripts/rabbitmq.sh starts
//! it): unique names, queue setup through lapin, passive-declare counts, rabbitmqctl, a
//! metrics recorder, and condition polling with deadlines.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::future::Future;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use asyncworker_amqp::lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use asyncworker_amqp::lapin::types::{AMQPValue, FieldTable};
use asyncworker_amqp::lapin::{BasicProperties, Channel, Connection};
use asyncworker_amqp::{AmqpConfig, AmqpConfigBuilder, AmqpError, AmqpMessage, AmqpStream};
use futures::StreamExt;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

/// The broker's URL: `AMQP_URL`, or the local test broker.
pub fn url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A builder on the test broker with fast reconnects.
pub fn config() -> AmqpConfigBuilder {
    AmqpConfig::builder().url(&url()).reconnect(
        asyncworker_amqp::Backoff::default()
            .initial_delay(Duration::from_millis(100))
            .max_delay(Duration::from_millis(500)),
    )
}

/// A name no other test (or run) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "aw-test-{prefix}-{}-{}-{:x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        fastrand::u32(..)
    )
}

/// An administrative connection and channel (confirm mode) on `vhost`.
pub async fn admin(vhost: &str) -> (Connection, Channel) {
    let config = AmqpConfig::builder()
        .url(&url())
        .vhost(vhost)
        .connection_name(unique("admin"))
        .build()
        .unwrap();
    let conn = config
        .connect()
        .await
        .expect("the test broker is reachable");
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    (conn, ch)
}

/// Declare a durable queue; `dlq`: dead-letter to that queue through the default exchange.
pub async fn declare(ch: &Channel, queue: &str, dlq: Option<&str>) {
    let mut args = FieldTable::default();
    if let Some(dlq) = dlq {
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("".into()),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(dlq.into()),
        );
    }
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .unwrap();
}

/// Publish `body` to `queue` through the default exchange and wait for the confirm.
pub async fn publish(ch: &Channel, queue: &str, body: &[u8], props: BasicProperties) {
    let confirm = ch
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            body,
            props.with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(
        confirm.is_ack(),
        "publish to {queue} not confirmed: {confirm:?}"
    );
    assert!(
        confirm.take_message().is_none(),
        "publish to {queue} was returned"
    );
}

/// Publish `n` messages `"<prefix>-<i>"`.
pub async fn publish_n(ch: &Channel, queue: &str, prefix: &str, n: usize) {
    for i in 0..n {
        publish(
            ch,
            queue,
            format!("{prefix}-{i}").as_bytes(),
            BasicProperties::default(),
        )
        .await;
    }
}

/// (ready messages, consumers) of `queue`, by a passive declare.
pub async fn counts(ch: &Channel, queue: &str) -> (u32, u32) {
    let q = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("passive declare of {queue}: {e}"));
    (q.message_count(), q.consumer_count())
}

pub async fn delete(ch: &Channel, queue: &str) {
    let _ = ch
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await;
}

/// Poll `cond` until it holds, failing the test after `secs` seconds with `what`.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if cond().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {secs} s waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The next message of the stream, skipping (and returning) the errors before it.
pub async fn next_message(stream: &mut AmqpStream, secs: u64) -> (AmqpMessage, Vec<AmqpError>) {
    let mut errors = Vec::new();
    let deadline = Duration::from_secs(secs);
    loop {
        match tokio::time::timeout(deadline, stream.next()).await {
            Ok(Some(Ok(msg))) => return (msg, errors),
            Ok(Some(Err(e))) => errors.push(e),
            Ok(None) => panic!("the stream ended; errors so far: {errors:?}"),
            Err(_) => panic!("no message within {secs} s; errors so far: {errors:?}"),
        }
    }
}

/// The next `n` messages, sorted by nothing: in arrival order.
pub async fn next_messages(stream: &mut AmqpStream, n: usize, secs: u64) -> Vec<AmqpMessage> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        out.push(next_message(stream, secs).await.0);
    }
    out
}

/// Drive the stream to its end (after a shutdown), settling nothing; fails after `secs`.
pub async fn drain_to_end(stream: &mut AmqpStream, secs: u64) -> Vec<AmqpMessage> {
    let mut left = Vec::new();
    let deadline = Duration::from_secs(secs);
    loop {
        match tokio::time::timeout(deadline, stream.next()).await {
            Ok(Some(Ok(msg))) => left.push(msg),
            Ok(Some(Err(_))) => {}
            Ok(None) => return left,
            Err(_) => panic!("the stream did not end within {secs} s"),
        }
    }
}

/// Run `rabbitmqctl` on the test node; returns stdout. Panics on failure.
pub fn rabbitmqctl(args: &[&str]) -> String {
    let out = Command::new("rabbitmqctl")
        .args(["-n", "rabbit@localhost", "-q"])
        .args(args)
        .env("RABBITMQ_NODENAME", "rabbit@localhost")
        .env("ERL_EPMD_ADDRESS", "127.0.0.1")
        .env(
            "PATH",
            format!(
                "{}:/usr/sbin:/sbin",
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `rabbitmqctl list_connections pid timeout client_properties`, the line of the connection
/// whose client properties mention `name`.
pub fn connection_line(name: &str) -> Option<String> {
    rabbitmqctl(&["list_connections", "pid", "timeout", "client_properties"])
        .lines()
        .find(|l| l.contains(name))
        .map(str::to_owned)
}

/// Close (broker side) the connection whose client properties mention `name`.
pub fn close_connection(name: &str) {
    let line = connection_line(name).unwrap_or_else(|| panic!("no connection named {name}"));
    let pid = line.split_whitespace().next().unwrap();
    rabbitmqctl(&["close_connection", pid, "closed by an asyncworker test"]);
}

/// Counters seen so far, accumulated across snapshots (a snapshot resets the recorder's
/// counters, and the tests of one binary share it).
static METRICS: OnceLock<(Snapshotter, Mutex<HashMap<String, u64>>)> = OnceLock::new();

/// Install the debugging recorder for this test binary (once).
pub fn install_metrics() {
    METRICS.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("no other recorder in the test binary");
        (snapshotter, Mutex::new(HashMap::new()))
    });
}

/// The value of counter `name` with every label of `labels` (others ignored), summed.
pub fn counter(name: &str, labels: &[(&str, &str)]) -> u64 {
    let (snapshotter, acc) = METRICS.get().expect("install_metrics() first");
    let mut acc = acc.lock().unwrap();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        if let DebugValue::Counter(v) = value {
            let (_, key) = key.into_parts();
            let mut id = key.name().to_owned();
            let mut labels: Vec<_> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            for l in labels {
                id.push('|');
                id.push_str(&l);
            }
            *acc.entry(id).or_default() += v;
        }
    }
    acc.iter()
        .filter(|(id, _)| {
            let mut parts = id.split('|');
            parts.next() == Some(name)
                && labels
                    .iter()
                    .all(|(k, v)| id.split('|').any(|p| p == format!("{k}={v}")))
        })
        .map(|(_, v)| *v)
        .sum()
}

/// Log to the test output, filtered by `RUST_LOG` (default: warnings).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}
