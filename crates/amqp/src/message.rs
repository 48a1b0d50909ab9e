//! [`AmqpMessage`]: one RabbitMQ delivery, with its body, metadata and settlement slot.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use asyncworker_core::{Action, Message, Settlement};
use bytes::Bytes;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use serde::de::DeserializeOwned;

use crate::settle::ChannelLife;

/// The header [`Action::RequeueTail`] increments on each copy it publishes.
pub const REQUEUE_COUNT_HEADER: &str = "x-asyncworker-requeues";

/// The header quorum queues count redeliveries in (see [`AmqpMessage::delivery_count`]).
const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";

/// What a route knows about one of its queues, shared by every delivery from it.
#[derive(Debug)]
pub(crate) struct QueueMeta {
    pub(crate) name: Arc<str>,
    pub(crate) route: Arc<str>,
    pub(crate) on_decode_error: Action,
}

/// One delivery's data, shared by the message's clones and its settler.
pub(crate) struct Delivery {
    pub(crate) payload: Bytes,
    pub(crate) delivery_tag: u64,
    pub(crate) exchange: ShortString,
    pub(crate) routing_key: ShortString,
    pub(crate) redelivered: bool,
    pub(crate) properties: BasicProperties,
    pub(crate) queue: Arc<QueueMeta>,
    /// Set when the source discards the delivery before handing it out (its channel died):
    /// the broker redelivers it, so the requeue of the dropped message has nothing to do.
    pub(crate) discarded: AtomicBool,
    /// The channel the delivery arrived on.
    pub(crate) channel: Arc<ChannelLife>,
}

impl Delivery {
    pub(crate) fn is_discarded(&self) -> bool {
        self.discarded.load(Ordering::Acquire)
    }

    pub(crate) fn requeue_count(&self) -> u64 {
        self.properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get(REQUEUE_COUNT_HEADER))
            .and_then(int_value)
            .unwrap_or(0)
    }
}

/// A non-negative integer header value of any AMQP integer type.
fn int_value(v: &AMQPValue) -> Option<u64> {
    match *v {
        AMQPValue::ShortShortInt(i) => u64::try_from(i).ok(),
        AMQPValue::ShortShortUInt(i) => Some(u64::from(i)),
        AMQPValue::ShortInt(i) => u64::try_from(i).ok(),
        AMQPValue::ShortUInt(i) => Some(u64::from(i)),
        AMQPValue::LongInt(i) => u64::try_from(i).ok(),
        AMQPValue::LongUInt(i) => Some(u64::from(i)),
        AMQPValue::LongLongInt(i) => u64::try_from(i).ok(),
        AMQPValue::Timestamp(i) => Some(i),
        _ => None,
    }
}

/// A message consumed from RabbitMQ.
///
/// Cheap to clone: the body is a [`Bytes`] and everything else sits behind an `Arc`; clones
/// share one [`Settlement`], so a mark made on any clone counts. Mark it with the
/// [`Message`] methods ([`accept`](Message::accept), [`reject`](Message::reject),
/// [`requeue`](Message::requeue), [`mark`](Message::mark) with
/// [`Action::RequeueTail`]); the Ack layer settles it after the handler.
///
/// `Debug` shows the queue, delivery tag, routing key and size, not the body.
#[derive(Clone)]
pub struct AmqpMessage {
    pub(crate) delivery: Arc<Delivery>,
    settlement: Settlement,
}

impl AmqpMessage {
    pub(crate) fn new(delivery: Arc<Delivery>, settlement: Settlement) -> Self {
        AmqpMessage {
            delivery,
            settlement,
        }
    }

    /// Whether the channel this message arrived on is gone (its settlements can no longer
    /// reach the broker, which redelivers the message).
    pub fn is_stale(&self) -> bool {
        self.delivery.channel.is_dead()
    }

    /// Give up a message that was never handed out: its settlement becomes a no-op requeue.
    pub(crate) fn discard(self) {
        self.delivery.discarded.store(true, Ordering::Release);
    }

    /// The body.
    pub fn body(&self) -> &Bytes {
        &self.delivery.payload
    }

