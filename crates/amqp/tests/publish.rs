//! The publisher against the local broker (`scripts/rabbitmq.sh start`).

mod support;

use std::time::{Duration, Instant, SystemTime};

use asyncworker_amqp::lapin::message::BasicGetMessage;
use asyncworker_amqp::lapin::options::BasicGetOptions;
use asyncworker_amqp::lapin::types::{AMQPValue, LongString};
use asyncworker_amqp::{AmqpConfig, AmqpConfigBuilder, OutgoingMessage, PublishError, Publisher};
use serde::{Deserialize, Serialize};
use support::*;
use tokio::sync::RwLock;

/// The memory-alarm test blocks every publisher on the broker: it takes this lock for writing,
/// every other test of this file for reading.
static BROKER_ALARM: RwLock<()> = RwLock::const_new(());

fn config() -> AmqpConfig {
    AmqpConfig::from_url(&amqp_url()).expect("the test broker URL is valid")
}

/// What most tests start with: a shared hold on [`BROKER_ALARM`], a connection to the test
/// broker, and a queue of their own named after `name`.
async fn setup(
    name: &str,
) -> (
    tokio::sync::RwLockReadGuard<'static, ()>,
    lapin::Connection,
    TestQueue,
) {
    let shared = BROKER_ALARM.read().await;
    let connection = connect().await;
    let queue = TestQueue::declare(&connection, name).await;
    (shared, connection, queue)
}

/// A unique connection name made from `name`, and a configuration builder on `url` that
/// gives it to the broker (so `rabbitmqctl` can find the connection).
fn named(url: &str, name: &str) -> (String, AmqpConfigBuilder) {
    let name = unique_name(name);
    let config = AmqpConfig::builder()
        .url(url)
        .connection_name(name.as_str());
    (name, config)
}

/// Takes the next message of `queue` (`basic.get`, auto-ack).
async fn get(connection: &lapin::Connection, queue: &str) -> BasicGetMessage {
    let channel = channel(connection).await;
    let message = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
        .unwrap_or_else(|| panic!("queue {queue} is empty"));
    let _ = channel.close(200, "ok".into()).await;
    message
}

#[tokio::test]
async fn confirmed_publish_arrives_with_its_properties_and_persistent() {
    let (_shared, connection, queue) = setup("publish-props").await;
    let publisher = Publisher::connect(&config()).await.expect("publisher");
    let shown = format!("{publisher:?}");
    assert!(
        shown.contains("127.0.0.1") && !shown.contains("guest:"),
        "the broker without the password: {shown}"
    );

    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let message = OutgoingMessage::new("", queue.as_str(), &b"\x00raw bytes\xff"[..])
        .content_type("application/octet-stream")
        .correlation_id("corr-1")
        .message_id("msg-1")
        .reply_to("replies")
        .app_id("asyncworker-tests")
        .kind("count")
        .timestamp(at)
        .priority(3)
        .header("origin", "test")
        .header("attempt", 2i64)
        .header("urgent", true);
    publisher.publish(message).await.expect("confirmed");

    // Confirmed means stored: no waiting needed.
    assert_eq!(message_count(&connection, &queue).await, 1);
    let got = get(&connection, &queue).await;
    assert_eq!(got.delivery.data, b"\x00raw bytes\xff");
    let p = &got.delivery.properties;
    assert_eq!(*p.delivery_mode(), Some(2), "persistent by default");
    assert_eq!(
        p.content_type().as_ref().map(|s| s.as_str()),
        Some("application/octet-stream")
    );
    assert_eq!(
        p.correlation_id().as_ref().map(|s| s.as_str()),
        Some("corr-1")
    );
    assert_eq!(p.message_id().as_ref().map(|s| s.as_str()), Some("msg-1"));
    assert_eq!(p.reply_to().as_ref().map(|s| s.as_str()), Some("replies"));
    assert_eq!(
        p.app_id().as_ref().map(|s| s.as_str()),
        Some("asyncworker-tests")
    );
    assert_eq!(p.kind().as_ref().map(|s| s.as_str()), Some("count"));
    assert_eq!(*p.timestamp(), Some(1_700_000_000));
    assert_eq!(*p.priority(), Some(3));
    let headers = p.headers().clone().expect("headers");
    let headers = headers.inner();
    assert_eq!(
        headers.get("origin"),
        Some(&AMQPValue::LongString(LongString::from("test")))
    );
    assert_eq!(headers.get("attempt"), Some(&AMQPValue::LongLongInt(2)));
    assert_eq!(headers.get("urgent"), Some(&AMQPValue::Boolean(true)));

    // Transient on request.
    publisher
        .publish(OutgoingMessage::text("", queue.as_str(), "light").persistent(false))
        .await
        .expect("confirmed");
    let got = get(&connection, &queue).await;
    assert_eq!(got.delivery.data, b"light");
    assert_eq!(*got.delivery.properties.delivery_mode(), Some(1));
}

