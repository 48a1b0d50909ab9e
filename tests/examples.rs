//! Every example runs as its documentation says: each is built as `cargo test --workspace
//! --all-features` builds it, started as a child process, and must exit 0 (by itself, or
//! cleanly after the SIGTERM its docs tell you to send) printing what its docs show.
//!
//! The examples that need no external service run as they are; `amqp_publish` then
//! `amqp_worker` run against the local broker (`AMQP_URL`, default `127.0.0.1:5672`) on a
//! queue of their own, through the `QUEUES` and `VHOST` variables they document.

#![cfg(all(
    unix,
    feature = "amqp",
    feature = "sse",
    feature = "timeit",
    feature = "prometheus"
))]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::{DEADLINE, Worker, example_binary};

/// Starts the example `name` with `env`.
fn start(name: &str, env: &[(&str, &str)]) -> Worker {
    Worker::start(&example_binary(name), env)
}

/// Runs the example `name` to its own exit; asserts it exited 0 and returns its output.
fn run_to_exit(name: &str, env: &[(&str, &str)]) -> Vec<String> {
    let (status, lines) = start(name, env).finish();
    assert!(
        status.success(),
        "{name} exited with {status}:\n{}",
        lines.join("\n")
    );
    lines
}

/// Sends SIGTERM, then asserts the example exits 0; returns its whole output.
fn stop(name: &str, worker: Worker) -> Vec<String> {
    worker.signal("TERM");
    let (status, lines) = worker.finish();
    assert!(
        status.success(),
        "{name} exited with {status} after SIGTERM:\n{}",
        lines.join("\n")
    );
    lines
}

fn has(lines: &[String], needle: &str) -> bool {
    lines.iter().any(|line| line.contains(needle))
}

#[test]
fn memory_worker_settles_every_message_and_stops_on_sigterm() {
    let mut worker = start(
        "memory_worker",
        &[("MESSAGES", "6"), ("BULK_SIZE", "3"), ("WORK_MS", "10")],
    );
    worker.wait_for("messages queued");
    worker.wait_for("batch done");
    worker.wait_for("batch done");
    let lines = stop("memory_worker", worker);
    assert!(
        has(
            &lines,
            "summary pushed=6 ack=6 reject=0 requeue=0 undelivered=0 unsettled=0"
        ),
        "{}",
        lines.join("\n")
    );
}

#[test]
fn memory_worker_rejects_the_poison_message() {
    let mut worker = start(
        "memory_worker",
        &[
            ("MESSAGES", "2"),
            ("BULK_SIZE", "3"),
            ("WORK_MS", "10"),
            ("POISON", "1"),
        ],
    );
    worker.wait_for("not a job; rejected");
    worker.wait_for("batch done");
    let lines = stop("memory_worker", worker);
    assert!(
        has(
            &lines,
            "summary pushed=3 ack=2 reject=1 requeue=0 undelivered=0 unsettled=0"
        ),
        "{}",
        lines.join("\n")
    );
}

#[test]
fn sse_worker_prints_the_embedded_sources_events_as_the_original_does() {
    let mut worker = start("sse_worker", &[]);
    worker.wait_for("Events received: 2 ['deployment_info', 'status_update_event']");
    worker.wait_for("Event Received: deployment_info plan-1");
    worker
        .wait_for("Event Received: status_update_event app=/asgard/web, task=web.2 (TASK_RUNNING)");
    let lines = stop("sse_worker", worker);
    assert!(
        has(&lines, "worker stopped; every event handed out was settled"),
        "{}",
        lines.join("\n")
    );
}

/// `GET path` on `addr`, HTTP/1.1 with `Connection: close`: (status line, whole response).
fn get(addr: &str, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).expect("the example's server accepts");
    stream
        .set_read_timeout(Some(DEADLINE))
        .expect("a read timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("request sent");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response read");
    let status = response.lines().next().unwrap_or_default().to_owned();
    (status, response)
}

/// The `host:port` of the server an example logs on its line starting with `needle`
/// (`… http://host:port/metrics`).
fn metrics_addr(worker: &mut Worker, needle: &str) -> String {
    let line = worker.wait_for(needle);
    line.split("http://")
        .nth(1)
        .and_then(|rest| rest.split("/metrics").next())
        .expect("the address is logged")
        .to_owned()
}

