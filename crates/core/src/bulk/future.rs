//! The batch future (one per batch, driven by one of its message futures) and
//! [`ResponseFuture`] (one per message).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker, ready};

use pin_project_lite::pin_project;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{PollSemaphore, WaitForCancellationFutureOwned};
use tower::Service;

use super::cell::{Cell, CellGuard};
use super::handle::{Batch, Found, Handle, Registration};
use super::layer::Config;
use super::{BatchError, FlushReason};
use crate::BoxError;
use crate::util::ServiceFailed;

pin_project! {
    #[project = StateProj]
    #[project_replace = StateReplace]
    enum BatchState<S, M>
    where
        S: Service<Vec<M>>,
    {
        Filling {
            cell: CellGuard<M>,
            // Boxed: inline, the timer and the shutdown future would make every state of
            // the batch (each moved on its way to the call) several times larger.
            watch: Pin<Box<Watch>>,
            // What the timer, the shutdown future and the cell were last polled with.
            registered: Option<Registered>,
        },
        // Waiting for a concurrency slot.
        Sealed {
            messages: Vec<M>,
            reason: FlushReason,
        },
        // Waiting for the inner service to be ready.
        Ready {
            messages: Vec<M>,
            permit: Option<OwnedSemaphorePermit>,
            span: tracing::Span,
        },
        Running {
            #[pin]
            call: S::Future,
            permit: Option<OwnedSemaphorePermit>,
            span: tracing::Span,
        },
        Done,
    }
}

pin_project! {
    /// What seals a filling batch besides its size: its flush interval and shutdown.
    #[project = WatchProj]
    struct Watch {
        #[pin]
        timer: Sleep,
        #[pin]
        shutdown: WaitForCancellationFutureOwned,
    }
}

pin_project! {
    /// One batch: waits for it to seal, takes a concurrency slot, waits for the inner
    /// service to be ready, calls it.
    ///
    /// # Panics
    ///
    /// When polled after it completed.
    #[must_use = "futures do nothing unless polled"]
    pub(crate) struct BatchFuture<S, M>
    where
        S: Service<Vec<M>>,
    {
        #[pin]
        state: BatchState<S, M>,
        inner: S,
        slots: Option<PollSemaphore>,
        config: Arc<Config>,
        // `Into::into`, taken where `Bulk`'s bounds hold, so that the batch future (named by
        // `Bulk` and `ResponseFuture`) is a `Future` with no bound beyond `S: Service`.
        into_error: fn(S::Error) -> BoxError,
    }
}

impl<S, M> BatchFuture<S, M>
where
    S: Service<Vec<M>>,
    S::Error: Into<BoxError>,
{
    pub(super) fn open(inner: S, config: Arc<Config>, cell: Arc<Cell<M>>) -> Self {
        let deadline = deadline_after(config.flush_interval);
        let state = BatchState::Filling {
            cell: CellGuard(cell),
            watch: Box::pin(Watch {
                timer: tokio::time::sleep_until(deadline),
                shutdown: config.shutdown.triggered(),
            }),
            registered: None,
        };
        Self::new(state, inner, config)
    }

    pub(super) fn sealed(
        inner: S,
        config: Arc<Config>,
        messages: Vec<M>,
        reason: FlushReason,
    ) -> Self {
        Self::new(BatchState::Sealed { messages, reason }, inner, config)
    }

    fn new(state: BatchState<S, M>, inner: S, config: Arc<Config>) -> Self {
        BatchFuture {
            state,
            inner,
            slots: config.batch_limit.clone().map(PollSemaphore::new),
            config,
            into_error: Into::into,
        }
    }
}

/// The waker a filling batch gives its timer, its shutdown future and its cell: it records
/// that one of them fired, then wakes the batch's own waker.
struct Wakeup {
    fired: AtomicBool,
    waker: Waker,
}

impl Wake for Wakeup {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.waker.wake_by_ref();
    }
}

/// A filling batch's registration: its [`Wakeup`], and that as a `Waker`.
struct Registered {
    wakeup: Arc<Wakeup>,
    waker: Waker,
}

impl Registered {
    /// Whether polling with `waker` would find nothing new: registered with that waker, and
    /// not woken since.
    fn unchanged(&self, waker: &Waker) -> bool {
        self.wakeup.waker.will_wake(waker) && !self.wakeup.fired.load(Ordering::Acquire)
    }

