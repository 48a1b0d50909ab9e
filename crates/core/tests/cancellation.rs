//! Nothing is left unsettled: dropped batch futures, dropped messages and double settlement.

use std::future::{Future, pending};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use asyncworker_core::ack::AckLayer;
use asyncworker_core::bulk::BulkLayer;
use asyncworker_core::memory::{MemoryMessage, MemoryQueue, MessageId};
use asyncworker_core::{Action, BoxError, Message, SettleError, Settlement};
use futures::StreamExt;
use futures::task::noop_waker_ref;
use tower::{Layer, Service, ServiceExt, service_fn};

/// Push `n` messages and take them from the queue's source, as a runtime would.
async fn deliver(queue: &MemoryQueue, n: usize) -> (Vec<MessageId>, Vec<MemoryMessage>) {
    let ids: Vec<MessageId> = (0..n).map(|i| queue.push_bytes(format!("m{i}"))).collect();
    let mut source = queue.source();
    let mut messages = Vec::new();
    for _ in 0..n {
        let message = source.next().await.expect("queued").expect("infallible");
        messages.push(message);
    }
    assert_eq!(queue.outstanding(), n);
    (ids, messages)
}

fn poll_once<F: Future>(future: &mut Pin<Box<F>>) -> Poll<F::Output> {
    future
        .as_mut()
        .poll(&mut Context::from_waker(noop_waker_ref()))
}

/// A handler that never finishes, counting its calls.
fn stuck_handler(
    calls: Arc<AtomicUsize>,
) -> impl Service<Vec<MemoryMessage>, Response = (), Error = BoxError, Future: Send> + Clone {
    service_fn(move |batch: Vec<MemoryMessage>| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move {
            // Marks made before the batch is cancelled must not count: it never concluded.
            batch.iter().for_each(Message::accept);
            pending::<()>().await;
            Ok::<(), BoxError>(())
        }
    })
}

#[tokio::test]
async fn dropping_an_in_flight_ack_future_requeues_its_messages() {
    let queue = MemoryQueue::new();
    let (ids, messages) = deliver(&queue, 3).await;
    let calls = Arc::new(AtomicUsize::new(0));
    // Clones outside the future (as a handler that spawned work would keep): the requeue
    // must come from the dropped future, not from the last clone going away.
    let kept = messages.clone();
    let mut ack = AckLayer::new().layer(stuck_handler(calls.clone()));
    let mut future = Box::pin(ack.ready().await.expect("ready").call(messages));
    assert!(poll_once(&mut future).is_pending());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(queue.outstanding(), 3, "in flight: not settled yet");

    drop(future);

    for id in ids {
        assert_eq!(queue.settlement_history(id), vec![Action::Requeue]);
    }
    assert_eq!(queue.outstanding(), 0);
    drop(kept);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_message_futures_of_a_running_batch_requeues_its_messages() {
    let queue = MemoryQueue::new();
    let (ids, messages) = deliver(&queue, 2).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let mut bulk = BulkLayer::new(2)
        .expect("valid bulk size")
        .layer(AckLayer::new().layer(stuck_handler(calls.clone())));
    // Clones outside, so the requeue must come from the dropped futures.
    let kept = messages.clone();
    let mut futures = Vec::new();
    for message in messages {
        futures.push(Box::pin(bulk.ready().await.expect("ready").call(message)));
    }
    for future in &mut futures {
        assert!(poll_once(future).is_pending());
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one full batch running");

    drop(futures);

    for id in ids {
        assert_eq!(queue.settlement_history(id), vec![Action::Requeue]);
    }
    assert_eq!(queue.outstanding(), 0);
    drop(bulk);
    drop(kept);
}

/// The futures of a batch still filling go away while the `Bulk` service lives on (a caller
/// gave up on them): their buffered messages must not wait for the service to be dropped or
/// for later messages to fill the batch.
#[tokio::test(start_paused = true)]
async fn dropping_the_message_futures_of_a_filling_batch_requeues_its_messages() {
    let queue = MemoryQueue::new();
    let (ids, messages) = deliver(&queue, 3).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let mut bulk = BulkLayer::new(3)
        .expect("valid bulk size")
        .layer(AckLayer::new().layer(stuck_handler(calls.clone())));
    // No clone outside here: a filling batch never reached a handler, and its buffered
    // messages are requeued by dropping them (their last clones) when its futures go.
    let mut messages = messages.into_iter();
    let mut futures = Vec::new();
    for message in messages.by_ref().take(2) {
        futures.push(Box::pin(bulk.ready().await.expect("ready").call(message)));
    }
    for future in &mut futures {
        assert!(poll_once(future).is_pending());
    }

    drop(futures);

    assert_eq!(queue.settlement_history(ids[0]), vec![Action::Requeue]);
    assert_eq!(queue.settlement_history(ids[1]), vec![Action::Requeue]);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "the dropped batch never ran"
    );

    // The service still works: the next message starts a batch of its own.
    let last = messages.next().expect("third message");
    let mut future = Box::pin(bulk.ready().await.expect("ready").call(last));
    assert!(poll_once(&mut future).is_pending());
    drop(future);
    assert_eq!(queue.settlement_history(ids[2]), vec![Action::Requeue]);
    assert_eq!(queue.outstanding(), 0);
}

/// The future of the message that opened a batch drives it; dropped early, the futures of
/// the batch's other messages carry it on, filling and running, and nothing is requeued.
#[tokio::test(start_paused = true)]
async fn a_batch_outlives_the_future_of_the_message_that_opened_it() {
    let queue = MemoryQueue::new();
    let (ids, messages) = deliver(&queue, 3).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let handler = {
        let calls = calls.clone();
        service_fn(move |batch: Vec<MemoryMessage>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::task::yield_now().await;
                assert_eq!(batch.len(), 3);
                Ok::<(), BoxError>(())
            }
        })
    };
    let mut bulk = BulkLayer::new(3)
        .expect("valid bulk size")
        .layer(AckLayer::new().layer(handler));
    let mut messages = messages.into_iter();
    let mut first = Box::pin(
        bulk.ready()
            .await
            .expect("ready")
            .call(messages.next().unwrap()),
    );
    let mut second = Box::pin(
        bulk.ready()
            .await
            .expect("ready")
            .call(messages.next().unwrap()),
    );
    assert!(poll_once(&mut first).is_pending());
    assert!(poll_once(&mut second).is_pending());

    drop(first);
    assert_eq!(queue.outstanding(), 3, "the batch is still open");

    let third = bulk
        .ready()
        .await
        .expect("ready")
        .call(messages.next().unwrap());
    let (second, third) = tokio::join!(second, third);
    second.expect("the batch ran");
    third.expect("the batch ran");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one batch of three");
    for id in ids {
        assert_eq!(queue.settlement_history(id), vec![Action::Ack]);
    }
}

