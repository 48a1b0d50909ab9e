//! [`AmqpSettings`]: the connection defaults, from the `ASYNCWORKER_AMQP_DEFAULT_*` variables.

use std::ffi::OsString;
use std::sync::OnceLock;
use std::time::Duration;

use asyncworker_core::{Error, Variables};

use crate::config::{DEFAULT_HEARTBEAT, DEFAULT_PREFETCH};

/// The defaults of AMQP connections that do not set a value themselves, under the Python
/// original's names:
///
/// | variable | default | effect |
/// |---|---|---|
/// | `ASYNCWORKER_AMQP_DEFAULT_VHOST` | `/` | vhost of AMQP connections that name none |
/// | `ASYNCWORKER_AMQP_DEFAULT_PORT` | `5672` | port of AMQP connections that name none |
/// | `ASYNCWORKER_AMQP_DEFAULT_PREFETCH_COUNT` | `128` | prefetch of AMQP connections that set none |
/// | `ASYNCWORKER_AMQP_DEFAULT_HEARTBEAT` | `60` | heartbeat (seconds) of AMQP connections that set none — really sent to the broker |
///
/// Precedence: a value set in code (a builder setter, a URL) wins over the environment, which
/// wins over the default. [`AmqpConfig::builder`](crate::AmqpConfig::builder) reads the
/// environment once per process; a malformed value is an error naming the variable, reported
/// by [`AmqpConfigBuilder::build`](crate::AmqpConfigBuilder::build) — never silently ignored.
///
/// ```
/// use std::time::Duration;
/// use asyncworker_amqp::{AmqpConfigBuilder, AmqpSettings};
///
/// # fn main() -> Result<(), asyncworker_core::Error> {
/// let settings = AmqpSettings::from_lookup(|name| {
///     (name == "ASYNCWORKER_AMQP_DEFAULT_VHOST").then(|| "jobs".to_owned())
/// })?;
/// let config = AmqpConfigBuilder::with_settings(&settings).build()?;
/// assert_eq!(config.vhost(), "jobs");
/// assert_eq!(config.heartbeat(), Duration::from_secs(60));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AmqpSettings {
    /// The vhost of connections that name none.
    pub vhost: String,
    /// The plain-AMQP port of connections that name none (TLS keeps 5671).
    pub port: u16,
    /// The prefetch count of connections that set none.
    pub prefetch: u16,
    /// The heartbeat of connections that set none, in whole seconds.
    pub heartbeat: Duration,
}

impl Default for AmqpSettings {
    fn default() -> Self {
        AmqpSettings {
            vhost: "/".to_owned(),
            port: 5672,
            prefetch: DEFAULT_PREFETCH,
            heartbeat: DEFAULT_HEARTBEAT,
        }
    }
}

impl AmqpSettings {
    /// Reads the `ASYNCWORKER_AMQP_DEFAULT_*` variables over the defaults, now.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the variable when one is set to a value that cannot be used
    /// (a value that is not UTF-8 included).
    pub fn from_env() -> Result<Self, Error> {
        Self::from_os_lookup(|name| std::env::var_os(name))
    }