    /// Decode the body as JSON into `T`, or reject the message: when it is not the JSON `T`
    /// expects, mark the message with the route's decode-error action (by default
    /// [`Action::Reject`]: dropped, or dead-lettered when the queue has a dead-letter
    /// exchange), log why, count it in `asyncworker_amqp_decode_failures_total{queue}`, and
    /// return the error.
    ///
    /// Because a mark beats the handler's error, a handler can simply `?` the result: the
    /// undecodable message is rejected instead of being requeued forever, and the batch's
    /// other messages get the route's error policy. A handler that would rather go on with
    /// the rest of the batch skips the message instead. [`Message::json`] decodes without
    /// marking.
    ///
    /// ```no_run
    /// use asyncworker_amqp::AmqpMessage;
    /// use asyncworker_core::BoxError;
    ///
    /// #[derive(serde::Deserialize)]
    /// struct Count { n: u64 }
    ///
    /// async fn handle(batch: Vec<AmqpMessage>) -> Result<(), BoxError> {
    ///     for msg in &batch {
    ///         // A poison message is marked (rejected) and skipped; the others are acked.
    ///         let Ok(count) = msg.json_or_reject::<Count>() else { continue };
    ///         println!("{}", count.n);
    ///     }
    ///     Ok(())
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// A [`DecodeError`] naming the queue and delivery tag, with serde's error as its source.
    pub fn json_or_reject<T: DeserializeOwned>(&self) -> Result<T, DecodeError> {
        match serde_json::from_slice(self.body()) {
            Ok(value) => Ok(value),
            Err(source) => {
                let d = &*self.delivery;
                let action = d.queue.on_decode_error;
                self.settlement.mark(action);
                tracing::warn!(
                    route = %d.queue.route,
                    queue = %d.queue.name,
                    delivery_tag = d.delivery_tag,
                    message_id = self.message_id().unwrap_or(""),
                    type_name = std::any::type_name::<T>(),
                    %action,
                    error = %source,
                    "message body is not the JSON the handler expects; marking it",
                );
                metrics::counter!(
                    "asyncworker_amqp_decode_failures_total",
                    "queue" => d.queue.name.to_string(),
                )
                .increment(1);
                Err(DecodeError {
                    queue: d.queue.name.clone(),
                    delivery_tag: d.delivery_tag,
                    action,
                    source,
                })
            }
        }
    }

    /// Decode every message of a batch with [`AmqpMessage::json_or_reject`]: yields the messages
    /// that decode, with their value; the others are marked with the route's decode-error
    /// action (default reject), logged and counted, and skipped. The handler of a typed route
    /// in one line:
    ///
    /// ```no_run
    /// use asyncworker_amqp::AmqpMessage;
    /// use asyncworker_core::BoxError;
    ///
    /// #[derive(serde::Deserialize)]
    /// struct Count { n: u64 }
    ///
    /// async fn handle(batch: Vec<AmqpMessage>) -> Result<(), BoxError> {
    ///     for (_msg, count) in AmqpMessage::json_or_reject_each::<Count>(&batch) {
    ///         println!("{}", count.n);
    ///     }
    ///     Ok(())
    /// }
    /// ```
    pub fn json_or_reject_each<T: DeserializeOwned>(
        batch: &[AmqpMessage],
    ) -> impl Iterator<Item = (&AmqpMessage, T)> {
        batch
            .iter()
            .filter_map(|msg| msg.json_or_reject().ok().map(|value| (msg, value)))
    }

    /// The queue the message was consumed from.
    pub fn queue(&self) -> &str {
        &self.delivery.queue.name
    }

    /// The delivery tag (unique per channel; a reconnect starts over).
    pub fn delivery_tag(&self) -> u64 {
        self.delivery.delivery_tag
    }

    /// The exchange the message was published to (`""` for the default exchange).
    pub fn exchange(&self) -> &str {
        self.delivery.exchange.as_str()
    }

    /// The routing key it was published with.
    pub fn routing_key(&self) -> &str {
        self.delivery.routing_key.as_str()
    }

    /// Whether the broker delivered it before (it was requeued, or its channel died
    /// unsettled).
    pub fn redelivered(&self) -> bool {
        self.delivery.redelivered
    }

    /// All the AMQP properties, as lapin has them.
    pub fn properties(&self) -> &BasicProperties {
        &self.delivery.properties
    }

    /// The application headers, if any.
    pub fn headers(&self) -> Option<&FieldTable> {
        self.delivery.properties.headers().as_ref()
    }

    /// One application header.
    pub fn header(&self, name: &str) -> Option<&AMQPValue> {
        self.headers().and_then(|h| h.inner().get(name))
    }

    /// How many times [`Action::RequeueTail`] has sent this message back to its queue (the
    /// [`REQUEUE_COUNT_HEADER`] header; 0 when absent).
    pub fn requeue_count(&self) -> u64 {
        self.delivery.requeue_count()
    }

