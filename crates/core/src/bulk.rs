//! Group messages into batches: flush on size, on the flush interval, on shutdown.
//!
//! [`Bulk`] turns a `Service<Vec<M>>` into a `Service<M>`. Each call adds one message to the
//! open batch and returns a future that completes when the batch containing that message has
//! been handled. A batch is sealed and handed to the inner service when
//!
//! - it holds the effective bulk size ([`FlushReason::Size`]);
//! - its oldest message has waited [`BulkLayer::flush_interval`] (default 60 s)
//!   ([`FlushReason::Interval`]) — measured from the first message of *that* batch, not on a
//!   fixed cadence;
//! - the [`Shutdown`] signal fires ([`FlushReason::Shutdown`]): open batches flush at once,
//!   and so does every message that arrives afterwards.
//!
//! The effective size is `min(bulk_size, max_in_flight)`: a caller that never holds more than
//! `max_in_flight` message futures (an AMQP consumer never has more than its prefetch
//! unacknowledged) could otherwise wait forever for a batch that cannot fill. The clamp is
//! logged when the layer is applied.
//!
//! # Where it goes in a stack
//!
//! `Bulk` is the outermost layer of a route: it is where single deliveries become batches.
//! Everything inside it — [`Ack`](crate::ack::Ack), Timeit, [`Retry`](crate::retry::Retry),
//! tower's own `Timeout` or `ConcurrencyLimit`, the handler — sees `Vec<M>`. (The design
//! sketch draws Ack above Bulk; putting Ack inside means it settles a whole batch in one pass,
//! logs a failed batch once, and sees tower errors such as a timeout as the batch's error.)
//!
//! # Driving
//!
//! There is no background task. A batch runs inside a shared future that every message
//! future of the batch holds a handle to; whichever is polled drives it, timer included, so a
//! batch keeps moving as long as any of its message futures is alive. If all of them are
//! dropped, the buffered messages are dropped too, and their settlement slots requeue them.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use asyncworker_core::{ack::AckLayer, bulk::BulkLayer, memory::MemoryMessage};
//! use tower::{ServiceBuilder, service_fn};
//!
//! # fn main() -> Result<(), asyncworker_core::Error> {
//! let stack = ServiceBuilder::new()
//!     .layer(BulkLayer::new(100)?.flush_interval(Duration::from_secs(5)))
//!     .layer(AckLayer::new())
//!     .service(service_fn(|batch: Vec<MemoryMessage>| async move {
//!         println!("{} messages", batch.len());
//!         Ok::<_, std::convert::Infallible>(())
//!     }));
//! # let _ = stack;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures::future::{FutureExt, Shared, WeakShared};
use futures::task::AtomicWaker;
use pin_project_lite::pin_project;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{PollSemaphore, WaitForCancellationFutureOwned};
use tower::Service;
use tower::util::Oneshot;
use tower_layer::Layer;

use crate::metrics::RouteMetrics;
use crate::{BoxError, Error, Shutdown};

/// The default flush interval: 60 seconds, as in the Python original.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(60);

/// Why a batch was handed to the handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FlushReason {
    /// The batch reached the effective bulk size.
    Size,
    /// The batch's oldest message waited the flush interval.
    Interval,
    /// Shutdown began.
    Shutdown,
}

impl FlushReason {
    /// A short lowercase name (`size`, `interval`, `shutdown`), used as a metrics label.
    pub const fn as_str(self) -> &'static str {
        match self {
            FlushReason::Size => "size",
            FlushReason::Interval => "interval",
            FlushReason::Shutdown => "shutdown",
        }
    }
}

impl fmt::Display for FlushReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A layer that groups messages into batches. See the [module docs](self).
///
/// `M` is the message type; it is usually inferred. Cheap to clone. Each service it makes has
/// its own buffer; clones of the layer share the shutdown signal, the metric handles and
/// (when set) the concurrent-batch limit, so services made from one layer share one limit.
pub struct BulkLayer<M> {
    size: usize,
    flush_interval: Duration,
    max_in_flight: Option<usize>,
    batch_limit: Option<Arc<Semaphore>>,
    shutdown: Shutdown,
    metrics: RouteMetrics,
    _message: PhantomData<fn(M)>,
}

