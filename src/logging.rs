//! Logging for a worker process.

use asyncworker_core::Settings;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;

/// Install a `tracing-subscriber` formatter at `settings.log_level`
/// (`ASYNCWORKER_LOGLEVEL`; `RUST_LOG`, when set, refines it per target). Does nothing if a
/// global subscriber is already installed.
pub fn init_logging(settings: &Settings) {
    let filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::from_level(settings.log_level).into())
        .from_env_lossy();
    let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
}
