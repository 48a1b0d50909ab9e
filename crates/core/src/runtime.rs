//! Drive a source through a service stack: backpressure, bounded in-flight work, panic
//! isolation, graceful shutdown.
//!
//! [`Worker`] is the engine under every route of an [`App`](crate::App), and usable on
//! its own:
//!
//! - it pulls the next delivery only when the stack is ready and fewer than
//!   [`Worker::max_in_flight`] message futures are unfinished, so a slow handler slows
//!   intake instead of piling messages up;
//! - a panic in the stack is caught, logged and treated as that message's error; the route
//!   keeps serving;
//! - a source error is counted (and logged at DEBUG: each backend logs its own failures, with
//!   their context, once), and the worker polls the source again (each backend reconnects on
//!   its own);
//! - when the [`Shutdown`] signal fires it stops intake, lets partial batches flush (the
//!   [`Bulk`](crate::bulk::Bulk) layer watches the same signal), waits for in-flight work up
//!   to the grace period, and drops what is still running — dropped batches requeue their
//!   messages. Then it waits for the source's background work (its last settlements) within
//!   what is left of the grace period; when work was abandoned, up to one second more (at
//!   most the grace period), so the acks of work that finished just before the deadline and
//!   the requeues of the abandoned work still reach the broker.
//!
//! ```
//! use asyncworker_core::{Action, BoxError, Shutdown, ack::AckLayer, bulk::BulkLayer};
//! use asyncworker_core::runtime::Worker;
//! use asyncworker_core::memory::{MemoryMessage, MemoryQueue};
//! use tower::{ServiceBuilder, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), BoxError> {
//! let queue = MemoryQueue::new();
//! let first = queue.push_bytes("one");
//! queue.push_bytes("two");
//! queue.close(); // the source ends once it is drained, and so does the worker
//!
//! // One signal for the worker and the Bulk layer: the worker fires it when the source
//! // ends, and the partial batch flushes instead of waiting for its flush interval.
//! let shutdown = Shutdown::new();
//! let stack = ServiceBuilder::new()
//!     .layer(BulkLayer::new(10)?.with_shutdown(shutdown.clone()))
//!     .layer(AckLayer::new())
//!     .service(service_fn(|batch: Vec<MemoryMessage>| async move {
//!         println!("{} messages", batch.len());
//!         Ok::<_, BoxError>(())
//!     }));
//! let report = Worker::new(queue.source(), stack)
//!     .name("drain")
//!     .with_shutdown(shutdown)
//!     .run()
//!     .await?;
//! assert_eq!(report.received, 2);
//! assert_eq!(queue.settlement(first), Some(Action::Ack));
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::{Future, poll_fn};
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{FutureExt, Stream, StreamExt};
use tower::Service;

use crate::metrics::RouteMetrics;
use crate::util::{Chain, panic_message};
use crate::{BoxError, Error, Shutdown, Source, SourceContext};

/// The default grace period for in-flight work at shutdown: 30 seconds.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(30);

/// How long a source's background work (sending the last settlements) may take after the
/// grace period ran out with work abandoned; never more than the grace period itself.
const SETTLE_ALLOWANCE: Duration = Duration::from_secs(1);

/// The default in-flight limit when neither the route nor the source sets one.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 128;

/// How a worker's run ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerReport {
    /// Deliveries pulled from the source.
    pub received: u64,
    /// Message futures that completed with an error (or a panic).
    pub failed: u64,
    /// Message futures that panicked.
    pub panicked: u64,
    /// Errors the source reported.
    pub source_errors: u64,
    /// Message futures still running when the grace period ran out; their batches were
    /// dropped and their messages requeued.
    pub abandoned: u64,
}

/// Drives one source through one service stack. See the [module docs](self).
#[must_use = "a worker does nothing until `run` is awaited"]
pub struct Worker<Src, Svc> {
    name: String,
    source: Src,
    service: Svc,
    max_in_flight: Option<usize>,
    shutdown: Shutdown,
    grace: Duration,
    metrics: Option<RouteMetrics>,
    cx: Option<SourceContext>,
}

impl<Src, Svc> fmt::Debug for Worker<Src, Svc> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("name", &self.name)
            .field("max_in_flight", &self.max_in_flight)
            .field("grace", &self.grace)
            .finish_non_exhaustive()
    }
}