#[tokio::test]
async fn mandatory_unroutable_message_is_an_error_and_the_publisher_goes_on() {
    let _shared = BROKER_ALARM.read().await;
    let connection = connect().await;
    let publisher = Publisher::connect(&config()).await.expect("publisher");
    let nowhere = unique_name("no-such-queue");

    let error = publisher
        .publish(OutgoingMessage::new("", nowhere.as_str(), "lost?").mandatory(true))
        .await
        .expect_err("no queue is bound to this routing key");
    match &error {
        PublishError::Unroutable {
            exchange,
            routing_key,
            reply_code,
            reply_text,
        } => {
            assert_eq!(exchange, "");
            assert_eq!(routing_key, &nowhere);
            assert_eq!(*reply_code, 312);
            assert_eq!(reply_text, "NO_ROUTE");
        }
        other => panic!("expected Unroutable, got {other:?}"),
    }
    assert!(error.is_unroutable());
    assert!(error.to_string().contains(&nowhere), "{error}");

    // Without mandatory, AMQP drops it silently: confirmed.
    publisher
        .publish_bytes("", &nowhere, "dropped")
        .await
        .expect("a non-mandatory unroutable message is confirmed");

    // A publisher whose default is mandatory; routable messages still go through, and the
    // error belongs to the unroutable one even when they are published concurrently.
    let queue = TestQueue::declare(&connection, "publish-mandatory").await;
    let strict = Publisher::builder()
        .mandatory(true)
        .connect(&config())
        .await
        .expect("publisher");
    let (routable, unroutable, routable_again) = tokio::join!(
        strict.publish_bytes("", &queue, "a"),
        strict.publish_bytes("", &nowhere, "b"),
        strict.publish_bytes("", &queue, "c"),
    );
    routable.expect("routable");
    routable_again.expect("routable");
    assert!(
        unroutable.as_ref().is_err_and(PublishError::is_unroutable),
        "{unroutable:?}"
    );
    assert_eq!(message_count(&connection, &queue).await, 2);
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Count {
    name: String,
    value: i64,
}

#[tokio::test]
async fn json_round_trip_keeps_empty_object_empty_array_and_zero() {
    let (_shared, connection, queue) = setup("publish-json").await;
    let publisher = Publisher::connect(&config()).await.expect("publisher");

    let values = [
        serde_json::json!({}),
        serde_json::json!([]),
        serde_json::json!(0),
        serde_json::json!(null),
        serde_json::json!({"nested": {"list": [1, 2.5, "three", false]}}),
    ];
    for value in &values {
        publisher
            .publish_json("", &queue, value)
            .await
            .expect("confirmed");
    }
    let count = Count {
        name: "visits".into(),
        value: -3,
    };
    publisher
        .publish_json("", &queue, &count)
        .await
        .expect("confirmed");

    for (value, raw) in values.iter().zip(
        ["{}", "[]", "0", "null"]
            .map(Some)
            .into_iter()
            .chain([None]),
    ) {
        let got = get(&connection, &queue).await;
        if let Some(raw) = raw {
            assert_eq!(got.delivery.data, raw.as_bytes(), "serialized as itself");
        }
        let decoded: serde_json::Value = serde_json::from_slice(&got.delivery.data).unwrap();
        assert_eq!(&decoded, value);
        assert_eq!(
            got.delivery
                .properties
                .content_type()
                .as_ref()
                .map(|s| s.as_str()),
            Some("application/json")
        );
    }
    let got = get(&connection, &queue).await;
    let decoded: Count = serde_json::from_slice(&got.delivery.data).unwrap();
    assert_eq!(decoded, count);
}

#[tokio::test]
async fn missing_exchange_is_exchange_not_found_and_the_next_publish_works() {
    let (_shared, connection, queue) = setup("publish-after-404").await;
    let publisher = Publisher::connect(&config()).await.expect("publisher");
    let exchange = unique_name("no-such-exchange");

    let error = publisher
        .publish_bytes(&exchange, "key", "x")
        .await
        .expect_err("the exchange does not exist");
    assert!(
        matches!(&error, PublishError::ExchangeNotFound { exchange: e, .. } if *e == exchange),
        "{error:?}"
    );

    // The broker closed that channel; the publisher opens another.
    publisher
        .publish_bytes("", &queue, "after")
        .await
        .expect("published on a fresh channel");
    assert_eq!(message_count(&connection, &queue).await, 1);
}

#[tokio::test]
async fn concurrent_publishes_from_clones_are_all_confirmed() {
    let (_shared, connection, queue) = setup("publish-concurrent").await;
    let publisher = Publisher::connect(&config()).await.expect("publisher");

    let tasks: Vec<_> = (0..8)
        .map(|task| {
            let publisher = publisher.clone();
            let queue = queue.to_string();
            tokio::spawn(async move {
                for i in 0..50 {
                    publisher
                        .publish_json("", &queue, &(task * 100 + i))
                        .await
                        .expect("confirmed");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("publishing task");
    }
    assert_eq!(message_count(&connection, &queue).await, 400);
}

#[tokio::test]
async fn publisher_reconnects_after_the_broker_closes_its_connection() {
    let (_shared, _connection, queue) = setup("publish-reconnect").await;
    let (name, config) = named(&amqp_url(), "publisher");
    let config = config.build().expect("config");
    let publisher = Publisher::connect(&config).await.expect("publisher");
    publisher
        .publish_bytes("", &queue, "before")
        .await
        .expect("confirmed");

    let old = connections_named(&name).await;
    assert_eq!(old.len(), 1, "one publisher connection: {old:?}");
    assert_eq!(close_connections_named(&name, "publisher test").await, 1);
    // The old connection is really gone (the broker's name for it names its client port)
    // before the publish that must recover.
    wait_until(Duration::from_secs(10), || async {
        !connections_named(&name)
            .await
            .iter()
            .any(|c| c.name == old[0].name)
    })
    .await
    .expect("the closed connection to be gone");
    // Publishes right after the close may fail while the client learns of it; within a few
    // seconds one succeeds on a new connection.
    wait_until(Duration::from_secs(15), || async {
        publisher.publish_bytes("", &queue, "after").await.is_ok()
    })
    .await
    .expect("the publisher to reconnect");
    wait_until(Duration::from_secs(10), || async {
        connections_named(&name).await.len() == 1
    })
    .await
    .expect("exactly one live publisher connection");
}

/// A queue that refuses every message (`x-max-length=0`, `x-overflow=reject-publish`) nacks
/// each publish: the publisher reports `Nacked`, never `Ok`.
#[tokio::test]
async fn a_nacked_publish_is_a_nacked_error() {
    let _shared = BROKER_ALARM.read().await;
    let connection = connect().await;
    let spec = QueueSpec {
        max_length: Some(0),
        overflow: Some("reject-publish"),
        ..QueueSpec::default()
    };
    let queue = TestQueue::declare_with(&connection, "publish-nacked", &spec).await;
    let publisher = Publisher::connect(&config()).await.expect("publisher");
    for _ in 0..3 {
        match publisher.publish_bytes("", &queue, "refused").await {
            Err(PublishError::Nacked {
                exchange,
                routing_key,
            }) => assert_eq!(
                (exchange.as_str(), routing_key.as_str()),
                ("", queue.as_str())
            ),
            other => panic!("expected a nack, got {other:?}"),
        }
    }
    assert_eq!(message_count(&connection, &queue).await, 0);
}

#[tokio::test]
async fn zero_timeout_is_rejected_at_build_time() {
    let error = Publisher::builder()
        .timeout(Duration::ZERO)
        .connect(&config())
        .await
        .expect_err("a zero timeout is invalid");
    assert!(matches!(error, PublishError::InvalidOptions(_)), "{error}");
}

#[tokio::test]
async fn blocked_connection_gives_a_timeout_error_not_a_hang() {
    let _exclusive = BROKER_ALARM.write().await;
    let connection = connect().await;
    let queue = TestQueue::declare(&connection, "publish-blocked").await;
    let timeout = Duration::from_millis(1500);
    let publisher = Publisher::builder()
        .timeout(timeout)
        .connect(&config())
        .await
        .expect("publisher");

    {
        // Broker-wide: every publishing connection is blocked until the guard drops.
        let _alarm = MemoryAlarm::raise().await;
        let started = Instant::now();
        let outcome = tokio::time::timeout(
            timeout + Duration::from_secs(5),
            publisher.publish_bytes("", &queue, "while blocked"),
        )
        .await
        .expect("the publish must end by itself, at its own timeout");
        let elapsed = started.elapsed();
        match outcome {
            Err(PublishError::Timeout {
                timeout: t,
                blocked,
                ref routing_key,
                ..
            }) => {
                assert_eq!(t, timeout);
                assert_eq!(routing_key, &queue);
                assert!(blocked, "the broker announced connection.blocked");
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
        assert!(
            elapsed >= timeout && elapsed < timeout + Duration::from_secs(2),
            "took {elapsed:?}"
        );
    }

    // Alarm cleared: the same publisher works again.
    wait_until(Duration::from_secs(15), || async {
        publisher.publish_bytes("", &queue, "after").await.is_ok()
    })
    .await
    .expect("publishing to resume after the alarm cleared");
}

#[tokio::test]
async fn broker_outage_gives_a_timeout_error_and_the_publisher_recovers() {
    let (_shared, connection, queue) = setup("publish-outage").await;
    // The outage is simulated by a proxy between this publisher and the broker, so other
    // tests' connections are not disturbed.
    let proxy = TcpProxy::to_broker().await;
    let timeout = Duration::from_secs(1);
    let publisher = Publisher::builder()
        .timeout(timeout)
        .connect(&AmqpConfig::from_url(&proxy.url()).expect("proxy URL"))
        .await
        .expect("publisher through the proxy");
    publisher
        .publish_bytes("", &queue, "before")
        .await
        .expect("confirmed before the outage");

    proxy.freeze();
    let started = Instant::now();
    let outcome = tokio::time::timeout(
        timeout + Duration::from_secs(5),
        publisher.publish_bytes("", &queue, "during"),
    )
    .await
    .expect("the publish must end by itself, at its own timeout");
    let elapsed = started.elapsed();
    assert!(
        matches!(outcome, Err(PublishError::Timeout { blocked: false, .. })),
        "{outcome:?}"
    );
    assert!(
        elapsed >= timeout && elapsed < timeout + Duration::from_secs(2),
        "took {elapsed:?}"
    );

    proxy.resume();
    wait_until(Duration::from_secs(10), || async {
        publisher.publish_bytes("", &queue, "after").await.is_ok()
    })
    .await
    .expect("publishing to resume after the outage");
    // "before" and at least one "after"; the timed-out one may have arrived too.
    assert!(message_count(&connection, &queue).await >= 2);
}

#[tokio::test]
async fn severed_connection_is_replaced_by_a_new_one() {
    let (_shared, _connection, queue) = setup("publish-severed").await;
    let proxy = TcpProxy::to_broker().await;
    let publisher = Publisher::builder()
        .timeout(Duration::from_secs(2))
        .connect(&AmqpConfig::from_url(&proxy.url()).expect("proxy URL"))
        .await
        .expect("publisher through the proxy");
    publisher
        .publish_bytes("", &queue, "before")
        .await
        .expect("confirmed");
    assert_eq!(proxy.connections_accepted(), 1);

    proxy.sever();
    wait_until(Duration::from_secs(15), || async {
        publisher.publish_bytes("", &queue, "after").await.is_ok()
    })
    .await
    .expect("the publisher to reconnect");
    assert_eq!(proxy.connections_accepted(), 2, "one new connection");
}

#[tokio::test]
async fn unreachable_broker_is_a_connect_error() {
    // A port nobody listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let config =
        AmqpConfig::from_url(&format!("amqp://guest:guest@127.0.0.1:{port}/%2f")).expect("config");
    let started = Instant::now();
    let error = Publisher::connect(&config)
        .await
        .expect_err("nothing listens there");
    assert!(matches!(error, PublishError::Connect(_)), "{error:?}");
    // The endpoint is named by the cause (the source), not repeated by the PublishError.
    let text = error_chain(&error);
    assert!(text.contains(&port.to_string()), "{text}");
    assert!(
        !text.contains("guest:guest"),
        "no password in errors: {text}"
    );
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[tokio::test]
async fn publish_all_reports_each_outcome_in_order() {
    let (_shared, connection, queue) = setup("publish-all").await;
    let publisher = Publisher::connect(&config()).await.expect("publisher");
    let nowhere = unique_name("no-such-queue");

    let mut messages: Vec<OutgoingMessage> = (0..100)
        .map(|i| OutgoingMessage::json("", queue.as_str(), &i).expect("json"))
        .collect();
    messages.insert(
        50,
        OutgoingMessage::new("", nowhere.as_str(), "x").mandatory(true),
    );
    let outcomes = publisher.publish_all(messages).await;
    assert_eq!(outcomes.len(), 101);
    for (i, outcome) in outcomes.iter().enumerate() {
        if i == 50 {
            assert!(
                outcome.as_ref().is_err_and(PublishError::is_unroutable),
                "{outcome:?}"
            );
        } else {
            assert!(outcome.is_ok(), "message {i}: {outcome:?}");
        }
    }
    assert_eq!(message_count(&connection, &queue).await, 100);
}

#[tokio::test]
async fn publishes_over_tls_with_a_verified_broker_and_a_client_certificate() {
    let (_shared, connection, queue) = setup("publish-tls").await;
    let (name, config) = named(&amqps_url(), "tls-publisher");
    let config = config
        .tls_ca_file(tls_ca_cert())
        .tls_client_cert_files(tls_client_cert(), tls_client_key())
        .build()
        .expect("TLS config (run scripts/rabbitmq.sh start for the test certificates)");
    let publisher = Publisher::connect(&config)
        .await
        .expect("publisher over TLS");
    publisher
        .publish_json("", &queue, &serde_json::json!({"over": "tls"}))
        .await
        .expect("confirmed");
    assert_eq!(message_count(&connection, &queue).await, 1);
    let seen = connections_named(&name).await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].ssl, "{seen:?}");
    assert!(
        seen[0]
            .peer_cert_subject
            .as_deref()
            .is_some_and(|s| s.contains("asyncworker-test-client")),
        "the broker saw the client certificate: {seen:?}"
    );

    // A CA that did not sign the broker's certificate: the handshake must fail.
    let wrong_ca = AmqpConfig::builder()
        .url(&amqps_url())
        .tls_ca_file(tls_client_cert())
        .build()
        .expect("config");
    let error = Publisher::connect(&wrong_ca)
        .await
        .expect_err("the broker's certificate is not signed by that CA");
    assert!(matches!(error, PublishError::Connect(_)), "{error:?}");
    // ... for that reason, not any connect error: the cause names the certificate.
    let chain = error_chain(&error);
    assert!(
        chain.contains("invalid peer certificate") && chain.contains("UnknownIssuer"),
        "{chain}"
    );
}

#[tokio::test]
async fn a_cancelled_mandatory_publish_does_not_blame_the_next_one() {
    let (_shared, connection, queue) = setup("publish-cancelled").await;
    let proxy = TcpProxy::to_broker().await;
    let publisher = Publisher::builder()
        .mandatory(true)
        .timeout(Duration::from_secs(10))
        .connect(&AmqpConfig::from_url(&proxy.url()).expect("proxy URL"))
        .await
        .expect("publisher through the proxy");
    publisher
        .publish_bytes("", &queue, "warm-up")
        .await
        .expect("confirmed");

    // An unroutable mandatory message, held in the proxy, whose caller gives up.
    proxy.freeze();
    let nowhere = unique_name("no-such-queue");
    let cancelled = tokio::time::timeout(
        Duration::from_millis(300),
        publisher.publish_bytes("", &nowhere, "given up"),
    )
    .await;
    assert!(cancelled.is_err(), "still in flight when cancelled");
    // Now the broker gets it and returns it; the next mandatory publish must not receive
    // that return as its own.
    proxy.resume();
    publisher
        .publish_bytes("", &queue, "routable")
        .await
        .expect("a routable message is not reported unroutable");
    assert_eq!(message_count(&connection, &queue).await, 2);
}

#[tokio::test]
async fn publish_outcomes_are_counted() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let _shared = BROKER_ALARM.read().await;
    // A recorder local to this thread: the test's current-thread runtime runs every publish
    // here, and other tests' publishes do not count.
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);

    let connection = connect().await;
    let queue = TestQueue::declare(&connection, "publish-metrics").await;
    let publisher = Publisher::connect(&config()).await.expect("publisher");
    for _ in 0..3 {
        publisher
            .publish_bytes("", &queue, "x")
            .await
            .expect("confirmed");
    }
    let nowhere = unique_name("no-such-queue");
    let _ = publisher
        .publish(OutgoingMessage::new("", nowhere.as_str(), "x").mandatory(true))
        .await
        .expect_err("unroutable");

    let mut counts = std::collections::HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let (_, key) = key.into_parts();
        if key.name() == "asyncworker_amqp_published_total"
            && let DebugValue::Counter(n) = value
        {
            let outcome = key
                .labels()
                .find(|l| l.key() == "outcome")
                .map(|l| l.value().to_owned())
                .unwrap_or_default();
            counts.insert(outcome, n);
        }
    }
    assert_eq!(counts.get("confirmed"), Some(&3), "{counts:?}");
    assert_eq!(counts.get("unroutable"), Some(&1), "{counts:?}");
}

#[tokio::test]
async fn close_ends_publishing_and_the_connection() {
    let (_shared, connection, queue) = setup("publish-close").await;
    let (name, config) = named(&amqp_url(), "closing-publisher");
    let config = config.build().expect("config");
    let publisher = Publisher::connect(&config).await.expect("publisher");
    let clone = publisher.clone();
    publisher
        .publish_bytes("", &queue, "before")
        .await
        .expect("confirmed");
    assert_eq!(connections_named(&name).await.len(), 1);

    publisher.close().await.expect("closed");
    publisher.close().await.expect("closing twice is fine");
    let error = clone
        .publish_bytes("", &queue, "after")
        .await
        .expect_err("closed");
    assert!(matches!(error, PublishError::Closed), "{error:?}");
    wait_until(Duration::from_secs(10), || async {
        connections_named(&name).await.is_empty()
    })
    .await
    .expect("the publisher's connection is gone from the broker");
    assert_eq!(message_count(&connection, &queue).await, 1);
}

#[tokio::test]
async fn publishes_to_the_vhost_it_is_given() {
    let _shared = BROKER_ALARM.read().await;
    let vhost = TestVhost::create("publish-vhost").await;
    let connection = connect_vhost(vhost.name()).await;
    declare_queue(&connection, "jobs").await;
    // The configuration names the default vhost; the builder overrides it.
    let publisher = Publisher::builder()
        .vhost(vhost.name())
        .connect(&config())
        .await
        .expect("publisher on the test vhost");
    assert!(!publisher.is_blocked());
    publisher
        .publish_json("", "jobs", &serde_json::json!({"n": 1}))
        .await
        .expect("confirmed");
    assert_eq!(message_count(&connection, "jobs").await, 1);
    let listed = queue_info(vhost.name(), "jobs").await.expect("listed");
    assert_eq!(listed.messages_ready, 1);
}

/// The outcomes of publishes that came back as another publish's: `(task, index, outcome)`.
type Mismatches = Vec<(usize, usize, String)>;

/// lapin numbers a publish (its delivery tag, which the broker's confirm names) under one lock
/// and queues its frames under another: two publishes racing on one channel could reach the
/// broker in the other order than their numbers, and each get the other's confirm — a nacked
/// message reported stored. 16 tasks on a multi-thread runtime share one publisher and
/// alternate large messages to a queue that nacks every publish with small ones to a queue
/// that takes them: each must get its own outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn confirm_goes_to_its_own_publish() {
    const TASKS: usize = 16;
    const PER_TASK: usize = 40;
    let _shared = BROKER_ALARM.read().await;
    let connection = connect().await;
    let refusing = QueueSpec {
        max_length: Some(0),
        overflow: Some("reject-publish"),
        ..QueueSpec::default()
    };
    let nacking =
        TestQueue::declare_with(&connection, "publish-own-confirm-nacks", &refusing).await;
    let taking = TestQueue::declare(&connection, "publish-own-confirm-takes").await;
    let publisher = Publisher::connect(&config()).await.expect("publisher");
    let large = bytes::Bytes::from(vec![b'x'; 256 * 1024]);

    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let publisher = publisher.clone();
            let (nacking, taking) = (nacking.to_string(), taking.to_string());
            let large = large.clone();
            tokio::spawn(async move {
                let mut mismatches = Mismatches::new();
                for i in 0..PER_TASK {
                    if i % 2 == 0 {
                        let outcome = publisher.publish_bytes("", &nacking, large.clone()).await;
                        if !matches!(outcome, Err(PublishError::Nacked { .. })) {
                            mismatches.push((
                                task,
                                i,
                                format!("to the nacking queue: {outcome:?}"),
                            ));
                        }
                    } else {
                        let outcome = publisher.publish_bytes("", &taking, "small").await;
                        if outcome.is_err() {
                            mismatches.push((task, i, format!("to the taking queue: {outcome:?}")));
                        }
                    }
                }
                mismatches
            })
        })
        .collect();
    let mut mismatches = Mismatches::new();
    for task in tasks {
        mismatches.extend(task.await.expect("publishing task"));
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} publishes got another's outcome, first: {:?}",
        mismatches.len(),
        TASKS * PER_TASK,
        &mismatches[..mismatches.len().min(3)]
    );
    assert_eq!(
        message_count(&connection, &taking).await as usize,
        TASKS * PER_TASK / 2
    );
}

