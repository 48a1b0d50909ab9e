//! [`ResponseFuture`]: the inner call, then settlement; and the guard that requeues a batch
//! whose future is dropped.

use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::time::Instant;

use super::{AckLayer, HandlerPanicked};
use crate::metrics::Outcome;
use crate::util::Chain;
use crate::{Action, BoxError, Message, SettleError, Settlement};

tokio::task_local! {
    // The settlement slots of the batch whose `Ack` future is polling its inner future, so
    // that a `Retry` inside it (whatever its request type) can clear their marks before a
    // new attempt.
    static BATCH: Settlements;
}

/// Clear the marks of the batch an enclosing [`Ack`](super::Ack) is running: called by
/// [`Retry`](crate::retry::Retry) before each attempt after the first, so marks made by a
/// failed attempt do not outlive it. Nothing happens outside an `Ack`.
pub(crate) fn clear_marks_for_retry() {
    let _ = BATCH.try_with(|batch| batch.iter().for_each(Settlement::clear_mark));
}

/// The settlement slots of one batch. A batch of one (every batch at bulk size 1) keeps its
/// slot inline: one allocation fewer per message.
#[derive(Clone)]
pub(super) enum Settlements {
    One(Settlement),
    Many(Arc<[Settlement]>),
}

impl Settlements {
    pub(super) fn of<M: Message>(batch: &[M]) -> Self {
        match batch {
            [one] => Settlements::One(one.settlement().clone()),
            _ => Settlements::Many(batch.iter().map(|m| m.settlement().clone()).collect()),
        }
    }

    fn as_slice(&self) -> &[Settlement] {
        match self {
            Settlements::One(one) => std::slice::from_ref(one),
            Settlements::Many(many) => many,
        }
    }

    fn iter(&self) -> std::slice::Iter<'_, Settlement> {
        self.as_slice().iter()
    }

    fn len(&self) -> usize {
        self.as_slice().len()
    }
}

/// The settlement slots of one batch: settled by policy when the batch completes, requeued
/// when it is dropped first.
pub(super) struct SettleGuard {
    settlements: Settlements,
    layer: AckLayer,
    armed: bool,
}

impl SettleGuard {
    pub(super) fn new(settlements: Settlements, layer: AckLayer) -> Self {
        SettleGuard {
            settlements,
            layer,
            armed: true,
        }
    }

    /// Settle every message with `settle(slot)`, counting what it reports per action.
    /// Returns how many were settled with each action.
    fn settle_each(
        &mut self,
        settle: impl Fn(&Settlement) -> Result<Action, (Action, SettleError)>,
    ) -> [u64; 4] {
        self.armed = false;
        let hook = &self.layer.hook;
        let mut counts = [0u64; 4];
        for settlement in self.settlements.iter() {
            match settle(settlement) {
                Ok(action) => counts[action.index()] += 1,
                // Settled already (by hand, in the handler): nothing was lost, nothing to do.
                Err((_, SettleError::AlreadySettled)) => {}
                Err((action, error)) => {
                    hook.on_settle_failed(action);
                    tracing::warn!(
                        route = hook.route(),
                        %action,
                        error = %Chain(&error),
                        "settlement failed"
                    );
                }
            }
        }
        for (action, n) in Action::ALL.iter().zip(counts) {
            if n > 0 {
                hook.on_settled(*action, n);
            }
        }
        counts
    }

    /// Settle every message: its mark, else `default`.
    fn settle(&mut self, default: Action) {
        self.settle_each(|slot| slot.settle_marked_or(default));
    }
}

impl Drop for SettleGuard {
    fn drop(&mut self) {
        if self.armed {
            let counts = self.settle_each(|slot| {
                slot.settle(Action::Requeue)
                    .map(|()| Action::Requeue)
                    .map_err(|e| (Action::Requeue, e))
            });
            let requeued = counts[Action::Requeue.index()];
            if requeued > 0 {
                tracing::warn!(
                    route = self.layer.hook.route(),
                    messages = requeued,
                    "batch dropped before its handler finished; messages requeued"
                );
            }
        }
    }
}

impl fmt::Debug for SettleGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SettleGuard")
            .field("messages", &self.settlements.len())
            .field("armed", &self.armed)
            .finish()
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Running { #[pin] future: F },
        // Failed before any future ran: the call panicked, or the service had failed.
        Failed { error: Option<(BoxError, Outcome)> },
        Done,
    }
}

pin_project! {
    /// The future of [`Ack`](super::Ack): the inner future, then settlement.
    ///
    /// # Panics
    ///
    /// When polled after it completed.
    #[must_use = "futures do nothing unless polled; dropping it requeues the batch"]
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
        guard: SettleGuard,
        // `None` when the layer has no metrics hook: nothing to time, no clock read.
        started: Option<Instant>,
    }
}

impl<F> ResponseFuture<F> {
    pub(super) fn running(future: F, guard: SettleGuard) -> Self {
        Self::new(State::Running { future }, guard)
    }

    pub(super) fn panicked(error: HandlerPanicked, guard: SettleGuard) -> Self {
        Self::new(
            State::Failed {
                error: Some((Box::new(error), Outcome::Panic)),
            },
            guard,
        )
    }

    pub(super) fn failed(error: BoxError, guard: SettleGuard) -> Self {
        Self::new(
            State::Failed {
                error: Some((error, Outcome::Error)),
            },
            guard,
        )
    }

    fn new(state: State<F>, guard: SettleGuard) -> Self {
        let started = guard.layer.hook.is_enabled().then(Instant::now);
        ResponseFuture {
            state,
            guard,
            started,
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("guard", &self.guard)
            .finish_non_exhaustive()
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let result: Result<T, (BoxError, Outcome)> = match this.state.as_mut().project() {
            StateProj::Running { future } => {
                let batch = this.guard.settlements.clone();
                match catch_unwind(AssertUnwindSafe(|| {
                    BATCH.sync_scope(batch, || future.poll(cx))
                })) {
                    Ok(poll) => ready!(poll).map_err(|e| (e.into(), Outcome::Error)),
                    Err(payload) => Err((
                        Box::new(HandlerPanicked::from_payload(&*payload)) as BoxError,
                        Outcome::Panic,
                    )),
                }
            }
            StateProj::Failed { error } => Err(error
                .take()
                .unwrap_or_else(|| unreachable!("ack: a failed batch's error is taken once"))),
            StateProj::Done => panic!("ack ResponseFuture polled after completion"),
        };
        this.state.set(State::Done);
        let layer = &this.guard.layer;
        let (action, outcome) = match &result {
            Ok(_) => (layer.on_success, Outcome::Ok),
            Err((error, outcome)) => {
                tracing::warn!(
                    route = layer.hook.route(),
                    messages = this.guard.settlements.len(),
                    policy = %layer.on_error,
                    error = %Chain(&**error),
                    "handler failed"
                );
                (layer.on_error, *outcome)
            }
        };
        if let Some(started) = this.started {
            layer.hook.on_handled(outcome, started.elapsed());
        }
        this.guard.settle(action);
        Poll::Ready(result.map_err(|(error, _)| error))
    }
}
