//! Connection settings: from an `amqp://` / `amqps://` URL or a builder, validated at build
//! time, with the password kept out of every `Debug`, `Display` and log line.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use asyncworker_core::{Backoff, Error, Jitter};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::{LongString, ShortString};
use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};
use lapin::{Connection, ConnectionProperties};

use crate::error::{AmqpError, Endpoint};

/// The default prefetch (`basic.qos` prefetch count) per consumer.
pub const DEFAULT_PREFETCH: u16 = 128;
/// The default heartbeat interval proposed to the broker.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(60);
/// The default timeout of one connection attempt (TCP, TLS and AMQP handshake).
pub const DEFAULT_CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// A string that never shows itself in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// TLS settings of a connection.
#[derive(Clone, PartialEq, Eq)]
struct Tls {
    /// Extra trusted CA certificates, PEM.
    ca_pem: Option<String>,
    /// A client certificate chain (PEM) and its private key (PEM).
    client: Option<(Vec<u8>, Secret)>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("custom_ca", &self.ca_pem.is_some())
            .field("client_certificate", &self.client.is_some())
            .finish()
    }
}

#[derive(Clone, PartialEq)]
struct Inner {
    tls: Option<Tls>,
    host: String,
    port: u16,
    user: String,
    password: Secret,
    vhost: String,
    prefetch: u16,
    heartbeat: u16,
    connection_timeout: Duration,
    connection_name: Option<String>,
    frame_max: Option<u32>,
    channel_max: Option<u16>,
    reconnect: Backoff,
    reconnect_attempts: Option<u32>,
}

/// How to reach a RabbitMQ broker: host, port, credentials, default virtual host, prefetch,
/// heartbeat, connection name, TLS and the reconnect policy.
///
/// Built from a URL ([`AmqpConfig::from_url`]) or a builder ([`AmqpConfig::builder`]), and
/// validated then: a malformed URL, a prefetch of 0 or a heartbeat of 0 is an
/// [`Error::Config`] before anything connects. Cheap to clone (an `Arc`).
///
/// The password appears in no `Debug` or `Display` output and in no log line; errors name the
/// endpoint as `amqp://user@host:port vhost "/"`.
///
/// ```
/// use std::time::Duration;
/// use asyncworker_amqp::AmqpConfig;
///
/// # fn main() -> Result<(), asyncworker_core::Error> {
/// let from_url = AmqpConfig::from_url("amqp://guest:s3cret@127.0.0.1:5672/%2f?heartbeat=30")?;
/// assert_eq!(from_url.heartbeat(), Duration::from_secs(30));
/// assert!(!format!("{from_url:?} {from_url}").contains("s3cret"));
///
/// let built = AmqpConfig::builder()
///     .host("rabbit.internal")
///     .user("worker")
///     .password("s3cret")
///     .vhost("jobs")
///     .prefetch(256)
///     .connection_name("billing-worker")
///     .build()?;
/// assert_eq!(built.prefetch(), 256);
///
/// assert!(AmqpConfig::builder().prefetch(0).build().is_err());
/// # Ok(())
/// # }
/// ```
#[derive(Clone, PartialEq)]
pub struct AmqpConfig {
    inner: Arc<Inner>,
}

impl AmqpConfig {
    /// A builder with the defaults: `amqp://guest:guest@localhost:5672`, vhost `/`, prefetch
    /// 128, heartbeat 60 s.
    pub fn builder() -> AmqpConfigBuilder {
        AmqpConfigBuilder::default()
    }

    /// A configuration from an `amqp://` or `amqps://` URL.
    ///
    /// The URL follows RabbitMQ's URI spec: `amqp://user:password@host:port/vhost`, with the
    /// user, password and vhost percent-encoded (`%2f` is the vhost `/`; no path means `/` as
    /// well). Query parameters: `heartbeat` (seconds), `connection_timeout` (milliseconds),
    /// `prefetch`, `connection_name`, `frame_max`, `channel_max`; any other is an error.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when the URL is malformed or a value is invalid. The message never
    /// repeats the URL's password.
    pub fn from_url(url: &str) -> Result<AmqpConfig, Error> {
        AmqpConfig::builder().url(url).build()
    }