    /// How many times the broker delivered this message before (its `x-delivery-count`
    /// header), or `None` when the header is absent.
    ///
    /// Quorum queues (`x-queue-type: quorum`) set this header on a message they deliver again
    /// after it was requeued (a nack or reject with requeue, or its channel closing with the
    /// message unacknowledged): RabbitMQ 3.10 sends `None` on the first delivery, then
    /// `Some(1)`, `Some(2)`, … With an `x-delivery-limit` of `n` on the queue, the broker
    /// dead-letters (or drops) the message instead of delivering it once more after the
    /// delivery with count `n`: a handler sees it at most `n + 1` times. Classic queues
    /// never set it (`None`; see [`redelivered`](Self::redelivered)), and
    /// [`Action::RequeueTail`] copies do not carry it over as a count of their own (see
    /// [`requeue_count`](Self::requeue_count)). Any AMQP integer type is accepted; a
    /// negative or non-integer value reads as `None`.
    pub fn delivery_count(&self) -> Option<u64> {
        self.header(DELIVERY_COUNT_HEADER).and_then(int_value)
    }

    /// The `content-type` property.
    pub fn content_type(&self) -> Option<&str> {
        short(self.delivery.properties.content_type())
    }

    /// The `content-encoding` property.
    pub fn content_encoding(&self) -> Option<&str> {
        short(self.delivery.properties.content_encoding())
    }

    /// The `correlation-id` property.
    pub fn correlation_id(&self) -> Option<&str> {
        short(self.delivery.properties.correlation_id())
    }

    /// The `message-id` property.
    pub fn message_id(&self) -> Option<&str> {
        short(self.delivery.properties.message_id())
    }

    /// The `reply-to` property.
    pub fn reply_to(&self) -> Option<&str> {
        short(self.delivery.properties.reply_to())
    }

    /// The `type` property.
    pub fn kind(&self) -> Option<&str> {
        short(self.delivery.properties.kind())
    }

    /// The `app-id` property.
    pub fn app_id(&self) -> Option<&str> {
        short(self.delivery.properties.app_id())
    }

    /// The `user-id` property (RabbitMQ validates it against the publishing user).
    pub fn user_id(&self) -> Option<&str> {
        short(self.delivery.properties.user_id())
    }

    /// The `expiration` property (a per-message TTL in milliseconds, as text).
    pub fn expiration(&self) -> Option<&str> {
        short(self.delivery.properties.expiration())
    }

    /// The `priority` property.
    pub fn priority(&self) -> Option<u8> {
        *self.delivery.properties.priority()
    }

    /// The `delivery-mode` property (2 for persistent).
    pub fn delivery_mode(&self) -> Option<u8> {
        *self.delivery.properties.delivery_mode()
    }

    /// The `timestamp` property, in seconds since the Unix epoch.
    pub fn timestamp(&self) -> Option<u64> {
        *self.delivery.properties.timestamp()
    }

    /// The `timestamp` property as a [`SystemTime`].
    pub fn timestamp_time(&self) -> Option<SystemTime> {
        self.timestamp()
            .and_then(|s| UNIX_EPOCH.checked_add(Duration::from_secs(s)))
    }
}

fn short(s: &Option<ShortString>) -> Option<&str> {
    s.as_ref().map(ShortString::as_str)
}

impl Message for AmqpMessage {
    fn payload(&self) -> &Bytes {
        &self.delivery.payload
    }

    fn settlement(&self) -> &Settlement {
        &self.settlement
    }
}

impl fmt::Debug for AmqpMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = &*self.delivery;
        f.debug_struct("AmqpMessage")
            .field("queue", &&*d.queue.name)
            .field("delivery_tag", &d.delivery_tag)
            .field("exchange", &d.exchange.as_str())
            .field("routing_key", &d.routing_key.as_str())
            .field("redelivered", &d.redelivered)
            .field("message_id", &self.message_id())
            .field("len", &d.payload.len())
            .field("settlement", &self.settlement)
            .finish()
    }
}

/// A body that is not the JSON the handler asked for; the message has been marked with the
/// route's decode-error action.
#[derive(Debug, thiserror::Error)]
#[error("message {delivery_tag} from queue {queue:?} is not the expected JSON (marked {action})")]
pub struct DecodeError {
    queue: Arc<str>,
    delivery_tag: u64,
    action: Action,
    source: serde_json::Error,
}

impl DecodeError {
    /// The queue of the message.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The message's delivery tag.
    pub fn delivery_tag(&self) -> u64 {
        self.delivery_tag
    }

    /// The action the message was marked with.
    pub fn action(&self) -> Action {
        self.action
    }

