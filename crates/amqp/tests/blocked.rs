//! A memory alarm blocks the source's connection while it publishes a RequeueTail copy: the
//! blocked and unblocked events are counted, and once the alarm clears the copy goes through
//! and nothing is lost. Its own test binary, so the alarm (broker-wide) stalls no other test of
//! this crate's consume suite.

mod support;

use std::time::Duration;

use asyncworker_amqp::AmqpSource;
use asyncworker_core::{Action, Message, Readiness, Shutdown, Source, SourceContext};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_and_unblocked_connections_are_counted_and_requeue_tail_survives_the_block() {
    init_tracing();
    install_metrics();
    let conn = connect().await;
    let q = TestQueue::declare(&conn, "blocked").await;
    publish_bodies(&conn, &q, [b"held"]).await;

    let host = config().build().unwrap().host().to_owned();
    let route = unique_name("route");
    let source = AmqpSource::builder(config().build().unwrap(), [q.as_str()])
        .build()
        .unwrap();
    let shutdown = Shutdown::new();
    let cx =
        SourceContext::new(route.clone(), shutdown.clone()).with_readiness(Readiness::default());
    let mut stream = source.into_stream(cx);
    let (msg, _) = next_message(&mut stream, 10).await;
    let blocked_before = counter(
        "asyncworker_amqp_connection_blocked_total",
        &[("host", &host)],
    );

    let alarm = MemoryAlarm::raise().await;
    // Publishing the copy on the source's connection makes the broker block it.
    msg.mark(Action::RequeueTail);
    msg.settlement().settle_marked_or(Action::Ack).unwrap();
    let blocked = wait_until(Duration::from_secs(10), || async {
        counter(
            "asyncworker_amqp_connection_blocked_total",
            &[("host", &host)],
        ) > blocked_before
    })
    .await
    .held();
    drop(alarm);
    assert!(blocked, "the connection.blocked event was not counted");

    // Unblocked: the copy is confirmed, the original acked, the copy delivered.
    let (copy, _) = next_message(&mut stream, 20).await;
    assert_eq!(copy.text().unwrap(), "held");
    assert_eq!(copy.requeue_count(), 1);
    copy.settlement().settle(Action::Ack).unwrap();
    shutdown.trigger();
    drain_to_end(&mut stream, 10).await;
    let counts = queue_counts(&conn, &q).await.unwrap();
    assert_eq!((counts.messages, counts.consumers), (0, 0));
}
