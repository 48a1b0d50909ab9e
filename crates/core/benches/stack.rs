//! The cost of the layers: in-memory messages through Bulk → Ack → Retry → a no-op handler,
//! beside a baseline that calls the same handler directly on the same messages.
//!
//! Run with: `cargo bench -p asyncworker-core --bench stack`
//!
//! Each iteration handles [`MESSAGES`] messages on a current-thread Tokio runtime. Making the
//! messages (push into a fresh `MemoryQueue`, take them from its source) and checking the
//! outcome are outside the measured time. Both arms settle every message once through the
//! queue: the stack through its Ack layer, the baseline through the settlement slot's drop
//! guard (a requeue). After each iteration, outside the timed region, a real `assert!`
//! checks that every message of the iteration was settled exactly once and none is left
//! outstanding, so an arm that skipped work could not look fast.
//!
//! Both arms go through the same driver ([`drive`]): at most [`IN_FLIGHT`] futures at once in
//! a `FuturesUnordered`, each call after `poll_ready`, as the runtime's worker drives a
//! route. The stack is called once per message (`Service<MemoryMessage>`); the baseline
//! handler once per batch — `vec![m]` at bulk 1, chunks of 256 at bulk 256 — so the
//! difference between the arms is the layers' own cost.
//!
//! Per-message overhead = layers ns/message − baseline ns/message (criterion reports
//! throughput in elements, one element per message).

#![allow(missing_docs)]

use std::future::poll_fn;
use std::hint::black_box;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use asyncworker_core::ack::AckLayer;
use asyncworker_core::bulk::BulkLayer;
use asyncworker_core::memory::{MemoryMessage, MemoryQueue};
use asyncworker_core::retry::{RetryConfig, RetryLayer};
use asyncworker_core::{Action, BoxError, ServiceBuilderExt};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures::stream::{FuturesUnordered, StreamExt};
use futures::task::noop_waker_ref;
use tower::{Service, ServiceBuilder, service_fn};

/// Messages per iteration: a multiple of every bulk size, so batches fill.
const MESSAGES: usize = 4096;
/// Message futures in flight at once when driving the stack (the runtime's default is 128;
/// at bulk 256 it must be at least the bulk size for batches to fill).
const IN_FLIGHT: usize = 512;

/// The no-op handler both arms call.
fn handler()
-> impl Service<Vec<MemoryMessage>, Response = (), Error = BoxError, Future: Send> + Clone + Send {
    service_fn(|batch: Vec<MemoryMessage>| async move {
        black_box(&batch);
        Ok::<(), BoxError>(())
    })
}

/// `MESSAGES` delivered messages of a fresh queue (the queue is kept alive so settlements
/// reach it).
fn messages() -> (MemoryQueue, Vec<MemoryMessage>) {
    let queue = MemoryQueue::new();
    for _ in 0..MESSAGES {
        queue.push_bytes(&b"{\"n\":1}"[..]);
    }
    queue.close();
    let mut source = queue.source();
    let mut cx = Context::from_waker(noop_waker_ref());
    let mut out = Vec::with_capacity(MESSAGES);
    while let Poll::Ready(Some(Ok(message))) = source.poll_next_unpin(&mut cx) {
        out.push(message);
    }
    assert_eq!(out.len(), MESSAGES);
    (queue, out)
}

/// Drive `requests` through `service` with at most [`IN_FLIGHT`] response futures at once,
/// each call after `poll_ready`: the one driver of both arms.
async fn drive<S, R>(service: &mut S, requests: impl IntoIterator<Item = R>)
where
    S: Service<R, Error = BoxError>,
{
    let mut in_flight = FuturesUnordered::new();
    let mut requests = requests.into_iter();
    loop {
        while in_flight.len() < IN_FLIGHT {
            let Some(request) = requests.next() else {
                break;
            };
            poll_fn(|cx| service.poll_ready(cx)).await.expect("ready");
            in_flight.push(service.call(request));
        }
        match in_flight.next().await {
            Some(result) => {
                result.expect("no-op handler succeeds");
            }
            None => break,
        }
    }
}

/// The baseline's requests: the messages in batches of `bulk`, as the handler takes them.
fn batches(messages: Vec<MemoryMessage>, bulk: usize) -> Vec<Vec<MemoryMessage>> {
    let mut out = Vec::with_capacity(messages.len().div_ceil(bulk));
    let mut messages = messages.into_iter();
    loop {
        let batch: Vec<MemoryMessage> = messages.by_ref().take(bulk).collect();
        if batch.is_empty() {
            return out;
        }
        out.push(batch);
    }
}

/// Fail the bench unless every message of `queue` was settled exactly once, with `expected`.
fn assert_settled_once(queue: &MemoryQueue, expected: Action) {
    assert_eq!(queue.outstanding(), 0, "messages left unsettled");
    let settlements = queue.settlements();
    assert_eq!(settlements.len(), MESSAGES);
    for (id, last) in settlements {
        assert_eq!(last, Some(expected), "message {id} settled with {last:?}");
        assert_eq!(
            queue.settlement_history(id).len(),
            1,
            "message {id} settled twice"
        );
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("stack");
    group
        .throughput(Throughput::Elements(MESSAGES as u64))
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));

    for bulk in [1usize, 256] {
        group.bench_function(BenchmarkId::new("baseline", format!("bulk_{bulk}")), |b| {
            b.to_async(&rt).iter_custom(|iters| async move {
                let mut handler = handler();
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (queue, messages) = messages();
                    let batches = batches(messages, bulk);
                    let start = Instant::now();
                    drive(&mut handler, batches).await;
                    total += start.elapsed();
                    assert_settled_once(&queue, Action::Requeue);
                }
                total
            });
        });

        group.bench_function(BenchmarkId::new("layers", format!("bulk_{bulk}")), |b| {
            b.to_async(&rt).iter_custom(|iters| async move {
                let mut stack = ServiceBuilder::new()
                    .bulk(
                        BulkLayer::new(bulk)
                            .expect("valid size")
                            .max_in_flight(IN_FLIGHT)
                            .expect("valid limit"),
                    )
                    .ack(AckLayer::new())
                    .retry_batches(RetryLayer::new(RetryConfig::default()))
                    .service(handler());
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (queue, messages) = messages();
                    let start = Instant::now();
                    drive(&mut stack, messages).await;
                    total += start.elapsed();
                    assert_settled_once(&queue, Action::Ack);
                }
                total
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
