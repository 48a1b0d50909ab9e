//! Behaviour of the Retry layer: attempts, backoff under paused time, the predicate, shutdown.

use std::fmt;
use std::future::{Ready, ready};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

mod support;

use asyncworker_core::Jitter;
use asyncworker_core::retry::Retry;
use asyncworker_core::retry::{RetryConfig, RetryLayer, future::ResponseFuture};
use asyncworker_core::{Error, Shutdown};
use support::{assert_send_sync, assert_send_value};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt, service_fn};

/// The error of attempt number `attempt` (from 1).
#[derive(Debug, Clone, PartialEq)]
struct Failed {
    attempt: usize,
    transient: bool,
}

impl fmt::Display for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "attempt {} failed", self.attempt)
    }
}

impl std::error::Error for Failed {}

/// The error of attempt `attempt`.
fn failed(attempt: usize, transient: bool) -> Failed {
    Failed { attempt, transient }
}

/// When an attempt started, and with which batch.
type Call = (Instant, Vec<u32>);

/// What a test handler saw, attempt by attempt.
#[derive(Clone, Default)]
struct Log {
    calls: Arc<Mutex<Vec<Call>>>,
}

impl fmt::Debug for Log {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Log").finish_non_exhaustive()
    }
}

impl Log {
    fn record(&self, batch: Vec<u32>) -> usize {
        let mut calls = self.calls.lock().unwrap();
        calls.push((Instant::now(), batch));
        calls.len()
    }

    fn attempts(&self) -> usize {
        self.calls.lock().unwrap().len()
    }

    fn batches(&self) -> Vec<Vec<u32>> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .map(|(_, b)| b.clone())
            .collect()
    }

    /// The time between consecutive attempts.
    fn gaps(&self) -> Vec<Duration> {
        let calls = self.calls.lock().unwrap();
        calls.windows(2).map(|w| w[1].0 - w[0].0).collect()
    }
}

/// A handler that fails its first `failures` attempts (transient errors), then succeeds.
fn flaky(
    failures: usize,
    log: &Log,
) -> impl Service<Vec<u32>, Response = usize, Error = Failed, Future: Send> + Clone + Send + use<> {
    let log = log.clone();
    service_fn(move |batch: Vec<u32>| {
        let attempt = log.record(batch);
        async move {
            if attempt <= failures {
                Err(Failed {
                    attempt,
                    transient: true,
                })
            } else {
                Ok(attempt)
            }
        }
    })
}

/// Runs `service` once on `[1]`, expecting it to give up. Returns the attempt of the error it
/// gave up with, the attempts the handler saw, and how long it took.
async fn give_up<S, T>(service: S, log: &Log) -> (usize, usize, Duration)
where
    S: Service<Vec<u32>, Response = T, Error = Failed>,
    T: fmt::Debug,
{
    let start = Instant::now();
    let error = service.oneshot(vec![1]).await.unwrap_err();
    (error.attempt, log.attempts(), start.elapsed())
}

/// Runs `service` on `[1]` in a task, lets `after` pass, checks `before_shutdown` and that the
/// task still runs, triggers `shutdown`, and returns the error the task gives up with.
async fn shut_down_after<S>(
    service: S,
    shutdown: &Shutdown,
    after: Duration,
    before_shutdown: impl FnOnce(),
) -> Failed
where
    S: Service<Vec<u32>, Error = Failed> + Send + 'static,
    S::Response: fmt::Debug + Send + 'static,
    S::Future: Send + 'static,
{
    let task = tokio::spawn(service.oneshot(vec![1]));
    tokio::time::sleep(after).await;
    before_shutdown();
    assert!(!task.is_finished());
    shutdown.trigger();

    // Bounded, so a Retry that ignores shutdown fails the test instead of hanging it.
    tokio::time::timeout(Duration::from_secs(3600), task)
        .await
        .expect("retry kept going after shutdown")
        .unwrap()
        .unwrap_err()
}

