//! Helpers of the consume-side tests that `support` (the shared broker helpers) does not
//! have: a source configuration on the test broker, stream polling with deadlines, a metrics
//! recorder shared by the tests of one binary, and test logging.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use asyncworker_amqp::{AmqpConfig, AmqpConfigBuilder, AmqpError, AmqpMessage, AmqpStream};
use futures::StreamExt;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

use crate::support;

/// A configuration builder on the test broker with fast reconnects.
pub fn config() -> AmqpConfigBuilder {
    AmqpConfig::builder().url(&support::amqp_url()).reconnect(
        asyncworker_core::Backoff::builder()
            .initial_delay(Duration::from_millis(100))
            .max_delay(Duration::from_millis(500))
            .build()
            .unwrap(),
    )
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

/// Close (broker side) the connection whose client properties mention `name`; returns how
/// many were closed.
///
/// `support::close_connections_named` passes the JSON formatter's `#PID<…>` rendering to
/// `close_connection`, which rejects it (`invalid_pid_syntax`); the default table output gives
/// the `<rabbit@localhost.…>` form `close_connection` accepts.
pub async fn close_connection_named(name: &str) -> usize {
    let out = support::rabbitmqctl_ok(&["list_connections", "pid", "client_properties"]).await;
    let mut closed = 0;
    for line in out.lines().filter(|l| l.contains(name)) {
        if let Some(pid) = line.split_whitespace().next() {
            support::rabbitmqctl_ok(&["close_connection", pid, "closed by an asyncworker test"])
                .await;
            closed += 1;
        }
    }
    closed
}
