//! A `ASYNCWORKER_*` variable whose value is not UTF-8 is an error naming the variable, in a
//! real process environment: this test binary runs itself as a child process (the `child_*`
//! test, which does nothing unless [`CHILD`] is set) with such a value and reports what
//! `Settings::from_env` and `AmqpSettings::from_env` returned.

#![cfg(unix)]

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::process::Command;

use asyncworker::Settings;
use asyncworker::amqp::AmqpSettings;

/// Set in the child process only.
const CHILD: &str = "ASYNCWORKER_TEST_SETTINGS_CHILD";

/// What the child does: read the settings of its environment, print the outcome.
#[test]
fn child_reads_its_environment() {
    if std::env::var_os(CHILD).is_none() {
        return; // not the child
    }
    println!("core: {:?}", Settings::from_env().map(drop));
    println!("amqp: {:?}", AmqpSettings::from_env().map(drop));
}

fn run_child(name: &str, value: OsString) -> String {
    let output = Command::new(std::env::current_exe().expect("the test binary"))
        .args([
            "--exact",
            "child_reads_its_environment",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .env(name, value)
        .output()
        .expect("the child runs");
    assert!(output.status.success(), "the child failed: {output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The child's report that starts with `prefix` (libtest may print it after the test's name,
/// on the same line).
fn line<'a>(output: &'a str, prefix: &str) -> &'a str {
    output
        .lines()
        .find_map(|l| l.find(prefix).map(|at| &l[at..]))
        .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{output}"))
}

#[test]
fn a_variable_that_is_not_utf8_is_an_error_naming_it_not_ignored() {
    if std::env::var_os(CHILD).is_some() {
        return; // the child runs only its own test
    }
    // "warn" followed by a byte that is not UTF-8.
    let value = || OsString::from_vec(b"warn\xff".to_vec());
    for (name, prefix) in [
        ("ASYNCWORKER_LOGLEVEL", "core: "),
        ("ASYNCWORKER_METRICS_NAMESPACE", "core: "),
        ("ASYNCWORKER_AMQP_DEFAULT_VHOST", "amqp: "),
        ("ASYNCWORKER_AMQP_DEFAULT_HEARTBEAT", "amqp: "),
    ] {
        let output = run_child(name, value());
        let outcome = line(&output, prefix);
        assert!(
            outcome.contains("Err") && outcome.contains(name) && outcome.contains("UTF-8"),
            "{name}: {outcome}"
        );
        assert!(
            !outcome.contains("warn"),
            "the value is not shown: {outcome}"
        );
    }
    // A valid value still reads.
    let output = run_child("ASYNCWORKER_LOGLEVEL", OsString::from("warn"));
    assert_eq!(line(&output, "core: "), "core: Ok(())");
}
