//! Behaviour of the Worker runtime over the in-memory source: backpressure, panic isolation
//! and graceful shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use asyncworker_core::ack::AckLayer;
use asyncworker_core::bulk::BulkLayer;
use asyncworker_core::memory::{MemoryMessage, MemoryQueue};
use asyncworker_core::runtime::Worker;
use asyncworker_core::{Action, BoxError, Message, ServiceBuilderExt, Shutdown};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower::{ServiceBuilder, service_fn};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Settlements recorded so far, redeliveries included.
fn settled(queue: &MemoryQueue) -> usize {
    (0..queue.len() as u64)
        .map(|i| {
            queue
                .settlement_history(asyncworker_core::memory::MessageId(i))
                .len()
        })
        .sum()
}

fn all_settled_with(queue: &MemoryQueue, action: Action) -> bool {
    queue.settlements().iter().all(|(_, a)| *a == Some(action))
}

#[tokio::test(start_paused = true)]
async fn never_more_than_max_in_flight_deliveries_ahead_of_settlement() {
    for (bulk, max_in_flight) in [(1, 4), (2, 4), (4, 4)] {
        let queue = MemoryQueue::new();
        for _ in 0..40 {
            queue.push_bytes("x");
        }
        queue.close();
        let gate = Arc::new(Semaphore::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let handler = {
            let (gate, peak, queue) = (gate.clone(), peak.clone(), queue.clone());
            service_fn(move |_batch: Vec<MemoryMessage>| {
                let (gate, peak, queue) = (gate.clone(), peak.clone(), queue.clone());
                async move {
                    peak.fetch_max(queue.delivered() - settled(&queue), Ordering::SeqCst);
                    gate.acquire().await.expect("open").forget();
                    Ok::<(), BoxError>(())
                }
            })
        };
        let stack = ServiceBuilder::new()
            .bulk(
                BulkLayer::new(bulk)
                    .expect("valid size")
                    .max_in_flight(max_in_flight)
                    .expect("valid limit"),
            )
            .ack(AckLayer::new())
            .service(handler);
        let worker = tokio::spawn(
            Worker::new(queue.source(), stack)
                .max_in_flight(max_in_flight)
                .run(),
        );

        // The handler is blocked: intake stops at the limit, however long we wait.
        tokio::time::sleep(secs(3600)).await;
        assert_eq!(queue.delivered(), max_in_flight, "bulk {bulk}");
        assert_eq!(queue.outstanding(), max_in_flight, "bulk {bulk}");

        // Let batches through one at a time: each settlement lets exactly that many in.
        for _ in 0..(40 / bulk) {
            gate.add_permits(1);
            tokio::time::sleep(secs(1)).await;
            assert!(queue.delivered() - settled(&queue) <= max_in_flight);
        }
        let report = worker.await.expect("no panic").expect("worker runs");
        assert_eq!(report.received, 40);
        assert!(peak.load(Ordering::SeqCst) <= max_in_flight);
        assert_eq!(
            peak.load(Ordering::SeqCst),
            max_in_flight,
            "the limit is reached"
        );
        assert!(all_settled_with(&queue, Action::Ack));
    }
}

#[tokio::test(start_paused = true)]
async fn a_panicking_handler_does_not_stop_the_route() {
    let queue = MemoryQueue::new();
    let ids: Vec<_> = ["ok", "boom", "ok", "boom", "ok"]
        .iter()
        .map(|p| queue.push_bytes(*p))
        .collect();
    queue.close();
    let handler = service_fn(|batch: Vec<MemoryMessage>| async move {
        if batch.iter().any(|m| m.payload().as_ref() == b"boom") {
            panic!("boom");
        }
        Ok::<(), BoxError>(())
    });
    let stack = ServiceBuilder::new()
        .bulk(BulkLayer::new(1).expect("valid size"))
        .ack(AckLayer::new())
        .service(handler);
    let report = Worker::new(queue.source(), stack)
        .max_in_flight(1)
        .run()
        .await
        .expect("worker runs");
    assert_eq!(report.received, 5);
    assert_eq!(report.failed, 2);
    let settlements: Vec<_> = ids.iter().map(|id| queue.settlement(*id)).collect();
    assert_eq!(
        settlements,
        [
            Action::Ack,
            Action::Requeue,
            Action::Ack,
            Action::Requeue,
            Action::Ack
        ]
        .map(Some)
    );
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
        queue
            .settlements()
            .into_iter()
            .map(|(_, a)| a)
            .collect::<Vec<_>>(),
        [Some(Action::Requeue), Some(Action::Ack)]
    );
    assert_eq!(queue.outstanding(), 0);
}

