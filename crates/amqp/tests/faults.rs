//! Broker faults, injected into the node of `scripts/rabbitmq-fault.sh` (never into the shared
//! test broker) while a worker drains a queue through the whole stack: `AmqpSource`, the
//! App's Bulk and Ack layers, a handler recording every body it sees.
//!
//! Each test publishes persistent messages to a durable queue, starts the worker, injects
//! its fault mid-drain, and then checks what a user relies on: every message handled at
//! least once (duplicates are counted, not forbidden: at-least-once), the queue drained with
//! nothing unacknowledged (`rabbitmqctl list_queues`), and the worker still consuming (one
//! more message published afterwards is handled). Each prints a summary line,
//! `fault=<name> published=N handled=N lost=0 duplicates=N`, the README's figures:
//! `scripts/test.sh -p asyncworker-amqp --test faults -- --nocapture` regenerates them.
//!
//! The tests take turns ([`TURN`]): they stop, alarm and disconnect the whole node.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use asyncworker_amqp::{AmqpMessage, AmqpSource, PublishError, Publisher};
use asyncworker_core::{App, BoxError, Message, RouteOptions};
use lapin::Connection;
use support::*;

/// The tests of this binary take turns: each disturbs the whole fault node.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long any one condition may take: generous, the machine is shared.
const BOUND: Duration = Duration::from_secs(60);

/// Bodies the handler saw, with how often.
type Seen = Arc<Mutex<HashMap<String, usize>>>;

