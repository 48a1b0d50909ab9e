//! [`within`]: a publish's timeout, cheaper per poll than `tokio::time::timeout`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Poll, Waker};
use std::time::Duration;

/// Runs `attempt` for at most `timeout` (measured from this call): `Some` of its output, or
/// `None` when the time ran out first.
///
/// The same outcome as `tokio::time::timeout`, for less work per poll, which counts with a
/// thousand publishes in flight each polled several times: the timer is polled — registering
/// the waker it will wake — only on the first poll and when the waker changes; other polls
/// only read whether it has fired. And the timer does not spend the task's coop budget: with
/// many publishes polled in one turn of a task (a `buffer_unordered`, a `join_all`), a spent
/// budget would make each later one wake itself and be polled again for nothing.
///
/// `attempt` is pinned by the caller, in the caller's own future: taken by value, it would be
/// stored twice in this one (an async fn's argument and its pinned local do not share space),
/// and every publish future would be that much larger to move.
pub(super) async fn within<F: Future>(
    timeout: Duration,
    mut attempt: Pin<&mut F>,
) -> Option<F::Output> {
    let mut timer = std::pin::pin!(tokio::time::sleep(timeout));
    // The waker the timer will wake, once it has been polled.
    let mut registered: Option<Waker> = None;
    std::future::poll_fn(move |cx| {
        if let Poll::Ready(output) = attempt.as_mut().poll(cx) {
            return Poll::Ready(Some(output));
        }
        if registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            return if timer.is_elapsed() {
                Poll::Ready(None)
            } else {
                Poll::Pending
            };
        }
        let mut unbudgeted = tokio::task::unconstrained(timer.as_mut());
        match Pin::new(&mut unbudgeted).poll(cx) {
            Poll::Ready(()) => Poll::Ready(None),
            Poll::Pending => {
                registered = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    })
    .await
}
