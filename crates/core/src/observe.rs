//! What the layers report as they work: the [`LayerMetrics`] hook and the values it is given.
//!
//! Below the layers and the runtime: the layers call the hook, the App's
//! [`RouteMetrics`](crate::metrics::RouteMetrics) implements it.

use std::any::TypeId;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::Action;

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

/// How a batch's handler call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// The handler returned `Ok`.
    Ok,
    /// The handler (or the service in front of it) returned an error.
    Error,
    /// The handler panicked.
    Panic,
}

impl Outcome {
    /// A short lowercase name (`ok`, `error`, `panic`), used as a metrics label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Panic => "panic",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the [`Bulk`](crate::bulk::Bulk) and [`Ack`](crate::ack::Ack) layers report, set with
/// their `.metrics(hook)` method. Every method has a no-op default, so an implementation
/// overrides only what it records; `()` records nothing (the layers' default).
///
/// The layers call it once per batch (and once per settlement action within a batch), never
/// per message. The App's [`RouteMetrics`](crate::metrics::RouteMetrics) implements it with
/// pre-resolved `metrics` handles.
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use asyncworker_core::{Action, ack::AckLayer, metrics::LayerMetrics};
///
/// #[derive(Default)]
/// struct Acked(AtomicU64);
///
/// impl LayerMetrics for Acked {
///     fn on_settled(&self, action: Action, count: u64) {
///         if action == Action::Ack {
///             self.0.fetch_add(count, Ordering::Relaxed);
///         }
///     }
/// }
///
/// let layer = AckLayer::new().metrics(Acked::default());
/// # let _ = layer;
/// ```
pub trait LayerMetrics: Send + Sync + 'static {
    /// The route label the layers put on their log events (default `default`).
    fn route(&self) -> &str {
        "default"
    }

    /// Bulk sealed a batch of `size` messages for `reason` and is handing it on.
    fn on_batch(&self, reason: FlushReason, size: usize) {
        let _ = (reason, size);
    }

    /// Ack saw a batch's inner call end with `outcome` after `elapsed`.
    fn on_handled(&self, outcome: Outcome, elapsed: Duration) {
        let _ = (outcome, elapsed);
    }

    /// Ack settled `count` messages of one batch with `action`.
    fn on_settled(&self, action: Action, count: u64) {
        let _ = (action, count);
    }

    /// A settlement with `action` could not be delivered to the backend.
    fn on_settle_failed(&self, action: Action) {
        let _ = action;
    }
}

impl LayerMetrics for () {}

/// One report of the layers, as a closure hook receives it.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum LayerEvent {
    /// [`LayerMetrics::on_batch`].
    Batch {
        /// Why the batch was sealed.
        reason: FlushReason,
        /// Its messages.
        size: usize,
    },
    /// [`LayerMetrics::on_handled`].
    Handled {
        /// How the inner call ended.
        outcome: Outcome,
        /// How long it took.
        elapsed: Duration,
    },
    /// [`LayerMetrics::on_settled`].
    Settled {
        /// The action.
        action: Action,
        /// How many messages of the batch were settled with it.
        count: u64,
    },
    /// [`LayerMetrics::on_settle_failed`].
    SettleFailed {
        /// The action that could not be delivered.
        action: Action,
    },
}

/// A closure is a hook: it receives every report as a [`LayerEvent`].
///
/// ```
/// use asyncworker_core::{bulk::BulkLayer, memory::MemoryMessage, metrics::LayerEvent};
///
/// # fn main() -> Result<(), asyncworker_core::Error> {
/// let layer = BulkLayer::<MemoryMessage>::new(10)?.metrics(|event: LayerEvent| {
///     if let LayerEvent::Batch { reason, size } = event {
///         println!("a batch of {size}, flushed by {reason}");
///     }
/// });
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
impl<F> LayerMetrics for F
where
    F: Fn(LayerEvent) + Send + Sync + 'static,
{
    fn on_batch(&self, reason: FlushReason, size: usize) {
        self(LayerEvent::Batch { reason, size });
    }

    fn on_handled(&self, outcome: Outcome, elapsed: Duration) {
        self(LayerEvent::Handled { outcome, elapsed });
    }

    fn on_settled(&self, action: Action, count: u64) {
        self(LayerEvent::Settled { action, count });
    }

    fn on_settle_failed(&self, action: Action) {
        self(LayerEvent::SettleFailed { action });
    }
}

/// A layer's hook, type-erased so it adds no type parameter to the layers; `None` (the
/// default, and what `()` becomes) records nothing at the cost of one branch.
#[derive(Clone, Default)]
pub(crate) struct Hook(Option<Arc<dyn LayerMetrics>>);

impl Hook {
    pub(crate) fn new<H: LayerMetrics>(hook: H) -> Self {
        if TypeId::of::<H>() == TypeId::of::<()>() {
            return Hook(None);
        }
        Hook(Some(Arc::new(hook)))
    }

    /// Whether anything is recorded: a layer skips the work of measuring (reading the clock)
    /// for a hook that would drop the figure.
    pub(crate) fn is_enabled(&self) -> bool {
        self.0.is_some()
    }

    pub(crate) fn route(&self) -> &str {
        match &self.0 {
            Some(hook) => hook.route(),
            None => "default",
        }
    }

    pub(crate) fn on_batch(&self, reason: FlushReason, size: usize) {
        if let Some(hook) = &self.0 {
            hook.on_batch(reason, size);
        }
    }

    pub(crate) fn on_handled(&self, outcome: Outcome, elapsed: Duration) {
        if let Some(hook) = &self.0 {
            hook.on_handled(outcome, elapsed);
        }
    }

    pub(crate) fn on_settled(&self, action: Action, count: u64) {
        if let Some(hook) = &self.0 {
            hook.on_settled(action, count);
        }
    }

    pub(crate) fn on_settle_failed(&self, action: Action) {
        if let Some(hook) = &self.0 {
            hook.on_settle_failed(action);
        }
    }
}

impl fmt::Debug for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(hook) => f.debug_tuple("Hook").field(&hook.route()).finish(),
            None => f.write_str("Hook(none)"),
        }
    }
}
