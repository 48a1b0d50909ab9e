//! [`App`]: routes, hooks, schedules and a graceful shutdown — the flask-like face.
//!
//! An `App` holds any number of routes and runs them concurrently. A route is a
//! [`Source`] plus a handler:
//!
//! - [`App::route`] takes an `async fn(Vec<M>) -> Result<(), E>` and [`RouteOptions`];
//! - [`App::route_service`] takes any tower `Service<Vec<M>>` and [`RouteOptions`];
//! - [`App::route_stack`] takes a closure that builds the whole `Service<M>` stack, for full
//!   control; it gets a [`RouteContext`] with the route's shutdown signal, in-flight limit and
//!   metric handles.
//!
//! Options become exactly the stack a user would write by hand —
//! `Bulk → Ack → Retry → handler` — through [`RouteOptions::layers`]; there is one code path.
//!
//! # Lifecycle
//!
//! [`App::run`]:
//!
//! 1. checks the configuration (an error names the route);
//! 2. runs the [`on_startup`](App::on_startup) hooks, in order, all to completion, before any
//!    source is polled — a failing hook aborts the start;
//! 3. runs every route and schedule until shutdown begins (SIGINT or SIGTERM, a
//!    [`ShutdownHandle`], every source ending, or a route failing — its stack cannot be
//!    built, its service fails or its task panics; `run` then returns that error);
//! 4. shuts down gracefully: intake stops, partial batches flush, in-flight handlers get the
//!    grace period (default 30 s) to finish, unfinished batches are requeued;
//! 5. runs the [`on_shutdown`](App::on_shutdown) hooks once, in order, and returns `Ok`.
//!
//! A second signal during shutdown aborts the in-flight work at once (its messages return
//! through their settlement guards, or through the broker when a connection dies) and `run`
//! returns [`Error::Forced`].
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use asyncworker_core::{Message, app::{App, RouteOptions}, memory::{MemoryMessage, MemoryQueue}};
//!
//! async fn handler(batch: Vec<MemoryMessage>) -> Result<(), std::io::Error> {
//!     for message in &batch {
//!         println!("{}", message.text().unwrap_or("<binary>"));
//!     }
//!     Ok(())
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), asyncworker_core::Error> {
//! let queue = MemoryQueue::new();
//! queue.push_bytes("hello");
//! queue.close(); // the app stops when every source has ended
//!
//! let mut app = App::new();
//! app.route("greetings", queue.source(), RouteOptions::new().bulk_size(10), handler);
//! app.run().await?;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::task::JoinSet;
use tower::{Service, ServiceBuilder, service_fn};

use crate::ack::AckLayer;
use crate::bulk::BulkLayer;
use crate::metrics::RouteMetrics;
use crate::retry::{RetryConfig, RetryLayer};
use crate::runtime::{
    DEFAULT_GRACE_PERIOD, DEFAULT_MAX_IN_FLIGHT, Worker, WorkerReport, effective_in_flight,
};
use crate::settings::Settings;
use crate::ticks::{Tick, Ticks};
use crate::{Action, BoxError, Error, Message, Readiness, Shutdown, Source, SourceContext};

/// Options of a route; they become its layer stack. Defaults are the Python original's.
#[derive(Debug, Clone)]
pub struct RouteOptions {
    bulk_size: usize,
    flush_interval: Option<Duration>,
    on_success: Action,
    on_error: Action,
    retry: Option<RetryConfig>,
    max_concurrent_batches: Option<usize>,
    max_in_flight: Option<usize>,
}

impl Default for RouteOptions {
    fn default() -> Self {
        RouteOptions {
            bulk_size: 1,
            flush_interval: None,
            on_success: Action::Ack,
            on_error: Action::Requeue,
            retry: None,
            max_concurrent_batches: None,
            max_in_flight: None,
        }
    }
}

impl RouteOptions {
    /// Bulk size 1, flush interval from the settings (60 s), ack on success, requeue on
    /// error, no retry, no batch limit, the source's in-flight limit.
    pub fn new() -> Self {
        Self::default()
    }

    /// Messages per batch (default 1). Clamped to the in-flight limit (the AMQP prefetch).
    pub fn bulk_size(mut self, n: usize) -> Self {
        self.bulk_size = n;
        self
    }

    /// Flush a partial batch once its oldest message has waited this long (default:
    /// `ASYNCWORKER_FLUSH_TIMEOUT`, else 60 s).
    pub fn flush_interval(mut self, interval: Duration) -> Self {
        self.flush_interval = Some(interval);
        self
    }

    /// What happens to unmarked messages when the handler succeeds (default ack).
    pub fn on_success(mut self, action: Action) -> Self {
        self.on_success = action;
        self
    }

    /// What happens to unmarked messages when the handler fails (default requeue).
    pub fn on_error(mut self, action: Action) -> Self {
        self.on_error = action;
        self
    }

    /// Re-run a failed batch in process before it counts as failed.
    pub fn retry(mut self, config: RetryConfig) -> Self {
        self.retry = Some(config);
        self
    }

    /// Run at most `n` batches of this route at once (default: no limit but the in-flight
    /// limit).
    pub fn max_concurrent_batches(mut self, n: usize) -> Self {
        self.max_concurrent_batches = Some(n);
        self
    }

    /// Hold at most `n` unsettled messages (default: the source's limit, else
    /// `max(128, 2 × bulk size)`).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = Some(n);
        self
    }

    /// Check the options, without a route name.
    fn validate(&self) -> Result<(), Error> {
        if self.bulk_size == 0 {
            return Err(Error::config("bulk size must be at least 1"));
        }
        if self.max_concurrent_batches == Some(0) {
            return Err(Error::config("max concurrent batches must be at least 1"));
        }
        if self.max_in_flight == Some(0) {
            return Err(Error::config("max in flight must be at least 1"));
        }
        Ok(())
    }

    /// The in-flight limit for a source whose own limit is `source_limit`.
    fn in_flight(&self, source_limit: Option<usize>) -> usize {
        match (self.max_in_flight, source_limit) {
            (None, None) => DEFAULT_MAX_IN_FLIGHT.max(self.bulk_size.saturating_mul(2)),
            (configured, source) => effective_in_flight(configured, source),
        }
    }

    /// The layer stack these options stand for, around `handler`: `Bulk → Ack → Retry`.
    ///
    /// # Errors
    ///
    /// When an option is invalid (bulk size 0, ...).
    pub fn layers<M, S>(
        &self,
        cx: &RouteContext,
        handler: S,
    ) -> Result<
        impl Service<M, Response = (), Error = BoxError, Future: Send> + Send + 'static + use<M, S>,
        Error,
    >
    where
        M: Message,
        S: Service<Vec<M>, Response = ()> + Clone + Send + 'static,
        S::Error: Into<BoxError> + Send + Sync + 'static,
        S::Future: Send + 'static,
    {
        self.validate()?;
        let mut bulk = BulkLayer::new(self.bulk_size)?
            .flush_interval(self.flush_interval.unwrap_or(cx.flush_interval))
            .max_in_flight(cx.max_in_flight)?
            .with_shutdown(cx.shutdown.clone())
            .metrics(cx.metrics.clone());
        if let Some(n) = self.max_concurrent_batches {
            bulk = bulk.max_concurrent_batches(n)?;
        }
        let ack = AckLayer::new()
            .on_success(self.on_success)
            .on_error(self.on_error)
            .metrics(cx.metrics.clone());
        let retry = self
            .retry
            .map(|config| RetryLayer::new(config).with_shutdown(cx.shutdown.clone()));
        Ok(ServiceBuilder::new()
            .layer(bulk)
            .layer(ack)
            .option_layer(retry)
            .map_err(Into::<BoxError>::into)
            .service(handler))
    }
}