/// The same once the batch is running: the future that drove it goes away mid-call, and a
/// waiting one finishes it.
#[tokio::test(start_paused = true)]
async fn a_running_batch_is_finished_by_a_waiting_future_when_its_driver_is_dropped() {
    let queue = MemoryQueue::new();
    let (ids, messages) = deliver(&queue, 2).await;
    let release = Arc::new(tokio::sync::Notify::new());
    let handler = {
        let release = release.clone();
        service_fn(move |_batch: Vec<MemoryMessage>| {
            let release = release.clone();
            async move {
                release.notified().await;
                Ok::<(), BoxError>(())
            }
        })
    };
    let mut bulk = BulkLayer::new(2)
        .expect("valid bulk size")
        .layer(AckLayer::new().layer(handler));
    let mut futures = Vec::new();
    for message in messages {
        futures.push(Box::pin(bulk.ready().await.expect("ready").call(message)));
    }
    for future in &mut futures {
        assert!(poll_once(future).is_pending(), "the handler waits");
    }
    let waiting = futures.pop().expect("two futures");
    drop(futures);
    assert_eq!(queue.outstanding(), 2, "still running");

    release.notify_one();
    waiting.await.expect("finished by the waiting future");
    for id in ids {
        assert_eq!(queue.settlement_history(id), vec![Action::Ack]);
    }
}

#[tokio::test]
async fn a_message_dropped_unsettled_is_requeued_when_its_last_clone_goes() {
    let queue = MemoryQueue::new();
    let (ids, mut messages) = deliver(&queue, 1).await;
    let message = messages.pop().expect("one message");
    let clone = message.clone();
    message.accept(); // a mark is not a settlement

    drop(message);
    assert_eq!(queue.settlement(ids[0]), None, "a clone is still alive");
    assert_eq!(queue.outstanding(), 1);

    drop(clone);
    assert_eq!(queue.settlement_history(ids[0]), vec![Action::Requeue]);
    assert_eq!(queue.outstanding(), 0);
}

#[tokio::test]
async fn a_settled_message_is_not_requeued_when_dropped() {
    let queue = MemoryQueue::new();
    let (ids, mut messages) = deliver(&queue, 1).await;
    let message = messages.pop().expect("one message");
    message
        .settlement()
        .settle(Action::Reject)
        .expect("settles");
    drop(message);
    assert_eq!(queue.settlement_history(ids[0]), vec![Action::Reject]);
}

#[test]
fn settling_twice_reaches_the_backend_once() {
    let calls = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = calls.clone();
    let settlement = Settlement::new(move |action: Action| {
        seen.lock().expect("not poisoned").push(action);
        Ok(())
    });
    let clone = settlement.clone();
    assert!(!settlement.is_settled());

    settlement.settle(Action::Ack).expect("first settlement");
    assert!(clone.is_settled());
    assert!(matches!(
        clone.settle(Action::Reject),
        Err(SettleError::AlreadySettled)
    ));
    clone.mark(Action::Requeue);
    assert!(matches!(
        clone.settle_marked_or(Action::Ack),
        Err((Action::Requeue, SettleError::AlreadySettled))
    ));
    drop(settlement);
    drop(clone);

    assert_eq!(*calls.lock().expect("not poisoned"), vec![Action::Ack]);
}

#[test]
fn a_failing_backend_is_reported_not_panicked_on_and_not_retried() {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let settlement = Settlement::new(move |_: Action| {
        seen.fetch_add(1, Ordering::SeqCst);
        Err(SettleError::ChannelClosed)
    });
    assert!(matches!(
        settlement.settle(Action::Ack),
        Err(SettleError::ChannelClosed)
    ));
    assert!(matches!(
        settlement.settle(Action::Ack),
        Err(SettleError::AlreadySettled)
    ));
    drop(settlement); // no requeue attempt either: the slot is settled
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[test]
fn an_unsettled_slot_dropped_requeues_through_its_backend_once() {
    let calls = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = calls.clone();
    let settlement = Settlement::new(move |action: Action| {
        seen.lock().expect("not poisoned").push(action);
        Ok(())
    });
    settlement.mark(Action::Ack);
    drop(settlement.clone());
    assert!(calls.lock().expect("not poisoned").is_empty());
    drop(settlement);
    assert_eq!(*calls.lock().expect("not poisoned"), vec![Action::Requeue]);
}
