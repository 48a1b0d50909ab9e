//! The task that consumes one queue of a route: its own channel, QoS, consumer, settlements
//! and requeue-tail copies; retried with backoff when the queue cannot be consumed.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use asyncworker_core::{Action, Readiness, Settlement};
use bytes::Bytes;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Confirmation, Connection};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error::{AmqpError, Endpoint};
use crate::message::{AmqpMessage, Delivery, QueueMeta, REQUEUE_COUNT_HEADER};
use crate::settle::{AmqpSettle, ChannelLife, Cmd, Outstanding, count_failure};
use asyncworker_core::Backoff;

/// How long a consumer cancellation may take at shutdown.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a requeue-tail copy may take to be confirmed before the original is requeued
/// instead (a blocked connection would otherwise hold it, and a graceful shutdown, forever).
const REQUEUE_TAIL_TIMEOUT: Duration = Duration::from_secs(30);
/// How many settlement requests one pass of the channel task takes at most.
const MAX_BATCH: usize = 4096;
/// How long acknowledgements may wait to be coalesced with later ones (see
/// `ChannelState::process`).
const ACK_DELAY: Duration = Duration::from_millis(5);

pub(crate) type Item = Result<AmqpMessage, AmqpError>;

/// What every queue task of a route shares.
pub(crate) struct RouteShared {
    pub(crate) route: Arc<str>,
    pub(crate) endpoint: Endpoint,
    pub(crate) prefetch: u16,
    pub(crate) backoff: Backoff,
    /// Failed connection attempts in a row before giving up (`None`: never).
    pub(crate) max_attempts: Option<u32>,
    pub(crate) requeue_tail_cap: Option<u64>,
    /// Graceful stop: the runtime's shutdown, or the stream being dropped.
    pub(crate) stop: CancellationToken,
    pub(crate) readiness: Readiness,
    /// Queues currently consuming, against the route's queue count.
    pub(crate) consuming: AtomicUsize,
    pub(crate) queue_count: usize,
    /// Channels opened so far, to number channel generations.
    pub(crate) channels_opened: AtomicU64,
    /// What ended the current connection, as first noticed.
    pub(crate) loss_reason: Mutex<Option<String>>,
}

impl RouteShared {
    /// Record why the connection was lost, unless a reason is already known.
    pub(crate) fn note_loss(&self, reason: impl FnOnce() -> String) {
        let mut slot = self.loss_reason.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(reason());
        }
    }

    /// Take the recorded reason of the connection's loss.
    pub(crate) fn take_loss(&self) -> Option<String> {
        self.loss_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    fn consuming_changed(&self, delta: isize) {
        let now = if delta > 0 {
            self.consuming
                .fetch_add(1, Ordering::AcqRel)
                .saturating_add(1)
        } else {
            self.consuming
                .fetch_sub(1, Ordering::AcqRel)
                .saturating_sub(1)
        };
        self.readiness
            .set(now == self.queue_count && !self.stop.is_cancelled());
    }
}

/// Why a channel's service ended.
enum Ended {
    /// Shutdown: intake stopped, every handed-out delivery settled, channel closed.
    Shutdown,
    /// The connection is gone.
    ConnectionLost,
    /// The consumer or channel ended while the connection stayed up.
    Channel(String),
}

/// One queue of a route, on one connection.
pub(crate) struct QueueTask {
    pub(crate) shared: Arc<RouteShared>,
    pub(crate) queue: Arc<QueueMeta>,
    pub(crate) conn: Arc<Connection>,
    pub(crate) connection_lost: CancellationToken,
    pub(crate) out: Option<mpsc::UnboundedSender<Item>>,
}

impl QueueTask {
    fn emit(&self, item: Item) {
        if let Some(out) = &self.out {
            // A closed receiver means the stream was dropped; `stop` handles that.
            let _ = out.send(item);
        }
    }

    fn connection_alive(&self) -> bool {
        if self.connection_lost.is_cancelled() {
            return false;
        }
        if !self.conn.status().connected() {
            self.connection_lost.cancel();
            return false;
        }
        true
    }