impl<Src, Svc> Worker<Src, Svc>
where
    Src: Source,
    Svc: Service<Src::Message>,
    Svc::Error: Into<BoxError>,
{
    /// A worker feeding `source` into `service` (a `Service<M>`: usually a
    /// [`Bulk`](crate::bulk::Bulk) stack).
    pub fn new(source: Src, service: Svc) -> Self {
        Worker {
            name: "default".to_owned(),
            source,
            service,
            max_in_flight: None,
            shutdown: Shutdown::new(),
            grace: DEFAULT_GRACE_PERIOD,
            metrics: None,
            cx: None,
        }
    }

    /// The route name used in logs and metrics (default `default`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Hold at most `n` unfinished message futures. Defaults to the source's own limit
    /// ([`Source::max_in_flight`], the AMQP prefetch), else [`DEFAULT_MAX_IN_FLIGHT`]; a value
    /// above the source's limit is lowered to it. A `Bulk` layer in the stack must be clamped
    /// to the same number (the [`App`](crate::App) does this). 0 is an error, which
    /// [`Worker::run`] returns before it starts the source; leave it unset for the default.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = Some(n);
        self
    }

    /// The in-flight limit this worker will use.
    pub fn effective_max_in_flight(&self) -> usize {
        effective_in_flight(self.max_in_flight, self.source.max_in_flight())
    }

    /// Stop on this signal (default: a signal of the worker's own).
    ///
    /// The worker also fires it when the source ends, so that partial batches flush at once:
    /// give each worker its own signal, derived with [`Shutdown::child`] from a shared one.
    pub fn with_shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// How long in-flight work may run after shutdown begins (default 30 s).
    pub fn grace_period(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Record the in-flight gauge and source errors with these handles.
    pub fn metrics(mut self, metrics: RouteMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Start the source with this context (default: a fresh one for the route and the
    /// worker's shutdown signal).
    pub fn source_context(mut self, cx: SourceContext) -> Self {
        self.cx = Some(cx);
        self
    }

    /// Run until the source ends, or until shutdown and the in-flight work is done or past
    /// its grace period.
    ///
    /// # Errors
    ///
    /// An [`Error::Config`] when [`Worker::max_in_flight`] is 0, before the source starts.
    /// When the service fails in `poll_ready` (it can no longer take work); in-flight work is
    /// still waited for first.
    pub async fn run(self) -> Result<WorkerReport, BoxError> {
        if self.max_in_flight == Some(0) {
            return Err(Box::new(Error::config("max in flight must be at least 1")));
        }
        let Worker {
            name: route,
            source,
            mut service,
            max_in_flight,
            shutdown,
            grace,
            metrics,
            cx,
        } = self;
        let limit = effective_in_flight(max_in_flight, source.max_in_flight());
        let metrics =
            metrics.unwrap_or_else(|| RouteMetrics::new(crate::metrics::DEFAULT_NAMESPACE, &route));
        let cx = cx.unwrap_or_else(|| SourceContext::new(route.as_str(), shutdown.clone()));
        let readiness = (!source.reports_readiness()).then(|| cx.readiness().clone());
        let background = cx.background().clone();
        if let Some(ready) = &readiness {
            ready.set(true);
        }
        let stream = source.into_stream(cx);
        // Boxed, not pinned on the stack, so it can be dropped before the background wait.
        let mut stream = Box::pin(stream);
        let mut triggered = pin!(shutdown.triggered());
        let mut deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
        let mut in_flight = FuturesUnordered::new();
        let mut report = WorkerReport::default();
        let mut intake = true;
        let mut service_error: Option<BoxError> = None;
        let gauge = metrics.in_flight().clone();
        tracing::info!(route = %route, max_in_flight = limit, "route started");

        poll_fn(|cx| {
            let mut budget = 256u32;
            loop {
                while let Poll::Ready(Some(outcome)) = in_flight.poll_next_unpin(cx) {
                    gauge.decrement(1.0);
                    match outcome {
                        Ok(Ok(())) => {}
                        Ok(Err(error)) => {
                            report.failed += 1;
                            tracing::debug!(route = %route, %error, "message failed");
                        }
                        Err(payload) => {
                            let payload: Box<dyn std::any::Any + Send> = payload;
                            report.failed += 1;
                            report.panicked += 1;
                            tracing::error!(
                                route = %route,
                                panic = panic_message(&*payload),
                                "stack panicked; the route keeps serving"
                            );
                        }
                    }
                }
                // Watched until it fires, whatever stopped intake first, so a shutdown that
                // comes while in-flight work hangs still starts the grace period.
                if deadline.is_none() && triggered.as_mut().poll(cx).is_ready() {
                    if intake {
                        intake = false;
                        tracing::info!(route = %route, in_flight = in_flight.len(), "shutdown: intake stopped");
                    }
                    deadline = Some(Box::pin(tokio::time::sleep(grace)));
                }
                if intake && in_flight.len() < limit {
                    budget -= 1;
                    if budget == 0 {
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    match service.poll_ready(cx) {
                        Poll::Ready(Ok(())) => match stream.as_mut().poll_next(cx) {
                            Poll::Ready(Some(Ok(message))) => {
                                report.received += 1;
                                let call = std::panic::catch_unwind(AssertUnwindSafe(|| {
                                    service.call(message)
                                }));
                                match call {
                                    Ok(future) => {
                                        gauge.increment(1.0);
                                        in_flight.push(
                                            AssertUnwindSafe(Erased { future }).catch_unwind(),
                                        );
                                    }
                                    Err(payload) => {
                                        report.failed += 1;
                                        report.panicked += 1;
                                        tracing::error!(
                                            route = %route,
                                            panic = panic_message(&*payload),
                                            "stack panicked in call; the route keeps serving"
                                        );
                                    }
                                }
                                continue;
                            }
                            Poll::Ready(Some(Err(error))) => {
                                report.source_errors += 1;
                                metrics.source_error();
                                let error: BoxError = error.into();
                                // At DEBUG: the source has logged it already, with what it
                                // knows (endpoint, attempt, delay): one failure, one line.
                                tracing::debug!(route = %route, error = %Chain(&*error), "source error");
                                continue;
                            }
                            Poll::Ready(None) => {
                                intake = false;
                                tracing::info!(route = %route, "source ended; flushing");
                                // Nothing more will come: let partial batches flush now.
                                shutdown.trigger();
                                continue;
                            }
                            Poll::Pending => {}
                        },
                        Poll::Ready(Err(error)) => {
                            let error: BoxError = error.into();
                            tracing::error!(route = %route, error = %Chain(&*error), "service failed; route stops taking messages");
                            service_error = Some(error);
                            intake = false;
                            // The route is over: flush partial batches and give in-flight
                            // work the grace period, as at shutdown.
                            shutdown.trigger();
                            continue;
                        }
                        Poll::Pending => {}
                    }
                }
                if !intake && in_flight.is_empty() {
                    return Poll::Ready(());
                }
                if let Some(timer) = deadline.as_mut()
                    && timer.as_mut().poll(cx).is_ready()
                {
                    {
                        report.abandoned = in_flight.len() as u64;
                        gauge.decrement(in_flight.len() as f64);
                        tracing::warn!(
                            route = %route,
                            abandoned = in_flight.len(),
                            grace_secs = grace.as_secs_f64(),
                            "grace period over; requeueing unfinished work"
                        );
                        in_flight.clear();
                        return Poll::Ready(());
                    }
                }
                return Poll::Pending;
            }
        })
        .await;
        // Dropping the stream stops the source; what it spawned in the background still has
        // settlements to send and connections to close. Wait for that, within the grace period
        // — and when it ran out, a moment more ([`SETTLE_ALLOWANCE`]): work that finished
        // just before the deadline has its acks still on their way, and the abandoned
        // batches their requeues — so returning does not cut them off.
        drop(stream);
        background.close();
        if !background.is_empty() {
            let bound = match deadline {
                Some(timer) if report.abandoned == 0 => timer,
                Some(_) => Box::pin(tokio::time::sleep(grace.min(SETTLE_ALLOWANCE))),
                None => Box::pin(tokio::time::sleep(grace)),
            };
            tokio::select! {
                () = background.wait() => {}
                () = bound => tracing::warn!(route = %route, "the source's background work did not finish within the grace period"),
            }
        }
        if let Some(ready) = &readiness {
            ready.set(false);
        }
        tracing::info!(route = %route, received = report.received, failed = report.failed, "route stopped");
        match service_error {
            Some(error) => Err(error),
            None => Ok(report),
        }
    }
}

/// The in-flight limit from a configured value and the source's own: the lower of the two,
/// either alone, else [`DEFAULT_MAX_IN_FLIGHT`]; at least 1.
pub(crate) fn effective_in_flight(configured: Option<usize>, source: Option<usize>) -> usize {
    match (configured, source) {
        (Some(c), Some(s)) => c.min(s),
        (Some(c), None) => c,
        (None, Some(s)) => s,
        (None, None) => DEFAULT_MAX_IN_FLIGHT,
    }
    .max(1)
}

pin_project_lite::pin_project! {
    /// A message future with its response dropped and its error boxed.
    struct Erased<F> {
        #[pin]
        future: F,
    }
}

impl<F, T, E> Future for Erased<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<(), BoxError>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        self.project()
            .future
            .poll(cx)
            .map(|r| r.map(|_| ()).map_err(Into::into))
    }
}
