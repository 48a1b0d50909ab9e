//! Behaviour of the Worker runtime over the in-memory source: panic isolation, graceful
//! shutdown (draining, flushing, the grace period) and a failing service. (Backpressure
//! through the route options is tested on the App, in app.rs.)

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use asyncworker_core::ack::AckLayer;
use asyncworker_core::bulk::BulkLayer;
use asyncworker_core::memory::{MemoryMessage, MemoryQueue, MessageId};
use asyncworker_core::metrics::RouteMetrics;
use asyncworker_core::runtime::Worker;
use asyncworker_core::{Action, BoxError, Message, ServiceBuilderExt, Shutdown};
use support::LocalMetrics;
use tokio::time::{Instant, sleep};
use tower::{ServiceBuilder, service_fn};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// The last settlement of every message, in push order.
fn settlements(queue: &MemoryQueue) -> Vec<Option<Action>> {
    queue.settlements().into_iter().map(|(_, a)| a).collect()
}

fn ids(batch: &[MemoryMessage]) -> Vec<u64> {
    batch.iter().map(|m| m.id().0).collect()
}

fn text(message: &MemoryMessage) -> &str {
    std::str::from_utf8(message.payload()).unwrap_or("")
}

#[tokio::test(start_paused = true)]
async fn a_panicking_handler_does_not_stop_the_route() {
    for bulk in [1, 2] {
        let queue = MemoryQueue::new();
        for p in ["ok", "ok", "boom", "ok", "ok", "sync-boom", "ok", "ok"] {
            queue.push_bytes(p);
        }
        queue.close();
        let handled = Arc::new(Mutex::new(Vec::new()));
        let handler = {
            let handled = handled.clone();
            service_fn(move |batch: Vec<MemoryMessage>| {
                // A panic before the future exists...
                assert!(!batch.iter().any(|m| text(m) == "sync-boom"), "sync boom");
                let handled = handled.clone();
                async move {
                    // ...and one while it runs.
                    if batch.iter().any(|m| text(m) == "boom") {
                        panic!("boom");
                    }
                    handled.lock().unwrap().push(ids(&batch));
                    Ok::<(), BoxError>(())
                }
            })
        };
        let stack = ServiceBuilder::new()
            .bulk(BulkLayer::new(bulk).expect("valid size"))
            .ack(AckLayer::new())
            .service(handler);
        let report = Worker::new(queue.source(), stack)
            .run()
            .await
            .expect("the route keeps serving");
        assert_eq!(report.received, 8, "bulk {bulk}");
        assert_eq!(
            report.failed,
            2 * bulk as u64,
            "bulk {bulk}: the messages of 2 batches"
        );

        use Action::{Ack, Requeue};
        let expected = if bulk == 1 {
            [Ack, Ack, Requeue, Ack, Ack, Requeue, Ack, Ack]
        } else {
            // Batches [0,1] [2,3] [4,5] [6,7]: the panicking batches are requeued whole.
            [Ack, Ack, Requeue, Requeue, Requeue, Requeue, Ack, Ack]
        }
        .map(Some);
        assert_eq!(settlements(&queue), expected, "bulk {bulk}");
        assert_eq!(
            handled.lock().unwrap().concat().last(),
            Some(&7),
            "bulk {bulk}: later messages are handled"
        );
        assert_eq!(queue.outstanding(), 0);
    }
}

/// Without an Ack layer, the runtime itself catches the panic; the messages of the panicked
/// batch are requeued by their settlement slots.
#[tokio::test(start_paused = true)]
async fn a_panic_outside_the_ack_layer_is_caught_by_the_runtime() {
    let queue = MemoryQueue::new();
    for p in ["boom", "ok"] {
        queue.push_bytes(p);
    }
    queue.close();
    let handler = service_fn(|batch: Vec<MemoryMessage>| async move {
        for message in &batch {
            if message.payload().as_ref() == b"boom" {
                panic!("boom");
            }
            message
                .settlement()
                .settle(Action::Ack)
                .expect("settles once");
        }
        Ok::<(), BoxError>(())
    });
    let stack = ServiceBuilder::new()
        .bulk(BulkLayer::new(1).expect("valid size"))
        .service(handler);
    let report = Worker::new(queue.source(), stack)
        .max_in_flight(1)
        .run()
        .await
        .expect("worker runs");
    assert_eq!(report.received, 2);
    assert_eq!(report.panicked, 1);
    assert_eq!(
        settlements(&queue),
        [Some(Action::Requeue), Some(Action::Ack)]
    );
    assert_eq!(queue.outstanding(), 0);
}

