//! [`AmqpConfigBuilder`]: the defaults (from the environment), the setters and the checks.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use asyncworker_core::{Backoff, Error, Jitter};
use lapin::types::ShortString;

use super::values::{Common, Inner, Secret, Tls};
use super::{AmqpConfig, DEFAULT_CONNECTION_TIMEOUT, DEFAULT_HEARTBEAT, DEFAULT_PREFETCH};
use crate::AmqpSettings;

/// Builds an [`AmqpConfig`]; every check happens in [`AmqpConfigBuilder::build`].
///
/// Setters apply in call order, so `url(..)` followed by `prefetch(..)` overrides the URL's
/// `prefetch`, and a URL given after a setter overrides what the URL names (a part the URL
/// leaves out — the port, the credentials, the vhost — keeps the value set before).
///
/// Settings that contradict each other instead of overriding one another are an error at
/// build, in whichever order they were given: TLS material ([`tls_ca_pem`], [`tls_ca_file`],
/// a client certificate) with a plaintext connection (an `amqp://` URL, `tls(false)`).
///
/// [`tls_ca_pem`]: AmqpConfigBuilder::tls_ca_pem
/// [`tls_ca_file`]: AmqpConfigBuilder::tls_ca_file
#[derive(Clone)]
#[must_use = "a builder does nothing until .build() is called"]
pub struct AmqpConfigBuilder {
    /// TLS on or off as chosen explicitly, and by what (`"an amqp:// URL"`, `"tls(false)"`):
    /// the URL's scheme or [`AmqpConfigBuilder::tls`], the later wins. `None`: not chosen,
    /// TLS is on when TLS material is set.
    pub(super) tls: Option<(bool, &'static str)>,
    pub(super) ca_pem: Option<String>,
    pub(super) client: Option<(Vec<u8>, Secret)>,
    pub(super) port: Option<u16>,
    /// The endpoints after the first, in order; a port of `None` is the default one.
    pub(super) more: Vec<(String, Option<u16>)>,
    pub(super) heartbeat: Duration,
    /// The plain-AMQP port used when none is given (`ASYNCWORKER_AMQP_DEFAULT_PORT`).
    pub(super) default_port: u16,
    pub(super) error: Option<String>,
    pub(super) common: Common,
}

impl Default for AmqpConfigBuilder {
    /// A builder whose defaults come from the `ASYNCWORKER_AMQP_DEFAULT_*` variables
    /// ([`AmqpSettings`], read once per process); a malformed variable makes
    /// [`AmqpConfigBuilder::build`] fail, naming it.
    fn default() -> Self {
        match AmqpSettings::process() {
            Ok(settings) => Self::with_settings(settings),
            Err(message) => {
                let mut builder = Self::with_settings(&AmqpSettings::default());
                builder.fail(message.to_owned());
                builder
            }
        }
    }
}

impl AmqpConfigBuilder {
    /// A builder whose defaults (vhost, port, prefetch, heartbeat) come from `settings`
    /// rather than the environment. Values set on the builder or in a URL win over them.
    pub fn with_settings(settings: &AmqpSettings) -> Self {
        let mut builder = Self::fixed_defaults();
        builder.common.vhost = settings.vhost.clone();
        builder.common.prefetch = settings.prefetch;
        builder.heartbeat = settings.heartbeat;
        builder.default_port = settings.port;
        builder
    }

    fn fixed_defaults() -> Self {
        AmqpConfigBuilder {
            tls: None,
            ca_pem: None,
            client: None,
            port: None,
            more: Vec::new(),
            heartbeat: DEFAULT_HEARTBEAT,
            default_port: 5672,
            error: None,
            common: Common {
                host: "localhost".to_owned(),
                user: "guest".to_owned(),
                password: Secret("guest".to_owned()),
                vhost: "/".to_owned(),
                prefetch: DEFAULT_PREFETCH,
                connection_timeout: DEFAULT_CONNECTION_TIMEOUT,
                connection_name: None,
                frame_max: None,
                channel_max: None,
                reconnect: default_reconnect(),
                reconnect_attempts: None,
            },
        }
    }
}

impl fmt::Debug for AmqpConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("AmqpConfigBuilder");
        d.field("tls", &self.tls.map(|(on, _)| on))
            .field("port", &self.port)
            .field("more_endpoints", &self.more)
            .field("heartbeat", &self.heartbeat);
        self.common.debug_fields(&mut d).finish_non_exhaustive()
    }
}

