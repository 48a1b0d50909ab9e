//! The consuming half against a real RabbitMQ (start it with `scripts/rabbitmq.sh start`):
//! acks, rejects, requeues, multi-queue routes, vhosts, named connections, heartbeat, bad
//! credentials, reconnects, missing queues, RequeueTail, shutdown and TLS.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use asyncworker_amqp::lapin::types::{AMQPValue, FieldTable};
use asyncworker_amqp::lapin::{BasicProperties, Connection};
use asyncworker_amqp::{AmqpConfig, AmqpError, AmqpSource, AmqpStream, Connections};
use asyncworker_core::{Action, Message, Readiness, SettleError, Shutdown, Source, SourceContext};
use asyncworker_core::{Backoff, Jitter};
use futures::StreamExt;
use support::*;

fn start(source: AmqpSource, route: &str) -> (AmqpStream, Shutdown, Readiness) {
    init_tracing();
    let shutdown = Shutdown::new();
    let readiness = Readiness::default();
    let cx =
        SourceContext::new(route.to_owned(), shutdown.clone()).with_readiness(readiness.clone());
    (source.into_stream(cx), shutdown, readiness)
}

fn source(queues: &[&str]) -> AmqpSource {
    AmqpSource::builder(config().build().unwrap(), queues.iter().copied())
        .build()
        .unwrap()
}

/// (ready messages, consumers) of `queue`.
async fn counts(conn: &Connection, queue: &str) -> (u32, u32) {
    let c = queue_counts(conn, queue)
        .await
        .unwrap_or_else(|e| panic!("passive declare of {queue}: {e}"));
    (c.messages, c.consumers)
}

/// Assert that `queue` settles at `expected` (ready messages, consumers): a cancelled consumer
/// and the requeues of closing channels reach the broker's counts shortly after the stream
/// ends, so poll for a while before failing with the last counts seen.
async fn assert_counts(conn: &Connection, queue: &str, expected: (u32, u32)) {
    let seen = std::cell::Cell::new(None);
    let settled = wait_until(Duration::from_secs(10), || async {
        let now = counts(conn, queue).await;
        seen.set(Some(now));
        now == expected
    })
    .await
    .held();
    assert!(
        settled,
        "{queue}: (ready, consumers) = {:?}, expected {expected:?}",
        seen.get()
    );
}

/// Shut the source down, wait for its stream to end, and assert that every queue of
/// `queues` is left empty, with no consumer.
async fn stop_drained(stream: AmqpStream, shutdown: Shutdown, conn: &Connection, queues: &[&str]) {
    stop(stream, shutdown).await;
    for queue in queues {
        assert_counts(conn, queue, (0, 0)).await;
    }
}

