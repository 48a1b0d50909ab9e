//! Helpers for tests against the local RabbitMQ that `scripts/rabbitmq.sh start` runs (node
//! `rabbit@localhost` on 127.0.0.1: AMQP on 5672, AMQPS on 5671).
//!
//! Use from a test file with `mod support;`. Every test gets its own uniquely named queues
//! ([`unique_name`]) and, where it matters, its own vhost ([`TestVhost`]), so tests run in
//! parallel and leave nothing behind.
//!
//! Environment (all optional):
//! - `ASYNCWORKER_TEST_AMQP_URL`: the broker (default [`DEFAULT_AMQP_URL`]);
//! - `ASYNCWORKER_TEST_AMQPS_URL`: the broker over TLS (default [`DEFAULT_AMQPS_URL`]);
//! - `ASYNCWORKER_TEST_TLS_DIR`: the CA, server and client certificates that
//!   `scripts/rabbitmq.sh` generated (default [`DEFAULT_TLS_DIR`]).
//!
//! Assertions should prefer AMQP itself ([`message_count`], [`consumer_count`]: a passive
//! queue declare, milliseconds) to `rabbitmqctl` (0.5–1 s per call), which is kept for what
//! only it can show: [`list_queues`] (unacked counts), [`list_connections`] (negotiated
//! heartbeat, client-provided names), vhosts, closing connections, memory alarms.

// Each test binary uses its own subset of these helpers.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

/// The local test broker, default vhost `/`.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// The local test broker over TLS. The host is `localhost`, the name the server certificate
/// is issued for (it also carries the IP SAN 127.0.0.1).
pub const DEFAULT_AMQPS_URL: &str = "amqps://guest:guest@localhost:5671/%2f";
/// Where `scripts/rabbitmq.sh` writes the test TLS material.
pub const DEFAULT_TLS_DIR: &str = "/tmp/asyncworker-rabbitmq/tls";
/// The node `scripts/rabbitmq.sh` runs.
pub const NODE_NAME: &str = "rabbit@localhost";
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

// ---------------------------------------------------------------------------------------
// Connections and queues
// ---------------------------------------------------------------------------------------

/// Connects to the test broker's default vhost.
///
/// # Panics
/// When the broker is unreachable, with a hint to start it.
pub async fn connect() -> Connection {
    connect_to(&amqp_url()).await
}

/// Connects to the test broker's `vhost`.
pub async fn connect_vhost(vhost: &str) -> Connection {
    connect_to(&amqp_url_for_vhost(vhost)).await
}

/// Connects to `url` (a plain `amqp://` URL).
///
/// # Panics
/// When the connection fails, with a hint to start the broker.
pub async fn connect_to(url: &str) -> Connection {
    match Connection::connect(url, ConnectionProperties::default()).await {
        Ok(connection) => connection,
        Err(error) => panic!(
            "cannot connect to the test broker ({error}); start it with `scripts/rabbitmq.sh start`"
        ),
    }
}

/// Opens a channel on `connection`.
///
/// # Panics
/// When the channel cannot be opened.
pub async fn channel(connection: &Connection) -> Channel {
    connection
        .create_channel()
        .await
        .expect("open a channel on the test broker")
}

/// How to declare a test queue. Defaults: durable, no dead-lettering, expires after
/// [`QUEUE_EXPIRES`] unused.
#[derive(Debug, Clone, Default)]
pub struct QueueSpec {
    /// `x-dead-letter-exchange`: where rejected messages go (`Some("")` is the default
    /// exchange, which routes by queue name).
    pub dead_letter_exchange: Option<String>,
    /// `x-dead-letter-routing-key`: the routing key rejected messages get.
    pub dead_letter_routing_key: Option<String>,
    /// A non-durable queue (durable by default, like the seed's queues).
    pub transient: bool,
    /// `x-max-length`, if any.
    pub max_length: Option<u32>,
}

impl QueueSpec {
    /// Dead-letters rejected messages into `queue` through the default exchange.
    pub fn dead_letter_to(queue: &str) -> QueueSpec {
        QueueSpec {
            dead_letter_exchange: Some(String::new()),
            dead_letter_routing_key: Some(queue.to_owned()),
            ..QueueSpec::default()
        }
    }

