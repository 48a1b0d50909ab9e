//! `init_logging` keeps secrets out of a worker's output at every `ASYNCWORKER_LOGLEVEL`,
//! `RUST_LOG=trace` and `RUST_LOG=lapin=trace` included: this test binary runs itself as a
//! child process (the `child_*` test, which does nothing unless [`CHILD`] is set) that logs in
//! to the test broker as a user of its own with a known password, publishes a mandatory
//! message no queue takes (the broker returns it) and exits; everything the child writes is
//! searched for the password and for the returned message's body.
//!
//! lapin prints the frames it sends at TRACE (`lapin::io_loop`, "will write to buffer"): the
//! login frame (`connection.start-ok`) carries `\0user\0password` as a `LongString`, which
//! prints as a list of decimal bytes (`LongString([0, 97, 119, ...])`), not as text. So the
//! search looks for both spellings, and the last run (the frame target named in `RUST_LOG`,
//! which lifts the cap on purpose) shows the search does find the login frame.
//!
//! The format of the output is checked the same way, with a second child (the
//! `child_logs_a_batch` test, which does nothing unless [`BATCH_CHILD`] is set) that runs an
//! app over an in-memory queue and logs inside a batch: no ANSI escapes when its output is a
//! pipe or `NO_COLOR` is set, colours on a terminal (a pseudo-terminal from util-linux's
//! `script`), one JSON object per line with `ASYNCWORKER_LOG_FORMAT=json`.

#![cfg(unix)]

use std::hash::{BuildHasher, Hasher};
use std::process::{Command, Stdio};

use asyncworker::amqp::{AmqpConfig, OutgoingMessage, Publisher};
use asyncworker::memory::{MemoryMessage, MemoryQueue};
use asyncworker::{App, Settings};

/// Set (to the broker URL with the child's credentials) in the child process only.
const CHILD: &str = "ASYNCWORKER_TEST_LOGGING_CHILD";
/// The routing key of the message the broker returns: no queue has this name.
const NO_QUEUE: &str = "aw-test-logging-no-such-queue";
/// Printed by the child when it got through: connected, returned, closed.
const DONE: &str = "logging child: done";

