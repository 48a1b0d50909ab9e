//! Logging for a worker process.

use std::ffi::OsStr;
use std::io::IsTerminal;

use asyncworker_core::{LogFormat, Settings};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The log targets whose level is capped whatever the level asked for: lapin's targets that
/// print frames and message bodies ([`asyncworker_amqp::LAPIN_LOG_CAPS`]).
#[cfg(feature = "amqp")]
const CAPPED: &[(&str, LevelFilter)] = &asyncworker_amqp::LAPIN_LOG_CAPS;
#[cfg(not(feature = "amqp"))]
const CAPPED: &[(&str, LevelFilter)] = &[];

/// Install a `tracing-subscriber` formatter at `settings.log_level`
/// (`ASYNCWORKER_LOGLEVEL`; `RUST_LOG`, when set, refines it per target), writing to standard
/// output in `settings.log_format` (`ASYNCWORKER_LOG_FORMAT`). Does nothing if a global
/// subscriber is already installed.
///
/// # Formats
///
/// - [`LogFormat::Text`] (`text`, the default): one human-readable line per event — time,
///   level, the spans it is in with their fields, target, message and fields:
///
///   ```text
///   2026-12-02T05:25:27.163522Z  INFO batch{route="orders" size=2 flush_reason="size"}: app: handled messages=2
///   ```
///
///   Coloured with ANSI escapes only when standard output is a terminal and `NO_COLOR` is
///   unset or empty (<https://no-color.org>): a file, a pipe or a log shipper gets plain text.
/// - [`LogFormat::Json`] (`json`): one JSON object per line, never coloured, for files and
///   log shippers. `fields` holds the event's message and fields, `span` the current span
///   (its `name` and fields) and `spans` every span the event is in, outermost first — inside
///   a batch, the `batch` span with the batch's `route`, `size` and `flush_reason`:
///
///   ```text
///   {"timestamp":"2026-12-02T05:25:27.163522Z","level":"INFO","fields":{"message":"handled","messages":2},"target":"app","span":{"flush_reason":"size","route":"orders","size":2,"name":"batch"},"spans":[{"flush_reason":"size","route":"orders","size":2,"name":"batch"}]}
///   ```
///
/// An unknown `ASYNCWORKER_LOG_FORMAT` is an error of [`Settings::from_env`] (so of
/// [`App::settings`](crate::App::settings)), before any logging is set up.
///
/// # Secrets
///
/// lapin's targets that print frames or message bodies stay capped at every level, so neither
/// the login's password nor the messages show in the logs, even at `trace` or with
/// `RUST_LOG=trace` or `RUST_LOG=lapin=trace`: `lapin::io_loop`, `lapin::frames`,
/// `lapin::channels` and `lapin::internal_rpc` log at DEBUG at most, and
/// `lapin::returned_messages` (every returned message, body and headers, at WARN) at ERROR
/// only. Naming one of those targets in `RUST_LOG` (`RUST_LOG=lapin::io_loop=trace`) lifts
/// its cap — for debugging the protocol itself: the login frame, password included, is then
/// in the output.
///
/// # Example
///
/// ```no_run
/// # fn main() -> Result<(), asyncworker::Error> {
/// let mut app = asyncworker::App::new();
/// asyncworker::init_logging(app.settings()?); // fails on ASYNCWORKER_LOG_FORMAT=xml
/// # Ok(())
/// # }
/// ```
pub fn init_logging(settings: &Settings) {
    let filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::from_level(settings.log_level).into())
        .from_env_lossy();
    let caps = lapin_caps(std::env::var("RUST_LOG").ok().as_deref());
    // `LogFormat` is non-exhaustive: JSON, and any format added to the settings before it is
    // added here (so it still logs something a machine can read).
    let (text, json) = match settings.log_format {
        LogFormat::Text => {
            let ansi = colours(
                std::io::stdout().is_terminal(),
                std::env::var_os("NO_COLOR").as_deref(),
            );
            (Some(fmt::layer().with_ansi(ansi)), None)
        }
        _ => (
            None,
            Some(
                fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(true)
                    .with_ansi(false),
            ),
        ),
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(caps)
        .with(text)
        .with(json)
        .try_init();
}

/// Whether the text format colours its output: only on a terminal, and only when `NO_COLOR`
/// is unset or empty.
fn colours(terminal: bool, no_color: Option<&OsStr>) -> bool {
    terminal && no_color.is_none_or(OsStr::is_empty)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_coloured_only_on_a_terminal_without_a_non_empty_no_color() {
        let set = |v: &'static str| Some(OsStr::new(v));
        assert!(colours(true, None));
        assert!(colours(true, set("")), "an empty NO_COLOR does not count");
        for no_color in [None, set(""), set("1")] {
            assert!(!colours(false, no_color), "{no_color:?}");
        }
        for no_color in ["1", "0", "false", "yes"] {
            assert!(!colours(true, set(no_color)), "{no_color:?}");
        }
    }

    #[cfg(feature = "amqp")]
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