impl<M> Clone for BulkLayer<M> {
    fn clone(&self) -> Self {
        BulkLayer {
            size: self.size,
            flush_interval: self.flush_interval,
            max_in_flight: self.max_in_flight,
            batch_limit: self.batch_limit.clone(),
            shutdown: self.shutdown.clone(),
            metrics: self.metrics.clone(),
            _message: PhantomData,
        }
    }
}

impl<M> fmt::Debug for BulkLayer<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BulkLayer")
            .field("size", &self.size)
            .field("flush_interval", &self.flush_interval)
            .field("max_in_flight", &self.max_in_flight)
            .field(
                "max_concurrent_batches",
                &self.batch_limit.as_ref().map(|s| s.available_permits()),
            )
            .finish()
    }
}

impl<M> BulkLayer<M> {
    /// Batches of up to `size` messages, flushed after [`DEFAULT_FLUSH_INTERVAL`].
    ///
    /// # Errors
    ///
    /// When `size` is 0.
    pub fn new(size: usize) -> Result<Self, Error> {
        if size == 0 {
            return Err(Error::config("bulk size must be at least 1"));
        }
        Ok(BulkLayer {
            size,
            flush_interval: DEFAULT_FLUSH_INTERVAL,
            max_in_flight: None,
            batch_limit: None,
            shutdown: Shutdown::new(),
            metrics: RouteMetrics::default(),
            _message: PhantomData,
        })
    }

    /// Flush a partial batch once its oldest message has waited `interval`.
    pub fn flush_interval(mut self, interval: Duration) -> Self {
        self.flush_interval = interval;
        self
    }

    /// The most message futures the caller holds at once (the runtime's in-flight limit; for
    /// AMQP, the prefetch). Batches are clamped to it so they can always fill. `0` means no
    /// limit.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = (n > 0).then_some(n);
        self
    }

    /// Run at most `n` batches at once; sealed batches beyond it wait for a slot.
    ///
    /// # Errors
    ///
    /// When `n` is 0.
    pub fn max_concurrent_batches(mut self, n: usize) -> Result<Self, Error> {
        if n == 0 {
            return Err(Error::config("max concurrent batches must be at least 1"));
        }
        self.batch_limit = Some(Arc::new(Semaphore::new(n)));
        Ok(self)
    }

    /// Flush open batches, and every later message at once, when `shutdown` fires.
    pub fn shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// Count batches by flush reason with these handles (default: none recorded).
    pub fn metrics(mut self, metrics: RouteMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The batch size after the in-flight clamp.
    pub fn effective_size(&self) -> usize {
        match self.max_in_flight {
            Some(limit) => self.size.min(limit),
            None => self.size,
        }
    }
}

impl<S, M> Layer<S> for BulkLayer<M>
where
    S: Service<Vec<M>>,
    S::Error: Into<BoxError>,
{
    type Service = Bulk<S, M>;

    fn layer(&self, inner: S) -> Bulk<S, M> {
        let effective = self.effective_size();
        if effective < self.size {
            tracing::info!(
                route = self.metrics.route(),
                bulk_size = self.size,
                effective_size = effective,
                "bulk size clamped to the messages that can be in flight at once"
            );
        }
        Bulk {
            inner,
            config: Arc::new(Config {
                size: effective,
                flush_interval: self.flush_interval,
                batch_limit: self.batch_limit.clone(),
                shutdown: self.shutdown.clone(),
                metrics: self.metrics.clone(),
            }),
            open: None,
        }
    }
}

struct Config {
    size: usize,
    flush_interval: Duration,
    batch_limit: Option<Arc<Semaphore>>,
    shutdown: Shutdown,
    metrics: RouteMetrics,
}

