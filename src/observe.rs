//! Prometheus `/metrics`, health endpoints and your own HTTP routes for an [`App`], served
//! with axum.
//!
//! [`Server`] binds an address and answers:
//!
//! | endpoint | answer |
//! |---|---|
//! | `GET /metrics` | the Prometheus text format ([`PROMETHEUS_CONTENT_TYPE`]), rendered by a [`PrometheusHandle`] |
//! | `GET /health/live` | `200` while the app is live ([`Health::is_live`]), else `503`; body `{"live":true}` |
//! | `GET /health/ready` | `200` when the app is ready ([`Health::is_ready`]: startup done, not shutting down, every route consuming), else `503`; body `{"ready":false,"routes":[{"name":"orders","ready":false}]}` |
//! | any other path | your own axum [`Router`], given with [`Server::routes`] (else `404`) |
//!
//! The server's own paths come first: while it serves `/metrics`, `/health/live` and
//! `/health/ready`, those paths are its own, whatever the method (a `POST /metrics` is `405`),
//! and a route of yours at one of them is never reached. Every other request goes to your
//! router, its fallback included — `/health/{probe}` of yours answers `/health/deep`.
//!
//! [`Server::attach`] ties the server to an [`App`]: it starts serving in an
//! [`on_startup`](App::on_startup) hook and stops, gracefully, in an
//! [`on_shutdown`](App::on_shutdown) hook. So while the app drains on shutdown the endpoints
//! still answer — `/health/ready` with `503`, `/metrics` with the last counts — and the
//! server is gone when [`App::run`] returns — your routes with it. For your own lifecycle,
//! await [`Server::serve`] with a shutdown future instead, or merge [`metrics_router`] and
//! [`health_router`] into an axum app of your own.
//!
//! Install the Prometheus recorder (for example with
//! [`PrometheusBuilder::install_recorder`](prometheus::PrometheusBuilder::install_recorder))
//! **before** [`App::run`]: each route resolves its metric handles against the recorder
//! installed when it starts. The exporter renders
//! histograms as summaries unless you give it buckets
//! ([`PrometheusBuilder::set_buckets`](prometheus::PrometheusBuilder::set_buckets)).
//!
//! # Example
//!
//! ```no_run
//! use asyncworker::{App, memory::{MemoryMessage, MemoryQueue}};
//! use asyncworker::observe::{Server, prometheus::PrometheusBuilder};
//! use asyncworker::observe::axum::{Router, extract::Path, routing::get};
//!
//! async fn handler(_batch: Vec<MemoryMessage>) -> Result<(), std::io::Error> {
//!     Ok(())
//! }
//!
//! async fn hello(Path(name): Path<String>) -> String {
//!     format!("hello, {name}")
//! }
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let metrics = PrometheusBuilder::new().install_recorder()?;
//!
//! let queue = MemoryQueue::new();
//! let mut app = App::new();
//! app.route("orders", queue.source(), handler);
//!
//! let server = Server::bind("127.0.0.1:9090")?
//!     .metrics(metrics)
//!     .routes(Router::new().route("/hello/{name}", get(hello)));
//! println!("scrape http://{}/metrics", server.local_addr());
//! server.attach(&mut app);
//! app.run().await?;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use asyncworker_core::Shutdown;
use asyncworker_core::{App, Health};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::task::JoinHandle;

/// The `axum` crate, re-exported so the [`Router`] you give [`Server::routes`] is of the
/// version this server serves. It has only the features this crate needs (`tokio`, `http1`):
/// for extractors such as `Json`, depend on `axum` 0.8 yourself with their features (Cargo
/// unifies the two).
pub use axum;
/// The `metrics-exporter-prometheus` crate, re-exported so its version matches this one's.
pub use metrics_exporter_prometheus as prometheus;
pub use metrics_exporter_prometheus::PrometheusHandle;