    /// The waker to register with for the batch's `waker`, reset to "not fired" before the
    /// caller polls what it wakes on (so a wake during that poll is not lost).
    fn renew(registered: &mut Option<Registered>, waker: &Waker) -> Waker {
        match registered {
            Some(r) if r.wakeup.waker.will_wake(waker) => {
                r.wakeup.fired.store(false, Ordering::Release);
                r.waker.clone()
            }
            _ => {
                let wakeup = Arc::new(Wakeup {
                    fired: AtomicBool::new(false),
                    waker: waker.clone(),
                });
                let r = registered.insert(Registered {
                    waker: Waker::from(wakeup.clone()),
                    wakeup,
                });
                r.waker.clone()
            }
        }
    }
}

/// About 30 years: the deadline of a flush interval too large to add to `Instant::now()`
/// (`Duration::MAX` says "never flush on time"), as tokio's own "far future".
const FAR_FUTURE: std::time::Duration = std::time::Duration::from_secs(86_400 * 365 * 30);

/// `now + interval`, saturated to [`FAR_FUTURE`] where the sum overflows (a panic in
/// `Bulk::call` would requeue the message and, on AMQP, redeliver it in a hot loop).
fn deadline_after(interval: std::time::Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(interval)
        .unwrap_or_else(|| now + FAR_FUTURE)
}

impl<S: Service<Vec<M>>, M> fmt::Debug for BatchFuture<S, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            BatchState::Filling { .. } => "filling",
            BatchState::Sealed { .. } => "sealed",
            BatchState::Ready { .. } => "ready",
            BatchState::Running { .. } => "running",
            BatchState::Done => "done",
        };
        f.debug_struct("BatchFuture")
            .field("state", &state)
            .finish()
    }
}

impl<S: Service<Vec<M>>, M> Future for BatchFuture<S, M> {
    type Output = Result<(), BatchError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Filling {
                    cell,
                    watch,
                    registered,
                } => {
                    // Fast path. The driving message future is polled for other reasons too
                    // (its task runs other futures), mostly with the same waker. While none of
                    // the timer, the shutdown signal and the cell has woken us since the last
                    // registration, nothing can have changed: return at once, without the
                    // cell's lock or the shutdown signal's.
                    if registered.as_ref().is_some_and(|r| r.unchanged(cx.waker())) {
                        return Poll::Pending;
                    }
                    let mut state = cell.0.lock();
                    if state.sealed.is_none() {
                        let waker = Registered::renew(registered, cx.waker());
                        let mut wake_cx = Context::from_waker(&waker);
                        let WatchProj { timer, shutdown } = watch.as_mut().project();
                        if timer.poll(&mut wake_cx).is_ready() {
                            state.sealed = Some(FlushReason::Interval);
                        } else if shutdown.poll(&mut wake_cx).is_ready() {
                            state.sealed = Some(FlushReason::Shutdown);
                        } else {
                            // Registered under the lock: a concurrent seal wakes us after.
                            cell.0.waker.register(&waker);
                            return Poll::Pending;
                        }
                    }
                    let reason = state.sealed.unwrap_or(FlushReason::Size);
                    let messages = std::mem::take(&mut state.messages);
                    state.taken = true;
                    drop(state);
                    this.state.set(BatchState::Sealed { messages, reason });
                }
                StateProj::Sealed { .. } => {
                    let permit = match this.slots.as_mut() {
                        Some(slots) => ready!(slots.poll_acquire(cx)),
                        None => None,
                    };
                    let StateReplace::Sealed { messages, reason } =
                        this.state.as_mut().project_replace(BatchState::Done)
                    else {
                        unreachable!("bulk: the batch state was matched as sealed");
                    };
                    let hook = &this.config.hook;
                    hook.on_batch(reason, messages.len());
                    let span = tracing::info_span!(
                        "batch",
                        route = hook.route(),
                        size = messages.len(),
                        flush_reason = reason.as_str(),
                    );
                    this.state.set(BatchState::Ready {
                        messages,
                        permit,
                        span,
                    });
                }
                StateProj::Ready { span, .. } => {
                    let entered = span.enter();
                    if let Err(error) = ready!(this.inner.poll_ready(cx)) {
                        // Its messages are dropped unsettled, so their slots requeue them.
                        let failed = ServiceFailed::new((this.into_error)(error));
                        this.config.fail(&failed);
                        drop(entered);
                        this.state.set(BatchState::Done);
                        return Poll::Ready(Err(BatchError::new(Box::new(failed))));
                    }
                    drop(entered);
                    let StateReplace::Ready {
                        messages,
                        permit,
                        span,
                    } = this.state.as_mut().project_replace(BatchState::Done)
                    else {
                        unreachable!("bulk: the batch state was matched as ready");
                    };
                    let call = span.in_scope(|| this.inner.call(messages));
                    this.state.set(BatchState::Running { call, permit, span });
                }
                StateProj::Running { call, span, .. } => {
                    let entered = span.enter();
                    let result = ready!(call.poll(cx));
                    drop(entered);
                    this.state.set(BatchState::Done);
                    return Poll::Ready(result.map(|_| ()).map_err(|error| {
                        let error = (this.into_error)(error);
                        if let Some(failed) = ServiceFailed::find(&*error) {
                            this.config.fail(failed);
                        }
                        BatchError::new(error)
                    }));
                }
                StateProj::Done => panic!("bulk batch future polled after completion"),
            }
        }
    }
}

