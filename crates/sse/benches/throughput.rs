//! Events per second through the backend (SseSource → Worker → Bulk → Ack → a no-op
//! handler; bulk 1 and 256) beside a raw reqwest + eventsource-stream loop, on the same local
//! axum server in the same run. Target: the backend at ≥ 0.9× the raw loop.
//!
//! Run with: `cargo bench -p asyncworker-sse --bench throughput`
//!
//! The server precomputes nothing: it formats its events as it sends them, the same cost in
//! every row.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use asyncworker_core::ack::AckLayer;
use asyncworker_core::bulk::BulkLayer;
use asyncworker_core::runtime::Worker;
use asyncworker_sse::{SseConfig, SseEvent, SseSource};
use axum::body::Body;
use axum::http::HeaderMap;
use axum::response::Response;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use eventsource_stream::Eventsource;
use futures::StreamExt;
use tower::{ServiceBuilder, service_fn};

const EVENTS: u64 = 256 * 100;
const PER_CHUNK: u64 = 32;

fn chunk(first: u64) -> bytes::Bytes {
    let mut s = String::new();
    for n in first..first + PER_CHUNK {
        s.push_str(&format!(
            "id: {n}\nevent: status_update_event\ndata: {{\"appId\": \"/asgard/web\", \"taskId\": \"web.{n}\", \"taskStatus\": \"TASK_RUNNING\"}}\n\n"
        ));
    }
    s.into()
}

/// EVENTS events, then the end of the body; a reconnect (it carries Last-Event-ID) gets 204,
/// which ends the backend's stream.
async fn events(headers: HeaderMap) -> Response {
    if headers.contains_key("last-event-id") {
        return Response::builder().status(204).body(Body::empty()).unwrap();
    }
    let chunks = (0..EVENTS / PER_CHUNK)
        .map(|i| Ok::<_, std::convert::Infallible>(chunk(1 + i * PER_CHUNK)));
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(futures::stream::iter(chunks)))
        .unwrap()
}

async fn start_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().route("/e", axum::routing::get(events));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

async fn raw(client: &reqwest::Client, url: &str) -> u64 {
    let response = client
        .get(format!("{url}/e"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let mut stream = response.bytes_stream().eventsource();
    let mut n = 0;
    while let Some(event) = stream.next().await {
        event.unwrap();
        n += 1;
    }
    n
}

/// The backend's config for the bench server: reconnect at once.
fn config(url: &str) -> SseConfig {
    SseConfig::builder(url)
        .backoff(
            asyncworker_core::Backoff::builder()
                .initial_delay(Duration::ZERO)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap()
}

async fn backend(url: &str, bulk: usize) -> u64 {
    let config = config(url);
    let source = SseSource::new(&config, ["/e"]).unwrap();
    let handled = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&handled);
    let stack = ServiceBuilder::new()
        .layer(BulkLayer::new(bulk).unwrap().max_in_flight(512).unwrap())
        .layer(AckLayer::new())
        .service(service_fn(move |events: Vec<SseEvent>| {
            count.fetch_add(events.len() as u64, Ordering::Relaxed);
            std::future::ready(Ok::<_, std::convert::Infallible>(()))
        }));
    Worker::new(source, stack)
        .max_in_flight(512)
        .run()
        .await
        .unwrap();
    handled.load(Ordering::Relaxed)
}

/// The source alone, each event acknowledged as it arrives: the backend's own cost, without
/// the runtime and layers.
async fn source_only(url: &str) -> u64 {
    use asyncworker_core::{Action, Message, Shutdown, Source, SourceContext};
    let config = config(url);
    let source = SseSource::new(&config, ["/e"]).unwrap();
    let mut stream = source.into_stream(SourceContext::new("bench", Shutdown::new()));
    let mut n = 0;
    while let Some(event) = stream.next().await {
        event.unwrap().settlement().settle(Action::Ack).unwrap();
        n += 1;
    }
    n
}

fn bench(c: &mut Criterion) {
    // One thread for server and client: the CPU cost per event, without cross-thread wake-ups
    // whose cost depends on what else the machine runs.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let url = rt.block_on(start_server());
    // With the `rustls` feature (as `--all-features` builds it) reqwest brings no crypto
    // provider; the backend installs ring when it builds its client, the raw loop's client
    // needs it first.
    #[cfg(feature = "rustls")]
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    let mut group = c.benchmark_group("sse_events");
    group.throughput(Throughput::Elements(EVENTS));
    group.sample_size(10);
    group.bench_function("raw_reqwest_eventsource_stream", |b| {
        b.to_async(&rt).iter(|| async {
            assert_eq!(raw(&client, &url).await, EVENTS);
        })
    });
    group.bench_function("source_only", |b| {
        b.to_async(&rt).iter(|| async {
            assert_eq!(source_only(&url).await, EVENTS);
        })
    });
    for bulk in [1, 256] {
        group.bench_function(format!("backend_bulk_{bulk}"), |b| {
            b.to_async(&rt).iter(|| async {
                assert_eq!(backend(&url, bulk).await, EVENTS);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