    /// serde's error.
    pub fn serde_error(&self) -> &serde_json::Error {
        &self.source
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use asyncworker_core::SettleError;
    use std::sync::Mutex;

    pub(crate) fn delivery(tag: u64, body: &[u8], headers: Option<FieldTable>) -> Arc<Delivery> {
        let mut properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_message_id("m-1".into())
            .with_timestamp(1_700_000_000);
        if let Some(h) = headers {
            properties = properties.with_headers(h);
        }
        Arc::new(Delivery {
            payload: Bytes::copy_from_slice(body),
            delivery_tag: tag,
            exchange: "ex".into(),
            routing_key: "rk".into(),
            redelivered: true,
            properties,
            queue: Arc::new(QueueMeta {
                name: "q".into(),
                route: "r".into(),
                on_decode_error: Action::Reject,
            }),
            discarded: AtomicBool::new(false),
            channel: Arc::new(ChannelLife::new(Default::default(), 1)),
        })
    }

    #[test]
    fn accessors_read_the_delivery() {
        let mut h = FieldTable::default();
        h.insert(REQUEUE_COUNT_HEADER.into(), AMQPValue::LongInt(3));
        let msg = AmqpMessage::new(delivery(7, b"{\"a\":1}", Some(h)), Settlement::noop());
        assert_eq!(msg.queue(), "q");
        assert_eq!(msg.delivery_tag(), 7);
        assert_eq!(msg.exchange(), "ex");
        assert_eq!(msg.routing_key(), "rk");
        assert!(msg.redelivered());
        assert_eq!(msg.content_type(), Some("application/json"));
        assert_eq!(msg.message_id(), Some("m-1"));
        assert_eq!(msg.timestamp(), Some(1_700_000_000));
        assert_eq!(msg.requeue_count(), 3);
        assert_eq!(msg.text().unwrap(), "{\"a\":1}");
        let v: serde_json::Value = msg.json().unwrap();
        assert_eq!(v["a"], 1);
        assert!(!format!("{msg:?}").contains("\"a\""));
    }

    /// The broker's `x-delivery-count` is read whatever integer type it comes as; a
    /// missing, negative or non-integer one reads as `None`.
    #[test]
    fn delivery_count_reads_the_quorum_header() {
        let with = |value: Option<AMQPValue>| {
            let headers = value.map(|v| {
                let mut h = FieldTable::default();
                h.insert(DELIVERY_COUNT_HEADER.into(), v);
                h
            });
            AmqpMessage::new(delivery(1, b"x", headers), Settlement::noop()).delivery_count()
        };
        assert_eq!(with(None), None);
        assert_eq!(with(Some(AMQPValue::LongLongInt(2))), Some(2));
        assert_eq!(with(Some(AMQPValue::LongInt(1))), Some(1));
        assert_eq!(with(Some(AMQPValue::ShortShortUInt(3))), Some(3));
        assert_eq!(with(Some(AMQPValue::LongLongInt(-1))), None);
        assert_eq!(with(Some(AMQPValue::LongString("2".into()))), None);
    }

    #[test]
    fn decode_failure_marks_with_the_route_policy() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let settlement = Settlement::new(move |a: Action| -> Result<(), SettleError> {
            s.lock().unwrap().push(a);
            Ok(())
        });
        let msg = AmqpMessage::new(delivery(1, b"not json", None), settlement);
        let err = msg.json_or_reject::<serde_json::Value>().unwrap_err();
        assert_eq!(err.action(), Action::Reject);
        assert_eq!(err.queue(), "q");
        assert!(err.to_string().contains("queue \"q\""));
        let cause = std::error::Error::source(&err).map(ToString::to_string);
        assert_eq!(cause, Some(err.serde_error().to_string()));
        assert!(!err.to_string().contains(&err.serde_error().to_string()));
        assert_eq!(msg.settlement().marked(), Some(Action::Reject));
        // The mark wins over the route's error policy.
        msg.settlement().settle_marked_or(Action::Requeue).unwrap();
        assert_eq!(*seen.lock().unwrap(), vec![Action::Reject]);

        let batch = [
            AmqpMessage::new(delivery(3, b"[2]", None), Settlement::noop()),
            AmqpMessage::new(delivery(4, b"{", None), Settlement::noop()),
        ];
        let decoded: Vec<_> = AmqpMessage::json_or_reject_each::<Vec<u8>>(&batch)
            .map(|(m, v)| (m.delivery_tag(), v))
            .collect();
        assert_eq!(decoded, [(3, vec![2])]);
        assert_eq!(batch[0].settlement().marked(), None);
        assert_eq!(batch[1].settlement().marked(), Some(Action::Reject));

        let ok = AmqpMessage::new(delivery(2, b"[1]", None), Settlement::noop());
        assert_eq!(ok.json_or_reject::<Vec<u8>>().unwrap(), vec![1]);
        assert_eq!(ok.settlement().marked(), None);
    }
}
