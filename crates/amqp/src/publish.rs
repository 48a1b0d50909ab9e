//! Publishing with publisher confirms: a cloneable [`Publisher`] for handlers and setup code.
//!
//! A [`Publisher`] owns a connection (or shares one the caller hands it) and publishes
//! [`OutgoingMessage`]s — JSON through serde (content type `application/json`) or raw bytes —
//! to an exchange with a routing key. Defaults follow what a worker wants from a broker:
//!
//! - **persistent** messages (delivery mode 2), unless a message says otherwise;
//! - **publisher confirms** on, and awaited: [`Publisher::publish`] returns once the broker has
//!   taken responsibility for the message; a nack is [`PublishError::Nacked`];
//! - **mandatory** off, as in AMQP; with it on (per publisher or per message) a message no
//!   queue receives comes back as [`PublishError::Unroutable`] instead of vanishing;
//! - a **timeout** (default [`DEFAULT_PUBLISH_TIMEOUT`]) over the whole publish — reconnecting,
//!   opening a channel, sending, waiting for the confirm — so a broker outage or a connection
//!   the broker blocked (a memory or disk alarm) is [`PublishError::Timeout`], never a hang.
//!
//! # Channels, and why mandatory publishes take turns
//!
//! Non-mandatory publishes share one confirm-mode channel and run concurrently (their confirms
//! are pipelined). Mandatory publishes use a second channel, one at a time: lapin hands a
//! `basic.return` to whichever confirm it resolves next, so with several mandatory messages in
//! flight on one channel — or a mandatory one beside others — an unroutable message could be
//! reported against the wrong publish. One at a time on a channel of their own makes the
//! error belong to the message that caused it. For high-volume unroutable detection, use
//! several publishers.
//!
//! A channel the broker closes (publishing to an exchange that does not exist closes it with
//! 404) is replaced on the next publish; a publisher made with [`PublisherBuilder::connect`]
//! also reconnects when its connection is gone. After a timeout the channel is replaced too
//! (unless the broker has blocked the whole connection, where a new channel would not help),
//! and the timed-out message may still reach the broker later: publishing is at-least-once,
//! so a caller that retries after a timeout may produce a duplicate. A mandatory publish
//! whose future is dropped early retires its channel, so a late `basic.return` cannot be
//! blamed on the next message.
//!
//! [`Publisher::close`] ends it gracefully (in a worker's shutdown hook, say); dropping the
//! last clone closes its connection without waiting.
//!
//! # Metrics
//!
//! `asyncworker_amqp_published_total{outcome}` counts publishes by outcome: `confirmed`,
//! `sent` (confirms off), `unroutable`, `nacked`, `timeout`, `error`.
//!
//! # Example
//!
//! ```no_run
//! use asyncworker_amqp::{AmqpConfig, OutgoingMessage, Publisher};
//! use serde::Serialize;
//!
//! #[derive(Serialize)]
//! struct Count {
//!     name: String,
//!     value: u64,
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let config = AmqpConfig::from_url("amqp://guest:guest@127.0.0.1:5672/%2f")?;
//! let publisher = Publisher::connect(&config).await?;
//!
//! // JSON to a queue through the default exchange, persistent, confirmed.
//! let count = Count { name: "visits".into(), value: 3 };
//! publisher.publish_json("", "asgard/counts", &count).await?;
//!
//! // Properties, headers and an error when no queue is bound.
//! let message = OutgoingMessage::json("events", "counts.created", &count)?
//!     .correlation_id("req-42")
//!     .header("source", "example")
//!     .mandatory(true);
//! publisher.publish(message).await?;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use serde::Serialize;
use tokio::sync::Mutex;

use crate::error::reply_code;
use crate::{AmqpConfig, AmqpError};

/// How long a publish may take, from the call to the broker's confirm, unless
/// [`PublisherBuilder::timeout`] says otherwise.
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// The content type of [`OutgoingMessage::json`] messages.
pub const JSON_CONTENT_TYPE: &str = "application/json";

/// AMQP delivery mode 2: the broker writes the message to disk (in a durable queue).
const PERSISTENT: u8 = 2;
/// AMQP delivery mode 1: the broker may keep the message in memory only.
const TRANSIENT: u8 = 1;
/// The AMQP reply code for "not found".
const NOT_FOUND: u16 = 404;

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