    /// The broker's host name or address.
    pub fn host(&self) -> &str {
        &self.inner.host
    }

    /// The broker's port.
    pub fn port(&self) -> u16 {
        self.inner.port
    }

    /// The user name.
    pub fn user(&self) -> &str {
        &self.inner.user
    }

    /// The default virtual host (a route may consume from another).
    pub fn vhost(&self) -> &str {
        &self.inner.vhost
    }

    /// The prefetch count applied with `basic.qos` to each consumer.
    pub fn prefetch(&self) -> u16 {
        self.inner.prefetch
    }

    /// The heartbeat interval proposed to the broker (the broker may lower it).
    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(u64::from(self.inner.heartbeat))
    }

    /// The timeout of one connection attempt.
    pub fn connection_timeout(&self) -> Duration {
        self.inner.connection_timeout
    }

    /// The connection name sent to the broker as a client property (shown by
    /// `rabbitmqctl list_connections client_properties` and the management UI).
    pub fn connection_name(&self) -> Option<&str> {
        self.inner.connection_name.as_deref()
    }

    /// Whether the connection uses TLS.
    pub fn tls(&self) -> bool {
        self.inner.tls.is_some()
    }

    /// The reconnect policy.
    pub fn reconnect(&self) -> &Backoff {
        &self.inner.reconnect
    }

    /// How many failed connection attempts in a row a source makes before it gives up
    /// ([`AmqpError::GaveUp`](crate::AmqpError::GaveUp)); `None`: it never gives up.
    pub fn max_reconnect_attempts(&self) -> Option<u32> {
        self.inner.reconnect_attempts
    }

    /// The endpoint for `vhost`, as errors and logs name it.
    pub fn endpoint(&self, vhost: &str) -> Endpoint {
        Endpoint {
            tls: self.tls(),
            user: self.inner.user.as_str().into(),
            host: self.inner.host.as_str().into(),
            port: self.inner.port,
            vhost: vhost.into(),
        }
    }

    /// A copy with `name` as the connection name when none is set.
    pub(crate) fn named_if_unnamed(&self, name: &str) -> AmqpConfig {
        if self.inner.connection_name.is_some() {
            return self.clone();
        }
        let mut inner = (*self.inner).clone();
        inner.connection_name = Some(name.to_owned());
        AmqpConfig {
            inner: Arc::new(inner),
        }
    }

    /// Open a connection to the configuration's default virtual host.
    ///
    /// Used by the sources of this crate, and handy for setup code (declaring queues) and for
    /// publishers. No retry here: the sources retry with the reconnect policy.
    ///
    /// # Errors
    ///
    /// An [`AmqpError`] classifying the failure (authentication, vhost access, network).
    pub async fn connect(&self) -> Result<Connection, AmqpError> {
        self.connect_vhost(self.vhost()).await
    }

    /// Open a connection to `vhost`.
    ///
    /// # Errors
    ///
    /// As [`AmqpConfig::connect`].
    pub async fn connect_vhost(&self, vhost: &str) -> Result<Connection, AmqpError> {
        self.connect_attempt(vhost, 1).await
    }

    pub(crate) async fn connect_attempt(
        &self,
        vhost: &str,
        attempt: u32,
    ) -> Result<Connection, AmqpError> {
        let endpoint = self.endpoint(vhost);
        let fail = |e: lapin::Error| AmqpError::connect(endpoint.clone(), attempt, e);
        let runtime = lapin::runtime::default_runtime().map_err(&fail)?;
        let inner = &*self.inner;
        let uri = AMQPUri {
            scheme: if inner.tls.is_some() {
                AMQPScheme::AMQPS
            } else {
                AMQPScheme::AMQP
            },
            authority: AMQPAuthority {
                userinfo: AMQPUserInfo {
                    username: inner.user.clone(),
                    password: inner.password.0.clone(),
                },
                host: inner.host.clone(),
                port: inner.port,
            },
            vhost: vhost.to_owned(),
            query: AMQPQueryString {
                frame_max: inner.frame_max,
                channel_max: inner.channel_max,
                heartbeat: Some(inner.heartbeat),
                connection_timeout: Some(
                    u64::try_from(inner.connection_timeout.as_millis()).unwrap_or(u64::MAX),
                ),
                auth_mechanism: None,
            },
        };
        let mut props = ConnectionProperties::default().with_client_property(
            "product".into(),
            LongString::from(concat!("asyncworker-amqp ", env!("CARGO_PKG_VERSION"))),
        );
        if let Some(name) = &inner.connection_name {
            props = props.with_connection_name(LongString::from(name.as_str()));
        }
        let tls = match &inner.tls {
            Some(tls) => OwnedTLSConfig {
                identity: tls.client.as_ref().map(|(cert, key)| OwnedIdentity::PKCS8 {
                    pem: cert.clone(),
                    key: key.0.as_bytes().to_vec(),
                }),
                cert_chain: tls.ca_pem.clone(),
            },
            None => OwnedTLSConfig::default(),
        };
        // The connection timeout in the URI covers the TCP connect only: bound the whole
        // handshake too, so a broker that accepts and then stalls cannot hang a worker.
        let connect = Connection::connect_uri_with_config(uri, props, tls, runtime);
        match tokio::time::timeout(inner.connection_timeout, connect).await {
            Ok(result) => result.map_err(fail),
            Err(_) => Err(fail(lapin::Error::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "the connection was not established within {:?}",
                    inner.connection_timeout
                ),
            )))),
        }
    }
}

