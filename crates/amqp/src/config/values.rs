//! [`AmqpConfig`]: a validated connection configuration, and its accessors.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use asyncworker_core::{Backoff, Error};

use super::AmqpConfigBuilder;
use crate::error::Endpoint;

/// A string that never shows itself in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct Secret(pub(super) String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// TLS settings of a connection.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct Tls {
    /// Extra trusted CA certificates, PEM.
    pub(super) ca_pem: Option<String>,
    /// A client certificate chain (PEM) and its private key (PEM).
    pub(super) client: Option<(Vec<u8>, Secret)>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("custom_ca", &self.ca_pem.is_some())
            .field("client_certificate", &self.client.is_some())
            .finish()
    }
}

/// The values the builder passes through to the configuration as they are.
#[derive(Clone, PartialEq)]
pub(super) struct Common {
    pub(super) host: String,
    pub(super) user: String,
    pub(super) password: Secret,
    pub(super) vhost: String,
    pub(super) prefetch: u16,
    pub(super) connection_timeout: Duration,
    pub(super) connection_name: Option<String>,
    pub(super) frame_max: Option<u32>,
    pub(super) channel_max: Option<u16>,
    pub(super) reconnect: Backoff,
    pub(super) reconnect_attempts: Option<u32>,
}

impl Common {
    /// Adds the fields worth showing (the password redacted) to a `Debug` rendering.
    pub(super) fn debug_fields<'d, 'a, 'b>(
        &self,
        d: &'d mut fmt::DebugStruct<'a, 'b>,
    ) -> &'d mut fmt::DebugStruct<'a, 'b> {
        d.field("host", &self.host)
            .field("user", &self.user)
            .field("password", &self.password)
            .field("vhost", &self.vhost)
            .field("prefetch", &self.prefetch)
            .field("connection_timeout", &self.connection_timeout)
            .field("connection_name", &self.connection_name)
            .field("reconnect", &self.reconnect)
    }
}

/// A checked configuration: the builder's values, TLS settled, the port and heartbeat chosen.
#[derive(Clone, PartialEq)]
pub(super) struct Inner {
    pub(super) tls: Option<Tls>,
    pub(super) port: u16,
    /// The endpoints after the first (`common.host`, `port`), in order, sharing everything
    /// else.
    pub(super) more: Vec<(String, u16)>,
    pub(super) heartbeat: u16,
    pub(super) common: Common,
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
    pub(super) inner: Arc<Inner>,
}

impl AmqpConfig {
    /// A builder with the defaults: `amqp://guest:guest@localhost:5672`, vhost `/`, prefetch
    /// 128, heartbeat 60 s — the vhost, port, prefetch and heartbeat unless the
    /// `ASYNCWORKER_AMQP_DEFAULT_*` variables say otherwise ([`AmqpSettings`](crate::AmqpSettings),
    /// read once per process).
    pub fn builder() -> AmqpConfigBuilder {
        AmqpConfigBuilder::default()
    }

    /// A configuration from an `amqp://` or `amqps://` URL.
    ///
    /// The URL follows RabbitMQ's URI spec: `amqp://user:password@host:port/vhost`, with the
    /// user, password and vhost percent-encoded (`%2f` is the vhost `/`; no path means `/` as
    /// well). A password holding `?`, `/`, `#`, `@` or `%` must have them encoded (`%3F`,
    /// `%2F`, `%23`, `%40`, `%25`): written as they are they end the user info early, so an
    /// `@` after the host part or any `#` is an error, not a vhost or a query to guess at.
    ///
    /// Query parameters: `heartbeat` (seconds), `connection_timeout` (milliseconds),
    /// `prefetch`, `connection_name`, `frame_max` (bytes, at least 4096, AMQP's minimum; 0 or
    /// unset: the broker's limit), `channel_max` (0 or unset: the broker's limit; a larger
    /// value is lowered to it; each queue of a source takes a channel, a publisher up to
    /// two); any other is an error.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when the URL is malformed or a value is invalid. The message never
    /// repeats the URL's password.
    pub fn from_url(url: &str) -> Result<AmqpConfig, Error> {
        AmqpConfig::builder().url(url).build()
    }

