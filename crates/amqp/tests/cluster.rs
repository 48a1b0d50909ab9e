//! Failures of a real three-node cluster (`scripts/rabbitmq-cluster.sh`, started by
//! `scripts/test.sh`) under a worker or a publisher: a node crashed (`kill -9` of its VM) or
//! stopped under them, a quorum queue's leader stopped, four worker processes spread over the
//! three nodes. The worker is the `amqp_worker` example run as child processes (the helpers of
//! `tests/support/`, shared with `tests/amqp_processes.rs`), its `AMQP_URL` the cluster's
//! three URLs; every message is a persistent one with its own id (`m0` …) in a quorum queue
//! replicated on the three nodes.
//!
//! After each: every message handled (or confirmed publish stored) at least once, the queue
//! drained with no consumer left (a message handled but never acked would be back in it),
//! duplicates counted, and every node running again. Each test prints
//! `cluster=<name> published=N handled=N lost=0 duplicates=N elapsed=…`:
//! `scripts/test.sh -p asyncworker-amqp --test cluster -- --nocapture`.
//! With `ASYNCWORKER_CLUSTER_FIGURES=1`, `throughput_of_1_2_and_4_processes_over_three_nodes`
//! also prints the msgs/s of 1, 2 and 4 processes (figures, not assertions).

#![cfg(unix)]

mod support;

