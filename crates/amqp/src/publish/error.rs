//! [`PublishError`]: why a message was not published, and how lapin's errors map onto it.

use std::time::Duration;

use lapin::protocol::AMQPErrorKind;

use super::OutgoingMessage;
use crate::AmqpError;
use crate::error::reply_code;

/// The AMQP reply code for "not found".
const NOT_FOUND: u16 = 404;

/// Why a message was not published (or not confirmed).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The message body could not be serialized to JSON.
    #[error("cannot serialize the message body to json")]
    Serialize(#[source] serde_json::Error),
    /// The publisher's options are invalid (found when it is built).
    #[error("invalid publisher options: {0}")]
    InvalidOptions(&'static str),
    /// A field of the message is one the broker would refuse — and refuse by closing the
    /// channel, failing every publish in flight on it: the exchange, the routing key, a header
    /// name or a short-string property (content type, message id, ...) longer than AMQP's 255
    /// bytes; an expiration over RabbitMQ's cap; a user id that is not the connection's user;
    /// a body over the broker's maximum message size. Nothing was sent.
    #[error("invalid message: its {field} {problem}")]
    InvalidMessage {
        /// The field that does not fit (`exchange`, `routing key`, `message id`, `expiration`,
        /// `user id`, `body`, ...).
        field: &'static str,
        /// What is wrong with it (`is longer than AMQP's 255 bytes`, ...).
        problem: String,
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
    /// The broker closed the channel because of *another* message published on it (to an
    /// exchange that does not exist, say): every publish whose confirm was pending failed with
    /// it. This message may or may not have been stored — it was, if the broker had routed it
    /// before the bad one; retrying it may produce a duplicate. The publisher opens another
    /// channel for the next message.
    #[error(
        "publishing to exchange {exchange:?} with routing key {routing_key:?} failed: the \
         broker closed the channel because of another message published on it; this message \
         may or may not have been stored"
    )]
    ChannelClosed {
        /// The exchange it was published to.
        exchange: String,
        /// Its routing key.
        routing_key: String,
        /// The broker's reason for closing the channel (the other message's fault).
        source: Box<lapin::Error>,
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
    #[error("the publisher cannot connect")]
    Connect(#[source] Box<AmqpError>),
    /// The connection handed to [`PublisherBuilder::from_connection`](crate::PublisherBuilder::from_connection) is closed, so no channel
    /// can be opened on it.
    #[error("the publisher's connection is closed")]
    ConnectionClosed,
    /// [`Publisher::close`](crate::Publisher::close) was called: this publisher (and its clones) publish no more.
    #[error("the publisher is closed")]
    Closed,
    /// Any other failure of the connection or channel while publishing.
    #[error("publishing to exchange {exchange:?} with routing key {routing_key:?} failed")]
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

/// A failure while getting a channel, before the destination is known to the error.
pub(super) enum ChannelError {
    Connect(AmqpError),
    ConnectionClosed,
    Amqp(lapin::Error),
}

impl ChannelError {
    pub(super) fn into_publish_error(self, exchange: &str, routing_key: &str) -> PublishError {
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

/// Whose fault a channel closed by the broker is, from its reply text.
#[derive(Debug, PartialEq)]
enum Blame {
    /// The text names this message: its exchange, user id, expiration or size.
    This,
    /// The text names something of a message, but not this one's.
    Other,
    /// The text is not one the publisher knows.
    Unknown,
}

/// What the broker's reply text says about the culprit of a channel close it caused by
/// publishing, and what it would say about `message`: RabbitMQ's `NOT_FOUND - no exchange 'x'
/// in vhost '/'`, `ACCESS_REFUSED - write access to exchange 'x' ...`, `PRECONDITION_FAILED -
/// user_id property set to 'u' but ...`, `... invalid expiration 'e': ...`, `... message size
/// n is larger than configured max size m`.
fn blame(message: &OutgoingMessage, text: &str) -> Blame {
    let exchange = match message.exchange.as_str() {
        "" => "amq.default",
        name => name,
    };
    let properties = message.properties();
    let clues = [
        ("exchange '", Some(format!("exchange '{exchange}'"))),
        (
            "user_id property set to '",
            properties
                .user_id()
                .as_ref()
                .map(|id| format!("user_id property set to '{id}'")),
        ),
        (
            "invalid expiration '",
            properties
                .expiration()
                .as_ref()
                .map(|e| format!("invalid expiration '{e}'")),
        ),
        (
            "message size ",
            Some(format!("message size {} is larger", message.body.len())),
        ),
    ];
    for (clue, this) in clues {
        if text.contains(clue) {
            return match this {
                Some(this) if text.contains(&this) => Blame::This,
                _ => Blame::Other,
            };
        }
    }
    Blame::Unknown
}

/// The error of `message`, whose publish or confirm failed with `source`: when the broker
/// closed the channel over another message published on it, [`PublishError::ChannelClosed`];
/// else the most specific error ([`classify`]).
pub(super) fn failure(message: &OutgoingMessage, source: lapin::Error) -> PublishError {
    if let lapin::ErrorKind::ProtocolError(amqp) = source.kind()
        && matches!(amqp.kind(), AMQPErrorKind::Soft(_))
        && blame(message, amqp.get_message().as_str()) == Blame::Other
    {
        return PublishError::ChannelClosed {
            exchange: message.exchange.clone(),
            routing_key: message.routing_key.clone(),
            source: Box::new(source),
        };
    }
    classify(&message.exchange, &message.routing_key, source)
}

/// Turns lapin's error into the most specific [`PublishError`].
pub(super) fn classify(exchange: &str, routing_key: &str, source: lapin::Error) -> PublishError {
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

    fn channel_close(code: u16, text: &str) -> lapin::Error {
        let amqp = lapin::protocol::AMQPError::from_id(code, text.into()).expect("a known code");
        lapin::ErrorKind::ProtocolError(amqp).into()
    }

    #[test]
    fn only_the_message_the_broker_names_is_blamed_for_a_channel_close() {
        let not_found = || channel_close(404, "NOT_FOUND - no exchange 'ghost' in vhost '/'");
        let culprit = OutgoingMessage::new("ghost", "k", "x");
        assert!(matches!(
            failure(&culprit, not_found()),
            PublishError::ExchangeNotFound { exchange, .. } if exchange == "ghost"
        ));
        for neighbour in [
            OutgoingMessage::new("", "jobs", "x"),
            OutgoingMessage::new("ghost2", "k", "x"),
            OutgoingMessage::new("ghos", "k", "x"),
        ] {
            let error = failure(&neighbour, not_found());
            let PublishError::ChannelClosed { exchange, .. } = &error else {
                panic!("expected ChannelClosed, got {error:?}");
            };
            assert_eq!(exchange, neighbour.exchange());
            let text = error.to_string();
            assert!(text.contains("may or may not have been stored"), "{text}");
        }

        let user = || {
            channel_close(
                406,
                "PRECONDITION_FAILED - user_id property set to 'bob' but authenticated user \
                 was 'guest'",
            )
        };
        let bob = OutgoingMessage::new("", "q", "x").user_id("bob");
        assert!(matches!(failure(&bob, user()), PublishError::Amqp { .. }));
        let plain = OutgoingMessage::new("", "q", "x");
        assert!(matches!(
            failure(&plain, user()),
            PublishError::ChannelClosed { .. }
        ));

        let size = || {
            channel_close(
                406,
                "PRECONDITION_FAILED - message size 3 is larger than configured max size 2",
            )
        };
        let three = OutgoingMessage::new("", "q", "abc");
        assert!(matches!(failure(&three, size()), PublishError::Amqp { .. }));
        let four = OutgoingMessage::new("", "q", "four");
        assert!(matches!(
            failure(&four, size()),
            PublishError::ChannelClosed { .. }
        ));

        // A reason the publisher does not know, or a connection closed: as before.
        let unknown = channel_close(406, "PRECONDITION_FAILED - something new");
        assert!(matches!(
            failure(&plain, unknown),
            PublishError::Amqp { .. }
        ));
        let forced = channel_close(320, "CONNECTION_FORCED - closed via management plugin");
        assert!(matches!(failure(&plain, forced), PublishError::Amqp { .. }));
    }

    #[test]
    fn causes_are_sources_and_not_repeated_in_the_message() {
        use std::error::Error as _;
        let serde = serde_json::from_str::<u8>("x").unwrap_err();
        let cause = serde.to_string();
        let error = PublishError::Serialize(serde);
        assert!(!error.to_string().contains(&cause), "{error}");
        assert_eq!(error.source().map(ToString::to_string), Some(cause));
    }
}