/// What a route's stack builder gets from the [`App`].
#[derive(Debug, Clone)]
pub struct RouteContext {
    name: Arc<str>,
    shutdown: Shutdown,
    max_in_flight: usize,
    flush_interval: Duration,
    metrics: RouteMetrics,
}

impl RouteContext {
    /// The route's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The shutdown signal: give it to `BulkLayer::with_shutdown` and `RetryLayer::with_shutdown`.
    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// The route's in-flight limit: give it to `BulkLayer::max_in_flight`.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    /// The default flush interval (from the settings).
    pub fn flush_interval(&self) -> Duration {
        self.flush_interval
    }

    /// The route's metric handles: give them to `BulkLayer::metrics` and `AckLayer::metrics`.
    pub fn metrics(&self) -> &RouteMetrics {
        &self.metrics
    }

    /// A [`BulkLayer`] of `size` already wired to this route: in-flight clamp, flush
    /// interval, shutdown signal and metrics.
    ///
    /// # Errors
    ///
    /// When `size` is 0.
    pub fn bulk_layer<M>(&self, size: usize) -> Result<BulkLayer<M>, Error> {
        Ok(BulkLayer::new(size)?
            .flush_interval(self.flush_interval)
            .max_in_flight(self.max_in_flight)?
            .with_shutdown(self.shutdown.clone())
            .metrics(self.metrics.clone()))
    }

