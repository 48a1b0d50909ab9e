//! [`App`]: its configuration — settings, hooks, routes and schedules.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tower::{Service, service_fn};

use super::{Health, Route, RouteContext, RouteOptions};
use crate::metrics::RouteMetrics;
use crate::runtime::{DEFAULT_GRACE_PERIOD, Worker, WorkerReport};
use crate::settings::Settings;
use crate::ticks::{Tick, Ticks};
use crate::{BoxError, Error, Readiness, Shutdown, Source, SourceContext};

/// A startup or shutdown hook.
pub(super) type Hook = Box<dyn FnOnce() -> BoxFuture<'static, Result<(), BoxError>> + Send>;

/// A route, ready to be started with what the app gives it when it runs.
pub(super) type RouteTask =
    Box<dyn FnOnce(RouteStart) -> BoxFuture<'static, Result<WorkerReport, BoxError>> + Send>;

/// What a route gets when the app starts it.
pub(super) struct RouteStart {
    pub(super) name: Arc<str>,
    pub(super) shutdown: Shutdown,
    pub(super) grace: Duration,
    pub(super) settings: Arc<Settings>,
    pub(super) readiness: Readiness,
    pub(super) options: RouteOptions,
}

/// A route as added: its options (the defaults for a custom stack, which only take their
/// in-flight limit from them) and its task, or the error that keeps it from starting.
pub(super) struct RouteEntry {
    pub(super) name: Arc<str>,
    pub(super) options: RouteOptions,
    pub(super) start: Result<RouteTask, Error>,
}

/// A worker application: routes, hooks, schedules and a graceful shutdown — the flask-like
/// face.
///
/// An `App` holds any number of routes and runs them concurrently. A route is a
/// [`Source`](crate::Source) plus a handler:
///
/// - [`App::route`] takes an `async fn(Vec<M>) -> Result<(), E>` and returns a [`Route`],
///   which sets the route's options (bulk size, flush interval, ack policy, retry, limits);
/// - [`App::route_service`] takes any tower `Service<Vec<M>>`, and returns a [`Route`] too;
/// - [`App::route_stack`] takes a closure that builds the whole `Service<M>` stack, for full
///   control; it gets a [`RouteContext`] with the route's shutdown signal, in-flight limit and
///   metric handles.
///
/// Options become exactly the stack a user would write by hand —
/// `Bulk → Ack → Retry → handler` — through [`RouteOptions::layers`]; there is one code path.
///
/// # Lifecycle
///
/// [`App::run`]:
///
/// 1. checks the configuration: settings, route names, route options (an error names the
///    route);
/// 2. runs the [`on_startup`](Self::on_startup) hooks, in order, all to completion, before any
///    source is polled — a failing hook aborts the start;
/// 3. runs every route and schedule until shutdown begins (SIGINT or SIGTERM, the app's
///    [`Shutdown`](Self::shutdown_handle) triggered, every source ending, or a route failing
///    — its stack cannot be built, its service fails or its task panics; `run` then returns
///    that error);
/// 4. shuts down gracefully: intake stops, partial batches flush, in-flight handlers get the
///    grace period (default 30 s) to finish, unfinished batches are requeued;
/// 5. runs the [`on_shutdown`](Self::on_shutdown) hooks once, in order, and returns `Ok`.
///
/// A second signal during shutdown aborts the in-flight work at once (its messages return
/// through their settlement guards, or through the broker when a connection dies) and `run`
/// returns [`Error::Forced`](crate::Error::Forced).
///
/// # Example
///
/// ```
/// use asyncworker_core::{App, Message, memory::{MemoryMessage, MemoryQueue}};
///
/// async fn handler(batch: Vec<MemoryMessage>) -> Result<(), std::io::Error> {
///     for message in &batch {
///         println!("{}", message.text().unwrap_or("<binary>"));
///     }
///     Ok(())
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), asyncworker_core::Error> {
/// let queue = MemoryQueue::new();
/// queue.push_bytes("hello");
/// queue.close(); // the app stops when every source has ended
///
/// let mut app = App::new();
/// app.route("greetings", queue.source(), handler).bulk_size(10);
/// app.run().await?;
/// # Ok(())
/// # }
/// ```
///
/// The four steps of `run` are four functions: check (configuration), start (signals,
/// startup hooks, spawning the routes), join (waiting for the routes, failing fast) and stop
/// (shutdown hooks, the outcome).
///
/// Configuration methods take `&mut self`; [`App::run`] takes the app.
#[must_use = "an App does nothing until `run` is awaited"]
pub struct App {
    pub(super) routes: Vec<RouteEntry>,
    pub(super) startup: Vec<Hook>,
    pub(super) shutdown_hooks: Vec<Hook>,
    pub(super) settings: Result<Arc<Settings>, String>,
    pub(super) shutdown: Shutdown,
    pub(super) grace: Duration,
    pub(super) signals: bool,
    pub(super) health: Health,
}

impl fmt::Debug for App {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("App")
            .field(
                "routes",
                &self.routes.iter().map(|r| &*r.name).collect::<Vec<_>>(),
            )
            .field("grace", &self.grace)
            .field("signals", &self.signals)
            .finish_non_exhaustive()
    }
}