/// Connects to the fault node, retrying while it comes back from a restart.
async fn connect_fault() -> Connection {
    let url = fault_url();
    let mut last = None;
    for _ in 0..120 {
        match Connection::connect(&url, lapin::ConnectionProperties::default()).await {
            Ok(connection) => return connection,
            Err(error) => last = Some(error),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!(
        "cannot connect to the fault node at {url} ({last:?}); start it with \
         `scripts/rabbitmq-fault.sh start`"
    );
}

/// `rabbitmqctl` on the fault node, panicking on failure.
async fn ctl(args: &[&str]) -> String {
    rabbitmqctl_ok_on(&fault_node(), args).await
}

/// A worker (an App with one route) draining one queue of the fault node.
struct Drain {
    queue: TestQueue,
    seen: Seen,
    shutdown: asyncworker_core::Shutdown,
    run: tokio::task::JoinHandle<Result<(), asyncworker_core::Error>>,
}

impl Drain {
    /// Declares a durable queue, publishes `n` persistent messages (`message-0` …) to it and
    /// starts a worker on it: batches of `bulk`, one at a time, `work` of simulated work per
    /// batch (so the drain lasts longer than a `rabbitmqctl` call).
    async fn start(name: &str, n: usize, prefetch: u16, bulk: usize, work: Duration) -> Drain {
        init_tracing();
        let conn = connect_fault().await;
        let queue = TestQueue::declare_at(&fault_url(), &conn, name, &QueueSpec::default()).await;
        publish_n(&conn, &queue, n).await;
        let _ = conn.close(200, "ok".into()).await;

        let seen: Seen = Arc::default();
        let record = seen.clone();
        let source = AmqpSource::builder(
            fault_config().prefetch(prefetch).build().unwrap(),
            [queue.as_str()],
        )
        .build()
        .unwrap();
        let mut app = App::new();
        app.handle_signals(false);
        app.route("faults", source, move |batch: Vec<AmqpMessage>| {
            let record = record.clone();
            async move {
                {
                    let mut seen = record.lock().unwrap();
                    for message in &batch {
                        *seen.entry(message.text()?.to_owned()).or_default() += 1;
                    }
                }
                tokio::time::sleep(work).await;
                Ok::<_, BoxError>(())
            }
        })
        .options(
            RouteOptions::new()
                .bulk_size(bulk)
                .max_concurrent_batches(1)
                .flush_interval(Duration::from_millis(50)),
        );
        let shutdown = app.shutdown_handle();
        let run = tokio::spawn(app.run());
        Drain {
            queue,
            seen,
            shutdown,
            run,
        }
    }

    /// Distinct bodies handled so far.
    fn handled(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Whether `body` was handled.
    fn saw(&self, body: &str) -> bool {
        self.seen.lock().unwrap().contains_key(body)
    }

    /// Waits until `n` distinct bodies were handled (mid-drain: where to inject a fault).
    async fn until_handled(&self, n: usize, what: &str) {
        wait_until(BOUND, || async { self.handled() >= n })
            .await
            .expect(what);
    }

    /// Waits until the queue shows no ready and no unacknowledged message.
    async fn until_settled(&self) {
        let node = fault_node();
        let last = Mutex::new(None);
        let settled = wait_until(BOUND, || async {
            let info = list_queues_on(&node, "/")
                .await
                .into_iter()
                .find(|q| q.name == *self.queue);
            let done = info
                .as_ref()
                .is_some_and(|q| q.messages_ready == 0 && q.messages_unacknowledged == 0);
            *last.lock().unwrap() = info;
            done || {
                // rabbitmqctl takes most of a second; do not poll it any faster.
                tokio::time::sleep(Duration::from_millis(250)).await;
                false
            }
        })
        .await
        .held();
        assert!(
            settled,
            "the queue was not drained with nothing unacked: {:?}",
            last.lock().unwrap()
        );
    }

    /// The checks after a fault: all `published` (`message-0` …) handled at least once, the
    /// queue drained with nothing unacked, one more message handled (the worker still
    /// consumes), a clean shutdown. Prints the summary line and returns the duplicates.
    async fn finish(self, fault: &str, published: usize) -> usize {
        let all = wait_until(BOUND, || async {
            let seen = self.seen.lock().unwrap();
            (0..published).all(|i| seen.contains_key(&format!("message-{i}")))
        })
        .await
        .held();
        let missing: Vec<_> = {
            let seen = self.seen.lock().unwrap();
            (0..published)
                .map(|i| format!("message-{i}"))
                .filter(|body| !seen.contains_key(body))
                .collect()
        };
        assert!(
            all,
            "fault {fault}: {} of {published} messages never handled, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        );
        self.until_settled().await;

        let conn = connect_fault().await;
        let last = format!("after-{fault}");
        publish_bodies(&conn, &self.queue, [last.as_str()]).await;
        wait_until(BOUND, || async { self.saw(&last) })
            .await
            .expect("the worker to consume a message published after the fault");
        self.until_settled().await;
        let _ = conn.close(200, "ok".into()).await;

        self.shutdown.trigger();
        let result = tokio::time::timeout(BOUND, self.run)
            .await
            .expect("the app stops")
            .expect("the app task does not panic");
        assert!(result.is_ok(), "{result:?}");

        let seen = self.seen.lock().unwrap();
        let handled = (0..published)
            .filter(|i| seen.contains_key(&format!("message-{i}")))
            .count();
        let duplicates: usize = seen.values().map(|n| n - 1).sum();
        println!(
            "fault={fault} published={published} handled={handled} lost={} duplicates={duplicates}",
            published - handled
        );
        duplicates
    }
}

/// The node's `rabbit` application stopped and started mid-drain (every connection dropped,
/// the durable queue and its persistent messages recovered from disk): the worker reconnects
/// and drains the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_drain_loses_nothing() {
    let _turn = TURN.lock().await;
    const N: usize = 2_000;
    let drain = Drain::start("restart", N, 200, 50, Duration::from_millis(100)).await;
    drain.until_handled(300, "the drain to start").await;
    ctl(&["stop_app"]).await;
    let during = drain.handled();
    ctl(&["start_app"]).await;
    assert!(
        during < N,
        "the restart came mid-drain ({during} of {N} handled)"
    );
    drain.finish("broker-restart", N).await;
}

/// Every connection of the node closed from the broker side, twice, mid-drain: the worker
/// reconnects each time and drains the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_closed_by_the_broker_twice_lose_nothing() {
    let _turn = TURN.lock().await;
    const N: usize = 3_000;
    let drain = Drain::start("close-twice", N, 200, 50, Duration::from_millis(100)).await;
    drain.until_handled(300, "the drain to start").await;
    ctl(&["close_all_connections", "fault test: first close"]).await;
    let first = drain.handled();
    assert!(first < N, "the first close came mid-drain ({first} of {N})");
    drain
        .until_handled(first + 200, "the worker to resume after the first close")
        .await;
    ctl(&["close_all_connections", "fault test: second close"]).await;
    let second = drain.handled();
    assert!(
        second < N,
        "the second close came mid-drain ({second} of {N})"
    );
    drain.finish("connections-closed-twice", N).await;
}

/// A memory alarm raised mid-drain: consuming goes on (the worker only acks, and the broker
/// blocks publishing connections), a `Publisher` publish during the alarm times out with an
/// error that says the connection is blocked, and once the alarm clears both the publisher
/// and the worker carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_alarm_blocks_publishing_but_not_consuming() {
    let _turn = TURN.lock().await;
    const N: usize = 1_000;
    let drain = Drain::start("alarm", N, 200, 50, Duration::from_millis(20)).await;
    let publisher = Publisher::builder()
        .timeout(Duration::from_secs(1))
        .connect(&fault_config().build().unwrap())
        .await
        .expect("a publisher on the fault node");
    drain.until_handled(200, "the drain to start").await;

    let alarm = MemoryAlarm::raise_on(&fault_node()).await;
    // The alarm takes effect within a memory-monitor tick: until then a publish may pass.
    let mut blocked = None;
    for attempt in 0..20 {
        match publisher
            .publish_bytes("", &drain.queue, format!("during-alarm-{attempt}"))
            .await
        {
            Err(error @ PublishError::Timeout { blocked: true, .. }) => {
                blocked = Some(error);
                break;
            }
            Err(error) if !error.is_timeout() => panic!("unexpected publish error: {error}"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let error = blocked.expect("a publish during the alarm times out on a blocked connection");
    let text = error.to_string();
    assert!(text.contains("blocked"), "a clear error: {text}");
    println!("publish during the alarm: {text}");
    // Consuming goes on during the alarm: the queue drains.
    let drained = wait_until(BOUND, || async { drain.handled() >= N })
        .await
        .held();
    drop(alarm);
    assert!(
        drained,
        "only {} of {N} handled during the alarm",
        drain.handled()
    );

    // Cleared: the publisher publishes again, and the worker handles it.
    publisher
        .publish_bytes("", &drain.queue, "after-alarm")
        .await
        .expect("a publish after the alarm clears");
    wait_until(BOUND, || async { drain.saw("after-alarm") })
        .await
        .expect("the message published after the alarm to be handled");
    let _ = publisher.close().await;
    drain.finish("memory-alarm", N).await;
}

/// The queue deleted mid-drain (the broker cancels the consumer) and declared again: the
/// messages already delivered are handled, and the worker consumes the new queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_deleted_and_recreated_mid_drain() {
    let _turn = TURN.lock().await;
    // All of them delivered at once (prefetch above N), so none is deleted with the queue.
    const N: usize = 100;
    let drain = Drain::start("deleted", N, 200, 10, Duration::from_millis(300)).await;
    drain.until_handled(20, "the drain to start").await;
    let conn = connect_fault().await;
    let ch = channel(&conn).await;
    let purged = ch
        .queue_delete(drain.queue.as_str().into(), Default::default())
        .await
        .expect("delete the queue");
    let during = drain.handled();
    assert!(during < N, "the delete came mid-drain ({during} of {N})");
    declare_queue(&conn, &drain.queue).await;
    println!("queue deleted with {purged} ready messages, {during} of {N} handled");
    let _ = conn.close(200, "ok".into()).await;
    drain.finish("queue-deleted", N).await;
}
