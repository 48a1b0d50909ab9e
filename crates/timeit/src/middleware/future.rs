//! The response future of [`TimeitService`](super::TimeitService).

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use pin_project_lite::pin_project;
use tokio::time::Instant;

use super::Config;
use crate::{Callback, Outcome, Report, ReportedError, Timing, record::record, report::Entries};

pin_project! {
    /// The response future of [`TimeitService`](super::TimeitService): the inner future,
    /// then the callback with the call's report.
    ///
    /// The histogram sample is recorded when the inner future completes, or, if this future
    /// is dropped before that, on drop with outcome `cancelled`.
    ///
    /// # Panics
    ///
    /// Polling it again after it returned `Ready` panics, as for most futures.
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<F, C>
    where
        F: Future,
        C: Callback,
    {
        #[pin]
        state: State<F, C>,
        stopwatch: Stopwatch<C>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, C>
    where
        F: Future,
        C: Callback,
    {
        Running { #[pin] future: F },
        Reporting { #[pin] callback: C::Future, output: Option<F::Output> },
        Done,
    }
}

impl<F: Future, C: Callback> ResponseFuture<F, C> {
    pub(super) fn new(future: F, config: Arc<Config<C>>, start: Instant) -> Self {
        ResponseFuture {
            state: State::Running { future },
            stopwatch: Stopwatch {
                config,
                start,
                stopped: false,
            },
        }
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: fmt::Display,
    C: Callback,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Running { future } => {
                    let output = ready!(future.poll(cx));
                    let (outcome, error) = match &output {
                        Ok(_) => (Outcome::Ok, None),
                        Err(error) => (Outcome::Error, Some(ReportedError::new(error))),
                    };
                    let timing = this.stopwatch.stop(outcome);
                    let callback = this.stopwatch.config.callback.call(Report {
                        transactions: Entries::One(timing),
                        error,
                    });
                    this.state.set(State::Reporting {
                        callback,
                        output: Some(output),
                    });
                }
                StateProj::Reporting { callback, output } => {
                    ready!(callback.poll(cx));
                    let output = output.take();
                    this.state.set(State::Done);
                    if let Some(output) = output {
                        return Poll::Ready(output);
                    }
                }
                StateProj::Done => panic!("ResponseFuture polled after completion"),
            }
        }
    }
}

impl<F: Future, C: Callback> fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Running { .. } => "running",
            State::Reporting { .. } => "reporting",
            State::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("transaction", &&*self.stopwatch.config.name)
            .field("state", &state)
            .finish()
    }
}

/// The clock of one call; records `cancelled` on drop if it was not stopped.
struct Stopwatch<C> {
    config: Arc<Config<C>>,
    start: Instant,
    stopped: bool,
}

impl<C> Stopwatch<C> {
    fn stop(&mut self, outcome: Outcome) -> Timing {
        self.stopped = true;
        let elapsed = self.start.elapsed();
        record(self.config.keys.get(outcome), elapsed);
        Timing {
            name: self.config.name.clone(),
            elapsed,
            outcome,
        }
    }
}

impl<C> Drop for Stopwatch<C> {
    fn drop(&mut self) {
        if !self.stopped {
            self.stop(Outcome::Cancelled);
        }
    }
}
