//! [`Publisher`]: publishing on a confirm-mode channel, reconnecting when needed.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::{Channel, Confirmation, Connection};
use serde::Serialize;
use tokio::sync::Mutex;

use super::error::failure;
use super::lane::{RetireOnDrop, SharedLane, connected};
use super::{OutgoingMessage, PublishError, PublisherBuilder};
use crate::AmqpConfig;
use crate::config::Failover;

/// Publishes messages with confirms; cheap to clone (clones share the connection and
/// channels), `Send + Sync`, usable from any number of handlers at once.
///
/// A publisher owns a connection (or shares one the caller hands it) and publishes
/// [`OutgoingMessage`]s — JSON through serde (content type `application/json`) or raw bytes —
/// to an exchange with a routing key. Defaults follow what a worker wants from a broker:
///
/// - **persistent** messages (delivery mode 2), unless a message says otherwise;
/// - **publisher confirms** on, and awaited: [`Publisher::publish`] returns once the broker has
///   taken responsibility for the message; a nack is [`PublishError::Nacked`];
/// - **mandatory** off, as in AMQP; with it on (per publisher or per message) a message no
///   queue receives comes back as [`PublishError::Unroutable`] instead of vanishing;
/// - a **timeout** (default [`DEFAULT_PUBLISH_TIMEOUT`](crate::DEFAULT_PUBLISH_TIMEOUT)) over the whole publish — reconnecting,
///   opening a channel, sending, waiting for the confirm — so a broker outage or a connection
///   the broker blocked (a memory or disk alarm) is [`PublishError::Timeout`], never a hang.
///
/// # Channels, and why mandatory publishes take turns
///
/// Non-mandatory publishes share one confirm-mode channel and run concurrently (their confirms
/// are pipelined; only the instant each is numbered and queued for sending is taken in turn,
/// so every confirm goes to its own message). Mandatory publishes use a second channel, one
/// at a time: lapin hands a `basic.return` to whichever confirm it resolves next, so with
/// several mandatory messages in flight on one channel — or a mandatory one beside others —
/// an unroutable message could be reported against the wrong publish. One at a time on a
/// channel of their own makes the error belong to the message that caused it. For
/// high-volume unroutable detection, use several publishers.
///
/// What the broker would refuse by closing the channel — an expiration over RabbitMQ's cap, a
/// body over its maximum message size, a user id that is not the connection's user — is
/// refused before sending ([`PublishError::InvalidMessage`]). A channel the broker still closes
/// (publishing to an exchange that does not exist closes it with 404) fails every publish in
/// flight on it: the message that caused it gets its own error
/// ([`PublishError::ExchangeNotFound`]), the others [`PublishError::ChannelClosed`] (they may
/// or may not have been stored). The channel is replaced on the next publish; a publisher
/// made with [`PublisherBuilder::connect`] also reconnects when its connection is gone. After
/// a timeout the channel is replaced too (unless the broker has blocked the whole connection,
/// where a new channel would not help), and the timed-out message may still reach the broker
/// later: publishing is at-least-once, so a caller that retries after a timeout may produce a
/// duplicate. A mandatory publish
/// whose future is dropped early retires its channel, so a late `basic.return` cannot be
/// blamed on the next message.
///
/// [`Publisher::close`] ends it gracefully (in a worker's shutdown hook, say); dropping the
/// last clone closes its connection without waiting.
///
/// # Metrics
///
/// `asyncworker_amqp_published_total{outcome}` counts publishes by outcome: `confirmed`,
/// `sent` (confirms off), `unroutable`, `nacked`, `timeout`, `error`.
///
/// With confirms off, a mandatory message no queue receives cannot be reported to its caller
/// (the publish has returned by the time the broker returns it): each is logged at WARN
/// (exchange, routing key, the broker's reply; never the body or headers) and counted by
/// `asyncworker_amqp_publish_returned_total` — at the next mandatory publish, or at
/// [`Publisher::close`].
///
/// # Example
///
/// ```no_run
/// use asyncworker_amqp::{AmqpConfig, OutgoingMessage, Publisher};
/// use serde::Serialize;
///
/// #[derive(Serialize)]
/// struct Count {
///     name: String,
///     value: u64,
/// }
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let config = AmqpConfig::from_url("amqp://guest:guest@127.0.0.1:5672/%2f")?;
/// let publisher = Publisher::connect(&config).await?;
///
/// // JSON to a queue through the default exchange, persistent, confirmed.
/// let count = Count { name: "visits".into(), value: 3 };
/// publisher.publish_json("", "asgard/counts", &count).await?;
///
/// // Properties, headers and an error when no queue is bound.
/// let message = OutgoingMessage::json("events", "counts.created", &count)?
///     .correlation_id("req-42")
///     .header("source", "example")
///     .mandatory(true);
/// publisher.publish(message).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Publisher {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) origin: Origin,
    pub(super) confirms: bool,
    pub(super) mandatory: bool,
    pub(super) timeout: Duration,
    /// The largest body sent ([`PublisherBuilder::max_message_size`]).
    pub(super) max_message_size: usize,
    /// Whether any user id may be sent ([`PublisherBuilder::impersonator`]).
    pub(super) impersonator: bool,
    /// Taken while a `basic_publish` numbers and queues its message (see [`in_turn`]). One
    /// for both lanes: it is held for microseconds, never across an await.
    pub(super) send_turn: std::sync::Mutex<()>,
    /// The current connection (for [`Origin::Config`], replaced when it dies).
    pub(super) connection: Mutex<Arc<Connection>>,
    /// Whether the broker has blocked the current connection; read when a publish times out.
    pub(super) status: std::sync::Mutex<lapin::ConnectionStatus>,
    /// The channel shared by non-mandatory publishes.
    pub(super) shared: SharedLane,
    /// The channel of mandatory publishes, held for a whole publish (see [`Publisher`]'s docs).
    /// Channels are behind an `Arc`: a lapin `Channel` clone is more than a dozen reference
    /// counts.
    pub(super) mandatory_lane: Mutex<Option<Arc<Channel>>>,
    /// `asyncworker_amqp_published_total`, by outcome, resolved once (a `counter!` per
    /// publish builds its key and asks the recorder each time).
    pub(super) published: Published,
    /// Set by [`Publisher::close`].
    pub(super) closed: std::sync::atomic::AtomicBool,
}