/// How the concurrent neighbours of one bad message fared: `(ok, collateral)`; panics on any
/// other outcome.
fn neighbours(outcomes: &[Result<(), PublishError>], bad: usize) -> (usize, usize) {
    let (mut ok, mut collateral) = (0, 0);
    for (i, outcome) in outcomes.iter().enumerate() {
        if i == bad {
            continue;
        }
        match outcome {
            Ok(()) => ok += 1,
            Err(error @ PublishError::ChannelClosed { .. }) => {
                let text = error.to_string();
                assert!(text.contains("may or may not have been stored"), "{text}");
                collateral += 1;
            }
            Err(other) => panic!("message {i}, a good one, failed with {other:?}"),
        }
    }
    (ok, collateral)
}

/// Publishes 100 good messages to `queue` concurrently with `bad` (the 51st): their outcomes.
async fn publish_beside(
    publisher: &Publisher,
    queue: &str,
    bad: OutgoingMessage,
) -> Vec<Result<(), PublishError>> {
    let mut messages: Vec<OutgoingMessage> = (0..100)
        .map(|i| OutgoingMessage::json("", queue, &i).expect("json"))
        .collect();
    messages.insert(50, bad);
    publisher.publish_all(messages).await
}

/// A publish to a missing exchange makes the broker close the channel, failing every confirm
/// pending on it: only the culprit is `ExchangeNotFound`; its neighbours are `ChannelClosed`
/// (may or may not be stored), never blamed for an exchange they did not use.
#[tokio::test]
async fn a_missing_exchange_fails_its_neighbours_as_collateral_not_as_not_found() {
    let (_shared, connection, queue) = setup("publish-404-neighbours").await;
    let publisher = Publisher::connect(&config()).await.expect("publisher");
    let missing = unique_name("no-such-exchange");

    let outcomes = publish_beside(
        &publisher,
        &queue,
        OutgoingMessage::new(missing.as_str(), "key", "x"),
    )
    .await;
    match &outcomes[50] {
        Err(PublishError::ExchangeNotFound { exchange, .. }) => assert_eq!(exchange, &missing),
        other => panic!("expected ExchangeNotFound, got {other:?}"),
    }
    let (ok, collateral) = neighbours(&outcomes, 50);
    assert!(
        collateral > 0,
        "the messages behind the bad one were discarded"
    );
    // Those confirmed are stored; a collateral failure may or may not be.
    let stored = message_count(&connection, &queue).await as usize;
    assert!(
        stored >= ok && stored <= ok + collateral,
        "{stored} stored, {ok} ok"
    );

    publisher
        .publish_bytes("", &queue, "after")
        .await
        .expect("published on a fresh channel");
}