impl fmt::Debug for AmqpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &*self.inner;
        f.debug_struct("AmqpConfig")
            .field("host", &i.host)
            .field("port", &i.port)
            .field("user", &i.user)
            .field("password", &i.password)
            .field("vhost", &i.vhost)
            .field("prefetch", &i.prefetch)
            .field("heartbeat", &self.heartbeat())
            .field("connection_timeout", &i.connection_timeout)
            .field("connection_name", &i.connection_name)
            .field("tls", &i.tls)
            .field("reconnect", &i.reconnect)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for AmqpConfig {
    /// `amqp://user@host:port vhost "/"` — never the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.endpoint(self.vhost()), f)
    }
}

/// Builds an [`AmqpConfig`]; every check happens in [`AmqpConfigBuilder::build`].
///
/// Setters apply in call order, so `url(..)` followed by `prefetch(..)` overrides the URL's
/// prefetch, and the reverse keeps the URL's.
#[derive(Clone)]
#[must_use = "a builder does nothing until .build() is called"]
pub struct AmqpConfigBuilder {
    tls: bool,
    ca_pem: Option<String>,
    client: Option<(Vec<u8>, Secret)>,
    host: String,
    port: Option<u16>,
    user: String,
    password: Secret,
    vhost: String,
    prefetch: u16,
    heartbeat: Duration,
    connection_timeout: Duration,
    connection_name: Option<String>,
    frame_max: Option<u32>,
    channel_max: Option<u16>,
    reconnect: Backoff,
    reconnect_attempts: Option<u32>,
    /// The plain-AMQP port used when none is given (`ASYNCWORKER_AMQP_DEFAULT_PORT`).
    default_port: u16,
    error: Option<String>,
}

impl Default for AmqpConfigBuilder {
    /// A builder whose defaults come from the `ASYNCWORKER_AMQP_DEFAULT_*` variables; a
    /// malformed variable makes [`AmqpConfigBuilder::build`] fail, naming it.
    fn default() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }
}