#[tokio::test(start_paused = true)]
async fn shutdown_finishes_the_in_flight_batch_and_flushes_the_partial_one() {
    let metrics = LocalMetrics::install();
    let queue = MemoryQueue::new();
    for i in 0..4 {
        queue.push_bytes(format!("{i}"));
    }
    let batches = Arc::new(Mutex::new(Vec::new()));
    let t0 = Instant::now();
    let handler = {
        let batches = batches.clone();
        service_fn(move |batch: Vec<MemoryMessage>| {
            batches.lock().unwrap().push((ids(&batch), t0.elapsed()));
            async move {
                sleep(secs(5)).await;
                Ok::<(), BoxError>(())
            }
        })
    };
    let shutdown = Shutdown::new();
    let route = RouteMetrics::new("asyncworker", "orders");
    let stack = ServiceBuilder::new()
        .bulk(
            BulkLayer::new(3)
                .expect("valid size")
                .flush_interval(secs(60))
                .with_shutdown(shutdown.clone())
                .metrics(route.clone()),
        )
        .ack(AckLayer::new())
        .service(handler);
    let worker = tokio::spawn(
        Worker::new(queue.source(), stack)
            .name("orders")
            .with_shutdown(shutdown.clone())
            .grace_period(secs(30))
            .metrics(route)
            .run(),
    );

    sleep(secs(1)).await;
    // One full batch is running, message 3 waits in a partial batch (60 s flush interval).
    assert_eq!(*batches.lock().unwrap(), [(vec![0, 1, 2], secs(0))]);
    assert_eq!(queue.outstanding(), 4);

    shutdown.trigger();
    let late = queue.push_bytes("late");
    let report = worker.await.expect("no panic").expect("worker runs");

    assert_eq!(
        *batches.lock().unwrap(),
        [(vec![0, 1, 2], secs(0)), (vec![3], secs(1))],
        "the partial batch is flushed when shutdown begins, not at the interval"
    );
    assert_eq!(
        t0.elapsed(),
        secs(6),
        "waits for the handlers, not the grace period"
    );
    assert_eq!(report.received, 4);
    assert_eq!(report.abandoned, 0);
    for id in 0..4 {
        assert_eq!(queue.settlement(MessageId(id)), Some(Action::Ack), "#{id}");
    }
    assert_eq!(queue.outstanding(), 0);
    // Intake stopped: a message pushed after shutdown began stays in the queue.
    assert_eq!(
        queue.settlement(late),
        None,
        "intake stopped: never delivered"
    );
    assert_eq!(queue.ready(), 1);

    let batches_total = "asyncworker_batches_total";
    let by = |reason| metrics.counter(batches_total, &[("route", "orders"), ("reason", reason)]);
    assert_eq!(by("size"), 1);
    assert_eq!(by("shutdown"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_handler_stuck_past_the_grace_period_has_its_messages_requeued() {
    let queue = MemoryQueue::new();
    for p in ["fast", "stuck", "stuck", "fast"] {
        queue.push_bytes(p);
    }
    // Clones kept outside the batch future (as by work the handler spawned): the requeue
    // must come from the abandoned future, not from the last clone going away.
    let kept = Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = kept.clone();
    let handler = service_fn(move |batch: Vec<MemoryMessage>| {
        let keep = keep.clone();
        async move {
            if batch.iter().any(|m| m.payload().as_ref() == b"stuck") {
                keep.lock().unwrap().extend(batch.iter().cloned());
                // Marks of a batch that never concludes do not count.
                batch.iter().for_each(Message::accept);
                std::future::pending::<()>().await;
            }
            Ok::<(), BoxError>(())
        }
    });
    let shutdown = Shutdown::new();
    let stack = ServiceBuilder::new()
        .bulk(
            BulkLayer::new(1)
                .expect("valid size")
                .with_shutdown(shutdown.clone()),
        )
        .ack(AckLayer::new())
        .service(handler);
    let start = Instant::now();
    let worker = tokio::spawn(
        Worker::new(queue.source(), stack)
            .with_shutdown(shutdown.clone())
            .grace_period(secs(5))
            .run(),
    );
    tokio::time::sleep(secs(1)).await;
    shutdown.trigger();
    let report = worker.await.expect("no panic").expect("worker runs");
    assert_eq!(
        start.elapsed(),
        secs(6),
        "stopped at the end of the grace period"
    );
    assert_eq!(report.abandoned, 2);
    assert_eq!(
        settlements(&queue),
        [Action::Ack, Action::Requeue, Action::Requeue, Action::Ack].map(Some)
    );
    for (id, _) in queue.settlements() {
        assert_eq!(
            queue.settlement_history(id).len(),
            1,
            "settled exactly once"
        );
    }
    assert_eq!(queue.outstanding(), 0, "nothing unsettled afterwards");
    assert_eq!(kept.lock().unwrap().len(), 2, "the clones are still alive");
}

/// A `Service<M>` that takes one message, then fails in `poll_ready`.
struct BreaksAfterOne<S> {
    inner: S,
    calls: usize,
}

impl<S, M> tower::Service<M> for BreaksAfterOne<S>
where
    S: tower::Service<M>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = futures::future::MapErr<S::Future, fn(S::Error) -> BoxError>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        if self.calls >= 1 {
            return std::task::Poll::Ready(Err("the service broke".into()));
        }
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, message: M) -> Self::Future {
        use futures::TryFutureExt;
        self.calls += 1;
        self.inner
            .call(message)
            .map_err(Into::into as fn(S::Error) -> BoxError)
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_service_gives_its_stuck_work_the_grace_period_not_forever() {
    let queue = MemoryQueue::new();
    queue.push_bytes("stuck");
    queue.push_bytes("never taken");
    let kept = Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = kept.clone();
    let stack = ServiceBuilder::new()
        .bulk(BulkLayer::new(1).expect("valid size"))
        .ack(AckLayer::new())
        .service(service_fn(move |batch: Vec<MemoryMessage>| {
            // A clone kept outside: the requeue must come from the abandoned future.
            keep.lock().unwrap().extend(batch.iter().cloned());
            async {
                std::future::pending::<()>().await;
                Ok::<(), BoxError>(())
            }
        }));
    let start = Instant::now();
    let outcome = Worker::new(
        queue.source(),
        BreaksAfterOne {
            inner: stack,
            calls: 0,
        },
    )
    .grace_period(secs(5))
    .run()
    .await;
    let error = outcome.expect_err("the service's failure is the worker's error");
    assert!(error.to_string().contains("the service broke"), "{error}");
    assert_eq!(start.elapsed(), secs(5), "bounded by the grace period");
    assert_eq!(
        settlements(&queue),
        [Some(Action::Requeue), None],
        "the stuck message is requeued; the other was never delivered"
    );
    assert_eq!(kept.lock().unwrap().len(), 1, "its clone is still alive");
}

#[tokio::test(start_paused = true)]
async fn a_max_in_flight_of_zero_is_a_config_error_before_the_source_starts() {
    let queue = MemoryQueue::new();
    queue.push_bytes("a");
    queue.close();
    let stack = ServiceBuilder::new()
        .bulk(BulkLayer::new(1).expect("valid size"))
        .ack(AckLayer::new())
        .service(service_fn(|_: Vec<MemoryMessage>| async {
            Ok::<(), BoxError>(())
        }));
    let error = Worker::new(queue.source(), stack)
        .max_in_flight(0)
        .run()
        .await
        .expect_err("0 is not a limit");
    let config = error
        .downcast_ref::<asyncworker_core::Error>()
        .expect("an asyncworker error");
    assert!(
        matches!(config, asyncworker_core::Error::Config(_)),
        "{config:?}"
    );
    assert!(config.to_string().contains("at least 1"), "{config}");
    assert_eq!(queue.delivered(), 0);
}
