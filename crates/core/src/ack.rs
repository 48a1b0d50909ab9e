//! Settle every message of a batch exactly once, after its handler.
//!
//! [`Ack`] wraps a `Service<Vec<M>>` (the handler, or the layers around it). When the inner
//! future completes, every message of the batch is settled:
//!
//! - with its mark, if the handler made one ([`Message::accept`], [`Message::reject`], ...):
//!   a mark beats the policy, even when the handler failed;
//! - else with [`AckLayer::on_success`] (default [`Action::Ack`]) when the handler returned
//!   `Ok`, or [`AckLayer::on_error`] (default [`Action::Requeue`]) when it returned an error
//!   or panicked.
//!
//! A panic in the handler is caught and treated as the batch's error (it comes out as a
//! [`HandlerPanicked`] error). A batch whose future is dropped before it completes — a
//! shutdown past its grace period, a cancelled task — has every message requeued, marks
//! notwithstanding: its processing never concluded. A settlement the backend cannot deliver
//! is logged and counted, never a panic.
//!
//! The handler's error is passed on (boxed) after settling, so outer layers and the runtime
//! can see that the batch failed; `Ack` logs it once per batch.
//!
//! # Example
//!
//! ```
//! use asyncworker_core::{Action, Message, ack::AckLayer, memory::MemoryMessage};
//! use tower::{ServiceBuilder, service_fn};
//!
//! let handler = service_fn(|batch: Vec<MemoryMessage>| async move {
//!     for message in &batch {
//!         if message.payload().is_empty() {
//!             message.reject(); // dropped, or dead-lettered
//!         }
//!     }
//!     Ok::<_, std::io::Error>(())
//! });
//! let stack = ServiceBuilder::new()
//!     .layer(AckLayer::new().on_error(Action::Reject))
//!     .service(handler);
//! # let _ = stack;
//! ```

use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::Service;
use tower_layer::Layer;

use crate::metrics::{Outcome, RouteMetrics};
use crate::{Action, BoxError, Message, Settlement};

/// A layer that settles every message of a batch after the inner service completes.
///
/// Cheap to clone; clones share the metric handles.
#[derive(Debug, Clone)]
pub struct AckLayer {
    on_success: Action,
    on_error: Action,
    metrics: RouteMetrics,
}

impl AckLayer {
    /// The seed's defaults: ack on success, requeue on error.
    pub fn new() -> Self {
        AckLayer {
            on_success: Action::Ack,
            on_error: Action::Requeue,
            metrics: RouteMetrics::default(),
        }
    }

    /// The action for unmarked messages when the handler succeeds (default [`Action::Ack`]).
    pub fn on_success(mut self, action: Action) -> Self {
        self.on_success = action;
        self
    }

    /// The action for unmarked messages when the handler fails or panics (default
    /// [`Action::Requeue`]).
    pub fn on_error(mut self, action: Action) -> Self {
        self.on_error = action;
        self
    }

    /// Record settlement counts and handler durations with these handles (default: none
    /// recorded).
    pub fn metrics(mut self, metrics: RouteMetrics) -> Self {
        self.metrics = metrics;
        self
    }
}

impl Default for AckLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for AckLayer {
    type Service = Ack<S>;

    fn layer(&self, inner: S) -> Ack<S> {
        Ack {
            inner,
            layer: self.clone(),
        }
    }
}

/// Settles every message of a batch after the inner service completes. See the
/// [module docs](self).
#[derive(Debug, Clone)]
pub struct Ack<S> {
    inner: S,
    layer: AckLayer,
}

