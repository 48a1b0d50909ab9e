//! The settlement matrix: {handler ok, error, panic} × {no mark, accept, reject, requeue,
//! reject_with(false/true)} × {bulk 1, bulk N}, driven through the in-memory source.
//!
//! The seed's semantics: success → ack, error → requeue, a panic is an error, an explicit mark
//! beats the handler's outcome, the last mark wins, and every message is settled exactly once.

use std::time::Duration;

mod support;

use asyncworker_core::Jitter;
use asyncworker_core::ack::AckLayer;
use asyncworker_core::bulk::BulkLayer;
use asyncworker_core::memory::{MemoryMessage, MemoryQueue, MessageId};
use asyncworker_core::retry::{RetryConfig, RetryLayer};
use asyncworker_core::runtime::Worker;
use asyncworker_core::{Action, BoxError, Message, ServiceBuilderExt};
use support::LocalMetrics;
use tower::{ServiceBuilder, service_fn};

/// How the handler's call ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Error,
    Panic,
}

/// What the handler does to one message before it returns. Encoded in the payload so the
/// handler can read it back from any batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    None,
    Accept,
    Reject,
    Requeue,
    RejectWith(bool),
    /// `requeue()` then `accept()`: the last mark must win.
    RequeueThenAccept,
    /// `accept()` then `reject_with(false)`.
    AcceptThenReject,
}

const ALL_MARKS: [Mark; 8] = [
    Mark::None,
    Mark::Accept,
    Mark::Reject,
    Mark::Requeue,
    Mark::RejectWith(false),
    Mark::RejectWith(true),
    Mark::RequeueThenAccept,
    Mark::AcceptThenReject,
];

impl Mark {
    fn encode(self) -> &'static str {
        match self {
            Mark::None => "none",
            Mark::Accept => "accept",
            Mark::Reject => "reject",
            Mark::Requeue => "requeue",
            Mark::RejectWith(false) => "reject_with_false",
            Mark::RejectWith(true) => "reject_with_true",
            Mark::RequeueThenAccept => "requeue_then_accept",
            Mark::AcceptThenReject => "accept_then_reject",
        }
    }

    fn apply(message: &MemoryMessage) {
        match message.text().expect("utf-8 payload") {
            "none" => {}
            "accept" => message.accept(),
            "reject" => message.reject(),
            "requeue" => message.requeue(),
            "reject_with_false" => message.reject_with(false),
            "reject_with_true" => message.reject_with(true),
            "requeue_then_accept" => {
                message.requeue();
                message.accept();
            }
            "accept_then_reject" => {
                message.accept();
                message.reject_with(false);
            }
            other => panic!("unknown mark {other}"),
        }
    }

    /// The action the handler's mark asks for, if any.
    fn action(self) -> Option<Action> {
        match self {
            Mark::None => None,
            Mark::Accept | Mark::RequeueThenAccept => Some(Action::Ack),
            Mark::Reject | Mark::RejectWith(false) | Mark::AcceptThenReject => Some(Action::Reject),
            Mark::Requeue | Mark::RejectWith(true) => Some(Action::Requeue),
        }
    }
}

/// A route's ack policy.
#[derive(Debug, Clone, Copy)]
struct Policy {
    on_success: Action,
    on_error: Action,
}

const SEED_POLICY: Policy = Policy {
    on_success: Action::Ack,
    on_error: Action::Requeue,
};