enum Inner<S: Service<Vec<M>>, M> {
    // Bulk 1, or a batch sealed at once (shutdown): nobody else waits for it.
    Direct {
        batch: Batch<S, M>,
    },
    // This future drives the batch and tells the waiting ones when it is done.
    Driver {
        batch: Batch<S, M>,
        handle: Arc<Handle<S, M>>,
    },
    // Another future drives the batch; this one waits for its outcome.
    Waiting {
        handle: Arc<Handle<S, M>>,
        registered: Option<Registration>,
    },
    Done,
}

/// The future of one message given to [`Bulk`](super::Bulk): completes when its batch is
/// done, with the batch's [`BatchError`] (boxed) when it failed.
///
/// The message futures of a batch share it: one drives it, the others wait for it, and if the
/// driver is dropped first, a waiting one takes over (see the
/// [module docs](super#driving)).
///
/// # Panics
///
/// When polled after it completed.
#[must_use = "futures do nothing unless polled"]
pub struct ResponseFuture<S: Service<Vec<M>>, M> {
    inner: Inner<S, M>,
}

impl<S: Service<Vec<M>>, M> ResponseFuture<S, M> {
    /// The future of a batch no other message joins.
    pub(super) fn direct(batch: BatchFuture<S, M>) -> Self {
        ResponseFuture {
            inner: Inner::Direct {
                batch: Box::pin(batch),
            },
        }
    }

    /// The future of the message that opened `batch`, which others may join through `handle`.
    pub(super) fn driver(batch: BatchFuture<S, M>, handle: Arc<Handle<S, M>>) -> Self {
        ResponseFuture {
            inner: Inner::Driver {
                batch: Box::pin(batch),
                handle,
            },
        }
    }

    /// The future of a message that joined the batch behind `handle`.
    pub(super) fn waiting(handle: Arc<Handle<S, M>>) -> Self {
        ResponseFuture {
            inner: Inner::Waiting {
                handle,
                registered: None,
            },
        }
    }
}

impl<S: Service<Vec<M>>, M> fmt::Debug for ResponseFuture<S, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let role = match self.inner {
            Inner::Direct { .. } => "direct",
            Inner::Driver { .. } => "driver",
            Inner::Waiting { .. } => "waiting",
            Inner::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("role", &role)
            .finish()
    }
}

impl<S: Service<Vec<M>>, M> Future for ResponseFuture<S, M> {
    type Output = Result<(), BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let result = loop {
            match &mut this.inner {
                Inner::Direct { batch } => break ready!(batch.as_mut().poll(cx)),
                Inner::Driver { batch, handle } => {
                    let result = ready!(batch.as_mut().poll(cx));
                    handle.finish(&result);
                    break result;
                }
                Inner::Waiting { handle, registered } => match handle.poll_wait(*registered, cx) {
                    Found::Done(result) => break result,
                    Found::Waiting(registration) => {
                        *registered = Some(registration);
                        return Poll::Pending;
                    }
                    Found::Driver(batch) => {
                        let handle = Arc::clone(handle);
                        this.inner = Inner::Driver { batch, handle };
                    }
                },
                Inner::Done => panic!("bulk ResponseFuture polled after completion"),
            }
        };
        this.inner = Inner::Done;
        Poll::Ready(result.map_err(|e| Box::new(e) as BoxError))
    }
}

impl<S: Service<Vec<M>>, M> Drop for ResponseFuture<S, M> {
    fn drop(&mut self) {
        // A driver going away before its batch is done hands the batch to the waiting
        // futures; if there are none, the handle drops it with its last reference.
        if let Inner::Driver { batch, handle } = std::mem::replace(&mut self.inner, Inner::Done) {
            handle.orphan(batch);
        }
    }
}