/// Why a message was not published (or not confirmed).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The message body could not be serialized to JSON.
    #[error("cannot serialize the message body to json: {0}")]
    Serialize(#[source] serde_json::Error),
    /// The publisher's options are invalid (found when it is built).
    #[error("invalid publisher options: {0}")]
    InvalidOptions(&'static str),
    /// A field of the message does not fit AMQP: the exchange, the routing key, a header name
    /// or a short-string property (content type, message id, ...) longer than 255 bytes.
    /// Nothing was sent.
    #[error("invalid message: its {field} is longer than AMQP's 255 bytes")]
    InvalidMessage {
        /// The field that does not fit (`exchange`, `routing key`, `message id`, ...).
        field: &'static str,
    },
    /// A mandatory message reached no queue: the broker returned it (`basic.return`).
    #[error(
        "message to exchange {exchange:?} with routing key {routing_key:?} is unroutable: \
         the broker returned it ({reply_code} {reply_text})"
    )]
    Unroutable {
        /// The exchange it was published to (`""`: the default exchange).
        exchange: String,
        /// Its routing key.
        routing_key: String,
        /// The broker's reply code (312, `NO_ROUTE`).
        reply_code: u16,
        /// The broker's reply text.
        reply_text: String,
    },
    /// The broker refused responsibility for the message (`basic.nack`): it was not stored.
    #[error(
        "the broker nacked the message to exchange {exchange:?} with routing key \
         {routing_key:?}: it was not stored"
    )]
    Nacked {
        /// The exchange it was published to.
        exchange: String,
        /// Its routing key.
        routing_key: String,
    },
    /// The exchange does not exist (the broker closed the channel with 404; the publisher
    /// opens another for the next message).
    #[error("exchange {exchange:?} not found: {reason}")]
    ExchangeNotFound {
        /// The missing exchange.
        exchange: String,
        /// The broker's explanation.
        reason: String,
    },
    /// The publish did not complete within the publisher's timeout: the broker is unreachable,
    /// slow, or has blocked the connection (a memory or disk alarm). The message may still
    /// reach the broker.
    #[error(
        "publishing to exchange {exchange:?} with routing key {routing_key:?} timed out after \
         {timeout:?}{}",
        if *blocked { " (the broker has blocked the connection: a resource alarm)" } else { "" }
    )]
    Timeout {
        /// The exchange it was published to.
        exchange: String,
        /// Its routing key.
        routing_key: String,
        /// The timeout that expired.
        timeout: Duration,
        /// Whether the broker had blocked the connection (`connection.blocked`) at that
        /// moment.
        blocked: bool,
    },
    /// The publisher could not (re)connect to the broker.
    #[error("the publisher cannot connect: {0}")]
    Connect(Box<AmqpError>),
    /// The connection handed to [`PublisherBuilder::from_connection`] is closed, so no channel
    /// can be opened on it.
    #[error("the publisher's connection is closed")]
    ConnectionClosed,
    /// [`Publisher::close`] was called: this publisher (and its clones) publish no more.
    #[error("the publisher is closed")]
    Closed,
    /// Any other failure of the connection or channel while publishing.
    #[error(
        "publishing to exchange {exchange:?} with routing key {routing_key:?} failed: {source}"
    )]
    Amqp {
        /// The exchange it was published to.
        exchange: String,
        /// Its routing key.
        routing_key: String,
        /// lapin's error.
        source: Box<lapin::Error>,
    },
}

impl PublishError {
    /// Whether this is a [`PublishError::Timeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, PublishError::Timeout { .. })
    }

    /// Whether this is a [`PublishError::Unroutable`].
    pub fn is_unroutable(&self) -> bool {
        matches!(self, PublishError::Unroutable { .. })
    }
}

// ---------------------------------------------------------------------------------------
// Outgoing messages
// ---------------------------------------------------------------------------------------

/// A message to publish: destination, body, properties and flags.
///
/// Cheap to clone (the body is [`Bytes`]). Built with [`OutgoingMessage::new`] (raw bytes),
/// [`OutgoingMessage::json`] or [`OutgoingMessage::text`], then refined with the property
/// methods, which follow `BasicProperties`' names.
#[derive(Debug, Clone)]
#[must_use = "an OutgoingMessage does nothing until it is published"]
pub struct OutgoingMessage {
    exchange: String,
    routing_key: String,
    body: Bytes,
    properties: BasicProperties,
    headers: FieldTable,
    persistent: Option<bool>,
    mandatory: Option<bool>,
    /// The first property or header that did not fit an AMQP short string: publishing the
    /// message is then [`PublishError::InvalidMessage`] (the setters cannot fail).
    invalid: Option<&'static str>,
}

impl OutgoingMessage {
    /// A message with a raw body, to `exchange` (`""` for the default exchange, which routes
    /// to the queue named by the routing key) with `routing_key`.
    pub fn new(
        exchange: impl Into<String>,
        routing_key: impl Into<String>,
        body: impl Into<Bytes>,
    ) -> OutgoingMessage {
        OutgoingMessage {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            body: body.into(),
            properties: BasicProperties::default(),
            headers: FieldTable::default(),
            persistent: None,
            mandatory: None,
            invalid: None,
        }
    }

    /// A message whose body is `value` serialized to JSON, content type `application/json`.
    /// Every JSON value serializes as itself: `{}`, `[]`, `0`, `""` and `null` included.
    ///
    /// # Errors
    ///
    /// [`PublishError::Serialize`] when serde fails (a map with non-string keys, a failing
    /// `Serialize` impl).
    pub fn json<T: Serialize + ?Sized>(
        exchange: impl Into<String>,
        routing_key: impl Into<String>,
        value: &T,
    ) -> Result<OutgoingMessage, PublishError> {
        let body = serde_json::to_vec(value).map_err(PublishError::Serialize)?;
        Ok(OutgoingMessage::new(exchange, routing_key, body).content_type(JSON_CONTENT_TYPE))
    }

