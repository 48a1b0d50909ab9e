//! A source configuration on the test broker, and polling its stream with deadlines.

use std::time::Duration;

use asyncworker_amqp::{AmqpConfig, AmqpConfigBuilder, AmqpError, AmqpMessage, AmqpStream};
use futures::StreamExt;

use super::{amqp_url, fault_url};

/// A configuration builder on the test broker with fast reconnects.
pub fn config() -> AmqpConfigBuilder {
    config_for(&amqp_url())
}

/// A configuration builder on the fault node ([`fault_url`]) with fast reconnects.
pub fn fault_config() -> AmqpConfigBuilder {
    config_for(&fault_url())
}

/// A configuration builder on the broker at `url` with fast reconnects.
pub fn config_for(url: &str) -> AmqpConfigBuilder {
    AmqpConfig::builder().url(url).reconnect(
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
