//! The buffer of one batch, shared by [`Bulk`](super::Bulk) (which fills it) and the batch
//! future (which seals it on the timer or shutdown, then takes it).

use std::sync::{Arc, Mutex, MutexGuard};

use futures::task::AtomicWaker;

use super::FlushReason;

pub(super) struct Cell<M> {
    state: Mutex<CellState<M>>,
    pub(super) waker: AtomicWaker,
}

pub(super) struct CellState<M> {
    pub(super) messages: Vec<M>,
    pub(super) sealed: Option<FlushReason>,
    pub(super) taken: bool,
}

impl<M> Cell<M> {
    /// A batch holding `messages`, sealed already when `sealed` is set.
    pub(super) fn new(messages: Vec<M>, sealed: Option<FlushReason>) -> Self {
        Cell {
            state: Mutex::new(CellState {
                messages,
                sealed,
                taken: false,
            }),
            waker: AtomicWaker::new(),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, CellState<M>> {
        // A poisoned lock only means a panic elsewhere while holding it; the state stays
        // consistent (every write is a single field store), so keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Seal with `reason` and wake the batch future.
    pub(super) fn seal(&self, state: &mut CellState<M>, reason: FlushReason) {
        if state.sealed.is_none() {
            state.sealed = Some(reason);
            self.waker.wake();
        }
    }
}

/// Drops the buffered messages of a batch whose future went away before taking them, and
/// marks the cell so [`Bulk`](super::Bulk) starts a new batch.
pub(super) struct CellGuard<M>(pub(super) Arc<Cell<M>>);

impl<M> Drop for CellGuard<M> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        if !state.taken {
            state.taken = true;
            state.sealed.get_or_insert(FlushReason::Shutdown);
            // Dropping the messages drops their settlement slots: they are requeued.
            let dropped = std::mem::take(&mut state.messages);
            drop(state);
            drop(dropped);
        }
    }
}