impl Default for App {
    fn default() -> Self {
        Self::new()
    }
}

impl App {
    /// An app with settings read once from the environment ([`Settings::from_env`]; a
    /// malformed variable makes [`App::run`] fail, naming it) and SIGINT/SIGTERM handling on.
    pub fn new() -> Self {
        // Kept as the message, so `run` and `settings` can each return an `Error::Config`.
        let settings = Settings::from_env().map(Arc::new).map_err(|e| match e {
            Error::Config(message) => message,
            other => other.to_string(),
        });
        let shutdown = Shutdown::new();
        App {
            routes: Vec::new(),
            startup: Vec::new(),
            shutdown_hooks: Vec::new(),
            settings,
            health: Health::new(shutdown.clone()),
            shutdown,
            grace: DEFAULT_GRACE_PERIOD,
            signals: true,
        }
    }

    /// Use these settings instead of the environment's.
    pub fn with_settings(&mut self, settings: Settings) -> &mut Self {
        self.settings = Ok(Arc::new(settings));
        self
    }

    /// The settings in effect.
    ///
    /// # Errors
    ///
    /// When an `ASYNCWORKER_*` variable was malformed.
    pub fn settings(&self) -> Result<&Settings, Error> {
        self.settings
            .as_deref()
            .map_err(|e| Error::config(e.clone()))
    }

    /// How long in-flight handlers may run once shutdown begins (default 30 s).
    pub fn grace_period(&mut self, grace: Duration) -> &mut Self {
        self.grace = grace;
        self
    }

    /// Whether `run` listens for SIGINT/SIGTERM (default on). Turn it off when the process
    /// handles signals itself and triggers the app's [`Shutdown`](App::shutdown_handle).
    ///
    /// Tokio keeps a signal's handler installed for the rest of the process once it has been
    /// listened to: a program that goes on after `run` returns no longer dies of SIGINT or
    /// SIGTERM by default, and should listen for them itself if it needs to.
    pub fn handle_signals(&mut self, on: bool) -> &mut Self {
        self.signals = on;
        self
    }

    /// The app's shutdown signal: [`Shutdown::trigger`] begins a graceful shutdown.
    pub fn shutdown_handle(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Liveness and readiness, for a health endpoint.
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// Run `hook` at startup, after the hooks registered before it and before any source is
    /// polled. An error aborts the start.
    pub fn on_startup<F, Fut, E>(&mut self, hook: F) -> &mut Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.startup.push(boxed_hook(hook));
        self
    }