impl AmqpConfigBuilder {
    /// A builder whose defaults (vhost, port, prefetch, heartbeat) come from the
    /// `ASYNCWORKER_AMQP_DEFAULT_*` variables as `lookup` reads them, rather than from the
    /// environment. Values set on the builder or in a URL win over them; a malformed
    /// variable makes [`AmqpConfigBuilder::build`] fail, naming it.
    ///
    /// | variable | default |
    /// |---|---|
    /// | `ASYNCWORKER_AMQP_DEFAULT_VHOST` | `/` |
    /// | `ASYNCWORKER_AMQP_DEFAULT_PORT` | `5672` |
    /// | `ASYNCWORKER_AMQP_DEFAULT_PREFETCH_COUNT` | `128` |
    /// | `ASYNCWORKER_AMQP_DEFAULT_HEARTBEAT` | `60` (seconds; really sent to the broker) |
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let mut builder = Self::fixed_defaults();
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let number = |name: &str, expected: &str| -> Result<Option<u16>, String> {
            get(name)
                .map(|v| {
                    v.parse::<u16>()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| format!("{name}={v:?} is not valid: expected {expected}"))
                })
                .transpose()
        };
        if let Some(vhost) = get("ASYNCWORKER_AMQP_DEFAULT_VHOST") {
            builder.vhost = vhost;
        }
        let numbers = (|| {
            Ok::<_, String>((
                number("ASYNCWORKER_AMQP_DEFAULT_PORT", "a port, 1-65535")?,
                number(
                    "ASYNCWORKER_AMQP_DEFAULT_PREFETCH_COUNT",
                    "an integer, 1-65535",
                )?,
                number("ASYNCWORKER_AMQP_DEFAULT_HEARTBEAT", "seconds, 1-65535")?,
            ))
        })();
        match numbers {
            Ok((port, prefetch, heartbeat)) => {
                builder.default_port = port.unwrap_or(builder.default_port);
                builder.prefetch = prefetch.unwrap_or(builder.prefetch);
                if let Some(h) = heartbeat {
                    builder.heartbeat = Duration::from_secs(h.into());
                }
            }
            Err(error) => builder.fail(error),
        }
        builder
    }

    fn fixed_defaults() -> Self {
        AmqpConfigBuilder {
            tls: false,
            ca_pem: None,
            client: None,
            host: "localhost".to_owned(),
            port: None,
            user: "guest".to_owned(),
            password: Secret("guest".to_owned()),
            vhost: "/".to_owned(),
            prefetch: DEFAULT_PREFETCH,
            heartbeat: DEFAULT_HEARTBEAT,
            connection_timeout: DEFAULT_CONNECTION_TIMEOUT,
            connection_name: None,
            frame_max: None,
            channel_max: None,
            reconnect: default_reconnect(),
            reconnect_attempts: None,
            default_port: 5672,
            error: None,
        }
    }
}

impl fmt::Debug for AmqpConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpConfigBuilder")
            .field("tls", &self.tls)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password)
            .field("vhost", &self.vhost)
            .field("prefetch", &self.prefetch)
            .field("heartbeat", &self.heartbeat)
            .field("connection_name", &self.connection_name)
            .finish_non_exhaustive()
    }
}

impl AmqpConfigBuilder {
    fn fail(&mut self, message: String) {
        if self.error.is_none() {
            self.error = Some(message);
        }
    }

    /// Take the scheme, credentials, host, port, vhost and query parameters from an
    /// `amqp://` or `amqps://` URL (see [`AmqpConfig::from_url`]).
    pub fn url(mut self, url: &str) -> Self {
        if let Err(message) = self.apply_url(url) {
            self.fail(message);
        }
        self
    }

