//! Process faults, against the real broker: the `amqp_worker` example run as child processes
//! on one queue of its own, killed (SIGKILL) or stopped (SIGTERM) mid-batch and run again,
//! or run as 2 and 4 competing processes. After each: every message handled at least once,
//! the queue drained with no consumer left (a message handled but never acked would be back
//! in the queue), duplicates counted. `tests/amqp_sigterm.rs` checks one SIGTERM run in
//! detail; here the second run shows no message is handled by both.
//!
//! Each test prints `fault=<name> published=N handled=N lost=0 duplicates=N` (the README's
//! figures: `scripts/test.sh -p asyncworker --test amqp_processes -- --nocapture`).

#![cfg(unix)]

mod support;

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use asyncworker::amqp::lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use asyncworker::amqp::lapin::types::FieldTable;
use asyncworker::amqp::lapin::{Channel, Connection};
use asyncworker::amqp::{AmqpConfig, OutgoingMessage, Publisher};
use support::runs::{Tally, handled};
use support::{DEADLINE, Worker};

fn broker_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A durable queue of its own with `n` persistent JSON messages (ids `m0` …), and a channel
/// to look at it; deleted by [`TestQueue::delete`].
struct TestQueue {
    name: String,
    _connection: Connection,
    channel: Channel,
    n: usize,
}

impl TestQueue {
    async fn declare(name: &str) -> TestQueue {
        let config = AmqpConfig::from_url(&broker_url()).expect("a valid AMQP_URL");
        let connection = config.connect().await.expect("the test broker answers");
        let channel = connection.create_channel().await.expect("a channel");
        let name = format!("aw-test-{name}-{:x}", random_u64());
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(name.as_str().into(), durable, FieldTable::default())
            .await
            .expect("declare");
        TestQueue {
            name,
            _connection: connection,
            channel,
            n: 0,
        }
    }

    async fn publish(&mut self, n: usize) {
        let config = AmqpConfig::from_url(&broker_url()).expect("a valid AMQP_URL");
        let publisher = Publisher::connect(&config).await.expect("publisher");
        let outcomes = publisher
            .publish_all((self.n..self.n + n).map(|i| {
                OutgoingMessage::json("", self.name.as_str(), &serde_json::json!({ "n": i }))
                    .expect("json")
                    .message_id(format!("m{i}"))
            }))
            .await;
        assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
        let _ = publisher.close().await;
        self.n += n;
    }

    /// (ready messages, consumers), by passive declare.
    async fn counts(&self) -> (u32, u32) {
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let q = self
            .channel
            .queue_declare(self.name.as_str().into(), passive, FieldTable::default())
            .await
            .expect("the queue exists");
        (q.message_count(), q.consumer_count())
    }

