//! Composition: `Send`/`Sync` of the public services and futures (checked at compile time),
//! one generic `ServiceBuilder` stack for every message type, and tower's own layers dropped
//! into it.

use std::marker::PhantomData;
use std::time::Duration;

mod support;

use asyncworker_core::Jitter;
use asyncworker_core::ack::{self, Ack, AckLayer};
use asyncworker_core::bulk::{self, Bulk, BulkLayer};
use asyncworker_core::memory::{MemoryMessage, MemoryQueue, MemorySource};
use asyncworker_core::retry::{Retry, RetryConfig, RetryLayer};
use asyncworker_core::runtime::Worker;
use asyncworker_core::{Action, BoxError, Error, Message, ServiceBuilderExt, Settlement, Shutdown};
use bytes::Bytes;
use support::layers::{SlowHandler, deliver};
use support::{assert_send, assert_send_sync, assert_send_value};
use tower::limit::ConcurrencyLimitLayer;
use tower::timeout::TimeoutLayer;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

/// A handler type that can be named: a boxed, cloneable, `Send + Sync` service.
type Handler = BoxCloneSyncService<Vec<MemoryMessage>, (), BoxError>;
type AckStack = Ack<Retry<Handler>>;
type FullStack = Bulk<AckStack, MemoryMessage>;

// Messages and their settlement slots travel between tasks and are shared by clones.
const _: () = assert_send_sync::<MemoryMessage>();
const _: () = assert_send_sync::<Settlement>();
const _: () = assert_send_sync::<MemoryQueue>();
const _: () = assert_send_sync::<MemorySource>();
const _: () = assert_send_sync::<Shutdown>();

// Layers and services.
const _: () = assert_send_sync::<AckLayer>();
const _: () = assert_send_sync::<BulkLayer<MemoryMessage>>();
const _: () = assert_send_sync::<AckStack>();
const _: () = assert_send_sync::<FullStack>();

// Futures: a message future of Bulk and a batch future of Ack move to other tasks. (Like
// tower's futures they are not required to be Sync: with bulk 1 a message future owns its
// batch's inner future, which is only Send for a boxed handler.)
const _: () =
    assert_send::<ack::ResponseFuture<<Retry<Handler> as Service<Vec<MemoryMessage>>>::Future>>();
const _: () = assert_send::<bulk::ResponseFuture<AckStack, MemoryMessage>>();
const _: () = assert_send_sync::<bulk::BatchError>();
const _: () = assert_send_sync::<ack::HandlerPanicked>();

fn future_of<S: Service<R>, R>(_: &S) -> PhantomData<S::Future> {
    PhantomData
}

#[test]
fn worker_run_future_and_stack_futures_are_send() {
    let queue = MemoryQueue::new();
    let stack = generic_stack::<MemoryMessage>(Shutdown::new()).expect("valid stack");
    // Stacks of plain `service_fn` handlers, not only boxed ones, are Send + Sync...
    assert_send_value(&stack);
    assert_send_value(&future_of::<_, MemoryMessage>(&stack));
    // ... and so is the worker's `run` future, so a route can be spawned.
    let run = Worker::new(queue.source(), stack).run();
    assert_send_value(&run);
    drop(run);
}

/// A message type of another backend: the same stack function must work for it.
#[derive(Debug, Clone)]
struct OtherMessage {
    payload: Bytes,
    settlement: Settlement,
}

impl Message for OtherMessage {
    fn payload(&self) -> &Bytes {
        &self.payload
    }

    fn settlement(&self) -> &Settlement {
        &self.settlement
    }
}

/// One stack, written once, for any backend's messages: Bulk → Ack → tower's Timeout and
/// ConcurrencyLimit → Retry → a plain async handler.
fn generic_stack<M: Message>(
    shutdown: Shutdown,
) -> Result<
    impl Service<M, Response = (), Error = BoxError, Future: Send + 'static> + Send + Sync,
    Error,
> {
    let retry = RetryConfig::builder()
        .max_attempts(2)
        .initial_delay(Duration::from_millis(100))
        .jitter(Jitter::None)
        .build()?;
    Ok(ServiceBuilder::new()
        .bulk(
            BulkLayer::new(2)?
                .flush_interval(Duration::from_secs(1))
                .with_shutdown(shutdown.clone()),
        )
        .ack(AckLayer::new())
        .layer(ConcurrencyLimitLayer::new(4))
        .layer(TimeoutLayer::new(Duration::from_secs(5)))
        .retry_batches(RetryLayer::new(retry).with_shutdown(shutdown))
        .service(service_fn(handle::<M>)))
}