#[path = "../../../tests/support/mod.rs"]
mod process;

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use asyncworker_amqp::lapin::options::{
    BasicConsumeOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use asyncworker_amqp::lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use asyncworker_amqp::{AmqpConfig, OutgoingMessage, Publisher};
use futures::StreamExt;
use process::Worker;
use process::runs::{Tally, handled};
use support::cluster::Cluster;
use support::*;

/// The tests of this binary take turns: each crashes or stops a node, which the others would
/// see.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long a drain, or any one wait of these tests, may take.
const DEADLINE: Duration = Duration::from_secs(60);

/// The cluster's URLs, starting at node `first` and wrapping around, comma-separated: an
/// `AMQP_URL` whose first endpoint is node `first`.
fn endpoints_from(cluster: &Cluster, first: usize) -> String {
    let n = cluster.urls().len();
    (0..n)
        .map(|k| cluster.url((first + k) % n))
        .collect::<Vec<_>>()
        .join(",")
}

/// The AMQP port of `url`.
fn port_of(url: &str) -> u16 {
    AmqpConfig::from_url(url).expect("a valid URL").port()
}

/// Declares a durable quorum queue (replicated on the three nodes) through node `node`, which
/// its leader is then on (the default leader locator is client-local); returns its name.
async fn declare_quorum(cluster: &Cluster, node: usize, label: &str) -> String {
    let name = unique_name(label);
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    let connection = connect_to(cluster.url(node)).await;
    channel(&connection)
        .await
        .queue_declare(
            name.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await
        .unwrap_or_else(|error| panic!("declare quorum queue {name}: {error}"));
    let _ = connection.close(200, "ok".into()).await;
    name
}

/// Deletes `queue` through node `node`.
async fn delete(cluster: &Cluster, node: usize, queue: &str) {
    let connection = connect_to(cluster.url(node)).await;
    channel(&connection)
        .await
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await
        .unwrap_or_else(|error| panic!("delete {queue}: {error}"));
    let _ = connection.close(200, "ok".into()).await;
}

/// The message of id `m{i}`: persistent JSON to `queue`.
fn message(queue: &str, i: usize) -> OutgoingMessage {
    OutgoingMessage::json("", queue, &serde_json::json!({ "n": i }))
        .expect("json")
        .message_id(format!("m{i}"))
}

/// Publishes `n` messages (`m0` …) to `queue` through node `node`, every one confirmed;
/// returns their ids.
async fn publish(cluster: &Cluster, node: usize, queue: &str, n: usize) -> HashSet<String> {
    let config = AmqpConfig::from_url(cluster.url(node)).expect("a valid URL");
    let publisher = Publisher::connect(&config).await.expect("publisher");
    let outcomes = publisher
        .publish_all((0..n).map(|i| message(queue, i)))
        .await;
    let failed: Vec<_> = outcomes.iter().filter(|o| o.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} publishes failed: {failed:?}",
        failed.len()
    );
    let _ = publisher.close().await;
    (0..n).map(|i| format!("m{i}")).collect()
}

/// Waits until `queue` has no ready message and no consumer (every message acked), asking
/// node `node`.
async fn until_drained(cluster: &Cluster, node: usize, queue: &str) {
    let connection = connect_to(cluster.url(node)).await;
    let deadline = Instant::now() + DEADLINE;
    loop {
        let counts = queue_counts(&connection, queue)
            .await
            .unwrap_or_else(|error| panic!("passive declare of {queue}: {error}"));
        if (counts.messages, counts.consumers) == (0, 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "queue {queue} not drained: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = connection.close(200, "ok".into()).await;
}

/// The port of a worker's `connected` log line (the library's: it names the host and port
/// of the node the route connected to).
fn connected_port(line: &str) -> Option<u16> {
    if !line.contains(" connected ") {
        return None;
    }
    line.split(" port=").nth(1)?.split(' ').next()?.parse().ok()
}

/// `amqp_worker` processes on one queue, and what they logged so far.
struct Fleet {
    workers: Vec<Worker>,
    handled: Vec<Vec<String>>,
    ports: Vec<Vec<u16>>,
}

impl Fleet {
    /// One worker per `AMQP_URL` of `urls`, on `queue`, with `env` on top of the defaults.
    fn start(binary: &Path, queue: &str, urls: &[String], env: &[(&str, &str)]) -> Fleet {
        let workers: Vec<Worker> = urls
            .iter()
            .map(|url| {
                let mut all = vec![
                    ("AMQP_URL", url.as_str()),
                    ("QUEUES", queue),
                    ("VHOST", "/"),
                    ("ASYNCWORKER_FLUSH_TIMEOUT", "1"),
                ];
                all.extend_from_slice(env);
                Worker::start(binary, &all)
            })
            .collect();
        Fleet {
            handled: vec![Vec::new(); workers.len()],
            ports: vec![Vec::new(); workers.len()],
            workers,
        }
    }

    fn poll(&mut self) {
        for (i, worker) in self.workers.iter_mut().enumerate() {
            let lines = worker.poll_lines();
            self.handled[i].extend(handled(&lines));
            self.ports[i].extend(lines.iter().filter_map(|l| connected_port(l)));
        }
    }

    /// Distinct ids handled so far.
    fn distinct(&self) -> usize {
        self.handled.iter().flatten().collect::<HashSet<_>>().len()
    }

    /// Polls the workers' logs until `done` holds.
    async fn until(&mut self, what: &str, done: impl Fn(&Fleet) -> bool) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            self.poll();
            if done(self) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not within {DEADLINE:?}: {what} ({} ids handled, connected to ports {:?})",
                self.distinct(),
                self.ports
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls until every id of `want` was handled.
    async fn until_all(&mut self, want: &HashSet<String>) {
        let n = want.len();
        self.until(&format!("all {n} messages handled"), |fleet| {
            let seen: HashSet<&String> = fleet.handled.iter().flatten().collect();
            want.iter().all(|id| seen.contains(id))
        })
        .await;
    }

    /// Stops every worker (SIGTERM) and waits for its exit; each one's handled ids and the
    /// ports it connected to, from its whole log.
    async fn stop(self) -> (Vec<Vec<String>>, Vec<Vec<u16>>) {
        for worker in &self.workers {
            worker.signal("TERM");
        }
        let mut runs = Vec::new();
        let mut ports = Vec::new();
        for worker in self.workers {
            let (status, lines) = tokio::task::spawn_blocking(move || worker.finish())
                .await
                .expect("the worker's log");
            assert!(
                status.success(),
                "exit status {status}:\n{}",
                lines.join("\n")
            );
            runs.push(handled(&lines));
            ports.push(lines.iter().filter_map(|l| connected_port(l)).collect());
        }
        (runs, ports)
    }
}

/// Slow enough that a node can be killed mid-drain: two batches of 10 in flight, 50 ms each
/// (at most 400 messages/s).
const PACED: [(&str, &str); 3] = [("BULK_SIZE", "10"), ("PREFETCH", "20"), ("WORK_MS", "50")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_reconnects_to_another_node_when_its_node_is_killed_mid_drain() {
    let _turn = TURN.lock().await;
    let cluster = Cluster::from_env();
    let started = Instant::now();
    let queue = declare_quorum(&cluster, 1, "cluster-worker-kill").await;
    let want = publish(&cluster, 1, &queue, 3000).await;
    let published = started.elapsed();
    let binary = tokio::task::spawn_blocking(process::amqp_worker_binary)
        .await
        .expect("the example builds");

    let mut fleet = Fleet::start(&binary, &queue, &[endpoints_from(&cluster, 0)], &PACED);
    fleet
        .until("300 messages handled", |f| f.distinct() >= 300)
        .await;
    assert_eq!(fleet.ports[0], [port_of(cluster.url(0))], "on node 1 first");
    let restart = cluster.restart_on_panic(0);
    let fault = tokio::spawn({
        let cluster = cluster.clone();
        async move { cluster.kill(0).await }
    });
    // Polled while the node dies, so the count is the one at the kill.
    fleet.until("node 1 killed", |_| fault.is_finished()).await;
    fault.await.expect("kill node 1");
    let at_kill = fleet.distinct();
    let killed = Instant::now();
    fleet.until_all(&want).await;
    let drained = killed.elapsed();
    let (runs, ports) = fleet.stop().await;
    let restarting = Instant::now();
    cluster.start_node(0).await;
    let restarted = restarting.elapsed();
    drop(restart);

    assert!(at_kill < want.len(), "killed mid-drain: {at_kill} handled");
    let others = [port_of(cluster.url(1)), port_of(cluster.url(2))];
    assert!(
        ports[0].len() >= 2 && others.contains(ports[0].last().expect("a port")),
        "reconnected to node 2 or 3: {ports:?}"
    );
    until_drained(&cluster, 1, &queue).await;
    let tally = Tally::of(&want, &runs);
    println!(
        "cluster=worker-node-killed {} elapsed={:?} (publish {published:?}, drain after the \
         kill {drained:?}, node restart {restarted:?}; handled before the kill: {at_kill}, \
         connected to ports {:?})",
        tally.line(),
        started.elapsed(),
        ports[0]
    );
    assert_eq!(tally.lost, 0);
    delete(&cluster, 1, &queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumption_resumes_after_the_quorum_leader_is_stopped() {
    let _turn = TURN.lock().await;
    let cluster = Cluster::from_env();
    let started = Instant::now();
    // Through node 2: `Cluster::leader` asks node 1 first, which stays up.
    let queue = declare_quorum(&cluster, 1, "cluster-leader-stop").await;
    let looking = Instant::now();
    let leader = cluster.leader(&queue).await;
    let lookup = looking.elapsed();
    let other = (leader + 1) % 3;
    let want = publish(&cluster, other, &queue, 3000).await;
    let published = started.elapsed();
    let building = Instant::now();
    let binary = tokio::task::spawn_blocking(process::amqp_worker_binary)
        .await
        .expect("the example builds");
    let build = building.elapsed();

    // The worker is on another node than the leader, and stays there.
    let mut fleet = Fleet::start(&binary, &queue, &[endpoints_from(&cluster, other)], &PACED);
    let waiting = Instant::now();
    fleet
        .until("300 messages handled", |f| f.distinct() >= 300)
        .await;
    let first = waiting.elapsed();
    let restart = cluster.restart_on_panic(leader);
    let stopping = Instant::now();
    let fault = tokio::spawn({
        let cluster = cluster.clone();
        async move { cluster.stop_node(leader).await }
    });
    fleet
        .until("the leader stopped", |_| fault.is_finished())
        .await;
    fault.await.expect("stop the leader's node");
    let at_stop = fleet.distinct();
    let stopped = Instant::now();
    let stop = stopped - stopping;
    let new_leader = cluster.leader(&queue).await;
    fleet.until_all(&want).await;
    let drained = stopped.elapsed();
    let terminating = Instant::now();
    let (runs, ports) = fleet.stop().await;
    let term = terminating.elapsed();
    let restarting = Instant::now();
    cluster.start_node(leader).await;
    let restarted = restarting.elapsed();
    drop(restart);

    assert!(at_stop < want.len(), "stopped mid-drain: {at_stop} handled");
    assert_ne!(new_leader, leader, "a new leader was elected");
    assert_eq!(ports[0], [port_of(cluster.url(other))], "never reconnected");
    until_drained(&cluster, other, &queue).await;
    let tally = Tally::of(&want, &runs);
    println!(
        "cluster=quorum-leader-stopped {} elapsed={:?} (publish {published:?}, drain after \
         the stop {drained:?}, example build {build:?}, first 300 {first:?}, worker exit {term:?}, \
         leader lookup {lookup:?}, graceful stop {stop:?}, node restart \
         {restarted:?}; leader node {} -> {}, handled \
         before the stop: {at_stop})",
        tally.line(),
        started.elapsed(),
        leader + 1,
        new_leader + 1
    );
    assert_eq!(tally.lost, 0);
    delete(&cluster, other, &queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_share_one_quorum_queue_over_three_nodes() {
    let _turn = TURN.lock().await;
    let cluster = Cluster::from_env();
    let started = Instant::now();
    let queue = declare_quorum(&cluster, 0, "cluster-four").await;
    let binary = tokio::task::spawn_blocking(process::amqp_worker_binary)
        .await
        .expect("the example builds");
    // Process k starts its endpoint list at node k mod 3: nodes 1, 2, 3, 1.
    let urls: Vec<String> = (0..4).map(|k| endpoints_from(&cluster, k % 3)).collect();
    // Small prefetch and slow batches, so the broker spreads the messages.
    let env = [("BULK_SIZE", "5"), ("PREFETCH", "5"), ("WORK_MS", "20")];
    let mut fleet = Fleet::start(&binary, &queue, &urls, &env);
    let connection = connect_to(cluster.url(0)).await;
    wait_until(DEADLINE, || async {
        queue_counts(&connection, &queue)
            .await
            .is_ok_and(|c| c.consumers == 4)
    })
    .await
    .expect("four consumers on the queue");
    let _ = connection.close(200, "ok".into()).await;
    let want = publish(&cluster, 0, &queue, 1000).await;
    fleet.until_all(&want).await;
    let (runs, ports) = fleet.stop().await;
    until_drained(&cluster, 0, &queue).await;

    let shares: Vec<usize> = runs.iter().map(Vec::len).collect();
    assert!(
        shares.iter().all(|&n| n > 0),
        "each process got a share: {shares:?}"
    );
    let nodes: HashSet<u16> = ports.iter().flatten().copied().collect();
    assert_eq!(nodes.len(), 3, "the processes used every node: {ports:?}");
    let tally = Tally::of(&want, &runs);
    println!(
        "cluster=four-processes {} elapsed={:?} (shares {shares:?}, ports {ports:?})",
        tally.line(),
        started.elapsed()
    );
    assert_eq!(tally.lost, 0);
    delete(&cluster, 0, &queue).await;
}

/// Figures, not assertions (`ASYNCWORKER_CLUSTER_FIGURES=1`): 1, 2 and 4 worker processes
/// (endpoint lists rotated over the three nodes) drain 20 000 messages from one quorum queue;
/// msgs/s from the first message handled to the last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_of_1_2_and_4_processes_over_three_nodes() {
    if std::env::var_os("ASYNCWORKER_CLUSTER_FIGURES").is_none() {
        println!("cluster=throughput skipped: set ASYNCWORKER_CLUSTER_FIGURES=1");
        return;
    }
    let _turn = TURN.lock().await;
    let cluster = Cluster::from_env();
    let binary = tokio::task::spawn_blocking(process::amqp_worker_binary)
        .await
        .expect("the example builds");
    let n = 20_000;
    for processes in [1, 2, 4] {
        let queue = declare_quorum(&cluster, 0, "cluster-throughput").await;
        let want = publish(&cluster, 0, &queue, n).await;
        let urls: Vec<String> = (0..processes)
            .map(|k| endpoints_from(&cluster, k % 3))
            .collect();
        let env = [("BULK_SIZE", "100"), ("PREFETCH", "200")];
        let mut fleet = Fleet::start(&binary, &queue, &urls, &env);
        fleet.until("a message handled", |f| f.distinct() > 0).await;
        let first = Instant::now();
        fleet.until_all(&want).await;
        let elapsed = first.elapsed();
        let (runs, _) = fleet.stop().await;
        until_drained(&cluster, 0, &queue).await;
        let tally = Tally::of(&want, &runs);
        let shares: Vec<usize> = runs.iter().map(Vec::len).collect();
        println!(
            "cluster=throughput processes={processes} {} elapsed={elapsed:?} \
             msgs_per_s={:.0} (shares {shares:?})",
            tally.line(),
            n as f64 / elapsed.as_secs_f64()
        );
        assert_eq!(tally.lost, 0);
        delete(&cluster, 0, &queue).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_confirmed_publish_survives_a_node_kill() {
    let _turn = TURN.lock().await;
    let cluster = Cluster::from_env();
    let started = Instant::now();
    let queue = declare_quorum(&cluster, 1, "cluster-publish-kill").await;
    let config = AmqpConfig::builder()
        .url(&endpoints_from(&cluster, 0))
        .build()
        .expect("the cluster's endpoints");
    let publisher = Publisher::builder()
        .timeout(Duration::from_secs(5))
        .connect(&config)
        .await
        .expect("publisher on node 1");
    let n = 5000;
    let window = 64;

    let restart = cluster.restart_on_panic(0);
    let mut kill = None;
    let mut confirmed: HashSet<String> = HashSet::new();
    let mut failed: Vec<usize> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    let mut outcomes = futures::stream::iter(0..n)
        .map(|i| {
            let publisher = &publisher;
            let queue = &queue;
            async move { (i, publisher.publish(message(queue, i)).await) }
        })
        .buffer_unordered(window);
    while let Some((i, outcome)) = outcomes.next().await {
        match outcome {
            Ok(()) => {
                confirmed.insert(format!("m{i}"));
            }
            Err(error) => {
                failed.push(i);
                errors.push(error_chain(&error));
            }
        }
        if kill.is_none() && confirmed.len() >= 1000 {
            let cluster = cluster.clone();
            kill = Some(tokio::spawn(async move { cluster.kill(0).await }));
        }
    }
    drop(outcomes);
    let published = started.elapsed();
    kill.expect("killed mid-run").await.expect("the kill");
    // At-least-once: publish again whatever got no confirm.
    let mut still_failed = Vec::new();
    for &i in &failed {
        let mut outcome = publisher.publish(message(&queue, i)).await;
        for _ in 0..3 {
            if outcome.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            outcome = publisher.publish(message(&queue, i)).await;
        }
        match outcome {
            Ok(()) => {
                confirmed.insert(format!("m{i}"));
            }
            Err(error) => still_failed.push((i, error_chain(&error))),
        }
    }
    let _ = publisher.close().await;
    let restarting = Instant::now();
    cluster.start_node(0).await;
    let restarted = restarting.elapsed();
    drop(restart);

    // Every message now in the queue, read through node 2.
    let connection = connect_to(cluster.url(1)).await;
    let stored = queue_counts(&connection, &queue)
        .await
        .expect("the queue")
        .messages as usize;
    let consume = channel(&connection).await;
    let mut consumer = consume
        .basic_consume(
            queue.as_str().into(),
            "cluster-publish-kill".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let mut ids = Vec::with_capacity(stored);
    while ids.len() < stored {
        let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .unwrap_or_else(|_| panic!("{} of {stored} messages read", ids.len()))
            .expect("the consumer runs")
            .expect("a delivery");
        ids.push(
            delivery
                .properties
                .message_id()
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
        );
    }
    let _ = connection.close(200, "ok".into()).await;

    let kinds: HashSet<&str> = errors.iter().map(String::as_str).collect();
    assert!(
        still_failed.is_empty(),
        "{} publishes failed 4 more times: {still_failed:?}",
        still_failed.len()
    );
    let tally = Tally::of(&confirmed, &[ids]);
    println!(
        "cluster=publisher-node-killed {} elapsed={:?} failed={} retried={} (publish \
         {published:?}, node restart {restarted:?}; errors: {kinds:?})",
        tally.line(),
        started.elapsed(),
        failed.len(),
        failed.len() - still_failed.len()
    );
    assert_eq!(confirmed.len(), n, "every id confirmed, at last");
    assert_eq!(tally.lost, 0, "every confirmed id is in the queue");
    delete(&cluster, 1, &queue).await;
}
