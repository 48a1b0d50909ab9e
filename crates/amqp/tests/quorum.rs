//! Quorum queues (`x-queue-type: quorum`) against the real broker: consuming and publishing
//! as on classic queues, `x-delivery-count`, consuming a queue declared by someone else with
//! its own arguments, poison messages dead-lettered by the queue's `x-delivery-limit`, and
//! `x-single-active-consumer` failover.
//!
//! A route never declares its queues, so whatever arguments the queue was declared with are
//! left alone (no 406 PRECONDITION_FAILED from a differing redeclare).

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use asyncworker_amqp::lapin::Connection;
use asyncworker_amqp::lapin::options::{
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use asyncworker_amqp::lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use asyncworker_amqp::{AmqpMessage, AmqpSource, AmqpStream, Publisher};
use asyncworker_core::{Action, App, BoxError, Readiness, RouteOptions, Shutdown};
use asyncworker_core::{Message, Source, SourceContext};
use support::*;

/// A quorum queue of one test: durable, `x-queue-type: quorum` plus `arguments`; deleted
/// when dropped (through a [`TestQueue`]-like cleanup on a connection of its own).
struct QuorumQueue {
    name: String,
}

impl QuorumQueue {
    async fn declare(conn: &Connection, name: &str, arguments: &[(&str, AMQPValue)]) -> Self {
        let name = unique_name(name);
        let mut args = FieldTable::default();
        args.insert(
            ShortString::from("x-queue-type"),
            AMQPValue::LongString(LongString::from("quorum")),
        );
        for (key, value) in arguments {
            args.insert(ShortString::from(*key), value.clone());
        }
        let ch = channel(conn).await;
        let options = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        ch.queue_declare(name.as_str().into(), options, args)
            .await
            .unwrap_or_else(|e| panic!("declare quorum queue {name}: {e}"));
        let _ = ch.close(200, "ok".into()).await;
        QuorumQueue { name }
    }
}

impl std::ops::Deref for QuorumQueue {
    type Target = str;

    fn deref(&self) -> &str {
        &self.name
    }
}

impl Drop for QuorumQueue {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            runtime.block_on(async {
                let conn = connect().await;
                delete_queue(&conn, &name).await;
                let _ = conn.close(200, "ok".into()).await;
            });
        })
        .join();
    }
}

fn string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// Publish `n` bodies `message-0`… to `queue` with our [`Publisher`] (publisher confirms).
async fn publish_confirmed(queue: &str, n: usize) {
    let publisher = Publisher::connect(&config().build().unwrap())
        .await
        .expect("publisher");
    assert!(publisher.confirms());
    for i in 0..n {
        publisher
            .publish_bytes("", queue, format!("message-{i}"))
            .await
            .expect("confirmed");
    }
    publisher.close().await.unwrap();
}

fn start(source: AmqpSource, route: &str) -> (AmqpStream, Shutdown, Readiness) {
    init_tracing();
    let shutdown = Shutdown::new();
    let readiness = Readiness::default();
    let cx =
        SourceContext::new(route.to_owned(), shutdown.clone()).with_readiness(readiness.clone());
    (source.into_stream(cx), shutdown, readiness)
}

fn source(queue: &str) -> AmqpSource {
    AmqpSource::builder(config().build().unwrap(), [queue])
        .build()
        .unwrap()
}

async fn stop(mut stream: AmqpStream, shutdown: Shutdown) {
    shutdown.trigger();
    drain_to_end(&mut stream, 30).await;
}

