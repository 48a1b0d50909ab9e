//! Opening a connection from an [`AmqpConfig`], and [`Failover`]: which of its endpoints a
//! connection goes to.

use std::sync::atomic::{AtomicUsize, Ordering};

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::LongString;
use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};
use lapin::{Connection, ConnectionProperties};

use super::{AmqpConfig, check_short_string};
use crate::error::AmqpError;

impl AmqpConfig {
    /// Open a connection to the configuration's default virtual host, at the first of its
    /// endpoints that answers (tried in order, once each).
    ///
    /// Used by the sources of this crate, and handy for setup code (declaring queues) and for
    /// publishers. No retry here: the sources retry with the reconnect policy.
    ///
    /// # Errors
    ///
    /// An [`AmqpError`] classifying the failure (authentication, vhost access, network); with
    /// several endpoints, the failure of the last one tried (each failure is logged).
    pub async fn connect(&self) -> Result<Connection, AmqpError> {
        self.connect_vhost(self.vhost()).await
    }

    /// Open a connection to `vhost`.
    ///
    /// # Errors
    ///
    /// As [`AmqpConfig::connect`]; [`AmqpError::Connect`] without any I/O when `vhost` is
    /// longer than AMQP's 255 bytes.
    pub async fn connect_vhost(&self, vhost: &str) -> Result<Connection, AmqpError> {
        Failover::new()
            .sweep(self, vhost)
            .await
            .map(|(connection, _)| connection)
    }

    /// One connection attempt, to endpoint `index`.
    async fn connect_to(
        &self,
        index: usize,
        vhost: &str,
        attempt: u32,
    ) -> Result<Connection, AmqpError> {
        let endpoint = self.endpoint_at(index, vhost);
        let fail = |e: lapin::Error| AmqpError::connect(endpoint.clone(), attempt, e);
        // lapin panics on a vhost that does not fit a short string.
        check_short_string("vhost", vhost).map_err(|error| {
            fail(lapin::Error::from(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                error.to_string(),
            )))
        })?;
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
                    username: inner.common.user.clone(),
                    password: inner.common.password.0.clone(),
                },
                host: endpoint.host().to_owned(),
                port: endpoint.port(),
            },
            vhost: vhost.to_owned(),
            query: AMQPQueryString {
                frame_max: inner.common.frame_max,
                channel_max: inner.common.channel_max,
                heartbeat: Some(inner.heartbeat),
                connection_timeout: Some(
                    u64::try_from(inner.common.connection_timeout.as_millis()).unwrap_or(u64::MAX),
                ),
                auth_mechanism: None,
            },
        };
        let mut props = ConnectionProperties::default().with_client_property(
            "product".into(),
            LongString::from(concat!("asyncworker-amqp ", env!("CARGO_PKG_VERSION"))),
        );
        if let Some(name) = &inner.common.connection_name {
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
        match tokio::time::timeout(inner.common.connection_timeout, connect).await {
            Ok(result) => result.map_err(fail),
            Err(_) => Err(fail(lapin::Error::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "the connection was not established within {:?}",
                    inner.common.connection_timeout
                ),
            )))),
        }
    }
}

/// Which endpoint of a configuration the next connection attempt goes to: the one after the
/// endpoint of the previous attempt, whatever its outcome, so attempts go round the endpoints
/// in order from the first, and the reconnect after a lost connection goes to the endpoint
/// after the one that was lost. One per connection owner (a source, a publisher, a
/// requeue-tail connection); a configuration with one endpoint always gets that one.
#[derive(Debug, Default)]
pub(crate) struct Failover {
    next: AtomicUsize,
}

impl Failover {
    /// A cursor at the first endpoint.
    pub(crate) fn new() -> Self {
        Failover::default()
    }

    /// The index of the endpoint the next attempt goes to.
    pub(crate) fn next(&self, config: &AmqpConfig) -> usize {
        self.next.load(Ordering::Relaxed) % config.endpoint_count()
    }

    /// One attempt (number `attempt`, for errors) at the next endpoint; the cursor moves to
    /// the one after it. On success, the connection and the endpoint's index.
    pub(crate) async fn attempt(
        &self,
        config: &AmqpConfig,
        vhost: &str,
        attempt: u32,
    ) -> Result<(Connection, usize), AmqpError> {
        let index = self.next(config);
        self.next
            .store((index + 1) % config.endpoint_count(), Ordering::Relaxed);
        config
            .connect_to(index, vhost, attempt)
            .await
            .map(|connection| (connection, index))
    }

    /// One attempt at each endpoint in turn, from the next one, until one connects; the
    /// error of the last one when none does (the others are logged).
    pub(crate) async fn sweep(
        &self,
        config: &AmqpConfig,
        vhost: &str,
    ) -> Result<(Connection, usize), AmqpError> {
        let count = config.endpoint_count();
        let mut attempt = 1u32;
        loop {
            match self.attempt(config, vhost, attempt).await {
                Ok(connected) => return Ok(connected),
                Err(error) if (attempt as usize) < count => {
                    tracing::warn!(
                        endpoint = %error.endpoint(),
                        error = &error as &dyn std::error::Error,
                        "cannot connect; trying the next endpoint",
                    );
                }
                Err(error) => return Err(error),
            }
            attempt += 1;
        }
    }
}
