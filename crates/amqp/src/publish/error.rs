//! [`PublishError`]: why a message was not published, and how lapin's errors map onto it.

use std::time::Duration;

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
