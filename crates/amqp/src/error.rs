//! The errors an AMQP source reports.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// The AMQP reply code for "access refused" (a wrong user name or password, or no permission on
/// a resource).
const ACCESS_REFUSED: u16 = 403;
/// The AMQP reply code for "not found" (a queue or exchange that does not exist).
const NOT_FOUND: u16 = 404;
/// The AMQP reply code for "not allowed" (typically: no access to the virtual host).
const NOT_ALLOWED: u16 = 530;

/// Where a connection goes, for error messages and logs: scheme, user, host, port and vhost,
/// never the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub(crate) tls: bool,
    pub(crate) user: Arc<str>,
    pub(crate) host: Arc<str>,
    pub(crate) port: u16,
    pub(crate) vhost: Arc<str>,
}

impl Endpoint {
    /// The broker's host name or address.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The broker's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The virtual host.
    pub fn vhost(&self) -> &str {
        &self.vhost
    }

    /// The user name (the password is never kept here).
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Whether the connection uses TLS (`amqps://`).
    pub fn tls(&self) -> bool {
        self.tls
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "amqps" } else { "amqp" };
        write!(
            f,
            "{scheme}://{}@{}:{} vhost {:?}",
            self.user, self.host, self.port, self.vhost
        )
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Endpoint({self})")
    }
}

/// A recoverable error of an AMQP source: the stream yields it, logs it and keeps going
/// (reconnecting, or retrying the queue, with backoff), except for [`AmqpError::GaveUp`], the
/// last item of a stream whose reconnect policy ran out of attempts.
///
/// None of the messages contains a password.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AmqpError {
    /// The broker refused the credentials (AMQP reply 403 during the handshake).
    #[error(
        "authentication refused by {endpoint} (attempt {attempt}){}; check the user name and \
         password",
        broker_said(.reply)
    )]
    AuthenticationRefused {
        /// Where the connection went.
        endpoint: Endpoint,
        /// The connection attempt of this outage (1 for the first).
        attempt: u32,
        /// The broker's reply text (empty if it sent none).
        reply: String,
        /// lapin's error.
        #[source]
        source: lapin::Error,
    },
    /// The user may not use the virtual host, or it does not exist (AMQP reply 530 about
    /// the vhost).
    #[error(
        "access to the virtual host refused by {endpoint} (attempt {attempt}){}; does the \
         vhost exist, and does the user have permissions on it?",
        broker_said(.reply)
    )]
    VhostRefused {
        /// Where the connection went.
        endpoint: Endpoint,
        /// The connection attempt of this outage (1 for the first).
        attempt: u32,
        /// The broker's reply text (empty if it sent none).
        reply: String,
        /// lapin's error.
        #[source]
        source: lapin::Error,
    },
    /// The broker refused the connection for another reason, which its reply text gives: a
    /// user's or vhost's `max-connections` limit reached (reply 530 "... connection limit
    /// (0) is reached"), a `frame_max` or `channel_max` it does not accept, ...
    #[error(
        "connection to {endpoint} refused by the broker (attempt {attempt}, reply {code}){}",
        broker_said(.reply)
    )]
    BrokerRefused {
        /// Where the connection went.
        endpoint: Endpoint,
        /// The connection attempt of this outage (1 for the first).
        attempt: u32,
        /// The AMQP reply code.
        code: u16,
        /// The broker's reply text (empty if it sent none).
        reply: String,
        /// lapin's error.
        #[source]
        source: lapin::Error,
    },
    /// The connection could not be established (refused, unreachable, TLS failure, timeout).
    #[error("cannot connect to {endpoint} (attempt {attempt})")]
    Connect {
        /// Where the connection went.
        endpoint: Endpoint,
        /// The connection attempt of this outage (1 for the first).
        attempt: u32,
        /// lapin's error.
        source: lapin::Error,
    },
    /// An established connection was lost; the source reconnects.
    #[error("connection to {endpoint} lost: {reason}")]
    ConnectionLost {
        /// Where the connection went.
        endpoint: Endpoint,
        /// What ended it, as far as the client can tell.
        reason: String,
    },
    /// A queue of the route does not exist. The route's other queues keep being consumed;
    /// this one is retried with backoff.
    #[error("queue {queue:?} not found on {endpoint}; retrying in {retry_in:?}")]
    QueueNotFound {
        /// The missing queue.
        queue: String,
        /// Where the connection went.
        endpoint: Endpoint,
        /// The delay before the next attempt.
        retry_in: Duration,
    },
    /// The broker refused to let the user consume the queue (AMQP reply 403).
    #[error("access to queue {queue:?} refused by {endpoint}; retrying in {retry_in:?}")]
    QueueAccessRefused {
        /// The queue.
        queue: String,
        /// Where the connection went.
        endpoint: Endpoint,
        /// The delay before the next attempt.
        retry_in: Duration,
    },
    /// Opening a channel on, or consuming from, a queue failed for another reason; retried
    /// with backoff.
    #[error("cannot consume queue {queue:?} on {endpoint}; retrying in {retry_in:?}")]
    Consume {
        /// The queue.
        queue: String,
        /// Where the connection went.
        endpoint: Endpoint,
        /// The delay before the next attempt.
        retry_in: Duration,
        /// lapin's error.
        source: lapin::Error,
    },
    /// A queue's consumer ended while the connection stayed up (the queue was deleted, the
    /// broker cancelled the consumer, or the channel was closed by an error); the queue is
    /// consumed again on a new channel.
    #[error("consumer of queue {queue:?} on {endpoint} ended: {reason}")]
    ConsumerEnded {
        /// The queue.
        queue: String,
        /// Where the connection went.
        endpoint: Endpoint,
        /// Why, as far as the client can tell.
        reason: String,
    },
    /// The reconnect policy's attempts ran out: the stream ends after this item.
    #[error("giving up on {endpoint} after {attempts} failed connection attempts")]
    GaveUp {
        /// Where the connection went.
        endpoint: Endpoint,
        /// How many attempts failed.
        attempts: u32,
        /// The last attempt's error (also the [`source`](std::error::Error::source)).
        #[source]
        last: Box<AmqpError>,
    },
}

