//! Settling deliveries: the non-blocking [`Settle`] half that messages carry, and the
//! bookkeeping the channel task uses to coalesce acknowledgements safely.
//!
//! # Design
//!
//! [`Settle::settle`] is synchronous and must not block, so a message's settler only sends
//! `(delivery, action)` over an unbounded channel to the task that owns the AMQP channel the
//! delivery arrived on. That task drains every request that is ready, then:
//!
//! 1. sends the rejects and requeues one by one (`basic.reject`),
//! 2. acknowledges the longest run of outstanding tags, from the oldest, that are all being
//!    acknowledged, with one `basic.ack` carrying `multiple = true` (or a plain ack for a run
//!    of one),
//! 3. acknowledges any other tag individually.
//!
//! A `multiple` ack up to tag N covers *every* unacknowledged delivery ≤ N on the channel, so
//! it is only correct when the task knows all of them are meant to be acked. It does: a tag is
//! recorded as outstanding before its message is handed out, deliveries are handed out in tag
//! order, and a delivery read from the consumer but never handed out (shutdown began) has a
//! higher tag than every one handed out. Acking a tag twice would close the channel
//! (PRECONDITION_FAILED), so each tag leaves the outstanding set exactly once.
//!
//! A channel's deliveries die with it: once the channel (or its connection) is gone, the
//! broker redelivers them, possibly on a new channel where the same tag numbers mean other
//! messages. A settler therefore belongs to one channel *generation*: after that channel
//! closed, it returns [`SettleError::ChannelClosed`] at once, logs and counts the failure
//! (`asyncworker_amqp_settle_failures_total{queue, action, reason}`) and sends nothing.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use asyncworker_core::{Action, Settle, SettleError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::message::Delivery;

/// A request to the channel task.
pub(crate) enum Cmd {
    /// Settle a delivery.
    Settle(Arc<Delivery>, Action),
    /// A [`Action::RequeueTail`] copy was published (and confirmed) or not.
    TailDone(Arc<Delivery>, bool),
}

/// Whether a channel is still usable, shared by the channel's task and its deliveries.
#[derive(Debug)]
pub(crate) struct ChannelLife {
    /// Set once the channel is gone (closed by error, by the broker, or after shutdown).
    pub(crate) closed: AtomicBool,
    /// Cancelled when the connection the channel lives on is lost.
    pub(crate) connection_lost: CancellationToken,
    /// Which channel this is: counts the channels the route opened, for logs.
    pub(crate) generation: u64,
}

impl ChannelLife {
    pub(crate) fn new(connection_lost: CancellationToken, generation: u64) -> Self {
        ChannelLife {
            closed: AtomicBool::new(false),
            connection_lost,
            generation,
        }
    }

    pub(crate) fn is_dead(&self) -> bool {
        self.closed.load(Ordering::Acquire) || self.connection_lost.is_cancelled()
    }
}

/// The settler of one delivery: sends the request to its channel's task.
pub(crate) struct AmqpSettle {
    pub(crate) tx: mpsc::UnboundedSender<Cmd>,
    pub(crate) delivery: Arc<Delivery>,
}

impl AmqpSettle {
    fn stale(&self, action: Action) -> SettleError {
        let d = &*self.delivery;
        tracing::warn!(
            route = %d.queue.route,
            queue = %d.queue.name,
            delivery_tag = d.delivery_tag,
            channel_generation = d.channel.generation,
            %action,
            "settlement not sent: the channel this message arrived on is closed; the broker \
             redelivers the message",
        );
        count_failure(&d.queue.name, action, "channel_closed");
        SettleError::ChannelClosed
    }
}

impl Settle for AmqpSettle {
    fn settle(&self, action: Action) -> Result<(), SettleError> {
        if self.delivery.is_discarded() {
            // Never handed out: the broker redelivers it, which is what a requeue asks for.
            return if action == Action::Requeue {
                Ok(())
            } else {
                Err(SettleError::ChannelClosed)
            };
        }
        if self.delivery.channel.is_dead() {
            return Err(self.stale(action));
        }
        self.tx
            .send(Cmd::Settle(self.delivery.clone(), action))
            .map_err(|_| self.stale(action))
    }
}

