//! The cluster helpers of `support/cluster.rs` checked against the local three-node cluster of
//! `scripts/rabbitmq-cluster.sh` (started by `scripts/test.sh`).

mod support;

use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use support::cluster::Cluster;
use support::*;

/// The tests of this binary take turns: one of them crashes a node, which the others would see.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Declares durable quorum queue `name` through `connection`.
async fn declare_quorum_queue(connection: &lapin::Connection, name: &str) {
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    channel(connection)
        .await
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await
        .unwrap_or_else(|error| panic!("declare quorum queue {name}: {error}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_sees_three_running_nodes() {
    let _turn = TURN.lock().await;
    let cluster = Cluster::from_env();
    assert_eq!(cluster.nodes().len(), 3, "{:?}", cluster.nodes());
    assert_eq!(cluster.urls().len(), 3, "{:?}", cluster.urls());
    for i in 0..3 {
        assert_eq!(cluster.running_seen_by(i).await, vec![0, 1, 2], "node {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_queue_declared_through_node_1_is_visible_from_node_3() {
    let _turn = TURN.lock().await;
    let cluster = Cluster::from_env();
    let name = unique_name("cluster-quorum");
    let first = connect_to(cluster.url(0)).await;
    declare_quorum_queue(&first, &name).await;

    let third = connect_to(cluster.url(2)).await;
    assert_eq!(message_count(&third, &name).await, 0);
    // The default leader locator (client-local) puts the leader on the declaring node.
    assert_eq!(cluster.leader(&name).await, 0);

    channel(&first)
        .await
        .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
        .await
        .expect("delete the quorum queue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_leaves_the_running_set_and_start_node_brings_it_back() {
    let _turn = TURN.lock().await;
    let cluster = Cluster::from_env();

    let _restart = cluster.restart_on_panic(1);
    cluster.kill(1).await;
    assert_eq!(cluster.running_seen_by(0).await, vec![0, 2]);
    assert_eq!(cluster.running_seen_by(2).await, vec![0, 2]);

    cluster.start_node(1).await;
    for i in 0..3 {
        assert_eq!(cluster.running_seen_by(i).await, vec![0, 1, 2], "node {i}");
    }
}