#[tokio::test(start_paused = true)]
async fn shutdown_lets_an_in_flight_batch_finish_and_acks_it() {
    let queue = MemoryQueue::new();
    for _ in 0..2 {
        queue.push_bytes("x");
    }
    let started = Arc::new(AtomicUsize::new(0));
    let handler = {
        let started = started.clone();
        service_fn(move |_batch: Vec<MemoryMessage>| {
            started.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(secs(10)).await;
                Ok::<(), BoxError>(())
            }
        })
    };
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
            .shutdown(shutdown.clone())
            .grace_period(secs(30))
            .run(),
    );
    tokio::time::sleep(secs(1)).await;
    assert_eq!(started.load(Ordering::SeqCst), 2);
    shutdown.trigger();
    let late = queue.push_bytes("after shutdown");

    let report = worker.await.expect("no panic").expect("worker runs");
    assert_eq!(
        start.elapsed(),
        secs(10),
        "waited for the handlers, not the grace"
    );
    assert_eq!(report.received, 2);
    assert_eq!(report.abandoned, 0);
    assert_eq!(
        queue.settlement(asyncworker_core::memory::MessageId(0)),
        Some(Action::Ack)
    );
    assert_eq!(
        queue.settlement(asyncworker_core::memory::MessageId(1)),
        Some(Action::Ack)
    );
    assert_eq!(
        queue.settlement(late),
        None,
        "intake stopped: never delivered"
    );
    assert_eq!(queue.ready(), 1);
    assert_eq!(queue.outstanding(), 0);
}

#[tokio::test(start_paused = true)]
async fn shutdown_flushes_a_partial_batch() {
    let queue = MemoryQueue::new();
    for _ in 0..3 {
        queue.push_bytes("x");
    }
    let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
    let handler = {
        let sizes = sizes.clone();
        service_fn(move |batch: Vec<MemoryMessage>| {
            sizes
                .lock()
                .expect("not poisoned")
                .push((Instant::now(), batch.len()));
            async { Ok::<(), BoxError>(()) }
        })
    };
    let shutdown = Shutdown::new();
    let stack = ServiceBuilder::new()
        .bulk(
            BulkLayer::new(10)
                .expect("valid size")
                .flush_interval(secs(60))
                .with_shutdown(shutdown.clone()),
        )
        .ack(AckLayer::new())
        .service(handler);
    let start = Instant::now();
    let worker = tokio::spawn(
        Worker::new(queue.source(), stack)
            .max_in_flight(10)
            .shutdown(shutdown.clone())
            .run(),
    );
    tokio::time::sleep(secs(5)).await;
    assert!(sizes.lock().expect("not poisoned").is_empty());
    shutdown.trigger();
    let report = worker.await.expect("no panic").expect("worker runs");
    assert_eq!(report.received, 3);
    assert_eq!(
        *sizes.lock().expect("not poisoned"),
        vec![(start + secs(5), 3)],
        "flushed at shutdown, not at the interval"
    );
    assert!(all_settled_with(&queue, Action::Ack));
    assert_eq!(queue.outstanding(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_handler_stuck_past_the_grace_period_has_its_messages_requeued() {
    let queue = MemoryQueue::new();
    for p in ["fast", "stuck", "stuck", "fast"] {
        queue.push_bytes(p);
    }
    let handler = service_fn(|batch: Vec<MemoryMessage>| async move {
        if batch.iter().any(|m| m.payload().as_ref() == b"stuck") {
            // Marks of a batch that never concludes do not count.
            batch.iter().for_each(Message::accept);
            std::future::pending::<()>().await;
        }
        Ok::<(), BoxError>(())
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
            .shutdown(shutdown.clone())
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
        queue
            .settlements()
            .into_iter()
            .map(|(_, a)| a)
            .collect::<Vec<_>>(),
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
    let stack = ServiceBuilder::new()
        .bulk(BulkLayer::new(1).expect("valid size"))
        .ack(AckLayer::new())
        .service(service_fn(|_: Vec<MemoryMessage>| async {
            std::future::pending::<()>().await;
            Ok::<(), BoxError>(())
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
        queue
            .settlements()
            .into_iter()
            .map(|(_, a)| a)
            .collect::<Vec<_>>(),
        [Some(Action::Requeue), None],
        "the stuck message is requeued; the other was never delivered"
    );
}
