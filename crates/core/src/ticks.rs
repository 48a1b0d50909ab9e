//! A scheduled source: a tick now, then one every interval.
//!
//! [`Ticks`] is what [`App::run_every`](crate::App::run_every) runs on. At most
//! `max_concurrency` ticks (default 1) are unfinished at once; a tick that comes due while the
//! limit is reached is skipped, not queued, so a slow task never builds a backlog. A tick is
//! finished when it is settled, which the [`Ack`](crate::ack::Ack) layer does after the task
//! returns.
//!
//! ```
//! use std::time::Duration;
//! use asyncworker_core::{Action, Message, Shutdown, Source, SourceContext, ticks::Ticks};
//! use futures::StreamExt;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), asyncworker_core::Error> {
//! let shutdown = Shutdown::new();
//! let cx = SourceContext::new("cleanup", shutdown.clone());
//! let mut ticks = Ticks::every(Duration::from_secs(60))?.into_stream(cx);
//! for _ in 0..3 {
//!     let tick = ticks.next().await.unwrap().unwrap();
//!     println!("tick {}", tick.number());
//!     tick.settlement().settle(Action::Ack).unwrap(); // finished: the next one may run
//! }
//! shutdown.trigger();
//! assert!(ticks.next().await.is_none()); // the schedule ends with the shutdown
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::{Action, Error, Message, SettleError, Settlement, Source, SourceContext};

/// A schedule: a tick at start, then one every `interval`.
#[derive(Debug, Clone)]
pub struct Ticks {
    interval: Duration,
    max_concurrency: usize,
}

impl Ticks {
    /// Tick now and then every `interval`, one tick at a time.
    ///
    /// # Errors
    ///
    /// When `interval` is zero.
    pub fn every(interval: Duration) -> Result<Self, Error> {
        if interval.is_zero() {
            return Err(Error::config(
                "a schedule's interval must be more than zero",
            ));
        }
        Ok(Ticks {
            interval,
            max_concurrency: 1,
        })
    }

    /// Allow `n` unfinished ticks at once (default 1).
    ///
    /// # Errors
    ///
    /// When `n` is 0.
    pub fn max_concurrency(mut self, n: usize) -> Result<Self, Error> {
        if n == 0 {
            return Err(Error::config(
                "a schedule's max concurrency must be at least 1",
            ));
        }
        self.max_concurrency = n;
        Ok(self)
    }

    /// The interval.
    pub fn interval(&self) -> Duration {
        self.interval
    }
}

impl Source for Ticks {
    type Message = Tick;
    type Error = std::convert::Infallible;
    type Stream = TickStream;

    fn max_in_flight(&self) -> Option<usize> {
        // One more than the concurrency, so the stream is polled (and can skip) while the
        // limit is reached.
        Some(self.max_concurrency + 1)
    }

    fn into_stream(self, cx: SourceContext) -> TickStream {
        let mut interval = tokio::time::interval(self.interval);
        interval.set_missed_tick_behavior(MissedTickBehavior::Skip);
        TickStream {
            interval,
            max_concurrency: self.max_concurrency,
            running: Arc::new(AtomicUsize::new(0)),
            shutdown: Box::pin(cx.shutdown().triggered()),
            number: 0,
            route: cx.route().into(),
        }
    }
}

/// The stream of a [`Ticks`] source. It ends when shutdown begins.
pub struct TickStream {
    interval: Interval,
    max_concurrency: usize,
    running: Arc<AtomicUsize>,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    number: u64,
    route: Arc<str>,
}

impl fmt::Debug for TickStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TickStream")
            .field("period", &self.interval.period())
            .field("max_concurrency", &self.max_concurrency)
            .field("running", &self.running.load(Ordering::Relaxed))
            .field("ticks", &self.number)
            .finish()
    }
}

impl Stream for TickStream {
    type Item = Result<Tick, std::convert::Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.shutdown.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        loop {
            let at = match this.interval.poll_tick(cx) {
                Poll::Ready(at) => at,
                Poll::Pending => return Poll::Pending,
            };
            this.number += 1;
            if this.running.load(Ordering::Acquire) >= this.max_concurrency {
                tracing::debug!(
                    route = &*this.route,
                    tick = this.number,
                    "task still running; tick skipped"
                );
                continue;
            }
            this.running.fetch_add(1, Ordering::AcqRel);
            let running = this.running.clone();
            let settlement = Settlement::new(move |_: Action| -> Result<(), SettleError> {
                running.fetch_sub(1, Ordering::AcqRel);
                Ok(())
            });
            return Poll::Ready(Some(Ok(Tick {
                inner: Arc::new(TickInfo {
                    number: this.number,
                    at,
                }),
                settlement,
                payload: Bytes::new(),
            })));
        }
    }
}

use std::future::Future as _;

/// One tick of a schedule.
#[derive(Clone)]
pub struct Tick {
    inner: Arc<TickInfo>,
    settlement: Settlement,
    payload: Bytes,
}

#[derive(Debug)]
struct TickInfo {
    number: u64,
    at: Instant,
}

impl Tick {
    /// The tick's number, counting from 1 (skipped ticks count too).
    pub fn number(&self) -> u64 {
        self.inner.number
    }

    /// When the tick was due.
    pub fn scheduled_at(&self) -> Instant {
        self.inner.at
    }
}

impl fmt::Debug for Tick {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tick")
            .field("number", &self.inner.number)
            .finish()
    }
}

impl Message for Tick {
    fn payload(&self) -> &Bytes {
        &self.payload
    }

    fn settlement(&self) -> &Settlement {
        &self.settlement
    }
}