/// The handles of `asyncworker_amqp_published_total{outcome}`, registered with the recorder
/// installed when the publisher is built.
pub(super) struct Published {
    confirmed: metrics::Counter,
    sent: metrics::Counter,
    unroutable: metrics::Counter,
    nacked: metrics::Counter,
    timeout: metrics::Counter,
    error: metrics::Counter,
}

impl Published {
    pub(super) fn register() -> Self {
        let counter = |outcome: &'static str| metrics::counter!("asyncworker_amqp_published_total", "outcome" => outcome);
        Published {
            confirmed: counter("confirmed"),
            sent: counter("sent"),
            unroutable: counter("unroutable"),
            nacked: counter("nacked"),
            timeout: counter("timeout"),
            error: counter("error"),
        }
    }
}

pub(super) enum Origin {
    /// The publisher connects (and reconnects) with this configuration, to this vhost, at the
    /// endpoints in turn.
    Config(AmqpConfig, String, Failover),
    Connection,
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &*self.inner;
        let mut d = f.debug_struct("Publisher");
        match &inner.origin {
            Origin::Config(config, vhost, _) => d
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
            let shared = {
                let _opening = inner.shared.opening.lock().await;
                inner.shared.slot().take()
            };
            let mandatory = inner.mandatory_lane.lock().await.take();
            for channel in [shared, mandatory].into_iter().flatten() {
                if channel.status().connected() {
                    // A channel the broker already closed is not an error here.
                    let _ = channel.close(200, "publisher closed".into()).await;
                }
                if !inner.confirms {
                    // The close-ok came after every `basic.return` of the channel.
                    report_returned(&channel).await;
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
    /// mandatory ones still take turns (see [`Publisher`]'s docs).
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
    /// - [`PublishError::ChannelClosed`] when the broker closed the channel over another
    ///   message published on it (this one may or may not have been stored);
    /// - [`PublishError::Connect`] / [`PublishError::ConnectionClosed`] /
    ///   [`PublishError::Amqp`] when the connection or channel fails;
    /// - [`PublishError::InvalidMessage`], before anything is sent, when the exchange, the
    ///   routing key, a header name or a property is longer than AMQP allows, the expiration
    ///   is over [`MAX_EXPIRATION_MS`](crate::MAX_EXPIRATION_MS), the body is over the
    ///   [maximum message size](PublisherBuilder::max_message_size), or the user id is not the
    ///   connection's user (see [`PublisherBuilder::impersonator`]).
    // Not an `async fn`: the future of one stores its argument twice (as the argument and as
    // the local it is moved into), and a publish future is moved a few times on its way to
    // being polled — with a thousand in flight, the copies counted (2,600 bytes to 2,144).
    #[allow(clippy::manual_async_fn)]
    pub fn publish(
        &self,
        message: OutgoingMessage,
    ) -> impl Future<Output = Result<(), PublishError>> + Send + '_ {
        async move {
            let inner = &*self.inner;
            let (destination, mandatory) = self.prepare(&message)?;
            let outcome = {
                let attempt = std::pin::pin!(self.publish_on(&message, destination, mandatory));
                super::deadline::within(inner.timeout, attempt).await
            };
            match outcome {
                Some(result) => result,
                None => {
                    let blocked = self.is_blocked();
                    // A mandatory lane's channel has already been retired (`RetireOnDrop`). The
                    // shared channel is replaced unless the whole connection is blocked, where
                    // a new channel would not help and each timeout would leave one more
                    // behind. Dropping our handle lets lapin close it once nothing uses it.
                    if !mandatory && !blocked {
                        *inner.shared.slot() = None;
                    }
                    tracing::warn!(
                        exchange = %message.exchange,
                        routing_key = %message.routing_key,
                        timeout = ?inner.timeout,
                        blocked,
                        "publish timed out"
                    );
                    inner.published.timeout.increment(1);
                    Err(PublishError::Timeout {
                        exchange: message.exchange,
                        routing_key: message.routing_key,
                        timeout: inner.timeout,
                        blocked,
                    })
                }
            }
        }
    }

    /// What `publish` checks before sending: the publisher is open and `message` valid. Its
    /// destination and whether it is mandatory.
    fn prepare(
        &self,
        message: &OutgoingMessage,
    ) -> Result<((ShortString, ShortString), bool), PublishError> {
        let inner = &*self.inner;
        if inner.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(PublishError::Closed);
        }
        let destination = message.destination()?;
        let user = (!inner.impersonator && message.properties().user_id().is_some())
            .then(|| inner.status.lock().map(|status| status.username()).ok())
            .flatten();
        message.check(inner.max_message_size, user.as_deref())?;
        Ok((destination, message.mandatory.unwrap_or(inner.mandatory)))
    }

    // Not an `async fn`, as `publish`: its arguments would be stored twice.
    #[allow(clippy::manual_async_fn)]
    fn publish_on(
        &self,
        message: &OutgoingMessage,
        destination: (ShortString, ShortString),
        mandatory: bool,
    ) -> impl Future<Output = Result<(), PublishError>> {
        async move {
            let exchange = message.exchange.as_str();
            let routing_key = message.routing_key.as_str();
            let result = if mandatory {
                // A mandatory publish keeps its lane locked until its confirm (see [`Publisher`]'s
                // docs).
                let mut guard = self.inner.mandatory_lane.lock().await;
                let channel = match connected(&guard) {
                    Some(channel) => channel,
                    // Boxed, as in `shared_channel`.
                    None => Box::pin(self.channel(&mut guard))
                        .await
                        .map_err(|error| error.into_publish_error(exchange, routing_key))?,
                };
                // If this future is dropped before the confirm (a timeout, a cancelled caller),
                // the broker's `basic.return` for this message may still arrive on the channel,
                // and lapin would hand it to the next mandatory publish's confirm: retire the
                // channel instead.
                let mut retire = RetireOnDrop(Some(guard));
                let result = self.send(&channel, message, destination, true).await;
                if !self.inner.confirms {
                    // Without confirms nothing tells when the broker has returned a message:
                    // report what came back so far, or lapin keeps it.
                    report_returned(&channel).await;
                }
                retire.0 = None;
                result
            } else {
                let channel = self
                    .shared_channel()
                    .await
                    .map_err(|error| error.into_publish_error(exchange, routing_key))?;
                self.send(&channel, message, destination, false).await
            };
            self.record(&result);
            result
        }
    }

    fn record(&self, result: &Result<(), PublishError>) {
        let published = &self.inner.published;
        let counter = match result {
            Ok(()) if self.inner.confirms => &published.confirmed,
            Ok(()) => &published.sent,
            Err(PublishError::Unroutable { .. }) => &published.unroutable,
            Err(PublishError::Nacked { .. }) => &published.nacked,
            Err(_) => &published.error,
        };
        counter.increment(1);
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
        let amqp = |source: lapin::Error| failure(message, source);
        let publish = std::pin::pin!(channel.basic_publish(
            exchange_name,
            routing_key_name,
            BasicPublishOptions {
                mandatory,
                immediate: false,
            },
            &message.body,
            message.wire_properties(),
        ));
        let confirm = in_turn(&self.inner.send_turn, publish)
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
}

/// Runs `publish`, a `basic_publish` future, its first poll in `turn`.
///
/// In that first poll (lapin 4.12, `Channel::basic_publish` and `send_method_frame_with_body`)
/// lapin numbers the message — the delivery tag the broker's confirm will name — under its
/// acknowledgements' lock, then queues its frames under the frames' lock, and only then
/// awaits their sending. Two publishes racing between those locks could reach the broker in
/// the other order than their numbers, and each be handed the other's confirm (a nacked
/// message reported stored). Holding `turn` over that poll makes numbering and queueing one
/// step; the rest — writing the frames, waiting for the confirm — stays concurrent.
async fn in_turn<F: Future>(turn: &std::sync::Mutex<()>, mut publish: Pin<&mut F>) -> F::Output {
    let mut first = true;
    std::future::poll_fn(|cx| {
        if std::mem::take(&mut first) {
            let _turn = turn
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            publish.as_mut().poll(cx)
        } else {
            publish.as_mut().poll(cx)
        }
    })
    .await
}

/// Takes from lapin the messages the broker returned on `channel` (confirms off: lapin keeps
/// them until `wait_for_confirms`, which resolves at once without confirms) and reports each:
/// a WARN naming its exchange, routing key and the broker's reply — never its body or
/// headers — and `asyncworker_amqp_publish_returned_total`.
async fn report_returned(channel: &Channel) {
    let Ok(returned) = channel.wait_for_confirms().await else {
        return;
    };
    for message in returned {
        tracing::warn!(
            exchange = %message.delivery.exchange,
            routing_key = %message.delivery.routing_key,
            reply_code = message.reply_code,
            reply_text = %message.reply_text,
            "the broker returned a mandatory message published without confirms: no queue \
             received it"
        );
        metrics::counter!("asyncworker_amqp_publish_returned_total").increment(1);
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
}