/// Groups messages into batches for the inner `Service<Vec<M>>`. See the
/// [module docs](self).
///
/// Not `Clone`: each `Bulk` owns the batch it is filling.
pub struct Bulk<S, M>
where
    S: Service<Vec<M>>,
    S::Error: Into<BoxError>,
{
    inner: S,
    config: Arc<Config>,
    open: Option<OpenBatch<S, M>>,
}

impl<S, M> Bulk<S, M>
where
    S: Service<Vec<M>>,
    S::Error: Into<BoxError>,
{
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwrap the inner service. The open batch keeps running through its message futures.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The batch size after the in-flight clamp.
    pub fn effective_size(&self) -> usize {
        self.config.size
    }
}

impl<S, M> fmt::Debug for Bulk<S, M>
where
    S: Service<Vec<M>> + fmt::Debug,
    S::Error: Into<BoxError>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bulk")
            .field("inner", &self.inner)
            .field("size", &self.config.size)
            .field("flush_interval", &self.config.flush_interval)
            .field("open", &self.open.is_some())
            .finish()
    }
}

/// The batch being filled: its buffer and a weak handle to the future its messages share.
///
/// Only the message futures keep a batch alive: a batch whose futures were all dropped goes
/// away at once and requeues its buffered messages, instead of waiting for more messages or
/// for the service to be dropped.
type OpenBatch<S, M> = (Arc<Cell<M>>, WeakShared<BatchFuture<S, M>>);

/// The buffer of one batch, shared by [`Bulk`] (which fills it) and the batch future (which
/// seals it on the timer or shutdown, then takes it).
struct Cell<M> {
    state: Mutex<CellState<M>>,
    waker: AtomicWaker,
}

struct CellState<M> {
    messages: Vec<M>,
    sealed: Option<FlushReason>,
    taken: bool,
}

impl<M> Cell<M> {
    fn lock(&self) -> MutexGuard<'_, CellState<M>> {
        // A poisoned lock only means a panic elsewhere while holding it; the state stays
        // consistent (every write is a single field store), so keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Seal with `reason` and wake the batch future.
    fn seal(&self, state: &mut CellState<M>, reason: FlushReason) {
        if state.sealed.is_none() {
            state.sealed = Some(reason);
            self.waker.wake();
        }
    }
}

impl<S, M> Service<M> for Bulk<S, M>
where
    S: Service<Vec<M>> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = ();
    type Error = BoxError;
    type Future = ResponseFuture<S, M>;

    /// Always ready: a message only joins a buffer here. Backpressure comes from the caller's
    /// in-flight limit and, per batch, from the inner service's readiness.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, message: M) -> Self::Future {
        let config = &self.config;
        if config.size == 1 {
            let reason = if config.shutdown.is_triggered() {
                FlushReason::Shutdown
            } else {
                FlushReason::Size
            };
            let future =
                BatchFuture::sealed(self.inner.clone(), config.clone(), vec![message], reason);
            return ResponseFuture::direct(future);
        }
        if let Some((cell, weak)) = &self.open {
            let mut state = cell.lock();
            // `upgrade` fails once every message future of the batch is gone; its guard is
            // then sealing the cell (if it has not yet), so start a new batch.
            if let Some(future) = weak.upgrade().filter(|_| state.sealed.is_none()) {
                // No shutdown check here (it costs a lock per message): the batch future
                // watches the signal and seals the batch on its next poll, this message
                // included.
                state.messages.push(message);
                let full = state.messages.len() >= config.size;
                if full {
                    cell.seal(&mut state, FlushReason::Size);
                }
                drop(state);
                if full {
                    self.open = None;
                }
                return ResponseFuture::shared(future);
            }
        }
        let shutting_down = config.shutdown.is_triggered();
        // No open batch, or it was sealed by its timer or by shutdown: start a new one.
        let mut messages = Vec::with_capacity(config.size);
        messages.push(message);
        let cell = Arc::new(Cell {
            state: Mutex::new(CellState {
                messages,
                sealed: shutting_down.then_some(FlushReason::Shutdown),
                taken: false,
            }),
            waker: AtomicWaker::new(),
        });
        let future = BatchFuture::open(self.inner.clone(), config.clone(), cell.clone()).shared();
        self.open = if shutting_down {
            None
        } else {
            future.downgrade().map(|weak| (cell, weak))
        };
        ResponseFuture::shared(future)
    }
}