    /// A message with a UTF-8 text body, content type `text/plain; charset=utf-8`.
    pub fn text(
        exchange: impl Into<String>,
        routing_key: impl Into<String>,
        text: impl Into<String>,
    ) -> OutgoingMessage {
        OutgoingMessage::new(exchange, routing_key, text.into())
            .content_type("text/plain; charset=utf-8")
    }

    /// The exchange it goes to.
    pub fn get_exchange(&self) -> &str {
        &self.exchange
    }

    /// Its routing key.
    pub fn get_routing_key(&self) -> &str {
        &self.routing_key
    }

    /// Its body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The properties it will be published with (headers and delivery mode are added at
    /// publish time).
    pub fn properties(&self) -> &BasicProperties {
        &self.properties
    }

    /// Sends it to another exchange.
    pub fn exchange(mut self, exchange: impl Into<String>) -> Self {
        self.exchange = exchange.into();
        self
    }

    /// Gives it another routing key.
    pub fn routing_key(mut self, routing_key: impl Into<String>) -> Self {
        self.routing_key = routing_key.into();
        self
    }

    /// Persistent (delivery mode 2, the default) or transient (delivery mode 1).
    pub fn persistent(mut self, persistent: bool) -> Self {
        self.persistent = Some(persistent);
        self
    }

    /// Whether the broker must return the message when no queue receives it
    /// ([`PublishError::Unroutable`]); the publisher's default otherwise.
    pub fn mandatory(mut self, mandatory: bool) -> Self {
        self.mandatory = Some(mandatory);
        self
    }

    /// Adds (or replaces) a header. Strings, integers, booleans, floats and lapin's
    /// [`AMQPValue`]s are accepted.
    pub fn header(mut self, key: impl Into<String>, value: impl Into<HeaderValue>) -> Self {
        if let Some(key) = self.short("header name", key.into()) {
            self.headers.insert(key, value.into().0);
        }
        self
    }

    /// `value` as an AMQP short string, or `None` (and the message marked invalid) when it is
    /// longer than 255 bytes: lapin's `ShortString::from` would panic on it.
    fn short(&mut self, field: &'static str, value: String) -> Option<ShortString> {
        match ShortString::try_new(value) {
            Ok(value) => Some(value),
            Err(_) => {
                self.invalid.get_or_insert(field);
                None
            }
        }
    }

    /// The exchange and routing key as AMQP short strings.
    ///
    /// # Errors
    ///
    /// [`PublishError::InvalidMessage`] when a field of the message does not fit AMQP.
    fn destination(&self) -> Result<(ShortString, ShortString), PublishError> {
        if let Some(field) = self.invalid {
            return Err(PublishError::InvalidMessage { field });
        }
        let exchange = ShortString::try_new(self.exchange.as_str())
            .map_err(|_| PublishError::InvalidMessage { field: "exchange" })?;
        let routing_key = ShortString::try_new(self.routing_key.as_str()).map_err(|_| {
            PublishError::InvalidMessage {
                field: "routing key",
            }
        })?;
        Ok((exchange, routing_key))
    }

    /// The content type (set by [`OutgoingMessage::json`] and [`OutgoingMessage::text`]).
    pub fn content_type(mut self, content_type: impl Into<String>) -> Self {
        if let Some(value) = self.short("content type", content_type.into()) {
            self.properties = self.properties.with_content_type(value);
        }
        self
    }

    /// The content encoding (`gzip`, …).
    pub fn content_encoding(mut self, encoding: impl Into<String>) -> Self {
        if let Some(value) = self.short("content encoding", encoding.into()) {
            self.properties = self.properties.with_content_encoding(value);
        }
        self
    }

    /// The correlation id.
    pub fn correlation_id(mut self, id: impl Into<String>) -> Self {
        if let Some(value) = self.short("correlation id", id.into()) {
            self.properties = self.properties.with_correlation_id(value);
        }
        self
    }

    /// The message id.
    pub fn message_id(mut self, id: impl Into<String>) -> Self {
        if let Some(value) = self.short("message id", id.into()) {
            self.properties = self.properties.with_message_id(value);
        }
        self
    }

    /// The queue replies should go to.
    pub fn reply_to(mut self, queue: impl Into<String>) -> Self {
        if let Some(value) = self.short("reply-to queue", queue.into()) {
            self.properties = self.properties.with_reply_to(value);
        }
        self
    }

    /// A per-message time to live: the broker drops (or dead-letters) the message when it has
    /// waited this long in a queue. Whole milliseconds.
    pub fn expiration(mut self, ttl: Duration) -> Self {
        self.properties = self
            .properties
            .with_expiration(ttl.as_millis().to_string().into()); // at most 39 digits
        self
    }

    /// The priority (0–9 on RabbitMQ priority queues).
    pub fn priority(mut self, priority: u8) -> Self {
        self.properties = self.properties.with_priority(priority);
        self
    }

