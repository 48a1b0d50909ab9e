//! Logging for a worker process.

use asyncworker_core::Settings;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The log targets whose level is capped whatever the level asked for: lapin's targets that
/// print frames and message bodies ([`asyncworker_amqp::LAPIN_LOG_CAPS`]).
#[cfg(feature = "amqp")]
const CAPPED: &[(&str, LevelFilter)] = &asyncworker_amqp::LAPIN_LOG_CAPS;
#[cfg(not(feature = "amqp"))]
const CAPPED: &[(&str, LevelFilter)] = &[];

/// Install a `tracing-subscriber` formatter at `settings.log_level`
/// (`ASYNCWORKER_LOGLEVEL`; `RUST_LOG`, when set, refines it per target). Does nothing if a
/// global subscriber is already installed.
///
/// lapin's targets that print frames or message bodies stay capped at every level, so neither
/// the login's password nor the messages show in the logs, even at `trace` or with
/// `RUST_LOG=trace` or `RUST_LOG=lapin=trace`: `lapin::io_loop`, `lapin::frames`,
/// `lapin::channels` and `lapin::internal_rpc` log at DEBUG at most, and
/// `lapin::returned_messages` (every returned message, body and headers, at WARN) at ERROR
/// only. Naming one of those targets in `RUST_LOG` (`RUST_LOG=lapin::io_loop=trace`) lifts
/// its cap — for debugging the protocol itself: the login frame, password included, is then
/// in the output.
pub fn init_logging(settings: &Settings) {
    let filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::from_level(settings.log_level).into())
        .from_env_lossy();
    let caps = lapin_caps(std::env::var("RUST_LOG").ok().as_deref());
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(caps)
        .with(tracing_subscriber::fmt::layer())
        .try_init();
}

/// The caps of [`CAPPED`] but those `rust_log` names: everything else passes.
fn lapin_caps(rust_log: Option<&str>) -> Targets {
    let named = |target: &str| {
        rust_log.is_some_and(|directives| {
            directives.split(',').any(|directive| {
                let named = directive
                    .trim()
                    .split(['[', '='])
                    .next()
                    .unwrap_or_default();
                named == target || named.starts_with(&format!("{target}::"))
            })
        })
    };
    CAPPED
        .iter()
        .copied()
        .filter(|(target, _)| !named(target))
        .fold(
            Targets::new().with_default(LevelFilter::TRACE),
            |caps, cap| caps.with_target(cap.0, cap.1),
        )
}

#[cfg(all(test, feature = "amqp"))]
mod tests {
    use super::*;

    #[test]
    fn only_a_directive_naming_a_capped_target_lifts_its_cap() {
        let level = |caps: &Targets, target: &str| {
            caps.iter()
                .find(|(t, _)| *t == target)
                .map(|(_, level)| level)
        };
        for rust_log in [
            None,
            Some("trace"),
            Some("lapin=trace"),
            Some("lapin::io=trace"),
        ] {
            let caps = lapin_caps(rust_log);
            assert_eq!(
                level(&caps, "lapin::io_loop"),
                Some(LevelFilter::DEBUG),
                "{rust_log:?}"
            );
            assert_eq!(
                level(&caps, "lapin::returned_messages"),
                Some(LevelFilter::ERROR),
                "{rust_log:?}"
            );
        }
        let caps = lapin_caps(Some("info, lapin::io_loop=trace,lapin::returned_messages"));
        assert_eq!(level(&caps, "lapin::io_loop"), None);
        assert_eq!(level(&caps, "lapin::returned_messages"), None);
        assert_eq!(level(&caps, "lapin::frames"), Some(LevelFilter::DEBUG));
    }
}