/// RabbitMQ refuses a per-message TTL over ten years (315 360 000 000 ms,
/// `rabbit_misc:check_expiry`) by closing the channel; the publisher says so before sending,
/// and the neighbours are unharmed.
#[tokio::test]
async fn an_expiration_over_rabbitmqs_cap_is_invalid_before_sending() {
    let (_shared, connection, queue) = setup("publish-expiration-cap").await;
    let publisher = Publisher::connect(&config()).await.expect("publisher");
    let cap = Duration::from_millis(315_360_000_000);

    let outcomes = publish_beside(
        &publisher,
        &queue,
        OutgoingMessage::new("", queue.as_str(), "x").expiration(cap + Duration::from_millis(1)),
    )
    .await;
    match &outcomes[50] {
        Err(error @ PublishError::InvalidMessage { field, .. }) => {
            assert_eq!(*field, "expiration");
            assert!(error.to_string().contains("315360000000"), "{error}");
        }
        other => panic!("expected InvalidMessage, got {other:?}"),
    }
    assert_eq!(neighbours(&outcomes, 50), (100, 0));
    assert_eq!(message_count(&connection, &queue).await, 100);

    // The cap itself is accepted.
    publisher
        .publish(OutgoingMessage::new("", queue.as_str(), "x").expiration(cap))
        .await
        .expect("a TTL of exactly the cap is valid");
}