/// Shut the source down and wait for its stream to end; returns messages still handed out.
async fn stop(mut stream: AmqpStream, shutdown: Shutdown) {
    shutdown.trigger();
    let left = drain_to_end(&mut stream, 10).await;
    drop(left);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_messages_leave_the_queue() {
    let conn = connect().await;
    let q = TestQueue::declare(&conn, "ack").await;
    publish_n(&conn, &q, 50).await;

    let (mut stream, shutdown, readiness) = start(source(&[&q]), "ack");
    let msgs = next_messages(&mut stream, 50, 10).await;
    assert!(readiness.get(), "a consuming route is ready");
    let bodies: Vec<_> = msgs.iter().map(|m| m.text().unwrap().to_owned()).collect();
    assert_published_n(bodies, 50);
    for m in &msgs {
        assert_eq!(m.queue(), &q);
        assert!(!m.redelivered());
        m.settlement().settle_marked_or(Action::Ack).unwrap();
    }
    // Closing the channels would requeue anything not acked: after the shutdown the queue
    // must be empty, with no consumer left.
    stop(stream, shutdown).await;
    assert!(!readiness.get());
    assert_counts(&conn, &q, (0, 0)).await;
    let info = queue_info("/", &q).await.expect("the queue is listed");
    assert_eq!((info.messages_ready, info.messages_unacknowledged), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeued_message_comes_back_redelivered() {
    let conn = connect().await;
    let q = TestQueue::declare(&conn, "requeue").await;
    publish_bodies(&conn, &q, [b"again"]).await;

    let (mut stream, shutdown, _) = start(source(&[&q]), "requeue");
    let (first, _) = next_message(&mut stream, 10).await;
    assert!(!first.redelivered());
    first.requeue();
    // The handler failed: the route's error policy is Requeue, the mark agrees.
    assert_eq!(
        first
            .settlement()
            .settle_marked_or(Action::Requeue)
            .unwrap(),
        Action::Requeue
    );
    let (second, _) = next_message(&mut stream, 10).await;
    assert_eq!(second.text().unwrap(), "again");
    assert!(
        second.redelivered(),
        "a requeued message carries the redelivered flag"
    );
    second.settlement().settle(Action::Ack).unwrap();
    stop_drained(stream, shutdown, &conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_messages_are_dead_lettered_and_mixed_marks_apply() {
    let conn = connect().await;
    let (q, dlq) = TestQueue::declare_with_dlq(&conn, "mixed").await;
    for body in ["accept", "reject", "untouched"] {
        publish_bodies(&conn, &q, [body.as_bytes()]).await;
    }

    let (mut stream, shutdown, _) = start(source(&[&q]), "mixed");
    let batch = next_messages(&mut stream, 3, 10).await;
    for m in &batch {
        match m.text().unwrap() {
            "accept" => m.accept(),
            "reject" => m.reject(),
            _ => {}
        }
    }
    // The handler failed: marks win, the untouched message gets the error policy (Requeue).
    let actions: Vec<_> = batch
        .iter()
        .map(|m| m.settlement().settle_marked_or(Action::Requeue).unwrap())
        .collect();
    assert_eq!(actions, [Action::Ack, Action::Reject, Action::Requeue]);

    let (again, _) = next_message(&mut stream, 10).await;
    assert_eq!(again.text().unwrap(), "untouched");
    assert!(again.redelivered());
    again.settlement().settle(Action::Ack).unwrap();
    stop(stream, shutdown).await;

    assert_counts(&conn, &dlq, (1, 0)).await;
    assert_counts(&conn, &q, (0, 0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_route_consumes_two_queues() {
    let conn = connect().await;
    let q1 = TestQueue::declare(&conn, "two-a").await;
    let q2 = TestQueue::declare(&conn, "two-b").await;
    publish_bodies(&conn, &q1, ["a-0", "a-1", "a-2"]).await;
    publish_bodies(&conn, &q2, ["b-0", "b-1", "b-2"]).await;

    let (mut stream, shutdown, readiness) = start(source(&[&q1, &q2]), "two");
    let msgs = next_messages(&mut stream, 6, 10).await;
    let from = |q: &str| msgs.iter().filter(|m| m.queue() == q).count();
    assert_eq!((from(&q1), from(&q2)), (3, 3));
    for m in &msgs {
        let prefix = if m.queue() == q1 { "a-" } else { "b-" };
        assert!(m.text().unwrap().starts_with(prefix));
        assert_eq!(m.routing_key(), m.queue());
        assert_eq!(m.exchange(), "");
        m.settlement().settle(Action::Ack).unwrap();
    }
    assert!(readiness.get());
    stop_drained(stream, shutdown, &conn, &[&q1, &q2]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_consumes_on_a_non_default_vhost() {
    let vhost = TestVhost::create("vhost").await;
    let conn = connect_vhost(vhost.name()).await;
    let q = TestQueue::declare(&conn, "vq").await;
    publish_bodies(&conn, &q, [b"in a vhost"]).await;

    let src = AmqpSource::builder(config().build().unwrap(), [q.as_str()])
        .vhost(vhost.name())
        .build()
        .unwrap();
    assert_eq!(src.vhost(), vhost.name());
    let (mut stream, shutdown, _) = start(src, "vhost");
    let (msg, _) = next_message(&mut stream, 10).await;
    assert_eq!(msg.text().unwrap(), "in a vhost");
    msg.settlement().settle(Action::Ack).unwrap();
    stop_drained(stream, shutdown, &conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_pick_named_connections_and_the_heartbeat_reaches_the_broker() {
    let conn = connect().await;
    let qa = TestQueue::declare(&conn, "named-a").await;
    let qb = TestQueue::declare(&conn, "named-b").await;
    publish_bodies(&conn, &qa, [b"for a"]).await;
    publish_bodies(&conn, &qb, [b"for b"]).await;

    let (name_a, name_b) = (unique_name("conn-a"), unique_name("conn-b"));
    let mut connections = Connections::new();
    connections
        .insert(
            &name_a,
            config().heartbeat(Duration::from_secs(7)).build().unwrap(),
        )
        .unwrap();
    connections
        .insert(
            &name_b,
            config().heartbeat(Duration::from_secs(11)).build().unwrap(),
        )
        .unwrap();
    let err = connections
        .source("route-x", None, [qa.as_str()])
        .unwrap_err();
    assert!(err.to_string().contains("route-x"), "{err}");
    let err = connections
        .source("route-x", Some("nope"), [qa.as_str()])
        .unwrap_err();
    assert!(err.to_string().contains("\"nope\""), "{err}");

    let src_a = connections
        .source("route-a", Some(&name_a), [qa.as_str()])
        .unwrap()
        .build()
        .unwrap();
    let src_b = connections
        .source("route-b", Some(&name_b), [qb.as_str()])
        .unwrap()
        .build()
        .unwrap();
    let (mut sa, shut_a, _) = start(src_a, "route-a");
    let (mut sb, shut_b, _) = start(src_b, "route-b");
    let (ma, _) = next_message(&mut sa, 10).await;
    let (mb, _) = next_message(&mut sb, 10).await;
    assert_eq!((ma.text().unwrap(), mb.text().unwrap()), ("for a", "for b"));

    // Each connection carries its registry name and its own heartbeat, broker side.
    let a = connections_named(&name_a).await;
    let b = connections_named(&name_b).await;
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!(b.len(), 1, "{b:?}");
    assert_eq!((a[0].timeout, b[0].timeout), (7, 11));

    ma.settlement().settle(Action::Ack).unwrap();
    mb.settlement().settle(Action::Ack).unwrap();
    stop(sa, shut_a).await;
    stop(sb, shut_b).await;
    assert!(
        connections_named(&name_a).await.is_empty(),
        "the connection is closed on shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_gives_a_clear_error_and_bounded_retries_with_backoff() {
    let secret = "definitely-not-the-password";
    let config = AmqpConfig::builder()
        .url(&amqp_url())
        .password(secret)
        .reconnect(
            Backoff::builder()
                .initial_delay(Duration::from_millis(200))
                .max_delay(Duration::from_secs(1))
                .jitter(Jitter::None)
                .build()
                .unwrap(),
        )
        .max_reconnect_attempts(3)
        .build()
        .unwrap();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let seen = calls.clone();
    let src = AmqpSource::builder(config, ["unused"])
        .on_connection_error(move |error, attempt| {
            seen.lock()
                .unwrap()
                .push((error.kind(), attempt, Instant::now()));
        })
        .build()
        .unwrap();
    let (mut stream, _shutdown, readiness) = start(src, "badauth");
    let mut errors = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(item) = stream.next().await {
            errors.push(item.expect_err("no message with a wrong password"));
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream ends once the attempts run out");
    assert!(!readiness.get());

    let kinds: Vec<_> = errors.iter().map(AmqpError::kind).collect();
    assert_eq!(
        kinds,
        [
            "authentication_refused",
            "authentication_refused",
            "authentication_refused",
            "gave_up"
        ]
    );
    for e in &errors {
        let text = format!("{e} {e:?}");
        assert!(!text.contains(secret), "the password leaked: {text}");
    }
    let first = errors[0].to_string();
    assert!(first.contains("authentication refused"), "{first}");
    let endpoint = support::config().build().unwrap().endpoint("/").to_string();
    assert!(first.contains(&endpoint), "{first} names {endpoint}");
    assert!(first.contains("user name and password"), "{first}");

    let calls = calls.lock().unwrap();
    let attempts: Vec<_> = calls.iter().map(|(_, a, _)| *a).collect();
    assert_eq!(attempts, [1, 2, 3]);
    assert!(calls.iter().all(|(k, _, _)| *k == "authentication_refused"));
    // Backoff without jitter: 200 ms, then 400 ms.
    let gap1 = calls[1].2 - calls[0].2;
    let gap2 = calls[2].2 - calls[1].2;
    assert!(gap1 >= Duration::from_millis(190), "{gap1:?}");
    assert!(gap2 >= Duration::from_millis(390), "{gap2:?}");
}

/// The host of the reconnect test's source, used by no other test of this binary.
const RECONNECT_HOST: &str = "localhost";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_connection_reconnects_reconsumes_and_stale_settlements_are_counted() {
    install_metrics();
    let conn = connect().await;
    let q = TestQueue::declare(&conn, "reconnect").await;
    publish_bodies(&conn, &q, [b"survivor"]).await;

    let name = unique_name("reconnecting");
    let calls = Arc::new(Mutex::new(Vec::new()));
    let seen = calls.clone();
    // `localhost`: a host label no other test of this binary uses, so the reconnect count is
    // this test's alone and its delta exact.
    let src = AmqpSource::builder(
        config()
            .host(RECONNECT_HOST)
            .connection_name(&name)
            .build()
            .unwrap(),
        [q.as_str()],
    )
    .on_connection_error(move |e, attempt| seen.lock().unwrap().push((e.kind(), attempt)))
    .build()
    .unwrap();
    let reconnects = || {
        counter(
            "asyncworker_amqp_reconnects_total",
            &[("host", RECONNECT_HOST)],
        )
    };
    let reconnects_before = reconnects();
    let (mut stream, shutdown, readiness) = start(src, "reconnect");
    let (old, _) = next_message(&mut stream, 10).await;
    assert!(!old.redelivered());
    wait_until(Duration::from_secs(5), || async { readiness.get() })
        .await
        .expect("the route is ready");

    assert_eq!(
        close_connections_named(&name, "closed by an asyncworker test").await,
        1
    );

    // The broker requeues the unsettled message; the source reconnects and consumes again.
    let (again, errors) = next_message(&mut stream, 20).await;
    assert_eq!(again.text().unwrap(), "survivor");
    assert!(again.redelivered());
    assert!(
        errors.iter().any(|e| e.kind() == "connection_lost"),
        "the loss is reported: {errors:?}"
    );
    assert!(readiness.get(), "ready again after the reconnect");
    assert_eq!(
        reconnects() - reconnects_before,
        1,
        "one reconnect after one closed connection"
    );

    // The old delivery's channel is gone: its settlement is refused, counted, not sent (its
    // tag on the new channel would belong to another delivery).
    assert!(old.is_stale());
    assert!(matches!(
        old.settlement().settle(Action::Ack),
        Err(SettleError::ChannelClosed)
    ));
    assert_eq!(
        counter(
            "asyncworker_amqp_settle_failures_total",
            &[
                ("queue", &q),
                ("reason", "channel_closed"),
                ("action", "ack")
            ]
        ),
        1
    );
    again.settlement().settle(Action::Ack).unwrap();
    stop(stream, shutdown).await;
    // Only the settlement that reached a live channel counts as one (the channel task counts
    // it once the ack is written, possibly just after the stream ended).
    assert_counts(&conn, &q, (0, 0)).await;
    let settled = || {
        counter(
            "asyncworker_amqp_settlements_total",
            &[("queue", &q), ("action", "ack")],
        )
    };
    wait_until(Duration::from_secs(5), || async { settled() >= 1 })
        .await
        .expect("the live ack is counted");
    assert_eq!(settled(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_queue_is_reported_and_retried_while_the_others_are_consumed() {
    let conn = connect().await;
    let present = TestQueue::declare(&conn, "present").await;
    let missing = unique_name("missing");
    publish_bodies(&conn, &present, [b"here"]).await;

    let (mut stream, shutdown, readiness) = start(source(&[&present, &missing]), "partial");
    let mut errors = Vec::new();
    let msg = loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
            Ok(Some(Ok(m))) => break m,
            Ok(Some(Err(e))) => errors.push(e),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(msg.queue(), present);
    msg.settlement().settle(Action::Ack).unwrap();
    // The error names the missing queue (it may come before or after the message).
    let err = match errors.into_iter().find(|e| e.kind() == "queue_not_found") {
        Some(e) => e,
        None => loop {
            match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
                Ok(Some(Err(e))) if e.kind() == "queue_not_found" => break e,
                Ok(Some(Err(_))) => {}
                other => panic!("expected a queue_not_found error, got {other:?}"),
            }
        },
    };
    assert_eq!(err.queue(), Some(missing.as_str()));
    assert!(err.to_string().contains(&missing), "{err}");
    assert!(!readiness.get(), "not ready while a queue is not consumed");

    // The queue appears: the retry picks it up.
    declare_queue(&conn, &missing).await;
    publish_bodies(&conn, &missing, [b"late"]).await;
    let (late, _) = next_message(&mut stream, 15).await;
    assert_eq!(
        (late.queue(), late.text().unwrap()),
        (missing.as_str(), "late")
    );
    late.settlement().settle(Action::Ack).unwrap();
    wait_until(Duration::from_secs(5), || async { readiness.get() })
        .await
        .expect("ready once every queue is consumed");
    stop_drained(stream, shutdown, &conn, &[&present, &missing]).await;
    delete_queue(&conn, &missing).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeue_tail_goes_behind_the_queue_and_the_cap_dead_letters() {
    let conn = connect().await;
    let (q, dlq) = TestQueue::declare_with_dlq(&conn, "tail").await;
    let mut headers = FieldTable::default();
    headers.insert("x-custom".into(), AMQPValue::LongString("kept".into()));
    publish_with(
        &conn,
        "",
        &q,
        [b"poison"],
        BasicProperties::default()
            .with_message_id("id-1".into())
            .with_headers(headers),
    )
    .await;
    publish_bodies(&conn, &q, [b"next"]).await;

    let src = AmqpSource::builder(config().prefetch(1).build().unwrap(), [q.as_str()])
        .requeue_tail_cap(2)
        .build()
        .unwrap();
    let (mut stream, shutdown, _) = start(src, "tail");
    let (first, _) = next_message(&mut stream, 10).await;
    assert_eq!(
        (first.text().unwrap(), first.requeue_count()),
        ("poison", 0)
    );
    first.mark(Action::RequeueTail);
    first.settlement().settle_marked_or(Action::Ack).unwrap();

    // The copy went to the tail: "next" comes first.
    let (second, _) = next_message(&mut stream, 10).await;
    assert_eq!(second.text().unwrap(), "next");
    second.settlement().settle(Action::Ack).unwrap();

    for round in 1..=2u64 {
        let (copy, _) = next_message(&mut stream, 10).await;
        assert_eq!(copy.text().unwrap(), "poison");
        assert_eq!(copy.requeue_count(), round);
        assert_eq!(copy.message_id(), Some("id-1"), "properties are kept");
        assert_eq!(
            copy.header("x-custom"),
            Some(&AMQPValue::LongString("kept".into())),
            "headers are kept"
        );
        assert!(!copy.redelivered(), "a tail copy is a new message");
        copy.settlement().settle(Action::RequeueTail).unwrap();
    }
    // The third RequeueTail exceeds the cap of 2: rejected, so dead-lettered.
    assert_counts(&conn, &dlq, (1, 0)).await;
    stop_drained(stream, shutdown, &conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_body_is_rejected_not_requeued() {
    #[derive(serde::Deserialize, Debug)]
    struct Job {
        #[allow(dead_code)]
        id: u64,
    }
    let conn = connect().await;
    let (q, dlq) = TestQueue::declare_with_dlq(&conn, "poison").await;
    publish_bodies(&conn, &q, [&b"{\"id\": 1}"[..]]).await;
    publish_bodies(&conn, &q, [b"not json"]).await;

    let (mut stream, shutdown, _) = start(source(&[&q]), "poison");
    let batch = next_messages(&mut stream, 2, 10).await;
    // A framework-style handler: decode every message, fail the batch on the first error.
    let decoded: Result<Vec<Job>, _> = batch.iter().map(|m| m.json_or_reject::<Job>()).collect();
    let err = decoded.unwrap_err();
    assert!(err.to_string().contains(q.as_str()), "{err}");
    // The batch failed: the good message is requeued by policy, the bad one rejected by its
    // mark.
    let mut actions: Vec<_> = batch
        .iter()
        .map(|m| m.settlement().settle_marked_or(Action::Requeue).unwrap())
        .collect();
    actions.sort_by_key(|a| a.as_str());
    assert_eq!(actions, [Action::Reject, Action::Requeue]);
    let (again, _) = next_message(&mut stream, 10).await;
    assert_eq!(again.json_or_reject::<Job>().unwrap().id, 1);
    again.settlement().settle(Action::Ack).unwrap();
    stop(stream, shutdown).await;
    assert_counts(&conn, &dlq, (1, 0)).await;
    assert_counts(&conn, &q, (0, 0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prefetch_bounds_unsettled_deliveries() {
    let conn = connect().await;
    let q = TestQueue::declare(&conn, "prefetch").await;
    publish_n(&conn, &q, 10).await;

    let src = AmqpSource::builder(config().prefetch(3).build().unwrap(), [q.as_str()])
        .build()
        .unwrap();
    assert_eq!(src.max_in_flight(), Some(3));
    let (mut stream, shutdown, _) = start(src, "prefetch");
    let first = next_messages(&mut stream, 3, 10).await;
    // With 3 unsettled, the broker sends nothing more.
    let more = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
    assert!(more.is_err(), "a fourth delivery arrived: {more:?}");
    assert_eq!(counts(&conn, &q).await.0, 7);
    for m in &first {
        m.settlement().settle(Action::Ack).unwrap();
    }
    for _ in 0..7 {
        let (m, _) = next_message(&mut stream, 10).await;
        m.settlement().settle(Action::Ack).unwrap();
    }
    stop_drained(stream, shutdown, &conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cancels_consumers_but_keeps_channels_until_everything_is_settled() {
    let conn = connect().await;
    let q = TestQueue::declare(&conn, "shutdown").await;
    publish_n(&conn, &q, 20).await;

    let src = AmqpSource::builder(config().prefetch(5).build().unwrap(), [q.as_str()])
        .build()
        .unwrap();
    let (mut stream, shutdown, readiness) = start(src, "shutdown");
    let mut held = next_messages(&mut stream, 5, 10).await;
    shutdown.trigger();
    // The stream ends although five messages are unsettled.
    held.extend(drain_to_end(&mut stream, 10).await);
    assert_eq!(held.len(), 5);
    assert!(!readiness.get());
    // The consumer is cancelled, but the channel stays open for the held messages.
    wait_until(Duration::from_secs(5), || async {
        counts(&conn, &q).await == (15, 0)
    })
    .await
    .expect("the consumer is cancelled");
    for m in &held {
        m.settlement().settle(Action::Ack).unwrap();
    }
    drop(held);
    drop(stream);
    // The acks went through on the still-open channel: the five are gone for good (had the
    // channel closed first, they would be back in the queue).
    wait_until(Duration::from_secs(5), || async {
        queue_info("/", &q)
            .await
            .is_some_and(|i| (i.messages_ready, i.messages_unacknowledged) == (15, 0))
    })
    .await
    .expect("no unacknowledged message is left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsettled_messages_dropped_by_the_handler_are_requeued() {
    let conn = connect().await;
    let q = TestQueue::declare(&conn, "dropped").await;
    publish_bodies(&conn, &q, [b"dropped"]).await;

    let (mut stream, shutdown, _) = start(source(&[&q]), "dropped");
    let (msg, _) = next_message(&mut stream, 10).await;
    drop(msg); // Its batch was cancelled: the last clone requeues it.
    let (again, _) = next_message(&mut stream, 10).await;
    assert!(again.redelivered());
    again.settlement().settle(Action::Ack).unwrap();
    stop_drained(stream, shutdown, &conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumes_over_tls_with_verification() {
    let ca = tls_ca_cert();
    assert!(
        ca.exists(),
        "no test CA at {}: start the broker with scripts/rabbitmq.sh start",
        ca.display()
    );
    let conn = connect().await;
    let q = TestQueue::declare(&conn, "tls").await;
    publish_bodies(&conn, &q, [b"secret"]).await;

    let name = unique_name("tls-conn");
    let config = AmqpConfig::builder()
        .url(&amqps_url())
        .tls_ca_file(&ca)
        .tls_client_cert_files(tls_client_cert(), tls_client_key())
        .connection_name(&name)
        .build()
        .unwrap();
    assert!(config.tls());
    let (mut stream, shutdown, _) = start(
        AmqpSource::builder(config, [q.as_str()]).build().unwrap(),
        "tls",
    );
    let (msg, _) = next_message(&mut stream, 10).await;
    assert_eq!(msg.text().unwrap(), "secret");
    // The broker sees a TLS connection (never a silent plaintext fallback).
    let seen = connections_named(&name).await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].ssl, "{seen:?}");
    // ... and the client certificate was presented.
    let subject = seen[0].peer_cert_subject.as_deref().unwrap_or_default();
    assert!(subject.contains("asyncworker-test-client"), "{seen:?}");
    msg.settlement().settle(Action::Ack).unwrap();
    stop_drained(stream, shutdown, &conn, &[&q]).await;

    // Verification is on: without the test CA the broker's certificate is not trusted.
    let untrusted = AmqpConfig::from_url(&amqps_url())
        .unwrap()
        .connect()
        .await
        .unwrap_err();
    assert_eq!(untrusted.kind(), "connect", "{untrusted}");
    // ... and for that reason, not any connect error: the cause names the certificate.
    let chain = error_chain(&untrusted);
    assert!(
        chain.contains("invalid peer certificate") && chain.contains("UnknownIssuer"),
        "{chain}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_deleted_while_consumed_is_consumed_again_once_it_is_back() {
    let conn = connect().await;
    let q = TestQueue::declare(&conn, "deleted").await;
    publish_bodies(&conn, &q, [b"before"]).await;

    let (mut stream, shutdown, readiness) = start(source(&[&q]), "deleted");
    let (before, _) = next_message(&mut stream, 10).await;
    before.settlement().settle(Action::Ack).unwrap();
    wait_until(Duration::from_secs(5), || async { readiness.get() })
        .await
        .expect("the route is ready");

    delete_queue(&conn, &q).await;
    // The broker cancels the consumer; the source reports it, then the missing queue.
    let mut kinds = Vec::new();
    while !kinds.contains(&"queue_not_found") {
        match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
            Ok(Some(Err(e))) => {
                assert_eq!(e.queue(), Some(q.as_str()), "{e}");
                kinds.push(e.kind());
            }
            other => panic!("expected errors about {q}, got {other:?} after {kinds:?}"),
        }
    }
    assert_eq!(kinds.first(), Some(&"consumer_ended"), "{kinds:?}");
    assert!(!readiness.get());

    declare_queue(&conn, &q).await;
    publish_bodies(&conn, &q, [b"after"]).await;
    let (after, _) = next_message(&mut stream, 15).await;
    assert_eq!(after.text().unwrap(), "after");
    after.settlement().settle(Action::Ack).unwrap();
    wait_until(Duration::from_secs(5), || async { readiness.get() })
        .await
        .expect("ready again");
    stop_drained(stream, shutdown, &conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unnamed_connection_is_named_after_its_route() {
    let conn = connect().await;
    let q = TestQueue::declare(&conn, "named-route").await;
    let route = unique_name("route");
    let (mut stream, shutdown, readiness) = start(source(&[&q]), &route);
    // Polling starts the source.
    assert!(
        tokio::time::timeout(Duration::from_millis(100), stream.next())
            .await
            .is_err()
    );
    wait_until(Duration::from_secs(10), || async { readiness.get() })
        .await
        .expect("the route is ready");
    let seen = connections_named(&format!("asyncworker route {route}")).await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].vhost, "/");
    stop(stream, shutdown).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_of_a_dead_connection_still_in_the_stream_are_not_handed_out() {
    let conn = connect().await;
    let q = TestQueue::declare(&conn, "stale-buffer").await;
    publish_n(&conn, &q, 5).await;

    let name = unique_name("stale-conn");
    let src = AmqpSource::builder(
        config().connection_name(&name).build().unwrap(),
        [q.as_str()],
    )
    .build()
    .unwrap();
    let (mut stream, shutdown, _) = start(src, "stale-buffer");
    let (first, _) = next_message(&mut stream, 10).await;
    // The other four are delivered too, and wait in the stream.
    wait_until(Duration::from_secs(10), || async {
        counts(&conn, &q).await.0 == 0
    })
    .await
    .expect("all five are delivered");

    assert_eq!(
        close_connections_named(&name, "closed by an asyncworker test").await,
        1
    );
    wait_until(Duration::from_secs(10), || async { first.is_stale() })
        .await
        .expect("the source notices the loss");

    // What comes next is the broker's redelivery of all five, not the four stale copies.
    let mut bodies = Vec::new();
    while bodies.len() < 5 {
        let (m, _) = next_message(&mut stream, 20).await;
        assert!(m.redelivered(), "a stale delivery was handed out: {m:?}");
        assert!(!m.is_stale());
        bodies.push(m.text().unwrap().to_owned());
        m.settlement().settle(Action::Ack).unwrap();
    }
    assert_published_n(bodies, 5);
    assert!(matches!(
        first.settlement().settle(Action::Ack),
        Err(SettleError::ChannelClosed)
    ));
    stop_drained(stream, shutdown, &conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesced_acks_never_cover_an_unsettled_delivery() {
    let conn = connect().await;
    let q = TestQueue::declare(&conn, "coalesce").await;
    publish_n(&conn, &q, 6).await;

    let (mut stream, shutdown, _) = start(source(&[&q]), "coalesce");
    let batch = next_messages(&mut stream, 6, 10).await;
    // Hold the oldest and one in the middle; ack the others in one go (one pass of the
    // channel task): a `multiple` ack up to the newest would ack the held ones too.
    let (held, rest): (Vec<_>, Vec<_>) = batch
        .into_iter()
        .partition(|m| matches!(m.text().unwrap(), "message-0" | "message-3"));
    for m in &rest {
        m.settlement().settle(Action::Ack).unwrap();
    }
    for m in &held {
        m.settlement().settle(Action::Requeue).unwrap();
    }
    // Both come back (had they been acked, the requeue would have closed the channel and
    // they would be gone).
    let again = next_messages(&mut stream, 2, 10).await;
    let mut bodies: Vec<_> = again.iter().map(|m| m.text().unwrap().to_owned()).collect();
    bodies.sort();
    assert_eq!(bodies, ["message-0", "message-3"]);
    for m in &again {
        assert!(m.redelivered());
        m.settlement().settle(Action::Ack).unwrap();
    }
    stop_drained(stream, shutdown, &conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_network_is_detected_by_heartbeats_and_the_source_comes_back() {
    let conn = connect().await;
    let q = TestQueue::declare(&conn, "frozen").await;
    publish_bodies(&conn, &q, [b"through the proxy"]).await;

    let proxy = TcpProxy::to_broker().await;
    let config = AmqpConfig::builder()
        .url(&proxy.url())
        .heartbeat(Duration::from_secs(1))
        .connection_timeout(Duration::from_secs(1))
        .reconnect(
            Backoff::builder()
                .initial_delay(Duration::from_millis(100))
                .max_delay(Duration::from_millis(400))
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let seen = calls.clone();
    let src = AmqpSource::builder(config, [q.as_str()])
        .on_connection_error(move |e, attempt| seen.lock().unwrap().push((e.kind(), attempt)))
        .build()
        .unwrap();
    let (mut stream, shutdown, readiness) = start(src, "frozen");
    let (old, _) = next_message(&mut stream, 10).await;
    wait_until(Duration::from_secs(5), || async { readiness.get() })
        .await
        .expect("the route is ready");

    // Nothing moves any more: no close frame, no reset. Only the heartbeat can tell.
    proxy.freeze();
    wait_until(Duration::from_secs(20), || async { old.is_stale() })
        .await
        .expect("the loss is noticed");
    assert!(!readiness.get());
    wait_until(Duration::from_secs(20), || async {
        calls.lock().unwrap().len() >= 2
    })
    .await
    .expect("reconnect attempts fail while frozen");
    proxy.resume();

    let (again, errors) = next_message(&mut stream, 30).await;
    assert_eq!(again.text().unwrap(), "through the proxy");
    assert!(again.redelivered());
    assert!(
        errors.iter().any(|e| e.kind() == "connection_lost"),
        "{errors:?}"
    );
    let attempts: Vec<_> = calls.lock().unwrap().iter().map(|(_, a)| *a).collect();
    assert_eq!(attempts, (1..=attempts.len() as u32).collect::<Vec<_>>());
    assert!(matches!(
        old.settlement().settle(Action::Ack),
        Err(SettleError::ChannelClosed)
    ));
    again.settlement().settle(Action::Ack).unwrap();
    wait_until(Duration::from_secs(5), || async { readiness.get() })
        .await
        .expect("ready again");
    stop_drained(stream, shutdown, &conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prefetch_is_applied_again_after_a_reconnect() {
    let conn = connect().await;
    let q = TestQueue::declare(&conn, "qos-again").await;
    publish_n(&conn, &q, 6).await;

    let name = unique_name("qos-conn");
    let src = AmqpSource::builder(
        config().prefetch(2).connection_name(&name).build().unwrap(),
        [q.as_str()],
    )
    .build()
    .unwrap();
    let (mut stream, shutdown, _) = start(src, "qos-again");
    let before = next_messages(&mut stream, 2, 10).await;
    assert_eq!(
        close_connections_named(&name, "closed by an asyncworker test").await,
        1
    );
    wait_until(Duration::from_secs(10), || async { before[0].is_stale() })
        .await
        .expect("the loss is noticed");

    // On the new connection, still only two unsettled deliveries at a time.
    let after = next_messages(&mut stream, 2, 20).await;
    let more = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
    assert!(more.is_err(), "a third delivery arrived: {more:?}");
    for m in &after {
        m.settlement().settle(Action::Ack).unwrap();
    }
    for _ in 0..4 {
        let (m, _) = next_message(&mut stream, 10).await;
        m.settlement().settle(Action::Ack).unwrap();
    }
    drop(before);
    stop_drained(stream, shutdown, &conn, &[&q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_vhost_is_a_clear_error() {
    let vhost = unique_name("no-such-vhost");
    let config = config().max_reconnect_attempts(1).build().unwrap();
    let src = AmqpSource::builder(config, ["q"])
        .vhost(vhost.as_str())
        .build()
        .unwrap();
    let (stream, _shutdown, _) = start(src, "no-vhost");
    let errors: Vec<_> = tokio::time::timeout(Duration::from_secs(10), stream.collect::<Vec<_>>())
        .await
        .expect("the stream ends after its one attempt")
        .into_iter()
        .map(|item| item.expect_err("no message"))
        .collect();
    let kinds: Vec<_> = errors.iter().map(AmqpError::kind).collect();
    assert_eq!(kinds, ["vhost_refused", "gave_up"]);
    let text = errors[0].to_string();
    assert!(
        text.contains(&vhost) && text.contains("virtual host"),
        "{text}"
    );
}

/// An ack held back by the coalescing window when the broker cancels the consumer (here: the
/// queue is deleted) while the channel still works is sent, not dropped uncounted.
///
/// Deterministic on a current-thread runtime: the ack request is queued and the queue deleted
/// (from another thread) while this thread is blocked, and lapin's I/O thread receives the
/// cancellation meanwhile; when the channel task runs again it takes the ack first (requests
/// come before deliveries), holds it back (9 of the prefetch of 10 are unsettled), and then
/// finds its consumer ended, well within the 5 ms window.
#[tokio::test]
async fn acks_held_back_when_the_broker_cancels_the_consumer_are_sent() {
    install_metrics();
    let conn = connect().await;
    let q = unique_name("cancelled-acks");
    declare_queue(&conn, &q).await;
    publish_n(&conn, &q, 10).await;
    let src = AmqpSource::builder(config().prefetch(10).build().unwrap(), [q.as_str()])
        .build()
        .unwrap();
    let (mut stream, shutdown, _) = start(src, "cancelled-acks");
    let batch = next_messages(&mut stream, 10, 10).await;

    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("asyncworker_amqp=debug"))
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _log = tracing::subscriber::set_default(subscriber);

    batch[0].settlement().settle(Action::Ack).unwrap();
    let name = q.clone();
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let conn = connect().await;
                delete_queue(&conn, &name).await;
                conn.close(200, "OK".into()).await.unwrap();
            });
    })
    .join()
    .unwrap();
    // lapin's I/O thread takes the broker's basic.cancel meanwhile.
    std::thread::sleep(Duration::from_millis(300));

    match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
        Ok(Some(Err(e))) => assert_eq!(e.kind(), "consumer_ended", "{e}"),
        other => panic!("expected the consumer to end, got {other:?}"),
    }
    // The channel task flushes before closing its channel.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logs = captured.text();
    let failed = counter(
        "asyncworker_amqp_settle_failures_total",
        &[("queue", q.as_str()), ("action", "ack")],
    );
    assert_eq!(
        failed, 0,
        "the channel still worked: nothing to count\n{logs}"
    );
    assert!(
        logs.lines().any(|line| line
            .contains("acknowledgements held back sent before closing the channel")
            && line.contains(" acks=1 ")),
        "the held-back ack was neither sent nor counted:\n{logs}"
    );
    drop(batch);
    shutdown.trigger();
    drop(stream);
}

/// The 5 ms coalescing timer is not starved by a steady stream of settlement requests: the
/// channel task reads a delivery only when no request waits, and checks the timer before it,
/// so requests can win only until the handed-out deliveries run out. Here one ack is held
/// back (one delivery of a prefetch of 10 stays unsettled) while another message is requeued
/// and redelivered without pause; the ack reaches the broker while that goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_stream_of_settlements_does_not_starve_the_ack_timer() {
    let conn = connect().await;
    let q = TestQueue::declare(&conn, "steady").await;
    publish_bodies(&conn, &q, ["acked", "bouncing"]).await;
    let src = AmqpSource::builder(config().prefetch(10).build().unwrap(), [q.as_str()])
        .build()
        .unwrap();
    let (mut stream, shutdown, _) = start(src, "steady");
    let first = next_messages(&mut stream, 2, 10).await;
    let (acked, bouncing): (Vec<_>, Vec<_>) = first
        .into_iter()
        .partition(|m| m.text().unwrap() == "acked");
    acked[0].settlement().settle(Action::Ack).unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let stopping = stop.clone();
    let bounce = tokio::spawn(async move {
        let mut next = bouncing.into_iter().next().unwrap();
        let mut bounces = 0u64;
        loop {
            next.settlement().settle(Action::Requeue).unwrap();
            bounces += 1;
            let (m, _) = next_message(&mut stream, 10).await;
            if stopping.is_cancelled() {
                return (stream, m, bounces);
            }
            next = m;
        }
    });
    let seen = std::cell::Cell::new(None);
    let acked_while_bouncing = wait_until(Duration::from_secs(20), || async {
        let info = queue_info("/", &q).await.expect("the queue is listed");
        seen.set(Some(info.messages_ready + info.messages_unacknowledged));
        info.messages_ready + info.messages_unacknowledged == 1
    })
    .await
    .held();
    stop.cancel();
    let (stream, last, bounces) = bounce.await.unwrap();
    assert!(
        acked_while_bouncing,
        "the held ack never reached the broker ({:?} messages left) during {bounces} requeues",
        seen.get()
    );
    last.settlement().settle(Action::Ack).unwrap();
    stop_drained(stream, shutdown, &conn, &[&q]).await;
}

/// `ASYNCWORKER_AMQP_DEFAULT_HEARTBEAT` and `..._PREFETCH_COUNT`, read through the
/// environment-lookup path, reach the broker: the connection's negotiated heartbeat is the
/// variable's, and the consumer gets no more unacked deliveries than its prefetch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_heartbeat_and_prefetch_variables_reach_the_broker() {
    let settings = asyncworker_amqp::AmqpSettings::from_lookup(|name| match name {
        "ASYNCWORKER_AMQP_DEFAULT_HEARTBEAT" => Some("9".to_owned()),
        "ASYNCWORKER_AMQP_DEFAULT_PREFETCH_COUNT" => Some("3".to_owned()),
        _ => None,
    })
    .expect("valid settings");
    let conn = connect().await;
    let q = TestQueue::declare(&conn, "env-heartbeat").await;
    publish_n(&conn, &q, 5).await;
    let name = unique_name("env-heartbeat");
    let config = asyncworker_amqp::AmqpConfigBuilder::with_settings(&settings)
        .url(&amqp_url())
        .connection_name(&name)
        .build()
        .unwrap();
    let (mut stream, shutdown, _) = start(
        AmqpSource::builder(config, [q.as_str()]).build().unwrap(),
        "env-heartbeat",
    );
    let first = next_messages(&mut stream, 3, 10).await;
    let seen = connections_named(&name).await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        seen[0].timeout, 9,
        "the heartbeat from the variable: {seen:?}"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(500), stream.next())
            .await
            .is_err(),
        "a 4th delivery came past the prefetch of 3"
    );
    for m in &first {
        m.settlement().settle(Action::Ack).unwrap();
    }
    let rest = next_messages(&mut stream, 2, 10).await;
    for m in &rest {
        m.settlement().settle(Action::Ack).unwrap();
    }
    stop_drained(stream, shutdown, &conn, &[&q]).await;
}

/// An ack held back by the coalescing window when the connection is lost cannot be sent: it
/// is counted as a failed settlement (the broker redelivers the message), not dropped
/// silently. Deterministic as its sibling above: the ack is queued and the connection closed
/// (by the broker, from another thread) while this current-thread runtime is blocked.
#[tokio::test]
async fn acks_held_back_when_the_connection_is_lost_are_counted() {
    install_metrics();
    let conn = connect().await;
    let q = TestQueue::declare(&conn, "lost-acks").await;
    publish_n(&conn, &q, 10).await;
    let name = unique_name("lost-acks");
    let src = AmqpSource::builder(
        config()
            .prefetch(10)
            .connection_name(&name)
            .build()
            .unwrap(),
        [q.as_str()],
    )
    .build()
    .unwrap();
    let (mut stream, shutdown, _) = start(src, "lost-acks");
    let batch = next_messages(&mut stream, 10, 10).await;
    let failed = || {
        counter(
            "asyncworker_amqp_settle_failures_total",
            &[
                ("queue", q.as_str()),
                ("action", "ack"),
                ("reason", "channel_closed"),
            ],
        )
    };
    assert_eq!(failed(), 0);

    batch[0].settlement().settle(Action::Ack).unwrap();
    let closing = name.clone();
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                assert_eq!(
                    close_connections_named(&closing, "test: connection lost").await,
                    1
                );
            });
    })
    .join()
    .unwrap();
    // lapin's I/O thread learns of the close meanwhile.
    std::thread::sleep(Duration::from_millis(300));

    wait_until(Duration::from_secs(10), || async { failed() == 1 })
        .await
        .expect("the held-back ack to be counted as not sent");
    drop(batch);
    shutdown.trigger();
    drop(stream);
}
