//! The consuming half against a real RabbitMQ (start it with `scripts/rabbitmq.sh start`):
//! acks, rejects, requeues, multi-queue routes, vhosts, named connections, heartbeat, bad
//! credentials, reconnects, missing queues, RequeueTail, shutdown and TLS.

mod broker;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use asyncworker_amqp::lapin::BasicProperties;
use asyncworker_amqp::lapin::types::{AMQPValue, FieldTable};
use asyncworker_amqp::{AmqpConfig, AmqpError, AmqpSource, AmqpStream, Backoff, Connections};
use asyncworker_core::{Action, Message, Readiness, SettleError, Shutdown, Source, SourceContext};
use broker::*;
use futures::StreamExt;

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

/// Shut the source down and wait for its stream to end; returns messages still handed out.
async fn stop(mut stream: AmqpStream, shutdown: Shutdown) {
    shutdown.trigger();
    let left = drain_to_end(&mut stream, 10).await;
    drop(left);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_messages_leave_the_queue() {
    let (_conn, ch) = admin("/").await;
    let q = unique("ack");
    declare(&ch, &q, None).await;
    publish_n(&ch, &q, "m", 50).await;

    let (mut stream, shutdown, readiness) = start(source(&[&q]), "ack");
    let msgs = next_messages(&mut stream, 50, 10).await;
    assert!(readiness.get(), "a consuming route is ready");
    let mut bodies: Vec<_> = msgs.iter().map(|m| m.text().unwrap().to_owned()).collect();
    bodies.sort();
    let mut expected: Vec<_> = (0..50).map(|i| format!("m-{i}")).collect();
    expected.sort();
    assert_eq!(bodies, expected);
    for m in &msgs {
        assert_eq!(m.queue(), &q);
        assert!(!m.redelivered());
        m.settlement().settle_marked_or(Action::Ack).unwrap();
    }
    // Closing the channels would requeue anything not acked: after the shutdown the queue
    // must be empty, with no consumer left.
    stop(stream, shutdown).await;
    assert!(!readiness.get());
    assert_eq!(counts(&ch, &q).await, (0, 0));
    let line = rabbitmqctl(&[
        "list_queues",
        "name",
        "messages_ready",
        "messages_unacknowledged",
    ]);
    let row = line
        .lines()
        .find(|l| l.starts_with(&format!("{q}\t")))
        .unwrap();
    assert_eq!(row, format!("{q}\t0\t0"));
    delete(&ch, &q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeued_message_comes_back_redelivered() {
    let (_conn, ch) = admin("/").await;
    let q = unique("requeue");
    declare(&ch, &q, None).await;
    publish(&ch, &q, b"again", BasicProperties::default()).await;

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
    stop(stream, shutdown).await;
    assert_eq!(counts(&ch, &q).await, (0, 0));
    delete(&ch, &q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_messages_are_dead_lettered_and_mixed_marks_apply() {
    let (_conn, ch) = admin("/").await;
    let q = unique("mixed");
    let dlq = unique("mixed-dlq");
    declare(&ch, &dlq, None).await;
    declare(&ch, &q, Some(&dlq)).await;
    for body in ["accept", "reject", "untouched"] {
        publish(&ch, &q, body.as_bytes(), BasicProperties::default()).await;
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

    eventually(10, "the rejected message reaches the DLQ", || async {
        counts(&ch, &dlq).await.0 == 1
    })
    .await;
    assert_eq!(counts(&ch, &q).await, (0, 0));
    delete(&ch, &q).await;
    delete(&ch, &dlq).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_route_consumes_two_queues() {
    let (_conn, ch) = admin("/").await;
    let (q1, q2) = (unique("two-a"), unique("two-b"));
    declare(&ch, &q1, None).await;
    declare(&ch, &q2, None).await;
    publish_n(&ch, &q1, "a", 3).await;
    publish_n(&ch, &q2, "b", 3).await;

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
    stop(stream, shutdown).await;
    assert_eq!(counts(&ch, &q1).await, (0, 0));
    assert_eq!(counts(&ch, &q2).await, (0, 0));
    delete(&ch, &q1).await;
    delete(&ch, &q2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_consumes_on_a_non_default_vhost() {
    let vhost = unique("vhost");
    rabbitmqctl(&["add_vhost", &vhost]);
    rabbitmqctl(&["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"]);
    let result = async {
        let (_conn, ch) = admin(&vhost).await;
        let q = unique("vq");
        declare(&ch, &q, None).await;
        publish(&ch, &q, b"in a vhost", BasicProperties::default()).await;

        let src = AmqpSource::builder(config().build().unwrap(), [q.as_str()])
            .vhost(vhost.as_str())
            .build()
            .unwrap();
        assert_eq!(src.vhost(), vhost);
        let (mut stream, shutdown, _) = start(src, "vhost");
        let (msg, _) = next_message(&mut stream, 10).await;
        assert_eq!(msg.text().unwrap(), "in a vhost");
        msg.settlement().settle(Action::Ack).unwrap();
        stop(stream, shutdown).await;
        assert_eq!(counts(&ch, &q).await, (0, 0));
    }
    .await;
    rabbitmqctl(&["delete_vhost", &vhost]);
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_pick_named_connections_and_the_heartbeat_reaches_the_broker() {
    let (_conn, ch) = admin("/").await;
    let (qa, qb) = (unique("named-a"), unique("named-b"));
    declare(&ch, &qa, None).await;
    declare(&ch, &qb, None).await;
    publish(&ch, &qa, b"for a", BasicProperties::default()).await;
    publish(&ch, &qb, b"for b", BasicProperties::default()).await;

    let (name_a, name_b) = (unique("conn-a"), unique("conn-b"));
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
    let line_a = connection_line(&name_a).expect("connection a is listed");
    let line_b = connection_line(&name_b).expect("connection b is listed");
    assert_eq!(line_a.split('\t').nth(1), Some("7"), "{line_a}");
    assert_eq!(line_b.split('\t').nth(1), Some("11"), "{line_b}");

    ma.settlement().settle(Action::Ack).unwrap();
    mb.settlement().settle(Action::Ack).unwrap();
    stop(sa, shut_a).await;
    stop(sb, shut_b).await;
    assert!(
        connection_line(&name_a).is_none(),
        "the connection is closed on shutdown"
    );
    delete(&ch, &qa).await;
    delete(&ch, &qb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_gives_a_clear_error_and_bounded_retries_with_backoff() {
    let secret = "definitely-not-the-password";
    let config = AmqpConfig::builder()
        .url(&url())
        .password(secret)
        .reconnect(
            Backoff::default()
                .initial_delay(Duration::from_millis(200))
                .max_delay(Duration::from_secs(1))
                .jitter(0.0)
                .max_attempts(3),
        )
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
    assert!(first.contains("127.0.0.1:5672"), "{first}");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_connection_reconnects_reconsumes_and_stale_settlements_are_counted() {
    install_metrics();
    let (_conn, ch) = admin("/").await;
    let q = unique("reconnect");
    declare(&ch, &q, None).await;
    publish(&ch, &q, b"survivor", BasicProperties::default()).await;

    let name = unique("reconnecting");
    let calls = Arc::new(Mutex::new(Vec::new()));
    let seen = calls.clone();
    let src = AmqpSource::builder(
        config().connection_name(&name).build().unwrap(),
        [q.as_str()],
    )
    .on_connection_error(move |e, attempt| seen.lock().unwrap().push((e.kind(), attempt)))
    .build()
    .unwrap();
    let reconnects_before = counter(
        "asyncworker_amqp_reconnects_total",
        &[("host", "127.0.0.1")],
    );
    let (mut stream, shutdown, readiness) = start(src, "reconnect");
    let (old, _) = next_message(&mut stream, 10).await;
    assert!(!old.redelivered());
    eventually(5, "the route is ready", || async { readiness.get() }).await;

    close_connection(&name);

    // The broker requeues the unsettled message; the source reconnects and consumes again.
    let (again, errors) = next_message(&mut stream, 20).await;
    assert_eq!(again.text().unwrap(), "survivor");
    assert!(again.redelivered());
    assert!(
        errors.iter().any(|e| e.kind() == "connection_lost"),
        "the loss is reported: {errors:?}"
    );
    assert!(readiness.get(), "ready again after the reconnect");
    assert!(
        counter(
            "asyncworker_amqp_reconnects_total",
            &[("host", "127.0.0.1")]
        ) > reconnects_before
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
    assert_eq!(counts(&ch, &q).await, (0, 0));
    delete(&ch, &q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_queue_is_reported_and_retried_while_the_others_are_consumed() {
    let (_conn, ch) = admin("/").await;
    let present = unique("present");
    let missing = unique("missing");
    declare(&ch, &present, None).await;
    publish(&ch, &present, b"here", BasicProperties::default()).await;

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
    declare(&ch, &missing, None).await;
    publish(&ch, &missing, b"late", BasicProperties::default()).await;
    let (late, _) = next_message(&mut stream, 15).await;
    assert_eq!(
        (late.queue(), late.text().unwrap()),
        (missing.as_str(), "late")
    );
    late.settlement().settle(Action::Ack).unwrap();
    eventually(5, "ready once every queue is consumed", || async {
        readiness.get()
    })
    .await;
    stop(stream, shutdown).await;
    assert_eq!(counts(&ch, &present).await, (0, 0));
    assert_eq!(counts(&ch, &missing).await, (0, 0));
    delete(&ch, &present).await;
    delete(&ch, &missing).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeue_tail_goes_behind_the_queue_and_the_cap_dead_letters() {
    let (_conn, ch) = admin("/").await;
    let q = unique("tail");
    let dlq = unique("tail-dlq");
    declare(&ch, &dlq, None).await;
    declare(&ch, &q, Some(&dlq)).await;
    let mut headers = FieldTable::default();
    headers.insert("x-custom".into(), AMQPValue::LongString("kept".into()));
    publish(
        &ch,
        &q,
        b"poison",
        BasicProperties::default()
            .with_message_id("id-1".into())
            .with_headers(headers),
    )
    .await;
    publish(&ch, &q, b"next", BasicProperties::default()).await;

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
    eventually(10, "the capped message reaches the DLQ", || async {
        counts(&ch, &dlq).await.0 == 1
    })
    .await;
    stop(stream, shutdown).await;
    assert_eq!(counts(&ch, &q).await, (0, 0));
    delete(&ch, &q).await;
    delete(&ch, &dlq).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_body_is_rejected_not_requeued() {
    #[derive(serde::Deserialize, Debug)]
    struct Job {
        #[allow(dead_code)]
        id: u64,
    }
    let (_conn, ch) = admin("/").await;
    let q = unique("poison");
    let dlq = unique("poison-dlq");
    declare(&ch, &dlq, None).await;
    declare(&ch, &q, Some(&dlq)).await;
    publish(&ch, &q, b"{\"id\": 1}", BasicProperties::default()).await;
    publish(&ch, &q, b"not json", BasicProperties::default()).await;

    let (mut stream, shutdown, _) = start(source(&[&q]), "poison");
    let batch = next_messages(&mut stream, 2, 10).await;
    // A framework-style handler: decode every message, fail the batch on the first error.
    let decoded: Result<Vec<Job>, _> = batch.iter().map(|m| m.decode_json::<Job>()).collect();
    let err = decoded.unwrap_err();
    assert!(err.to_string().contains(&q), "{err}");
    // The batch failed: the good message is requeued by policy, the bad one rejected by its
    // mark.
    let mut actions: Vec<_> = batch
        .iter()
        .map(|m| m.settlement().settle_marked_or(Action::Requeue).unwrap())
        .collect();
    actions.sort_by_key(|a| a.as_str());
    assert_eq!(actions, [Action::Reject, Action::Requeue]);
    let (again, _) = next_message(&mut stream, 10).await;
    assert_eq!(again.decode_json::<Job>().unwrap().id, 1);
    again.settlement().settle(Action::Ack).unwrap();
    stop(stream, shutdown).await;
    eventually(10, "the poison message reaches the DLQ", || async {
        counts(&ch, &dlq).await.0 == 1
    })
    .await;
    assert_eq!(counts(&ch, &q).await, (0, 0));
    delete(&ch, &q).await;
    delete(&ch, &dlq).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prefetch_bounds_unsettled_deliveries() {
    let (_conn, ch) = admin("/").await;
    let q = unique("prefetch");
    declare(&ch, &q, None).await;
    publish_n(&ch, &q, "p", 10).await;

    let src = AmqpSource::builder(config().prefetch(3).build().unwrap(), [q.as_str()])
        .build()
        .unwrap();
    assert_eq!(src.max_in_flight(), Some(3));
    let (mut stream, shutdown, _) = start(src, "prefetch");
    let first = next_messages(&mut stream, 3, 10).await;
    // With 3 unsettled, the broker sends nothing more.
    let more = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
    assert!(more.is_err(), "a fourth delivery arrived: {more:?}");
    assert_eq!(counts(&ch, &q).await.0, 7);
    for m in &first {
        m.settlement().settle(Action::Ack).unwrap();
    }
    for _ in 0..7 {
        let (m, _) = next_message(&mut stream, 10).await;
        m.settlement().settle(Action::Ack).unwrap();
    }
    stop(stream, shutdown).await;
    assert_eq!(counts(&ch, &q).await, (0, 0));
    delete(&ch, &q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cancels_consumers_but_keeps_channels_until_everything_is_settled() {
    let (_conn, ch) = admin("/").await;
    let q = unique("shutdown");
    declare(&ch, &q, None).await;
    publish_n(&ch, &q, "s", 20).await;

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
    eventually(5, "the consumer is cancelled", || async {
        counts(&ch, &q).await == (15, 0)
    })
    .await;
    for m in &held {
        m.settlement().settle(Action::Ack).unwrap();
    }
    drop(held);
    drop(stream);
    // The acks went through on the still-open channel: the five are gone for good (had the
    // channel closed first, they would be back in the queue).
    eventually(5, "no unacknowledged message is left", || async {
        let out = rabbitmqctl(&[
            "list_queues",
            "name",
            "messages_ready",
            "messages_unacknowledged",
        ]);
        out.lines().any(|l| l == format!("{q}\t15\t0"))
    })
    .await;
    delete(&ch, &q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsettled_messages_dropped_by_the_handler_are_requeued() {
    let (_conn, ch) = admin("/").await;
    let q = unique("dropped");
    declare(&ch, &q, None).await;
    publish(&ch, &q, b"dropped", BasicProperties::default()).await;

    let (mut stream, shutdown, _) = start(source(&[&q]), "dropped");
    let (msg, _) = next_message(&mut stream, 10).await;
    drop(msg); // Its batch was cancelled: the last clone requeues it.
    let (again, _) = next_message(&mut stream, 10).await;
    assert!(again.redelivered());
    again.settlement().settle(Action::Ack).unwrap();
    stop(stream, shutdown).await;
    assert_eq!(counts(&ch, &q).await, (0, 0));
    delete(&ch, &q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumes_over_tls_with_verification() {
    let dir = std::env::var("ASYNCWORKER_TEST_TLS_DIR")
        .unwrap_or_else(|_| "/tmp/asyncworker-rabbitmq/tls".to_owned());
    let ca = format!("{dir}/ca.pem");
    assert!(
        std::path::Path::new(&ca).exists(),
        "no test CA at {ca}: start the broker with scripts/rabbitmq.sh start"
    );
    let (_conn, ch) = admin("/").await;
    let q = unique("tls");
    declare(&ch, &q, None).await;
    publish(&ch, &q, b"secret", BasicProperties::default()).await;

    let config = AmqpConfig::builder()
        .url("amqps://guest:guest@localhost:5671/%2f")
        .tls_ca_file(&ca)
        .tls_client_cert_files(format!("{dir}/client.pem"), format!("{dir}/client.key"))
        .build()
        .unwrap();
    let (mut stream, shutdown, _) = start(
        AmqpSource::builder(config, [q.as_str()]).build().unwrap(),
        "tls",
    );
    let (msg, _) = next_message(&mut stream, 10).await;
    assert_eq!(msg.text().unwrap(), "secret");
    msg.settlement().settle(Action::Ack).unwrap();
    stop(stream, shutdown).await;
    assert_eq!(counts(&ch, &q).await, (0, 0));

    // Verification is on: without the test CA the broker's certificate is not trusted.
    let untrusted = AmqpConfig::from_url("amqps://guest:guest@localhost:5671/%2f")
        .unwrap()
        .connect()
        .await
        .unwrap_err();
    assert_eq!(untrusted.kind(), "connect", "{untrusted}");
    delete(&ch, &q).await;
}