/// The content type of `GET /metrics`: the Prometheus text exposition format.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// How long [`Server::attach`]'s shutdown hook waits for open requests before it aborts the
/// server.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the server runs the recorder's upkeep (draining histogram samples), so memory
/// stays bounded between scrapes.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// A router answering `GET /metrics` with `handle`'s rendering.
pub fn metrics_router(handle: PrometheusHandle) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .with_state(handle)
}

/// A router answering `GET /health/live` and `GET /health/ready` from `health`.
pub fn health_router(health: Health) -> Router {
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .with_state(health)
}

async fn render_metrics(State(handle): State<PrometheusHandle>) -> Response {
    (
        [(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)],
        handle.render(),
    )
        .into_response()
}

async fn live(State(health): State<Health>) -> Response {
    let live = health.is_live();
    json(live, &serde_json::json!({ "live": live }))
}

async fn ready(State(health): State<Health>) -> Response {
    // Read the routes before the verdict: a route that turns ready in between makes the
    // answer conservative (a `503` listing it ready), never a `200` listing it not ready.
    let routes: Vec<_> = health
        .routes()
        .into_iter()
        .map(|r| serde_json::json!({ "name": r.name, "ready": r.ready }))
        .collect();
    let ready = health.is_ready();
    json(
        ready,
        &serde_json::json!({ "ready": ready, "routes": routes }),
    )
}

fn json(ok: bool, body: &serde_json::Value) -> Response {
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// An HTTP server for `/metrics`, `/health/*` and your own routes, bound to an address. See
/// the [module docs](self).
#[must_use = "a Server serves nothing until `attach`ed to an App or `serve`d"]
pub struct Server {
    listener: std::net::TcpListener,
    addr: SocketAddr,
    metrics: Option<PrometheusHandle>,
    health: Option<Health>,
    routes: Option<Router>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.addr)
            .field("metrics", &self.metrics.is_some())
            .field("health", &self.health)
            .field("routes", &self.routes.is_some())
            .finish()
    }
}

