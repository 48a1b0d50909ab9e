//! Run with: cargo run --example http_routes --features prometheus
//!
//! HTTP routes of your own beside a worker, on the server that answers `/metrics` and the
//! health checks: a route of ticks (one every 250 ms) counts what it handles, and two routes
//! of yours read the count, with a path parameter and JSON answers. Then, in another shell:
//!
//! ```text
//! curl -s localhost:8080/ticks        # {"handled":12,"last":11}
//! curl -s localhost:8080/ticks/3      # {"handled":true,"tick":3}
//! curl -s localhost:8080/metrics | grep asyncworker_messages_settled_total
//! curl -si localhost:8080/health/ready
//! ```
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `HTTP_PORT` | 8080 | the port (`0` picks a free one; the log says which) |
//! | `RUN_SECS` | 60 | how long the worker runs before it shuts down by itself (`0`: until Ctrl-C) |
//! | `ASYNCWORKER_*` | | framework settings (`ASYNCWORKER_LOG_FORMAT=json`, `ASYNCWORKER_LOGLEVEL`, ...) |
//!
//! Ctrl-C (or SIGTERM) shuts it down gracefully earlier; the routes, yours included, answer
//! until the worker has drained and are gone when it exits. Your routes take an axum 0.8
//! `Router`: for `Json`, depend on `axum` with its `json` feature.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use asyncworker::observe::{Server, prometheus::PrometheusBuilder};
use asyncworker::ticks::{Tick, Ticks};
use asyncworker::{App, BoxError, init_logging};
use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};

/// What the worker has done, shared with the HTTP routes.
#[derive(Debug, Default)]
struct Progress {
    /// Ticks handled so far.
    handled: AtomicU64,
}

/// `GET /ticks`: how many ticks were handled, and the number of the last one.
async fn summary(State(progress): State<Arc<Progress>>) -> Json<serde_json::Value> {
    let handled = progress.handled.load(Ordering::Relaxed);
    Json(serde_json::json!({ "handled": handled, "last": handled.checked_sub(1) }))
}

/// `GET /ticks/{n}`: whether tick `n` was handled (ticks are numbered from 0, in order).
async fn tick(
    State(progress): State<Arc<Progress>>,
    Path(n): Path<u64>,
) -> Json<serde_json::Value> {
    let handled = n < progress.handled.load(Ordering::Relaxed);
    Json(serde_json::json!({ "tick": n, "handled": handled }))
}

/// `name` from the environment, else `default`.
fn env_or<T: std::str::FromStr>(name: &str, default: T) -> Result<T, BoxError> {
    match std::env::var(name) {
        Ok(value) => value
            .trim()
            .parse()
            .map_err(|_| format!("{name}={value:?} is not a valid number").into()),
        Err(_) => Ok(default),
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let port: u16 = env_or("HTTP_PORT", 8080)?;
    let run_for = Duration::from_secs(env_or("RUN_SECS", 60)?);

    // First the recorder, so the routes' metric handles land in it.
    let metrics = PrometheusBuilder::new().install_recorder()?;

    let mut app = App::new();
    init_logging(app.settings()?); // a bad ASYNCWORKER_LOG_FORMAT fails here

    let progress = Arc::new(Progress::default());
    {
        let progress = progress.clone();
        app.route(
            "ticks",
            Ticks::every(Duration::from_millis(250))?,
            move |ticks: Vec<Tick>| {
                let progress = progress.clone();
                async move {
                    for tick in &ticks {
                        tracing::debug!(tick = tick.number(), "handled");
                    }
                    progress
                        .handled
                        .fetch_add(ticks.len() as u64, Ordering::Relaxed);
                    Ok::<(), std::io::Error>(())
                }
            },
        );
    }

    // Your routes, with their state: served by the same server as /metrics and /health/*.
    let routes = Router::new()
        .route("/ticks", get(summary))
        .route("/ticks/{n}", get(tick))
        .with_state(progress);
    let server = Server::bind(("127.0.0.1", port))?
        .metrics(metrics)
        .routes(routes);
    let addr = server.local_addr();
    server.attach(&mut app);
    tracing::info!("your routes: http://{addr}/ticks and http://{addr}/ticks/{{n}}");
    tracing::info!("metrics:     http://{addr}/metrics");
    tracing::info!("readiness:   http://{addr}/health/ready");

    if !run_for.is_zero() {
        let stop = app.shutdown_handle();
        tokio::spawn(async move {
            tokio::time::sleep(run_for).await;
            tracing::info!(secs = run_for.as_secs(), "ran long enough; shutting down");
            stop.trigger();
        });
    }
    app.run().await?;
    Ok(())
}