pub(crate) fn count_failure(queue: &str, action: Action, reason: &'static str) {
    metrics::counter!(
        "asyncworker_amqp_settle_failures_total",
        "queue" => queue.to_owned(),
        "action" => action.as_str(),
        "reason" => reason,
    )
    .increment(1);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Handed out, not settled yet.
    Pending,
    /// An ack was requested and not sent yet.
    AckWanted,
    /// A requeue-tail copy is being published; the original waits.
    Busy,
    /// Settled (the frame was sent): kept only until it reaches the front.
    Done,
}

/// The acknowledgements to send after a batch of requests.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct AckPlan {
    /// Ack every outstanding tag up to this one, and how many deliveries that settles: with
    /// `multiple = true` for a run of several, a plain ack for a run of one.
    pub(crate) upto: Option<(u64, usize)>,
    /// Tags to ack one by one.
    pub(crate) singles: Vec<u64>,
}

/// The deliveries a channel handed out and has not settled yet, in tag order.
#[derive(Debug, Default)]
pub(crate) struct Outstanding {
    entries: VecDeque<(u64, State)>,
    /// Entries not `Done`.
    live: usize,
    /// Entries `AckWanted`.
    wanted: usize,
}

impl Outstanding {
    /// Record a delivery about to be handed out. Tags grow on a channel.
    pub(crate) fn push(&mut self, tag: u64) {
        debug_assert!(self.entries.back().is_none_or(|(t, _)| *t < tag));
        self.entries.push_back((tag, State::Pending));
        self.live += 1;
    }

    /// How many handed-out deliveries are not settled yet.
    pub(crate) fn live(&self) -> usize {
        self.live
    }

    /// Whether the wanted acknowledgements can wait for more: fewer than `threshold` of them,
    /// and some handed-out delivery still unsettled (its settlement wakes the channel task
    /// again). When every handed-out delivery is settled nothing else may come — the broker
    /// sends no more once the prefetch is used up — so they must go now.
    pub(crate) fn can_defer_acks(&self, threshold: usize) -> bool {
        self.wanted > 0 && self.wanted < threshold && self.live > self.wanted
    }

    fn state_mut(&mut self, tag: u64) -> Option<&mut State> {
        let i = self.entries.binary_search_by_key(&tag, |(t, _)| *t).ok()?;
        Some(&mut self.entries[i].1)
    }

    /// Start settling `tag`, which is pending: `true` if it was (the caller then sends the
    /// frame or marks it), `false` for an unknown or already settled tag, which must not be
    /// sent (a second ack of one tag closes the channel).
    fn transition(&mut self, tag: u64, to: State) -> bool {
        let Some(state) = self.state_mut(tag) else {
            return false;
        };
        if !matches!(*state, State::Pending | State::Busy) {
            return false;
        }
        *state = to;
        match to {
            State::Done => self.live -= 1,
            State::AckWanted => self.wanted += 1,
            State::Pending | State::Busy => {}
        }
        true
    }

    /// Mark `tag` to be acknowledged by the next [`Outstanding::take_plan`].
    pub(crate) fn want_ack(&mut self, tag: u64) -> bool {
        self.transition(tag, State::AckWanted)
    }

    /// Mark `tag` as settled by a frame the caller sends now (reject or requeue).
    pub(crate) fn settle_now(&mut self, tag: u64) -> bool {
        self.transition(tag, State::Done)
    }

    /// Mark `tag` as waiting for its requeue-tail copy to be published.
    pub(crate) fn hold(&mut self, tag: u64) -> bool {
        match self.state_mut(tag) {
            Some(state @ State::Pending) => {
                *state = State::Busy;
                true
            }
            _ => false,
        }
    }

    /// Put a held tag back to pending (to settle it otherwise).
    pub(crate) fn release(&mut self, tag: u64) {
        if let Some(state @ State::Busy) = self.state_mut(tag) {
            *state = State::Pending;
        }
    }