    /// Waits until the queue has no ready message and no consumer: every message acked.
    async fn until_drained(&self) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let counts = self.counts().await;
            if counts == (0, 0) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "queue {} not drained: (ready, consumers) = {counts:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `n` consumers are on the queue.
    async fn until_consumers(&self, n: u32) {
        let deadline = Instant::now() + DEADLINE;
        while self.counts().await.1 < n {
            assert!(Instant::now() < deadline, "fewer than {n} consumers");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn ids(&self) -> HashSet<String> {
        (0..self.n).map(|i| format!("m{i}")).collect()
    }

    async fn delete(self) {
        self.channel
            .queue_delete(self.name.as_str().into(), QueueDeleteOptions::default())
            .await
            .expect("delete");
    }
}

/// Starts the worker on `queue` with `env` on top of the broker URL and queue.
fn start(binary: &Path, queue: &str, env: &[(&str, &str)]) -> Worker {
    let url = broker_url();
    // A partial batch is flushed after 1 s, not the default minute.
    let mut all = vec![
        ("AMQP_URL", url.as_str()),
        ("QUEUES", queue),
        ("VHOST", "/"),
        ("ASYNCWORKER_FLUSH_TIMEOUT", "1"),
    ];
    all.extend_from_slice(env);
    Worker::start(binary, &all)
}

/// Runs workers until every id of `want` was logged by one of them (or by `before`), then
/// stops them with SIGTERM; returns each one's handled ids.
fn drain_with(
    mut workers: Vec<Worker>,
    before: &HashSet<String>,
    want: &HashSet<String>,
) -> Vec<Vec<String>> {
    let deadline = Instant::now() + DEADLINE * 3;
    let mut seen: HashSet<String> = before.clone();
    while !want.is_subset(&seen) {
        assert!(
            Instant::now() < deadline,
            "{} of {} messages never handled",
            want.difference(&seen).count(),
            want.len()
        );
        for worker in &mut workers {
            seen.extend(handled(&worker.poll_lines()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for worker in &workers {
        worker.signal("TERM");
    }
    workers
        .into_iter()
        .map(|worker| {
            let (status, lines) = worker.finish();
            assert!(
                status.success(),
                "exit status {status}:\n{}",
                lines.join("\n")
            );
            handled(&lines)
        })
        .collect()
}

/// `published`, `handled` (distinct), `lost`, `duplicates` of the runs' handled ids.
fn summary(fault: &str, want: &HashSet<String>, runs: &[Vec<String>]) -> (usize, usize) {
    let tally = Tally::of(want, runs);
    println!("fault={fault} {}", tally.line());
    (tally.lost, tally.duplicates)
}

/// SIGKILL while a batch is being handled: nothing of it was acked, so the broker redelivers
/// it to the next run, which handles everything left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_batch_loses_nothing_after_a_restart() {
    let mut queue = TestQueue::declare("sigkill").await;
    queue.publish(60).await;
    let binary = tokio::task::spawn_blocking(support::amqp_worker_binary)
        .await
        .expect("the example builds");
    let name = queue.name.clone();
    let first = tokio::task::spawn_blocking(move || {
        let slow = [("BULK_SIZE", "10"), ("PREFETCH", "30"), ("WORK_MS", "3000")];
        let mut worker = start(&binary, &name, &slow);
        worker.wait_for("batch received");
        // The batch's ten messages logged, its work under way: kill it there.
        let deadline = Instant::now() + DEADLINE;
        let mut logged = 0;
        while logged < 10 {
            let line = worker.next_line(deadline).expect("the worker runs");
            logged += usize::from(line.contains("amqp_worker: message"));
        }
        worker.signal("KILL");
        let (status, lines) = worker.finish();
        assert!(!status.success(), "killed: {status}");
        (binary, handled(&lines))
    });
    let (binary, killed) = first.await.expect("the first run");
    assert!(!killed.is_empty(), "the first run handled a batch");

    let want = queue.ids();
    let name = queue.name.clone();
    let runs = tokio::task::spawn_blocking(move || {
        let worker = start(&binary, &name, &[("BULK_SIZE", "10"), ("PREFETCH", "30")]);
        drain_with(vec![worker], &HashSet::new(), &want)
    })
    .await
    .expect("the second run");
    let second = &runs[0];
    let redelivered: HashSet<&String> = second.iter().collect();
    assert!(
        killed.iter().all(|id| redelivered.contains(id)),
        "every message of the killed batch was redelivered: killed {killed:?}"
    );
    queue.until_drained().await;
    let (lost, _) = summary(
        "sigkill-mid-batch",
        &queue.ids(),
        &[killed, runs[0].clone()],
    );
    assert_eq!(lost, 0);
    queue.delete().await;
}

/// SIGTERM while a batch is being handled, then a second run: the first run finished and
/// acked what it had taken, so no message is handled by both runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_batch_then_a_second_run_handle_each_message_once() {
    let mut queue = TestQueue::declare("sigterm-twice").await;
    queue.publish(60).await;
    let binary = tokio::task::spawn_blocking(support::amqp_worker_binary)
        .await
        .expect("the example builds");
    let name = queue.name.clone();
    let first = tokio::task::spawn_blocking(move || {
        let slow = [("BULK_SIZE", "10"), ("PREFETCH", "30"), ("WORK_MS", "1000")];
        let mut worker = start(&binary, &name, &slow);
        worker.wait_for("batch received");
        worker.signal("TERM");
        let (status, lines) = worker.finish();
        assert!(
            status.success(),
            "exit status {status}:\n{}",
            lines.join("\n")
        );
        (binary, handled(&lines))
    });
    let (binary, stopped) = first.await.expect("the first run");
    assert!(stopped.len() < 60, "the first run stopped mid-drain");

    let want = queue.ids();
    let before: HashSet<String> = stopped.iter().cloned().collect();
    let name = queue.name.clone();
    let second = tokio::task::spawn_blocking(move || {
        let worker = start(&binary, &name, &[("BULK_SIZE", "10"), ("PREFETCH", "30")]);
        drain_with(vec![worker], &before, &want)
    })
    .await
    .expect("the second run");
    queue.until_drained().await;
    let both: Vec<_> = second[0].iter().filter(|id| stopped.contains(id)).collect();
    assert!(both.is_empty(), "handled by both runs: {both:?}");
    let (lost, duplicates) = summary(
        "sigterm-mid-batch",
        &queue.ids(),
        &[stopped, second[0].clone()],
    );
    assert_eq!((lost, duplicates), (0, 0));
    queue.delete().await;
}

/// `processes` workers on one queue: every message handled, each process got a share.
async fn competing(processes: usize) {
    let mut queue = TestQueue::declare(&format!("compete-{processes}")).await;
    let binary = tokio::task::spawn_blocking(support::amqp_worker_binary)
        .await
        .expect("the example builds");
    // Small prefetch and slow batches, so the broker spreads the messages.
    let env = [("BULK_SIZE", "5"), ("PREFETCH", "5"), ("WORK_MS", "20")];
    let workers: Vec<Worker> = (0..processes)
        .map(|_| start(&binary, &queue.name, &env))
        .collect();
    // Published once every process consumes, so none takes everything before the others.
    queue.until_consumers(processes as u32).await;
    queue.publish(100 * processes).await;
    let want = queue.ids();
    let runs = tokio::task::spawn_blocking(move || drain_with(workers, &HashSet::new(), &want))
        .await
        .expect("the workers");
    queue.until_drained().await;
    let shares: Vec<usize> = runs.iter().map(Vec::len).collect();
    assert!(
        shares.iter().all(|&n| n > 0),
        "each process got a share: {shares:?}"
    );
    println!("{processes} processes, shares {shares:?}");
    let (lost, _) = summary(&format!("{processes}-processes"), &queue.ids(), &runs);
    assert_eq!(lost, 0);
    queue.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_queue_share_it() {
    competing(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_on_one_queue_share_it() {
    competing(4).await;
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}
