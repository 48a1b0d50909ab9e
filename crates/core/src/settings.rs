//! Settings from the environment, under the Python original's `ASYNCWORKER_*` names.

use std::ffi::OsString;
use std::time::Duration;

use crate::Error;

/// Framework settings, from the environment under the Python original's `ASYNCWORKER_*`
/// names.
///
/// | variable | default | effect |
/// |---|---|---|
/// | `ASYNCWORKER_LOGLEVEL` | `info` | the log level (the facade's `init_logging` installs it): `trace`, `debug`, `info`, `warn`/`warning`, `error`/`critical` (any case) |
/// | `ASYNCWORKER_LOG_FORMAT` | `text` | the log format `init_logging` installs ([`LogFormat`]): `text` (human-readable lines) or `json` (one JSON object per line), any case |
/// | `ASYNCWORKER_FLUSH_TIMEOUT` | `60` | flush interval (seconds, fractions allowed) of routes that set none |
/// | `ASYNCWORKER_METRICS_NAMESPACE` | `asyncworker` | metric-name prefix |
/// | `ASYNCWORKER_METRICS_APPPREFIX` | unset | appended to the prefix: `{namespace}_{appprefix}_...` |
///
/// The AMQP connection defaults (`ASYNCWORKER_AMQP_DEFAULT_*`) are read by the AMQP backend.
///
/// Precedence: a value set in code wins over the environment, which wins over the default.
/// Every variable is read once, by [`Settings::from_env`] (which [`App::new`](crate::App::new)
/// calls), and a malformed value (a value that is not UTF-8 included) is an error naming the
/// variable — never silently ignored.
/// (The original defaults the log level to `ERROR` and ignores `FLUSH_TIMEOUT` and the
/// heartbeat; here all of them take effect, and `info` is the default so a worker says what
/// it is doing.)
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Settings {
    /// The log level (`ASYNCWORKER_LOGLEVEL`).
    pub log_level: tracing::Level,
    /// The log format (`ASYNCWORKER_LOG_FORMAT`).
    pub log_format: LogFormat,
    /// Default flush interval of routes (`ASYNCWORKER_FLUSH_TIMEOUT`).
    pub flush_interval: Duration,
    /// Metric-name namespace.
    pub metrics_namespace: String,
    /// Optional application prefix after the namespace.
    pub metrics_app_prefix: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            log_level: tracing::Level::INFO,
            log_format: LogFormat::Text,
            flush_interval: crate::bulk::DEFAULT_FLUSH_INTERVAL,
            metrics_namespace: crate::metrics::DEFAULT_NAMESPACE.to_owned(),
            metrics_app_prefix: None,
        }
    }
}

impl Settings {
    /// Read the `ASYNCWORKER_*` variables over the defaults.
    ///
    /// # Errors
    ///
    /// When a variable is set to a value that cannot be used, naming the variable.
    pub fn from_env() -> Result<Self, Error> {
        Self::from_os_lookup(|name| std::env::var_os(name))
    }

    /// Like [`Settings::from_env`], reading variables through `lookup` (for tests and for
    /// configuration systems of your own).
    ///
    /// # Errors
    ///
    /// As [`Settings::from_env`].
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        Self::from_os_lookup(|name| lookup(name).map(OsString::from))
    }

    /// Like [`Settings::from_lookup`], with values as the environment holds them
    /// (`OsString`s, which [`Settings::from_env`] reads with `std::env::var_os`): a value that
    /// is not UTF-8 is an error naming the variable.
    ///
    /// # Errors
    ///
    /// As [`Settings::from_env`].
    pub fn from_os_lookup(lookup: impl Fn(&str) -> Option<OsString>) -> Result<Self, Error> {
        let mut settings = Settings::default();
        let vars = Variables::new(lookup);
        if let Some(level) = vars.parse(
            "ASYNCWORKER_LOGLEVEL",
            "trace, debug, info, warn, error",
            parse_level,
        )? {
            settings.log_level = level;
        }
        if let Some(format) =
            vars.parse("ASYNCWORKER_LOG_FORMAT", "text or json", LogFormat::parse)?
        {
            settings.log_format = format;
        }
        if let Some(interval) = vars.parse(
            "ASYNCWORKER_FLUSH_TIMEOUT",
            "seconds, e.g. 60 or 0.5",
            |v| {
                v.parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s >= 0.0 && *s < 1e9)
                    .map(Duration::from_secs_f64)
            },
        )? {
            settings.flush_interval = interval;
        }
        let metric_word = "letters, digits and underscores, not starting with a digit";
        if let Some(v) = vars.parse("ASYNCWORKER_METRICS_NAMESPACE", metric_word, metric_name)? {
            settings.metrics_namespace = v;
        }
        settings.metrics_app_prefix =
            vars.parse("ASYNCWORKER_METRICS_APPPREFIX", metric_word, metric_name)?;
        Ok(settings)
    }

    /// The metric-name prefix: the namespace, plus `_{appprefix}` when set.
    pub fn metrics_prefix(&self) -> String {
        match &self.metrics_app_prefix {
            Some(app) => format!("{}_{}", self.metrics_namespace, app),
            None => self.metrics_namespace.clone(),
        }
    }
}