/// Push one message per mark, run them through `Bulk(bulk) → Ack(policy) → handler` on a
/// `Worker` over the closed queue, and return each message's settlement history.
async fn run(outcome: Outcome, marks: &[Mark], bulk: usize, policy: Policy) -> Vec<Vec<Action>> {
    let queue = MemoryQueue::new();
    let ids: Vec<MessageId> = marks.iter().map(|m| queue.push_bytes(m.encode())).collect();
    queue.close();

    let stack = ServiceBuilder::new()
        .bulk(
            BulkLayer::new(bulk)
                .expect("valid bulk size")
                .flush_interval(Duration::from_secs(1)),
        )
        .ack(
            AckLayer::new()
                .on_success(policy.on_success)
                .on_error(policy.on_error),
        )
        .service(service_fn(move |batch: Vec<MemoryMessage>| async move {
            for message in &batch {
                Mark::apply(message);
            }
            match outcome {
                Outcome::Ok => Ok(()),
                Outcome::Error => Err(BoxError::from("handler failed")),
                Outcome::Panic => panic!("handler panicked on purpose"),
            }
        }));
    let report = Worker::new(queue.source(), stack)
        .max_in_flight(marks.len().max(bulk))
        .run()
        .await
        .expect("worker runs");
    assert_eq!(report.received, marks.len() as u64);
    assert_eq!(queue.outstanding(), 0, "nothing left unsettled");
    ids.into_iter()
        .map(|id| queue.settlement_history(id))
        .collect()
}

/// Run a batch of `marks` and assert each message was settled exactly once with `expected`.
async fn assert_settled(outcome: Outcome, marks: &[Mark], bulk: usize, expected: &[Action]) {
    let histories = run(outcome, marks, bulk, SEED_POLICY).await;
    let want: Vec<Vec<Action>> = expected.iter().map(|a| vec![*a]).collect();
    assert_eq!(
        histories, want,
        "outcome {outcome:?}, marks {marks:?}, bulk {bulk}"
    );
}

#[tokio::test(start_paused = true)]
async fn handler_success_acks_unmarked_messages() {
    assert_settled(Outcome::Ok, &[Mark::None], 1, &[Action::Ack]).await;
    assert_settled(Outcome::Ok, &[Mark::None; 3], 3, &[Action::Ack; 3]).await;
}

#[tokio::test(start_paused = true)]
async fn handler_error_requeues_unmarked_messages() {
    assert_settled(Outcome::Error, &[Mark::None], 1, &[Action::Requeue]).await;
    assert_settled(Outcome::Error, &[Mark::None; 3], 3, &[Action::Requeue; 3]).await;
}

#[tokio::test(start_paused = true)]
async fn handler_panic_is_an_error_and_requeues_unmarked_messages() {
    assert_settled(Outcome::Panic, &[Mark::None], 1, &[Action::Requeue]).await;
    assert_settled(Outcome::Panic, &[Mark::None; 3], 3, &[Action::Requeue; 3]).await;
}

#[tokio::test(start_paused = true)]
async fn explicit_accept_beats_handler_error_and_panic() {
    for outcome in [Outcome::Error, Outcome::Panic] {
        assert_settled(outcome, &[Mark::Accept], 1, &[Action::Ack]).await;
        assert_settled(outcome, &[Mark::Accept; 2], 2, &[Action::Ack; 2]).await;
    }
}

#[tokio::test(start_paused = true)]
async fn explicit_reject_beats_handler_success_error_and_panic() {
    for outcome in [Outcome::Ok, Outcome::Error, Outcome::Panic] {
        assert_settled(outcome, &[Mark::Reject], 1, &[Action::Reject]).await;
        assert_settled(outcome, &[Mark::Reject; 2], 2, &[Action::Reject; 2]).await;
    }
}

#[tokio::test(start_paused = true)]
async fn explicit_requeue_beats_handler_success() {
    assert_settled(Outcome::Ok, &[Mark::Requeue], 1, &[Action::Requeue]).await;
    assert_settled(Outcome::Ok, &[Mark::Requeue; 2], 2, &[Action::Requeue; 2]).await;
}

#[tokio::test(start_paused = true)]
async fn reject_with_false_rejects_and_reject_with_true_requeues() {
    for outcome in [Outcome::Ok, Outcome::Error, Outcome::Panic] {
        assert_settled(
            outcome,
            &[Mark::RejectWith(false), Mark::RejectWith(true)],
            2,
            &[Action::Reject, Action::Requeue],
        )
        .await;
        assert_settled(outcome, &[Mark::RejectWith(false)], 1, &[Action::Reject]).await;
        assert_settled(outcome, &[Mark::RejectWith(true)], 1, &[Action::Requeue]).await;
    }
}

