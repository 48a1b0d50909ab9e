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

use std::collections::{BTreeMap, BTreeSet};
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

/// A handed-out delivery that is not settled and has no ack wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Handed out, not settled yet.
    Pending,
    /// A requeue-tail copy is being published; the original waits.
    Busy,
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

/// The deliveries a channel handed out and has not settled yet.
///
/// Only live tags are kept — a settled tag is forgotten at once — so one delivery left
/// unsettled for long (a slow batch, a copy awaiting its confirm) costs one entry, not one
/// per later delivery. Every operation is O(log n) in the live tags, and a plan O(k log n)
/// for the k acks it sends.
///
/// Every tag below the lowest unsettled one is settled (handed-out tags grow), so the wanted
/// acks below it are the longest settled prefix's and go in one `multiple` ack; the wanted
/// acks above it go one by one, so a `multiple` ack never covers an unsettled delivery.
#[derive(Debug, Default)]
pub(crate) struct Outstanding {
    /// Handed out, not settled, no ack wanted.
    unsettled: BTreeMap<u64, State>,
    /// An ack was requested and not sent yet.
    wanted: BTreeSet<u64>,
    /// The highest tag handed out so far.
    last: u64,
}

impl Outstanding {
    /// Record a delivery about to be handed out. Tags grow on a channel.
    pub(crate) fn push(&mut self, tag: u64) {
        debug_assert!(tag > self.last, "delivery tags grow on a channel");
        self.last = tag;
        self.unsettled.insert(tag, State::Pending);
    }

    /// How many handed-out deliveries are not settled yet.
    pub(crate) fn live(&self) -> usize {
        self.unsettled.len() + self.wanted.len()
    }

    /// How many acks are wanted and not sent yet.
    pub(crate) fn wanted(&self) -> usize {
        self.wanted.len()
    }

    /// Whether the wanted acknowledgements can wait for more: fewer than `threshold` of them,
    /// and more to come — some handed-out delivery still unsettled (its settlement wakes the
    /// channel task again), or fewer deliveries unacknowledged than the prefetch `window`
    /// (0: unlimited), so the broker may still deliver. Once every handed-out delivery is
    /// settled and the window is used up the broker sends no more: they must go now.
    ///
    /// A consumer faster than the broker has every delivery settled most of the time; acking
    /// then, a few tags per frame, would cost the broker several frames where a raw consumer
    /// sends one `multiple` ack per `threshold` deliveries. The caller bounds the wait
    /// (`ACK_DELAY`), for an idle queue.
    pub(crate) fn can_defer_acks(&self, threshold: usize, window: usize) -> bool {
        !self.wanted.is_empty()
            && self.wanted.len() < threshold
            && (!self.unsettled.is_empty() || window == 0 || self.live() < window)
    }

    /// Mark `tag`, which is pending or held, to be acknowledged by the next
    /// [`Outstanding::take_plan`]: `false` for an unknown or already settled tag, which must
    /// not be sent (a second ack of one tag closes the channel).
    pub(crate) fn want_ack(&mut self, tag: u64) -> bool {
        if self.unsettled.remove(&tag).is_none() {
            return false;
        }
        self.wanted.insert(tag);
        true
    }

    /// Mark `tag` (pending or held) as settled by a frame the caller sends now (reject or
    /// requeue): `false` as for [`Outstanding::want_ack`].
    pub(crate) fn settle_now(&mut self, tag: u64) -> bool {
        self.unsettled.remove(&tag).is_some()
    }

    /// Mark `tag` as waiting for its requeue-tail copy to be published.
    pub(crate) fn hold(&mut self, tag: u64) -> bool {
        match self.unsettled.get_mut(&tag) {
            Some(state @ State::Pending) => {
                *state = State::Busy;
                true
            }
            _ => false,
        }
    }

    /// Put a held tag back to pending (to settle it otherwise).
    pub(crate) fn release(&mut self, tag: u64) {
        if let Some(state @ State::Busy) = self.unsettled.get_mut(&tag) {
            *state = State::Pending;
        }
    }

