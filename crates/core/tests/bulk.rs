//! Behaviour of the Bulk layer under paused time: size flush, interval flush measured from the
//! oldest message of each batch, the in-flight clamp, shutdown flush, the concurrent-batch
//! limit and the flush-reason metrics.

use std::sync::{Arc, Mutex};
use std::time::Duration;

mod support;

use asyncworker_core::ack::AckLayer;
use asyncworker_core::bulk::{Bulk, BulkLayer, FlushReason};
use asyncworker_core::memory::{MemoryMessage, MemoryQueue, MessageId};
use asyncworker_core::metrics::RouteMetrics;
use asyncworker_core::runtime::Worker;
use asyncworker_core::{Action, BoxError, Error, Shutdown};
use support::LocalMetrics;
use support::layers::{SlowHandler, deliver};
use tokio::task::JoinHandle;
use tokio::time::{Instant, advance};
use tower::{Layer, Service, ServiceExt, service_fn};

/// What the handler saw: when each batch arrived (as an offset from the test's start) and
/// which messages it held.
#[derive(Clone)]
struct Seen {
    start: Instant,
    batches: Arc<Mutex<Vec<Batch>>>,
}

/// When a batch reached the handler (from the test's start), and its messages.
type Batch = (Duration, Vec<MessageId>);

impl Seen {
    fn new() -> Self {
        Seen {
            start: Instant::now(),
            batches: Arc::default(),
        }
    }

    /// A handler that records each batch and succeeds.
    fn handler(
        &self,
    ) -> impl Service<Vec<MemoryMessage>, Response = (), Error = BoxError, Future: Send>
    + Clone
    + Send
    + 'static {
        let seen = self.clone();
        service_fn(move |batch: Vec<MemoryMessage>| {
            let seen = seen.clone();
            async move {
                let ids = batch.iter().map(MemoryMessage::id).collect();
                seen.batches
                    .lock()
                    .expect("not poisoned")
                    .push((seen.start.elapsed(), ids));
                Ok::<(), BoxError>(())
            }
        })
    }

    fn batches(&self) -> Vec<Batch> {
        self.batches.lock().expect("not poisoned").clone()
    }

    fn sizes(&self) -> Vec<usize> {
        self.batches().iter().map(|(_, ids)| ids.len()).collect()
    }
}

type Stack<H> = Bulk<asyncworker_core::ack::Ack<H>, MemoryMessage>;