/// How the facade's `init_logging` formats log lines (`ASYNCWORKER_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LogFormat {
    /// Human-readable lines: time, level, spans with their fields, message (`text`, the
    /// default).
    #[default]
    Text,
    /// One JSON object per line, with the event's fields, the current span and the list of
    /// spans it is in, each with its fields (`json`): for files and log shippers.
    Json,
}

impl LogFormat {
    /// The name `ASYNCWORKER_LOG_FORMAT` takes for this format: `text` or `json`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }

    /// The format named `value` (`text` or `json`, any case), `None` for any other name.
    fn parse(value: &str) -> Option<LogFormat> {
        [LogFormat::Text, LogFormat::Json]
            .into_iter()
            .find(|format| value.eq_ignore_ascii_case(format.as_str()))
    }
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Reads configuration variables through a lookup (the environment — `std::env::var_os` —
/// or a map of your own, returning `String`s or `OsString`s), the way every `ASYNCWORKER_*`
/// variable is read: values are trimmed, a blank value counts as unset, and a value that
/// cannot be used is an [`Error::Config`] naming the variable and what it expects. A value
/// that is not UTF-8 is such an error too, naming the variable but not showing the value.
/// Backends read their own variables with it.
///
/// ```
/// use asyncworker_core::Variables;
///
/// let vars = Variables::new(|name| (name == "MY_PORT").then(|| " 80x ".to_owned()));
/// assert_eq!(vars.get("OTHER").unwrap(), None);
/// let error = vars.parse("MY_PORT", "a port", |v| v.parse::<u16>().ok()).unwrap_err();
/// assert_eq!(error.to_string(), r#"invalid configuration: MY_PORT="80x" is not valid: expected a port"#);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Variables<F> {
    lookup: F,
}

impl<F, V> Variables<F>
where
    F: Fn(&str) -> Option<V>,
    V: Into<OsString>,
{
    /// Read variables through `lookup`.
    pub fn new(lookup: F) -> Self {
        Variables { lookup }
    }

    /// The trimmed value of `name`, or `None` when it is unset or blank.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the variable when its value is not UTF-8 (the value is not
    /// shown).
    pub fn get(&self, name: &str) -> Result<Option<String>, Error> {
        let Some(value) = (self.lookup)(name) else {
            return Ok(None);
        };
        let value = value.into().into_string().map_err(|_| {
            Error::config(format!(
                "{name} is not valid UTF-8 (its value is not shown here)"
            ))
        })?;
        let value = value.trim();
        Ok((!value.is_empty()).then(|| value.to_owned()))
    }

    /// The value of `name` through `parse`, `None` when unset or blank.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the variable, its value and `expected` when `parse` returns
    /// `None`; naming the variable when its value is not UTF-8.
    pub fn parse<T>(
        &self,
        name: &str,
        expected: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<Option<T>, Error> {
        self.get(name)?
            .map(|v| {
                parse(&v).ok_or_else(|| {
                    Error::config(format!("{name}={v:?} is not valid: expected {expected}"))
                })
            })
            .transpose()
    }
}

/// A metric-name word: letters, digits and underscores, not starting with a digit.
fn metric_name(value: &str) -> Option<String> {
    let ok = value
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    ok.then(|| value.to_owned())
}

fn parse_level(value: &str) -> Option<tracing::Level> {
    Some(match value.to_ascii_lowercase().as_str() {
        "trace" => tracing::Level::TRACE,
        "debug" => tracing::Level::DEBUG,
        "info" => tracing::Level::INFO,
        "warn" | "warning" => tracing::Level::WARN,
        "error" | "critical" | "fatal" => tracing::Level::ERROR,
        _ => return None,
    })
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
            Settings::from_lookup(|_| None).unwrap(),
            Settings::default()
        );
    }

