//! Process level: the `memory_worker` example, started as a child process and sent a real
//! SIGTERM mid-batch, shuts down gracefully, settles every message and exits 0.
//!
//! Real time is unavoidable here; every wait is on a condition (a log line, the exit) with a
//! deadline, and the simulated work is kept short.

#![cfg(unix)]

mod support;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use support::Worker;

/// The `memory_worker` example, built once per test binary.
fn example_binary() -> &'static PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| support::example_binary("memory_worker"))
}

/// The `summary key=value ...` line's numbers.
fn summary(lines: &[String]) -> HashMap<String, usize> {
    let line = lines
        .iter()
        .find(|l| l.starts_with("summary "))
        .unwrap_or_else(|| panic!("no summary line in:\n{}", lines.join("\n")));
    line["summary ".len()..]
        .split_whitespace()
        .map(|pair| {
            let (key, value) = pair.split_once('=').expect("key=value");
            (key.to_owned(), value.parse().expect("a number"))
        })
        .collect()
}

#[test]
fn sigterm_mid_batch_exits_0_with_every_message_settled() {
    // Batches of 5, one at a time, 1 s each; 2.5 s of grace. SIGTERM comes as the second
    // batch starts (by then every message has long been pulled from the queue; a SIGTERM
    // right at the first batch could stop intake before the last messages were pulled, and
    // they would stay in the queue): that batch finishes and is acked, the batches that
    // cannot finish within the grace period are requeued. The margins do not depend on the
    // machine's speed in the direction that matters: a late SIGTERM only gives the second
    // batch more time (it needs 1 s of the 2.5 s), and the last of the eight batches ends
    // 7 s after the second started, so it is abandoned unless the signal comes 4.5 s late.
    let mut worker = Worker::start(
        example_binary(),
        &[
            ("MESSAGES", "40"),
            ("BULK_SIZE", "5"),
            ("WORK_MS", "1000"),
            ("GRACE_MS", "2500"),
        ],
    );
    worker.wait_for("batch started");
    worker.wait_for("batch started");
    let sent = Instant::now();
    worker.signal("TERM");
    let (status, lines) = worker.finish();
    let took = sent.elapsed();

    assert!(
        status.success(),
        "exit status {status}; output:\n{}",
        lines.join("\n")
    );
    let s = summary(&lines);
    assert_eq!(s["pushed"], 40);
    assert_eq!(s["unsettled"], 0, "{s:?}");
    assert_eq!(s["undelivered"], 0, "{s:?}");
    assert_eq!(s["ack"] + s["reject"] + s["requeue"], s["pushed"], "{s:?}");
    assert!(
        s["ack"] >= 10,
        "the in-flight batch completed and was acked: {s:?}"
    );
    assert!(
        s["requeue"] >= 5,
        "batches past the grace period were requeued: {s:?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("grace period over")),
        "output:\n{}",
        lines.join("\n")
    );
    assert!(took < Duration::from_secs(10), "shutdown took {took:?}");
}

#[test]
fn sigterm_flushes_the_partial_batch_and_acks_everything() {
    // 7 messages and a poison one in batches of 5: three wait in a partial batch (the flush
    // interval is 60 s) after the first batch is done. SIGTERM flushes them.
    let mut worker = Worker::start(
        example_binary(),
        &[
            ("MESSAGES", "7"),
            ("BULK_SIZE", "5"),
            ("WORK_MS", "500"),
            ("POISON", "1"),
        ],
    );
    worker.wait_for("batch done");
    worker.signal("TERM");
    let (status, lines) = worker.finish();

    assert!(
        status.success(),
        "exit status {status}; output:\n{}",
        lines.join("\n")
    );
    let s = summary(&lines);
    assert_eq!(s["pushed"], 8, "{s:?}");
    assert_eq!((s["ack"], s["reject"], s["requeue"]), (7, 1, 0), "{s:?}");
    assert_eq!((s["unsettled"], s["undelivered"]), (0, 0), "{s:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("flush_reason=\"shutdown\"") && l.contains("batch started")),
        "the partial batch is flushed by the shutdown; output:\n{}",
        lines.join("\n")
    );
}

#[test]
fn a_second_sigterm_forces_a_fast_exit() {
    let mut worker = Worker::start(
        example_binary(),
        &[("MESSAGES", "5"), ("BULK_SIZE", "5"), ("WORK_MS", "60000")],
    );
    worker.wait_for("batch started");
    let sent = Instant::now();
    worker.signal("TERM");
    worker.wait_for("shutting down gracefully");
    worker.signal("TERM");
    let (status, lines) = worker.finish();

    assert!(
        !status.success(),
        "a forced shutdown is an error exit; output:\n{}",
        lines.join("\n")
    );
    assert!(
        sent.elapsed() < Duration::from_secs(10),
        "exited without waiting for the 60 s batch or the 30 s grace"
    );
    assert!(
        !lines.iter().any(|l| l.starts_with("summary ")),
        "no summary after a forced exit"
    );
}
