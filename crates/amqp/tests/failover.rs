//! Several endpoints in one configuration, against the real brokers running here: the shared
//! broker and the fault node are two independent nodes (same guest user), a closed port is a
//! dead endpoint, and a [`TcpProxy`] in front of a broker loses a connection on demand.

mod support;

use std::time::Duration;

use asyncworker_amqp::{AmqpConfig, AmqpError, AmqpSource, AmqpStream, Publisher};
use asyncworker_core::{Action, Backoff, Jitter, Message, Shutdown, Source, SourceContext};
use futures::StreamExt;
use support::*;

fn start(source: AmqpSource, route: &str) -> (AmqpStream, Shutdown) {
    init_tracing();
    let shutdown = Shutdown::new();
    let cx = SourceContext::new(route.to_owned(), shutdown.clone());
    (source.into_stream(cx), shutdown)
}

fn quick_backoff() -> Backoff {
    Backoff::builder()
        .initial_delay(Duration::from_millis(100))
        .max_delay(Duration::from_millis(500))
        .jitter(Jitter::None)
        .build()
        .unwrap()
}

/// The test broker's URL with a closed port (1) first and the broker second.
fn dead_then_broker() -> AmqpConfig {
    let broker = AmqpConfig::from_url(&amqp_url()).unwrap();
    AmqpConfig::builder()
        .url(&amqp_url())
        .port(1)
        .endpoint(broker.host(), broker.port())
        .reconnect(quick_backoff())
        .build()
        .unwrap()
}

