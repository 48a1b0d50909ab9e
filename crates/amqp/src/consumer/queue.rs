//! [`QueueTask`]: one queue of a route on one connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use asyncworker_core::{Action, FailureStreak, Settlement};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::channel::{ChannelState, MAX_BATCH};
use super::{HEALTHY_AFTER, Item, RouteShared};
use crate::error::{AmqpError, Endpoint};
use crate::message::{AmqpMessage, Delivery, QueueMeta};
use crate::settle::{AmqpSettle, ChannelLife, Cmd, Outstanding};

/// How long a consumer cancellation may take at shutdown.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long acknowledgements may wait to be coalesced with later ones (see
/// `ChannelState::process`).
const ACK_DELAY: Duration = Duration::from_millis(5);
/// How many deliveries lapin already holds one pass of the channel task hands out at most,
/// before it looks at settlements and shutdown again.
const MAX_BURST: usize = 64;

/// Why a channel's service ended.
enum Ended {
    /// Shutdown: intake stopped, every handed-out delivery settled, channel closed.
    Shutdown,
    /// The connection is gone.
    ConnectionLost,
    /// The consumer or channel ended while the connection stayed up.
    Channel(String),
}

/// Why a queue task waits before consuming again.
enum Failure {
    /// Opening the channel or consuming failed.
    Consume(lapin::Error),
    /// The consumer or channel ended while the connection stayed up.
    Ended(String),
}

/// One queue of a route, on one connection.
pub(crate) struct QueueTask {
    pub(crate) shared: Arc<RouteShared>,
    pub(crate) queue: Arc<QueueMeta>,
    pub(crate) conn: Arc<Connection>,
    /// The endpoint `conn` is connected to (of the config's several), for errors and logs.
    pub(crate) endpoint: Endpoint,
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

    /// Consume the queue until the connection is lost or the source stops: open a channel
    /// and consume; when that fails, or the consumer ends while the connection stays up,
    /// wait the backoff and consume again. The backoff grows with each failure in a row
    /// (a consumer that ended before it was up for [`HEALTHY_AFTER`](super::HEALTHY_AFTER)
    /// counts as one).
    pub(crate) async fn run(mut self) {
        let mut failures = FailureStreak::new(HEALTHY_AFTER);
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
                    failures.healthy();
                    match self.serve(channel, consumer).await {
                        Ended::Shutdown | Ended::ConnectionLost => return,
                        Ended::Channel(reason) => {
                            if !self.connection_alive() {
                                return;
                            }
                            // It was consuming until now.
                            failures.healthy();
                            Failure::Ended(reason)
                        }
                    }
                }
                Err(error) => {
                    if !self.connection_alive() {
                        // The broker's reason, if it closed the connection over this.
                        self.shared.note_loss(|| error.to_string());
                        return;
                    }
                    Failure::Consume(error)
                }
            };
            let attempt = failures.failed();
            let delay = self.shared.backoff.delay(attempt);
            match failure {
                Failure::Consume(source) => {
                    let error =
                        AmqpError::consume(self.endpoint.clone(), &self.queue.name, delay, source);
                    tracing::warn!(
                        route = %self.shared.route,
                        queue = %self.queue.name,
                        host = %self.endpoint.host(),
                        vhost = %self.endpoint.vhost(),
                        attempt,
                        error = &error as &dyn std::error::Error,
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
                Failure::Ended(reason) => {
                    let error = AmqpError::ConsumerEnded {
                        queue: self.queue.name.to_string(),
                        endpoint: self.endpoint.clone(),
                        reason,
                    };
                    tracing::warn!(
                        route = %self.shared.route,
                        queue = %self.queue.name,
                        host = %self.endpoint.host(),
                        vhost = %self.endpoint.vhost(),
                        failures_in_a_row = attempt,
                        retry_in = ?delay,
                        error = %error,
                        "consumer ended; consuming the queue again",
                    );
                    self.emit(Err(error));
                }
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

    /// Record `d` as outstanding and hand it out on the stream.
    fn hand_out(
        &self,
        ch: &mut ChannelState,
        life: &Arc<ChannelLife>,
        d: lapin::message::Delivery,
    ) {
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

    /// Hand out the channel's deliveries and settle them until shutdown or the channel ends.
    async fn serve(&mut self, channel: Channel, mut consumer: lapin::Consumer) -> Ended {
        let generation = self.shared.channels_opened.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let life = Arc::new(ChannelLife::new(self.connection_lost.clone(), generation));
        let mut ch = ChannelState {
            channel,
            tail: self.shared.tail.clone(),
            outstanding: Outstanding::default(),
            tx,
            queue: self.queue.clone(),
            cap: self.shared.requeue_tail_cap,
            prefetch: self.shared.prefetch,
            counters: ChannelState::counters(&self.queue.name),
        };
        tracing::info!(
            route = %self.shared.route,
            queue = %self.queue.name,
            host = %self.endpoint.host(),
            vhost = %self.endpoint.vhost(),
            prefetch = self.shared.prefetch,
            channel_generation = generation,
            "consuming",
        );
        self.shared.consuming_changed(1);
        let mut consuming = true;
        let mut intake = true;
        let mut batch = Vec::new();
        // Coalescing: acks wait (up to ACK_DELAY) until half the prefetch can go in one
        // `multiple` ack — fewer frames for the broker, which is the bottleneck — unless
        // nothing more can come (every handed-out delivery settled, the prefetch used up).
        let ack_threshold = usize::from(self.shared.prefetch / 2).max(1);
        let ack_timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(ack_timer);
        let mut acks_waiting = false;
        let ended = 'serve: loop {
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
                next = consumer.next(), if intake => {
                    // Hand out every delivery lapin already holds before going back to the
                    // select: one pass of this loop per burst, not per delivery.
                    let mut next = next;
                    let mut handed = 0;
                    loop {
                        match next {
                            Some(Ok(d)) => self.hand_out(&mut ch, &life, d),
                            Some(Err(e)) => {
                                break 'serve if self.connection_alive() {
                                    Ended::Channel(e.to_string())
                                } else {
                                    self.shared.note_loss(|| e.to_string());
                                    Ended::ConnectionLost
                                };
                            }
                            None => {
                                break 'serve if self.connection_alive() {
                                    Ended::Channel("the broker cancelled the consumer (was the queue deleted?)".into())
                                } else {
                                    Ended::ConnectionLost
                                };
                            }
                        }
                        handed += 1;
                        if handed == MAX_BURST {
                            break;
                        }
                        match consumer.next().now_or_never() {
                            Some(item) => next = item,
                            None => break,
                        }
                    }
                }
            }
        };
        life.closed.store(true, Ordering::Release);
        if consuming {
            self.shared.consuming_changed(-1);
        }
        // Requests queued and acks held back for coalescing: sent while the channel still
        // works (the broker cancelled the consumer, say), else counted as not sent (their
        // deliveries go back to the queue with the channel).
        rx.close();
        while let Ok(cmd) = rx.try_recv() {
            batch.push(match cmd {
                // No copy now: the original is requeued (the copy's confirmation would come
                // to a closed channel task).
                Cmd::Settle(d, Action::RequeueTail) => Cmd::Settle(d, Action::Requeue),
                cmd => cmd,
            });
        }
        ch.flush_at_end(&mut batch, !matches!(ended, Ended::ConnectionLost))
            .await;
        if matches!(ended, Ended::Shutdown | Ended::Channel(_))
            && let Err(e) = ch.channel.close(200, "OK".into()).await
        {
            tracing::debug!(queue = %self.queue.name, error = %e, "channel close failed");
        }
        ended
    }
}