    /// The timestamp, in whole seconds since the Unix epoch (times before it become 0).
    pub fn timestamp(mut self, at: SystemTime) -> Self {
        let seconds = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.properties = self.properties.with_timestamp(seconds);
        self
    }

    /// The message type (AMQP's `type` property).
    pub fn kind(mut self, kind: impl Into<String>) -> Self {
        if let Some(value) = self.short("type", kind.into()) {
            self.properties = self.properties.with_type(value);
        }
        self
    }

    /// The application id.
    pub fn app_id(mut self, app_id: impl Into<String>) -> Self {
        if let Some(value) = self.short("app id", app_id.into()) {
            self.properties = self.properties.with_app_id(value);
        }
        self
    }

    /// The user id; RabbitMQ rejects a message whose user id is not the connection's user.
    pub fn user_id(mut self, user_id: impl Into<String>) -> Self {
        if let Some(value) = self.short("user id", user_id.into()) {
            self.properties = self.properties.with_user_id(value);
        }
        self
    }

    /// Replaces every property with `properties` (an escape hatch to lapin). Headers added with
    /// [`OutgoingMessage::header`] are merged over the headers of `properties`; the delivery
    /// mode of `properties`, if set, wins over the persistent default.
    pub fn with_properties(mut self, properties: BasicProperties) -> Self {
        if self.persistent.is_none()
            && let Some(mode) = properties.delivery_mode()
        {
            self.persistent = Some(*mode == PERSISTENT);
        }
        self.properties = properties;
        self
    }

    /// The exact properties sent: headers merged, delivery mode settled.
    fn wire_properties(&self) -> BasicProperties {
        let mut properties = self.properties.clone();
        if !self.headers.inner().is_empty() {
            let mut headers = properties.headers().clone().unwrap_or_default();
            for (key, value) in self.headers.inner() {
                headers.insert(key.clone(), value.clone());
            }
            properties = properties.with_headers(headers);
        }
        let mode = if self.persistent.unwrap_or(true) {
            PERSISTENT
        } else {
            TRANSIENT
        };
        properties.with_delivery_mode(mode)
    }
}

/// A header value for [`OutgoingMessage::header`]: converts from strings, integers, booleans,
/// floats, byte vectors and lapin's [`AMQPValue`].
#[derive(Debug, Clone, PartialEq)]
pub struct HeaderValue(AMQPValue);

impl HeaderValue {
    /// The AMQP value.
    pub fn into_inner(self) -> AMQPValue {
        self.0
    }
}

impl From<AMQPValue> for HeaderValue {
    fn from(value: AMQPValue) -> Self {
        HeaderValue(value)
    }
}

impl From<&str> for HeaderValue {
    fn from(value: &str) -> Self {
        HeaderValue(AMQPValue::LongString(LongString::from(value)))
    }
}

impl From<String> for HeaderValue {
    fn from(value: String) -> Self {
        HeaderValue(AMQPValue::LongString(LongString::from(value)))
    }
}

impl From<bool> for HeaderValue {
    fn from(value: bool) -> Self {
        HeaderValue(AMQPValue::Boolean(value))
    }
}

impl From<i32> for HeaderValue {
    fn from(value: i32) -> Self {
        HeaderValue(AMQPValue::LongInt(value))
    }
}

impl From<i64> for HeaderValue {
    fn from(value: i64) -> Self {
        HeaderValue(AMQPValue::LongLongInt(value))
    }
}

impl From<u32> for HeaderValue {
    fn from(value: u32) -> Self {
        HeaderValue(AMQPValue::LongLongInt(i64::from(value)))
    }
}

impl From<f64> for HeaderValue {
    fn from(value: f64) -> Self {
        HeaderValue(AMQPValue::Double(value))
    }
}

impl From<Vec<u8>> for HeaderValue {
    fn from(value: Vec<u8>) -> Self {
        HeaderValue(AMQPValue::ByteArray(value.into()))
    }
}

// ---------------------------------------------------------------------------------------
// Publisher
// ---------------------------------------------------------------------------------------

/// Publishes messages with confirms; cheap to clone (clones share the connection and
/// channels), `Send + Sync`, usable from any number of handlers at once.
///
/// See the [module docs](self) for the defaults and the channel strategy.
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

struct Inner {
    origin: Origin,
    confirms: bool,
    mandatory: bool,
    timeout: Duration,
    /// The current connection (for [`Origin::Config`], replaced when it dies).
    connection: Mutex<Arc<Connection>>,
    /// Whether the broker has blocked the current connection; read when a publish times out.
    status: std::sync::Mutex<lapin::ConnectionStatus>,
    /// The channel shared by non-mandatory publishes.
    shared: Mutex<Option<Channel>>,
    /// The channel of mandatory publishes, held for a whole publish (see the module docs).
    mandatory_lane: Mutex<Option<Channel>>,
    /// Set by [`Publisher::close`].
    closed: std::sync::atomic::AtomicBool,
}

