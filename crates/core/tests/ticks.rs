//! Behaviour of scheduled tasks (`App::run_every`, `App::schedule` with [`Ticks`]) under
//! paused time: first tick at start, skip-not-queue at max concurrency, errors do not stop
//! the schedule, shutdown waits for the running task.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use asyncworker_core::App;
use asyncworker_core::ticks::Ticks;
use asyncworker_core::{BoxError, Error, Shutdown};
use support::quiet_app;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Start times (ms since `t0`) and peak concurrency of a task.
#[derive(Clone)]
struct Runs {
    t0: Instant,
    starts: Arc<Mutex<Vec<u64>>>,
    ends: Arc<Mutex<Vec<u64>>>,
    running: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

impl Runs {
    fn new() -> Self {
        Runs {
            t0: Instant::now(),
            starts: Arc::default(),
            ends: Arc::default(),
            running: Arc::default(),
            peak: Arc::default(),
        }
    }

    fn now(&self) -> u64 {
        self.t0.elapsed().as_millis() as u64
    }

    /// A task that takes `work` and then returns `result(run number)`.
    fn task(
        &self,
        work: Duration,
        result: fn(usize) -> Result<(), std::io::Error>,
    ) -> impl Fn() -> futures::future::BoxFuture<'static, Result<(), std::io::Error>>
    + Clone
    + Send
    + Sync
    + 'static {
        let runs = self.clone();
        move || {
            let runs = runs.clone();
            Box::pin(async move {
                let n = {
                    let mut starts = runs.starts.lock().unwrap();
                    starts.push(runs.now());
                    starts.len()
                };
                let now = runs.running.fetch_add(1, Ordering::SeqCst) + 1;
                runs.peak.fetch_max(now, Ordering::SeqCst);
                sleep(work).await;
                runs.running.fetch_sub(1, Ordering::SeqCst);
                runs.ends.lock().unwrap().push(runs.now());
                result(n)
            })
        }
    }

    fn starts(&self) -> Vec<u64> {
        self.starts.lock().unwrap().clone()
    }

    fn ends(&self) -> Vec<u64> {
        self.ends.lock().unwrap().clone()
    }

    fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
}

fn ok(_: usize) -> Result<(), std::io::Error> {
    Ok(())
}

/// Runs `app` until `at` (ms since start), then shuts it down and waits for `run`.
async fn run_until(app: App, at: u64) -> (JoinHandle<Result<(), Error>>, Shutdown) {
    let handle = app.shutdown_handle();
    let run = tokio::spawn(app.run());
    sleep(ms(at)).await;
    handle.trigger();
    (run, handle)
}

#[tokio::test(start_paused = true)]
async fn the_first_tick_comes_at_start_then_one_every_interval() {
    let runs = Runs::new();
    let mut app = quiet_app();
    app.run_every(ms(1000), runs.task(ms(100), ok));
    let (run, _) = run_until(app, 3500).await;
    run.await.expect("no panic").expect("app runs");
    assert_eq!(runs.starts(), [0, 1000, 2000, 3000]);
}

#[tokio::test(start_paused = true)]
async fn a_tick_due_while_the_task_runs_is_skipped_not_queued() {
    let runs = Runs::new();
    let mut app = quiet_app();
    // Interval 1 s, task 1.5 s, one at a time: the ticks at 1 s and 3 s come while a run is
    // in progress and are dropped; no run starts late at 1.5 s or 3 s to catch up.
    app.run_every(ms(1000), runs.task(ms(1500), ok));
    let (run, _) = run_until(app, 5000).await;
    run.await.expect("no panic").expect("app runs");
    assert_eq!(runs.starts(), [0, 2000, 4000]);
    assert_eq!(runs.peak(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_slow_task_never_builds_a_backlog() {
    let runs = Runs::new();
    let mut app = quiet_app();
    // Interval 1 s, task 3.5 s: five ticks are missed per run; after the run only the next
    // due tick starts the task again.
    app.run_every(ms(1000), runs.task(ms(3500), ok));
    let (run, _) = run_until(app, 8500).await;
    run.await.expect("no panic").expect("app runs");
    assert_eq!(runs.starts(), [0, 4000, 8000]);
}

#[tokio::test(start_paused = true)]
async fn max_concurrency_two_lets_runs_overlap_up_to_two() {
    let runs = Runs::new();
    let mut app = quiet_app();
    let ticks = Ticks::every(ms(1000))
        .expect("valid interval")
        .max_concurrency(2)
        .expect("valid concurrency");
    // Task 2.5 s: runs at 0 and 1 overlap; at 2 s both still run, so that tick is skipped;
    // at 3 s the first has ended (2.5 s), so a run starts; at 4 s the second ended at 3.5 s.
    app.schedule("report", ticks, runs.task(ms(2500), ok));
    let (run, _) = run_until(app, 4500).await;
    run.await.expect("no panic").expect("app runs");
    assert_eq!(runs.starts(), [0, 1000, 3000, 4000]);
    assert_eq!(runs.peak(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_task_error_does_not_stop_the_schedule() {
    let runs = Runs::new();
    let mut app = quiet_app();
    app.run_every(
        ms(1000),
        runs.task(ms(10), |n| {
            if n % 2 == 1 {
                Err(std::io::Error::other("task failed"))
            } else {
                Ok(())
            }
        }),
    );
    let (run, _) = run_until(app, 4500).await;
    run.await
        .expect("no panic")
        .expect("task errors do not fail run");
    assert_eq!(runs.starts(), [0, 1000, 2000, 3000, 4000]);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_task_does_not_stop_the_schedule() {
    let calls = Arc::new(AtomicUsize::new(0));
    let mut app = quiet_app();
    app.run_every(ms(1000), {
        let calls = calls.clone();
        move || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                assert!(n != 0, "first run panics");
                Ok::<(), BoxError>(())
            }
        }
    });
    let (run, _) = run_until(app, 2500).await;
    run.await.expect("no panic").expect("app runs");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_the_running_task() {
    let runs = Runs::new();
    let mut app = quiet_app();
    app.run_every(ms(10_000), runs.task(ms(5000), ok));
    let (run, handle) = run_until(app, 1000).await;
    assert!(handle.is_triggered());
    run.await.expect("no panic").expect("app runs");
    assert_eq!(runs.starts(), [0]);
    assert_eq!(runs.ends(), [5000], "the task ran to completion");
    assert_eq!(runs.now(), 5000, "run returned when the task finished");
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_a_task_past_the_grace_period() {
    let runs = Runs::new();
    let mut app = quiet_app();
    app.grace_period(ms(2000));
    app.run_every(ms(10_000), runs.task(ms(60_000), ok));
    let (run, _) = run_until(app, 1000).await;
    run.await.expect("no panic").expect("app runs");
    assert_eq!(runs.starts(), [0]);
    assert_eq!(runs.ends(), Vec::<u64>::new(), "the task was dropped");
    assert_eq!(
        runs.now(),
        3000,
        "run returned when the grace period ran out"
    );
}

#[test]
fn a_zero_interval_or_concurrency_is_a_configuration_error() {
    assert!(matches!(
        Ticks::every(Duration::ZERO),
        Err(Error::Config(_))
    ));
    let ticks = Ticks::every(ms(1000)).expect("valid interval");
    assert_eq!(ticks.interval(), ms(1000));
    assert!(matches!(ticks.max_concurrency(0), Err(Error::Config(_))));
}
