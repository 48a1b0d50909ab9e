//! [`OutgoingMessage`]: a message to publish, and [`HeaderValue`], what its headers take.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use serde::Serialize;

use super::{JSON_CONTENT_TYPE, PublishError};

/// AMQP delivery mode 2: the broker writes the message to disk (in a durable queue).
const PERSISTENT: u8 = 2;
/// AMQP delivery mode 1: the broker may keep the message in memory only.
const TRANSIENT: u8 = 1;
/// RabbitMQ's cap on a per-message TTL, in milliseconds: ten 365-day years
/// (`rabbit_misc:check_expiry`). A larger expiration makes the broker close the channel.
pub const MAX_EXPIRATION_MS: u64 = 315_360_000_000;

/// A message to publish: destination, body, properties and flags.
///
/// Cheap to clone (the body is [`Bytes`]). Built with [`OutgoingMessage::new`] (raw bytes),
/// [`OutgoingMessage::json`] or [`OutgoingMessage::text`], then refined with the property
/// methods, which follow `BasicProperties`' names.
#[derive(Debug, Clone)]
#[must_use = "an OutgoingMessage does nothing until it is published"]
pub struct OutgoingMessage {
    pub(super) exchange: String,
    pub(super) routing_key: String,
    pub(super) body: Bytes,
    properties: BasicProperties,
    headers: FieldTable,
    persistent: Option<bool>,
    pub(super) mandatory: Option<bool>,
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
    pub fn exchange(&self) -> &str {
        &self.exchange
    }