    /// Run `hook` once at shutdown, after every route has stopped, in registration order. An
    /// error is logged and the remaining hooks still run.
    pub fn on_shutdown<F, Fut, E>(&mut self, hook: F) -> &mut Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.shutdown_hooks.push(boxed_hook(hook));
        self
    }

    /// Add a route: `source` feeds `handler` (an `async fn(Vec<M>) -> Result<(), E>`) through
    /// the stack of its options, which the returned [`Route`] sets.
    pub fn route<Src, F, Fut, E>(
        &mut self,
        name: impl Into<String>,
        source: Src,
        handler: F,
    ) -> Route<'_>
    where
        Src: Source,
        F: Fn(Vec<Src::Message>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError> + Send + Sync + 'static,
    {
        self.route_service(name, source, service_fn(handler))
    }

    /// Add a route whose handler is any tower `Service<Vec<M>>`; the returned [`Route`] sets
    /// its options.
    pub fn route_service<Src, S>(
        &mut self,
        name: impl Into<String>,
        source: Src,
        service: S,
    ) -> Route<'_>
    where
        Src: Source,
        S: Service<Vec<Src::Message>, Response = ()> + Clone + Send + 'static,
        S::Error: Into<BoxError> + Send + Sync + 'static,
        S::Future: Send + 'static,
    {
        let entry = self.add(name.into(), source, move |cx, options| {
            options.layers(cx, service)
        });
        Route::new(&mut entry.options)
    }

    /// Add a route with a stack of your own: `make` builds the `Service<M>` (usually
    /// starting with a [`BulkLayer`](crate::bulk::BulkLayer) from
    /// [`RouteContext::bulk_layer`]) when the app starts.
    pub fn route_stack<Src, S, F>(
        &mut self,
        name: impl Into<String>,
        source: Src,
        make: F,
    ) -> &mut Self
    where
        Src: Source,
        F: FnOnce(&RouteContext) -> Result<S, Error> + Send + 'static,
        S: Service<Src::Message> + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        self.add(name.into(), source, move |cx, _| make(cx));
        self
    }

    /// Run `task` now and then every `interval`, one run at a time; a tick that comes while
    /// the task still runs is skipped. An error is logged and the schedule goes on; shutdown
    /// waits for the running task (up to the grace period).
    pub fn run_every<F, Fut, E>(&mut self, interval: Duration, task: F) -> &mut Self
    where
        F: Fn() -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError> + Send + Sync + 'static,
    {
        let name = format!("run_every[{}]", self.routes.len());
        match Ticks::every(interval) {
            Ok(ticks) => self.schedule(name, ticks, task),
            Err(e) => {
                self.routes.push(RouteEntry {
                    name: name.into(),
                    options: RouteOptions::new(),
                    start: Err(e),
                });
                self
            }
        }
    }

    /// Run `task` on the [`Ticks`] schedule `ticks` (for a max concurrency other than 1),
    /// as a route named `name`.
    pub fn schedule<F, Fut, E>(
        &mut self,
        name: impl Into<String>,
        ticks: Ticks,
        task: F,
    ) -> &mut Self
    where
        F: Fn() -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError> + Send + Sync + 'static,
    {
        self.route(name, ticks, move |_ticks: Vec<Tick>| task());
        self
    }

    /// Add the route `name`: when the app starts, `make` builds its stack from the route's
    /// context and options, and a [`Worker`] drives `source` through it.
    fn add<Src, S, F>(&mut self, name: String, source: Src, make: F) -> &mut RouteEntry
    where
        Src: Source,
        F: FnOnce(&RouteContext, &RouteOptions) -> Result<S, Error> + Send + 'static,
        S: Service<Src::Message> + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        let task: RouteTask = Box::new(move |start: RouteStart| {
            Box::pin(async move {
                let in_flight = start.options.in_flight(source.max_in_flight());
                let metrics = RouteMetrics::new(&start.settings.metrics_prefix(), &start.name);
                let cx = RouteContext::new(
                    start.name.clone(),
                    start.shutdown.clone(),
                    in_flight,
                    start.settings.flush_interval,
                    metrics.clone(),
                );
                let service = make(&cx, &start.options).map_err(|e| Box::new(e) as BoxError)?;
                let source_cx = SourceContext::new(start.name.clone(), start.shutdown.clone())
                    .with_readiness(start.readiness);
                Worker::new(source, service)
                    .name(&*start.name)
                    .max_in_flight(in_flight)
                    .with_shutdown(start.shutdown)
                    .grace_period(start.grace)
                    .metrics(metrics)
                    .source_context(source_cx)
                    .run()
                    .await
            }) as BoxFuture<'static, _>
        });
        self.routes.push(RouteEntry {
            name: name.into(),
            options: RouteOptions::new(),
            start: Ok(task),
        });
        let last = self.routes.len() - 1;
        &mut self.routes[last]
    }
}

fn boxed_hook<F, Fut, E>(hook: F) -> Hook
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<BoxError>,
{
    Box::new(move || {
        let fut = hook();
        Box::pin(async move { fut.await.map_err(Into::into) })
    })
}
