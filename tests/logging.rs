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

#![cfg(unix)]

use std::hash::{BuildHasher, Hasher};
use std::process::{Command, Stdio};

use asyncworker::Settings;
use asyncworker::amqp::{AmqpConfig, OutgoingMessage, Publisher};

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