#[tokio::test(start_paused = true)]
async fn last_mark_wins() {
    for outcome in [Outcome::Ok, Outcome::Error, Outcome::Panic] {
        assert_settled(
            outcome,
            &[Mark::RequeueThenAccept, Mark::AcceptThenReject],
            2,
            &[Action::Ack, Action::Reject],
        )
        .await;
        assert_settled(outcome, &[Mark::RequeueThenAccept], 1, &[Action::Ack]).await;
    }
}

/// The Python original's case: in one batch, `reject(requeue=False)`, `accept()`, one left
/// untouched, then the handler raises.
#[tokio::test(start_paused = true)]
async fn mixed_marks_in_one_failed_batch_settle_individually() {
    assert_settled(
        Outcome::Error,
        &[Mark::RejectWith(false), Mark::Accept, Mark::None],
        3,
        &[Action::Reject, Action::Ack, Action::Requeue],
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn custom_on_success_policy_applies_to_unmarked_messages_only() {
    let policy = Policy {
        on_success: Action::Reject,
        on_error: Action::Requeue,
    };
    let histories = run(
        Outcome::Ok,
        &[Mark::None, Mark::Accept, Mark::None],
        3,
        policy,
    )
    .await;
    assert_eq!(
        histories,
        vec![
            vec![Action::Reject],
            vec![Action::Ack],
            vec![Action::Reject]
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn custom_on_error_policy_applies_to_errors_and_panics() {
    let policy = Policy {
        on_success: Action::Ack,
        on_error: Action::Reject,
    };
    for outcome in [Outcome::Error, Outcome::Panic] {
        let histories = run(outcome, &[Mark::None, Mark::Requeue], 2, policy).await;
        assert_eq!(
            histories,
            vec![vec![Action::Reject], vec![Action::Requeue]],
            "{outcome:?}"
        );
    }
    // ... and not to successes.
    let histories = run(Outcome::Ok, &[Mark::None], 1, policy).await;
    assert_eq!(histories, vec![vec![Action::Ack]]);
}

/// Every cell of the matrix, under the seed policy and a policy with every default changed,
/// at bulk 1 (one batch per message) and bulk N (all marks in one batch).
#[tokio::test(start_paused = true)]
async fn full_matrix_settles_every_message_exactly_once() {
    let policies = [
        SEED_POLICY,
        Policy {
            on_success: Action::Reject,
            on_error: Action::Ack,
        },
    ];
    for policy in policies {
        for outcome in [Outcome::Ok, Outcome::Error, Outcome::Panic] {
            let default = match outcome {
                Outcome::Ok => policy.on_success,
                Outcome::Error | Outcome::Panic => policy.on_error,
            };
            let expected: Vec<Vec<Action>> = ALL_MARKS
                .iter()
                .map(|m| vec![m.action().unwrap_or(default)])
                .collect();
            for bulk in [1, ALL_MARKS.len()] {
                let histories = run(outcome, &ALL_MARKS, bulk, policy).await;
                assert_eq!(
                    histories, expected,
                    "policy {policy:?}, outcome {outcome:?}, bulk {bulk}"
                );
            }
        }
    }
}

/// With Retry between Ack and the handler, the marks of the last attempt stand, the error
/// reaches Ack after the last one, and nothing is settled more than once.
#[tokio::test(start_paused = true)]
async fn error_after_retries_reaches_ack_and_marks_of_the_last_attempt_stand() {
    let queue = MemoryQueue::new();
    let ids: Vec<MessageId> = [Mark::None, Mark::Reject]
        .iter()
        .map(|m| queue.push_bytes(m.encode()))
        .collect();
    queue.close();
    let attempts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = attempts.clone();
    let config = RetryConfig::builder()
        .max_attempts(3)
        .initial_delay(Duration::from_millis(10))
        .jitter(Jitter::None)
        .build()
        .expect("valid retry config");
    let stack = ServiceBuilder::new()
        .bulk(BulkLayer::new(2).expect("valid bulk size"))
        .ack(AckLayer::new())
        .retry_batches(RetryLayer::new(config))
        .service(service_fn(move |batch: Vec<MemoryMessage>| {
            let counter = counter.clone();
            async move {
                // Marks are cleared before each retry: a handler marks in every attempt.
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                batch.iter().for_each(Mark::apply);
                Err::<(), BoxError>("still failing".into())
            }
        }));
    let report = Worker::new(queue.source(), stack)
        .max_in_flight(2)
        .run()
        .await
        .expect("worker runs");
    assert_eq!(attempts.load(std::sync::atomic::Ordering::SeqCst), 3);
    assert_eq!(
        report.failed, 2,
        "both message futures see the batch's error"
    );
    assert_eq!(queue.settlement_history(ids[0]), vec![Action::Requeue]);
    assert_eq!(queue.settlement_history(ids[1]), vec![Action::Reject]);
}

#[tokio::test]
async fn a_message_the_handler_settled_itself_is_not_settled_again_nor_counted_as_a_failure() {
    let recorded = LocalMetrics::install();
    let metrics = asyncworker_core::metrics::RouteMetrics::new("asyncworker", "by-hand");

    let queue = MemoryQueue::new();
    let id = queue.push_bytes("x");
    queue.close();
    let stack = ServiceBuilder::new()
        .bulk(BulkLayer::new(1).expect("bulk size"))
        .ack(AckLayer::new().metrics(metrics))
        .service(service_fn(|batch: Vec<MemoryMessage>| async move {
            for message in &batch {
                message
                    .settlement()
                    .settle(Action::Reject)
                    .expect("first settle");
            }
            Ok::<_, BoxError>(())
        }));
    Worker::new(queue.source(), stack).run().await.expect("run");

    assert_eq!(queue.settlement_history(id), vec![Action::Reject]);
    let failures = recorded.counter("asyncworker_settle_failures_total", &[]);
    assert_eq!(failures, 0);
}

/// Marks belong to an attempt: a retry starts from no marks, so a mark made by a failed
/// attempt does not outlive it. Attempt 1 marks the first message `requeue()` and the second
/// `accept()` and fails; attempt 2 marks nothing and succeeds: both are acked by policy, and
/// a mark made by the last attempt (the third message's `reject()`) stands.
#[tokio::test(start_paused = true)]
async fn marks_of_a_failed_attempt_do_not_survive_a_successful_retry() {
    let queue = MemoryQueue::new();
    let ids: Vec<MessageId> = ["a", "b", "c"]
        .iter()
        .map(|body| queue.push_bytes(*body))
        .collect();
    queue.close();
    let attempts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = attempts.clone();
    let config = RetryConfig::builder()
        .max_attempts(2)
        .initial_delay(Duration::from_millis(10))
        .jitter(Jitter::None)
        .build()
        .expect("valid retry config");
    let stack = ServiceBuilder::new()
        .bulk(BulkLayer::new(3).expect("valid bulk size"))
        .ack(AckLayer::new().on_error(Action::Reject))
        .retry_batches(RetryLayer::new(config))
        .service(service_fn(move |batch: Vec<MemoryMessage>| {
            let counter = counter.clone();
            async move {
                if counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                    batch[0].requeue();
                    batch[1].accept();
                    return Err::<(), BoxError>("attempt 1 failed".into());
                }
                batch[2].reject();
                Ok(())
            }
        }));
    let report = Worker::new(queue.source(), stack)
        .max_in_flight(3)
        .run()
        .await
        .expect("worker runs");
    assert_eq!(attempts.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(report.failed, 0);
    assert_eq!(queue.settlement_history(ids[0]), vec![Action::Ack]);
    assert_eq!(queue.settlement_history(ids[1]), vec![Action::Ack]);
    assert_eq!(queue.settlement_history(ids[2]), vec![Action::Reject]);
}