impl AmqpConfigBuilder {
    pub(super) fn fail(&mut self, message: String) {
        if self.error.is_none() {
            self.error = Some(message);
        }
    }

    /// Take the scheme, credentials, host, port, vhost and query parameters from an
    /// `amqp://` or `amqps://` URL (see [`AmqpConfig::from_url`]), or from a comma-separated
    /// list of them, one per endpoint: `amqp://u:p@h1:5701/v,amqp://u:p@h2:5702/v` is
    /// [`AmqpConfigBuilder::urls`] with those two. A comma inside a password must be written
    /// `%2C`.
    pub fn url(self, url: &str) -> Self {
        self.urls(url.split(','))
    }

    /// Take the endpoints, in order, and everything else from the URLs `urls`, which must
    /// agree on their scheme, user, password, vhost and query parameters: connections go to
    /// the first endpoint that answers, and a reconnect after a lost connection to the next
    /// one (see [`AmqpConfigBuilder::max_reconnect_attempts`]). Replaces the endpoints set
    /// before; a part all the URLs leave out (a port, the vhost) keeps the value set before.
    ///
    /// ```
    /// use asyncworker_amqp::AmqpConfig;
    ///
    /// # fn main() -> Result<(), asyncworker_core::Error> {
    /// let c = AmqpConfig::builder()
    ///     .urls(["amqp://u:p@h1:5701/v", "amqp://u:p@h2:5702/v"])
    ///     .build()?;
    /// assert_eq!(c.endpoints(), [("h1", 5701), ("h2", 5702)]);
    /// let same = AmqpConfig::builder().url("amqp://u:p@h1:5701/v,amqp://u:p@h2:5702/v").build()?;
    /// assert_eq!(c, same);
    /// // A password never shows, even in the error naming what differs.
    /// let e = AmqpConfig::builder().urls(["amqp://u:p1@h1/v", "amqp://u:p2@h2/v"]).build();
    /// assert!(e.unwrap_err().to_string().contains("password"));
    /// # Ok(())
    /// # }
    /// ```
    pub fn urls<I>(mut self, urls: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        if let Err(message) = self.apply_urls(urls) {
            self.fail(message);
        }
        self
    }