fn broker_url() -> String {
    std::env::var("ASYNCWORKER_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

fn random_hex() -> String {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    format!("{:016x}", hasher.finish())
}

/// What the child does: a worker's start, with the facade's `init_logging`.
#[test]
fn child_logs_in_and_gets_a_message_returned() {
    let Ok(url) = std::env::var(CHILD) else {
        return; // not the child
    };
    let body = std::env::var("BODY").expect("the parent sets BODY");
    asyncworker::init_logging(&Settings::from_env().expect("valid settings"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let config = AmqpConfig::from_url(&url).expect("a valid URL");
        let publisher = Publisher::connect(&config).await.expect("logged in");
        let returned = publisher
            .publish(OutgoingMessage::new("", NO_QUEUE, body.into_bytes()).mandatory(true))
            .await
            .expect_err("no queue takes it");
        assert!(returned.is_unroutable(), "{returned:?}");
        publisher.close().await.expect("closed");
    });
    println!("{DONE}");
}

/// A user of the test broker for this test only (permissions on vhost `/`), deleted on drop.
struct TestUser {
    name: String,
    password: String,
}

fn rabbitmqctl(args: &[&str]) {
    let status = Command::new("rabbitmqctl")
        .args(["-n", "rabbit@localhost", "-q"])
        .args(args)
        .env("ERL_EPMD_ADDRESS", "127.0.0.1")
        .env(
            "PATH",
            format!(
                "{}:/usr/sbin:/sbin",
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .stdout(Stdio::null())
        .status()
        .expect("rabbitmqctl runs");
    assert!(status.success(), "rabbitmqctl {args:?} failed: {status}");
}

impl TestUser {
    fn create() -> TestUser {
        let suffix = random_hex();
        let user = TestUser {
            name: format!("aw-test-logging-{suffix}"),
            password: format!("pw-{suffix}-Zt9q"),
        };
        rabbitmqctl(&["add_user", &user.name, &user.password]);
        rabbitmqctl(&["set_permissions", "-p", "/", &user.name, ".*", ".*", ".*"]);
        user
    }

    /// The test broker's URL with this user's credentials.
    fn url(&self) -> String {
        let base = broker_url();
        let host = base
            .split_once('@')
            .map_or("127.0.0.1:5672/%2f", |(_, host)| host);
        format!("amqp://{}:{}@{host}", self.name, self.password)
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        rabbitmqctl(&["delete_user", &self.name]);
    }
}

/// Runs the child at `level` with `rust_log` (unset when `None`) and returns all it wrote,
/// standard output and standard error.
fn run_child(user: &TestUser, body: &str, level: &str, rust_log: Option<&str>) -> String {
    let mut command = Command::new(std::env::current_exe().expect("the test binary"));
    command
        .args([
            "--exact",
            "child_logs_in_and_gets_a_message_returned",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, user.url())
        .env("BODY", body)
        .env("ASYNCWORKER_LOGLEVEL", level)
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG");
    if let Some(rust_log) = rust_log {
        command.env("RUST_LOG", rust_log);
    }
    let output = command.output().expect("the child runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && text.contains(DONE),
        "the child failed ({}) at level {level}, RUST_LOG {rust_log:?}:\n{text}",
        output.status
    );
    text
}

/// `secret` as text, or as the decimal bytes lapin's `Debug` of a `LongString` or a body shows.
fn spellings(secret: &str) -> [String; 2] {
    let bytes: Vec<String> = secret.bytes().map(|b| b.to_string()).collect();
    [secret.to_owned(), bytes.join(", ")]
}

fn shows(output: &str, secret: &str) -> bool {
    spellings(secret)
        .iter()
        .any(|s| output.contains(s.as_str()))
}

#[test]
fn init_logging_keeps_the_password_and_returned_bodies_out_at_every_level() {
    if std::env::var_os(CHILD).is_some() {
        return; // the child runs only its own test
    }
    let user = TestUser::create();
    let body = format!("returned-body-{}", random_hex());
    for (level, rust_log) in [
        ("trace", None),
        ("debug", None),
        ("info", None),
        ("info", Some("trace")),
        ("info", Some("lapin=trace")),
        ("error", Some("lapin=trace,asyncworker=trace")),
    ] {
        let output = run_child(&user, &body, level, rust_log);
        assert!(
            !shows(&output, &user.password),
            "the password shows at level {level}, RUST_LOG {rust_log:?}:\n{output}"
        );
        assert!(
            !shows(&output, &body),
            "the returned message's body shows at level {level}, RUST_LOG {rust_log:?}:\n{output}"
        );
        if level == "trace" || rust_log.is_some_and(|r| r.contains("trace")) {
            assert!(
                output.contains("TRACE"),
                "tracing output was captured:\n{output}"
            );
        }
    }
    // The search finds what it looks for: naming lapin's frame target lifts the cap, and the
    // login frame — the password in it — shows.
    let output = run_child(&user, &body, "info", Some("lapin::io_loop=trace"));
    assert!(
        shows(&output, &user.password),
        "the frame target named in RUST_LOG prints the login frame:\n{output}"
    );
}

/// Set in the batch-logging child only.
const BATCH_CHILD: &str = "ASYNCWORKER_TEST_LOGGING_BATCH_CHILD";
/// Printed by the batch-logging child before its first log line and after its last one.
const BEGIN: &str = "logging child: begin";
const END: &str = "logging child: end";
/// The message the batch-logging child's handler logs, inside the `batch` span.
const HANDLED: &str = "handled the batch";

/// What the second child does: an app that logs, once outside any span and once inside a
/// batch of the route `orders` (two messages), with the facade's `init_logging`.
#[test]
fn child_logs_a_batch() {
    if std::env::var_os(BATCH_CHILD).is_none() {
        return; // not the child
    }
    println!("{BEGIN}");
    let queue = MemoryQueue::new();
    queue.push_bytes("first");
    queue.push_bytes("second");
    queue.close(); // the app stops once both are handled
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let mut app = App::new();
        asyncworker::init_logging(app.settings().expect("valid settings"));
        app.handle_signals(false);
        tracing::warn!(pushed = queue.len(), "a warning outside any batch");
        app.route(
            "orders",
            queue.source(),
            |batch: Vec<MemoryMessage>| async move {
                tracing::info!(messages = batch.len(), "{HANDLED}");
                Ok::<(), std::io::Error>(())
            },
        )
        .bulk_size(2);
        app.run().await.expect("the app runs");
    });
    println!("{END}");
}

/// Runs the batch-logging child with `env` (and `NO_COLOR`, `RUST_LOG` and the settings
/// variables unset unless `env` sets them), through `script` on a pseudo-terminal when
/// `terminal`, and returns its standard output and standard error.
fn run_batch_child(env: &[(&str, &str)], terminal: bool) -> (String, String) {
    let exe = std::env::current_exe().expect("the test binary");
    let args = [
        "--exact",
        "child_logs_a_batch",
        "--nocapture",
        "--test-threads=1",
        "--color=never", // the harness's own `ok` stays plain on a terminal
    ];
    let mut command = if terminal {
        let line = std::iter::once(exe.to_str().expect("a UTF-8 path"))
            .chain(args)
            .map(|word| format!("'{}'", word.replace('\'', r"'\''")))
            .collect::<Vec<_>>()
            .join(" ");
        let mut script = Command::new("script");
        // Quiet, the child's exit status, flushed output, the typescript thrown away.
        script.args(["-q", "-e", "-f", "-c", &line, "/dev/null"]);
        script
    } else {
        let mut child = Command::new(exe);
        child.args(args);
        child
    };
    command
        .env(BATCH_CHILD, "1")
        .env_remove(CHILD)
        .env_remove("NO_COLOR")
        .env_remove("RUST_LOG")
        .env_remove("ASYNCWORKER_LOGLEVEL")
        .env_remove("ASYNCWORKER_LOG_FORMAT")
        .stdin(Stdio::null());
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().unwrap_or_else(|e| {
        panic!("the child runs (terminal: {terminal}; `script` is util-linux's): {e}")
    });
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success() && stdout.contains(END),
        "the child failed ({}) with {env:?}, terminal: {terminal}:\n{stdout}\n{stderr}",
        output.status
    );
    (stdout, stderr)
}

/// The lines the child logged: between its [`BEGIN`] and [`END`] lines.
fn logged(stdout: &str) -> Vec<&str> {
    let after = stdout
        .split_once(BEGIN)
        .map(|(_, after)| after)
        .unwrap_or_else(|| panic!("no begin line in:\n{stdout}"));
    let between = after
        .split_once(END)
        .map(|(between, _)| between)
        .unwrap_or_else(|| panic!("no end line in:\n{stdout}"));
    between
        .lines()
        .map(|line| line.trim_end_matches('\r')) // a terminal ends lines with \r\n
        .filter(|line| !line.is_empty())
        .collect()
}

const ESCAPE: &str = "\x1b[";

#[test]
fn text_logs_to_a_pipe_carry_no_ansi_escapes() {
    if std::env::var_os(CHILD).is_some() || std::env::var_os(BATCH_CHILD).is_some() {
        return;
    }
    let (stdout, stderr) = run_batch_child(&[], false);
    let lines = logged(&stdout);
    assert!(
        lines.iter().any(|l| l.contains(HANDLED)) && lines.iter().any(|l| l.contains("WARN")),
        "the child logged, as text:\n{stdout}"
    );
    assert!(
        !stdout.contains(ESCAPE) && !stderr.contains(ESCAPE),
        "ANSI escapes in piped output:\n{stdout:?}\n{stderr:?}"
    );
}

#[cfg(target_os = "linux")]
#[test]
fn text_logs_to_a_terminal_are_coloured_unless_no_color_is_set() {
    if std::env::var_os(CHILD).is_some() || std::env::var_os(BATCH_CHILD).is_some() {
        return;
    }
    // On a terminal: colours (so the search below does find escapes where there are some).
    let (coloured, _) = run_batch_child(&[], true);
    assert!(
        logged(&coloured).iter().any(|l| l.contains(HANDLED)),
        "{coloured}"
    );
    assert!(
        coloured.contains(ESCAPE),
        "no colours on a terminal:\n{coloured:?}"
    );
    // An empty NO_COLOR does not count (https://no-color.org).
    let (empty, _) = run_batch_child(&[("NO_COLOR", "")], true);
    assert!(
        empty.contains(ESCAPE),
        "no colours with an empty NO_COLOR:\n{empty:?}"
    );
    for no_color in ["1", "true", "0"] {
        let (plain, _) = run_batch_child(&[("NO_COLOR", no_color)], true);
        assert!(
            logged(&plain).iter().any(|l| l.contains(HANDLED)),
            "{plain}"
        );
        assert!(
            !plain.contains(ESCAPE),
            "ANSI escapes with NO_COLOR={no_color:?}:\n{plain:?}"
        );
    }
}

#[test]
fn json_logs_are_one_object_per_line_with_the_batch_span_and_its_fields() {
    if std::env::var_os(CHILD).is_some() || std::env::var_os(BATCH_CHILD).is_some() {
        return;
    }
    let (stdout, stderr) = run_batch_child(&[("ASYNCWORKER_LOG_FORMAT", "json")], false);
    let lines = logged(&stdout);
    let objects: Vec<serde_json::Value> = lines
        .iter()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}\nin:\n{stdout}"));
            assert!(value.is_object(), "not an object: {line}");
            value
        })
        .collect();
    assert!(
        !stdout.contains(ESCAPE) && !stderr.contains(ESCAPE),
        "{stdout:?}"
    );

    let warning = objects
        .iter()
        .find(|o| o["level"] == "WARN")
        .unwrap_or_else(|| panic!("no warning in:\n{stdout}"));
    assert_eq!(warning["fields"]["message"], "a warning outside any batch");
    assert_eq!(warning["fields"]["pushed"], 2);

    let handled = objects
        .iter()
        .find(|o| o["fields"]["message"] == HANDLED)
        .unwrap_or_else(|| panic!("no line from the handler in:\n{stdout}"));
    assert_eq!(handled["level"], "INFO", "{handled}");
    assert_eq!(handled["fields"]["messages"], 2, "{handled}");
    // The current span: the batch, with its route, size and flush reason.
    let span = &handled["span"];
    assert_eq!(span["name"], "batch", "{handled}");
    assert_eq!(span["route"], "orders", "{handled}");
    assert_eq!(span["size"], 2, "{handled}");
    assert_eq!(span["flush_reason"], "size", "{handled}");
    // The list of spans, outermost first, ends with the batch.
    let spans = handled["spans"]
        .as_array()
        .unwrap_or_else(|| panic!("no span list: {handled}"));
    assert_eq!(spans.last(), Some(span), "{handled}");
}
