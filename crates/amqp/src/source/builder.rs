//! [`AmqpSource`] and [`AmqpSourceBuilder`]: a route's queues, vhost and policies.

use std::sync::Arc;

use asyncworker_core::{Action, Error};

use super::Callback;
use crate::config::{AmqpConfig, Connections, check_short_string};
use crate::error::AmqpError;

/// Consumes a route's queues from RabbitMQ: an [`asyncworker_core::Source`] of
/// [`AmqpMessage`](crate::AmqpMessage)s.
///
/// Built with [`AmqpSource::builder`] (or [`Connections::source`]) and started by the runtime
/// with [`Source::into_stream`](asyncworker_core::Source::into_stream). The stream:
///
/// - opens one connection for the route (named `asyncworker route <route>` on the broker
///   unless the configuration has a connection name) and, on it, **one channel per queue**,
///   each with `basic.qos(prefetch)` and a consumer. A queue that cannot be consumed
///   (missing, access refused) yields an [`AmqpError`] naming it and is retried with backoff,
///   while the route's other queues keep being consumed;
/// - sets the route's [`Readiness`](asyncworker_core::Readiness) while every queue is being
///   consumed;
/// - reconnects after a connection failure or a lost connection with the configuration's
///   [`Backoff`] (exponential, capped, jittered), calling the [`on_connection_error`]
///   callback with the error and the attempt number (which restarts at 1 for each outage),
///   then re-applies the QoS and consumes every queue again. Every reconnect waits: the delay
///   grows with each failure in a row — a failed attempt, or a connection lost before the
///   route was ready for 30 s — and starts over only once the route has stayed ready (every
///   queue consumed) that long, so a broker that closes each connection right after it was
///   made is not hammered. A queue whose consumer keeps ending right after it started is
///   retried the same way. Settlements of messages delivered before the outage return
///   [`SettleError::ChannelClosed`], are logged and counted, and are never sent on the new
///   connection;
/// - on shutdown, cancels its consumers (`basic.cancel`) and ends, but keeps each channel
///   open until every message it handed out has been settled; then closes the channels and
///   the connection.
///
/// The source never declares its queues: they must exist, declared by their owner with the
/// arguments they need (`x-queue-type: quorum`, `x-delivery-limit`,
/// `x-dead-letter-exchange`, `x-single-active-consumer`, …), which consuming leaves alone, so a
/// queue declared elsewhere is never redeclared differently (no 406 PRECONDITION_FAILED).
/// Quorum queues count redeliveries in [`AmqpMessage::delivery_count`](crate::AmqpMessage::delivery_count);
/// see `docs/quorum.md`.
///
/// A message marked [`Action::RequeueTail`] is copied to the tail of its queue (default
/// exchange, routing key = queue name, same properties and headers, the
/// [`REQUEUE_COUNT_HEADER`](crate::REQUEUE_COUNT_HEADER) incremented) on a connection of its
/// own (`<connection name> (requeue-tail copies)`, opened on first use, within 10 s), one copy
/// at a time: under a memory or disk alarm the broker blocks a connection that publishes, and
/// the consuming connection must keep carrying the acks of every queue of the route. The
/// original is acked only once the broker confirmed the copy. When the copy cannot be published (unroutable, nacked, not confirmed within 30 s), the
/// original is requeued instead: nothing is lost. Past the
/// [`requeue_tail_cap`](AmqpSourceBuilder::requeue_tail_cap), the message is rejected
/// (dead-lettered) instead.
///
/// [`max_in_flight`](asyncworker_core::Source::max_in_flight) is the prefetch, so the core's Bulk layer clamps
/// the batch size to it: a batch can always fill. (With several queues the route may hold up
/// to prefetch × queues messages.)
///
/// # Metrics
///
/// `asyncworker_amqp_connection_state{route, host, port, vhost}` (per endpoint: 1 connected to it, 0 not),
/// `asyncworker_amqp_reconnects_total{host}` (connection attempts after a failure or a lost
/// connection), `asyncworker_amqp_connection_failures_total{host, kind}`,
/// `asyncworker_amqp_connection_blocked_total{host}`,
/// `asyncworker_amqp_connection_unblocked_total{host}` and
/// `asyncworker_amqp_connection_blocked{route, host}` (the consuming connection's and that of
/// the requeue-tail copies),
/// `asyncworker_amqp_consume_failures_total{queue, kind}`,
/// `asyncworker_amqp_settlements_total{queue, action}` (settlements requested on a live
/// channel), `asyncworker_amqp_settle_failures_total{queue, action, reason}`,
/// `asyncworker_amqp_requeue_tail_total{queue, outcome}`,
/// `asyncworker_amqp_decode_failures_total{queue}`.
///
/// ```no_run
/// use asyncworker_amqp::{AmqpConfig, AmqpSource};
/// use asyncworker_core::Action;
///
/// # fn main() -> Result<(), asyncworker_core::Error> {
/// let config = AmqpConfig::from_url("amqp://guest:guest@127.0.0.1:5672/%2f")?;
/// let source = AmqpSource::builder(config, ["asgard/counts", "asgard/counts/errors"])
///     .vhost("/")
///     .on_decode_error(Action::Reject)
///     .requeue_tail_cap(5)
///     .on_connection_error(|error, attempt| eprintln!("attempt {attempt}: {error}"))
///     .build()?;
/// # let _ = source;
/// # Ok(())
/// # }
/// ```
///
/// [`Backoff`]: asyncworker_core::Backoff
/// [`on_connection_error`]: AmqpSourceBuilder::on_connection_error
/// [`SettleError::ChannelClosed`]: asyncworker_core::SettleError::ChannelClosed
#[derive(Debug)]
pub struct AmqpSource {
    pub(super) config: AmqpConfig,
    pub(super) vhost: String,
    pub(super) queues: Vec<String>,
    pub(super) on_decode_error: Action,
    pub(super) requeue_tail_cap: Option<u64>,
    pub(super) on_connection_error: Option<Callback>,
}

