//! [`PublisherBuilder`]: a publisher's options, and connecting it.

use std::sync::Arc;
use std::time::Duration;

use lapin::Connection;
use tokio::sync::Mutex;

use super::lane::SharedLane;
use super::publisher::{Inner, Origin, Published};
use super::{DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_PUBLISH_TIMEOUT, PublishError, Publisher};
use crate::AmqpConfig;
use crate::config::{Failover, check_short_string};

/// Options for a [`Publisher`]: confirms, the default of `mandatory`, the timeout.
#[derive(Debug, Clone)]
#[must_use = "a PublisherBuilder does nothing until connect or from_connection is called"]
pub struct PublisherBuilder {
    confirms: bool,
    mandatory: bool,
    timeout: Duration,
    vhost: Option<String>,
    max_message_size: usize,
    impersonator: bool,
}

impl Default for PublisherBuilder {
    fn default() -> Self {
        PublisherBuilder {
            confirms: true,
            mandatory: false,
            timeout: DEFAULT_PUBLISH_TIMEOUT,
            vhost: None,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            impersonator: false,
        }
    }
}

impl PublisherBuilder {
    /// Publisher confirms (default on). Off, a publish returns once the message is handed to
    /// the connection: faster, but a nack, a lost connection or an unroutable mandatory
    /// message goes unnoticed.
    pub fn confirms(mut self, confirms: bool) -> Self {
        self.confirms = confirms;
        self
    }

    /// The `mandatory` flag of messages that do not set it themselves (default off).
    pub fn mandatory(mut self, mandatory: bool) -> Self {
        self.mandatory = mandatory;
        self
    }

    /// How long one publish may take, from the call to the confirm (default
    /// [`DEFAULT_PUBLISH_TIMEOUT`]); must be greater than zero.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The largest body the broker accepts, in bytes: its `max_message_size` (AMQP does not
    /// announce it), default [`DEFAULT_MAX_MESSAGE_SIZE`], RabbitMQ's own default. A larger
    /// body is [`PublishError::InvalidMessage`] before anything is sent: the broker would
    /// close the channel, failing every publish in flight on it.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Whether the connection's user has RabbitMQ's `impersonator` tag, which lets it publish
    /// messages with any user id (default off: a user id that is not the connection's user is
    /// [`PublishError::InvalidMessage`] before anything is sent, as the broker would close the
    /// channel over it).
    pub fn impersonator(mut self, impersonator: bool) -> Self {
        self.impersonator = impersonator;
        self
    }

    /// The virtual host [`PublisherBuilder::connect`] connects to, instead of the
    /// configuration's.
    pub fn vhost(mut self, vhost: impl Into<String>) -> Self {
        self.vhost = Some(vhost.into());
        self
    }

    /// Connects to the broker `config` names (its vhost, or [`PublisherBuilder::vhost`]) and
    /// opens the publishing channel. The publisher reconnects by itself when that connection
    /// is lost.
    ///
    /// # Errors
    ///
    /// [`PublishError::InvalidOptions`] for a zero timeout or a [`PublisherBuilder::vhost`]
    /// longer than AMQP's 255 bytes; [`PublishError::Connect`] when the
    /// broker cannot be reached (no retry here: the next publish tries again);
    /// [`PublishError::Amqp`] when the channel cannot be set up; [`PublishError::Timeout`]
    /// when that takes longer than the publish timeout.
    pub async fn connect(mut self, config: &AmqpConfig) -> Result<Publisher, PublishError> {
        self.validate()?;
        let vhost = self
            .vhost
            .take()
            .unwrap_or_else(|| config.vhost().to_owned());
        check_short_string("vhost", &vhost).map_err(|_| {
            PublishError::InvalidOptions("the vhost is longer than AMQP's 255 bytes")
        })?;
        let failover = Failover::new();
        let (connection, _) = failover
            .sweep(config, &vhost)
            .await
            .map_err(|error| PublishError::Connect(Box::new(error)))?;
        let origin = Origin::Config(config.clone(), vhost, failover);
        self.build(origin, Arc::new(connection)).await
    }

    /// Publishes on `connection`, a connection of the caller's (shared: the caller may keep
    /// using it). Channels the broker closes are replaced; a closed connection is not.
    ///
    /// # Errors
    ///
    /// As [`PublisherBuilder::connect`], and [`PublishError::ConnectionClosed`] when
    /// `connection` is not open.
    pub async fn from_connection(
        self,
        connection: Arc<Connection>,
    ) -> Result<Publisher, PublishError> {
        self.validate()?;
        self.build(Origin::Connection, connection).await
    }

    fn validate(&self) -> Result<(), PublishError> {
        if self.timeout.is_zero() {
            return Err(PublishError::InvalidOptions(
                "the publish timeout must be greater than zero",
            ));
        }
        Ok(())
    }

    async fn build(
        self,
        origin: Origin,
        connection: Arc<Connection>,
    ) -> Result<Publisher, PublishError> {
        let status = connection.status().clone();
        let publisher = Publisher {
            inner: Arc::new(Inner {
                origin,
                confirms: self.confirms,
                mandatory: self.mandatory,
                timeout: self.timeout,
                max_message_size: self.max_message_size,
                impersonator: self.impersonator,
                send_turn: std::sync::Mutex::new(()),
                connection: Mutex::new(connection),
                status: std::sync::Mutex::new(status),
                shared: SharedLane::new(),
                mandatory_lane: Mutex::new(None),
                published: Published::register(),
                closed: std::sync::atomic::AtomicBool::new(false),
            }),
        };
        // Open the shared channel now, so a broken setup shows at build time.
        let open = async {
            publisher
                .shared_channel()
                .await
                .map_err(|error| error.into_publish_error("", ""))
        };
        match tokio::time::timeout(self.timeout, open).await {
            Ok(result) => result.map(|_channel| ())?,
            Err(_elapsed) => {
                return Err(PublishError::Timeout {
                    exchange: String::new(),
                    routing_key: String::new(),
                    timeout: self.timeout,
                    blocked: publisher.is_blocked(),
                });
            }
        }
        Ok(publisher)
    }
}
