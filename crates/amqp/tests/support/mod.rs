//! Helpers for tests against the local RabbitMQ that `scripts/rabbitmq.sh start` runs (node
//! `rabbit@localhost` on 127.0.0.1: AMQP on 5672, AMQPS on 5671).
//!
//! Use from a test file with `mod support;` and `use support::*;`. Every test gets its own
//! uniquely named queues ([`TestQueue`], deleted on drop; [`unique_name`]) and, where it
//! matters, its own vhost ([`TestVhost`], deleted on drop) or user ([`TestUser`], deleted on
//! drop), so tests run in parallel and leave nothing behind, even when they fail.
//!
//! - `broker`: connections, queues, counts, [`wait_until`] (the one polling helper), raw
//!   publishing;
//! - `rabbitmqctl`: what only the CLI shows or does (vhosts, users, their limits);
//! - `proxy`: [`TcpProxy`], network trouble for one client;
//! - `source`: an [`AmqpSource`](asyncworker_amqp::AmqpSource) configuration on the test
//!   broker and stream polling with deadlines;
//! - `cluster`: [`cluster::Cluster`], the three-node cluster of `scripts/rabbitmq-cluster.sh`;
//! - `metrics`: a debugging recorder shared by the tests of one binary, and test logging.
//!
//! Environment (all optional):
//! - `ASYNCWORKER_TEST_AMQP_URL`: the broker (default [`DEFAULT_AMQP_URL`]);
//! - `ASYNCWORKER_TEST_AMQPS_URL`: the broker over TLS (default [`DEFAULT_AMQPS_URL`]);
//! - `ASYNCWORKER_TEST_TLS_DIR`: the CA, server and client certificates that
//!   `scripts/rabbitmq.sh` generated (default [`DEFAULT_TLS_DIR`]);
//! - `ASYNCWORKER_TEST_FAULT_URL`, `ASYNCWORKER_TEST_FAULT_NODE`: the node of
//!   `scripts/rabbitmq-fault.sh`, which only the fault tests use and which they may stop,
//!   alarm and disconnect (defaults [`DEFAULT_FAULT_URL`], [`DEFAULT_FAULT_NODE`]).
//!
//! Assertions should prefer AMQP itself ([`message_count`], [`consumer_count`]: a passive
//! queue declare, milliseconds) to `rabbitmqctl` (0.5–1 s per call), which is kept for what
//! only it can show: [`list_queues`] (unacked counts), [`list_connections`] (negotiated
//! heartbeat, client-provided names), vhosts, closing connections, memory alarms.

// Each test binary uses its own subset of these helpers.
#![allow(dead_code, unreachable_pub, unused_imports)]

mod broker;
pub mod cluster;
mod metrics;
mod proxy;
mod rabbitmqctl;
mod source;

pub use broker::*;
pub use metrics::*;
pub use proxy::*;
pub use rabbitmqctl::*;
pub use source::*;

use std::hash::{BuildHasher, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The local test broker, default vhost `/`.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// The local test broker over TLS. The host is `localhost`, the name the server certificate
/// is issued for (it also carries the IP SAN 127.0.0.1).
pub const DEFAULT_AMQPS_URL: &str = "amqps://guest:guest@localhost:5671/%2f";
/// Where `scripts/rabbitmq.sh` writes the test TLS material.
pub const DEFAULT_TLS_DIR: &str = "/tmp/asyncworker-rabbitmq/tls";
/// The node `scripts/rabbitmq.sh` runs.
pub const NODE_NAME: &str = "rabbit@localhost";
/// The fault node `scripts/rabbitmq-fault.sh` runs, default vhost `/`.
pub const DEFAULT_FAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5682/%2f";
/// The fault node's name.
pub const DEFAULT_FAULT_NODE: &str = "faults@localhost";
/// Test queues expire after this long unused, in case a failed test skipped its cleanup.
pub const QUEUE_EXPIRES: Duration = Duration::from_secs(600);
/// The memory high watermark RabbitMQ starts with (and [`MemoryAlarm`] restores).
pub const DEFAULT_MEMORY_HIGH_WATERMARK: f64 = 0.4;

// ---------------------------------------------------------------------------------------
// Addresses and names
// ---------------------------------------------------------------------------------------

/// The broker URL for the default vhost: `ASYNCWORKER_TEST_AMQP_URL` or [`DEFAULT_AMQP_URL`].
pub fn amqp_url() -> String {
    std::env::var("ASYNCWORKER_TEST_AMQP_URL").unwrap_or_else(|_| DEFAULT_AMQP_URL.to_owned())
}

/// The fault node's URL: `ASYNCWORKER_TEST_FAULT_URL` or [`DEFAULT_FAULT_URL`].
pub fn fault_url() -> String {
    std::env::var("ASYNCWORKER_TEST_FAULT_URL").unwrap_or_else(|_| DEFAULT_FAULT_URL.to_owned())
}

/// The fault node's name: `ASYNCWORKER_TEST_FAULT_NODE` or [`DEFAULT_FAULT_NODE`].
pub fn fault_node() -> String {
    std::env::var("ASYNCWORKER_TEST_FAULT_NODE").unwrap_or_else(|_| DEFAULT_FAULT_NODE.to_owned())
}

/// The broker URL for `vhost` (percent-encoded into the path).
pub fn amqp_url_for_vhost(vhost: &str) -> String {
    with_vhost(&amqp_url(), vhost)
}

/// The broker URL over TLS: `ASYNCWORKER_TEST_AMQPS_URL` or [`DEFAULT_AMQPS_URL`].
pub fn amqps_url() -> String {
    std::env::var("ASYNCWORKER_TEST_AMQPS_URL").unwrap_or_else(|_| DEFAULT_AMQPS_URL.to_owned())
}

/// Replaces the vhost (the path) of an `amqp://` URL, keeping any query string.
pub fn with_vhost(url: &str, vhost: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    let mut out = format!("{base}/{}", percent_encode(vhost));
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The directory holding the test TLS material: `ASYNCWORKER_TEST_TLS_DIR` or
/// [`DEFAULT_TLS_DIR`].
pub fn tls_dir() -> PathBuf {
    std::env::var_os("ASYNCWORKER_TEST_TLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_TLS_DIR))
}

/// The test CA certificate (PEM) that signed the broker's and the client's certificates.
pub fn tls_ca_cert() -> PathBuf {
    tls_dir().join("ca.pem")
}

/// The broker's certificate (PEM), issued for `localhost` and 127.0.0.1.
pub fn tls_server_cert() -> PathBuf {
    tls_dir().join("server.pem")
}

/// A client certificate (PEM) signed by the test CA.
pub fn tls_client_cert() -> PathBuf {
    tls_dir().join("client.pem")
}

/// The client certificate's private key (PKCS#8 PEM).
pub fn tls_client_key() -> PathBuf {
    tls_dir().join("client.key")
}

/// `error` followed by each of its sources, joined by `": "`: what a log line that records
/// the whole chain shows. Errors put their cause in `source()`, not in their message, so
/// assert on this to find text from a cause.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        text.push_str(": ");
        text.push_str(&error.to_string());
        cause = error.source();
    }
    text
}

/// A name no other test (or test run) uses: `aw-test-{name}-{random}`.
pub fn unique_name(name: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    if let Ok(elapsed) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(elapsed.as_nanos());
    }
    format!("aw-test-{name}-{:016x}", hasher.finish())
}