/// Hand `message` to the stack and drive its future on a task of its own.
async fn submit<S>(stack: &mut S, message: MemoryMessage) -> JoinHandle<Result<(), BoxError>>
where
    S: Service<MemoryMessage, Response = (), Error = BoxError>,
    S::Future: Send + 'static,
{
    let future = stack
        .ready()
        .await
        .expect("bulk is always ready")
        .call(message);
    let handle = tokio::spawn(future);
    // Let the task register its timers before the test moves the clock.
    tokio::task::yield_now().await;
    handle
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn stack<H>(layer: BulkLayer<MemoryMessage>, handler: H) -> Stack<H>
where
    H: Service<Vec<MemoryMessage>, Error = BoxError>,
{
    layer.layer(AckLayer::new().layer(handler))
}

#[tokio::test(start_paused = true)]
async fn a_full_batch_flushes_at_once_without_waiting_for_the_interval() {
    let queue = MemoryQueue::new();
    let seen = Seen::new();
    let mut stack = stack(BulkLayer::new(3).expect("valid size"), seen.handler());
    let mut handles = Vec::new();
    for _ in 0..3 {
        handles.push(submit(&mut stack, deliver(&queue).await).await);
    }
    for handle in handles {
        handle.await.expect("no panic").expect("batch ok");
    }
    assert_eq!(
        seen.batches(),
        vec![(
            Duration::ZERO,
            vec![MessageId(0), MessageId(1), MessageId(2)]
        )]
    );
    assert!(
        queue
            .settlements()
            .iter()
            .all(|(_, a)| *a == Some(Action::Ack))
    );
}

#[tokio::test(start_paused = true)]
async fn the_interval_is_measured_from_the_oldest_message_of_each_batch() {
    let queue = MemoryQueue::new();
    let seen = Seen::new();
    let layer = BulkLayer::new(10)
        .expect("valid size")
        .flush_interval(secs(60));
    let mut stack = stack(layer, seen.handler());

    let first = submit(&mut stack, deliver(&queue).await).await;
    advance(secs(40)).await;
    let second = submit(&mut stack, deliver(&queue).await).await;
    advance(secs(19)).await;
    tokio::task::yield_now().await;
    assert!(seen.batches().is_empty(), "nothing flushed at t=59");

    advance(secs(1)).await;
    first.await.expect("no panic").expect("batch ok");
    second.await.expect("no panic").expect("batch ok");
    assert_eq!(
        seen.batches(),
        vec![(secs(60), vec![MessageId(0), MessageId(1)])],
        "flushed at t=60 with both messages"
    );

    // A batch started at t=61 flushes at t=121: no fixed cadence (which would say t=120).
    advance(secs(1)).await;
    let third = submit(&mut stack, deliver(&queue).await).await;
    advance(secs(59)).await;
    tokio::task::yield_now().await;
    assert_eq!(seen.batches().len(), 1, "nothing flushed at t=120");
    third.await.expect("no panic").expect("batch ok");
    assert_eq!(seen.batches()[1], (secs(121), vec![MessageId(2)]));
}

#[tokio::test(start_paused = true)]
async fn bulk_size_is_clamped_to_the_messages_that_can_be_in_flight() -> Result<(), Error> {
    let layer = BulkLayer::<MemoryMessage>::new(512)?.max_in_flight(128)?;
    assert_eq!(layer.effective_size(), 128);
    assert_eq!(
        BulkLayer::<MemoryMessage>::new(64)?
            .max_in_flight(128)?
            .effective_size(),
        64
    );
    // No clamp is expressed by not setting one; 0 is a configuration error.
    assert_eq!(BulkLayer::<MemoryMessage>::new(64)?.effective_size(), 64);
    assert!(matches!(
        BulkLayer::<MemoryMessage>::new(64)?.max_in_flight(0),
        Err(Error::Config(message)) if message.contains("at least 1")
    ));

    let queue = MemoryQueue::new();
    for _ in 0..256 {
        queue.push_bytes("x");
    }
    queue.close();
    let seen = Seen::new();
    let stack = stack(layer, seen.handler());
    assert_eq!(stack.effective_size(), 128);
    Worker::new(queue.source(), stack)
        .max_in_flight(128)
        .run()
        .await
        .expect("worker runs");
    assert_eq!(seen.sizes(), vec![128, 128]);
    assert!(
        seen.batches().iter().all(|(at, _)| at.is_zero()),
        "full batches flush by size, with no wait for the interval"
    );
    assert_eq!(queue.outstanding(), 0);
    Ok(())
}

#[test]
fn invalid_sizes_fail_at_construction() {
    assert!(matches!(
        BulkLayer::<MemoryMessage>::new(0),
        Err(Error::Config(_))
    ));
    assert!(matches!(
        BulkLayer::<MemoryMessage>::new(1)
            .expect("valid size")
            .max_concurrent_batches(0),
        Err(Error::Config(_))
    ));
}

/// The value of the batches counter of route `bulk` for `reason`.
fn batches(recorded: &LocalMetrics, reason: FlushReason) -> u64 {
    recorded.counter(
        "asyncworker_batches_total",
        &[("route", "bulk"), ("reason", reason.as_str())],
    )
}

/// The value of the settled counter of `route` for `action`.
fn settled(recorded: &LocalMetrics, route: &str, action: &str) -> u64 {
    recorded.counter(
        "asyncworker_messages_settled_total",
        &[("route", route), ("action", action)],
    )
}

#[tokio::test(start_paused = true)]
async fn shutdown_flushes_the_partial_batch_and_every_later_message() {
    let recorded = LocalMetrics::install();
    let queue = MemoryQueue::new();
    let seen = Seen::new();
    let shutdown = Shutdown::new();
    let layer = BulkLayer::new(10)
        .expect("valid size")
        .with_shutdown(shutdown.clone())
        .metrics(RouteMetrics::new("asyncworker", "bulk"));
    let mut stack = stack(layer, seen.handler());

    let a = submit(&mut stack, deliver(&queue).await).await;
    let b = submit(&mut stack, deliver(&queue).await).await;
    advance(secs(5)).await;
    shutdown.trigger();
    a.await.expect("no panic").expect("batch ok");
    b.await.expect("no panic").expect("batch ok");
    assert_eq!(
        seen.batches(),
        vec![(secs(5), vec![MessageId(0), MessageId(1)])]
    );

    // After shutdown, a message is not held back for company.
    let c = submit(&mut stack, deliver(&queue).await).await;
    c.await.expect("no panic").expect("batch ok");
    assert_eq!(seen.batches()[1], (secs(5), vec![MessageId(2)]));

    assert_eq!(batches(&recorded, FlushReason::Shutdown), 2);
    assert_eq!(batches(&recorded, FlushReason::Size), 0);
    assert_eq!(batches(&recorded, FlushReason::Interval), 0);
    assert_eq!(
        settled(&recorded, "default", "ack"),
        0,
        "an Ack given no route handles records nothing (no stray `default` series)"
    );
}

#[tokio::test(start_paused = true)]
async fn flush_reasons_are_counted_in_metrics() {
    let recorded = LocalMetrics::install();
    let queue = MemoryQueue::new();
    let seen = Seen::new();
    let shutdown = Shutdown::new();
    let metrics = RouteMetrics::new("asyncworker", "bulk");
    let layer = BulkLayer::new(2)
        .expect("valid size")
        .flush_interval(secs(10))
        .with_shutdown(shutdown.clone())
        .metrics(metrics.clone());
    let mut stack = layer.layer(AckLayer::new().metrics(metrics).layer(seen.handler()));

    // Two size flushes.
    let mut handles = Vec::new();
    for _ in 0..4 {
        handles.push(submit(&mut stack, deliver(&queue).await).await);
    }
    // One interval flush.
    handles.push(submit(&mut stack, deliver(&queue).await).await);
    for handle in handles.drain(..) {
        handle.await.expect("no panic").expect("batch ok");
    }
    // One shutdown flush.
    handles.push(submit(&mut stack, deliver(&queue).await).await);
    shutdown.trigger();
    for handle in handles {
        handle.await.expect("no panic").expect("batch ok");
    }

    assert_eq!(seen.sizes(), vec![2, 2, 1, 1]);
    assert_eq!(batches(&recorded, FlushReason::Size), 2);
    assert_eq!(batches(&recorded, FlushReason::Interval), 1);
    assert_eq!(batches(&recorded, FlushReason::Shutdown), 1);
    assert_eq!(settled(&recorded, "bulk", "ack"), 6);
}

/// Runs `messages` messages in full batches whose handler takes a second, and returns the
/// most handler calls seen running at once.
async fn peak_concurrency(layer: BulkLayer<MemoryMessage>, messages: usize) -> usize {
    let batches = messages.div_ceil(layer.effective_size());
    let queue = MemoryQueue::new();
    let handler = SlowHandler::new();
    let mut stack = stack(layer, handler.service());
    let start = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..messages {
        handles.push(submit(&mut stack, deliver(&queue).await).await);
    }
    for handle in handles {
        handle.await.expect("no panic").expect("batch ok");
    }
    let took = start.elapsed();
    let peak = handler.peak();
    assert_eq!(took, secs(batches.div_ceil(peak) as u64));
    assert_eq!(queue.outstanding(), 0);
    peak
}

#[tokio::test(start_paused = true)]
async fn max_concurrent_batches_limits_handler_calls_running_at_once() {
    let limited = BulkLayer::new(1)
        .expect("valid size")
        .max_concurrent_batches(2)
        .expect("valid limit");
    assert_eq!(peak_concurrency(limited, 6).await, 2);

    let limited = BulkLayer::new(2)
        .expect("valid size")
        .max_concurrent_batches(3)
        .expect("valid limit");
    assert_eq!(peak_concurrency(limited, 12).await, 3);

    // Without a limit the same load runs all at once: the limit is what held it back.
    let unlimited = BulkLayer::new(1).expect("valid size");
    assert_eq!(peak_concurrency(unlimited, 6).await, 6);
}

#[tokio::test(start_paused = true)]
async fn services_made_from_one_layer_share_its_batch_limit() {
    let queue = MemoryQueue::new();
    let handler = SlowHandler::new();
    let layer = BulkLayer::new(1)
        .expect("valid size")
        .max_concurrent_batches(1)
        .expect("valid limit");
    let mut one = stack(layer.clone(), handler.service());
    let mut two = stack(layer, handler.service());
    let a = submit(&mut one, deliver(&queue).await).await;
    let b = submit(&mut two, deliver(&queue).await).await;
    a.await.expect("no panic").expect("batch ok");
    b.await.expect("no panic").expect("batch ok");
    assert_eq!(handler.peak(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_closure_hook_sees_each_batch_once_not_each_message() {
    use asyncworker_core::metrics::{LayerEvent, Outcome};

    let events = Arc::new(Mutex::new(Vec::new()));
    let hook = {
        let events = events.clone();
        move |event: LayerEvent| events.lock().expect("not poisoned").push(event)
    };
    let queue = MemoryQueue::new();
    let seen = Seen::new();
    let layer = BulkLayer::new(2).expect("valid size").metrics(hook.clone());
    let mut stack = layer.layer(AckLayer::new().metrics(hook).layer(seen.handler()));
    let a = submit(&mut stack, deliver(&queue).await).await;
    let b = submit(&mut stack, deliver(&queue).await).await;
    a.await.expect("no panic").expect("batch ok");
    b.await.expect("no panic").expect("batch ok");

    let events = events.lock().expect("not poisoned").clone();
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(
        events[0],
        LayerEvent::Batch {
            reason: FlushReason::Size,
            size: 2
        }
    );
    assert!(matches!(
        events[1],
        LayerEvent::Handled {
            outcome: Outcome::Ok,
            ..
        }
    ));
    assert_eq!(
        events[2],
        LayerEvent::Settled {
            action: Action::Ack,
            count: 2
        }
    );
}

#[tokio::test(start_paused = true)]
async fn a_flush_interval_of_duration_max_means_never_flush_on_time() {
    // `Duration::MAX` is a natural way to say "flush on size and shutdown only"; adding it to
    // `Instant::now()` overflowed and panicked in `Bulk::call`.
    let queue = MemoryQueue::new();
    let seen = Seen::new();
    let shutdown = Shutdown::new();
    let layer = BulkLayer::new(2)
        .expect("valid size")
        .flush_interval(Duration::MAX)
        .with_shutdown(shutdown.clone());
    let mut stack = stack(layer, seen.handler());

    let a = submit(&mut stack, deliver(&queue).await).await;
    let b = submit(&mut stack, deliver(&queue).await).await;
    a.await.expect("no panic").expect("batch ok");
    b.await.expect("no panic").expect("batch ok");
    assert_eq!(
        seen.batches(),
        vec![(Duration::ZERO, vec![MessageId(0), MessageId(1)])]
    );

    // A lone message waits (a year is "never" here) until shutdown flushes it.
    let c = submit(&mut stack, deliver(&queue).await).await;
    advance(secs(365 * 24 * 3600)).await;
    assert_eq!(seen.batches().len(), 1, "no flush on time");
    shutdown.trigger();
    c.await.expect("no panic").expect("batch ok");
    assert_eq!(seen.batches()[1].1, vec![MessageId(2)]);
}