#[test]
fn prometheus_serves_metrics_and_health_then_stops_on_sigterm() {
    // Port 0: a free port, which the example logs.
    let mut worker = start("prometheus", &[("METRICS_PORT", "0")]);
    let addr = metrics_addr(&mut worker, "metrics:   http://");

    let (status, body) = get(&addr, "/health/live");
    assert!(status.contains(" 200"), "{body}");

    // Ready once the ticks route runs; timed batches show up in /metrics.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (ready, _) = get(&addr, "/health/ready");
        let (_, metrics) = get(&addr, "/metrics");
        if ready.contains(" 200")
            && metrics.contains("asyncworker_timeit_seconds")
            && metrics.contains(r#"transaction="handle-ticks""#)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never ready with timed batches; last /metrics:\n{metrics}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    stop("prometheus", worker);
}

#[test]
fn http_routes_serves_the_users_routes_beside_metrics_then_stops_by_itself() {
    let mut worker = start("http_routes", &[("HTTP_PORT", "0"), ("RUN_SECS", "3")]);
    let addr = metrics_addr(&mut worker, "metrics:     http://");
    let (status, body) = get(&addr, "/ticks");
    assert!(status.contains(" 200"), "{body}");
    assert!(
        body.contains('{') || body.contains('['),
        "a JSON answer: {body}"
    );
    let (status, body) = get(&addr, "/metrics");
    assert!(status.contains(" 200"), "{body}");
    let (status, lines) = worker.finish();
    assert!(status.success(), "exit {status}:\n{}", lines.join("\n"));
    assert!(
        has(&lines, "ran long enough; shutting down"),
        "{}",
        lines.join("\n")
    );
}

#[test]
fn timeit_scope_reports_the_one_transaction() {
    let lines = run_to_exit("timeit_scope", &[]);
    assert!(
        has(&lines, r#"transactions: [Timing { name: "xablau""#)
            && has(&lines, "outcome: Ok")
            && has(&lines, "error: None"),
        "{}",
        lines.join("\n")
    );
}

#[test]
fn timeit_error_reports_the_error_and_returns_it() {
    let lines = run_to_exit("timeit_error", &[]);
    assert!(
        has(&lines, "outcome: Error")
            && has(&lines, r#"type_name: "timeit_error::KeyError""#)
            && has(&lines, r#"message: "key not found: error""#)
            && has(&lines, "result: Err(KeyError(\"error\"))"),
        "{}",
        lines.join("\n")
    );
}

#[test]
fn timeit_layer_reports_every_call() {
    let lines = run_to_exit("timeit_layer", &[]);
    let reports = lines
        .iter()
        .filter(|l| l.starts_with("xablau-access-time: ") && l.ends_with("(ok)"))
        .count();
    assert_eq!(reports, 3, "{}", lines.join("\n"));
    for n in 1..=3 {
        assert!(has(&lines, &format!("handled {n} messages")), "{lines:?}");
    }
}

#[test]
fn timeit_transactions_reports_innermost_first_to_the_root() {
    let lines = run_to_exit("timeit_transactions", &[]);
    let names: Vec<&str> = lines.iter().filter_map(|l| l.split(": ").next()).collect();
    assert_eq!(names, ["c", "b", "a"], "{}", lines.join("\n"));
}

fn broker_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672".into())
}

/// Deletes the queue `amqp_publish` declared, also when the test fails.
struct DeleteQueue(String);

impl Drop for DeleteQueue {
    fn drop(&mut self) {
        let name = self.0.clone();
        let Ok(runtime) = tokio::runtime::Runtime::new() else {
            return;
        };
        runtime.block_on(async move {
            use asyncworker::amqp::AmqpConfig;
            use asyncworker::amqp::lapin::options::QueueDeleteOptions;
            let Ok(config) = AmqpConfig::from_url(&broker_url()) else {
                return;
            };
            let Ok(connection) = config.connect().await else {
                return;
            };
            if let Ok(channel) = connection.create_channel().await {
                let _ = channel
                    .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                    .await;
            }
            let _ = connection.close(200, "done".into()).await;
        });
    }
}

#[test]
fn amqp_publish_then_amqp_worker_drain_a_queue_and_stop_on_sigterm() {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let queue = format!("aw-test-examples-{:x}-{nanos:x}", std::process::id());
    let _cleanup = DeleteQueue(queue.clone());
    let url = broker_url();
    let env = [
        ("AMQP_URL", url.as_str()),
        ("VHOST", "/"),
        ("QUEUES", queue.as_str()),
    ];

    let mut publish_env = env.to_vec();
    publish_env.extend([("MESSAGES", "5"), ("POISON", "1")]);
    let published = run_to_exit("amqp_publish", &publish_env);
    for i in 0..5 {
        assert!(
            has(&published, &format!("confirmed msg-{i} -> {queue}")),
            "{}",
            published.join("\n")
        );
    }
    assert!(has(&published, "confirmed poison"), "{published:?}");
    assert!(published.iter().any(|l| l == "done"), "{published:?}");

    let mut worker_env = env.to_vec();
    worker_env.extend([("BULK_SIZE", "2"), ("ASYNCWORKER_FLUSH_TIMEOUT", "1")]);
    let mut worker = start("amqp_worker", &worker_env);
    let deadline = Instant::now() + DEADLINE;
    let mut seen = std::collections::HashSet::new();
    let mut poison_rejected = false;
    while seen.len() < 5 || !poison_rejected {
        let line = worker
            .next_line(deadline)
            .expect("the worker runs until every message is handled");
        poison_rejected |= line.contains("not JSON; rejecting");
        if line.contains("amqp_worker: message")
            && let Some(id) = line.split("id=\"").nth(1).and_then(|r| r.split('"').next())
        {
            seen.insert(id.to_owned());
        }
    }
    let lines = stop("amqp_worker", worker);
    assert!(
        has(
            &lines,
            "worker stopped; every message acked or back in its queue"
        ),
        "{}",
        lines.join("\n")
    );
}