    pub(crate) async fn run(mut self) {
        let mut attempt = 0u32;
        loop {
            if self.shared.stop.is_cancelled() || !self.connection_alive() {
                return;
            }
            let opened = tokio::select! {
                biased;
                () = self.connection_lost.cancelled() => return,
                () = self.shared.stop.cancelled() => return,
                opened = self.open() => opened,
            };
            let failure = match opened {
                Ok((channel, consumer)) => {
                    attempt = 0;
                    match self.serve(channel, consumer).await {
                        Ended::Shutdown | Ended::ConnectionLost => return,
                        Ended::Channel(reason) => {
                            if !self.connection_alive() {
                                return;
                            }
                            let error = AmqpError::ConsumerEnded {
                                queue: self.queue.name.to_string(),
                                endpoint: self.shared.endpoint.clone(),
                                reason,
                            };
                            tracing::warn!(
                                route = %self.shared.route,
                                queue = %self.queue.name,
                                host = %self.shared.endpoint.host(),
                                vhost = %self.shared.endpoint.vhost(),
                                error = %error,
                                "consumer ended; consuming the queue again",
                            );
                            self.emit(Err(error));
                            None
                        }
                    }
                }
                Err(error) => {
                    if !self.connection_alive() {
                        return;
                    }
                    Some(error)
                }
            };
            attempt = attempt.saturating_add(1);
            let delay = self.shared.backoff.delay(attempt);
            if let Some(source) = failure {
                let error = AmqpError::consume(
                    self.shared.endpoint.clone(),
                    &self.queue.name,
                    delay,
                    source,
                );
                tracing::warn!(
                    route = %self.shared.route,
                    queue = %self.queue.name,
                    host = %self.shared.endpoint.host(),
                    vhost = %self.shared.endpoint.vhost(),
                    attempt,
                    error = %error,
                    "cannot consume queue",
                );
                metrics::counter!(
                    "asyncworker_amqp_consume_failures_total",
                    "queue" => self.queue.name.to_string(),
                    "kind" => error.kind(),
                )
                .increment(1);
                self.emit(Err(error));
            }
            tokio::select! {
                biased;
                () = self.connection_lost.cancelled() => return,
                () = self.shared.stop.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Open a channel, apply the QoS and start consuming.
    async fn open(&self) -> Result<(Channel, lapin::Consumer), lapin::Error> {
        let channel = self.conn.create_channel().await?;
        let result = async {
            channel
                .basic_qos(self.shared.prefetch, BasicQosOptions { global: false })
                .await?;
            channel
                .basic_consume(
                    ShortString::from(&*self.queue.name),
                    ShortString::default(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
        }
        .await;
        match result {
            Ok(consumer) => Ok((channel, consumer)),
            Err(e) => {
                // A failed consume usually closed the channel already; make sure.
                let _ = channel.close(200, "consume failed".into()).await;
                Err(e)
            }
        }
    }

    /// Hand out the channel's deliveries and settle them until shutdown or the channel ends.
    async fn serve(&mut self, channel: Channel, mut consumer: lapin::Consumer) -> Ended {
        let generation = self.shared.channels_opened.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let life = Arc::new(ChannelLife::new(self.connection_lost.clone(), generation));
        let mut ch = ChannelState {
            conn: self.conn.clone(),
            channel,
            publisher: None,
            outstanding: Outstanding::default(),
            tx,
            queue: self.queue.clone(),
            cap: self.shared.requeue_tail_cap,
            counters: ChannelState::counters(&self.queue.name),
        };
        tracing::info!(
            route = %self.shared.route,
            queue = %self.queue.name,
            host = %self.shared.endpoint.host(),
            vhost = %self.shared.endpoint.vhost(),
            prefetch = self.shared.prefetch,
            channel_generation = generation,
            "consuming",
        );
        self.shared.consuming_changed(1);
        let mut consuming = true;
        let mut intake = true;
        let mut batch = Vec::new();
        // Coalescing: acks wait (up to ACK_DELAY) until half the prefetch can go in one
        // `multiple` ack — fewer frames for the broker, which is the bottleneck — unless every
        // handed-out delivery is settled already.
        let ack_threshold = usize::from(self.shared.prefetch / 2).max(1);
        let ack_timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(ack_timer);
        let mut acks_waiting = false;
        let ended = loop {
            if !intake && ch.outstanding.live() == 0 {
                break Ended::Shutdown;
            }
            tokio::select! {
                biased;
                () = self.connection_lost.cancelled() => break Ended::ConnectionLost,
                () = self.shared.stop.cancelled(), if intake => {
                    intake = false;
                    self.shared.consuming_changed(-1);
                    consuming = false;
                    // Stop intake; no more deliveries are handed out. Whatever the consumer
                    // still buffers is never handed out: the broker requeues it when the
                    // channel closes.
                    let tag = consumer.tag();
                    let cancel = ch.channel.basic_cancel(tag, BasicCancelOptions::default());
                    match tokio::time::timeout(CANCEL_TIMEOUT, cancel).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::debug!(queue = %self.queue.name, error = %e, "basic.cancel failed"),
                        Err(_) => tracing::warn!(queue = %self.queue.name, "basic.cancel not confirmed in time"),
                    }
                    // Consumers cancelled: this task's part of the stream is over.
                    self.out = None;
                    tracing::debug!(
                        route = %self.shared.route,
                        queue = %self.queue.name,
                        unsettled = ch.outstanding.live(),
                        "consumer cancelled; waiting for handed-out messages to be settled",
                    );
                }
                Some(cmd) = rx.recv() => {
                    batch.push(cmd);
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(cmd) => batch.push(cmd),
                            Err(_) => break,
                        }
                    }
                    // After shutdown nothing is worth waiting for.
                    let threshold = if intake { ack_threshold } else { 0 };
                    match ch.process(&mut batch, threshold).await {
                        Ok(true) if !acks_waiting => {
                            acks_waiting = true;
                            ack_timer.as_mut().reset(tokio::time::Instant::now() + ACK_DELAY);
                        }
                        Ok(true) => {}
                        Ok(false) => acks_waiting = false,
                        Err(e) => break if self.connection_alive() {
                            Ended::Channel(format!("a settlement failed: {e}"))
                        } else {
                            self.shared.note_loss(|| e.to_string());
                            Ended::ConnectionLost
                        },
                    }
                }
                () = &mut ack_timer, if acks_waiting => {
                    acks_waiting = false;
                    if let Err(e) = ch.process(&mut batch, 0).await {
                        break if self.connection_alive() {
                            Ended::Channel(format!("a settlement failed: {e}"))
                        } else {
                            self.shared.note_loss(|| e.to_string());
                            Ended::ConnectionLost
                        };
                    }
                }
                next = consumer.next(), if intake => match next {
                    Some(Ok(d)) => {
                        ch.outstanding.push(d.delivery_tag);
                        let delivery = Arc::new(Delivery {
                            payload: Bytes::from(d.data),
                            delivery_tag: d.delivery_tag,
                            exchange: d.exchange,
                            routing_key: d.routing_key,
                            redelivered: d.redelivered,
                            properties: d.properties,
                            queue: self.queue.clone(),
                            discarded: AtomicBool::new(false),
                            channel: life.clone(),
                        });
                        let settlement = Settlement::new(AmqpSettle {
                            tx: ch.tx.clone(),
                            delivery: delivery.clone(),
                        });
                        self.emit(Ok(AmqpMessage::new(delivery, settlement)));
                    }
                    Some(Err(e)) => {
                        break if self.connection_alive() {
                            Ended::Channel(e.to_string())
                        } else {
                            self.shared.note_loss(|| e.to_string());
                            Ended::ConnectionLost
                        };
                    }
                    None => {
                        break if self.connection_alive() {
                            Ended::Channel("the broker cancelled the consumer (was the queue deleted?)".into())
                        } else {
                            Ended::ConnectionLost
                        };
                    }
                },
            }
        };
        life.closed.store(true, Ordering::Release);
        if consuming {
            self.shared.consuming_changed(-1);
        }
        // Requests that were queued but will never be sent: their deliveries go back to the
        // queue with the channel.
        rx.close();
        while let Ok(cmd) = rx.try_recv() {
            if let Cmd::Settle(d, action) = cmd {
                tracing::warn!(
                    queue = %self.queue.name,
                    delivery_tag = d.delivery_tag,
                    %action,
                    "settlement not sent: the channel closed first; the broker redelivers the message",
                );
                count_failure(&self.queue.name, action, "channel_closed");
            }
        }
        if matches!(ended, Ended::Shutdown | Ended::Channel(_)) {
            if let Some(p) = ch.publisher.take() {
                let _ = p.close(200, "OK".into()).await;
            }
            if let Err(e) = ch.channel.close(200, "OK".into()).await {
                tracing::debug!(queue = %self.queue.name, error = %e, "channel close failed");
            }
        }
        ended
    }
}

/// The channel task's state.
struct ChannelState {
    conn: Arc<Connection>,
    channel: Channel,
    /// A channel in confirm mode for requeue-tail copies, opened on first use.
    publisher: Option<Channel>,
    outstanding: Outstanding,
    tx: mpsc::UnboundedSender<Cmd>,
    queue: Arc<QueueMeta>,
    cap: Option<u64>,
    /// `asyncworker_amqp_settlements_total{queue, action}`, one handle per action.
    counters: [metrics::Counter; 4],
}

impl ChannelState {
    fn counters(queue: &str) -> [metrics::Counter; 4] {
        [
            Action::Ack,
            Action::Reject,
            Action::Requeue,
            Action::RequeueTail,
        ]
        .map(|action| {
            metrics::counter!(
                "asyncworker_amqp_settlements_total",
                "queue" => queue.to_owned(),
                "action" => action.as_str(),
            )
        })
    }

    fn count(&self, action: Action) {
        let i = match action {
            Action::Ack => 0,
            Action::Reject => 1,
            Action::RequeueTail => 3,
            _ => 2,
        };
        self.counters[i].increment(1);
    }

    /// Perform a batch of requests; an error means the channel (or connection) is unusable.
    /// The settlements it could not send are logged and counted (the broker redelivers
    /// their messages).
    ///
    /// Acknowledgements are sent unless they can wait for more ([`Outstanding::can_defer_acks`]
    /// with `ack_threshold`; 0 sends them now): `Ok(true)` says they wait, and the caller
    /// calls again, with an empty batch, once `ACK_DELAY` has passed.
    async fn process(
        &mut self,
        batch: &mut Vec<Cmd>,
        ack_threshold: usize,
    ) -> Result<bool, lapin::Error> {
        let mut cmds = batch.drain(..);
        while let Some(cmd) = cmds.next() {
            let (failed_on, result) = match cmd {
                Cmd::Settle(d, action) => (action, self.settle(d, action).await),
                Cmd::TailDone(d, true) => {
                    self.outstanding.want_ack(d.delivery_tag);
                    (Action::Ack, Ok(()))
                }
                Cmd::TailDone(d, false) => {
                    // Nothing lost: the original goes back to (the head of) its queue.
                    self.outstanding.release(d.delivery_tag);
                    (Action::Requeue, self.reject(&d, Action::Requeue).await)
                }
            };
            if let Err(e) = result {
                self.send_failed(failed_on, 1, &e);
                for cmd in cmds {
                    if let Cmd::Settle(_, action) = cmd {
                        self.send_failed(action, 1, &e);
                    }
                }
                return Err(e);
            }
        }
        if self.outstanding.can_defer_acks(ack_threshold) {
            return Ok(true);
        }
        let plan = self.outstanding.take_plan();
        tracing::trace!(queue = %self.queue.name, ?plan, unsettled = self.outstanding.live(), "settling");
        if let Some((tag, count)) = plan.upto
            && let Err(e) = self
                .channel
                .basic_ack(
                    tag,
                    BasicAckOptions {
                        multiple: count > 1,
                    },
                )
                .await
        {
            self.send_failed(Action::Ack, count + plan.singles.len(), &e);
            return Err(e);
        }
        for (i, &tag) in plan.singles.iter().enumerate() {
            if let Err(e) = self
                .channel
                .basic_ack(tag, BasicAckOptions { multiple: false })
                .await
            {
                self.send_failed(Action::Ack, plan.singles.len() - i, &e);
                return Err(e);
            }
        }
        Ok(false)
    }

    /// `n` settlements with `action` could not be sent because of `error`.
    fn send_failed(&self, action: Action, n: usize, error: &lapin::Error) {
        tracing::warn!(
            queue = %self.queue.name,
            %action,
            count = n,
            %error,
            "settlement not sent: the channel failed; the broker redelivers the message",
        );
        metrics::counter!(
            "asyncworker_amqp_settle_failures_total",
            "queue" => self.queue.name.to_string(),
            "action" => action.as_str(),
            "reason" => "send_failed",
        )
        .increment(n as u64);
    }

    async fn settle(&mut self, d: Arc<Delivery>, action: Action) -> Result<(), lapin::Error> {
        self.count(action);
        match action {
            Action::Ack => {
                if !self.outstanding.want_ack(d.delivery_tag) {
                    self.unknown(&d, action);
                }
                Ok(())
            }
            Action::RequeueTail => self.requeue_tail(d).await,
            // `Action` is non-exhaustive: anything else is a plain requeue (at-least-once).
            _ => self.reject(&d, action).await,
        }
    }

    fn unknown(&self, d: &Delivery, action: Action) {
        tracing::error!(
            queue = %self.queue.name,
            delivery_tag = d.delivery_tag,
            %action,
            "settlement for a delivery that is not outstanding on this channel; not sent",
        );
        count_failure(&self.queue.name, action, "not_outstanding");
    }

    async fn reject(&mut self, d: &Delivery, action: Action) -> Result<(), lapin::Error> {
        if !self.outstanding.settle_now(d.delivery_tag) {
            self.unknown(d, action);
            return Ok(());
        }
        let requeue = action != Action::Reject;
        self.channel
            .basic_reject(d.delivery_tag, BasicRejectOptions { requeue })
            .await
    }

    async fn requeue_tail(&mut self, d: Arc<Delivery>) -> Result<(), lapin::Error> {
        let count = d.requeue_count().saturating_add(1);
        if let Some(cap) = self.cap
            && count > cap
        {
            tracing::warn!(
                queue = %self.queue.name,
                delivery_tag = d.delivery_tag,
                requeues = count - 1,
                cap,
                "requeue cap reached: rejecting the message (dead-lettered when the queue has \
                 a dead-letter exchange)",
            );
            metrics::counter!(
                "asyncworker_amqp_requeue_tail_total",
                "queue" => self.queue.name.to_string(),
                "outcome" => "capped",
            )
            .increment(1);
            return self.reject(&d, Action::Reject).await;
        }
        if !self.outstanding.hold(d.delivery_tag) {
            self.unknown(&d, Action::RequeueTail);
            return Ok(());
        }
        let publisher = match self.publisher.as_ref().filter(|p| p.status().connected()) {
            Some(p) => p.clone(),
            None => match open_publisher(&self.conn, &self.queue).await {
                Some(p) => {
                    self.publisher = Some(p.clone());
                    p
                }
                None => {
                    // Fall back to a plain requeue: nothing is lost.
                    self.outstanding.release(d.delivery_tag);
                    return self.reject(&d, Action::Requeue).await;
                }
            },
        };
        let tx = self.tx.clone();
        let queue = self.queue.clone();
        tokio::spawn(async move {
            let ok = publish_copy(&publisher, &queue, &d, count).await;
            metrics::counter!(
                "asyncworker_amqp_requeue_tail_total",
                "queue" => queue.name.to_string(),
                "outcome" => if ok { "published" } else { "failed" },
            )
            .increment(1);
            // A closed channel task drops this; the original is redelivered by the broker.
            let _ = tx.send(Cmd::TailDone(d, ok));
        });
        Ok(())
    }
}

/// A channel in confirm mode on `conn`, for requeue-tail copies.
async fn open_publisher(conn: &Connection, queue: &QueueMeta) -> Option<Channel> {
    let result = async {
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok::<_, lapin::Error>(channel)
    }
    .await;
    match result {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::warn!(queue = %queue.name, error = %e, "cannot open a publisher channel");
            None
        }
    }
}

/// Publish a copy of `d` to the tail of its queue, with the requeue counter set to `count`,
/// and wait for the broker's confirmation.
async fn publish_copy(publisher: &Channel, queue: &QueueMeta, d: &Delivery, count: u64) -> bool {
    let mut headers = d.properties.headers().clone().unwrap_or_default();
    headers.insert(
        REQUEUE_COUNT_HEADER.into(),
        AMQPValue::LongLongInt(i64::try_from(count).unwrap_or(i64::MAX)),
    );
    let properties = d.properties.clone().with_headers(headers);
    let result = async {
        publisher
            .basic_publish(
                ShortString::default(),
                ShortString::from(&*queue.name),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                &d.payload,
                properties,
            )
            .await?
            .await
    };
    let Ok(result) = tokio::time::timeout(REQUEUE_TAIL_TIMEOUT, result).await else {
        tracing::warn!(queue = %queue.name, delivery_tag = d.delivery_tag, timeout = ?REQUEUE_TAIL_TIMEOUT,
            "requeue-tail copy not confirmed in time (blocked connection?); requeueing the original instead");
        return false;
    };
    match result {
        Ok(Confirmation::Ack(None)) => true,
        Ok(Confirmation::Ack(Some(_))) => {
            tracing::warn!(queue = %queue.name, delivery_tag = d.delivery_tag,
                "requeue-tail copy was unroutable (queue gone?); requeueing the original instead");
            false
        }
        Ok(other) => {
            tracing::warn!(queue = %queue.name, delivery_tag = d.delivery_tag, confirmation = ?other,
                "requeue-tail copy not confirmed; requeueing the original instead");
            false
        }
        Err(e) => {
            tracing::warn!(queue = %queue.name, delivery_tag = d.delivery_tag, error = %e,
                "requeue-tail copy failed; requeueing the original instead");
            false
        }
    }
}
