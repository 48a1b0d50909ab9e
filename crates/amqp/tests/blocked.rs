//! Memory alarms (broker-wide): a RequeueTail copy published during one blocks the copies'
//! connection, not the route's consuming one; the blocked and unblocked events are counted,
//! and once the alarm clears the copy goes through and nothing is lost. Its own test binary,
//! so the alarm stalls no other test of this crate's suites, and its tests take turns
//! ([`ALARM`]): do not run it beside other broker tests.

mod support;

use std::time::Duration;

use asyncworker_amqp::{AmqpSource, PublishError, Publisher};
use asyncworker_core::{Action, Message, Readiness, Shutdown, Source, SourceContext};
use support::*;

/// The tests of this binary take turns: each raises the broker-wide alarm.
static ALARM: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Wait until the alarm blocks publishers: a probe publish to `queue` times out on a blocked
/// connection. Returns the probe publisher (its message arrives once the alarm clears).
async fn until_publishers_are_blocked(queue: &str) -> Publisher {
    let probe = Publisher::builder()
        .timeout(Duration::from_millis(500))
        .connect(&config().build().unwrap())
        .await
        .expect("probe publisher");
    for _ in 0..20 {
        match probe.publish_bytes("", queue, "probe").await {
            Err(PublishError::Timeout { blocked: true, .. }) => return probe,
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    panic!("the memory alarm never blocked a publisher");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_and_unblocked_connections_are_counted_and_requeue_tail_survives_the_block() {
    let _turn = ALARM.lock().await;
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
    let unblocked = || {
        counter(
            "asyncworker_amqp_connection_unblocked_total",
            &[("host", &host)],
        )
    };
    let unblocked_before = unblocked();

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
    wait_until(Duration::from_secs(10), || async {
        unblocked() > unblocked_before
    })
    .await
    .expect("the connection.unblocked event to be counted");

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

/// A RequeueTail copy published during an alarm blocks the copies' connection only: the
/// acks of the route's other queue still reach the broker. (On the consuming connection, the
/// blocked connection held back every ack of the route until the alarm cleared.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_published_during_an_alarm_does_not_hold_back_the_routes_acks() {
    let _turn = ALARM.lock().await;
    init_tracing();
    install_metrics();
    let conn = connect().await;
    let first = TestQueue::declare(&conn, "alarm-tail").await;
    let second = TestQueue::declare(&conn, "alarm-acks").await;
    let probes = TestQueue::declare(&conn, "alarm-probe").await;
    publish_bodies(&conn, &first, ["copied"]).await;
    publish_n(&conn, &second, 10).await;

    let host = config().build().unwrap().host().to_owned();
    let source = AmqpSource::builder(
        config().prefetch(10).build().unwrap(),
        [first.as_str(), second.as_str()],
    )
    .build()
    .unwrap();
    let shutdown = Shutdown::new();
    let cx = SourceContext::new(unique_name("route"), shutdown.clone())
        .with_readiness(Readiness::default());
    let mut stream = source.into_stream(cx);
    let messages = next_messages(&mut stream, 11, 10).await;
    let (copied, acked): (Vec<_>, Vec<_>) = messages
        .into_iter()
        .partition(|m| m.queue() == first.as_str());
    assert_eq!((copied.len(), acked.len()), (1, 10));
    let blocked_before = counter(
        "asyncworker_amqp_connection_blocked_total",
        &[("host", &host)],
    );

    let alarm = MemoryAlarm::raise().await;
    let probe = until_publishers_are_blocked(&probes).await;
    // The copy is published during the alarm, and its connection blocked.
    copied[0].mark(Action::RequeueTail);
    copied[0]
        .settlement()
        .settle_marked_or(Action::Ack)
        .unwrap();
    wait_until(Duration::from_secs(10), || async {
        counter(
            "asyncworker_amqp_connection_blocked_total",
            &[("host", &host)],
        ) > blocked_before
    })
    .await
    .expect("the copy's publish to be blocked");
    for m in &acked {
        m.settlement().settle(Action::Ack).unwrap();
    }
    let seen = std::cell::Cell::new(None);
    let acks_arrived = wait_until(Duration::from_secs(5), || async {
        let info = queue_info("/", &second).await.expect("the queue is listed");
        seen.set(Some(info.messages_unacknowledged));
        info.messages_unacknowledged == 0
    })
    .await
    .held();
    drop(alarm);
    assert!(
        acks_arrived,
        "{:?} of the second queue's 10 acked messages still unacknowledged during the alarm",
        seen.get()
    );

    // Once the alarm clears, the copy goes through and the original is acked.
    let (copy, _) = next_message(&mut stream, 40).await;
    assert_eq!(copy.text().unwrap(), "copied");
    assert_eq!(copy.requeue_count(), 1);
    copy.settlement().settle(Action::Ack).unwrap();
    let _ = probe.close().await;
    shutdown.trigger();
    drain_to_end(&mut stream, 10).await;
    for q in [&first, &second] {
        let counts = queue_counts(&conn, q).await.unwrap();
        assert_eq!((counts.messages, counts.consumers), (0, 0), "{q:?}");
    }
}