    fn apply_url(&mut self, raw: &str) -> Result<(), String> {
        // Never echo `raw`: it may hold a password.
        let url = url::Url::parse(raw.trim()).map_err(|e| {
            format!("malformed AMQP URL ({e}); expected amqp://user:password@host:port/vhost")
        })?;
        match url.scheme() {
            "amqp" => self.tls = false,
            "amqps" => self.tls = true,
            other => {
                return Err(format!(
                    "unsupported URL scheme {other:?}: expected amqp:// or amqps://"
                ));
            }
        }
        let host = match url.host() {
            Some(url::Host::Domain(d)) => percent_decode(d, "host")?,
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            None => return Err("the AMQP URL has no host".to_owned()),
        };
        if host.is_empty() {
            return Err("the AMQP URL has no host".to_owned());
        }
        self.host = host;
        self.port = url.port();
        if !url.username().is_empty() {
            self.user = percent_decode(url.username(), "user name")?;
        }
        if let Some(password) = url.password() {
            self.password = Secret(percent_decode(password, "password")?);
        }
        // RabbitMQ's URI spec: no path → the default vhost (ours: ASYNCWORKER_AMQP_DEFAULT_VHOST,
        // else "/"), so the builder's vhost stays; otherwise the one path segment,
        // percent-decoded (so "/%2f" is "/" and "/" alone is the empty vhost "").
        let path = url.path();
        if !path.is_empty() {
            let segment = &path[1..];
            if segment.contains('/') {
                return Err(
                    "the AMQP URL's vhost must be a single path segment (write \"/\" inside a \
                     vhost name as %2f)"
                        .to_owned(),
                );
            }
            self.vhost = percent_decode(segment, "vhost")?;
        }
        for (key, value) in url.query_pairs() {
            let int = |what: &str| -> Result<u64, String> {
                value.parse::<u64>().map_err(|_| {
                    format!("the AMQP URL's {what} must be a non-negative integer, got {value:?}")
                })
            };
            match &*key {
                "heartbeat" => self.heartbeat = Duration::from_secs(int("heartbeat")?),
                "connection_timeout" => {
                    self.connection_timeout = Duration::from_millis(int("connection_timeout")?);
                }
                "prefetch" | "prefetch_count" => {
                    self.prefetch = u16::try_from(int("prefetch")?)
                        .map_err(|_| format!("prefetch must be at most {}", u16::MAX))?;
                }
                "connection_name" => self.connection_name = Some(value.into_owned()),
                "frame_max" => {
                    self.frame_max = Some(
                        u32::try_from(int("frame_max")?)
                            .map_err(|_| "frame_max is too large".to_owned())?,
                    );
                }
                "channel_max" => {
                    self.channel_max = Some(
                        u16::try_from(int("channel_max")?)
                            .map_err(|_| "channel_max is too large".to_owned())?,
                    );
                }
                other => {
                    return Err(format!(
                        "unknown AMQP URL parameter {other:?} (known: heartbeat, \
                         connection_timeout, prefetch, connection_name, frame_max, channel_max)"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The broker's host name or address (default `localhost`).
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = host.into();
        self
    }

    /// The broker's port (default 5672, or 5671 with TLS).
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// The user name (default `guest`).
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = user.into();
        self
    }

    /// The password (default `guest`). Never shown by `Debug`, `Display` or logs.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Secret(password.into());
        self
    }

    /// The default virtual host (default `/`).
    pub fn vhost(mut self, vhost: impl Into<String>) -> Self {
        self.vhost = vhost.into();
        self
    }

    /// The prefetch count per consumer (default 128; 0 is rejected, because in AMQP it means
    /// "unlimited").
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch;
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
        self.connection_timeout = timeout;
        self
    }

    /// The connection name, sent as the `connection_name` client property.
    pub fn connection_name(mut self, name: impl Into<String>) -> Self {
        self.connection_name = Some(name.into());
        self
    }

    /// The delays between connection attempts (default: 500 ms, doubling, capped at 30 s,
    /// [`Jitter::Proportional(0.5)`](Jitter::Proportional)): see [`Backoff`].
    pub fn reconnect(mut self, backoff: Backoff) -> Self {
        self.reconnect = backoff;
        self
    }

    /// Give up after `attempts` failed connection attempts in a row (at least 1): the source
    /// then yields [`AmqpError::GaveUp`](crate::AmqpError::GaveUp) and ends its stream, which
    /// ends the route. By default a source retries forever.
    pub fn max_reconnect_attempts(mut self, attempts: u32) -> Self {
        self.reconnect_attempts = Some(attempts);
        self
    }

    /// Use TLS (`amqps://`). Implied by the `tls_*` settings and by an `amqps://` URL.
    pub fn tls(mut self, tls: bool) -> Self {
        self.tls = tls;
        self
    }

    /// Trust the CA certificate(s) in `pem` (PEM text) for the broker's certificate, besides
    /// the bundled Mozilla roots (webpki-roots); implies TLS. Needed for a broker whose
    /// certificate a private CA signed. The broker's certificate is always verified, against
    /// the host name (or IP address) connected to.
    pub fn tls_ca_pem(mut self, pem: impl Into<String>) -> Self {
        self.tls = true;
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
    /// key (PEM: PKCS#8, PKCS#1 or SEC1). Implies TLS. The key is never shown by `Debug`.
    pub fn tls_client_cert_pem(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<String>,
    ) -> Self {
        self.tls = true;
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
    /// or heartbeat of 0, a name too long for AMQP, PEM data that is not PEM, an invalid
    /// reconnect policy.
    pub fn build(self) -> Result<AmqpConfig, Error> {
        if let Some(error) = self.error {
            return Err(Error::Config(error));
        }
        if self.host.trim().is_empty() {
            return Err(Error::config("the AMQP host must not be empty"));
        }
        if self.prefetch == 0 {
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
        if self.connection_timeout.is_zero() {
            return Err(Error::config(
                "connection_timeout must be greater than zero",
            ));
        }
        check_short_string("vhost", &self.vhost)?;
        check_short_string("user name", &self.user)?;
        if let Some(name) = &self.connection_name
            && name.is_empty()
        {
            return Err(Error::config("the connection name must not be empty"));
        }
        if self.reconnect_attempts == Some(0) {
            return Err(Error::config(
                "max_reconnect_attempts must be at least 1 (leave it unset to retry forever)",
            ));
        }
        let tls = if self.tls {
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
        let port = self.port.unwrap_or(if tls.is_some() {
            5671
        } else {
            self.default_port
        });
        if port == 0 {
            return Err(Error::config("the AMQP port must not be 0"));
        }
        Ok(AmqpConfig {
            inner: Arc::new(Inner {
                tls,
                host: self.host.trim().to_owned(),
                port,
                user: self.user,
                password: self.password,
                vhost: self.vhost,
                prefetch: self.prefetch,
                heartbeat,
                connection_timeout: self.connection_timeout,
                connection_name: self.connection_name,
                frame_max: self.frame_max,
                channel_max: self.channel_max,
                reconnect: self.reconnect,
                reconnect_attempts: self.reconnect_attempts,
            }),
        })
    }
}

/// Check that `value` fits an AMQP short string (255 bytes).
pub(crate) fn check_short_string(what: &str, value: &str) -> Result<(), Error> {
    ShortString::try_new(value)
        .map(drop)
        .map_err(|_| Error::config(format!("the {what} is longer than AMQP's 255 bytes")))
}

fn percent_decode(s: &str, what: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("the AMQP URL's {what} has an invalid percent-escape"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("the AMQP URL's {what} is not valid UTF-8"))
}

/// Several named connection configurations, for an application that talks to more than one
/// broker (or vhost, or user). A route picks one by name; with no name, the only one.
///
/// ```
/// use asyncworker_amqp::{AmqpConfig, Connections};
///
/// # fn main() -> Result<(), asyncworker_core::Error> {
/// let mut connections = Connections::new();
/// connections.insert("orders", AmqpConfig::from_url("amqp://orders-broker")?)?;
/// connections.insert("audit", AmqpConfig::from_url("amqp://audit-broker")?)?;
///
/// assert_eq!(connections.select("invoices", Some("audit"))?.host(), "audit-broker");
/// // Two are registered: a route must say which.
/// let err = connections.select("invoices", None).unwrap_err();
/// assert!(err.to_string().contains("invoices"));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct Connections {
    entries: Vec<(String, AmqpConfig)>,
}

impl Connections {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Register `config` as `name`. A configuration without a connection name gets `name` as
    /// its connection name, so the broker shows which one it is.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when `name` is empty or already registered.
    pub fn insert(
        &mut self,
        name: impl Into<String>,
        config: AmqpConfig,
    ) -> Result<&mut Self, Error> {
        let name = name.into();
        if name.is_empty() {
            return Err(Error::config("an AMQP connection name must not be empty"));
        }
        if self.get(&name).is_some() {
            return Err(Error::config(format!(
                "an AMQP connection named {name:?} is already registered"
            )));
        }
        let config = config.named_if_unnamed(&name);
        self.entries.push((name, config));
        Ok(self)
    }

    /// [`Connections::insert`], by value.
    ///
    /// # Errors
    ///
    /// As [`Connections::insert`].
    pub fn with(mut self, name: impl Into<String>, config: AmqpConfig) -> Result<Self, Error> {
        self.insert(name, config)?;
        Ok(self)
    }

    /// The configuration registered as `name`.
    pub fn get(&self, name: &str) -> Option<&AmqpConfig> {
        self.entries
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, config)| config)
    }

    /// The registered names, in registration order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(n, _)| n.as_str())
    }

    /// How many configurations are registered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is registered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The configuration `route` uses: the one named `choice`, or, with no choice, the only
    /// one registered.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the route when `choice` is not registered, or when no choice
    /// is made and zero or several configurations are registered.
    pub fn select(&self, route: &str, choice: Option<&str>) -> Result<&AmqpConfig, Error> {
        let known = || {
            self.names()
                .map(|n| format!("{n:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match choice {
            Some(name) => self.get(name).ok_or_else(|| {
                if self.is_empty() {
                    Error::config(format!(
                        "route {route:?} uses the AMQP connection {name:?}, but no AMQP \
                         connection is registered"
                    ))
                } else {
                    Error::config(format!(
                        "route {route:?} uses the AMQP connection {name:?}, which is not \
                         registered (registered: {})",
                        known()
                    ))
                }
            }),
            None => match self.entries.as_slice() {
                [(_, config)] => Ok(config),
                [] => Err(Error::config(format!(
                    "route {route:?} needs an AMQP connection, but none is registered"
                ))),
                _ => Err(Error::config(format!(
                    "route {route:?} does not say which AMQP connection to use, and {} are \
                     registered ({}): choose one by name",
                    self.len(),
                    known()
                ))),
            },
        }
    }
}

/// The default reconnect schedule: 500 ms, doubling, capped at 30 s, half jitter — a worker
/// comes back by itself after any broker outage, without many workers reconnecting in step.
fn default_reconnect() -> Backoff {
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
        let settings = |name: &str| {
            match name {
                "ASYNCWORKER_AMQP_DEFAULT_VHOST" => Some("fluentd"),
                "ASYNCWORKER_AMQP_DEFAULT_PORT" => Some("5673"),
                "ASYNCWORKER_AMQP_DEFAULT_PREFETCH_COUNT" => Some("256"),
                "ASYNCWORKER_AMQP_DEFAULT_HEARTBEAT" => Some("5"),
                _ => None,
            }
            .map(str::to_owned)
        };
        // A URL without port or vhost takes both from the settings.
        let c = AmqpConfigBuilder::from_lookup(settings)
            .url("amqp://guest:guest@127.0.0.1")
            .build()
            .unwrap();
        assert_eq!((c.port(), c.vhost()), (5673, "fluentd"));
        assert_eq!((c.prefetch(), c.heartbeat()), (256, Duration::from_secs(5)));
        // What the code says wins over the settings.
        let c = AmqpConfigBuilder::from_lookup(settings)
            .url("amqp://127.0.0.1:5672/%2f?heartbeat=9")
            .prefetch(10)
            .build()
            .unwrap();
        assert_eq!((c.port(), c.vhost()), (5672, "/"));
        assert_eq!((c.prefetch(), c.heartbeat()), (10, Duration::from_secs(9)));
        // TLS keeps its own default port.
        let c = AmqpConfigBuilder::from_lookup(settings)
            .url("amqps://127.0.0.1")
            .build()
            .unwrap();
        assert_eq!(c.port(), 5671);
    }

    #[test]
    fn a_malformed_default_is_an_error_naming_the_variable() {
        for (name, value) in [
            ("ASYNCWORKER_AMQP_DEFAULT_PORT", "0"),
            ("ASYNCWORKER_AMQP_DEFAULT_PREFETCH_COUNT", "-1"),
            ("ASYNCWORKER_AMQP_DEFAULT_HEARTBEAT", "soon"),
            ("ASYNCWORKER_AMQP_DEFAULT_HEARTBEAT", "0"),
        ] {
            let built = AmqpConfigBuilder::from_lookup(|n| (n == name).then(|| value.to_owned()))
                .url("amqp://127.0.0.1")
                .build();
            let message = err(built);
            assert!(message.contains(name), "{message}");
        }
    }

    #[test]
    fn url_parts_are_parsed() {
        let c = AmqpConfig::from_url(
            "amqps://us%40er:p%3Ass@broker.example:1234/my%2fvhost?heartbeat=5&prefetch=10&connection_name=w1&connection_timeout=2500",
        )
        .unwrap();
        assert!(c.tls());
        assert_eq!(c.user(), "us@er");
        assert_eq!(c.inner.password.0, "p:ss");
        assert_eq!(c.host(), "broker.example");
        assert_eq!(c.port(), 1234);
        assert_eq!(c.vhost(), "my/vhost");
        assert_eq!(c.heartbeat(), Duration::from_secs(5));
        assert_eq!(c.prefetch(), 10);
        assert_eq!(c.connection_name(), Some("w1"));
        assert_eq!(c.connection_timeout(), Duration::from_millis(2500));
    }

    #[test]
    fn ip_hosts_are_kept() {
        // amq-protocol-uri maps IP hosts to "localhost"; this parser must not.
        let c = AmqpConfig::from_url("amqp://10.1.2.3").unwrap();
        assert_eq!(c.host(), "10.1.2.3");
        assert_eq!(c.port(), 5672);
        assert_eq!(c.vhost(), "/");
        let c = AmqpConfig::from_url("amqp://[::1]:5673/%2f").unwrap();
        assert_eq!(c.host(), "::1");
        assert_eq!(c.port(), 5673);
        assert_eq!(c.vhost(), "/");
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

    #[test]
    fn connections_select_by_name_or_the_only_one() {
        let a = AmqpConfig::from_url("amqp://a").unwrap();
        let b = AmqpConfig::from_url("amqp://b").unwrap();
        let mut conns = Connections::new();
        let e = conns.select("r1", None).unwrap_err().to_string();
        assert!(
            e.contains("\"r1\"") && e.contains("none is registered"),
            "{e}"
        );
        conns.insert("a", a).unwrap();
        assert_eq!(conns.select("r1", None).unwrap().host(), "a");
        assert_eq!(
            conns.select("r1", None).unwrap().connection_name(),
            Some("a")
        );
        conns.insert("b", b.clone()).unwrap();
        let e = conns.select("r1", None).unwrap_err().to_string();
        assert!(e.contains("\"r1\"") && e.contains("\"a\", \"b\""), "{e}");
        assert_eq!(conns.select("r1", Some("b")).unwrap().host(), "b");
        let e = conns.select("r1", Some("c")).unwrap_err().to_string();
        assert!(e.contains("\"c\"") && e.contains("not registered"), "{e}");
        assert!(conns.insert("a", b).is_err());
    }
}