    /// Add an endpoint after those set so far, sharing their credentials, vhost, TLS and
    /// options (see [`AmqpConfigBuilder::urls`]).
    ///
    /// ```
    /// use asyncworker_amqp::AmqpConfig;
    ///
    /// # fn main() -> Result<(), asyncworker_core::Error> {
    /// let c = AmqpConfig::builder()
    ///     .url("amqp://u:p@rabbit-1:5672/jobs")
    ///     .endpoint("rabbit-2", 5672)
    ///     .endpoint("rabbit-3", 5673)
    ///     .build()?;
    /// assert_eq!(c.endpoints(), [("rabbit-1", 5672), ("rabbit-2", 5672), ("rabbit-3", 5673)]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn endpoint(mut self, host: impl Into<String>, port: u16) -> Self {
        self.more.push((host.into(), Some(port)));
        self
    }

    /// The (first) broker's host name or address (default `localhost`).
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.common.host = host.into();
        self
    }

    /// The (first) broker's port (default 5672, or 5671 with TLS).
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// The user name (default `guest`).
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.common.user = user.into();
        self
    }

    /// The password (default `guest`). Never shown by `Debug`, `Display` or logs.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.common.password = Secret(password.into());
        self
    }

    /// The default virtual host (default `/`).
    pub fn vhost(mut self, vhost: impl Into<String>) -> Self {
        self.common.vhost = vhost.into();
        self
    }

    /// The prefetch count per consumer (default 128; 0 is rejected, because in AMQP it means
    /// "unlimited").
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.common.prefetch = prefetch;
        self
    }

    /// The heartbeat interval proposed to the broker, in whole seconds (default 60 s; at
    /// least 1 s). The broker may negotiate a lower value.
    pub fn heartbeat(mut self, heartbeat: Duration) -> Self {
        self.heartbeat = heartbeat;
        self
    }

    /// The timeout of one connection attempt, handshake included (default 10 s).
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.common.connection_timeout = timeout;
        self
    }

    /// The connection name, sent as the `connection_name` client property.
    pub fn connection_name(mut self, name: impl Into<String>) -> Self {
        self.common.connection_name = Some(name.into());
        self
    }

    /// The delays between connection attempts (default: 500 ms, doubling, capped at 30 s,
    /// [`Jitter::Proportional(0.5)`](Jitter::Proportional)): see [`Backoff`].
    pub fn reconnect(mut self, backoff: Backoff) -> Self {
        self.common.reconnect = backoff;
        self
    }

    /// Give up after `attempts` failed connection attempts in a row (at least 1), each
    /// endpoint tried counting as one attempt (with 3 endpoints, 3 attempts try each once):
    /// the source then yields [`AmqpError::GaveUp`](crate::AmqpError::GaveUp) and ends its stream, which
    /// ends the route. By default a source retries forever.
    pub fn max_reconnect_attempts(mut self, attempts: u32) -> Self {
        self.common.reconnect_attempts = Some(attempts);
        self
    }

    /// Use TLS (`amqps://`), or not. Implied by the `tls_*` settings and by an `amqps://`
    /// URL; `tls(false)` with a `tls_*` setting is an error at build.
    pub fn tls(mut self, tls: bool) -> Self {
        self.tls = Some((tls, if tls { "tls(true)" } else { "tls(false)" }));
        self
    }

    /// Trust the CA certificate(s) in `pem` (PEM text) for the broker's certificate, besides
    /// the bundled Mozilla roots (webpki-roots); implies TLS (with an `amqp://` URL or
    /// `tls(false)` it is an error at build). Needed for a broker whose certificate a private
    /// CA signed. The broker's certificate is always verified, against the host name (or IP
    /// address) connected to.
    pub fn tls_ca_pem(mut self, pem: impl Into<String>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// Trust the CA certificate(s) in the PEM file at `path` (read now); implies TLS.
    pub fn tls_ca_file(mut self, path: impl AsRef<std::path::Path>) -> Self {
        let path = path.as_ref();
        match std::fs::read_to_string(path) {
            Ok(pem) => self.tls_ca_pem(pem),
            Err(e) => {
                self.fail(format!(
                    "cannot read the TLS CA file {}: {e}",
                    path.display()
                ));
                self
            }
        }
    }

    /// Present a client certificate: `cert_pem` is its chain (PEM) and `key_pem` its private
    /// key (PEM: PKCS#8, PKCS#1 or SEC1). Implies TLS, as [`AmqpConfigBuilder::tls_ca_pem`]
    /// does. The key is never shown by `Debug`.
    pub fn tls_client_cert_pem(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<String>,
    ) -> Self {
        self.client = Some((cert_pem.into(), Secret(key_pem.into())));
        self
    }

    /// Present the client certificate and key from PEM files (read now). Implies TLS.
    pub fn tls_client_cert_files(
        mut self,
        cert_path: impl AsRef<std::path::Path>,
        key_path: impl AsRef<std::path::Path>,
    ) -> Self {
        let (cert_path, key_path) = (cert_path.as_ref(), key_path.as_ref());
        let cert = std::fs::read(cert_path).map_err(|e| {
            format!(
                "cannot read the TLS client certificate {}: {e}",
                cert_path.display()
            )
        });
        let key = std::fs::read_to_string(key_path)
            .map_err(|e| format!("cannot read the TLS client key {}: {e}", key_path.display()));
        match (cert, key) {
            (Ok(cert), Ok(key)) => self.tls_client_cert_pem(cert, key),
            (Err(e), _) | (_, Err(e)) => {
                self.fail(e);
                self
            }
        }
    }

    /// Check everything and build the configuration.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the first problem: a malformed URL, an empty host, a prefetch
    /// or heartbeat of 0, a name too long for AMQP, a `frame_max` below AMQP's minimum of
    /// 4096 bytes, PEM data that is not PEM, TLS material on a plaintext connection, an
    /// invalid reconnect policy.
    pub fn build(self) -> Result<AmqpConfig, Error> {
        if let Some(error) = self.error {
            return Err(Error::Config(error));
        }
        if self.common.host.trim().is_empty() {
            return Err(Error::config("the AMQP host must not be empty"));
        }
        if self.common.prefetch == 0 {
            return Err(Error::config(
                "prefetch must be at least 1 (a prefetch of 0 means \"unlimited\" in AMQP, which \
                 would let the broker push a whole queue into the worker)",
            ));
        }
        let heartbeat = self.heartbeat.as_secs();
        if heartbeat == 0 {
            return Err(Error::config(format!(
                "heartbeat must be at least 1 second, got {:?}",
                self.heartbeat
            )));
        }
        let heartbeat = u16::try_from(heartbeat).map_err(|_| {
            Error::config(format!(
                "heartbeat must be at most {} seconds, got {:?}",
                u16::MAX,
                self.heartbeat
            ))
        })?;
        if self.common.connection_timeout.is_zero() {
            return Err(Error::config(
                "connection_timeout must be greater than zero",
            ));
        }
        check_short_string("vhost", &self.common.vhost)?;
        check_short_string("user name", &self.common.user)?;
        if let Some(name) = &self.common.connection_name
            && name.is_empty()
        {
            return Err(Error::config("the connection name must not be empty"));
        }
        if self.common.reconnect_attempts == Some(0) {
            return Err(Error::config(
                "max_reconnect_attempts must be at least 1 (leave it unset to retry forever)",
            ));
        }
        if let Some(frame_max) = self.common.frame_max
            && frame_max != 0
            && frame_max < FRAME_MIN_SIZE
        {
            return Err(Error::config(format!(
                "frame_max must be at least {FRAME_MIN_SIZE} bytes, AMQP's minimum frame size \
                 (or 0 for the broker's limit), got {frame_max}: the broker would refuse every \
                 connection"
            )));
        }
        let material = match (&self.ca_pem, &self.client) {
            (None, None) => None,
            (Some(_), None) => Some("a TLS CA certificate (tls_ca_pem/tls_ca_file) is set"),
            (None, Some(_)) => {
                Some("a TLS client certificate (tls_client_cert_pem/tls_client_cert_files) is set")
            }
            (Some(_), Some(_)) => Some(
                "a TLS CA certificate (tls_ca_pem/tls_ca_file) and a client certificate \
                 (tls_client_cert_pem/tls_client_cert_files) are set",
            ),
        };
        let use_tls = match (self.tls, material) {
            (Some((false, by)), Some(material)) => {
                return Err(Error::config(format!(
                    "conflicting TLS settings: {material}, but {by} asks for a plaintext \
                     connection; use an amqps:// URL (or tls(true)), or drop the TLS material"
                )));
            }
            (Some((on, _)), _) => on,
            (None, material) => material.is_some(),
        };
        let tls = if use_tls {
            if let Some(ca) = &self.ca_pem
                && !ca.contains("-----BEGIN CERTIFICATE-----")
            {
                return Err(Error::config(
                    "the TLS CA is not a PEM certificate (no \"-----BEGIN CERTIFICATE-----\")",
                ));
            }
            if let Some((cert, key)) = &self.client {
                if !String::from_utf8_lossy(cert).contains("-----BEGIN CERTIFICATE-----") {
                    return Err(Error::config(
                        "the TLS client certificate is not a PEM certificate",
                    ));
                }
                if !(key.0.contains("-----BEGIN") && key.0.contains("PRIVATE KEY-----")) {
                    return Err(Error::config("the TLS client key is not a PEM private key"));
                }
            }
            Some(Tls {
                ca_pem: self.ca_pem,
                client: self.client,
            })
        } else {
            None
        };
        let default_port = if tls.is_some() {
            5671
        } else {
            self.default_port
        };
        let port = self.port.unwrap_or(default_port);
        if port == 0 {
            return Err(Error::config("the AMQP port must not be 0"));
        }
        let mut more = Vec::with_capacity(self.more.len());
        for (i, (host, their_port)) in self.more.into_iter().enumerate() {
            let host = host.trim().to_owned();
            let their_port = their_port.unwrap_or(default_port);
            if host.is_empty() || their_port == 0 {
                return Err(Error::config(format!(
                    "AMQP endpoint {} has an empty host or a port of 0",
                    i + 2
                )));
            }
            more.push((host, their_port));
        }
        Ok(AmqpConfig {
            inner: Arc::new(Inner {
                tls,
                port,
                more,
                heartbeat,
                common: Common {
                    host: self.common.host.trim().to_owned(),
                    ..self.common
                },
            }),
        })
    }
}