impl Server {
    /// Bind `addr` now (port `0` picks a free port: read it with [`Server::local_addr`]).
    /// The server answers nothing until it is [attached](Server::attach) or
    /// [served](Server::serve); with none of [`metrics`](Server::metrics),
    /// [`health`](Server::health) and [`routes`](Server::routes) set (and not attached),
    /// every path is `404`.
    ///
    /// # Errors
    ///
    /// When the address does not resolve or cannot be bound.
    pub fn bind(addr: impl ToSocketAddrs) -> io::Result<Self> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        Ok(Server {
            listener,
            addr,
            metrics: None,
            health: None,
            routes: None,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serve `GET /metrics` from `handle`, and run its upkeep every [`UPKEEP_INTERVAL`].
    pub fn metrics(mut self, handle: PrometheusHandle) -> Self {
        self.metrics = Some(handle);
        self
    }

    /// Serve `GET /health/live` and `GET /health/ready` from `health` ([`App::health`]).
    /// [`Server::attach`] sets it from the app when it is not set.
    pub fn health(mut self, health: Health) -> Self {
        self.health = Some(health);
        self
    }

    /// Serve your own routes beside the server's: every request whose path is not one the
    /// server serves itself (`/metrics` with [`metrics`](Server::metrics) set, `/health/live`
    /// and `/health/ready` with [`health`](Server::health) set or once
    /// [attached](Server::attach)) goes to `router`, whose fallback, if it has one, answers
    /// what none of its routes match. The server's paths win whatever the method, so a route
    /// of yours at one of them is never reached. Give the router its state first
    /// ([`Router::with_state`]); layers of yours apply to your routes only. When the attached
    /// server stops, open requests of yours get [`SHUTDOWN_TIMEOUT`] to finish, as the
    /// server's own do (a long-lived stream is then cut).
    ///
    /// Called again, merges `router` into the routes given before ([`Router::merge`]).
    ///
    /// ```
    /// use asyncworker::observe::Server;
    /// use asyncworker::observe::axum::{Router, extract::Path, routing::get};
    ///
    /// async fn order(Path(id): Path<u64>) -> String {
    ///     format!("order {id}")
    /// }
    ///
    /// # fn main() -> std::io::Result<()> {
    /// let server = Server::bind("127.0.0.1:0")?
    ///     .routes(Router::new().route("/orders/{id}", get(order)));
    /// # drop(server);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Panics
    ///
    /// As [`Router::merge`], when called again with a router that routes a method and path
    /// the routes given before already route, or that has a fallback too.
    pub fn routes(mut self, router: Router) -> Self {
        self.routes = Some(match self.routes.take() {
            Some(given) => given.merge(router),
            None => router,
        });
        self
    }

    /// The router this server serves: its own endpoints, then your [routes](Server::routes).
    pub fn router(&self) -> Router {
        let mut router = Router::new();
        if let Some(handle) = &self.metrics {
            router = router.merge(metrics_router(handle.clone()));
        }
        if let Some(health) = &self.health {
            router = router.merge(health_router(health.clone()));
        }
        // The user's router as the fallback, not merged: a path of theirs equal to one of
        // ours cannot make `merge` panic, ours simply wins; theirs gets everything else.
        if let Some(routes) = &self.routes {
            router = router.fallback_service(routes.clone());
        }
        router
    }

    /// Serve until `shutdown` completes, then finish the open requests and return.
    ///
    /// # Errors
    ///
    /// When the listener cannot be registered with the tokio runtime, or serving fails.
    pub async fn serve<F>(self, shutdown: F) -> io::Result<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.start_with(shutdown)?.await
    }

    /// Serve in the app's lifetime — the endpoints and your [routes](Server::routes): start
    /// in an [`on_startup`](App::on_startup) hook (in
    /// registration order: attach first to answer health checks during later hooks), stop
    /// gracefully in an [`on_shutdown`](App::on_shutdown) hook, after the routes have
    /// drained. Uses [`App::health`] unless [`Server::health`] was set.
    ///
    /// A failure to start serving fails the app's start. If the app stops without running its
    /// shutdown hooks (a forced shutdown, a failed start), the server stops with the tokio
    /// runtime.
    pub fn attach(mut self, app: &mut App) {
        if self.health.is_none() {
            self.health = Some(app.health());
        }
        let stop = Shutdown::new();
        let task: Arc<Mutex<Option<JoinHandle<io::Result<()>>>>> = Arc::default();
        {
            let (stop, task) = (stop.clone(), task.clone());
            app.on_startup(move || async move {
                let addr = self.addr;
                let (metrics, routes) = (self.metrics.is_some(), self.routes.is_some());
                let running = self.start_with(stop.triggered())?;
                *lock(&task) = Some(tokio::spawn(running));
                tracing::info!(%addr, metrics, health = true, routes, "serving HTTP");
                Ok::<(), io::Error>(())
            });
        }
        app.on_shutdown(move || async move {
            stop.trigger();
            let Some(mut running) = lock(&task).take() else {
                return Ok(());
            };
            match tokio::time::timeout(SHUTDOWN_TIMEOUT, &mut running).await {
                Ok(Ok(served)) => served,
                Ok(Err(e)) => Err(io::Error::other(e)),
                Err(_) => {
                    running.abort();
                    Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the HTTP server (metrics, health, routes) did not stop in time; aborted",
                    ))
                }
            }
        });
    }

    /// Register the listener with the runtime (so a failure shows now) and return the
    /// serving future.
    fn start_with<F>(
        self,
        shutdown: F,
    ) -> io::Result<impl Future<Output = io::Result<()>> + Send + 'static>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let router = self.router();
        let listener = tokio::net::TcpListener::from_std(self.listener)?;
        let upkeep = self.metrics;
        Ok(async move {
            let serve = axum::serve(listener, router).with_graceful_shutdown(shutdown);
            match upkeep {
                None => serve.await,
                Some(handle) => {
                    tokio::select! {
                        served = serve => served,
                        never = run_upkeep(handle) => match never {},
                    }
                }
            }
        })
    }
}

async fn run_upkeep(handle: PrometheusHandle) -> std::convert::Infallible {
    let mut every = tokio::time::interval(UPKEEP_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        handle.run_upkeep();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