impl AmqpError {
    /// Classify a failed connection attempt, keeping the broker's reply text.
    pub(crate) fn connect(endpoint: Endpoint, attempt: u32, source: lapin::Error) -> Self {
        let Some((code, reply)) = reply(&source) else {
            return AmqpError::Connect {
                endpoint,
                attempt,
                source,
            };
        };
        let reply = reply.to_owned();
        match code {
            ACCESS_REFUSED => AmqpError::AuthenticationRefused {
                endpoint,
                attempt,
                reply,
                source,
            },
            NOT_ALLOWED if about_vhost_access(&reply) => AmqpError::VhostRefused {
                endpoint,
                attempt,
                reply,
                source,
            },
            _ => AmqpError::BrokerRefused {
                endpoint,
                attempt,
                code,
                reply,
                source,
            },
        }
    }

    /// Classify a failed `basic.consume` (or channel open) on `queue`.
    pub(crate) fn consume(
        endpoint: Endpoint,
        queue: &str,
        retry_in: Duration,
        source: lapin::Error,
    ) -> Self {
        let queue = queue.to_owned();
        match reply_code(&source) {
            Some(NOT_FOUND) => AmqpError::QueueNotFound {
                queue,
                endpoint,
                retry_in,
            },
            Some(ACCESS_REFUSED) => AmqpError::QueueAccessRefused {
                queue,
                endpoint,
                retry_in,
            },
            _ => AmqpError::Consume {
                queue,
                endpoint,
                retry_in,
                source,
            },
        }
    }

    /// The endpoint the error concerns.
    pub fn endpoint(&self) -> &Endpoint {
        match self {
            AmqpError::AuthenticationRefused { endpoint, .. }
            | AmqpError::VhostRefused { endpoint, .. }
            | AmqpError::BrokerRefused { endpoint, .. }
            | AmqpError::Connect { endpoint, .. }
            | AmqpError::ConnectionLost { endpoint, .. }
            | AmqpError::QueueNotFound { endpoint, .. }
            | AmqpError::QueueAccessRefused { endpoint, .. }
            | AmqpError::Consume { endpoint, .. }
            | AmqpError::ConsumerEnded { endpoint, .. }
            | AmqpError::GaveUp { endpoint, .. } => endpoint,
        }
    }

    /// The queue the error concerns, for queue-level errors.
    pub fn queue(&self) -> Option<&str> {
        match self {
            AmqpError::QueueNotFound { queue, .. }
            | AmqpError::QueueAccessRefused { queue, .. }
            | AmqpError::Consume { queue, .. }
            | AmqpError::ConsumerEnded { queue, .. } => Some(queue),
            _ => None,
        }
    }

    /// A short stable name of the error kind, used as a metrics label.
    pub fn kind(&self) -> &'static str {
        match self {
            AmqpError::AuthenticationRefused { .. } => "authentication_refused",
            AmqpError::VhostRefused { .. } => "vhost_refused",
            AmqpError::BrokerRefused { .. } => "broker_refused",
            AmqpError::Connect { .. } => "connect",
            AmqpError::ConnectionLost { .. } => "connection_lost",
            AmqpError::QueueNotFound { .. } => "queue_not_found",
            AmqpError::QueueAccessRefused { .. } => "queue_access_refused",
            AmqpError::Consume { .. } => "consume",
            AmqpError::ConsumerEnded { .. } => "consumer_ended",
            AmqpError::GaveUp { .. } => "gave_up",
        }
    }
}

/// The AMQP reply code of a protocol error, if `error` is one.
pub(crate) fn reply_code(error: &lapin::Error) -> Option<u16> {
    reply(error).map(|(code, _)| code)
}

/// The AMQP reply code and text of a protocol error, if `error` is one.
fn reply(error: &lapin::Error) -> Option<(u16, &str)> {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(e) => Some((e.get_id(), e.get_message().as_str())),
        _ => None,
    }
}