    /// The acknowledgements to send for the tags marked [`Outstanding::want_ack`]; they are
    /// settled from here on.
    pub(crate) fn take_plan(&mut self) -> AckPlan {
        let mut plan = AckPlan::default();
        if self.wanted == 0 {
            self.trim();
            return plan;
        }
        // The run from the front: every entry either already settled or being acked now.
        let mut last = None;
        let mut count = 0usize;
        while let Some(&(tag, state)) = self.entries.front() {
            match state {
                State::Done => {}
                State::AckWanted => {
                    last = Some(tag);
                    count += 1;
                    self.live -= 1;
                    self.wanted -= 1;
                }
                State::Pending | State::Busy => break,
            }
            self.entries.pop_front();
        }
        if let Some(tag) = last {
            plan.upto = Some((tag, count));
        }
        if self.wanted > 0 {
            for (tag, state) in &mut self.entries {
                if *state == State::AckWanted {
                    *state = State::Done;
                    plan.singles.push(*tag);
                }
            }
            self.live -= self.wanted;
            self.wanted = 0;
        }
        self.trim();
        plan
    }

    fn trim(&mut self) {
        while let Some((_, State::Done)) = self.entries.front() {
            self.entries.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(upto: Option<(u64, usize)>, singles: &[u64]) -> AckPlan {
        AckPlan {
            upto,
            singles: singles.to_vec(),
        }
    }

    fn out(tags: impl IntoIterator<Item = u64>) -> Outstanding {
        let mut o = Outstanding::default();
        for t in tags {
            o.push(t);
        }
        o
    }

    #[test]
    fn a_full_prefix_becomes_one_multiple_ack() {
        let mut o = out(1..=5);
        for t in 1..=5 {
            assert!(o.want_ack(t));
        }
        assert_eq!(o.take_plan(), plan(Some((5, 5)), &[]));
        assert_eq!(o.live(), 0);
    }

    #[test]
    fn a_pending_tag_stops_the_run() {
        let mut o = out(1..=5);
        for t in [1, 2, 4, 5] {
            assert!(o.want_ack(t));
        }
        // 3 is still pending: a multiple ack up to 5 would ack it too.
        assert_eq!(o.take_plan(), plan(Some((2, 2)), &[4, 5]));
        assert_eq!(o.live(), 1);
        assert!(o.want_ack(3));
        assert_eq!(o.take_plan(), plan(Some((3, 1)), &[]));
        assert_eq!(o.live(), 0);
    }

    #[test]
    fn rejected_tags_do_not_stop_the_run() {
        let mut o = out(1..=4);
        assert!(o.settle_now(2));
        for t in [1, 3, 4] {
            assert!(o.want_ack(t));
        }
        assert_eq!(o.take_plan().upto, Some((4, 3)));
        assert_eq!(o.live(), 0);
    }

    #[test]
    fn a_tag_is_settled_once() {
        let mut o = out(1..=2);
        assert!(o.want_ack(1));
        assert!(!o.want_ack(1));
        assert!(!o.settle_now(1));
        let _ = o.take_plan();
        assert!(!o.want_ack(1), "an acked tag must not be acked again");
        assert!(!o.settle_now(9), "unknown tags are never sent");
        assert_eq!(o.live(), 1);
    }

    #[test]
    fn held_tags_block_the_run_until_released_or_acked() {
        let mut o = out(1..=3);
        assert!(o.hold(2));
        assert!(o.want_ack(1));
        assert!(o.want_ack(3));
        assert_eq!(o.take_plan(), plan(Some((1, 1)), &[3]));
        assert_eq!(o.live(), 1);
        // The copy was published: ack the original.
        assert!(o.want_ack(2));
        assert_eq!(o.take_plan().upto, Some((2, 1)));
        assert_eq!(o.live(), 0);

        let mut o = out(1..=1);
        assert!(o.hold(1));
        o.release(1);
        assert!(o.settle_now(1));
        assert_eq!(o.live(), 0);
    }

    #[test]
    fn acks_wait_only_while_something_else_is_unsettled() {
        let mut o = out(1..=4);
        assert!(!o.can_defer_acks(2), "nothing to ack");
        assert!(o.want_ack(1));
        assert!(o.can_defer_acks(2), "1 < 2 and 2..=4 still pending");
        assert!(!o.can_defer_acks(1), "the threshold is reached");
        for t in 2..=4 {
            assert!(o.want_ack(t));
        }
        assert!(!o.can_defer_acks(100), "every delivery is settled: ack now");
    }

    #[test]
    fn no_wanted_acks_means_no_plan() {
        let mut o = out(1..=3);
        assert_eq!(o.take_plan(), AckPlan::default());
        assert_eq!(o.live(), 3);
    }
}
