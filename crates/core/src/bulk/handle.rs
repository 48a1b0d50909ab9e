//! What the message futures of one batch share: the batch's outcome, the wakers of the
//! futures waiting for it, and the batch future itself when its driver went away.
//!
//! One message future of a batch — its *driver*, at first the one whose message opened the
//! batch — owns the batch future and polls it directly, without a lock. The others wait on
//! the [`Handle`]: each registers its waker once, is woken once when the outcome is set, and
//! reads it without a lock. This is leaner than `futures::Shared` (a lock per poll of every
//! message future, a second one when each is dropped, every poll trying to drive the batch):
//! with hundreds of messages per batch those costs were most of the layer's.
//!
//! A driver dropped before its batch finished hands the batch future over: it leaves it in
//! the handle and wakes every waiting future, and the first one polled takes it and drives it
//! from then on. So a batch keeps moving as long as any of its message futures is alive; when
//! the last one goes, the handle (and the batch future in it) is dropped, and the buffered
//! messages are requeued by their settlement slots.

use std::pin::Pin;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::task::{Context, Waker};

use tower::Service;

use super::BatchError;
use super::future::BatchFuture;

/// The batch future, boxed: message futures move, and the batch future holds the whole inner
/// stack's future.
pub(super) type Batch<S, M> = Pin<Box<BatchFuture<S, M>>>;

/// Shared by the message futures of one batch (behind an `Arc`).
pub(super) struct Handle<S: Service<Vec<M>>, M> {
    /// Set once, by the driver, when the batch is done; read without a lock.
    outcome: OnceLock<Result<(), BatchError>>,
    waiting: Mutex<Waiting<S, M>>,
}

struct Waiting<S: Service<Vec<M>>, M> {
    wakers: Vec<Waker>,
    /// Bumped each time `wakers` is emptied, so a [`Registration`] from before points
    /// nowhere.
    generation: u64,
    /// The batch future, left here by a driver dropped before the batch finished.
    orphan: Option<Batch<S, M>>,
}

/// What a waiting message future found on the handle.
pub(super) enum Found<S: Service<Vec<M>>, M> {
    /// The batch is done.
    Done(Result<(), BatchError>),
    /// The driver went away: this future drives the batch now.
    Driver(Batch<S, M>),
    /// Still running; the waker is registered there.
    Waiting(Registration),
}

/// Where a waiting message future's waker is: its index among the wakers of a generation.
#[derive(Debug, Clone, Copy)]
pub(super) struct Registration {
    generation: u64,
    index: usize,
}

impl<S: Service<Vec<M>>, M> Handle<S, M> {
    pub(super) fn new() -> Self {
        Handle {
            outcome: OnceLock::new(),
            waiting: Mutex::new(Waiting {
                wakers: Vec::new(),
                generation: 0,
                orphan: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Waiting<S, M>> {
        // Every write under the lock is a single push, take or store: a poisoned lock (a
        // waker that panicked on clone) still holds a consistent value.
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Called by the driver when the batch is done: record `outcome`, wake every waiter.
    pub(super) fn finish(&self, outcome: &Result<(), BatchError>) {
        // Set before the lock is taken: a waiter that locks after the wakers are taken
        // below sees the outcome (the lock orders the two), one that locked before is woken.
        let _ = self.outcome.set(outcome.clone());
        let wakers = self.lock().take_wakers();
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Called when the driver is dropped with the batch unfinished: leave the batch future
    /// for a waiting message future to take over, and wake them all.
    pub(super) fn orphan(&self, batch: Batch<S, M>) {
        let mut waiting = self.lock();
        waiting.orphan = Some(batch);
        let wakers = waiting.take_wakers();
        drop(waiting);
        wakers.into_iter().for_each(Waker::wake);
    }

    /// A waiting message future's poll: the outcome if there is one, else the orphaned batch
    /// future if there is one, else register `cx`'s waker (replacing the one at `registered`
    /// when that is where this future's waker went).
    pub(super) fn poll_wait(
        &self,
        registered: Option<Registration>,
        cx: &Context<'_>,
    ) -> Found<S, M> {
        if let Some(outcome) = self.outcome.get() {
            return Found::Done(outcome.clone());
        }
        let mut waiting = self.lock();
        if let Some(outcome) = self.outcome.get() {
            return Found::Done(outcome.clone());
        }
        if let Some(batch) = waiting.orphan.take() {
            return Found::Driver(batch);
        }
        let waker = cx.waker();
        let generation = waiting.generation;
        let wakers = &mut waiting.wakers;
        let current = registered.filter(|r| r.generation == generation && r.index < wakers.len());
        let index = match current {
            Some(r) => {
                if !wakers[r.index].will_wake(waker) {
                    wakers[r.index].clone_from(waker);
                }
                r.index
            }
            None => {
                wakers.push(waker.clone());
                wakers.len() - 1
            }
        };
        Found::Waiting(Registration { generation, index })
    }
}

impl<S: Service<Vec<M>>, M> Waiting<S, M> {
    /// The registered wakers, to wake; registrations made before point nowhere after this.
    fn take_wakers(&mut self) -> Vec<Waker> {
        self.generation += 1;
        std::mem::take(&mut self.wakers)
    }
}