enum Origin {
    /// The publisher connects (and reconnects) with this configuration, to this vhost.
    Config(AmqpConfig, String),
    Connection,
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &*self.inner;
        let mut d = f.debug_struct("Publisher");
        match &inner.origin {
            Origin::Config(config, vhost) => d
                .field("broker", &format_args!("{config}"))
                .field("vhost", vhost),
            Origin::Connection => d.field("broker", &"a caller's connection"),
        };
        d.field("confirms", &inner.confirms)
            .field("mandatory", &inner.mandatory)
            .field("timeout", &inner.timeout)
            .finish_non_exhaustive()
    }
}

/// Options for a [`Publisher`]: confirms, the default of `mandatory`, the timeout.
#[derive(Debug, Clone)]
#[must_use = "a PublisherBuilder does nothing until connect or from_connection is called"]
pub struct PublisherBuilder {
    confirms: bool,
    mandatory: bool,
    timeout: Duration,
    vhost: Option<String>,
}

impl Default for PublisherBuilder {
    fn default() -> Self {
        PublisherBuilder {
            confirms: true,
            mandatory: false,
            timeout: DEFAULT_PUBLISH_TIMEOUT,
            vhost: None,
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
    /// [`PublishError::InvalidOptions`] for a zero timeout; [`PublishError::Connect`] when the
    /// broker cannot be reached (no retry here: the next publish tries again);
    /// [`PublishError::Amqp`] when the channel cannot be set up; [`PublishError::Timeout`]
    /// when that takes longer than the publish timeout.
    pub async fn connect(mut self, config: &AmqpConfig) -> Result<Publisher, PublishError> {
        self.validate()?;
        let vhost = self
            .vhost
            .take()
            .unwrap_or_else(|| config.vhost().to_owned());
        let connection = config
            .connect_vhost(&vhost)
            .await
            .map_err(|error| PublishError::Connect(Box::new(error)))?;
        self.build(Origin::Config(config.clone(), vhost), Arc::new(connection))
            .await
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
                connection: Mutex::new(connection),
                status: std::sync::Mutex::new(status),
                shared: Mutex::new(None),
                mandatory_lane: Mutex::new(None),
                closed: std::sync::atomic::AtomicBool::new(false),
            }),
        };
        // Open the shared channel now, so a broken setup shows at build time.
        let open = async {
            let mut shared = publisher.inner.shared.lock().await;
            publisher
                .channel(&mut shared)
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

/// A failure while getting a channel, before the destination is known to the error.
enum ChannelError {
    Connect(AmqpError),
    ConnectionClosed,
    Amqp(lapin::Error),
}

impl ChannelError {
    fn into_publish_error(self, exchange: &str, routing_key: &str) -> PublishError {
        match self {
            ChannelError::Connect(error) => PublishError::Connect(Box::new(error)),
            ChannelError::ConnectionClosed => PublishError::ConnectionClosed,
            ChannelError::Amqp(source) => PublishError::Amqp {
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
                source: Box::new(source),
            },
        }
    }
}

impl Publisher {
    /// A publisher with the default options, connected to the broker `config` names: see
    /// [`PublisherBuilder::connect`].
    ///
    /// # Errors
    ///
    /// As [`PublisherBuilder::connect`].
    pub async fn connect(config: &AmqpConfig) -> Result<Publisher, PublishError> {
        PublisherBuilder::default().connect(config).await
    }

    /// Options for a publisher: confirms, mandatory default, timeout.
    pub fn builder() -> PublisherBuilder {
        PublisherBuilder::default()
    }

    /// The timeout of each publish.
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// Whether publisher confirms are on.
    pub fn confirms(&self) -> bool {
        self.inner.confirms
    }

    /// Whether the broker has blocked the publisher's connection (`connection.blocked`, sent
    /// during a memory or disk alarm): publishes wait, and time out, until it unblocks.
    pub fn is_blocked(&self) -> bool {
        self.inner
            .status
            .lock()
            .map(|status| status.blocked())
            .unwrap_or(false)
    }

    /// Closes the publisher, for a graceful shutdown: later publishes (through any clone) fail
    /// with [`PublishError::Closed`]; a mandatory publish in flight finishes first; the
    /// channels are closed (the broker answers the confirms of everything published before),
    /// then the connection if the publisher opened it ([`PublisherBuilder::connect`]). Within
    /// the publish timeout. Calling it again does nothing.
    ///
    /// Dropping the last clone also closes the connection, without waiting.
    ///
    /// # Errors
    ///
    /// [`PublishError::Timeout`] (with an empty exchange and routing key) when closing takes
    /// longer than the publish timeout; [`PublishError::Amqp`] when closing the connection
    /// fails.
    pub async fn close(&self) -> Result<(), PublishError> {
        let inner = &*self.inner;
        if inner.closed.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return Ok(());
        }
        let close = async {
            let shared = inner.shared.lock().await.take();
            let mandatory = inner.mandatory_lane.lock().await.take();
            for channel in [shared, mandatory].into_iter().flatten() {
                if channel.status().connected() {
                    // A channel the broker already closed is not an error here.
                    let _ = channel.close(200, "publisher closed".into()).await;
                }
            }
            if let Origin::Config(..) = inner.origin {
                let connection = Arc::clone(&*inner.connection.lock().await);
                if connection.status().connected() {
                    connection
                        .close(200, "publisher closed".into())
                        .await
                        .map_err(|source| PublishError::Amqp {
                            exchange: String::new(),
                            routing_key: String::new(),
                            source: Box::new(source),
                        })?;
                }
            }
            Ok(())
        };
        match tokio::time::timeout(inner.timeout, close).await {
            Ok(result) => result,
            Err(_elapsed) => Err(PublishError::Timeout {
                exchange: String::new(),
                routing_key: String::new(),
                timeout: inner.timeout,
                blocked: self.is_blocked(),
            }),
        }
    }

    /// Publishes `value` as JSON (content type `application/json`, persistent) to `exchange`
    /// with `routing_key`; `""` is the default exchange, which routes to the queue named by
    /// the routing key.
    ///
    /// # Errors
    ///
    /// As [`Publisher::publish`], and [`PublishError::Serialize`].
    pub async fn publish_json<T: Serialize + ?Sized>(
        &self,
        exchange: &str,
        routing_key: &str,
        value: &T,
    ) -> Result<(), PublishError> {
        self.publish(OutgoingMessage::json(exchange, routing_key, value)?)
            .await
    }

    /// Publishes a raw body (persistent, no content type) to `exchange` with `routing_key`.
    ///
    /// # Errors
    ///
    /// As [`Publisher::publish`].
    pub async fn publish_bytes(
        &self,
        exchange: &str,
        routing_key: &str,
        body: impl Into<Bytes>,
    ) -> Result<(), PublishError> {
        self.publish(OutgoingMessage::new(exchange, routing_key, body))
            .await
    }

    /// Publishes every message concurrently — their confirms are awaited together, which is
    /// much faster than one publish after another — and returns each one's outcome, in order.
    /// Handy in a bulk handler that forwards its batch. Each message has its own timeout;
    /// mandatory ones still take turns (see the [module docs](self)).
    pub async fn publish_all<I>(&self, messages: I) -> Vec<Result<(), PublishError>>
    where
        I: IntoIterator<Item = OutgoingMessage>,
    {
        futures::future::join_all(messages.into_iter().map(|message| self.publish(message))).await
    }

    /// Publishes `message` and, with confirms on, waits for the broker's confirm.
    ///
    /// Cancel-safe in the sense that dropping the future never corrupts the publisher; the
    /// message may or may not have been sent.
    ///
    /// # Errors
    ///
    /// - [`PublishError::Timeout`] when the whole publish took longer than the timeout;
    /// - [`PublishError::Unroutable`] for a mandatory message no queue received;
    /// - [`PublishError::Nacked`] when the broker nacked it;
    /// - [`PublishError::ExchangeNotFound`] when the exchange does not exist;
    /// - [`PublishError::Connect`] / [`PublishError::ConnectionClosed`] /
    ///   [`PublishError::Amqp`] when the connection or channel fails;
    /// - [`PublishError::InvalidMessage`], before anything is sent, when the exchange, the
    ///   routing key, a header name or a property is longer than AMQP allows.
    pub async fn publish(&self, message: OutgoingMessage) -> Result<(), PublishError> {
        let inner = &*self.inner;
        if inner.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(PublishError::Closed);
        }
        let destination = message.destination()?;
        let mandatory = message.mandatory.unwrap_or(inner.mandatory);
        let lane = if mandatory {
            &inner.mandatory_lane
        } else {
            &inner.shared
        };
        let attempt = self.publish_on(lane, &message, destination, mandatory);
        match tokio::time::timeout(inner.timeout, attempt).await {
            Ok(result) => result,
            Err(_elapsed) => {
                let blocked = self.is_blocked();
                // A mandatory lane's channel has already been retired (`RetireOnDrop`). The
                // shared channel is replaced unless the whole connection is blocked, where a
                // new channel would not help and each timeout would leave one more behind.
                // Dropping our handle lets lapin close it once nothing uses it.
                if !mandatory
                    && !blocked
                    && let Ok(mut channel) = lane.try_lock()
                {
                    *channel = None;
                }
                tracing::warn!(
                    exchange = %message.exchange,
                    routing_key = %message.routing_key,
                    timeout = ?inner.timeout,
                    blocked,
                    "publish timed out"
                );
                metrics::counter!("asyncworker_amqp_published_total", "outcome" => "timeout")
                    .increment(1);
                Err(PublishError::Timeout {
                    exchange: message.exchange,
                    routing_key: message.routing_key,
                    timeout: inner.timeout,
                    blocked,
                })
            }
        }
    }