/// AMQP's minimum `frame_max` (`frame-min-size`): RabbitMQ refuses a smaller one at every
/// connection.
const FRAME_MIN_SIZE: u32 = 4096;

/// Check that `value` fits an AMQP short string (255 bytes).
pub(crate) fn check_short_string(what: &str, value: &str) -> Result<(), Error> {
    ShortString::try_new(value)
        .map(drop)
        .map_err(|_| Error::config(format!("the {what} is longer than AMQP's 255 bytes")))
}

/// The default reconnect schedule: 500 ms, doubling, capped at 30 s, half jitter — a worker
/// comes back by itself after any broker outage, without many workers reconnecting in step.
pub(super) fn default_reconnect() -> Backoff {
    Backoff::builder()
        .initial_delay(Duration::from_millis(500))
        .max_delay(Duration::from_secs(30))
        .jitter(Jitter::Proportional(0.5))
        .build()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(r: Result<AmqpConfig, Error>) -> String {
        match r {
            Err(Error::Config(m)) => m,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn settings_give_the_defaults_and_explicit_values_win() {
        let settings = AmqpSettings::from_lookup(|name| {
            match name {
                "ASYNCWORKER_AMQP_DEFAULT_VHOST" => Some("fluentd"),
                "ASYNCWORKER_AMQP_DEFAULT_PORT" => Some("5673"),
                "ASYNCWORKER_AMQP_DEFAULT_PREFETCH_COUNT" => Some("256"),
                "ASYNCWORKER_AMQP_DEFAULT_HEARTBEAT" => Some("5"),
                _ => None,
            }
            .map(str::to_owned)
        })
        .unwrap();
        // A URL without port or vhost takes both from the settings.
        let c = AmqpConfigBuilder::with_settings(&settings)
            .url("amqp://guest:guest@127.0.0.1")
            .build()
            .unwrap();
        assert_eq!((c.port(), c.vhost()), (5673, "fluentd"));
        assert_eq!((c.prefetch(), c.heartbeat()), (256, Duration::from_secs(5)));
        // What the code says wins over the settings.
        let c = AmqpConfigBuilder::with_settings(&settings)
            .url("amqp://127.0.0.1:5672/%2f?heartbeat=9")
            .prefetch(10)
            .build()
            .unwrap();
        assert_eq!((c.port(), c.vhost()), (5672, "/"));
        assert_eq!((c.prefetch(), c.heartbeat()), (10, Duration::from_secs(9)));
        // TLS keeps its own default port.
        let c = AmqpConfigBuilder::with_settings(&settings)
            .url("amqps://127.0.0.1")
            .build()
            .unwrap();
        assert_eq!(c.port(), 5671);
    }

    #[test]
    fn defaults() {
        let c = AmqpConfig::builder().build().unwrap();
        assert_eq!(c.host(), "localhost");
        assert_eq!(c.port(), 5672);
        assert_eq!(c.user(), "guest");
        assert_eq!(c.vhost(), "/");
        assert_eq!(c.prefetch(), 128);
        assert_eq!(c.heartbeat(), Duration::from_secs(60));
        assert!(!c.tls());
        assert_eq!(
            AmqpConfig::builder().tls(true).build().unwrap().port(),
            5671
        );
        // An empty path segment is the empty vhost, as in RabbitMQ's URI spec.
        assert_eq!(AmqpConfig::from_url("amqp://h/").unwrap().vhost(), "");
    }

    #[test]
    fn setters_after_the_url_override_it() {
        let c = AmqpConfig::builder()
            .url("amqp://u:p@h/v?prefetch=5")
            .prefetch(7)
            .vhost("w")
            .build()
            .unwrap();
        assert_eq!(c.prefetch(), 7);
        assert_eq!(c.vhost(), "w");
    }

    #[test]
    fn invalid_values_are_config_errors() {
        assert!(err(AmqpConfig::builder().prefetch(0).build()).contains("prefetch"));
        assert!(err(AmqpConfig::from_url("amqp://h?prefetch=0")).contains("prefetch"));
        assert!(err(AmqpConfig::builder().heartbeat(Duration::ZERO).build()).contains("heartbeat"));
        assert!(err(AmqpConfig::from_url("http://h")).contains("scheme"));
        assert!(err(AmqpConfig::from_url("not a url")).contains("malformed"));
        assert!(err(AmqpConfig::from_url("amqp://h?bogus=1")).contains("bogus"));
        assert!(err(AmqpConfig::from_url("amqp://h?heartbeat=x")).contains("heartbeat"));
        assert!(err(AmqpConfig::from_url("amqp://h/a/b")).contains("single path segment"));
        assert!(err(AmqpConfig::builder().host("").build()).contains("host"));
        assert!(err(AmqpConfig::builder().vhost("v".repeat(300)).build()).contains("vhost"));
        assert!(err(AmqpConfig::builder().tls_ca_pem("nope").build()).contains("CA"));
        assert!(
            err(AmqpConfig::builder()
                .tls_ca_file("/nonexistent/ca.pem")
                .build())
            .contains("/nonexistent/ca.pem")
        );
        assert!(
            err(AmqpConfig::builder().max_reconnect_attempts(0).build())
                .contains("max_reconnect_attempts")
        );
    }

    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n";

    #[test]
    fn tls_material_with_a_plaintext_scheme_is_a_conflict_in_either_order() {
        let ca_then_url = err(AmqpConfig::builder().tls_ca_pem(CA).url("amqp://h").build());
        assert!(
            ca_then_url.contains("tls_ca_pem") && ca_then_url.contains("amqp://"),
            "{ca_then_url}"
        );
        let url_then_ca = err(AmqpConfig::builder().url("amqp://h").tls_ca_pem(CA).build());
        assert!(url_then_ca.contains("amqp://"), "{url_then_ca}");
        let client = err(AmqpConfig::builder()
            .tls_client_cert_pem(CA, KEY)
            .url("amqp://h")
            .build());
        assert!(
            client.contains("client certificate") && client.contains("amqp://"),
            "{client}"
        );
        let off = err(AmqpConfig::builder().tls_ca_pem(CA).tls(false).build());
        assert!(
            off.contains("tls(false)") && off.contains("tls_ca_pem"),
            "{off}"
        );
        // Consistent settings still build, in any order.
        for c in [
            AmqpConfig::builder()
                .tls_ca_pem(CA)
                .url("amqps://h")
                .build(),
            AmqpConfig::builder()
                .url("amqps://h")
                .tls_ca_pem(CA)
                .build(),
            AmqpConfig::builder().tls_ca_pem(CA).build(),
            AmqpConfig::builder()
                .url("amqp://h")
                .tls(true)
                .tls_client_cert_pem(CA, KEY)
                .build(),
        ] {
            let c = c.unwrap();
            assert!(c.tls() && c.inner.tls.is_some(), "{c:?}");
        }
        // The same setting given twice: the later wins, as for every other value.
        assert!(AmqpConfig::from_url("amqps://h").unwrap().tls());
        assert!(
            !AmqpConfig::builder()
                .url("amqps://h")
                .tls(false)
                .build()
                .unwrap()
                .tls()
        );
    }

    #[test]
    fn a_url_without_a_port_keeps_the_port_set_before_it() {
        let c = AmqpConfig::builder()
            .port(5673)
            .url("amqp://guest:guest@h/%2f")
            .build()
            .unwrap();
        assert_eq!(c.port(), 5673);
        let c = AmqpConfig::builder()
            .port(5673)
            .url("amqp://h:5674")
            .build()
            .unwrap();
        assert_eq!(c.port(), 5674);
    }

    #[test]
    fn frame_max_below_the_amqp_minimum_is_an_error_at_build() {
        for url in ["amqp://h?frame_max=1024", "amqp://h?frame_max=4095"] {
            let e = err(AmqpConfig::from_url(url));
            assert!(e.contains("frame_max") && e.contains("4096"), "{url}: {e}");
        }
        for (url, frame_max) in [
            ("amqp://h?frame_max=4096", Some(4096)),
            ("amqp://h?frame_max=131072", Some(131_072)),
            ("amqp://h?frame_max=0", Some(0)),
            ("amqp://h", None),
        ] {
            let c = AmqpConfig::from_url(url).unwrap();
            assert_eq!(c.inner.common.frame_max, frame_max, "{url}");
        }
    }

    #[test]
    fn passwords_never_show() {
        let secret = "hunter2-very-secret";
        let urls = [
            format!("amqp://bob:{secret}@h:5672/%2f"),
            format!("amqp://bob:{secret}@h:notaport/%2f"),
            format!("amqp://bob:{secret}@h/%2f?bogus=1"),
            format!("amqp://bob:{secret}@h/%zz"),
            format!("ftp://bob:{secret}@h/"),
        ];
        for url in &urls {
            let shown = match AmqpConfig::from_url(url) {
                Ok(c) => format!("{c:?} {c} {:?}", c.endpoint("/")),
                Err(e) => format!("{e:?} {e}"),
            };
            assert!(!shown.contains(secret), "{shown}");
        }
        let b = AmqpConfig::builder().password(secret).tls_client_cert_pem(
            "-----BEGIN CERTIFICATE-----",
            format!("-----BEGIN PRIVATE KEY-----{secret}"),
        );
        assert!(!format!("{b:?}").contains(secret));
        let c = b.build().unwrap();
        assert!(!format!("{c:?} {c}").contains(secret));
    }
}