/// Run `queue`'s route in an App with `bulk` until `expected` messages were handled; the
/// batches it saw.
async fn run_bulk(queue: &str, bulk: usize, expected: usize) -> Vec<Vec<String>> {
    init_tracing();
    let batches: Arc<Mutex<Vec<Vec<String>>>> = Arc::default();
    let seen = batches.clone();
    let mut app = App::new();
    app.handle_signals(false);
    app.route(
        "quorum-bulk",
        source(queue),
        move |batch: Vec<AmqpMessage>| {
            let seen = seen.clone();
            async move {
                let bodies = batch.iter().map(|m| m.text().unwrap().to_owned()).collect();
                seen.lock().unwrap().push(bodies);
                Ok::<_, BoxError>(())
            }
        },
    )
    .options(
        RouteOptions::new()
            .bulk_size(bulk)
            .flush_interval(Duration::MAX),
    );
    let handle = app.shutdown_handle();
    let run = tokio::spawn(app.run());
    wait_until(Duration::from_secs(30), || async {
        batches.lock().unwrap().iter().map(Vec::len).sum::<usize>() >= expected
    })
    .await
    .expect("every message handled");
    stop_app(&handle, run).await;
    batches.lock().unwrap().clone()
}

/// A quorum queue is consumed like a classic one, in batches of ten and one by one: every
/// message published with confirms reaches the handler once and is acked (the per-channel
/// QoS, `global = false`, is what quorum queues accept).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_queue_is_consumed_and_acked_in_bulk_and_one_by_one() {
    let conn = connect().await;
    for bulk in [10, 1] {
        let q = QuorumQueue::declare(&conn, &format!("quorum-bulk{bulk}"), &[]).await;
        publish_confirmed(&q, 30).await;
        let batches = run_bulk(&q, bulk, 30).await;
        assert!(batches.iter().all(|b| b.len() == bulk), "{batches:?}");
        assert_published_n(batches.concat(), 30);
        let counts = queue_counts(&conn, &q).await.unwrap();
        assert_eq!((counts.messages, counts.consumers), (0, 0), "bulk {bulk}");
        let info = queue_info("/", &q).await.unwrap();
        assert_eq!(info.messages_unacknowledged, 0, "bulk {bulk}");
    }
}

/// A quorum queue counts a message's requeues in `x-delivery-count`: none on the first
/// delivery, then 1, then 2. A classic queue never sets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_count_counts_requeues_on_a_quorum_queue_only() {
    let conn = connect().await;
    let q = QuorumQueue::declare(&conn, "quorum-count", &[]).await;
    publish_confirmed(&q, 1).await;
    let (mut stream, shutdown, _) = start(source(&q), "quorum-count");
    let mut counts = Vec::new();
    for _ in 0..3 {
        let (m, errors) = next_message(&mut stream, 20).await;
        assert!(errors.is_empty(), "{errors:?}");
        counts.push(m.delivery_count());
        m.settlement().settle(Action::Requeue).unwrap();
    }
    assert_eq!(counts, [None, Some(1), Some(2)]);
    let (m, _) = next_message(&mut stream, 20).await;
    assert_eq!(m.delivery_count(), Some(3));
    m.settlement().settle(Action::Ack).unwrap();
    stop(stream, shutdown).await;

    let classic = TestQueue::declare(&conn, "classic-count").await;
    publish_n(&conn, &classic, 1).await;
    let (mut stream, shutdown, _) = start(source(&classic), "classic-count");
    let (first, _) = next_message(&mut stream, 20).await;
    first.settlement().settle(Action::Requeue).unwrap();
    let (again, _) = next_message(&mut stream, 20).await;
    assert!(again.redelivered());
    assert_eq!(
        (first.delivery_count(), again.delivery_count()),
        (None, None)
    );
    again.settlement().settle(Action::Ack).unwrap();
    stop(stream, shutdown).await;
}

