//! Helpers for process-level tests: build an example, run it as a child process, read its
//! log lines with deadlines, send it real signals.

#![allow(dead_code, unreachable_pub)]

pub mod runs;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

/// How long any one condition may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Builds the example `name` and returns its path, as cargo reports it.
///
/// Built the way `cargo test --workspace --all-features` (the README's test command) builds
/// examples, so the build is a no-op there instead of a second build with other features.
pub fn example_binary(name: &str) -> PathBuf {
    let args = [
        "build",
        "--workspace",
        "--all-features",
        "--example",
        name,
        "--quiet",
        "--message-format=json",
    ];
    let output = Command::new(env!("CARGO"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(Stdio::inherit())
        .output()
        .expect("cargo runs");
    assert!(
        output.status.success(),
        "cargo build --example {name} failed"
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["target"]["name"] == name)
        .find_map(|message| message["executable"].as_str().map(PathBuf::from))
        .expect("cargo reports the example's executable")
}

/// The `amqp_worker` example, built once per test binary (the process tests of several
/// binaries run it). Blocking: async tests call it through `spawn_blocking`.
pub fn amqp_worker_binary() -> PathBuf {
    static BINARY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BINARY.get_or_init(|| example_binary("amqp_worker")).clone()
}

/// A running worker and its log (stdout) lines, read on a thread of their own.
pub struct Worker {
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
    /// Starts `binary` with `env` over a clean log environment.
    pub fn start(binary: &Path, env: &[(&str, &str)]) -> Worker {
        let mut child = Command::new(binary)
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

    pub fn output(&self) -> String {
        self.seen.join("\n")
    }

    /// The next line before `deadline`; `None` once the output has ended.
    pub fn next_line(&mut self, deadline: Instant) -> Option<String> {
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

    /// The lines logged since the last read, without waiting.
    pub fn poll_lines(&mut self) -> Vec<String> {
        let fresh: Vec<String> = self.lines.try_iter().collect();
        self.seen.extend(fresh.iter().cloned());
        fresh
    }

    /// Reads lines until one contains `needle`, within the deadline.
    pub fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        while let Some(line) = self.next_line(deadline) {
            if line.contains(needle) {
                return line;
            }
        }
        panic!("exited before {needle:?}; output:\n{}", self.output())
    }

    pub fn signal(&self, name: &str) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} {pid} failed");
    }

    /// Reads the rest of the output and waits for the exit, within the deadline.
    pub fn finish(mut self) -> (ExitStatus, Vec<String>) {
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
