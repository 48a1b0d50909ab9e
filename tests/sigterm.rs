//! Process level: the `memory_worker` example, started as a child process and sent a real
//! SIGTERM mid-batch, shuts down gracefully, settles every message and exits 0.
//!
//! Real time is unavoidable here; every wait is on a condition (a log line, the exit) with a
//! deadline, and the simulated work is kept short.

#![cfg(unix)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

/// How long any one condition may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(20);

/// Builds the example (once per test binary) and returns its path, as cargo reports it.
fn example_binary() -> &'static PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let output = Command::new(env!("CARGO"))
            .args([
                "build",
                "--example",
                "memory_worker",
                "--quiet",
                "--message-format=json",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stderr(Stdio::inherit())
            .output()
            .expect("cargo runs");
        assert!(
            output.status.success(),
            "cargo build --example memory_worker failed"
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|message| message["target"]["name"] == "memory_worker")
            .find_map(|message| message["executable"].as_str().map(PathBuf::from))
            .expect("cargo reports the example's executable")
    })
}

/// A running worker and its log (stdout) lines, read on a thread of their own.
struct Worker {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        // A failed test must not leave the worker running.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Worker {
    fn start(env: &[(&str, &str)]) -> Worker {
        let mut child = Command::new(example_binary())
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .env("ASYNCWORKER_LOGLEVEL", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the example starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Worker {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    fn output(&self) -> String {
        self.seen.join("\n")
    }

    /// The next line before `deadline`; `None` once the output has ended.
    fn next_line(&mut self, deadline: Instant) -> Option<String> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left) {
            Ok(line) => {
                self.seen.push(line.clone());
                Some(line)
            }
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => {
                panic!(
                    "no progress within {DEADLINE:?}; output:\n{}",
                    self.output()
                )
            }
        }
    }

    /// Reads lines until one contains `needle`, within the deadline.
    fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        while let Some(line) = self.next_line(deadline) {
            if line.contains(needle) {
                return line;
            }
        }
        panic!("exited before {needle:?}; output:\n{}", self.output())
    }

    fn signal(&self, name: &str) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} {pid} failed");
    }

    /// Reads the rest of the output and waits for the exit, within the deadline.
    fn finish(mut self) -> (ExitStatus, Vec<String>) {
        let deadline = Instant::now() + DEADLINE;
        while self.next_line(deadline).is_some() {}
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait works") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the worker did not exit; output:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        (status, std::mem::take(&mut self.seen))
    }
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
    // Batches of 5, one at a time, 1 s each; 1.5 s of grace. SIGTERM comes as the second
    // batch starts (by then every message has long been pulled from the queue; a SIGTERM
    // right at the first batch could stop intake before the last messages were pulled, and
    // they would stay in the queue): that batch finishes and is acked, the batches that
    // cannot finish within the grace period are requeued.
    let mut worker = Worker::start(&[
        ("MESSAGES", "20"),
        ("BULK_SIZE", "5"),
        ("WORK_MS", "1000"),
        ("GRACE_MS", "1500"),
    ]);
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
    assert_eq!(s["pushed"], 20);
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
    let mut worker = Worker::start(&[
        ("MESSAGES", "7"),
        ("BULK_SIZE", "5"),
        ("WORK_MS", "500"),
        ("POISON", "1"),
    ]);
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
    let mut worker = Worker::start(&[("MESSAGES", "5"), ("BULK_SIZE", "5"), ("WORK_MS", "60000")]);
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