    async fn publish_on(
        &self,
        lane: &Mutex<Option<Channel>>,
        message: &OutgoingMessage,
        destination: (ShortString, ShortString),
        mandatory: bool,
    ) -> Result<(), PublishError> {
        let exchange = message.exchange.as_str();
        let routing_key = message.routing_key.as_str();
        // A mandatory publish keeps its lane locked until its confirm (see the module docs);
        // the shared lane is only locked while a channel is looked up.
        let mut guard = lane.lock().await;
        let channel = self
            .channel(&mut guard)
            .await
            .map_err(|error| error.into_publish_error(exchange, routing_key))?;
        let result = if mandatory {
            // If this future is dropped before the confirm (a timeout, a cancelled caller),
            // the broker's `basic.return` for this message may still arrive on the channel,
            // and lapin would hand it to the next mandatory publish's confirm: retire the
            // channel instead.
            let mut retire = RetireOnDrop(Some(guard));
            let result = self.send(&channel, message, destination, true).await;
            retire.0 = None;
            result
        } else {
            drop(guard);
            self.send(&channel, message, destination, false).await
        };
        self.record(&result);
        result
    }

    fn record(&self, result: &Result<(), PublishError>) {
        let outcome = match result {
            Ok(()) if self.inner.confirms => "confirmed",
            Ok(()) => "sent",
            Err(PublishError::Unroutable { .. }) => "unroutable",
            Err(PublishError::Nacked { .. }) => "nacked",
            Err(_) => "error",
        };
        metrics::counter!("asyncworker_amqp_published_total", "outcome" => outcome).increment(1);
    }

