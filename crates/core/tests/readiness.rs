//! Readiness at the edges of Bulk, in the style of tower's own tests: the inner service is
//! tower-test's mock, whose readiness the test controls. A batch waits for the inner service
//! to be ready; a readiness failure fails the batch (settled by Ack's policy when Ack is
//! inside), makes Bulk's own `poll_ready` fail from then on, and stops the runtime's route
//! with an error naming the cause.

mod support;

use std::future::poll_fn;
use std::pin::pin;
use std::time::Duration;

use asyncworker_core::ack::{AckLayer, ServiceFailed};
use asyncworker_core::bulk::{BatchError, BulkLayer};
use asyncworker_core::memory::{MemoryMessage, MemoryQueue, MessageId};
use asyncworker_core::metrics::RouteMetrics;
use asyncworker_core::runtime::Worker;
use asyncworker_core::{Action, BoxError};
use support::LocalMetrics;
use support::layers::deliver;
use tower::{Layer, Service};
use tower_test::mock;

type Handle = mock::Handle<Vec<MemoryMessage>, ()>;

fn ids(batch: &[MemoryMessage]) -> Vec<MessageId> {
    batch.iter().map(MemoryMessage::id).collect()
}

/// Bulk's readiness, polled once.
async fn bulk_ready<S: Service<MemoryMessage, Error = BoxError>>(
    bulk: &mut S,
) -> Result<(), BoxError> {
    poll_fn(|cx| bulk.poll_ready(cx)).await
}

/// The `ServiceFailed` in `error`'s source chain, and the display of its cause.
fn failure_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(failed) = error.downcast_ref::<ServiceFailed>() {
            return failed.cause().to_string();
        }
        next = error.source();
    }
    panic!("no ServiceFailed in the chain of {error:?}")
}

/// Hands `bulk` one message, makes its inner service fail readiness, and returns the
/// message's error.
async fn fail_one<S>(bulk: &mut S, queue: &MemoryQueue, handle: &mut Handle) -> BoxError
where
    S: Service<MemoryMessage, Response = (), Error = BoxError>,
    S::Future: Send + 'static,
{
    bulk_ready(bulk).await.expect("bulk is ready");
    let message = tokio::spawn(bulk.call(deliver(queue).await));
    settle_tasks().await;
    handle.send_error("broken");
    message
        .await
        .expect("no panic")
        .expect_err("the batch failed")
}

/// Let spawned tasks run until they wait.
async fn settle_tasks() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn a_batch_waits_for_the_inner_service_to_be_ready() {
    let (mock, mut handle): (_, Handle) = mock::pair();
    handle.allow(0);
    let queue = MemoryQueue::new();
    let mut bulk = BulkLayer::new(2)
        .expect("valid size")
        .layer(AckLayer::new().layer(mock));

    // Bulk itself is ready: a message only joins a buffer.
    bulk_ready(&mut bulk).await.expect("bulk is ready");
    let a = tokio::spawn(bulk.call(deliver(&queue).await));
    bulk_ready(&mut bulk).await.expect("bulk is ready");
    let b = tokio::spawn(bulk.call(deliver(&queue).await));
    settle_tasks().await;
    // The batch is sealed, but the inner service is not ready: nothing was called.
    assert!(futures::poll!(pin!(handle.next_request())).is_pending());
    assert!(!a.is_finished() && !b.is_finished());

    handle.allow(1);
    let (batch, respond) = handle.next_request().await.expect("a batch");
    assert_eq!(ids(&batch), vec![MessageId(0), MessageId(1)]);
    respond.send_response(());
    a.await.expect("no panic").expect("batch ok");
    b.await.expect("no panic").expect("batch ok");
    assert_eq!(queue.settlement(MessageId(0)), Some(Action::Ack));
    assert_eq!(queue.settlement(MessageId(1)), Some(Action::Ack));
}

#[tokio::test]
async fn a_readiness_failure_fails_the_batch_and_then_bulk_itself() {
    let (mock, mut handle): (_, Handle) = mock::pair();
    handle.allow(0);
    let queue = MemoryQueue::new();
    // No Ack: Bulk sees the failure itself.
    let mut bulk = BulkLayer::new(1).expect("valid size").layer(mock);

    let error = fail_one(&mut bulk, &queue, &mut handle).await;
    let batch = error.downcast_ref::<BatchError>().expect("a batch error");
    assert_eq!(
        batch.to_string(),
        "batch failed",
        "the cause is not repeated"
    );
    assert_eq!(failure_cause(&*error), "broken");
    // Without Ack nothing settled it: dropped unsettled, it is requeued.
    assert_eq!(queue.settlement(MessageId(0)), Some(Action::Requeue));

    let error = bulk_ready(&mut bulk).await.expect_err("bulk failed");
    assert!(error.is::<ServiceFailed>());
    assert_eq!(failure_cause(&*error), "broken");
}

#[tokio::test]
async fn ack_settles_a_batch_whose_service_failed_readiness_by_its_policy() {
    let recorded = LocalMetrics::install();
    let (mock, mut handle): (_, Handle) = mock::pair();
    handle.allow(0);
    let queue = MemoryQueue::new();
    let metrics = RouteMetrics::new("asyncworker", "ready");
    let mut bulk = BulkLayer::new(1)
        .expect("valid size")
        .metrics(metrics.clone())
        .layer(
            AckLayer::new()
                .on_error(Action::Reject)
                .metrics(metrics)
                .layer(mock),
        );

    let error = fail_one(&mut bulk, &queue, &mut handle).await;
    assert_eq!(failure_cause(&*error), "broken");
    assert_eq!(queue.settlement_history(MessageId(0)), vec![Action::Reject]);
    assert_eq!(
        recorded.counter(
            "asyncworker_messages_settled_total",
            &[("route", "ready"), ("action", "reject")]
        ),
        1
    );
    assert_eq!(
        recorded
            .histogram(
                "asyncworker_handler_duration_seconds",
                &[("route", "ready"), ("outcome", "error")]
            )
            .len(),
        1
    );

    let error = bulk_ready(&mut bulk).await.expect_err("bulk failed");
    assert_eq!(failure_cause(&*error), "broken");
}

#[tokio::test(start_paused = true)]
async fn the_worker_stops_a_route_whose_service_failed_with_an_error_naming_it() {
    let (mock, mut handle): (_, Handle) = mock::pair();
    let queue = MemoryQueue::new();
    let first = queue.push_bytes("a");
    let stack = BulkLayer::new(1)
        .expect("valid size")
        .layer(AckLayer::new().on_error(Action::Reject).layer(mock));
    handle.send_error("broken");
    // Answer whatever batches still reach the service.
    let responder = tokio::spawn(async move {
        while let Some((_, respond)) = handle.next_request().await {
            respond.send_response(());
        }
    });

    let error = tokio::time::timeout(
        Duration::from_secs(60),
        Worker::new(queue.source(), stack).run(),
    )
    .await
    .expect("the route stops")
    .expect_err("the service failed");
    assert!(error.is::<ServiceFailed>(), "got {error:?}");
    assert_eq!(failure_cause(&*error), "broken");
    assert_eq!(queue.settlement_history(first), vec![Action::Reject]);
    assert_eq!(queue.outstanding(), 0);
    responder.abort();
}
