//! The channel task's state: performs a batch of settlement requests, coalescing acks.

use std::sync::Arc;

use asyncworker_core::Action;
use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicRejectOptions};
use tokio::sync::mpsc;

use super::TailPublisher;
use crate::message::{Delivery, QueueMeta};
use crate::settle::{Cmd, Outstanding, count_failure};

/// How many settlement requests one pass of the channel task takes at most.
pub(super) const MAX_BATCH: usize = 4096;

/// The channel task's state.
pub(super) struct ChannelState {
    pub(super) channel: Channel,
    /// The route's publisher of requeue-tail copies.
    pub(super) tail: Arc<TailPublisher>,
    pub(super) outstanding: Outstanding,
    pub(super) tx: mpsc::UnboundedSender<Cmd>,
    pub(super) queue: Arc<QueueMeta>,
    pub(super) cap: Option<u64>,
    /// The channel's prefetch (`basic.qos`; 0: unlimited).
    pub(super) prefetch: u16,
    /// `asyncworker_amqp_settlements_total{queue, action}`, one handle per action.
    pub(super) counters: [metrics::Counter; 4],
}

impl ChannelState {
    pub(super) fn counters(queue: &str) -> [metrics::Counter; 4] {
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

    pub(super) fn count(&self, action: Action) {
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
    /// with `ack_threshold` and the channel's prefetch; 0 sends them now): `Ok(true)` says
    /// they wait, and the caller calls again, with an empty batch, once `ACK_DELAY` has passed.
    pub(super) async fn process(
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
        if self
            .outstanding
            .can_defer_acks(ack_threshold, usize::from(self.prefetch))
        {
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

    /// The channel's service ended: send the requests still queued (`batch`) and the acks
    /// held back for coalescing if the channel can carry them (`usable`, and lapin says it
    /// is open), else log and count them as not sent; their deliveries are redelivered.
    pub(super) async fn flush_at_end(&mut self, batch: &mut Vec<Cmd>, usable: bool) {
        let held = self.outstanding.wanted();
        if batch.is_empty() && held == 0 {
            return;
        }
        if usable && self.channel.status().connected() {
            let requests = batch.len();
            // A failure is counted by `process` for what it was sending, and below for the
            // acks it did not reach.
            if self.process(batch, 0).await.is_ok() {
                tracing::debug!(
                    queue = %self.queue.name,
                    acks = held,
                    requests,
                    "acknowledgements held back sent before closing the channel",
                );
            }
        } else {
            for cmd in batch.drain(..) {
                if let Cmd::Settle(d, action) = cmd {
                    tracing::warn!(
                        queue = %self.queue.name,
                        delivery_tag = d.delivery_tag,
                        %action,
                        "settlement not sent: the channel closed first; the broker redelivers \
                         the message",
                    );
                    count_failure(&self.queue.name, action, "channel_closed");
                }
            }
        }
        let plan = self.outstanding.take_plan();
        let lost = plan.upto.map_or(0, |(_, n)| n) + plan.singles.len();
        if lost > 0 {
            tracing::warn!(
                queue = %self.queue.name,
                count = lost,
                "acknowledgements not sent: the channel closed first; the broker redelivers \
                 the messages",
            );
            metrics::counter!(
                "asyncworker_amqp_settle_failures_total",
                "queue" => self.queue.name.to_string(),
                "action" => Action::Ack.as_str(),
                "reason" => "channel_closed",
            )
            .increment(lost as u64);
        }
    }

    /// `n` settlements with `action` could not be sent because of `error`.
    pub(super) fn send_failed(&self, action: Action, n: usize, error: &lapin::Error) {
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

    pub(super) async fn settle(
        &mut self,
        d: Arc<Delivery>,
        action: Action,
    ) -> Result<(), lapin::Error> {
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

    pub(super) fn unknown(&self, d: &Delivery, action: Action) {
        tracing::error!(
            queue = %self.queue.name,
            delivery_tag = d.delivery_tag,
            %action,
            "settlement for a delivery that is not outstanding on this channel; not sent",
        );
        count_failure(&self.queue.name, action, "not_outstanding");
    }

    pub(super) async fn reject(
        &mut self,
        d: &Delivery,
        action: Action,
    ) -> Result<(), lapin::Error> {
        if !self.outstanding.settle_now(d.delivery_tag) {
            self.unknown(d, action);
            return Ok(());
        }
        let requeue = action != Action::Reject;
        self.channel
            .basic_reject(d.delivery_tag, BasicRejectOptions { requeue })
            .await
    }
}