/// RabbitMQ refuses a message whose user id is not the connection's user by closing the
/// channel; the publisher knows its user and says so before sending.
#[tokio::test]
async fn a_user_id_other_than_the_connections_user_is_invalid_before_sending() {
    let (_shared, connection, queue) = setup("publish-user-id").await;
    let publisher = Publisher::connect(&config()).await.expect("publisher");

    let outcomes = publish_beside(
        &publisher,
        &queue,
        OutgoingMessage::new("", queue.as_str(), "x").user_id("somebody-else"),
    )
    .await;
    match &outcomes[50] {
        Err(error @ PublishError::InvalidMessage { field, .. }) => {
            assert_eq!(*field, "user id");
            let text = error.to_string();
            assert!(
                text.contains("somebody-else") && text.contains("guest"),
                "{text}"
            );
        }
        other => panic!("expected InvalidMessage, got {other:?}"),
    }
    assert_eq!(neighbours(&outcomes, 50), (100, 0));

    publisher
        .publish(OutgoingMessage::new("", queue.as_str(), "x").user_id("guest"))
        .await
        .expect("the connection's own user id is valid");
    assert_eq!(message_count(&connection, &queue).await, 101);
}

/// A body over the broker's `max_message_size` (128 MiB by default) makes RabbitMQ close the
/// channel; the publisher refuses it before sending — against the broker's default, or the
/// limit it is given.
#[tokio::test]
async fn a_body_over_the_max_message_size_is_invalid_before_sending() {
    let (_shared, connection, queue) = setup("publish-max-size").await;
    let publisher = Publisher::connect(&config()).await.expect("publisher");

    let huge = vec![0u8; 128 * 1024 * 1024 + 1];
    let outcomes = publish_beside(
        &publisher,
        &queue,
        OutgoingMessage::new("", queue.as_str(), huge),
    )
    .await;
    match &outcomes[50] {
        Err(error @ PublishError::InvalidMessage { field, .. }) => {
            assert_eq!(*field, "body");
            assert!(error.to_string().contains("134217728"), "{error}");
        }
        other => panic!("expected InvalidMessage, got {other:?}"),
    }
    assert_eq!(neighbours(&outcomes, 50), (100, 0));
    assert_eq!(message_count(&connection, &queue).await, 100);

    let small = Publisher::builder()
        .max_message_size(1024)
        .connect(&config())
        .await
        .expect("publisher");
    let error = small
        .publish_bytes("", &queue, vec![0u8; 1025])
        .await
        .expect_err("over the configured limit");
    assert!(
        matches!(error, PublishError::InvalidMessage { field: "body", .. }),
        "{error:?}"
    );
    small
        .publish_bytes("", &queue, vec![0u8; 1024])
        .await
        .expect("exactly the limit is fine");
}

