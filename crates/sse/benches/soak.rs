//! Soak: one long SSE stream of many events through the full stack (SseSource → Worker →
//! Bulk → Ack → Retry → a handler that decodes each event), watching this process's memory.
//!
//! Run with: `cargo bench -p asyncworker-sse --bench soak` (1 000 000 events), or at any size:
//! `EVENTS=100000 cargo bench -p asyncworker-sse --bench soak`.
//!
//! An in-process axum server streams `EVENTS` events on one response, generating them as it
//! sends (nothing precomputed), then ends the body; the reconnect that follows (it carries
//! `Last-Event-ID`) gets 204, which ends the source's stream and the worker. The RSS
//! (`VmRSS`) is printed at 10 %, 50 % and 100 % of the events handled, and the peak
//! (`VmHWM`) after the warm-up (10 %) and at the end: the target is a peak under 64 MiB, flat
//! after the warm-up. The process exits non-zero when an event is missing.
//!
//! | variable | default | |
//! |---|---|---|
//! | `EVENTS` | `1000000` | events on the stream |
//! | `BULK` | `256` | the bulk size |
//! | `MAX_IN_FLIGHT` | `512` | events in flight (the worker's bound) |

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use asyncworker_core::ack::AckLayer;
use asyncworker_core::bulk::BulkLayer;
use asyncworker_core::retry::{RetryConfig, RetryLayer};
use asyncworker_core::runtime::Worker;
use asyncworker_core::{BoxError, Message, Shutdown};
use asyncworker_sse::{SseConfig, SseEvent, SseSource};
use axum::body::Body;
use axum::http::HeaderMap;
use axum::response::Response;
use tower::{ServiceBuilder, service_fn};

type Result<T, E = BoxError> = std::result::Result<T, E>;

const PER_CHUNK: u64 = 32;
const TARGET_MIB: u64 = 64;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not valid")),
        _ => default,
    }
}

/// (`VmRSS`, `VmHWM`) of this process, in KiB.
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn chunk(first: u64, end: u64) -> bytes::Bytes {
    let mut s = String::new();
    for n in first..end.min(first + PER_CHUNK) {
        s.push_str(&format!(
            "id: {n}\nevent: status_update_event\ndata: {{\"n\": {n}, \"taskId\": \"web.{n}\", \"taskStatus\": \"TASK_RUNNING\"}}\n\n"
        ));
    }
    s.into()
}

async fn start_server(events: u64) -> Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let app = axum::Router::new().route(
        "/e",
        axum::routing::get(move |headers: HeaderMap| async move {
            if headers.contains_key("last-event-id") {
                return Response::builder().status(204).body(Body::empty()).unwrap();
            }
            let chunks = futures::stream::iter(
                (0..events.div_ceil(PER_CHUNK))
                    .map(move |i| Ok::<_, std::convert::Infallible>(chunk(i * PER_CHUNK, events))),
            );
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(Body::from_stream(chunks))
                .unwrap()
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

#[derive(serde::Deserialize)]
struct Status {
    n: u64,
}

fn main() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(soak())
}

async fn soak() -> Result<()> {
    let n: u64 = env_or("EVENTS", 1_000_000u64);
    let bulk: usize = env_or("BULK", 256usize);
    let in_flight: usize = env_or("MAX_IN_FLIGHT", 512usize);
    let (start_rss, _) = rss_kib();
    let url = start_server(n).await?;
    println!("sse soak: {n} events on one stream, bulk {bulk}, max in flight {in_flight}");

    let config = SseConfig::builder(url)
        .backoff(
            asyncworker_core::Backoff::builder()
                .initial_delay(Duration::ZERO)
                .build()?,
        )
        .build()?;
    let source = SseSource::new(&config, ["/e"])?;
    let handled = Arc::new(AtomicUsize::new(0));
    let sum = Arc::new(AtomicU64::new(0));
    let samples = Arc::new(Mutex::new(Vec::new()));
    let (seen, total, marks) = (handled.clone(), sum.clone(), samples.clone());
    let total_n = n as usize;
    let shutdown = Shutdown::new();
    let stack = ServiceBuilder::new()
        // The worker fires its shutdown when the source ends (after the server's 204), and the
        // bulk then flushes its last partial batch at once; the flush interval is the default's
        // order only to bound a batch on a slow stream.
        .layer(
            BulkLayer::new(bulk)?
                .max_in_flight(in_flight)?
                .flush_interval(Duration::from_millis(100))
                .with_shutdown(shutdown.clone()),
        )
        .layer(AckLayer::new())
        .layer(RetryLayer::new(RetryConfig::default()).with_shutdown(shutdown.clone()))
        .service(service_fn(move |events: Vec<SseEvent>| {
            let (seen, total, marks) = (seen.clone(), total.clone(), marks.clone());
            async move {
                for event in &events {
                    let status: Status = event.json()?;
                    total.fetch_add(status.n, Ordering::Relaxed);
                }
                let before = seen.fetch_add(events.len(), Ordering::Relaxed);
                let after = before + events.len();
                for pct in [10, 50, 100] {
                    let at = (total_n * pct).div_ceil(100);
                    if before < at && after >= at {
                        let (rss, hwm) = rss_kib();
                        marks.lock().unwrap().push((pct, after, rss, hwm));
                    }
                }
                Ok::<(), BoxError>(())
            }
        }));
    let started = Instant::now();
    Worker::new(source, stack)
        .with_shutdown(shutdown)
        .max_in_flight(in_flight)
        .run()
        .await?;
    let secs = started.elapsed().as_secs_f64();
    let (end_rss, end_hwm) = rss_kib();

    let handled = handled.load(Ordering::Relaxed);
    println!(
        "handled {handled} in {secs:.1} s ({:.0} events/s); RSS at start {:.1} MiB",
        handled as f64 / secs,
        mib(start_rss)
    );
    let samples = samples.lock().unwrap().clone();
    for (pct, count, rss, hwm) in &samples {
        println!(
            "  at {pct:>3}% ({count:>8} handled): RSS {:>6.1} MiB, peak so far {:>6.1} MiB",
            mib(*rss),
            mib(*hwm)
        );
    }
    let warm = samples.iter().find(|s| s.0 == 10).map_or(0, |s| s.3);
    println!(
        "peak RSS (VmHWM): {:.1} MiB after warm-up (10%), {:.1} MiB at the end \
         (grew {:.1} MiB after warm-up); RSS at the end {:.1} MiB; target < {TARGET_MIB} MiB: {}",
        mib(warm),
        mib(end_hwm),
        mib(end_hwm.saturating_sub(warm)),
        mib(end_rss),
        if end_hwm < TARGET_MIB * 1024 {
            "met"
        } else {
            "NOT met"
        }
    );
    let expected_sum = n * n.saturating_sub(1) / 2;
    let sum = sum.load(Ordering::Relaxed);
    if handled as u64 != n || sum != expected_sum {
        return Err(format!(
            "handled {handled} of {n} events (sum {sum}, expected {expected_sum})"
        )
        .into());
    }
    Ok(())
}
