//! SIGTERM handling of [`App::run`], in a test binary of its own: it signals its own process.

#![cfg(unix)]

use std::time::Duration;

use asyncworker_core::App;
use asyncworker_core::memory::{MemoryMessage, MemoryQueue};
use asyncworker_core::{BoxError, Settings};

/// The signal handlers are installed before anything of the app runs: a SIGTERM that arrives
/// during the startup hooks — before the signal-watching task was ever polled — starts a
/// graceful shutdown instead of killing the process with the default action.
#[tokio::test]
async fn a_sigterm_during_startup_shuts_down_gracefully() {
    let queue = MemoryQueue::new();
    queue.push_bytes("a");
    // The queue stays open: only the signal can stop the app.
    let mut app = App::new();
    app.with_settings(Settings::default());
    app.on_startup(|| async {
        // Synchronous on purpose: the current-thread runtime cannot run any other task
        // (the signal watcher included) until the signal has been delivered.
        let status = std::process::Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status()?;
        assert!(status.success(), "kill failed");
        Ok::<(), BoxError>(())
    });
    app.route("r", queue.source(), |_batch: Vec<MemoryMessage>| async {
        Ok::<(), BoxError>(())
    });
    let handle = app.shutdown_handle();
    tokio::time::timeout(Duration::from_secs(20), app.run())
        .await
        .expect("the signal stops the app")
        .expect("a graceful shutdown is Ok");
    assert!(handle.is_triggered());
    assert_eq!(queue.outstanding(), 0);
}
