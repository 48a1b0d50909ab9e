//! The broker test helpers in `support/` checked against the local broker.

mod support;

use std::time::Duration;

use support::*;

#[test]
fn vhost_urls_are_percent_encoded() {
    assert_eq!(
        with_vhost("amqp://guest:guest@127.0.0.1:5672/%2f", "aw-test/x y"),
        "amqp://guest:guest@127.0.0.1:5672/aw-test%2Fx%20y"
    );
    assert_eq!(
        with_vhost("amqp://127.0.0.1:5672?heartbeat=5", "v"),
        "amqp://127.0.0.1:5672/v?heartbeat=5"
    );
}

#[test]
fn unique_names_differ() {
    let a = unique_name("q");
    let b = unique_name("q");
    assert!(a.starts_with("aw-test-q-"), "{a}");
    assert_ne!(a, b);
}

#[test]
fn tls_material_exists() {
    for path in [
        tls_ca_cert(),
        tls_server_cert(),
        tls_client_cert(),
        tls_client_key(),
    ] {
        assert!(
            path.is_file(),
            "{} missing: run scripts/rabbitmq.sh start",
            path.display()
        );
    }
}

/// Waits (up to 10 s) for `queue` to hold `expected` ready messages.
async fn ready_becomes(connection: &lapin::Connection, queue: &str, expected: u32) -> bool {
    wait_until(Duration::from_secs(10), || async {
        queue_counts(connection, queue)
            .await
            .ok()
            .map(|c| c.messages)
            == Some(expected)
    })
    .await
    .held()
}

#[tokio::test]
async fn published_messages_are_counted_and_rejected_ones_dead_lettered() {
    let connection = connect().await;
    let (queue, dlq) = TestQueue::declare_with_dlq(&connection, "selftest").await;
    publish_n(&connection, &queue, 3).await;
    assert!(ready_becomes(&connection, &queue, 3).await);
    assert_eq!(consumer_count(&connection, &queue).await, 0);

    // Reject one through basic.get: it must land in the dead-letter queue.
    let channel = channel(&connection).await;
    let delivery = channel
        .basic_get(
            queue.as_str().into(),
            lapin::options::BasicGetOptions::default(),
        )
        .await
        .expect("basic.get")
        .expect("a message");
    assert_eq!(delivery.delivery.data, b"message-0");
    delivery
        .delivery
        .reject(lapin::options::BasicRejectOptions { requeue: false })
        .await
        .expect("reject");
    assert!(ready_becomes(&connection, &dlq, 1).await);
    assert!(ready_becomes(&connection, &queue, 2).await);

    let info = queue_info("/", &queue).await.expect("listed");
    assert_eq!((info.messages_ready, info.messages_unacknowledged), (2, 0));

    // The guards delete their queues when dropped.
    let names = (queue.to_string(), dlq.to_string());
    drop((queue, dlq));
    assert!(!queue_exists(&connection, &names.0).await);
    assert!(!queue_exists(&connection, &names.1).await);
}

#[tokio::test]
async fn vhost_guard_creates_usable_vhost_and_connections_are_listed_by_name() {
    let vhost = TestVhost::create("selftest").await;
    let name = unique_name("conn");
    let connection = lapin::Connection::connect(
        &vhost.url(),
        lapin::ConnectionProperties::default().with_connection_name(name.as_str().into()),
    )
    .await
    .expect("connect to the test vhost");
    declare_queue(&connection, "q").await;
    assert!(queue_info(vhost.name(), "q").await.is_some());

    let listed = connections_named(&name).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].vhost, vhost.name());
    assert_eq!(listed[0].user, "guest");
    assert!(!listed[0].ssl);

    close_all_connections(vhost.name(), "selftest").await;
    wait_until(Duration::from_secs(10), || async {
        !connection.status().connected()
    })
    .await
    .expect("the broker did not close the connection");
}
