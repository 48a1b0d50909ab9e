//! The worker metrics, recorded through the [`metrics`] crate.
//!
//! | name (after the namespace prefix, default `asyncworker`) | kind | labels |
//! |---|---|---|
//! | `_messages_settled_total` | counter | `route`, `action` (`ack`, `reject`, `requeue`, `requeue_tail`) |
//! | `_settle_failures_total` | counter | `route` |
//! | `_batches_total` | counter | `route`, `reason` (`size`, `interval`, `shutdown`) |
//! | `_handler_duration_seconds` | histogram | `route`, `outcome` (`ok`, `error`, `panic`) |
//! | `_messages_in_flight` | gauge | `route` |
//! | `_source_errors_total` | counter | `route` |
//!
//! Handles are resolved once, when a [`RouteMetrics`] is built, so recording costs no
//! allocation and no lookup. Build it (and the stacks that hold it) after installing your
//! recorder.
//!
//! The layers do not depend on [`RouteMetrics`]: they report through the [`LayerMetrics`]
//! hook, which `RouteMetrics` implements (the App gives each route's layers its handles).
//!
//! ```
//! use asyncworker_core::metrics::{DEFAULT_NAMESPACE, RouteMetrics};
//! use asyncworker_core::{BoxError, Shutdown, ack::AckLayer, bulk::BulkLayer, runtime::Worker};
//! use asyncworker_core::memory::{MemoryMessage, MemoryQueue};
//! use metrics_util::debugging::{DebugValue, DebuggingRecorder};
//! use tower::{ServiceBuilder, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), BoxError> {
//! let recorder = DebuggingRecorder::new();
//! let snapshotter = recorder.snapshotter();
//! // Resolve the handles with the recorder in place (here a local one, for the example).
//! let route = metrics::with_local_recorder(&recorder, || {
//!     RouteMetrics::new(DEFAULT_NAMESPACE, "drain")
//! });
//!
//! let queue = MemoryQueue::new();
//! queue.push_bytes("one");
//! queue.close();
//! let shutdown = Shutdown::new(); // fired by the worker when the source ends
//! let bulk = BulkLayer::new(10)?.with_shutdown(shutdown.clone());
//! let stack = ServiceBuilder::new()
//!     .layer(bulk.metrics(route.clone()))
//!     .layer(AckLayer::new().metrics(route.clone()))
//!     .service(service_fn(|_batch: Vec<MemoryMessage>| async { Ok::<_, BoxError>(()) }));
//! Worker::new(queue.source(), stack)
//!     .with_shutdown(shutdown)
//!     .metrics(route)
//!     .run()
//!     .await?;
//!
//! let settled: u64 = snapshotter
//!     .snapshot()
//!     .into_vec()
//!     .into_iter()
//!     .filter(|(key, ..)| key.key().name() == "asyncworker_messages_settled_total")
//!     .map(|(.., value)| match value {
//!         DebugValue::Counter(n) => n,
//!         _ => 0,
//!     })
//!     .sum();
//! assert_eq!(settled, 1);
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, SharedString};

use crate::Action;
use crate::observe::FlushReason;
pub use crate::observe::{LayerEvent, LayerMetrics, Outcome};

/// The default metric-name prefix.
pub const DEFAULT_NAMESPACE: &str = "asyncworker";

/// Pre-resolved metric handles for one route. Cheap to clone (clones share the handles).
#[derive(Clone)]
pub struct RouteMetrics {
    inner: Arc<Handles>,
}

struct Handles {
    route: SharedString,
    settled: [Counter; 4],
    settle_failures: Counter,
    batches: [Counter; 3],
    duration: [Histogram; 3],
    in_flight: Gauge,
    source_errors: Counter,
}

impl RouteMetrics {
    /// Handles for `route`, with names prefixed by `namespace` (`{namespace}_batches_total`,
    /// ...), registered with the recorder installed now.
    pub fn new(namespace: &str, route: &str) -> Self {
        let route: SharedString = SharedString::from(Arc::<str>::from(route));
        let name = |suffix: &str| format!("{namespace}_{suffix}");
        let settled = Action::ALL.map(
            |a| metrics::counter!(name("messages_settled_total"), "route" => route.clone(), "action" => a.as_str()),
        );
        let batches = [FlushReason::Size, FlushReason::Interval, FlushReason::Shutdown].map(|r| {
            metrics::counter!(name("batches_total"), "route" => route.clone(), "reason" => r.as_str())
        });
        let duration = [Outcome::Ok, Outcome::Error, Outcome::Panic].map(|o| {
            metrics::histogram!(name("handler_duration_seconds"), "route" => route.clone(), "outcome" => o.as_str())
        });
        RouteMetrics {
            inner: Arc::new(Handles {
                settle_failures: metrics::counter!(name("settle_failures_total"), "route" => route.clone()),
                in_flight: metrics::gauge!(name("messages_in_flight"), "route" => route.clone()),
                source_errors: metrics::counter!(name("source_errors_total"), "route" => route.clone()),
                route,
                settled,
                batches,
                duration,
            }),
        }
    }

    /// The route label.
    pub fn route(&self) -> &str {
        &self.inner.route
    }

    pub(crate) fn in_flight(&self) -> &Gauge {
        &self.inner.in_flight
    }

    pub(crate) fn source_error(&self) {
        self.inner.source_errors.increment(1);
    }
}

impl LayerMetrics for RouteMetrics {
    fn route(&self) -> &str {
        &self.inner.route
    }

    fn on_batch(&self, reason: FlushReason, _size: usize) {
        let i = match reason {
            FlushReason::Size => 0,
            FlushReason::Interval => 1,
            FlushReason::Shutdown => 2,
        };
        self.inner.batches[i].increment(1);
    }

    fn on_handled(&self, outcome: Outcome, elapsed: Duration) {
        let i = match outcome {
            Outcome::Ok => 0,
            Outcome::Error => 1,
            Outcome::Panic => 2,
        };
        self.inner.duration[i].record(elapsed.as_secs_f64());
    }

    fn on_settled(&self, action: Action, count: u64) {
        self.inner.settled[action.index()].increment(count);
    }

    fn on_settle_failed(&self, _action: Action) {
        self.inner.settle_failures.increment(1);
    }
}

impl RouteMetrics {
    /// Handles that record nothing: what a layer uses until it is given a route's handles,
    /// so a stack built by hand without `.metrics(...)` adds no stray series.
    pub fn disabled() -> Self {
        RouteMetrics {
            inner: Arc::new(Handles {
                route: SharedString::const_str("default"),
                settled: std::array::from_fn(|_| Counter::noop()),
                settle_failures: Counter::noop(),
                batches: std::array::from_fn(|_| Counter::noop()),
                duration: std::array::from_fn(|_| Histogram::noop()),
                in_flight: Gauge::noop(),
                source_errors: Counter::noop(),
            }),
        }
    }
}

impl Default for RouteMetrics {
    /// [`RouteMetrics::disabled`]: nothing is recorded until a route's handles are given.
    fn default() -> Self {
        RouteMetrics::disabled()
    }
}

impl fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteMetrics")
            .field("route", &self.route())
            .finish_non_exhaustive()
    }
}
