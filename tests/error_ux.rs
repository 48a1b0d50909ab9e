//! What a user sees when something is wrong, tried as a new user would: the `amqp_worker`
//! example run as a child process with a mistake in its environment.
//!
//! - a program that stops on an error prints it for a person (its message and causes), not
//!   its `Debug` form;
//! - one failure, one log line: an unreachable broker is logged once per attempt;
//! - a vhost in `AMQP_URL` wins over the example's default one unless `VHOST` is set.

#![cfg(unix)]

mod support;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{DEADLINE, Worker};

#[test]
fn a_worker_that_stops_on_an_error_prints_it_for_a_person() {
    let mut child = Command::new(support::amqp_worker_binary())
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .env("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672")
        .env("BULK_SIZE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the example starts");
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait works") {
            break status;
        }
        assert!(Instant::now() < deadline, "the worker did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("piped")
        .read_to_string(&mut stderr)
        .expect("stderr reads");
    assert!(
        !status.success(),
        "BULK_SIZE=0 must fail; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("bulk size must be at least 1"),
        "the error's message: {stderr}"
    );
    assert!(
        !stderr.contains("Config(") && !stderr.contains("(\""),
        "printed for a person, not as Debug: {stderr}"
    );
}

#[test]
fn an_unreachable_broker_is_logged_once_per_attempt() {
    let mut worker = Worker::start(
        &support::amqp_worker_binary(),
        &[("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")],
    );
    // Three attempts (the backoff starts at 0.5 s), then stop.
    let mut attempts = 0;
    let deadline = Instant::now() + DEADLINE;
    while attempts < 3 {
        let line = worker
            .next_line(deadline)
            .expect("the worker keeps running");
        if line.contains("cannot connect") {
            attempts += 1;
        }
    }
    worker.signal("TERM");
    let (_, lines) = worker.finish();
    let about_it: Vec<&String> = lines.iter().filter(|l| l.contains("refused")).collect();
    let per_attempt = lines
        .iter()
        .filter(|l| l.contains("cannot connect"))
        .count();
    assert_eq!(
        about_it.len(),
        per_attempt,
        "each failed attempt once, not repeated by the example's callback or the runtime:\n{}",
        about_it
            .iter()
            .map(|l| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The vhost the example says it starts on, with `env` over a broker that refuses the vhost
/// (it does not exist): the worker keeps retrying, and its `starting` line names the vhost.
fn vhost_used(env: &[(&str, &str)]) -> String {
    let mut worker = Worker::start(&support::amqp_worker_binary(), env);
    let line = worker.wait_for("starting");
    worker.signal("TERM");
    let _ = worker.finish();
    line.split("vhost=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no vhost in {line:?}"))
        .trim_matches('"')
        .to_owned()
}

#[test]
fn a_vhost_in_the_url_wins_unless_vhost_is_set() {
    let url = "amqp://guest:guest@127.0.0.1:5672/aw-ux-no-such-vhost";
    assert_eq!(vhost_used(&[("AMQP_URL", url)]), "aw-ux-no-such-vhost");
    assert_eq!(
        vhost_used(&[("AMQP_URL", url), ("VHOST", "aw-ux-other")]),
        "aw-ux-other"
    );
    assert_eq!(
        vhost_used(&[("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672")]),
        "fluentd",
        "no vhost in the URL: the example's default"
    );
}