/// The batch's failure as every message future of the batch sees it: the inner service's
/// error, shared.
#[derive(Clone)]
pub struct BatchError(Arc<BoxError>);

impl BatchError {
    /// The inner service's error.
    pub fn inner(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &**self.0
    }
}

impl fmt::Debug for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self.0, f)
    }
}

impl fmt::Display for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "batch failed: {}", self.0)
    }
}

impl std::error::Error for BatchError {}

/// Drops the buffered messages of a batch whose future went away before taking them, and
/// marks the cell so [`Bulk`] starts a new batch.
struct CellGuard<M>(Arc<Cell<M>>);

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

pin_project! {
    #[project = StateProj]
    #[project_replace = StateReplace]
    enum BatchState<S, M>
    where
        S: Service<Vec<M>>,
        S::Error: Into<BoxError>,
    {
        Filling {
            cell: CellGuard<M>,
            #[pin]
            timer: Sleep,
            #[pin]
            shutdown: WaitForCancellationFutureOwned,
            // The waker the timer, the shutdown future and the cell were last polled with.
            registered: Option<Waker>,
        },
        Sealed {
            messages: Vec<M>,
            reason: FlushReason,
        },
        Running {
            #[pin]
            call: Oneshot<S, Vec<M>>,
            permit: Option<OwnedSemaphorePermit>,
            span: tracing::Span,
        },
        Done,
    }
}

pin_project! {
    /// One batch: waits for it to seal, takes a concurrency slot, calls the inner service.
    #[must_use = "futures do nothing unless polled"]
    pub struct BatchFuture<S, M>
    where
        S: Service<Vec<M>>,
        S::Error: Into<BoxError>,
    {
        #[pin]
        state: BatchState<S, M>,
        inner: Option<S>,
        slots: Option<PollSemaphore>,
        config: Arc<Config>,
    }
}

impl<S, M> BatchFuture<S, M>
where
    S: Service<Vec<M>>,
    S::Error: Into<BoxError>,
{
    fn open(inner: S, config: Arc<Config>, cell: Arc<Cell<M>>) -> Self {
        let deadline = Instant::now() + config.flush_interval;
        BatchFuture {
            state: BatchState::Filling {
                cell: CellGuard(cell),
                timer: tokio::time::sleep_until(deadline),
                shutdown: config.shutdown.triggered(),
                registered: None,
            },
            inner: Some(inner),
            slots: config.batch_limit.clone().map(PollSemaphore::new),
            config,
        }
    }

    fn sealed(inner: S, config: Arc<Config>, messages: Vec<M>, reason: FlushReason) -> Self {
        BatchFuture {
            state: BatchState::Sealed { messages, reason },
            inner: Some(inner),
            slots: config.batch_limit.clone().map(PollSemaphore::new),
            config,
        }
    }
}

impl<S, M> fmt::Debug for BatchFuture<S, M>
where
    S: Service<Vec<M>>,
    S::Error: Into<BoxError>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            BatchState::Filling { .. } => "filling",
            BatchState::Sealed { .. } => "sealed",
            BatchState::Running { .. } => "running",
            BatchState::Done => "done",
        };
        f.debug_struct("BatchFuture")
            .field("state", &state)
            .finish()
    }
}