    /// Its routing key.
    pub fn routing_key(&self) -> &str {
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
    pub fn with_exchange(mut self, exchange: impl Into<String>) -> Self {
        self.exchange = exchange.into();
        self
    }

    /// Gives it another routing key.
    pub fn with_routing_key(mut self, routing_key: impl Into<String>) -> Self {
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

    /// Sets a short-string property with `set`, or marks the message invalid when `value`
    /// does not fit (see [`OutgoingMessage::short`]).
    fn short_property(
        mut self,
        field: &'static str,
        value: String,
        set: fn(BasicProperties, ShortString) -> BasicProperties,
    ) -> Self {
        if let Some(value) = self.short(field, value) {
            self.properties = set(self.properties, value);
        }
        self
    }

    /// The exchange and routing key as AMQP short strings.
    ///
    /// # Errors
    ///
    /// [`PublishError::InvalidMessage`] when a field of the message does not fit AMQP.
    pub(super) fn destination(&self) -> Result<(ShortString, ShortString), PublishError> {
        let too_long = |field| PublishError::InvalidMessage {
            field,
            problem: "is longer than AMQP's 255 bytes".to_owned(),
        };
        if let Some(field) = self.invalid {
            return Err(too_long(field));
        }
        let exchange =
            ShortString::try_new(self.exchange.as_str()).map_err(|_| too_long("exchange"))?;
        let routing_key =
            ShortString::try_new(self.routing_key.as_str()).map_err(|_| too_long("routing key"))?;
        Ok((exchange, routing_key))
    }

    /// What the broker would refuse by closing the channel — failing every publish in flight
    /// on it — checked before sending: an expiration that is not whole milliseconds up to
    /// [`MAX_EXPIRATION_MS`], a body over `max_message_size` bytes, a user id that is not
    /// `user` (the connection's user; `None`: not checked).
    ///
    /// # Errors
    ///
    /// [`PublishError::InvalidMessage`] naming the field.
    pub(super) fn check(
        &self,
        max_message_size: usize,
        user: Option<&str>,
    ) -> Result<(), PublishError> {
        if let Some(expiration) = self.properties.expiration() {
            let text = expiration.as_str();
            let valid = !text.is_empty()
                && text.bytes().all(|b| b.is_ascii_digit())
                && text.parse::<u64>().is_ok_and(|ms| ms <= MAX_EXPIRATION_MS);
            if !valid {
                return Err(PublishError::InvalidMessage {
                    field: "expiration",
                    problem: format!(
                        "{text:?} is not a whole number of milliseconds up to RabbitMQ's cap, \
                         {MAX_EXPIRATION_MS} (ten years)"
                    ),
                });
            }
        }
        if self.body.len() > max_message_size {
            return Err(PublishError::InvalidMessage {
                field: "body",
                problem: format!(
                    "of {} bytes is over the broker's maximum message size, {max_message_size} \
                     bytes",
                    self.body.len()
                ),
            });
        }
        if let (Some(user), Some(id)) = (user, self.properties.user_id())
            && id.as_str() != user
        {
            return Err(PublishError::InvalidMessage {
                field: "user id",
                problem: format!(
                    "{:?} is not the connection's user {user:?}: RabbitMQ accepts it only from \
                     a user with the impersonator tag",
                    id.as_str()
                ),
            });
        }
        Ok(())
    }

    /// The content type (set by [`OutgoingMessage::json`] and [`OutgoingMessage::text`]).
    pub fn content_type(self, content_type: impl Into<String>) -> Self {
        self.short_property(
            "content type",
            content_type.into(),
            BasicProperties::with_content_type,
        )
    }

    /// The content encoding (`gzip`, …).
    pub fn content_encoding(self, encoding: impl Into<String>) -> Self {
        self.short_property(
            "content encoding",
            encoding.into(),
            BasicProperties::with_content_encoding,
        )
    }

    /// The correlation id.
    pub fn correlation_id(self, id: impl Into<String>) -> Self {
        self.short_property(
            "correlation id",
            id.into(),
            BasicProperties::with_correlation_id,
        )
    }

    /// The message id.
    pub fn message_id(self, id: impl Into<String>) -> Self {
        self.short_property("message id", id.into(), BasicProperties::with_message_id)
    }

    /// The queue replies should go to.
    pub fn reply_to(self, queue: impl Into<String>) -> Self {
        self.short_property(
            "reply-to queue",
            queue.into(),
            BasicProperties::with_reply_to,
        )
    }

    /// A per-message time to live: the broker drops (or dead-letters) the message when it has
    /// waited this long in a queue. Whole milliseconds, at most [`MAX_EXPIRATION_MS`] (ten
    /// years, RabbitMQ's cap): publishing a message with a longer one is
    /// [`PublishError::InvalidMessage`].
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
    pub fn kind(self, kind: impl Into<String>) -> Self {
        self.short_property("type", kind.into(), BasicProperties::with_type)
    }

    /// The application id.
    pub fn app_id(self, app_id: impl Into<String>) -> Self {
        self.short_property("app id", app_id.into(), BasicProperties::with_app_id)
    }

    /// The user id; RabbitMQ rejects a message whose user id is not the connection's user
    /// (unless that user has the `impersonator` tag), so publishing one is
    /// [`PublishError::InvalidMessage`] (see [`PublisherBuilder::impersonator`]).
    ///
    /// [`PublisherBuilder::impersonator`]: crate::PublisherBuilder::impersonator
    pub fn user_id(self, user_id: impl Into<String>) -> Self {
        self.short_property("user id", user_id.into(), BasicProperties::with_user_id)
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

    /// The exact properties sent: headers merged, delivery mode settled, short strings sent
    /// as long strings (see [`rabbit_value`]).
    pub(super) fn wire_properties(&self) -> BasicProperties {
        let mut properties = self.properties.clone();
        if !self.headers.inner().is_empty() || properties.headers().is_some() {
            let mut headers = FieldTable::default();
            let theirs = properties.headers().iter().flat_map(|h| h.inner());
            for (key, value) in theirs.chain(self.headers.inner()) {
                headers.insert(key.clone(), rabbit_value(value.clone()));
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

/// `value` as RabbitMQ reads it: its field tables have no short string (the `s` tag is a
/// 16-bit integer there), and a header holding one makes the broker close the connection with
/// INTERNAL_ERROR, so a short string (also inside tables and arrays) becomes a long string.
fn rabbit_value(value: AMQPValue) -> AMQPValue {
    match value {
        AMQPValue::ShortString(s) => AMQPValue::LongString(LongString::from(s.as_str())),
        AMQPValue::FieldTable(table) => {
            let mut out = FieldTable::default();
            for (key, value) in table.inner() {
                out.insert(key.clone(), rabbit_value(value.clone()));
            }
            AMQPValue::FieldTable(out)
        }
        AMQPValue::FieldArray(array) => AMQPValue::FieldArray(
            array
                .as_slice()
                .iter()
                .cloned()
                .map(rabbit_value)
                .collect::<Vec<_>>()
                .into(),
        ),
        other => other,
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn destination_reads_back_and_can_be_replaced() {
        let message = OutgoingMessage::new("ex", "rk", "x");
        assert_eq!((message.exchange(), message.routing_key()), ("ex", "rk"));
        let message = message.with_exchange("other").with_routing_key("key");
        assert_eq!(
            (message.exchange(), message.routing_key()),
            ("other", "key")
        );
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
    fn what_the_broker_would_refuse_is_invalid_before_sending() {
        let field = |message: OutgoingMessage, user| match message.check(10, user) {
            Err(PublishError::InvalidMessage { field, .. }) => Some(field),
            Ok(()) => None,
            Err(other) => panic!("{other:?}"),
        };
        let cap = Duration::from_millis(MAX_EXPIRATION_MS);
        let base = || OutgoingMessage::new("", "q", "x");
        assert_eq!(field(base().expiration(cap), None), None);
        assert_eq!(field(base().expiration(Duration::ZERO), None), None);
        assert_eq!(
            field(base().expiration(cap + Duration::from_millis(1)), None),
            Some("expiration")
        );
        assert_eq!(
            field(base().expiration(Duration::MAX), None),
            Some("expiration")
        );
        for text in ["", "-1", "1.5", "abc", "+5"] {
            let properties = BasicProperties::default().with_expiration(text.into());
            assert_eq!(
                field(base().with_properties(properties), None),
                Some("expiration"),
                "{text:?}"
            );
        }
        assert_eq!(
            field(OutgoingMessage::new("", "q", "0123456789"), None),
            None
        );
        assert_eq!(
            field(OutgoingMessage::new("", "q", "0123456789a"), None),
            Some("body")
        );
        assert_eq!(field(base().user_id("bob"), Some("bob")), None);
        assert_eq!(field(base().user_id("bob"), None), None);
        assert_eq!(field(base().user_id("bob"), Some("guest")), Some("user id"));
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
        type Set = fn(OutgoingMessage, String) -> OutgoingMessage;
        let setters: [(&str, Set); 11] = [
            ("content type", |m, v| m.content_type(v)),
            ("content encoding", |m, v| m.content_encoding(v)),
            ("correlation id", |m, v| m.correlation_id(v)),
            ("message id", |m, v| m.message_id(v)),
            ("reply-to queue", |m, v| m.reply_to(v)),
            ("type", |m, v| m.kind(v)),
            ("app id", |m, v| m.app_id(v)),
            ("user id", |m, v| m.user_id(v)),
            ("header name", |m, v| m.header(v, 1)),
            ("exchange", |m, v| m.with_exchange(v)),
            ("routing key", |m, v| m.with_routing_key(v)),
        ];
        for (field, set) in setters {
            let message = set(OutgoingMessage::new("", "q", "x"), long.clone());
            match message.destination() {
                Err(PublishError::InvalidMessage { field: f, .. }) => assert_eq!(f, field),
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
}