    /// Like [`AmqpSettings::from_env`], reading variables through `lookup` (for tests and for
    /// configuration systems of your own). Blank values count as unset.
    ///
    /// # Errors
    ///
    /// As [`AmqpSettings::from_env`].
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        Self::from_os_lookup(|name| lookup(name).map(OsString::from))
    }

    /// Like [`AmqpSettings::from_lookup`], with values as the environment holds them
    /// (`OsString`s, which [`AmqpSettings::from_env`] reads with `std::env::var_os`): a
    /// value that is not UTF-8 is an error naming the variable.
    ///
    /// # Errors
    ///
    /// As [`AmqpSettings::from_env`].
    pub fn from_os_lookup(lookup: impl Fn(&str) -> Option<OsString>) -> Result<Self, Error> {
        let mut settings = AmqpSettings::default();
        let vars = Variables::new(lookup);
        // A positive u16, or an error naming the variable and what it expects.
        let positive = |name: &str, expected: &str| {
            vars.parse(name, expected, |v| v.parse::<u16>().ok().filter(|n| *n > 0))
        };
        if let Some(v) = vars.get("ASYNCWORKER_AMQP_DEFAULT_VHOST")? {
            settings.vhost = v;
        }
        if let Some(port) = positive("ASYNCWORKER_AMQP_DEFAULT_PORT", "a port, 1-65535")? {
            settings.port = port;
        }
        if let Some(prefetch) = positive(
            "ASYNCWORKER_AMQP_DEFAULT_PREFETCH_COUNT",
            "an integer, 1-65535",
        )? {
            settings.prefetch = prefetch;
        }
        if let Some(secs) = positive("ASYNCWORKER_AMQP_DEFAULT_HEARTBEAT", "seconds, 1-65535")? {
            settings.heartbeat = Duration::from_secs(secs.into());
        }
        Ok(settings)
    }

    /// The settings of this process: the environment, read on first use and kept; or the
    /// message of the [`Error::Config`] that reading it gave.
    pub(crate) fn process() -> Result<&'static AmqpSettings, &'static str> {
        static PROCESS: OnceLock<Result<AmqpSettings, String>> = OnceLock::new();
        PROCESS
            .get_or_init(|| {
                AmqpSettings::from_env().map_err(|error| match error {
                    Error::Config(message) => message,
                    other => other.to_string(),
                })
            })
            .as_ref()
            .map_err(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn defaults_without_environment() {
        assert_eq!(
            AmqpSettings::from_lookup(|_| None).unwrap(),
            AmqpSettings::default()
        );
    }

    #[test]
    fn every_variable_takes_effect() {
        let s = AmqpSettings::from_lookup(lookup(&[
            ("ASYNCWORKER_AMQP_DEFAULT_VHOST", " fluentd "),
            ("ASYNCWORKER_AMQP_DEFAULT_PORT", "5673"),
            ("ASYNCWORKER_AMQP_DEFAULT_PREFETCH_COUNT", "256"),
            ("ASYNCWORKER_AMQP_DEFAULT_HEARTBEAT", "5"),
        ]))
        .unwrap();
        assert_eq!(s.vhost, "fluentd");
        assert_eq!((s.port, s.prefetch), (5673, 256));
        assert_eq!(s.heartbeat, Duration::from_secs(5));
        let blank = AmqpSettings::from_lookup(lookup(&[("ASYNCWORKER_AMQP_DEFAULT_PORT", " ")]));
        assert_eq!(blank.unwrap().port, 5672);
    }

    #[cfg(unix)]
    #[test]
    fn a_value_that_is_not_utf8_is_an_error_naming_the_variable_not_the_value() {
        use std::ffi::OsString;
        use std::os::unix::ffi::OsStringExt;

        for name in [
            "ASYNCWORKER_AMQP_DEFAULT_VHOST",
            "ASYNCWORKER_AMQP_DEFAULT_PORT",
            "ASYNCWORKER_AMQP_DEFAULT_PREFETCH_COUNT",
            "ASYNCWORKER_AMQP_DEFAULT_HEARTBEAT",
        ] {
            let bad = OsString::from_vec(b"jobs\xff".to_vec());
            let err =
                AmqpSettings::from_os_lookup(|n| (n == name).then(|| bad.clone())).unwrap_err();
            let text = err.to_string();
            assert!(
                matches!(err, Error::Config(_)) && text.contains(name) && text.contains("UTF-8"),
                "{text}"
            );
            assert!(!text.contains("jobs"), "the value is not shown: {text}");
        }
    }

    #[test]
    fn malformed_value_is_an_error_naming_the_variable() {
        for (name, value) in [
            ("ASYNCWORKER_AMQP_DEFAULT_PORT", "0"),
            ("ASYNCWORKER_AMQP_DEFAULT_PORT", "65536"),
            ("ASYNCWORKER_AMQP_DEFAULT_PREFETCH_COUNT", "-1"),
            ("ASYNCWORKER_AMQP_DEFAULT_HEARTBEAT", "soon"),
            ("ASYNCWORKER_AMQP_DEFAULT_HEARTBEAT", "0"),
        ] {
            let err = AmqpSettings::from_lookup(lookup(&[(name, value)])).unwrap_err();
            assert!(
                matches!(&err, Error::Config(m) if m.contains(name) && m.contains(value)),
                "{err}"
            );
        }
    }
}