/// A quorum queue someone else declared with its own delivery limit, dead-letter exchange
/// and single active consumer is consumed as it is: no redeclare, so no 406
/// PRECONDITION_FAILED, no consume error, and the queue keeps its arguments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_quorum_queue_with_its_own_arguments_is_consumed_as_is() {
    let conn = connect().await;
    let q = QuorumQueue::declare(
        &conn,
        "quorum-existing",
        &[
            ("x-delivery-limit", AMQPValue::LongInt(5)),
            ("x-dead-letter-exchange", string("amq.fanout")),
            ("x-single-active-consumer", AMQPValue::Boolean(true)),
        ],
    )
    .await;
    publish_confirmed(&q, 3).await;
    let (mut stream, shutdown, readiness) = start(source(&q), "quorum-existing");
    for _ in 0..3 {
        let (m, errors) = next_message(&mut stream, 20).await;
        assert!(errors.is_empty(), "{errors:?}");
        m.settlement().settle(Action::Ack).unwrap();
    }
    assert!(readiness.get());
    stop(stream, shutdown).await;
    let info = rabbitmqctl_ok(&["list_queues", "name", "type", "arguments"]).await;
    let line = info
        .lines()
        .find(|l| l.contains(&*q))
        .expect("the queue is listed");
    assert!(
        line.contains("quorum") && line.contains("x-delivery-limit"),
        "{line}"
    );
    assert_eq!(message_count(&conn, &q).await, 0);
}

/// A poison message — its handler always fails, the route requeues on error — is dead-
/// lettered by the broker once the queue's `x-delivery-limit` (2) is used up: the handler
/// sees it limit + 1 times with a growing `delivery_count`, then it sits in the dead-letter
/// queue, alone (we republished no copy), and the main queue is empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_is_dead_lettered_after_the_delivery_limit() {
    init_tracing();
    let conn = connect().await;
    let dlx = unique_name("quorum-dlx");
    let ch = channel(&conn).await;
    ch.exchange_declare(
        dlx.as_str().into(),
        asyncworker_amqp::lapin::ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            auto_delete: true,
            ..ExchangeDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let dlq = QuorumQueue::declare(&conn, "quorum-dlq", &[]).await;
    ch.queue_bind(
        (*dlq).into(),
        dlx.as_str().into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let q = QuorumQueue::declare(
        &conn,
        "quorum-poison",
        &[
            ("x-delivery-limit", AMQPValue::LongInt(2)),
            ("x-dead-letter-exchange", string(&dlx)),
        ],
    )
    .await;
    publish_confirmed(&q, 1).await;

    let seen: Arc<Mutex<Vec<Option<u64>>>> = Arc::default();
    let record = seen.clone();
    let mut app = App::new();
    app.handle_signals(false);
    app.route(
        "quorum-poison",
        source(&q),
        move |batch: Vec<AmqpMessage>| {
            let record = record.clone();
            async move {
                record
                    .lock()
                    .unwrap()
                    .extend(batch.iter().map(AmqpMessage::delivery_count));
                Err::<(), BoxError>("this message always fails".into())
            }
        },
    )
    .options(RouteOptions::new().bulk_size(1).on_error(Action::Requeue));
    let handle = app.shutdown_handle();
    let run = tokio::spawn(app.run());
    wait_until(Duration::from_secs(30), || async {
        message_count(&conn, &dlq).await == 1
    })
    .await
    .expect("the message reaches the dead-letter queue");
    stop_app(&handle, run).await;

    assert_eq!(*seen.lock().unwrap(), [None, Some(1), Some(2)]);
    assert_eq!(message_count(&conn, &q).await, 0);
    assert_eq!(message_count(&conn, &dlq).await, 1);
    let info = queue_info("/", &q).await.unwrap();
    assert_eq!(info.messages_unacknowledged, 0);
    let _ = ch.close(200, "ok".into()).await;
}

type Pumped = (
    tokio::sync::mpsc::UnboundedReceiver<AmqpMessage>,
    tokio::task::JoinHandle<()>,
);

/// Start `source` and poll its stream on a task of its own (a stream makes progress only
/// while polled), forwarding its messages.
fn pump(source: AmqpSource, route: &str) -> (Pumped, Shutdown, Readiness) {
    let (mut stream, shutdown, readiness) = start(source, route);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        while let Some(item) = futures::StreamExt::next(&mut stream).await {
            if let Ok(m) = item {
                // Once the receiver is gone the message is dropped, which requeues it.
                let _ = tx.send(m);
            }
        }
    });
    ((rx, task), shutdown, readiness)
}

async fn next_pumped(rx: &mut tokio::sync::mpsc::UnboundedReceiver<AmqpMessage>) -> AmqpMessage {
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("a message within 30 s")
        .expect("the stream goes on")
}