fn no_jitter(max_attempts: u32) -> RetryConfig {
    RetryConfig::builder()
        .max_attempts(max_attempts)
        .initial_delay(Duration::from_millis(100))
        .multiplier(2.0)
        .max_delay(Duration::from_secs(10))
        .jitter(Jitter::None)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn retries_until_success_within_max_attempts() {
    let log = Log::default();
    let service = Retry::new(flaky(2, &log), no_jitter(3));

    let response = service.oneshot(vec![1, 2, 3]).await;

    assert_eq!(response, Ok(3));
    assert_eq!(log.attempts(), 3);
    // Every attempt sees the whole batch.
    assert_eq!(log.batches(), vec![vec![1, 2, 3]; 3]);
}

#[tokio::test(start_paused = true)]
async fn success_on_first_attempt_does_not_wait() {
    let log = Log::default();
    let start = Instant::now();

    let response = Retry::new(flaky(0, &log), no_jitter(3))
        .oneshot(vec![7])
        .await;

    assert_eq!(response, Ok(1));
    assert_eq!(log.attempts(), 1);
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn gives_up_after_max_attempts_and_returns_last_error() {
    let log = Log::default();
    let service = Retry::new(flaky(usize::MAX, &log), no_jitter(4));

    let error = service.oneshot(vec![1]).await.unwrap_err();

    assert_eq!(error, failed(4, true));
    assert_eq!(log.attempts(), 4);
}

#[tokio::test(start_paused = true)]
async fn single_attempt_never_retries() {
    let log = Log::default();
    let service = Retry::new(flaky(usize::MAX, &log), no_jitter(1));

    assert_eq!(give_up(service, &log).await, (1, 1, Duration::ZERO));
}

#[tokio::test(start_paused = true)]
async fn backoff_delays_follow_the_exponential_schedule_and_the_cap() {
    let log = Log::default();
    let config = RetryConfig::builder()
        .max_attempts(7)
        .initial_delay(Duration::from_millis(100))
        .multiplier(3.0)
        .max_delay(Duration::from_secs(2))
        .jitter(Jitter::None)
        .build()
        .unwrap();
    let start = Instant::now();

    let error = Retry::new(flaky(usize::MAX, &log), config)
        .oneshot(vec![1])
        .await
        .unwrap_err();

    assert_eq!(error.attempt, 7);
    let ms = |ms| Duration::from_millis(ms);
    // 100 ms × 3^n, capped at 2 s.
    assert_eq!(
        log.gaps(),
        [ms(100), ms(300), ms(900), ms(2000), ms(2000), ms(2000)]
    );
    // No sleep after the last attempt.
    assert_eq!(start.elapsed(), ms(7300));
}

#[tokio::test(start_paused = true)]
async fn jittered_delays_stay_between_the_jitter_floor_and_the_schedule() {
    for _ in 0..20 {
        let log = Log::default();
        let config = RetryConfig::builder()
            .max_attempts(5)
            .initial_delay(Duration::from_millis(400))
            .multiplier(2.0)
            .max_delay(Duration::from_millis(1600))
            .jitter(Jitter::Proportional(0.5))
            .build()
            .unwrap();

        Retry::new(flaky(usize::MAX, &log), config)
            .oneshot(vec![1])
            .await
            .unwrap_err();

        let scheduled = [400, 800, 1600, 1600].map(Duration::from_millis);
        let gaps = log.gaps();
        assert_eq!(gaps.len(), scheduled.len());
        for (gap, max) in gaps.iter().zip(scheduled) {
            assert!(
                *gap >= max / 2 && *gap <= max,
                "gap {gap:?} outside [{:?}, {max:?}]",
                max / 2
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn full_jitter_never_exceeds_the_schedule() {
    for _ in 0..20 {
        let log = Log::default();
        let config = RetryConfig::builder()
            .max_attempts(4)
            .initial_delay(Duration::from_millis(100))
            .multiplier(2.0)
            .max_delay(Duration::from_millis(300))
            .jitter(Jitter::Full)
            .build()
            .unwrap();

        Retry::new(flaky(usize::MAX, &log), config)
            .oneshot(vec![1])
            .await
            .unwrap_err();

        let scheduled = [100, 200, 300].map(Duration::from_millis);
        for (gap, max) in log.gaps().iter().zip(scheduled) {
            assert!(*gap <= max, "gap {gap:?} above {max:?}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn predicate_false_does_not_retry() {
    let log = Log::default();
    let service = RetryLayer::new(no_jitter(5))
        .retry_if(|_: &Failed| false)
        .layer(flaky(usize::MAX, &log));

    assert_eq!(give_up(service, &log).await, (1, 1, Duration::ZERO));
}

#[tokio::test(start_paused = true)]
async fn predicate_chooses_which_errors_retry() {
    let log = Log::default();
    let handler_log = log.clone();
    // Attempts 1 and 2 fail transiently, attempt 3 permanently.
    let handler = service_fn(move |batch: Vec<u32>| {
        let attempt = handler_log.record(batch);
        ready(Err::<(), _>(Failed {
            attempt,
            transient: attempt < 3,
        }))
    });
    let service = RetryLayer::new(no_jitter(10))
        .retry_if(|err: &Failed| err.transient)
        .layer(handler);

    let error = service.oneshot(vec![1]).await.unwrap_err();

    assert_eq!(error, failed(3, false));
    assert_eq!(log.attempts(), 3);
}

#[tokio::test(start_paused = true)]
async fn shutdown_during_backoff_stops_retrying() {
    let log = Log::default();
    let shutdown = Shutdown::new();
    let config = RetryConfig::builder()
        .max_attempts(5)
        .initial_delay(Duration::from_secs(10))
        .max_delay(Duration::from_secs(60))
        .jitter(Jitter::None)
        .build()
        .unwrap();
    let service = RetryLayer::new(config)
        .with_shutdown(shutdown.clone())
        .layer(flaky(usize::MAX, &log));
    let start = Instant::now();

    // The first attempt fails and the 10 s backoff starts; shut down 1 s into it.
    let error = shut_down_after(service, &shutdown, Duration::from_secs(1), || {
        assert_eq!(log.attempts(), 1)
    })
    .await;
    assert_eq!(error.attempt, 1);
    assert_eq!(log.attempts(), 1);
    assert_eq!(start.elapsed(), Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn shutdown_before_first_retry_returns_error() {
    let log = Log::default();
    let shutdown = Shutdown::new();
    shutdown.trigger();
    let service = RetryLayer::new(no_jitter(5))
        .with_shutdown(shutdown)
        .layer(flaky(usize::MAX, &log));

    // The first attempt still runs: the batch gets its one try.
    assert_eq!(give_up(service, &log).await, (1, 1, Duration::ZERO));
}

#[tokio::test(start_paused = true)]
async fn shutdown_during_an_attempt_lets_it_finish_then_stops() {
    let log = Log::default();
    let shutdown = Shutdown::new();
    let handler_log = log.clone();
    let handler_shutdown = shutdown.clone();
    // The second attempt is running when shutdown begins; it completes, and is not retried.
    let handler = service_fn(move |batch: Vec<u32>| {
        let attempt = handler_log.record(batch);
        let shutdown = handler_shutdown.clone();
        async move {
            if attempt == 2 {
                shutdown.trigger();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err::<(), _>(Failed {
                attempt,
                transient: true,
            })
        }
    });
    let service = RetryLayer::new(no_jitter(5))
        .with_shutdown(shutdown)
        .layer(handler);

    assert_eq!(
        give_up(service, &log).await,
        (2, 2, Duration::from_millis(100) + Duration::from_secs(1))
    );
}

#[tokio::test(start_paused = true)]
async fn without_shutdown_a_triggered_signal_elsewhere_changes_nothing() {
    let log = Log::default();
    Shutdown::new().trigger();

    let response = Retry::new(flaky(2, &log), no_jitter(3))
        .oneshot(vec![1])
        .await;

    assert_eq!(response, Ok(3));
}

/// A service that checks the `poll_ready` / `call` contract: `call` only after `Ready(Ok)`,
/// and a clone is not ready until polled.
#[derive(Debug)]
struct Strict {
    ready: bool,
    log: Log,
    /// Times `poll_ready` reports `Pending` first, for every readiness.
    pending_polls: usize,
    remaining: usize,
}

impl Clone for Strict {
    fn clone(&self) -> Self {
        Strict {
            ready: false,
            log: self.log.clone(),
            pending_polls: self.pending_polls,
            remaining: self.pending_polls,
        }
    }
}

impl Service<Vec<u32>> for Strict {
    type Response = ();
    type Error = Failed;
    type Future = Ready<Result<(), Failed>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Failed>> {
        if self.remaining > 0 {
            self.remaining -= 1;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.ready = true;
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, batch: Vec<u32>) -> Self::Future {
        assert!(self.ready, "called without poll_ready returning Ready(Ok)");
        self.ready = false;
        self.remaining = self.pending_polls;
        let attempt = self.log.record(batch);
        ready(Err(Failed {
            attempt,
            transient: true,
        }))
    }
}

#[tokio::test(start_paused = true)]
async fn every_attempt_calls_a_ready_service() {
    let log = Log::default();
    let strict = Strict {
        ready: false,
        log: log.clone(),
        pending_polls: 2,
        remaining: 2,
    };

    let error = Retry::new(strict, no_jitter(4))
        .oneshot(vec![1])
        .await
        .unwrap_err();

    assert_eq!(error.attempt, 4);
    assert_eq!(log.attempts(), 4);
}

#[tokio::test(start_paused = true)]
async fn shutdown_while_waiting_for_readiness_stops_retrying() {
    let log = Log::default();
    let shutdown = Shutdown::new();
    let handler_log = log.clone();
    let calls = Arc::new(AtomicUsize::new(0));
    let handler_calls = calls.clone();
    // The inner service fails once, then never becomes ready again (e.g. a saturated
    // concurrency limit); shutdown must still end the wait.
    #[derive(Clone)]
    struct StuckAfterFirst<F>(F, Arc<AtomicUsize>);
    impl<F: FnMut(Vec<u32>) -> Ready<Result<(), Failed>>> Service<Vec<u32>> for StuckAfterFirst<F> {
        type Response = ();
        type Error = Failed;
        type Future = Ready<Result<(), Failed>>;
        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Failed>> {
            if self.1.load(Ordering::SeqCst) == 0 {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        }
        fn call(&mut self, batch: Vec<u32>) -> Self::Future {
            self.1.fetch_add(1, Ordering::SeqCst);
            (self.0)(batch)
        }
    }
    let handler = StuckAfterFirst(
        move |batch| {
            let attempt = handler_log.record(batch);
            ready(Err(Failed {
                attempt,
                transient: true,
            }))
        },
        handler_calls,
    );
    let service = RetryLayer::new(no_jitter(3))
        .with_shutdown(shutdown.clone())
        .layer(handler);

    // Past the 100 ms backoff: the future now waits for readiness that never comes.
    let error = shut_down_after(service, &shutdown, Duration::from_secs(5), || {}).await;
    assert_eq!(error.attempt, 1);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

fn config_error(builder: asyncworker_core::retry::RetryConfigBuilder) -> String {
    match builder.build() {
        Err(Error::Config(message)) => message,
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[test]
fn invalid_parameters_are_rejected_with_clear_errors() {
    let b = RetryConfig::builder;

    let message = config_error(b().max_attempts(0));
    assert!(
        message.contains("max_attempts must be at least 1"),
        "{message}"
    );

    let message = config_error(b().multiplier(0.5));
    assert!(
        message.contains("multiplier must be at least 1.0"),
        "{message}"
    );
    assert!(message.contains("got 0.5"), "{message}");

    let message = config_error(b().multiplier(f64::NAN));
    assert!(
        message.contains("multiplier must be a finite number, got NaN"),
        "{message}"
    );

    let message = config_error(b().multiplier(f64::INFINITY));
    assert!(message.contains("finite"), "{message}");

    let message = config_error(
        b().initial_delay(Duration::from_secs(20))
            .max_delay(Duration::from_secs(10)),
    );
    assert!(
        message.contains("initial_delay (20s) must not exceed max_delay (10s)"),
        "{message}"
    );

    let message = config_error(b().jitter(Jitter::Proportional(1.5)));
    assert!(
        message.contains("jitter ratio must be between 0.0 and 1.0, got 1.5"),
        "{message}"
    );

    let message = config_error(b().jitter(Jitter::Proportional(f64::NAN)));
    assert!(message.contains("jitter ratio"), "{message}");

    let message = config_error(b().jitter(Jitter::Proportional(-0.1)));
    assert!(message.contains("jitter ratio"), "{message}");

    // The error's Display names the kind of problem.
    let error = b().max_attempts(0).build().unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("invalid configuration: retry")
    );
}

#[test]
fn edge_values_are_accepted() {
    let config = RetryConfig::builder()
        .max_attempts(1)
        .initial_delay(Duration::ZERO)
        .multiplier(1.0)
        .max_delay(Duration::ZERO)
        .jitter(Jitter::Proportional(1.0))
        .build()
        .unwrap();
    assert_eq!(config.max_attempts(), 1);
    assert_eq!(config.backoff().scheduled_delay(3), Duration::ZERO);
}

#[test]
fn layer_service_and_future_are_send_sync_and_debug() {
    fn assert_debug<T: fmt::Debug>() {}

    type Handler = Strict;
    type Predicate = fn(&Failed) -> bool;

    assert_send_sync::<RetryLayer>();
    assert_send_sync::<RetryLayer<Predicate>>();
    assert_send_sync::<Retry<Handler>>();
    assert_send_sync::<Retry<Handler, Predicate>>();
    assert_send_sync::<ResponseFuture<Handler, Vec<u32>, Predicate>>();
    assert_send_sync::<ResponseFuture<Handler, Vec<u32>, asyncworker_core::retry::AlwaysRetry>>();

    assert_debug::<RetryLayer<Predicate>>();
    assert_debug::<Retry<Handler, Predicate>>();
    assert_debug::<ResponseFuture<Handler, Vec<u32>, Predicate>>();
}

#[tokio::test(start_paused = true)]
async fn future_of_a_closure_predicate_stack_is_send() {
    let log = Log::default();
    let mut service = RetryLayer::new(no_jitter(2))
        .retry_if(|err: &Failed| err.transient)
        .layer(flaky(1, &log));

    let future = service.ready().await.unwrap().call(vec![1]);
    assert_send_value(&future);
    assert_eq!(future.await, Ok(2));
}