    /// A configuration from several `amqp://` or `amqps://` URLs, one per node of a cluster,
    /// tried in order (see [`AmqpConfigBuilder::urls`]).
    ///
    /// ```
    /// use asyncworker_amqp::AmqpConfig;
    ///
    /// # fn main() -> Result<(), asyncworker_core::Error> {
    /// let c = AmqpConfig::from_urls(["amqp://u:p@h1:5701/v", "amqp://u:p@h2:5702/v"])?;
    /// assert_eq!(c.endpoints(), [("h1", 5701), ("h2", 5702)]);
    /// assert_eq!((c.host(), c.port()), ("h1", 5701));
    /// // Every URL must agree on all but the host and port.
    /// assert!(AmqpConfig::from_urls(["amqp://u:p@h1/v", "amqp://u:p@h2/w"]).is_err());
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`AmqpConfig::from_url`], and [`Error::Config`] when the list is empty, or when the
    /// URLs differ in anything but their host and port (the error names what differs).
    pub fn from_urls<I>(urls: I) -> Result<AmqpConfig, Error>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        AmqpConfig::builder().urls(urls).build()
    }

    /// The first endpoint's host name or address.
    pub fn host(&self) -> &str {
        &self.inner.common.host
    }

    /// The first endpoint's port.
    pub fn port(&self) -> u16 {
        self.inner.port
    }

    /// Every endpoint (host, port), in the order connections try them; the first is
    /// [`AmqpConfig::host`] and [`AmqpConfig::port`]. Never empty.
    pub fn endpoints(&self) -> Vec<(&str, u16)> {
        std::iter::once((self.host(), self.port()))
            .chain(self.inner.more.iter().map(|(h, p)| (h.as_str(), *p)))
            .collect()
    }

    /// How many endpoints there are (at least 1).
    pub(crate) fn endpoint_count(&self) -> usize {
        1 + self.inner.more.len()
    }

    /// The user name.
    pub fn user(&self) -> &str {
        &self.inner.common.user
    }

    /// The default virtual host (a route may consume from another).
    pub fn vhost(&self) -> &str {
        &self.inner.common.vhost
    }

    /// The prefetch count applied with `basic.qos` to each consumer.
    pub fn prefetch(&self) -> u16 {
        self.inner.common.prefetch
    }

    /// The heartbeat interval proposed to the broker (the broker may lower it).
    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(u64::from(self.inner.heartbeat))
    }

    /// The timeout of one connection attempt.
    pub fn connection_timeout(&self) -> Duration {
        self.inner.common.connection_timeout
    }

    /// The connection name sent to the broker as a client property (shown by
    /// `rabbitmqctl list_connections client_properties` and the management UI).
    pub fn connection_name(&self) -> Option<&str> {
        self.inner.common.connection_name.as_deref()
    }

    /// Whether the connection uses TLS.
    pub fn tls(&self) -> bool {
        self.inner.tls.is_some()
    }

    /// The reconnect policy.
    pub fn reconnect(&self) -> &Backoff {
        &self.inner.common.reconnect
    }

    /// How many failed connection attempts in a row a source makes before it gives up
    /// ([`AmqpError::GaveUp`](crate::AmqpError::GaveUp)); `None`: it never gives up.
    pub fn max_reconnect_attempts(&self) -> Option<u32> {
        self.inner.common.reconnect_attempts
    }

    /// The first endpoint with `vhost`, as errors and logs name it.
    pub fn endpoint(&self, vhost: &str) -> Endpoint {
        self.endpoint_at(0, vhost)
    }

    /// Endpoint `index` (modulo the number of endpoints) with `vhost`.
    pub(crate) fn endpoint_at(&self, index: usize, vhost: &str) -> Endpoint {
        let index = index % self.endpoint_count();
        let (host, port) = match index.checked_sub(1) {
            None => (self.inner.common.host.as_str(), self.inner.port),
            Some(i) => (self.inner.more[i].0.as_str(), self.inner.more[i].1),
        };
        Endpoint {
            tls: self.tls(),
            user: self.inner.common.user.as_str().into(),
            host: host.into(),
            port,
            vhost: vhost.into(),
        }
    }

    /// A copy with `name` as the connection name.
    pub(crate) fn renamed(&self, name: &str) -> AmqpConfig {
        let mut inner = (*self.inner).clone();
        inner.common.connection_name = Some(name.to_owned());
        AmqpConfig {
            inner: Arc::new(inner),
        }
    }

    /// A copy with `name` as the connection name when none is set.
    pub(crate) fn named_if_unnamed(&self, name: &str) -> AmqpConfig {
        if self.inner.common.connection_name.is_some() {
            return self.clone();
        }
        self.renamed(name)
    }
}

impl fmt::Debug for AmqpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("AmqpConfig");
        d.field("tls", &self.inner.tls)
            .field("port", &self.inner.port)
            .field("more_endpoints", &self.inner.more)
            .field("heartbeat", &self.heartbeat());
        self.inner
            .common
            .debug_fields(&mut d)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for AmqpConfig {
    /// `amqp://user@host:port vhost "/"` — never the password; with several endpoints
    /// `amqp://user@host1:port1,host2:port2 vhost "/"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.inner.more.is_empty() {
            return fmt::Display::fmt(&self.endpoint(self.vhost()), f);
        }
        let scheme = if self.tls() { "amqps" } else { "amqp" };
        write!(f, "{scheme}://{}@", self.user())?;
        for (i, (host, port)) in self.endpoints().into_iter().enumerate() {
            let comma = if i == 0 { "" } else { "," };
            write!(f, "{comma}{host}:{port}")?;
        }
        write!(f, " vhost {:?}", self.vhost())
    }
}