/// With confirms off and mandatory on, lapin keeps each returned message until
/// `wait_for_confirms`, which a publisher never needs: they piled up without bound. The
/// publisher takes them from lapin, logs and counts each one.
#[tokio::test]
async fn returned_messages_without_confirms_are_reported_not_kept() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    const N: u64 = 50;

    let _shared = BROKER_ALARM.read().await;
    // Thread-local, as in `publish_outcomes_are_counted`.
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    // Our logs, on this thread (lapin's own, which print the body, are another matter).
    let logs = Captured::default();
    let writer = logs.clone();
    let _logging = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("warn,lapin=off"))
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish(),
    );

    let publisher = Publisher::builder()
        .confirms(false)
        .mandatory(true)
        .connect(&config())
        .await
        .expect("publisher");
    let nowhere = unique_name("no-such-queue");
    for _ in 0..N {
        publisher
            .publish_bytes("", &nowhere, "secret body")
            .await
            .expect("sent (no confirm to wait for)");
    }
    publisher.close().await.expect("closed");

    let returned: u64 = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| {
            let (_, key) = key.into_parts();
            match value {
                DebugValue::Counter(n)
                    if key.name() == "asyncworker_amqp_publish_returned_total" =>
                {
                    Some(n)
                }
                _ => None,
            }
        })
        .sum();
    assert_eq!(
        returned, N,
        "every returned message taken from lapin and counted"
    );
    let logs = logs.text();
    assert_eq!(
        logs.matches("returned a mandatory message").count() as u64,
        N,
        "{logs}"
    );
    assert!(
        logs.contains(&nowhere) && logs.contains("NO_ROUTE"),
        "{logs}"
    );
    assert!(!logs.contains("secret body"), "no body in our logs: {logs}");
}