    /// Publish `message` to `destination` (its exchange and routing key, checked by
    /// [`OutgoingMessage::destination`]).
    async fn send(
        &self,
        channel: &Channel,
        message: &OutgoingMessage,
        (exchange_name, routing_key_name): (ShortString, ShortString),
        mandatory: bool,
    ) -> Result<(), PublishError> {
        let exchange = message.exchange.as_str();
        let routing_key = message.routing_key.as_str();
        let amqp = |source: lapin::Error| classify(exchange, routing_key, source);
        let confirm = channel
            .basic_publish(
                exchange_name,
                routing_key_name,
                BasicPublishOptions {
                    mandatory,
                    immediate: false,
                },
                &message.body,
                message.wire_properties(),
            )
            .await
            .map_err(amqp)?;
        // Awaited even with confirms off (it resolves at once): a dropped, unresolved confirm
        // would be kept by lapin until `wait_for_confirms`, which nothing here calls.
        match confirm.await.map_err(amqp)? {
            Confirmation::NotRequested | Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(returned)) => Err(PublishError::Unroutable {
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
                reply_code: returned.reply_code,
                reply_text: returned.reply_text.to_string(),
            }),
            Confirmation::Nack(_) => Err(PublishError::Nacked {
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
            }),
        }
    }

    /// The lane's channel, opened (and the connection re-established) when needed.
    async fn channel(&self, slot: &mut Option<Channel>) -> Result<Channel, ChannelError> {
        if let Some(channel) = slot.as_ref()
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        *slot = None;
        let connection = self.connection().await?;
        let channel = connection
            .create_channel()
            .await
            .map_err(ChannelError::Amqp)?;
        if self.inner.confirms {
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(ChannelError::Amqp)?;
        }
        *slot = Some(channel.clone());
        Ok(channel)
    }

    /// The current connection, reconnected first when it is gone and the publisher owns it.
    async fn connection(&self) -> Result<Arc<Connection>, ChannelError> {
        let inner = &*self.inner;
        let mut connection = inner.connection.lock().await;
        if connection.status().connected() {
            return Ok(Arc::clone(&connection));
        }
        let Origin::Config(config, vhost) = &inner.origin else {
            return Err(ChannelError::ConnectionClosed);
        };
        tracing::info!(broker = %config, %vhost, "publisher reconnecting");
        let fresh = Arc::new(
            config
                .connect_vhost(vhost)
                .await
                .map_err(ChannelError::Connect)?,
        );
        if let Ok(mut status) = inner.status.lock() {
            *status = fresh.status().clone();
        }
        *connection = Arc::clone(&fresh);
        Ok(fresh)
    }
}

/// Holds a mandatory lane while its publish is in flight; dropped before being disarmed (the
/// publish future was dropped), it retires the lane's channel.
struct RetireOnDrop<'a>(Option<tokio::sync::MutexGuard<'a, Option<Channel>>>);

impl Drop for RetireOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(guard) = self.0.as_mut() {
            **guard = None;
        }
    }
}