    fn arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert(
            ShortString::from("x-expires"),
            AMQPValue::LongUInt(QUEUE_EXPIRES.as_millis() as u32),
        );
        if let Some(exchange) = &self.dead_letter_exchange {
            args.insert(
                ShortString::from("x-dead-letter-exchange"),
                AMQPValue::LongString(LongString::from(exchange.as_str())),
            );
        }
        if let Some(key) = &self.dead_letter_routing_key {
            args.insert(
                ShortString::from("x-dead-letter-routing-key"),
                AMQPValue::LongString(LongString::from(key.as_str())),
            );
        }
        if let Some(max) = self.max_length {
            args.insert(ShortString::from("x-max-length"), AMQPValue::LongUInt(max));
        }
        args
    }
}

/// Declares a durable test queue named `name` (use [`unique_name`]).
///
/// # Panics
/// When the declare fails.
pub async fn declare_queue(connection: &Connection, name: &str) {
    declare_queue_with(connection, name, &QueueSpec::default()).await;
}

/// Declares a test queue named `name` as `spec` says.
///
/// # Panics
/// When the declare fails.
pub async fn declare_queue_with(connection: &Connection, name: &str, spec: &QueueSpec) {
    let channel = channel(connection).await;
    let options = QueueDeclareOptions {
        durable: !spec.transient,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(name.into(), options, spec.arguments())
        .await
        .unwrap_or_else(|error| panic!("declare queue {name}: {error}"));
    let _ = channel.close(200, "ok".into()).await;
}

/// Declares `name` and its dead-letter queue `{name}.dlq` (rejected messages of `name` land
/// there, through the default exchange). Returns the dead-letter queue's name.
pub async fn declare_queue_with_dlq(connection: &Connection, name: &str) -> String {
    let dlq = format!("{name}.dlq");
    declare_queue(connection, &dlq).await;
    declare_queue_with(connection, name, &QueueSpec::dead_letter_to(&dlq)).await;
    dlq
}

/// Deletes queue `name` if it exists (no error when it does not).
pub async fn delete_queue(connection: &Connection, name: &str) {
    let Ok(channel) = connection.create_channel().await else {
        return;
    };
    let _ = channel
        .queue_delete(name.into(), QueueDeleteOptions::default())
        .await;
    let _ = channel.close(200, "ok".into()).await;
}

/// Deletes several queues (see [`delete_queue`]).
pub async fn delete_queues<I, S>(connection: &Connection, names: I)
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    for name in names {
        delete_queue(connection, name.as_ref()).await;
    }
}

/// The counts a passive queue declare reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueCounts {
    /// Messages ready for delivery (not counting delivered, unacknowledged ones).
    pub messages: u32,
    /// Consumers on the queue.
    pub consumers: u32,
}

/// The ready-message and consumer counts of queue `name`, through a passive declare on a
/// channel of its own (a passive declare of a missing queue closes its channel).
///
/// # Errors
/// When the queue does not exist or the broker is unreachable.
pub async fn queue_counts(connection: &Connection, name: &str) -> lapin::Result<QueueCounts> {
    let channel = connection.create_channel().await?;
    let queue = channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions::default().passive(),
            FieldTable::default(),
        )
        .await;
    if queue.is_ok() {
        let _ = channel.close(200, "ok".into()).await;
    }
    let queue = queue?;
    Ok(QueueCounts {
        messages: queue.message_count(),
        consumers: queue.consumer_count(),
    })
}

/// Ready messages in queue `name` (delivered but unacknowledged ones are not counted: use
/// [`list_queues`] for those).
///
/// # Panics
/// When the queue does not exist.
pub async fn message_count(connection: &Connection, name: &str) -> u32 {
    queue_counts(connection, name)
        .await
        .unwrap_or_else(|error| panic!("passive declare of {name}: {error}"))
        .messages
}

/// Consumers on queue `name`.
///
/// # Panics
/// When the queue does not exist.
pub async fn consumer_count(connection: &Connection, name: &str) -> u32 {
    queue_counts(connection, name)
        .await
        .unwrap_or_else(|error| panic!("passive declare of {name}: {error}"))
        .consumers
}

/// Whether queue `name` exists.
pub async fn queue_exists(connection: &Connection, name: &str) -> bool {
    queue_counts(connection, name).await.is_ok()
}

