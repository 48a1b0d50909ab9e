//! The response future of [`Retry`](super::Retry).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tokio_util::sync::WaitForCancellationFutureOwned;
use tower::Service;

use super::{RetryConfig, RetryPredicate};
use crate::Shutdown;

/// What a [`ResponseFuture`] keeps to make further attempts.
pub(super) struct RetryParts<S, Req, P> {
    pub(super) service: S,
    pub(super) request: Req,
    pub(super) predicate: P,
    pub(super) shutdown: Option<Shutdown>,
}

pin_project! {
    #[project = StateProj]
    #[project_replace = StateReplace]
    enum State<F, E> {
        // An attempt is running.
        Calling { #[pin] future: F },
        // An attempt failed with `error`; sleeping (until `slept`), then waiting for the
        // service to be ready for the next attempt. The timer is boxed, as `stop`: both
        // exist only after a failure, and inline they would make every attempt's future
        // (moved at each layer on the success path) several times larger.
        Backoff { sleep: Pin<Box<Sleep>>, slept: bool, error: E },
        // The output has been returned.
        Done,
    }
}

pin_project! {
    /// The response future of [`Retry`](super::Retry): runs attempts until one succeeds
    /// or Retry gives up, and resolves to the first success or the last error.
    ///
    /// # Panics
    ///
    /// When polled after it has completed, or polled for a retry outside a Tokio runtime
    /// with the time driver enabled.
    #[must_use = "futures do nothing unless you `.await` or poll them"]
    pub struct ResponseFuture<S, Req, P>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S::Future, S::Error>,
        // Fires on shutdown; created with the first backoff, when there is a signal.
        stop: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
        // `None` when `max_attempts` is 1: there is nothing to retry with.
        retry: Option<RetryParts<S, Req, P>>,
        // The attempt running or last run, from 1.
        attempt: u32,
        config: RetryConfig,
    }
}

impl<S, Req, P> ResponseFuture<S, Req, P>
where
    S: Service<Req>,
{
    pub(super) fn new(
        first: S::Future,
        retry: Option<RetryParts<S, Req, P>>,
        config: RetryConfig,
    ) -> Self {
        ResponseFuture {
            state: State::Calling { future: first },
            stop: None,
            retry,
            attempt: 1,
            config,
        }
    }
}

impl<S, Req, P> Future for ResponseFuture<S, Req, P>
where
    Req: Clone,
    S: Service<Req>,
    S::Error: fmt::Display,
    P: RetryPredicate<S::Error>,
{
    type Output = Result<S::Response, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Calling { future } => {
                    let error = match ready!(future.poll(cx)) {
                        Ok(response) => {
                            this.state.set(State::Done);
                            return Poll::Ready(Ok(response));
                        }
                        Err(error) => error,
                    };
                    let attempt = *this.attempt;
                    let max_attempts = this.config.max_attempts;
                    // Why not to retry, if there is a reason (logged when there was a choice).
                    let give_up = match this.retry.as_mut() {
                        Some(_) if attempt >= max_attempts => Some("all attempts failed"),
                        None => (max_attempts > 1).then_some("all attempts failed"),
                        Some(retry) if !retry.predicate.should_retry(&error) => {
                            Some("error is not retryable")
                        }
                        Some(retry) => match &retry.shutdown {
                            Some(shutdown) if shutdown.is_triggered() => Some("shutdown has begun"),
                            Some(shutdown) => {
                                if this.stop.is_none() {
                                    *this.stop = Some(Box::pin(shutdown.triggered()));
                                }
                                None
                            }
                            None => None,
                        },
                    };
                    if give_up.is_some() || this.retry.is_none() {
                        if let Some(reason) = give_up {
                            tracing::debug!(attempt, error = %error, "{reason}; giving up");
                        }
                        this.state.set(State::Done);
                        return Poll::Ready(Err(error));
                    }
                    let delay = this.config.backoff.delay(attempt);
                    tracing::warn!(
                        attempt,
                        max_attempts,
                        delay = ?delay,
                        error = %error,
                        "attempt failed; retrying after backoff"
                    );
                    this.state.set(State::Backoff {
                        sleep: Box::pin(tokio::time::sleep(delay)),
                        slept: delay.is_zero(),
                        error,
                    });
                }
                StateProj::Backoff { sleep, slept, .. } => {
                    let stopping = this
                        .stop
                        .as_mut()
                        .is_some_and(|stop| stop.as_mut().poll(cx).is_ready());
                    if stopping {
                        tracing::debug!(
                            attempt = *this.attempt,
                            "shutdown began during backoff; not retrying"
                        );
                    } else if let Some(retry) = this.retry.as_mut() {
                        if !*slept {
                            ready!(sleep.as_mut().poll(cx));
                            *slept = true;
                        }
                        match retry.service.poll_ready(cx) {
                            Poll::Pending => return Poll::Pending,
                            Poll::Ready(Err(error)) => {
                                // The service itself broke: its error says more than the
                                // one being retried.
                                this.state.set(State::Done);
                                return Poll::Ready(Err(error));
                            }
                            Poll::Ready(Ok(())) => {
                                *this.attempt += 1;
                                // Marks belong to an attempt: the failed one's are void.
                                crate::ack::clear_marks_for_retry();
                                let future = retry.service.call(retry.request.clone());
                                this.state.set(State::Calling { future });
                                continue;
                            }
                        }
                    }
                    // Give up with the error of the last attempt.
                    let StateReplace::Backoff { error, .. } =
                        this.state.as_mut().project_replace(State::Done)
                    else {
                        unreachable!("retry: the state was matched as backoff");
                    };
                    return Poll::Ready(Err(error));
                }
                StateProj::Done => panic!("retry ResponseFuture polled after completion"),
            }
        }
    }
}

impl<S, Req, P> fmt::Debug for ResponseFuture<S, Req, P>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Calling { .. } => "calling",
            State::Backoff { .. } => "backoff",
            State::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .field("attempt", &self.attempt)
            .field("max_attempts", &self.config.max_attempts)
            .finish()
    }
}