/// A handler written against the trait: "slow" messages take longer than the timeout.
async fn handle<M: Message>(batch: Vec<M>) -> Result<(), BoxError> {
    if batch.iter().any(|m| m.payload().as_ref() == b"slow") {
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn one_generic_stack_serves_every_message_type() {
    // In-memory messages through the worker.
    let queue = MemoryQueue::new();
    for _ in 0..4 {
        queue.push_bytes("fast");
    }
    queue.close();
    let stack = generic_stack(Shutdown::new()).expect("valid stack");
    Worker::new(queue.source(), stack)
        .max_in_flight(4)
        .run()
        .await
        .expect("worker runs");
    assert!(
        queue
            .settlements()
            .iter()
            .all(|(_, a)| *a == Some(Action::Ack))
    );

    // Another message type, called by hand.
    let settled = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let message = |payload: &'static str| {
        let settled = settled.clone();
        OtherMessage {
            payload: Bytes::from_static(payload.as_bytes()),
            settlement: Settlement::new(move |action: Action| {
                settled.lock().expect("not poisoned").push(action);
                Ok(())
            }),
        }
    };
    let mut stack = generic_stack(Shutdown::new()).expect("valid stack");
    let a = stack.ready().await.expect("ready").call(message("fast"));
    let b = stack.ready().await.expect("ready").call(message("fast"));
    let (a, b) = tokio::join!(a, b);
    a.expect("batch ok");
    b.expect("batch ok");
    assert_eq!(
        *settled.lock().expect("not poisoned"),
        vec![Action::Ack, Action::Ack]
    );
}

#[tokio::test(start_paused = true)]
async fn a_tower_timeout_in_the_stack_fails_the_batch_and_requeues_it() {
    let queue = MemoryQueue::new();
    let slow = queue.push_bytes("slow");
    let fast = queue.push_bytes("fast");
    let other = queue.push_bytes("fast");
    let fast2 = queue.push_bytes("fast");
    queue.close();
    let stack = generic_stack(Shutdown::new()).expect("valid stack");
    let start = tokio::time::Instant::now();
    let report = Worker::new(queue.source(), stack)
        .max_in_flight(2)
        .run()
        .await
        .expect("worker runs");
    // The first batch (slow, fast) times out: Timeout sits above Retry, so it bounds all the
    // attempts together, and the error reaches Ack after 5 s.
    assert_eq!(report.failed, 2);
    assert_eq!(queue.settlement_history(slow), vec![Action::Requeue]);
    assert_eq!(queue.settlement_history(fast), vec![Action::Requeue]);
    assert_eq!(queue.settlement_history(other), vec![Action::Ack]);
    assert_eq!(queue.settlement_history(fast2), vec![Action::Ack]);
    assert_eq!(start.elapsed(), Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn a_boxed_handler_service_works_as_the_inner_service() {
    let queue = MemoryQueue::new();
    let id = queue.push_bytes("x");
    queue.close();
    let handler: Handler =
        BoxCloneSyncService::new(service_fn(|batch: Vec<MemoryMessage>| async move {
            batch.iter().for_each(Message::reject);
            Ok::<(), BoxError>(())
        }));
    let stack: FullStack = ServiceBuilder::new()
        .bulk(BulkLayer::new(1).expect("valid size"))
        .ack(AckLayer::new())
        .retry_batches(RetryLayer::default())
        .service(handler);
    Worker::new(queue.source(), stack)
        .run()
        .await
        .expect("worker runs");
    assert_eq!(queue.settlement(id), Some(Action::Reject));
}

/// Runs `messages` messages, one per batch, through `Bulk → Ack → layer → handler`; the
/// handler takes a second. Returns when each call started (from the test's start) and the
/// most calls seen running at once.
async fn through<L>(layer: L, messages: usize) -> (Vec<Duration>, usize)
where
    L: tower::Layer<Handler>,
    L::Service:
        Service<Vec<MemoryMessage>, Response = (), Error = BoxError> + Clone + Send + 'static,
    <L::Service as Service<Vec<MemoryMessage>>>::Future: Send + 'static,
{
    let handler = SlowHandler::new();
    let queue = MemoryQueue::new();
    for _ in 0..messages {
        queue.push_bytes("x");
    }
    queue.close();
    let stack = ServiceBuilder::new()
        .bulk(BulkLayer::new(1).expect("valid size"))
        .ack(AckLayer::new())
        .layer(layer)
        .service(BoxCloneSyncService::new(handler.service()));
    let report = Worker::new(queue.source(), stack)
        .run()
        .await
        .expect("worker runs");
    assert_eq!(report.failed, 0);
    assert_eq!(queue.outstanding(), 0);
    (handler.started(), handler.peak())
}

#[tokio::test(start_paused = true)]
async fn a_concurrency_limit_inside_bulk_bounds_the_batches_running_at_once() {
    let (started, peak) = through(ConcurrencyLimitLayer::new(2), 6).await;
    assert_eq!(peak, 2);
    assert_eq!(started.len(), 6);
    assert_eq!(started.last(), Some(&Duration::from_secs(2)));
}

#[tokio::test(start_paused = true)]
async fn a_rate_limit_behind_a_buffer_fits_inside_bulk() {
    // `RateLimit` is not `Clone` and Bulk clones its inner service per batch: a `Buffer` in
    // front of it is (and its clones share the one rate limit).
    let layer = ServiceBuilder::new()
        .buffer(8)
        .rate_limit(1, Duration::from_secs(3));
    let (started, _) = through(layer, 3).await;
    let secs = |s| Duration::from_secs(s);
    assert_eq!(started, vec![secs(0), secs(3), secs(6)]);
}

#[tokio::test(start_paused = true)]
async fn a_timeout_inside_bulk_is_the_source_of_the_batch_error() {
    let queue = MemoryQueue::new();
    let message = deliver(&queue).await;
    let mut stack = ServiceBuilder::new()
        .bulk(BulkLayer::new(1).expect("valid size"))
        .ack(AckLayer::new())
        .layer(TimeoutLayer::new(Duration::from_secs(1)))
        .service(service_fn(|_batch: Vec<MemoryMessage>| async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok::<(), BoxError>(())
        }));
    let error = stack
        .ready()
        .await
        .expect("ready")
        .call(message)
        .await
        .expect_err("timed out");
    assert!(error.is::<bulk::BatchError>());
    assert_eq!(error.to_string(), "batch failed");
    let cause = error.source().expect("the batch error has a source");
    assert!(
        cause.is::<tower::timeout::error::Elapsed>(),
        "got {cause:?}"
    );
}