/// Polls `condition` every 25 ms until it holds (`true`) or `timeout` has passed (`false`).
/// The condition is checked once more at the deadline.
///
/// ```ignore
/// assert!(wait_until(Duration::from_secs(10), || async {
///     message_count(&conn, &queue).await == 0
/// }).await, "the queue never drained");
/// ```
pub async fn wait_until<F, Fut>(timeout: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until queue `name` holds exactly `expected` ready messages.
///
/// # Panics
/// When it does not within `timeout`, with the last count seen.
pub async fn wait_for_message_count(
    connection: &Connection,
    name: &str,
    expected: u32,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let count = queue_counts(connection, name)
            .await
            .ok()
            .map(|c| c.messages);
        if count == Some(expected) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "queue {name}: expected {expected} ready messages within {timeout:?}, last saw {count:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Publishing raw messages
// ---------------------------------------------------------------------------------------

/// Publishes each body to `queue` through the default exchange, persistent, with publisher
/// confirms, and waits until the broker has confirmed them all.
///
/// # Panics
/// When a publish fails or is not confirmed.
pub async fn publish_bodies<I, B>(connection: &Connection, queue: &str, bodies: I)
where
    I: IntoIterator<Item = B>,
    B: AsRef<[u8]>,
{
    let properties = BasicProperties::default().with_delivery_mode(2);
    publish_with(connection, "", queue, bodies, properties).await;
}

/// Publishes `n` persistent messages with bodies `message-0` … `message-{n-1}` to `queue`
/// (see [`publish_bodies`]).
pub async fn publish_n(connection: &Connection, queue: &str, n: usize) {
    publish_bodies(connection, queue, (0..n).map(|i| format!("message-{i}"))).await;
}

/// Publishes each body to `exchange` with `routing_key` and `properties`, with publisher
/// confirms, and waits until the broker has confirmed them all.
///
/// # Panics
/// When a publish fails, is nacked, or is returned unroutable.
pub async fn publish_with<I, B>(
    connection: &Connection,
    exchange: &str,
    routing_key: &str,
    bodies: I,
    properties: BasicProperties,
) where
    I: IntoIterator<Item = B>,
    B: AsRef<[u8]>,
{
    let channel = channel(connection).await;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    let mut confirms = Vec::new();
    for body in bodies {
        let confirm = channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body.as_ref(),
                properties.clone(),
            )
            .await
            .unwrap_or_else(|error| panic!("publish to {exchange:?}/{routing_key}: {error}"));
        confirms.push(confirm);
    }
    for confirm in confirms {
        let confirmation = confirm.await.expect("publisher confirm");
        assert!(
            confirmation.is_ack(),
            "the broker nacked a message for {routing_key}"
        );
        if let Some(returned) = confirmation.take_message() {
            panic!(
                "message for {exchange:?}/{routing_key} returned unroutable: {}",
                returned.reply_text
            );
        }
    }
    let _ = channel.close(200, "ok".into()).await;
}

// ---------------------------------------------------------------------------------------
// rabbitmqctl
// ---------------------------------------------------------------------------------------

/// Runs `rabbitmqctl -q` against the test node with `scripts/rabbitmq.sh`'s environment and
/// returns its standard output.
///
/// # Errors
/// When it cannot run or exits non-zero: the message carries its output.
pub async fn rabbitmqctl(args: &[&str]) -> Result<String, String> {
    let program = ["/usr/sbin/rabbitmqctl", "/usr/lib/rabbitmq/bin/rabbitmqctl"]
        .into_iter()
        .find(|path| std::path::Path::new(path).exists())
        .unwrap_or("rabbitmqctl");
    let output = tokio::process::Command::new(program)
        .arg("-n")
        .arg(NODE_NAME)
        .arg("-q")
        .args(args)
        .env("RABBITMQ_NODENAME", NODE_NAME)
        .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
        .env("RABBITMQ_NODE_PORT", "5672")
        .env("ERL_EPMD_ADDRESS", "127.0.0.1")
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|error| format!("cannot run {program}: {error}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "rabbitmqctl {} failed ({}): {}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// Like [`rabbitmqctl`], panicking on failure.
pub async fn rabbitmqctl_ok(args: &[&str]) -> String {
    rabbitmqctl(args)
        .await
        .unwrap_or_else(|error| panic!("{error}"))
}

/// Like [`rabbitmqctl`], but blocking: for `Drop` guards.
fn rabbitmqctl_blocking(args: &[&str]) -> Result<(), String> {
    let status = std::process::Command::new("rabbitmqctl")
        .arg("-n")
        .arg(NODE_NAME)
        .arg("-q")
        .args(args)
        .env("RABBITMQ_NODENAME", NODE_NAME)
        .env("ERL_EPMD_ADDRESS", "127.0.0.1")
        .env(
            "PATH",
            format!(
                "{}:/usr/sbin:/sbin",
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|error| format!("cannot run rabbitmqctl: {error}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("rabbitmqctl {} failed ({status})", args.join(" ")))
    }
}

/// One row of `rabbitmqctl list_queues`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueInfo {
    /// Queue name.
    pub name: String,
    /// Messages ready for delivery.
    pub messages_ready: u64,
    /// Messages delivered and not yet acknowledged.
    pub messages_unacknowledged: u64,
    /// Consumers.
    pub consumers: u64,
}

/// `rabbitmqctl list_queues` for `vhost`.
///
/// # Panics
/// When rabbitmqctl fails or its output cannot be parsed.
pub async fn list_queues(vhost: &str) -> Vec<QueueInfo> {
    let out = rabbitmqctl_ok(&[
        "list_queues",
        "-p",
        vhost,
        "--formatter",
        "json",
        "name",
        "messages_ready",
        "messages_unacknowledged",
        "consumers",
    ])
    .await;
    let rows: Vec<serde_json::Value> = serde_json::from_str(out.trim())
        .unwrap_or_else(|error| panic!("parse list_queues output {out:?}: {error}"));
    rows.iter()
        .map(|row| QueueInfo {
            name: row["name"].as_str().unwrap_or_default().to_owned(),
            messages_ready: row["messages_ready"].as_u64().unwrap_or_default(),
            messages_unacknowledged: row["messages_unacknowledged"].as_u64().unwrap_or_default(),
            consumers: row["consumers"].as_u64().unwrap_or_default(),
        })
        .collect()
}

/// The `list_queues` row of queue `name` in `vhost`, if it exists.
pub async fn queue_info(vhost: &str, name: &str) -> Option<QueueInfo> {
    list_queues(vhost)
        .await
        .into_iter()
        .find(|q| q.name == name)
}

/// One row of `rabbitmqctl list_connections`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The broker's name for the connection (`127.0.0.1:port -> 127.0.0.1:5672`).
    pub name: String,
    /// The name the client gave itself (`connection_name` client property), if any.
    pub client_name: Option<String>,
    /// The negotiated heartbeat timeout in seconds (0: heartbeats off).
    pub timeout: u64,
    /// The connection's vhost.
    pub vhost: String,
    /// The authenticated user.
    pub user: String,
    /// Whether the connection uses TLS.
    pub ssl: bool,
    /// The subject of the client certificate the peer presented over TLS, if any.
    pub peer_cert_subject: Option<String>,
}

/// `rabbitmqctl list_connections`: every client connection of the node.
///
/// # Panics
/// When rabbitmqctl fails or its output cannot be parsed.
pub async fn list_connections() -> Vec<ConnectionInfo> {
    let out = rabbitmqctl_ok(&[
        "list_connections",
        "--formatter",
        "json",
        "name",
        "timeout",
        "vhost",
        "user",
        "ssl",
        "peer_cert_subject",
        "client_properties",
    ])
    .await;
    let rows: Vec<serde_json::Value> = serde_json::from_str(out.trim())
        .unwrap_or_else(|error| panic!("parse list_connections output {out:?}: {error}"));
    rows.iter()
        .map(|row| ConnectionInfo {
            name: row["name"].as_str().unwrap_or_default().to_owned(),
            client_name: client_property(&row["client_properties"], "connection_name"),
            timeout: row["timeout"].as_u64().unwrap_or_default(),
            vhost: row["vhost"].as_str().unwrap_or_default().to_owned(),
            user: row["user"].as_str().unwrap_or_default().to_owned(),
            ssl: row["ssl"].as_bool().unwrap_or_default(),
            peer_cert_subject: row["peer_cert_subject"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
        })
        .collect()
}

/// Finds a client property in rabbitmqctl's JSON rendering of `client_properties`, a list
/// of `[key, type, value]` triples.
fn client_property(properties: &serde_json::Value, key: &str) -> Option<String> {
    properties.as_array()?.iter().find_map(|entry| {
        let entry = entry.as_array()?;
        if entry.first()?.as_str()? == key {
            entry.get(2)?.as_str().map(str::to_owned)
        } else {
            None
        }
    })
}

/// The connections whose client-provided name is `client_name`.
pub async fn connections_named(client_name: &str) -> Vec<ConnectionInfo> {
    list_connections()
        .await
        .into_iter()
        .filter(|c| c.client_name.as_deref() == Some(client_name))
        .collect()
}

/// Closes every client connection to `vhost` (`rabbitmqctl close_all_connections -p`):
/// give the test its own [`TestVhost`], so other tests' connections are not touched.
///
/// # Panics
/// When rabbitmqctl fails.
pub async fn close_all_connections(vhost: &str, reason: &str) {
    rabbitmqctl_ok(&["close_all_connections", "-p", vhost, reason]).await;
}

/// Closes the connections whose client-provided name is `client_name`; returns how many.
///
/// # Panics
/// When rabbitmqctl fails.
pub async fn close_connections_named(client_name: &str, reason: &str) -> usize {
    let out = rabbitmqctl_ok(&[
        "list_connections",
        "--formatter",
        "json",
        "pid",
        "client_properties",
    ])
    .await;
    let rows: Vec<serde_json::Value> = serde_json::from_str(out.trim())
        .unwrap_or_else(|error| panic!("parse list_connections output {out:?}: {error}"));
    let mut closed = 0;
    for row in &rows {
        if client_property(&row["client_properties"], "connection_name").as_deref()
            == Some(client_name)
            && let Some(pid) = row["pid"].as_str()
        {
            // Already gone counts as closed.
            let _ = rabbitmqctl(&["close_connection", pid, reason]).await;
            closed += 1;
        }
    }
    closed
}

/// A vhost of its own for one test, with full permissions for `guest`; deleted (with its
/// queues) on drop.
#[derive(Debug)]
pub struct TestVhost {
    name: String,
}

impl TestVhost {
    /// Creates vhost `aw-test-{name}-{random}` and grants `guest` every permission on it.
    ///
    /// # Panics
    /// When rabbitmqctl fails.
    pub async fn create(name: &str) -> TestVhost {
        let name = unique_name(name);
        add_vhost(&name).await;
        TestVhost { name }
    }

    /// The vhost's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The broker URL for this vhost.
    pub fn url(&self) -> String {
        amqp_url_for_vhost(&self.name)
    }
}

impl Drop for TestVhost {
    fn drop(&mut self) {
        if let Err(error) = rabbitmqctl_blocking(&["delete_vhost", &self.name]) {
            eprintln!("test cleanup: {error}");
        }
    }
}

/// Creates `vhost` and grants `guest` configure/write/read on everything in it.
///
/// # Panics
/// When rabbitmqctl fails.
pub async fn add_vhost(vhost: &str) {
    rabbitmqctl_ok(&["add_vhost", vhost]).await;
    rabbitmqctl_ok(&["set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"]).await;
}

/// Deletes `vhost` and everything in it.
///
/// # Panics
/// When rabbitmqctl fails.
pub async fn delete_vhost(vhost: &str) {
    rabbitmqctl_ok(&["delete_vhost", vhost]).await;
}

/// Sets the broker's memory high watermark (a fraction of RAM). `0` raises the memory alarm,
/// which blocks every publishing connection on the node: prefer [`MemoryAlarm`], which
/// restores the default when dropped.
///
/// # Panics
/// When rabbitmqctl fails.
pub async fn set_vm_memory_high_watermark(fraction: f64) {
    rabbitmqctl_ok(&["set_vm_memory_high_watermark", &fraction.to_string()]).await;
}

/// The broker-wide memory alarm, raised while this guard lives: publishers are blocked
/// (`connection.blocked`). Dropping it restores [`DEFAULT_MEMORY_HIGH_WATERMARK`].
///
/// This affects every test running against the node at the same time: hold it briefly.
#[derive(Debug)]
pub struct MemoryAlarm {
    _private: (),
}

impl MemoryAlarm {
    /// Raises the alarm (watermark 0).
    ///
    /// # Panics
    /// When rabbitmqctl fails.
    pub async fn raise() -> MemoryAlarm {
        // Create the guard first, so the watermark is restored even if the call below fails
        // half-way.
        let guard = MemoryAlarm { _private: () };
        set_vm_memory_high_watermark(0.0).await;
        guard
    }
}

impl Drop for MemoryAlarm {
    fn drop(&mut self) {
        let watermark = DEFAULT_MEMORY_HIGH_WATERMARK.to_string();
        if let Err(error) = rabbitmqctl_blocking(&["set_vm_memory_high_watermark", &watermark]) {
            eprintln!("test cleanup: restoring the memory watermark: {error}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// A TCP proxy to simulate outages without touching the shared broker
// ---------------------------------------------------------------------------------------

/// A loopback TCP proxy in front of the broker, to simulate network trouble for one client
/// without disturbing the (shared) broker: [`TcpProxy::freeze`] stops every byte in both
/// directions (a broker that hangs, a network partition), [`TcpProxy::sever`] drops every
/// proxied connection (a broker restart as the client sees it). Stopped on drop.
#[derive(Debug)]
pub struct TcpProxy {
    addr: std::net::SocketAddr,
    frozen: tokio::sync::watch::Sender<bool>,
    generation: tokio::sync::watch::Sender<u64>,
    accepted: Arc<AtomicU64>,
    accept: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on an ephemeral loopback port and forwards each connection to `target`
    /// (`127.0.0.1:5672` for the test broker).
    ///
    /// # Panics
    /// When it cannot listen.
    pub async fn start(target: &str) -> TcpProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (frozen, _) = tokio::sync::watch::channel(false);
        let (generation, _) = tokio::sync::watch::channel(0u64);
        let target = target.to_owned();
        let accepted = Arc::new(AtomicU64::new(0));
        let accept = {
            let frozen = frozen.clone();
            let generation = generation.clone();
            let accepted = Arc::clone(&accepted);
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    accepted.fetch_add(1, Ordering::Relaxed);
                    let Ok(server) = tokio::net::TcpStream::connect(&target).await else {
                        continue;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let client = Arc::new(client);
                    let server = Arc::new(server);
                    for (from, to) in [(Arc::clone(&client), Arc::clone(&server)), (server, client)]
                    {
                        tokio::spawn(relay(from, to, frozen.subscribe(), generation.subscribe()));
                    }
                }
            })
        };
        TcpProxy {
            addr,
            frozen,
            generation,
            accepted,
            accept,
        }
    }

    /// Starts a proxy in front of the test broker's plain AMQP port.
    pub async fn to_broker() -> TcpProxy {
        TcpProxy::start("127.0.0.1:5672").await
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// An `amqp://` URL through the proxy to the default vhost.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port())
    }

    /// How many client connections the proxy has accepted so far.
    pub fn connections_accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Stops forwarding bytes (connections stay open, nothing arrives either way).
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    /// Forwards bytes again, including what was held back.
    pub fn resume(&self) {
        self.frozen.send_replace(false);
    }

    /// Drops every connection proxied so far; new connections are still accepted.
    pub fn sever(&self) {
        self.generation.send_modify(|g| *g += 1);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.sever();
    }
}

/// Copies `from` to `to` until either side closes or the proxy severs its connections,
/// holding bytes back while the proxy is frozen. Uses the `try_read`/`try_write` API, which
/// needs only tokio's `net` feature.
async fn relay(
    from: Arc<tokio::net::TcpStream>,
    to: Arc<tokio::net::TcpStream>,
    mut frozen: tokio::sync::watch::Receiver<bool>,
    mut generation: tokio::sync::watch::Receiver<u64>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let severed = async move {
        let _ = generation.changed().await;
    };
    let copy = async move {
        loop {
            if from.readable().await.is_err() {
                return;
            }
            let n = match from.try_read(&mut buf) {
                Ok(0) => return,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => return,
            };
            if frozen.wait_for(|frozen| !*frozen).await.is_err() {
                return;
            }
            let mut sent = 0;
            while sent < n {
                if to.writable().await.is_err() {
                    return;
                }
                match to.try_write(&buf[sent..n]) {
                    Ok(m) => sent += m,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
        }
    };
    tokio::select! {
        () = severed => {}
        () = copy => {}
    }
    // Both halves are dropped with their tasks; the sockets close when the last Arc goes.
}
