//! Connections, queues ([`TestQueue`]), counts, waiting and raw publishing on the test broker.

use std::future::Future;
use std::time::{Duration, Instant};

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use super::*;

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
    /// `x-overflow` (`reject-publish`: a full queue nacks publishes), if any.
    pub overflow: Option<&'static str>,
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
        if let Some(overflow) = self.overflow {
            args.insert(
                ShortString::from("x-overflow"),
                AMQPValue::LongString(LongString::from(overflow)),
            );
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

/// A queue of its own for one test, on the default vhost: declared with a unique name
/// (`aw-test-{name}-{random}`), deleted with its messages when dropped — also when the test
/// fails half-way. Reads as its name (`&queue` is a `&str`). Queues in a [`TestVhost`] need
/// no guard: the vhost's deletes them.
#[derive(Debug)]
pub struct TestQueue {
    name: String,
    /// The broker it lives on (where `Drop` deletes it).
    url: String,
}

impl TestQueue {
    /// Declares a durable test queue named after `name` (see [`unique_name`]).
    ///
    /// # Panics
    /// When the declare fails.
    pub async fn declare(connection: &Connection, name: &str) -> TestQueue {
        TestQueue::declare_with(connection, name, &QueueSpec::default()).await
    }

    /// Declares a test queue named after `name` as `spec` says.
    ///
    /// # Panics
    /// When the declare fails.
    pub async fn declare_with(connection: &Connection, name: &str, spec: &QueueSpec) -> TestQueue {
        TestQueue::declare_at(&amqp_url(), connection, name, spec).await
    }

    /// Declares a test queue named after `name` as `spec` says on the broker at `url`, to
    /// which `connection` is connected (the fault node, say): `Drop` deletes it there.
    ///
    /// # Panics
    /// When the declare fails.
    pub async fn declare_at(
        url: &str,
        connection: &Connection,
        name: &str,
        spec: &QueueSpec,
    ) -> TestQueue {
        let queue = TestQueue {
            name: unique_name(name),
            url: url.to_owned(),
        };
        declare_queue_with(connection, &queue.name, spec).await;
        queue
    }

    /// Declares a test queue named after `name` whose rejected messages are dead-lettered
    /// (through the default exchange) into a second test queue: returns (queue, dead-letter
    /// queue).
    pub async fn declare_with_dlq(connection: &Connection, name: &str) -> (TestQueue, TestQueue) {
        let dlq = TestQueue::declare(connection, &format!("{name}-dlq")).await;
        let queue =
            TestQueue::declare_with(connection, name, &QueueSpec::dead_letter_to(&dlq)).await;
        (queue, dlq)
    }

    /// The queue's name.
    pub fn as_str(&self) -> &str {
        &self.name
    }
}

impl std::ops::Deref for TestQueue {
    type Target = str;

    fn deref(&self) -> &str {
        &self.name
    }
}

impl std::fmt::Display for TestQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

impl PartialEq<TestQueue> for str {
    fn eq(&self, queue: &TestQueue) -> bool {
        self == queue.name
    }
}

impl PartialEq<TestQueue> for String {
    fn eq(&self, queue: &TestQueue) -> bool {
        *self == queue.name
    }
}

impl PartialEq<TestQueue> for &str {
    fn eq(&self, queue: &TestQueue) -> bool {
        *self == queue.name
    }
}

impl Drop for TestQueue {
    /// Deletes the queue on a connection of its own, from a thread with its own runtime:
    /// `Drop` cannot await, and may run inside the test's runtime.
    fn drop(&mut self) {
        let name = self.name.clone();
        let url = self.url.clone();
        let deleted = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let connection = Connection::connect(&url, ConnectionProperties::default())
                    .await
                    .map_err(|e| e.to_string())?;
                delete_queue(&connection, &name).await;
                let _ = connection.close(200, "ok".into()).await;
                Ok::<_, String>(())
            })
        })
        .join();
        match deleted {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("test cleanup: deleting queue {}: {error}", self.name),
            Err(_) => eprintln!("test cleanup: deleting queue {} panicked", self.name),
        }
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

/// Polls `condition` every 25 ms until it holds or `timeout` has passed; the condition is
/// checked once more at the deadline. The one polling helper of the tests: say what was
/// awaited with [`Waited::expect`], or read [`Waited::held`] to clean up before asserting.
///
/// ```ignore
/// wait_until(Duration::from_secs(10), || async {
///     message_count(&conn, &queue).await == 0
/// })
/// .await
/// .expect("the queue drains");
/// ```
pub async fn wait_until<F, Fut>(timeout: Duration, mut condition: F) -> Waited
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return Waited {
                held: true,
                timeout,
            };
        }
        if Instant::now() >= deadline {
            return Waited {
                held: false,
                timeout,
            };
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// What [`wait_until`] saw: whether its condition held before the timeout.
#[derive(Debug, Clone, Copy)]
#[must_use = "say what was awaited with .expect(..), or check .held()"]
pub struct Waited {
    held: bool,
    timeout: Duration,
}

impl Waited {
    /// Whether the condition held in time.
    pub fn held(self) -> bool {
        self.held
    }

    /// Fails the test unless the condition held, saying what was awaited.
    #[track_caller]
    pub fn expect(self, what: &str) {
        assert!(
            self.held,
            "timed out after {:?} waiting for: {what}",
            self.timeout
        );
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

/// Asserts that `bodies`, in any order, are those [`publish_n`] published for `n`.
pub fn assert_published_n(mut bodies: Vec<String>, n: usize) {
    bodies.sort();
    let mut expected: Vec<_> = (0..n).map(|i| format!("message-{i}")).collect();
    expected.sort();
    assert_eq!(bodies, expected);
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