    /// The acknowledgements to send for the tags marked [`Outstanding::want_ack`]; they are
    /// settled from here on.
    pub(crate) fn take_plan(&mut self) -> AckPlan {
        let mut plan = AckPlan::default();
        if self.wanted.is_empty() {
            return plan;
        }
        // Wanted tags at or above the lowest unsettled one cannot be covered by `multiple`.
        let above = match self.unsettled.keys().next() {
            Some(&lowest) => self.wanted.split_off(&lowest),
            None => BTreeSet::new(),
        };
        let prefix = std::mem::take(&mut self.wanted);
        if let Some(&tag) = prefix.last() {
            plan.upto = Some((tag, prefix.len()));
        }
        plan.singles = above.into_iter().collect();
        plan
    }

    /// How many tags the bookkeeping holds (every one of them live).
    #[cfg(test)]
    fn entries(&self) -> usize {
        self.unsettled.len() + self.wanted.len()
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
    fn acks_wait_only_while_more_can_come() {
        let mut o = out(1..=4);
        assert!(!o.can_defer_acks(2, 4), "nothing to ack");
        assert!(o.want_ack(1));
        assert!(o.can_defer_acks(2, 4), "1 < 2 and 2..=4 still pending");
        assert!(!o.can_defer_acks(1, 4), "the threshold is reached");
        for t in 2..=4 {
            assert!(o.want_ack(t));
        }
        assert!(
            !o.can_defer_acks(100, 4),
            "every delivery is settled and the prefetch used up: ack now"
        );
        assert!(o.can_defer_acks(100, 0), "no prefetch limit: more may come");
    }

    #[test]
    fn settled_acks_wait_while_the_broker_can_still_deliver() {
        // Every handed-out delivery is settled (a consumer faster than the broker), but only
        // 4 of a prefetch of 256 are unacknowledged: the broker keeps delivering, so the 4
        // acks wait for more (one `multiple` ack per half prefetch, as a raw consumer sends).
        let mut o = out(1..=4);
        for t in 1..=4 {
            assert!(o.want_ack(t));
        }
        assert!(o.can_defer_acks(128, 256), "the broker may send 252 more");
        assert!(!o.can_defer_acks(4, 256), "the threshold is reached");
    }

    #[test]
    fn a_long_unsettled_front_tag_keeps_the_bookkeeping_bounded() {
        // Tag 1 stays pending (a slow batch, a copy awaiting its confirm) while 200 000 later
        // tags are handed out, acked and planned: each is acked on its own (a `multiple` ack
        // would cover tag 1), and only the live tags are kept.
        let mut o = out([1]);
        for t in 2..=200_001 {
            o.push(t);
            assert!(o.want_ack(t));
            assert_eq!(o.take_plan(), plan(None, &[t]));
            assert_eq!(o.entries(), 1, "only tag 1 is live after tag {t}");
        }
        assert_eq!(o.live(), 1);
        assert!(o.want_ack(1));
        assert_eq!(o.take_plan(), plan(Some((1, 1)), &[]));
        assert_eq!(o.entries(), 0);
    }

    #[test]
    fn acks_below_the_lowest_unsettled_tag_coalesce_and_the_rest_go_singly() {
        let mut o = out(1..=6);
        assert!(o.settle_now(3));
        for t in [1, 2, 4, 6] {
            assert!(o.want_ack(t));
        }
        // 5 is unsettled: 1..=4 (3 rejected already) in one multiple ack, 6 alone.
        assert_eq!(o.take_plan(), plan(Some((4, 3)), &[6]));
        assert_eq!(o.entries(), 1);
        assert!(!o.want_ack(6), "an acked tag is never acked again");
        assert!(o.want_ack(5));
        assert_eq!(o.take_plan(), plan(Some((5, 1)), &[]));
        assert_eq!(o.entries(), 0);
    }

    #[test]
    fn no_wanted_acks_means_no_plan() {
        let mut o = out(1..=3);
        assert_eq!(o.take_plan(), AckPlan::default());
        assert_eq!(o.live(), 3);
    }
}