impl<S> Ack<S> {
    /// Wrap `inner` with the default policy (ack on success, requeue on error).
    pub fn new(inner: S) -> Self {
        AckLayer::new().layer(inner)
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwrap the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// The error [`Ack`] reports when the handler panicked.
#[derive(Debug, thiserror::Error)]
#[error("handler panicked: {message}")]
pub struct HandlerPanicked {
    message: String,
}

impl HandlerPanicked {
    fn from_payload(payload: &(dyn std::any::Any + Send)) -> Self {
        HandlerPanicked {
            message: crate::runtime::panic_message(payload).to_owned(),
        }
    }

    /// The panic message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl<S, M> Service<Vec<M>> for Ack<S>
where
    S: Service<Vec<M>>,
    S::Error: Into<BoxError>,
    M: Message,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, batch: Vec<M>) -> Self::Future {
        let guard = SettleGuard {
            settlements: batch.iter().map(|m| m.settlement().clone()).collect(),
            layer: self.layer.clone(),
            armed: true,
        };
        let inner = &mut self.inner;
        let state = match catch_unwind(AssertUnwindSafe(|| inner.call(batch))) {
            Ok(future) => State::Running { future },
            Err(payload) => State::Panicked {
                error: Some(HandlerPanicked::from_payload(&*payload)),
            },
        };
        ResponseFuture {
            state,
            guard,
            started: Instant::now(),
        }
    }
}

struct SettleGuard {
    settlements: Vec<Settlement>,
    layer: AckLayer,
    armed: bool,
}

impl SettleGuard {
    /// Settle every message: its mark, else `default`.
    fn settle(&mut self, default: Action) {
        self.armed = false;
        let metrics = &self.layer.metrics;
        let mut counts = [0u64; 4];
        for settlement in &self.settlements {
            match settlement.settle_marked_or(default) {
                Ok(action) => counts[action.index()] += 1,
                // Settled already (by hand, in the handler): nothing was lost, nothing to do.
                Err((_, crate::SettleError::AlreadySettled)) => {}
                Err((action, error)) => {
                    metrics.settle_failed();
                    tracing::warn!(route = metrics.route(), %action, %error, "settlement failed");
                }
            }
        }
        for (action, n) in Action::ALL.iter().zip(counts) {
            if n > 0 {
                metrics.settled(*action, n);
            }
        }
    }
}

impl Drop for SettleGuard {
    fn drop(&mut self) {
        if self.armed {
            self.armed = false;
            let metrics = &self.layer.metrics;
            let mut requeued = 0;
            for settlement in &self.settlements {
                match settlement.settle(Action::Requeue) {
                    Ok(()) => requeued += 1,
                    Err(crate::SettleError::AlreadySettled) => {}
                    Err(error) => {
                        metrics.settle_failed();
                        tracing::warn!(route = metrics.route(), %error, "requeue of a cancelled batch failed");
                    }
                }
            }
            if requeued > 0 {
                metrics.settled(Action::Requeue, requeued);
                tracing::warn!(
                    route = metrics.route(),
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
        Panicked { error: Option<HandlerPanicked> },
        Done,
    }
}

pin_project! {
    /// The future of [`Ack`]: the inner future, then settlement.
    #[must_use = "futures do nothing unless polled; dropping it requeues the batch"]
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
        guard: SettleGuard,
        started: Instant,
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
                match catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
                    Ok(poll) => ready!(poll).map_err(|e| (e.into(), Outcome::Error)),
                    Err(payload) => Err((
                        Box::new(HandlerPanicked::from_payload(&*payload)) as BoxError,
                        Outcome::Panic,
                    )),
                }
            }
            StateProj::Panicked { error } => match error.take() {
                Some(error) => Err((Box::new(error) as BoxError, Outcome::Panic)),
                None => return Poll::Pending,
            },
            StateProj::Done => return Poll::Pending,
        };
        this.state.set(State::Done);
        let elapsed = this.started.elapsed().as_secs_f64();
        let layer = &this.guard.layer;
        let (action, outcome) = match &result {
            Ok(_) => (layer.on_success, Outcome::Ok),
            Err((error, outcome)) => {
                tracing::warn!(
                    route = layer.metrics.route(),
                    messages = this.guard.settlements.len(),
                    policy = %layer.on_error,
                    error = %error,
                    "handler failed"
                );
                (layer.on_error, *outcome)
            }
        };
        layer.metrics.handler_duration(outcome, elapsed);
        this.guard.settle(action);
        Poll::Ready(result.map_err(|(error, _)| error))
    }
}
