//! Where messages come from: the [`Source`] trait every backend implements.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::Stream;
use tokio_util::task::TaskTracker;

use crate::{BoxError, Message, Shutdown};

/// A backend's supply of deliveries for one route.
///
/// Any `Stream<Item = Result<M, E>>` is a source. Backends with a life of their own (an AMQP
/// consumer that reconnects, an SSE client) implement the trait on a builder-like type, so the
/// runtime can tell them how many messages it may hold ([`Source::max_in_flight`]) and hand
/// them a [`SourceContext`] with the shutdown signal and the route's readiness flag.
///
/// # Contract
///
/// - The stream yields messages and *recoverable* errors: an error item is counted by the
///   runtime (the `_source_errors_total` metric), which then polls again. Reconnecting is the
///   source's job, and so is logging the failure, once, with what only it knows (the endpoint,
///   the attempt, the delay before the next): the runtime logs error items at DEBUG only.
/// - When [`SourceContext::shutdown`] fires, the source stops intake (an AMQP source cancels
///   its consumers) and ends the stream. Messages it already handed out stay settleable until
///   the runtime has settled them: keep channels open while their settlers live.
/// - The stream ending on its own ends the route.
/// - Background work that must outlive the stream — sending the last settlements, closing
///   connections — is spawned with [`SourceContext::spawn`]: the runtime waits for it (within
///   the grace period) before it returns, so a process that exits right after does not cut
///   it off.
pub trait Source: Send + 'static {
    /// The messages this source yields.
    type Message: Message;
    /// The recoverable errors it reports.
    type Error: Into<BoxError> + Send + 'static;
    /// The stream of deliveries.
    type Stream: Stream<Item = Result<Self::Message, Self::Error>> + Send + 'static;

    /// The most messages the source hands out before some are settled (for AMQP, the
    /// prefetch), or `None` when there is no such limit. The runtime never holds more than
    /// this, and [`Bulk`](crate::bulk::Bulk) clamps its batch size to it so a batch can
    /// always fill.
    fn max_in_flight(&self) -> Option<usize> {
        None
    }

    /// Whether the source sets [`SourceContext::readiness`] itself (true for sources that
    /// connect to something). When false, the runtime marks the route ready while it runs.
    fn reports_readiness(&self) -> bool {
        false
    }

    /// Start the source.
    fn into_stream(self, cx: SourceContext) -> Self::Stream;
}

impl<S, M, E> Source for S
where
    S: Stream<Item = Result<M, E>> + Send + 'static,
    M: Message,
    E: Into<BoxError> + Send + 'static,
{
    type Message = M;
    type Error = E;
    type Stream = S;

    fn into_stream(self, _cx: SourceContext) -> S {
        self
    }
}

/// What the runtime gives a source when it starts it.
#[derive(Debug, Clone)]
pub struct SourceContext {
    route: Arc<str>,
    shutdown: Shutdown,
    ready: Readiness,
    /// The source's background tasks, which the runtime waits for when the route stops.
    background: TaskTracker,
}

impl SourceContext {
    /// A context for `route`, with its own readiness flag.
    pub fn new(route: impl Into<Arc<str>>, shutdown: Shutdown) -> Self {
        SourceContext {
            route: route.into(),
            shutdown,
            ready: Readiness::default(),
            background: TaskTracker::new(),
        }
    }

    /// Spawn a background task of the source on the current Tokio runtime. When the route
    /// stops, the runtime drops the stream and then waits for these tasks, up to the grace
    /// period, so the settlements and closes they still have to do get done.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime, as `tokio::spawn`.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.background.spawn(task);
    }

    pub(crate) fn background(&self) -> &TaskTracker {
        &self.background
    }

    /// A context that reports readiness through `ready`.
    pub fn with_readiness(mut self, ready: Readiness) -> Self {
        self.ready = ready;
        self
    }

    /// The route's name, for logs and metrics labels.
    pub fn route(&self) -> &str {
        &self.route
    }

    /// The graceful-shutdown signal: on it, stop intake and end the stream.
    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// The route's readiness flag: set it while the source is connected and consuming.
    pub fn readiness(&self) -> &Readiness {
        &self.ready
    }
}

/// A shared flag saying whether a route is connected and consuming; read by health checks.
///
/// Clones share the flag.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Set the flag.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    /// Read the flag.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

impl fmt::Debug for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Readiness").field(&self.get()).finish()
    }
}