/// Whether a 530 (not allowed) refusal during the handshake is about access to the vhost
/// (it does not exist, the user has no permission on it, it is down) rather than a limit or
/// a negotiated value. RabbitMQ replies 530 to all of these: "vhost ... not found", "access
/// to vhost ... refused for user ...", but also "access to vhost ... refused for user ...:
/// connection limit (0) is reached", "... user connection limit (0) is reached" and
/// "frame_max=... < 4096 min size".
fn about_vhost_access(reply: &str) -> bool {
    let reply = reply.to_ascii_lowercase();
    !["limit", "frame_max", "channel_max"]
        .iter()
        .any(|word| reply.contains(word))
}

/// `: the broker said "…"`, or nothing for an empty reply.
fn broker_said(reply: &str) -> String {
    if reply.is_empty() {
        String::new()
    } else {
        format!(": the broker said {reply:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint() -> Endpoint {
        Endpoint {
            tls: true,
            user: "bob".into(),
            host: "rabbit.internal".into(),
            port: 5671,
            vhost: "jobs".into(),
        }
    }

    fn protocol_error(code: u16, text: &str) -> lapin::Error {
        let amqp = lapin::protocol::AMQPError::from_id(code, text.into()).expect("a known code");
        lapin::ErrorKind::ProtocolError(amqp).into()
    }

    #[test]
    fn endpoints_name_user_host_port_and_vhost() {
        assert_eq!(
            endpoint().to_string(),
            "amqps://bob@rabbit.internal:5671 vhost \"jobs\""
        );
    }

    #[test]
    fn connection_failures_are_classified() {
        let e = AmqpError::connect(endpoint(), 3, protocol_error(403, "ACCESS_REFUSED"));
        assert_eq!(e.kind(), "authentication_refused");
        let text = e.to_string();
        assert!(
            text.contains("authentication refused by amqps://bob@rabbit.internal:5671"),
            "{text}"
        );
        assert!(text.contains("attempt 3"), "{text}");
        let e = AmqpError::connect(endpoint(), 1, protocol_error(530, "NOT_ALLOWED"));
        assert_eq!(e.kind(), "vhost_refused");
        assert!(e.to_string().contains("virtual host"), "{e}");
        let io = lapin::Error::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        let e = AmqpError::connect(endpoint(), 2, io);
        assert_eq!(e.kind(), "connect");
        assert!(
            e.to_string().starts_with("cannot connect to amqps://bob@"),
            "{e}"
        );
    }

    #[test]
    fn refusals_keep_the_brokers_reply_and_limits_are_not_vhost_errors() {
        let login = "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN";
        let e = AmqpError::connect(endpoint(), 1, protocol_error(403, login));
        assert_eq!(e.kind(), "authentication_refused");
        assert!(e.to_string().contains(login), "{e}");
        let missing = "NOT_ALLOWED - vhost jobs not found";
        let e = AmqpError::connect(endpoint(), 1, protocol_error(530, missing));
        assert_eq!(e.kind(), "vhost_refused");
        assert!(e.to_string().contains(missing), "{e}");
        for limit in [
            "NOT_ALLOWED - access to vhost 'jobs' refused for user 'bob': connection limit (0) \
             is reached",
            "NOT_ALLOWED - Connection refused for user 'bob': user connection limit (0) is \
             reached",
            "NOT_ALLOWED - frame_max=1024 < 4096 min size",
        ] {
            let e = AmqpError::connect(endpoint(), 2, protocol_error(530, limit));
            assert_eq!(e.kind(), "broker_refused", "{limit}");
            let text = e.to_string();
            assert!(text.contains(limit), "{text}");
            assert!(!text.contains("does the vhost exist"), "{text}");
            assert!(
                text.contains("reply 530") && text.contains("attempt 2"),
                "{text}"
            );
        }
    }

    #[test]
    fn causes_are_sources_and_not_repeated_in_the_message() {
        use std::error::Error as _;
        let io = lapin::Error::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        let cause = io.to_string();
        let e = AmqpError::connect(endpoint(), 2, io);
        assert!(!e.to_string().contains(&cause), "{e}");
        assert_eq!(e.source().map(ToString::to_string), Some(cause));
        let gave_up = AmqpError::GaveUp {
            endpoint: endpoint(),
            attempts: 2,
            last: Box::new(e.clone()),
        };
        assert!(!gave_up.to_string().contains("attempt 2"), "{gave_up}");
        assert_eq!(
            gave_up.source().map(ToString::to_string),
            Some(e.to_string())
        );
    }

    #[test]
    fn queue_failures_name_the_queue() {
        let delay = Duration::from_millis(500);
        let e = AmqpError::consume(
            endpoint(),
            "orders",
            delay,
            protocol_error(404, "NOT_FOUND"),
        );
        assert_eq!(e.kind(), "queue_not_found");
        assert_eq!(e.queue(), Some("orders"));
        assert!(e.to_string().contains("queue \"orders\" not found"), "{e}");
        let e = AmqpError::consume(
            endpoint(),
            "orders",
            delay,
            protocol_error(403, "ACCESS_REFUSED"),
        );
        assert_eq!(e.kind(), "queue_access_refused");
        assert_eq!(e.endpoint().vhost(), "jobs");
    }
}