/// The next message of `stream`, and the errors before it.
async fn next_message_and_errors(
    stream: &mut AmqpStream,
) -> (asyncworker_amqp::AmqpMessage, Vec<AmqpError>) {
    let mut errors = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(15), stream.next()).await {
            Ok(Some(Ok(m))) => return (m, errors),
            Ok(Some(Err(e))) => errors.push(e),
            other => panic!("expected a message, got {other:?} after {errors:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_skips_a_dead_first_endpoint_and_consumes_from_the_next() {
    let conn = connect().await;
    let q = TestQueue::declare(&conn, "failover-dead-first").await;
    publish_bodies(&conn, &q, [b"one"]).await;
    let config = dead_then_broker();
    let broker_port = config.endpoints()[1].1;
    let src = AmqpSource::builder(config, [q.as_str()]).build().unwrap();
    let (mut stream, shutdown) = start(src, "failover-dead-first");

    let (msg, errors) = next_message_and_errors(&mut stream).await;
    assert_eq!(msg.text().unwrap(), "one");
    msg.settlement().settle(Action::Ack).unwrap();
    // The dead endpoint was tried once, and named.
    let connects: Vec<_> = errors
        .iter()
        .filter(|e| e.kind() != "connection_lost")
        .collect();
    assert_eq!(connects.len(), 1, "{errors:?}");
    assert_eq!(connects[0].endpoint().port(), 1, "{errors:?}");
    assert_ne!(broker_port, 1);
    shutdown.trigger();
    drain_to_end(&mut stream, 10).await;
    wait_until(Duration::from_secs(5), || async {
        queue_counts(&conn, &q).await.is_ok_and(|c| c.messages == 0)
    })
    .await
    .expect("the message acked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_errors_name_the_endpoint_in_use_not_the_first_one() {
    let missing = unique_name("failover-missing");
    let config = dead_then_broker();
    let broker_port = config.endpoints()[1].1;
    let src = AmqpSource::builder(config, [missing.as_str()])
        .build()
        .unwrap();
    let (mut stream, shutdown) = start(src, "failover-missing");
    let error = loop {
        match tokio::time::timeout(Duration::from_secs(15), stream.next()).await {
            Ok(Some(Err(e))) if e.kind() == "queue_not_found" => break e,
            Ok(Some(Err(_))) => {}
            other => panic!("expected a queue_not_found error, got {other:?}"),
        }
    };
    assert_eq!(error.endpoint().port(), broker_port, "{error}");
    shutdown.trigger();
    drain_to_end(&mut stream, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_reconnects_to_the_next_endpoint_and_drains_it() {
    let a = connect().await;
    let b = connect_to(&fault_url()).await;
    let name = unique_name("failover-next");
    declare_queue(&a, &name).await;
    declare_queue(&b, &name).await;
    // Endpoint A: a proxy to the shared broker; endpoint B: the fault node.
    let proxy = TcpProxy::to_broker().await;
    let fault = AmqpConfig::from_url(&fault_url()).unwrap();
    let config = AmqpConfig::builder()
        .url(&proxy.url())
        .endpoint(fault.host(), fault.port())
        .reconnect(quick_backoff())
        .build()
        .unwrap();
    let src = AmqpSource::builder(config, [name.as_str()])
        .build()
        .unwrap();
    let (mut stream, shutdown) = start(src, "failover-next");

    publish_bodies(&a, &name, [b"on-a"]).await;
    let (msg, _) = next_message_and_errors(&mut stream).await;
    assert_eq!(msg.text().unwrap(), "on-a");
    msg.settlement().settle(Action::Ack).unwrap();
    wait_until(Duration::from_secs(5), || async {
        queue_counts(&a, &name).await.is_ok_and(|c| c.messages == 0)
    })
    .await
    .expect("acked on A");

    proxy.sever();
    let bodies: Vec<String> = (0..20).map(|i| format!("on-b-{i}")).collect();
    publish_bodies(&b, &name, bodies.iter().map(String::as_bytes)).await;
    let mut got = Vec::new();
    let mut errors = Vec::new();
    while got.len() < bodies.len() {
        let (msg, more) = next_message_and_errors(&mut stream).await;
        errors.extend(more);
        got.push(msg.text().unwrap().to_owned());
        msg.settlement().settle(Action::Ack).unwrap();
    }
    got.sort();
    let mut want = bodies.clone();
    want.sort();
    assert_eq!(got, want, "every message published on B, once");
    let lost = errors
        .iter()
        .find(|e| e.kind() == "connection_lost")
        .expect("the loss is reported");
    assert_eq!(lost.endpoint().port(), proxy.port(), "{lost}");
    assert_eq!(proxy.connections_accepted(), 1, "no reconnect to A");
    wait_until(Duration::from_secs(5), || async {
        queue_counts(&b, &name).await.is_ok_and(|c| c.messages == 0)
    })
    .await
    .expect("nothing left or unacked on B");
    shutdown.trigger();
    drain_to_end(&mut stream, 10).await;
    // An unacked message would be back in the queue once the route's connection closed.
    assert_eq!(message_count(&b, &name).await, 0, "nothing unacked on B");
    delete_queue(&a, &name).await;
    delete_queue(&b, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_skips_a_dead_first_endpoint_and_publishes_with_confirms() {
    let conn = connect().await;
    let q = TestQueue::declare(&conn, "failover-publish").await;
    let publisher = Publisher::builder()
        .confirms(true)
        .connect(&dead_then_broker())
        .await
        .expect("connects to the second endpoint");
    publisher
        .publish_bytes("", &q, "confirmed")
        .await
        .expect("confirmed");
    assert_eq!(message_count(&conn, &q).await, 1);
    publisher.close().await.unwrap();
}

#[tokio::test]
async fn every_endpoint_dead_is_a_connect_error_naming_the_last_one() {
    let config = AmqpConfig::builder()
        .url("amqp://guest:hunter2-secret@127.0.0.1:1/%2f")
        .endpoint("127.0.0.1", 2)
        .build()
        .unwrap();
    let error = config.connect().await.expect_err("nothing listens there");
    assert!(matches!(error, AmqpError::Connect { .. }), "{error:?}");
    assert_eq!(error.endpoint().port(), 2, "{error}");
    assert!(!error_chain(&error).contains("hunter2-secret"));
}