/// Whether each consumer of `queue` is the active one (`rabbitmqctl list_consumers`).
async fn consumers_active(queue: &str) -> Vec<bool> {
    let out = rabbitmqctl_ok(&["list_consumers", "-p", "/", "queue_name", "active"]).await;
    out.lines()
        .filter(|l| l.split_whitespace().next() == Some(queue))
        .map(|l| l.split_whitespace().nth(1) == Some("true"))
        .collect()
}

/// Two routes, on two connections, consume one `x-single-active-consumer` quorum queue: only
/// the first receives; when the broker closes its connection, the second takes over and
/// receives the rest — what the first had not acked included — in order. Nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_active_consumer_fails_over_in_order() {
    let conn = connect().await;
    let q = QuorumQueue::declare(
        &conn,
        "quorum-sac",
        &[("x-single-active-consumer", AMQPValue::Boolean(true))],
    )
    .await;
    let name_a = unique_name("sac-a");
    let sac_source = |name: &str| {
        AmqpSource::builder(
            config().prefetch(5).connection_name(name).build().unwrap(),
            [&*q],
        )
        .build()
        .unwrap()
    };
    let (mut a, stop_a, ready_a) = pump(sac_source(&name_a), "sac-a");
    wait_until(Duration::from_secs(20), || async { ready_a.get() })
        .await
        .expect("a consumes");
    let (mut b, stop_b, ready_b) = pump(sac_source(&unique_name("sac-b")), "sac-b");
    wait_until(Duration::from_secs(20), || async { ready_b.get() })
        .await
        .expect("b consumes");
    let mut active = consumers_active(&q).await;
    active.sort_unstable();
    assert_eq!(active, [false, true], "one active consumer, one waiting");

    publish_confirmed(&q, 20).await;
    let mut acked_by_a = Vec::new();
    for _ in 0..5 {
        let m = next_pumped(&mut a.0).await;
        acked_by_a.push(m.text().unwrap().to_owned());
        m.settlement().settle(Action::Ack).unwrap();
    }
    // Settled on the broker before the connection goes.
    wait_until(Duration::from_secs(20), || async {
        queue_info("/", &q)
            .await
            .is_some_and(|i| i.messages_ready + i.messages_unacknowledged == 15)
    })
    .await
    .expect("a's five acks reach the broker");
    assert_eq!(close_connections_named(&name_a, "failover test").await, 1);

    let mut got_by_b = Vec::new();
    for _ in 0..15 {
        let m = next_pumped(&mut b.0).await;
        got_by_b.push(m.text().unwrap().to_owned());
        m.settlement().settle(Action::Ack).unwrap();
    }
    let expected_a: Vec<_> = (0..5).map(|i| format!("message-{i}")).collect();
    let expected_b: Vec<_> = (5..20).map(|i| format!("message-{i}")).collect();
    assert_eq!(acked_by_a, expected_a);
    assert_eq!(got_by_b, expected_b);
    // a reconnected as the waiting consumer; what it still held from its closed connection
    // was never acked (the broker gave it to b).
    for (stream, shutdown) in [(b, stop_b), (a, stop_a)] {
        shutdown.trigger();
        drop(stream.0);
        tokio::time::timeout(Duration::from_secs(30), stream.1)
            .await
            .expect("the stream ends")
            .unwrap();
    }
    wait_until(Duration::from_secs(20), || async {
        queue_info("/", &q)
            .await
            .is_some_and(|i| i.messages_ready == 0 && i.messages_unacknowledged == 0)
    })
    .await
    .expect("every message acked");
}

/// Triggers `shutdown` and waits for the App task `run` to end without error.
async fn stop_app(
    shutdown: &Shutdown,
    run: tokio::task::JoinHandle<Result<(), asyncworker_core::Error>>,
) {
    shutdown.trigger();
    let result = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the app stops")
        .expect("the app task does not panic");
    assert!(result.is_ok(), "{result:?}");
}