/// Turns lapin's error into the most specific [`PublishError`].
fn classify(exchange: &str, routing_key: &str, source: lapin::Error) -> PublishError {
    if reply_code(&source) == Some(NOT_FOUND) {
        return PublishError::ExchangeNotFound {
            exchange: exchange.to_owned(),
            reason: source.to_string(),
        };
    }
    PublishError::Amqp {
        exchange: exchange.to_owned(),
        routing_key: routing_key.to_owned(),
        source: Box::new(source),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn publisher_and_its_futures_are_send_and_sync() {
        assert_send_sync::<Publisher>();
        assert_send_sync::<OutgoingMessage>();
        assert_send_sync::<PublishError>();
        fn assert_send<T: Send>(_: &T) {}
        fn check(p: &Publisher) {
            assert_send(&p.publish(OutgoingMessage::new("", "q", "x")));
            assert_send(&p.publish_json("", "q", &1));
        }
        let _ = check;
    }

    #[test]
    fn json_values_serialize_as_themselves() {
        for (value, expected) in [
            (serde_json::json!({}), "{}"),
            (serde_json::json!([]), "[]"),
            (serde_json::json!(0), "0"),
            (serde_json::json!(null), "null"),
            (serde_json::json!(""), "\"\""),
        ] {
            let message = OutgoingMessage::json("", "q", &value).unwrap();
            assert_eq!(message.body(), expected.as_bytes());
            assert_eq!(
                message
                    .properties()
                    .content_type()
                    .as_ref()
                    .map(|c| c.as_str()),
                Some(JSON_CONTENT_TYPE)
            );
        }
    }

    #[test]
    fn messages_are_persistent_unless_told_otherwise() {
        let persistent = OutgoingMessage::new("", "q", "x").wire_properties();
        assert_eq!(*persistent.delivery_mode(), Some(PERSISTENT));
        let transient = OutgoingMessage::new("", "q", "x")
            .persistent(false)
            .wire_properties();
        assert_eq!(*transient.delivery_mode(), Some(TRANSIENT));
        let explicit = OutgoingMessage::new("", "q", "x")
            .with_properties(BasicProperties::default().with_delivery_mode(TRANSIENT))
            .wire_properties();
        assert_eq!(*explicit.delivery_mode(), Some(TRANSIENT));
    }

    #[test]
    fn headers_merge_over_the_properties_headers() {
        let mut base = FieldTable::default();
        base.insert("a".into(), AMQPValue::LongInt(1));
        base.insert("b".into(), AMQPValue::LongInt(2));
        let properties = OutgoingMessage::new("", "q", "x")
            .with_properties(BasicProperties::default().with_headers(base))
            .header("b", "two")
            .header("c", true)
            .wire_properties();
        let headers = properties.headers().clone().unwrap();
        let headers = headers.inner();
        assert_eq!(headers.get("a"), Some(&AMQPValue::LongInt(1)));
        assert_eq!(
            headers.get("b"),
            Some(&AMQPValue::LongString(LongString::from("two")))
        );
        assert_eq!(headers.get("c"), Some(&AMQPValue::Boolean(true)));
    }

    #[test]
    fn unserializable_json_is_a_serialize_error() {
        let mut map = std::collections::BTreeMap::new();
        map.insert(vec![1u8], 1);
        let error = OutgoingMessage::json("", "q", &map).unwrap_err();
        assert!(matches!(error, PublishError::Serialize(_)), "{error}");
    }

    #[test]
    fn fields_too_long_for_amqp_are_an_error_not_a_panic() {
        let long = "x".repeat(256);
        // Each setter used to panic inside lapin's `ShortString::from`.
        for (field, message) in [
            (
                "content type",
                OutgoingMessage::new("", "q", "x").content_type(long.clone()),
            ),
            (
                "content encoding",
                OutgoingMessage::new("", "q", "x").content_encoding(long.clone()),
            ),
            (
                "correlation id",
                OutgoingMessage::new("", "q", "x").correlation_id(long.clone()),
            ),
            (
                "message id",
                OutgoingMessage::new("", "q", "x").message_id(long.clone()),
            ),
            (
                "reply-to queue",
                OutgoingMessage::new("", "q", "x").reply_to(long.clone()),
            ),
            (
                "type",
                OutgoingMessage::new("", "q", "x").kind(long.clone()),
            ),
            (
                "app id",
                OutgoingMessage::new("", "q", "x").app_id(long.clone()),
            ),
            (
                "user id",
                OutgoingMessage::new("", "q", "x").user_id(long.clone()),
            ),
            (
                "header name",
                OutgoingMessage::new("", "q", "x").header(long.clone(), 1),
            ),
            ("exchange", OutgoingMessage::new(long.clone(), "q", "x")),
            ("routing key", OutgoingMessage::new("", long.clone(), "x")),
        ] {
            match message.destination() {
                Err(PublishError::InvalidMessage { field: f }) => assert_eq!(f, field),
                other => panic!("{field}: expected InvalidMessage, got {other:?}"),
            }
        }
        // The first field that does not fit is the one named; 255 bytes fit.
        let ok = "y".repeat(255);
        let message = OutgoingMessage::new(ok.clone(), ok.clone(), "x").message_id(ok);
        assert!(message.destination().is_ok());
        let text = OutgoingMessage::new("", "q", "x")
            .message_id(long.clone())
            .app_id(long)
            .destination()
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("message id") && text.contains("255"),
            "{text}"
        );
    }

    #[test]
    fn timeout_error_names_the_destination_and_the_block() {
        let error = PublishError::Timeout {
            exchange: "".into(),
            routing_key: "jobs".into(),
            timeout: Duration::from_secs(2),
            blocked: true,
        };
        let text = error.to_string();
        assert!(text.contains("\"jobs\"") && text.contains("2s"), "{text}");
        assert!(text.contains("blocked"), "{text}");
        assert!(error.is_timeout());
    }
}
