//! Run with: cargo run --example prometheus --features prometheus,timeit
//!
//! Serves Prometheus metrics and health checks for a running worker: a route of ticks, one
//! every 500 ms, whose handler is timed by a `TimeitLayer`. Then, in another shell:
//!
//! ```text
//! curl -s localhost:9090/metrics | grep asyncworker_
//! curl -si localhost:9090/health/ready
//! ```
//!
//! The port comes from `METRICS_PORT` (default 9090). Ctrl-C shuts the worker down
//! gracefully; the endpoints answer until the route has drained (`/health/ready` with 503).

use std::time::Duration;

use asyncworker::observe::{Server, prometheus::PrometheusBuilder};
use asyncworker::ticks::{Tick, Ticks};
use asyncworker::timeit::TimeitLayer;
use asyncworker::{App, init_logging};
use tower::{ServiceBuilder, service_fn};

/// Histogram buckets, in seconds (without them the exporter renders summaries).
const BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

async fn handle_ticks(ticks: Vec<Tick>) -> Result<(), std::io::Error> {
    for tick in &ticks {
        // Some work that takes 10-90 ms.
        let millis = 10 + (tick.number() * 37) % 80;
        tokio::time::sleep(Duration::from_millis(millis)).await;
        tracing::debug!(tick = tick.number(), millis, "handled");
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = match std::env::var("METRICS_PORT") {
        Ok(port) => port.parse()?,
        Err(_) => 9090,
    };

    // First the recorder, so the routes' metric handles land in it.
    let metrics = PrometheusBuilder::new()
        .set_buckets(BUCKETS)?
        .install_recorder()?;

    let mut app = App::new();
    init_logging(app.settings()?);

    // The handler, timed: `asyncworker_timeit_seconds{transaction="handle-ticks",outcome="ok"}`.
    let handler = ServiceBuilder::new()
        .layer(TimeitLayer::new("handle-ticks"))
        .service(service_fn(handle_ticks));
    app.route_service("ticks", Ticks::every(Duration::from_millis(500))?, handler);

    // Attached first, so health checks are answered while later startup hooks run.
    let server = Server::bind(("127.0.0.1", port))?.metrics(metrics);
    let addr = server.local_addr();
    server.attach(&mut app);
    tracing::info!("metrics:   http://{addr}/metrics");
    tracing::info!("liveness:  http://{addr}/health/live");
    tracing::info!("readiness: http://{addr}/health/ready");

    app.run().await?;
    Ok(())
}