impl<S, M> Future for BatchFuture<S, M>
where
    S: Service<Vec<M>>,
    S::Error: Into<BoxError>,
{
    type Output = Result<(), BatchError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Filling {
                    cell,
                    timer,
                    shutdown,
                    registered,
                } => {
                    let mut state = cell.0.lock();
                    if state.sealed.is_none() {
                        // Fast path. Every message future of the batch polls it once through
                        // `Shared`, always with the same waker (Shared's own). When nothing
                        // has changed since the last registration, skip re-registering with
                        // the timer, the shutdown signal and the cell: one batch of N
                        // messages would otherwise pay N times for it.
                        let unchanged =
                            registered.as_ref().is_some_and(|w| w.will_wake(cx.waker()))
                                && !timer.is_elapsed()
                                && !this.config.shutdown.is_triggered();
                        if unchanged {
                            return Poll::Pending;
                        }
                        if timer.poll(cx).is_ready() {
                            state.sealed = Some(FlushReason::Interval);
                        } else if shutdown.poll(cx).is_ready() {
                            state.sealed = Some(FlushReason::Shutdown);
                        } else {
                            // Registered under the lock: a concurrent seal wakes us after.
                            cell.0.waker.register(cx.waker());
                            *registered = Some(cx.waker().clone());
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
                        Some(slots) => match slots.poll_acquire(cx) {
                            Poll::Ready(permit) => permit,
                            Poll::Pending => return Poll::Pending,
                        },
                        None => None,
                    };
                    let StateReplace::Sealed { messages, reason } =
                        this.state.as_mut().project_replace(BatchState::Done)
                    else {
                        return Poll::Pending;
                    };
                    let Some(inner) = this.inner.take() else {
                        return Poll::Pending;
                    };
                    let metrics = &this.config.metrics;
                    metrics.batch(reason);
                    let span = tracing::info_span!(
                        "batch",
                        route = metrics.route(),
                        size = messages.len(),
                        flush_reason = reason.as_str(),
                    );
                    this.state.set(BatchState::Running {
                        call: Oneshot::new(inner, messages),
                        permit,
                        span,
                    });
                }
                StateProj::Running { call, span, .. } => {
                    let _entered = span.enter();
                    let result = match call.poll(cx) {
                        Poll::Ready(result) => result,
                        Poll::Pending => return Poll::Pending,
                    };
                    drop(_entered);
                    this.state.set(BatchState::Done);
                    return Poll::Ready(
                        result
                            .map(|_| ())
                            .map_err(|e| BatchError(Arc::new(e.into()))),
                    );
                }
                StateProj::Done => return Poll::Pending,
            }
        }
    }
}

pin_project! {
    #[project = ResponseProj]
    enum Inner<S, M>
    where
        S: Service<Vec<M>>,
        S::Error: Into<BoxError>,
    {
        // Boxed: a batch future holds the whole inner stack's future and a timer, and every
        // message future is moved into its caller's set of in-flight futures; kept inline it
        // would make each of them (bulk N included) as large as a batch.
        Direct { future: Pin<Box<BatchFuture<S, M>>> },
        Shared { #[pin] future: Shared<BatchFuture<S, M>> },
    }
}

pin_project! {
    /// The future of one message given to [`Bulk`]: completes when its batch is done.
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<S, M>
    where
        S: Service<Vec<M>>,
        S::Error: Into<BoxError>,
    {
        #[pin]
        inner: Inner<S, M>,
    }
}

impl<S, M> ResponseFuture<S, M>
where
    S: Service<Vec<M>>,
    S::Error: Into<BoxError>,
{
    fn direct(future: BatchFuture<S, M>) -> Self {
        ResponseFuture {
            inner: Inner::Direct {
                future: Box::pin(future),
            },
        }
    }

    fn shared(future: Shared<BatchFuture<S, M>>) -> Self {
        ResponseFuture {
            inner: Inner::Shared { future },
        }
    }
}

impl<S, M> fmt::Debug for ResponseFuture<S, M>
where
    S: Service<Vec<M>>,
    S::Error: Into<BoxError>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S, M> Future for ResponseFuture<S, M>
where
    S: Service<Vec<M>>,
    S::Error: Into<BoxError>,
{
    type Output = Result<(), BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = match self.project().inner.project() {
            ResponseProj::Direct { future } => futures::ready!(future.as_mut().poll(cx)),
            ResponseProj::Shared { future } => futures::ready!(future.poll(cx)),
        };
        Poll::Ready(result.map_err(|e| Box::new(e) as BoxError))
    }
}
