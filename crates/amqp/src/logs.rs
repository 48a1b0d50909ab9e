//! lapin's log targets that print secrets or message bodies, and how far to let them speak.

use tracing::level_filters::LevelFilter;

/// lapin's log targets that print what goes over the wire, each with the most verbose level
/// at which it prints nothing secret. A subscriber should never let these targets log more
/// than this; `asyncworker::init_logging` applies these caps at every level.
///
/// - at TRACE, `lapin::io_loop` prints every frame it sends — the login
///   (`connection.start-ok`, whose response is `\0user\0password`, shown as a list of decimal
///   bytes) and `connection.update-secret` included; `lapin::frames` prints discarded frames
///   whole, bodies included; `lapin::channels` every frame received, message bodies and
///   headers included; `lapin::internal_rpc` its commands, a new secret included;
/// - at WARN, `lapin::returned_messages` prints every message the broker returns, its whole
///   body and headers ([`Publisher`](crate::Publisher) reports returns itself, without the
///   body).
///
/// With a subscriber of your own (`tracing-subscriber`'s `Targets` filter):
///
/// ```
/// use tracing_subscriber::filter::{LevelFilter, Targets};
///
/// let caps = asyncworker_amqp::LAPIN_LOG_CAPS
///     .into_iter()
///     .fold(Targets::new().with_default(LevelFilter::TRACE), |caps, (target, level)| {
///         caps.with_target(target, level)
///     });
/// assert!(!caps.would_enable("lapin::io_loop", &tracing::Level::TRACE));
/// assert!(caps.would_enable("lapin::connection", &tracing::Level::TRACE));
/// ```
pub const LAPIN_LOG_CAPS: [(&str, LevelFilter); 5] = [
    ("lapin::io_loop", LevelFilter::DEBUG),
    ("lapin::frames", LevelFilter::DEBUG),
    ("lapin::channels", LevelFilter::DEBUG),
    ("lapin::internal_rpc", LevelFilter::DEBUG),
    ("lapin::returned_messages", LevelFilter::ERROR),
];
