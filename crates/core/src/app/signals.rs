//! SIGINT/SIGTERM: the first starts a graceful shutdown, the second forces one.

use crate::Shutdown;

/// The listeners [`watch_signals`] waits on.
#[cfg(unix)]
pub(super) type Signals = Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>;
#[cfg(not(unix))]
pub(super) type Signals = ();

/// Install the SIGTERM/SIGINT listeners now, synchronously: `run` spawns the watcher as a
/// task, and a signal arriving before that task first ran would otherwise still get the
/// default action and kill the process.
pub(super) fn install_signals() -> Signals {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(term), Ok(int)) => Some((term, int)),
            _ => {
                tracing::error!(
                    "cannot install signal handlers; trigger the app's Shutdown yourself"
                );
                None
            }
        }
    }
}

/// First SIGINT/SIGTERM: graceful shutdown. Second: force.
pub(super) async fn watch_signals(signals: Signals, shutdown: Shutdown, force: Shutdown) {
    #[cfg(unix)]
    {
        let Some((mut term, mut int)) = signals else {
            return;
        };
        let mut seen = 0;
        loop {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            seen += 1;
            if seen == 1 {
                tracing::info!(
                    signal = name,
                    "signal received; shutting down (send it again to force)"
                );
                shutdown.trigger();
            } else {
                tracing::warn!(signal = name, "second signal; forcing shutdown");
                force.trigger();
                return;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let () = signals;
        let mut seen = 0;
        while tokio::signal::ctrl_c().await.is_ok() {
            seen += 1;
            if seen == 1 {
                shutdown.trigger();
            } else {
                force.trigger();
                return;
            }
        }
    }
}