    #[test]
    fn every_variable_takes_effect() {
        let s = Settings::from_lookup(lookup(&[
            ("ASYNCWORKER_LOGLEVEL", "WARNING"),
            ("ASYNCWORKER_LOG_FORMAT", "json"),
            ("ASYNCWORKER_FLUSH_TIMEOUT", "0.5"),
            ("ASYNCWORKER_METRICS_NAMESPACE", "acme"),
            ("ASYNCWORKER_METRICS_APPPREFIX", "billing"),
        ]))
        .unwrap();
        assert_eq!(s.log_level, tracing::Level::WARN);
        assert_eq!(s.log_format, LogFormat::Json);
        assert_eq!(s.flush_interval, Duration::from_millis(500));
        assert_eq!(s.metrics_prefix(), "acme_billing");
    }

    #[cfg(unix)]
    #[test]
    fn a_value_that_is_not_utf8_is_an_error_naming_the_variable_not_the_value() {
        use std::ffi::OsString;
        use std::os::unix::ffi::OsStringExt;

        for name in [
            "ASYNCWORKER_LOGLEVEL",
            "ASYNCWORKER_LOG_FORMAT",
            "ASYNCWORKER_FLUSH_TIMEOUT",
            "ASYNCWORKER_METRICS_NAMESPACE",
            "ASYNCWORKER_METRICS_APPPREFIX",
        ] {
            // "debug" followed by a byte that is not UTF-8.
            let bad = OsString::from_vec(b"debug\xff".to_vec());
            let err = Settings::from_os_lookup(|n| (n == name).then(|| bad.clone())).unwrap_err();
            let text = err.to_string();
            assert!(
                matches!(err, Error::Config(_)) && text.contains(name) && text.contains("UTF-8"),
                "{text}"
            );
            assert!(!text.contains("debug"), "the value is not shown: {text}");
        }
        // A variable that is unset or valid UTF-8 reads as before through the same seam.
        let s = Settings::from_os_lookup(|n| {
            (n == "ASYNCWORKER_LOGLEVEL").then(|| OsString::from("debug"))
        })
        .unwrap();
        assert_eq!(s.log_level, tracing::Level::DEBUG);
    }

    #[test]
    fn malformed_value_is_an_error_naming_the_variable() {
        for (name, value) in [
            ("ASYNCWORKER_LOGLEVEL", "loud"),
            ("ASYNCWORKER_LOG_FORMAT", "xml"),
            ("ASYNCWORKER_FLUSH_TIMEOUT", "NaN"),
            ("ASYNCWORKER_METRICS_NAMESPACE", "my-app"),
        ] {
            let err = Settings::from_lookup(lookup(&[(name, value)])).unwrap_err();
            assert!(err.to_string().contains(name), "{err}");
        }
    }

    #[test]
    fn log_format_is_text_unless_set_and_reads_its_names_in_any_case() {
        assert_eq!(Settings::default().log_format, LogFormat::Text);
        for (value, format) in [
            ("text", LogFormat::Text),
            ("TEXT", LogFormat::Text),
            ("json", LogFormat::Json),
            (" Json ", LogFormat::Json),
            ("", LogFormat::Text), // blank counts as unset
        ] {
            let s = Settings::from_lookup(lookup(&[("ASYNCWORKER_LOG_FORMAT", value)])).unwrap();
            assert_eq!(s.log_format, format, "{value:?}");
        }
    }

    #[test]
    fn an_unknown_log_format_is_an_error_naming_the_variable_the_value_and_the_choices() {
        for value in ["xml", "jsonl", "logfmt"] {
            let err =
                Settings::from_lookup(lookup(&[("ASYNCWORKER_LOG_FORMAT", value)])).unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{err:?}");
            assert_eq!(
                err.to_string(),
                format!(
                    "invalid configuration: ASYNCWORKER_LOG_FORMAT={value:?} is not valid: expected text or json"
                )
            );
        }
    }
}