impl AmqpSource {
    /// A builder for a source consuming `queues` with `config`.
    pub fn builder<I, Q>(config: AmqpConfig, queues: I) -> AmqpSourceBuilder
    where
        I: IntoIterator<Item = Q>,
        Q: Into<String>,
    {
        AmqpSourceBuilder {
            vhost: None,
            queues: queues.into_iter().map(Into::into).collect(),
            config,
            on_decode_error: Action::Reject,
            requeue_tail_cap: None,
            on_connection_error: None,
        }
    }

    /// The queues this source consumes.
    pub fn queues(&self) -> &[String] {
        &self.queues
    }

    /// The virtual host it consumes them on.
    pub fn vhost(&self) -> &str {
        &self.vhost
    }

    /// Its connection configuration.
    pub fn config(&self) -> &AmqpConfig {
        &self.config
    }
}

/// Builds an [`AmqpSource`]; checks happen in [`AmqpSourceBuilder::build`].
#[derive(Debug)]
#[must_use = "a builder does nothing until .build() is called"]
pub struct AmqpSourceBuilder {
    config: AmqpConfig,
    vhost: Option<String>,
    queues: Vec<String>,
    on_decode_error: Action,
    requeue_tail_cap: Option<u64>,
    on_connection_error: Option<Callback>,
}

impl AmqpSourceBuilder {
    /// Consume on this virtual host instead of the configuration's.
    pub fn vhost(mut self, vhost: impl Into<String>) -> Self {
        self.vhost = Some(vhost.into());
        self
    }

    /// The action [`AmqpMessage::json_or_reject`](crate::AmqpMessage::json_or_reject) marks a
    /// message with when its body is not the expected JSON. Default [`Action::Reject`]: dropped
    /// or dead-lettered, never requeued in a loop.
    pub fn on_decode_error(mut self, action: Action) -> Self {
        self.on_decode_error = action;
        self
    }

    /// After this many [`Action::RequeueTail`] round trips (counted in the
    /// [`REQUEUE_COUNT_HEADER`](crate::REQUEUE_COUNT_HEADER) header), a message marked
    /// `RequeueTail` is rejected instead: dead-lettered when the queue has a dead-letter
    /// exchange, dropped otherwise. No cap by default.
    pub fn requeue_tail_cap(mut self, cap: u64) -> Self {
        self.requeue_tail_cap = Some(cap);
        self
    }

    /// Call `callback(error, attempt)` on each failed connection attempt. `attempt` is 1 for
    /// the first failure of an outage and restarts at 1 after the connection comes back.
    ///
    /// The callback runs on the source's task: keep it short (spawn for anything slow).
    pub fn on_connection_error<F>(mut self, callback: F) -> Self
    where
        F: Fn(&AmqpError, u32) + Send + Sync + 'static,
    {
        self.on_connection_error = Some(Callback(Arc::new(callback)));
        self
    }

    /// Check and build.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when there is no queue, a queue name is empty, repeated or longer
    /// than 255 bytes, or the vhost is too long.
    pub fn build(self) -> Result<AmqpSource, Error> {
        if self.queues.is_empty() {
            return Err(Error::config("an AMQP route needs at least one queue"));
        }
        for (i, q) in self.queues.iter().enumerate() {
            if q.is_empty() {
                return Err(Error::config("an AMQP queue name must not be empty"));
            }
            check_short_string(&format!("queue name {q:?}"), q)?;
            if self.queues[..i].contains(q) {
                return Err(Error::config(format!(
                    "queue {q:?} is listed twice in one route"
                )));
            }
        }
        let vhost = self.vhost.unwrap_or_else(|| self.config.vhost().to_owned());
        check_short_string("vhost", &vhost)?;
        Ok(AmqpSource {
            config: self.config,
            vhost,
            queues: self.queues,
            on_decode_error: self.on_decode_error,
            requeue_tail_cap: self.requeue_tail_cap,
            on_connection_error: self.on_connection_error,
        })
    }
}

impl Connections {
    /// A source builder for `route`, consuming `queues` with the connection named `choice`, or
    /// with the only one registered.
    ///
    /// # Errors
    ///
    /// As [`Connections::select`].
    pub fn source<I, Q>(
        &self,
        route: &str,
        choice: Option<&str>,
        queues: I,
    ) -> Result<AmqpSourceBuilder, Error>
    where
        I: IntoIterator<Item = Q>,
        Q: Into<String>,
    {
        let config = self.select(route, choice)?.clone();
        Ok(AmqpSource::builder(config, queues))
    }
}