    /// An [`AckLayer`] with this route's metrics and the default policy.
    pub fn ack_layer(&self) -> AckLayer {
        AckLayer::new().metrics(self.metrics.clone())
    }
}

/// Asks a running [`App`] to shut down gracefully. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    shutdown: Shutdown,
}

impl ShutdownHandle {
    /// Begin a graceful shutdown. Idempotent.
    pub fn shutdown(&self) {
        self.shutdown.trigger();
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.is_triggered()
    }
}

/// Liveness and readiness of an [`App`], for health endpoints. Cheap to clone.
#[derive(Clone, Default)]
pub struct Health {
    inner: Arc<HealthInner>,
}

#[derive(Default)]
struct HealthInner {
    state: Mutex<HealthState>,
    /// The app's shutdown signal: readiness ends the moment it fires, not when the app's
    /// tasks next get to run.
    shutdown: Shutdown,
}

#[derive(Default)]
struct HealthState {
    started: bool,
    stopping: bool,
    stopped: bool,
    routes: Vec<(Arc<str>, Readiness)>,
}

/// One route's health.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RouteHealth {
    /// The route's name.
    pub name: String,
    /// Whether it is connected and consuming.
    pub ready: bool,
}

impl Health {
    fn new(shutdown: Shutdown) -> Self {
        Health {
            inner: Arc::new(HealthInner {
                state: Mutex::default(),
                shutdown,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HealthState> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The process is running and not yet stopped.
    pub fn is_live(&self) -> bool {
        !self.lock().stopped
    }

    /// Startup hooks are done, shutdown has not begun, and every route is consuming.
    pub fn is_ready(&self) -> bool {
        let state = self.lock();
        state.started
            && !state.stopping
            && !self.inner.shutdown.is_triggered()
            && state.routes.iter().all(|(_, r)| r.get())
    }

    /// Each route's readiness.
    pub fn routes(&self) -> Vec<RouteHealth> {
        self.lock()
            .routes
            .iter()
            .map(|(name, ready)| RouteHealth {
                name: name.to_string(),
                ready: ready.get(),
            })
            .collect()
    }

    fn register(&self, name: Arc<str>) -> Readiness {
        let ready = Readiness::default();
        self.lock().routes.push((name, ready.clone()));
        ready
    }
}

impl fmt::Debug for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Health")
            .field("live", &self.is_live())
            .field("ready", &self.is_ready())
            .field("routes", &self.routes())
            .finish()
    }
}

type Hook = Box<dyn FnOnce() -> BoxFuture<'static, Result<(), BoxError>> + Send>;
type RouteTask =
    Box<dyn FnOnce(RouteStart) -> BoxFuture<'static, Result<WorkerReport, BoxError>> + Send>;

struct RouteStart {
    name: Arc<str>,
    shutdown: Shutdown,
    grace: Duration,
    settings: Arc<Settings>,
    readiness: Readiness,
}

struct RouteEntry {
    name: Arc<str>,
    start: Result<RouteTask, Error>,
}

/// A worker application: routes, schedules, hooks and a graceful shutdown. See the
/// [module docs](self).
#[must_use = "an App does nothing until `run` is awaited"]
pub struct App {
    routes: Vec<RouteEntry>,
    startup: Vec<Hook>,
    shutdown_hooks: Vec<Hook>,
    settings: Result<Arc<Settings>, String>,
    shutdown: Shutdown,
    grace: Duration,
    signals: bool,
    health: Health,
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
    /// An app with settings from the environment ([`Settings::from_env`]; a malformed
    /// variable makes [`App::run`] fail, naming it) and SIGINT/SIGTERM handling on.
    pub fn new() -> Self {
        let settings = Settings::from_env()
            .map(Arc::new)
            .map_err(|e| e.to_string());
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
    pub fn with_settings(mut self, settings: Settings) -> Self {
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
    pub fn grace_period(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Whether `run` listens for SIGINT/SIGTERM (default on). Turn it off when the process
    /// handles signals itself and uses a [`ShutdownHandle`].
    ///
    /// Tokio keeps a signal's handler installed for the rest of the process once it has been
    /// listened to: a program that goes on after `run` returns no longer dies of SIGINT or
    /// SIGTERM by default, and should listen for them itself if it needs to.
    pub fn handle_signals(mut self, on: bool) -> Self {
        self.signals = on;
        self
    }

    /// A handle that starts a graceful shutdown.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            shutdown: self.shutdown.clone(),
        }
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
    /// the stack `options` describe.
    pub fn route<Src, F, Fut, E>(
        &mut self,
        name: impl Into<String>,
        source: Src,
        options: RouteOptions,
        handler: F,
    ) -> &mut Self
    where
        Src: Source,
        F: Fn(Vec<Src::Message>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError> + Send + Sync + 'static,
    {
        self.route_service(name, source, options, service_fn(handler))
    }

    /// Add a route whose handler is any tower `Service<Vec<M>>`.
    pub fn route_service<Src, S>(
        &mut self,
        name: impl Into<String>,
        source: Src,
        options: RouteOptions,
        service: S,
    ) -> &mut Self
    where
        Src: Source,
        S: Service<Vec<Src::Message>, Response = ()> + Clone + Send + 'static,
        S::Error: Into<BoxError> + Send + Sync + 'static,
        S::Future: Send + 'static,
    {
        let in_flight = options.in_flight(source.max_in_flight());
        let checked = options.validate();
        self.add(name.into(), source, in_flight, checked, move |cx| {
            options.layers(cx, service)
        })
    }

    /// Add a route with a stack of your own: `make` builds the `Service<M>` (usually
    /// starting with a [`BulkLayer`] from [`RouteContext::bulk_layer`]) when the app starts.
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
        let in_flight = effective_in_flight(None, source.max_in_flight());
        self.add(name.into(), source, in_flight, Ok(()), make)
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
        let handler = move |_ticks: Vec<Tick>| task();
        self.route(name, ticks, RouteOptions::new(), handler)
    }

    fn add<Src, S, F>(
        &mut self,
        name: String,
        source: Src,
        in_flight: usize,
        checked: Result<(), Error>,
        make: F,
    ) -> &mut Self
    where
        Src: Source,
        F: FnOnce(&RouteContext) -> Result<S, Error> + Send + 'static,
        S: Service<Src::Message> + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        let name: Arc<str> = name.into();
        let task: RouteTask = Box::new(move |start: RouteStart| {
            Box::pin(async move {
                let metrics = RouteMetrics::new(&start.settings.metrics_prefix(), &start.name);
                let cx = RouteContext {
                    name: start.name.clone(),
                    shutdown: start.shutdown.clone(),
                    max_in_flight: in_flight,
                    flush_interval: start.settings.flush_timeout,
                    metrics: metrics.clone(),
                };
                let service = make(&cx).map_err(|e| Box::new(e) as BoxError)?;
                let source_cx = SourceContext::new(start.name.clone(), start.shutdown.clone())
                    .with_readiness(start.readiness);
                Worker::new(source, service)
                    .route(&*start.name)
                    .max_in_flight(in_flight)
                    .shutdown(start.shutdown)
                    .grace_period(start.grace)
                    .metrics(metrics)
                    .source_context(source_cx)
                    .run()
                    .await
            }) as BoxFuture<'static, _>
        });
        self.routes.push(RouteEntry {
            name,
            start: checked.map(|()| task),
        });
        self
    }

    /// Run until shutdown. See the [module docs](self) for the lifecycle.
    ///
    /// # Errors
    ///
    /// A configuration problem (naming the route), a failing startup hook, or a forced
    /// shutdown (second signal).
    pub async fn run(self) -> Result<(), Error> {
        let App {
            routes,
            startup,
            shutdown_hooks,
            settings,
            shutdown,
            grace,
            signals,
            health,
        } = self;
        let settings = settings.map_err(Error::Config)?;
        let mut names = std::collections::HashSet::new();
        let mut tasks = Vec::with_capacity(routes.len());
        for entry in routes {
            if !names.insert(entry.name.clone()) {
                return Err(Error::Route {
                    route: entry.name.to_string(),
                    cause: "another route has the same name".into(),
                });
            }
            match entry.start {
                Ok(task) => tasks.push((entry.name, task)),
                Err(e) => {
                    return Err(Error::Route {
                        route: entry.name.to_string(),
                        cause: Box::new(e),
                    });
                }
            }
        }

        let force = Shutdown::new();
        let signal_task = signals.then(|| {
            tokio::spawn(watch_signals(
                install_signals(),
                shutdown.clone(),
                force.clone(),
            ))
        });

        for (i, hook) in startup.into_iter().enumerate() {
            if let Err(e) = hook().await {
                tracing::error!(hook = i, error = %e, "startup hook failed; not starting");
                if let Some(t) = signal_task {
                    t.abort();
                }
                return Err(Error::Startup(e));
            }
        }

        let mut set = JoinSet::new();
        // Route names by task, to name a route whose task panicked.
        let mut task_routes = std::collections::HashMap::new();
        for (name, task) in tasks {
            let readiness = health.register(name.clone());
            let start = RouteStart {
                name: name.clone(),
                // A route's own signal: it fires with the app's, and alone when the route's
                // source ends (to flush its partial batches).
                shutdown: shutdown.child(),
                grace,
                settings: settings.clone(),
                readiness,
            };
            let spawned = set.spawn({
                let name = name.clone();
                async move { (name, task(start).await) }
            });
            task_routes.insert(spawned.id(), name);
        }
        health.lock().started = true;
        tracing::info!(routes = set.len(), "app started");

        let stopping = {
            let health = health.clone();
            let shutdown = shutdown.clone();
            async move {
                shutdown.triggered().await;
                health.lock().stopping = true;
                tracing::info!(grace_secs = grace.as_secs_f64(), "shutting down gracefully");
            }
        };
        tokio::spawn(stopping);

        let mut forced = false;
        let mut route_error: Option<Error> = None;
        loop {
            tokio::select! {
                joined = set.join_next() => match joined {
                    None => break,
                    Some(Ok((name, Ok(report)))) => {
                        tracing::debug!(route = &*name, ?report, "route finished");
                    }
                    Some(Ok((name, Err(e)))) => {
                        tracing::error!(route = &*name, error = %e, "route failed; shutting down");
                        route_error.get_or_insert(Error::Route { route: name.to_string(), cause: e });
                        // Fail fast: do not keep serving without this route (its stack could
                        // not be built, or its service failed); `run` returns the error.
                        shutdown.trigger();
                    }
                    Some(Err(e)) => {
                        // Aborted tasks (a forced shutdown) are cancelled, not failed.
                        if e.is_panic() {
                            let route = task_routes.get(&e.id()).map_or("?", |n| &**n).to_owned();
                            let cause = crate::util::panic_message(&*e.into_panic()).to_owned();
                            tracing::error!(route = %route, panic = %cause, "route panicked; shutting down");
                            route_error.get_or_insert(Error::Route {
                                route,
                                cause: format!("route panicked: {cause}").into(),
                            });
                            shutdown.trigger();
                        }
                    }
                },
                () = force.triggered(), if !forced => {
                    forced = true;
                    tracing::warn!("second signal: aborting in-flight work");
                    set.abort_all();
                }
            }
        }
        shutdown.trigger();
        health.lock().stopping = true;

        if !forced {
            for (i, hook) in shutdown_hooks.into_iter().enumerate() {
                if let Err(e) = hook().await {
                    tracing::error!(hook = i, error = %e, "shutdown hook failed");
                }
            }
        }
        health.lock().stopped = true;
        if let Some(t) = signal_task {
            t.abort();
        }
        tracing::info!("app stopped");
        if forced {
            return Err(Error::Forced);
        }
        match route_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
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
            as Pin<Box<dyn Future<Output = _> + Send>>
    })
}

/// The listeners [`watch_signals`] waits on.
#[cfg(unix)]
type Signals = Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>;
#[cfg(not(unix))]
type Signals = ();

/// Install the SIGTERM/SIGINT listeners now, synchronously: `run` spawns the watcher as a
/// task, and a signal arriving before that task first ran would otherwise still get the
/// default action and kill the process.
fn install_signals() -> Signals {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(term), Ok(int)) => Some((term, int)),
            _ => {
                tracing::error!("cannot install signal handlers; use a ShutdownHandle");
                None
            }
        }
    }
}

/// First SIGINT/SIGTERM: graceful shutdown. Second: force.
async fn watch_signals(signals: Signals, shutdown: Shutdown, force: Shutdown) {
    #[cfg(unix)]
    {
        let Some((mut term, mut int)) = signals else {
            return;
        };
        let mut seen = 0;
        loop {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            seen += 1;
            if seen == 1 {
                tracing::info!(
                    signal = name,
                    "signal received; shutting down (send it again to force)"
                );
                shutdown.trigger();
            } else {
                tracing::warn!(signal = name, "second signal; forcing shutdown");
                force.trigger();
                return;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let () = signals;
        let mut seen = 0;
        while tokio::signal::ctrl_c().await.is_ok() {
            seen += 1;
            if seen == 1 {
                shutdown.trigger();
            } else {
                force.trigger();
                return;
            }
        }
    }
}
