//! Behaviour of [`App`] over the in-memory source: backpressure through the route options,
//! hooks, shutdown hooks after the grace period, configuration errors, route metrics and
//! health. (How a route drains, flushes and isolates panics is the runtime's: runtime.rs.) Timers run on paused
//! time.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use asyncworker_core::memory::{MemoryMessage, MemoryQueue, MessageId};
use asyncworker_core::{Action, BoxError, Error, Message, Settings};
use asyncworker_core::{App, RouteOptions};
use futures::future::BoxFuture;
use support::{LocalMetrics, Totals, error_chain, quiet_app};
use tokio::sync::{Notify, Semaphore};
use tokio::time::{Instant, sleep};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Settlements recorded so far, redeliveries included.
fn settled(queue: &MemoryQueue) -> usize {
    (0..queue.len() as u64)
        .map(|i| queue.settlement_history(MessageId(i)).len())
        .sum()
}

/// The last settlement of every message, in push order.
fn settlements(queue: &MemoryQueue) -> Vec<Option<Action>> {
    queue.settlements().into_iter().map(|(_, a)| a).collect()
}

fn assert_all_acked(queue: &MemoryQueue) {
    let settlements = settlements(queue);
    assert!(
        settlements.iter().all(|a| *a == Some(Action::Ack)),
        "{settlements:?}"
    );
}

/// A handler that finishes a batch once `release` is notified.
fn released_by(
    release: &Arc<Notify>,
) -> impl Fn(Vec<MemoryMessage>) -> BoxFuture<'static, Result<(), BoxError>>
+ Clone
+ Send
+ Sync
+ 'static {
    let release = release.clone();
    move |_batch| {
        let release = release.clone();
        Box::pin(async move {
            release.notified().await;
            Ok(())
        })
    }
}

/// A closed queue holding `payloads`.
fn closed_queue(payloads: &[&str]) -> MemoryQueue {
    let queue = MemoryQueue::new();
    for p in payloads {
        queue.push_bytes(p.to_string());
    }
    queue.close();
    queue
}

fn text(message: &MemoryMessage) -> &str {
    std::str::from_utf8(message.payload()).unwrap_or("")
}

/// Shared record of what handlers saw.
#[derive(Clone, Default)]
struct Log<T>(Arc<Mutex<Vec<T>>>);

impl<T: Clone> Log<T> {
    fn push(&self, item: T) {
        self.0.lock().unwrap().push(item);
    }

    fn get(&self) -> Vec<T> {
        self.0.lock().unwrap().clone()
    }
}

// ---------------------------------------------------------------------------------------
// Backpressure

#[tokio::test(start_paused = true)]
async fn a_route_never_pulls_more_than_max_in_flight_ahead_of_settlement() {
    for (bulk, limit) in [(1, 3), (1, 4), (2, 4), (4, 4)] {
        let queue = MemoryQueue::new();
        for i in 0..24 {
            queue.push_bytes(format!("{i}"));
        }
        queue.close();
        let gate = Arc::new(Semaphore::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let mut app = quiet_app();
        app.route("backpressure", queue.source(), {
            let (gate, peak, queue) = (gate.clone(), peak.clone(), queue.clone());
            move |_batch: Vec<MemoryMessage>| {
                let (gate, peak, queue) = (gate.clone(), peak.clone(), queue.clone());
                async move {
                    peak.fetch_max(queue.delivered() - settled(&queue), Ordering::SeqCst);
                    gate.acquire().await.expect("open").forget();
                    Ok::<(), BoxError>(())
                }
            }
        })
        .bulk_size(bulk)
        .max_in_flight(limit);
        let run = tokio::spawn(app.run());

        // Every handler is blocked: intake stops at the limit, however long we wait.
        sleep(secs(3600)).await;
        assert_eq!(queue.delivered(), limit, "bulk {bulk}");
        assert_eq!(queue.outstanding(), limit, "bulk {bulk}");

        // Release one batch at a time; each settlement lets only that many more in.
        for _ in 0..24 / bulk {
            gate.add_permits(1);
            sleep(secs(1)).await;
            let ahead = queue.delivered() - settled(&queue);
            assert!(ahead <= limit, "bulk {bulk}: {ahead} ahead of settlement");
        }
        run.await.expect("no panic").expect("app runs");
        assert_eq!(peak.load(Ordering::SeqCst), limit, "bulk {bulk}");
        assert_eq!(queue.delivered(), 24);
        assert_all_acked(&queue);
    }
}

// ---------------------------------------------------------------------------------------
// Hooks

#[tokio::test(start_paused = true)]
async fn startup_hooks_all_finish_before_the_first_delivery() {
    let queue = closed_queue(&["a", "b", "c"]);
    let started = Arc::new(AtomicBool::new(false));
    let hooks = Log::<(&str, usize)>::default();
    let seen = Log::<(bool, Duration)>::default();
    let t0 = Instant::now();

    let mut app = quiet_app();
    app.on_startup({
        let (hooks, queue) = (hooks.clone(), queue.clone());
        move || async move {
            sleep(secs(10)).await;
            hooks.push(("slow", queue.delivered()));
            Ok::<(), BoxError>(())
        }
    });
    app.on_startup({
        let (hooks, queue, started) = (hooks.clone(), queue.clone(), started.clone());
        move || async move {
            sleep(secs(5)).await;
            hooks.push(("second", queue.delivered()));
            started.store(true, Ordering::SeqCst);
            Ok::<(), BoxError>(())
        }
    });
    app.route("r", queue.source(), {
        let (seen, started) = (seen.clone(), started.clone());
        move |_batch: Vec<MemoryMessage>| {
            let (seen, started) = (seen.clone(), started.clone());
            async move {
                seen.push((started.load(Ordering::SeqCst), t0.elapsed()));
                Ok::<(), BoxError>(())
            }
        }
    });
    app.run().await.expect("app runs");

    assert_eq!(
        hooks.get(),
        [("slow", 0), ("second", 0)],
        "in order, nothing delivered"
    );
    let seen = seen.get();
    assert_eq!(seen.len(), 3);
    for (flag, at) in seen {
        assert!(flag, "a delivery before the startup hooks finished");
        assert!(at >= secs(15), "delivered at {at:?}");
    }
    assert_all_acked(&queue);
}

#[tokio::test(start_paused = true)]
async fn a_failing_startup_hook_aborts_run_and_nothing_is_delivered() {
    let queue = closed_queue(&["a"]);
    let later_hook_ran = Arc::new(AtomicBool::new(false));
    let handled = Arc::new(AtomicUsize::new(0));

    let mut app = quiet_app();
    app.on_startup(|| async { Err::<(), _>(std::io::Error::other("database unreachable")) });
    app.on_startup({
        let ran = later_hook_ran.clone();
        move || async move {
            ran.store(true, Ordering::SeqCst);
            Ok::<(), BoxError>(())
        }
    });
    app.route("r", queue.source(), {
        let handled = handled.clone();
        move |_batch: Vec<MemoryMessage>| {
            handled.fetch_add(1, Ordering::SeqCst);
            async { Ok::<(), BoxError>(()) }
        }
    });

    let err = app.run().await.expect_err("startup fails");
    assert!(matches!(err, Error::Startup(_)), "{err:?}");
    assert!(error_chain(&err).contains("database unreachable"), "{err}");
    assert!(!later_hook_ran.load(Ordering::SeqCst));
    assert_eq!(handled.load(Ordering::SeqCst), 0);
    assert_eq!(queue.delivered(), 0);
}

#[tokio::test(start_paused = true)]
async fn shutdown_hooks_run_once_in_order_after_every_route_has_stopped() {
    let queue = closed_queue(&["a", "b"]);
    let ran = Log::<(u32, usize)>::default();

    let mut app = quiet_app();
    app.route("r", queue.source(), |_batch| async {
        sleep(secs(2)).await;
        Ok::<(), BoxError>(())
    });
    for i in 1..=3 {
        let (ran, queue) = (ran.clone(), queue.clone());
        app.on_shutdown(move || async move {
            ran.push((i, queue.outstanding()));
            if i == 2 {
                return Err(std::io::Error::other("flush failed"));
            }
            Ok(())
        });
    }
    app.run()
        .await
        .expect("a failing shutdown hook does not fail run");

    assert_eq!(
        ran.get(),
        [(1, 0), (2, 0), (3, 0)],
        "each once, in order, after settlement; an error does not stop the rest"
    );
    assert_all_acked(&queue);
}

// ---------------------------------------------------------------------------------------
// Graceful shutdown (the runtime's own behaviour is tested in runtime.rs)

#[tokio::test(start_paused = true)]
async fn shutdown_hooks_run_after_work_past_the_grace_period_is_requeued() {
    let queue = MemoryQueue::new();
    for p in ["stuck", "stuck", "fine"] {
        queue.push_bytes(p);
    }
    let t0 = Instant::now();

    // Clones kept outside the batch future (as by work the handler spawned): the requeue
    // must come from the abandoned future, not from the last clone going away.
    let kept = Arc::new(Mutex::new(Vec::new()));
    let keep = kept.clone();
    let mut app = quiet_app();
    app.grace_period(secs(2));
    app.route("r", queue.source(), move |batch: Vec<MemoryMessage>| {
        let keep = keep.clone();
        async move {
            if batch.iter().any(|m| text(m) == "stuck") {
                keep.lock().unwrap().extend(batch.iter().cloned());
                std::future::pending::<()>().await;
            }
            Ok::<(), BoxError>(())
        }
    })
    .bulk_size(2);
    let shutdown_saw = Arc::new(Mutex::new(None));
    app.on_shutdown({
        let (queue, saw) = (queue.clone(), shutdown_saw.clone());
        move || async move {
            *saw.lock().unwrap() = Some(queue.outstanding());
            Ok::<(), BoxError>(())
        }
    });
    let handle = app.shutdown_handle();
    let run = tokio::spawn(app.run());

    sleep(secs(1)).await;
    assert_eq!(queue.outstanding(), 3);
    handle.trigger();
    run.await
        .expect("no panic")
        .expect("graceful shutdown is Ok");

    assert_eq!(
        t0.elapsed(),
        secs(3),
        "stops when the 2 s grace period runs out"
    );
    assert_eq!(
        settlements(&queue),
        [
            Some(Action::Requeue),
            Some(Action::Requeue),
            Some(Action::Ack)
        ]
    );
    assert_eq!(queue.outstanding(), 0);
    assert_eq!(
        *shutdown_saw.lock().unwrap(),
        Some(0),
        "hooks run after settlement"
    );
    assert_eq!(kept.lock().unwrap().len(), 2, "the clones are still alive");
}

// ---------------------------------------------------------------------------------------
// The route builder

#[tokio::test(start_paused = true)]
async fn the_route_builder_options_shape_the_stack() {
    let queue = MemoryQueue::new();
    for p in ["a", "b", "fail"] {
        queue.push_bytes(p);
    }
    let batches = Log::<(usize, Duration)>::default();
    let t0 = Instant::now();
    let mut app = quiet_app();
    app.route("r", queue.source(), {
        let batches = batches.clone();
        move |batch: Vec<MemoryMessage>| {
            batches.push((batch.len(), t0.elapsed()));
            let failed = batch.iter().any(|m| text(m) == "fail");
            async move {
                if failed {
                    return Err(std::io::Error::other("failed"));
                }
                Ok(())
            }
        }
    })
    .bulk_size(2)
    .flush_interval(secs(5))
    .on_success(Action::Reject)
    .on_error(Action::Ack);
    let handle = app.shutdown_handle();
    let run = tokio::spawn(app.run());
    sleep(secs(10)).await;
    handle.trigger();
    run.await.expect("no panic").expect("app runs");

    assert_eq!(
        batches.get(),
        [(2, secs(0)), (1, secs(5))],
        "a full batch at once, the partial one after the flush interval"
    );
    assert_eq!(
        settlements(&queue),
        [
            Some(Action::Reject),
            Some(Action::Reject),
            Some(Action::Ack)
        ],
        "on_success and on_error as set"
    );
}

// ---------------------------------------------------------------------------------------
// Configuration errors

/// Runs `configure`d app on a closed queue and returns its error; checks no startup hook ran
/// and nothing was delivered.
async fn config_error(configure: impl FnOnce(&mut App, &MemoryQueue)) -> Error {
    let queue = closed_queue(&["a"]);
    let hook_ran = Arc::new(AtomicBool::new(false));
    let mut app = quiet_app();
    app.on_startup({
        let ran = hook_ran.clone();
        move || async move {
            ran.store(true, Ordering::SeqCst);
            Ok::<(), BoxError>(())
        }
    });
    configure(&mut app, &queue);
    let err = app.run().await.expect_err("configuration is invalid");
    assert!(!hook_ran.load(Ordering::SeqCst), "started despite {err}");
    assert_eq!(queue.delivered(), 0, "delivered despite {err}");
    err
}

async fn ok(_batch: Vec<MemoryMessage>) -> Result<(), BoxError> {
    Ok(())
}

fn route_name(err: &Error) -> &str {
    match err {
        Error::Route { route, .. } => route,
        other => panic!("expected a route error, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_bulk_size_of_zero_fails_run_naming_the_route() {
    let err = config_error(|app, queue| {
        app.route("fine", queue.source(), ok);
        app.route("orders", queue.source(), ok).bulk_size(0);
    })
    .await;
    assert_eq!(route_name(&err), "orders");
    let text = error_chain(&err);
    assert!(
        text.contains("orders") && text.contains("bulk size"),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn other_invalid_route_options_fail_run_naming_the_route() {
    for (options, words) in [
        (RouteOptions::new().max_in_flight(0), "in flight"),
        (
            RouteOptions::new().max_concurrent_batches(0),
            "concurrent batches",
        ),
    ] {
        let err = config_error(|app, queue| {
            app.route("orders", queue.source(), ok).options(options);
        })
        .await;
        assert_eq!(route_name(&err), "orders");
        assert!(error_chain(&err).contains(words), "{err}");
    }
}

#[tokio::test(start_paused = true)]
async fn duplicate_route_names_fail_run_naming_the_route() {
    let err = config_error(|app, queue| {
        app.route("orders", queue.source(), ok);
        app.route("orders", queue.source(), ok);
    })
    .await;
    assert_eq!(route_name(&err), "orders");
    assert!(error_chain(&err).contains("same name"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_zero_run_every_interval_fails_run_naming_the_schedule() {
    let err = config_error(|app, _queue| {
        app.run_every(Duration::ZERO, || async { Ok::<(), BoxError>(()) });
    })
    .await;
    assert!(route_name(&err).starts_with("run_every"), "{err}");
    assert!(error_chain(&err).contains("interval"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_failing_stack_builder_fails_run_naming_the_route() {
    let queue = closed_queue(&["a"]);
    let mut app = quiet_app();
    app.route_stack("custom", queue.source(), |cx| {
        let bulk = cx.bulk_layer::<MemoryMessage>(0)?;
        Ok(tower::ServiceBuilder::new()
            .layer(bulk)
            .layer(cx.ack_layer())
            .service(tower::service_fn(ok)))
    });
    let err = app.run().await.expect_err("the stack cannot be built");
    assert_eq!(route_name(&err), "custom");
    assert!(error_chain(&err).contains("bulk size"), "{err}");
    assert_eq!(queue.delivered(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_failing_route_stops_the_app_instead_of_running_without_it() {
    let queue = MemoryQueue::new();
    queue.push_bytes("a");
    // The queue stays open: only the failing route can end the app.
    let mut app = quiet_app();
    app.route("fine", queue.source(), ok);
    app.route_stack("custom", queue.source(), |cx| {
        let bulk = cx.bulk_layer::<MemoryMessage>(0)?;
        Ok(tower::ServiceBuilder::new()
            .layer(bulk)
            .layer(cx.ack_layer())
            .service(tower::service_fn(ok)))
    });
    let err = tokio::time::timeout(secs(3600), app.run())
        .await
        .expect("run returns instead of serving without the failed route")
        .expect_err("the stack cannot be built");
    assert_eq!(route_name(&err), "custom");
    assert_eq!(
        queue.outstanding(),
        0,
        "the other route shut down gracefully"
    );
}

#[tokio::test(start_paused = true)]
async fn a_panicking_stack_builder_fails_run_naming_the_route() {
    let queue = MemoryQueue::new();
    queue.push_bytes("a");
    // The queue stays open: only the failing route can end the app.
    let mut app = quiet_app();
    app.route("fine", queue.source(), ok);
    app.route_stack(
        "custom",
        queue.source(),
        |_cx| -> Result<tower::util::BoxService<MemoryMessage, (), BoxError>, Error> {
            panic!("cannot build the stack")
        },
    );
    let err = tokio::time::timeout(secs(3600), app.run())
        .await
        .expect("run returns instead of serving without the failed route")
        .expect_err("the route panicked");
    assert_eq!(route_name(&err), "custom");
    assert!(
        error_chain(&err).contains("cannot build the stack"),
        "{err}"
    );
    assert_eq!(queue.outstanding(), 0);
}

// ---------------------------------------------------------------------------------------
// Metrics

/// Names of the metrics with a non-zero value, labelled with `route`.
fn names_for(totals: &Totals, route: &str) -> HashMap<String, bool> {
    let has_route =
        |labels: &[(String, String)]| labels.iter().any(|(k, v)| k == "route" && v == route);
    let mut names = HashMap::new();
    for (n, l, v) in &totals.counters {
        if has_route(l) {
            *names.entry(n.clone()).or_default() |= *v > 0;
        }
    }
    for (n, l, v) in &totals.histograms {
        if has_route(l) {
            *names.entry(n.clone()).or_default() |= !v.is_empty();
        }
    }
    names
}

/// Pushes `a b c fail e` into a closed queue and runs them through route `route` with bulk
/// size 2 and a 2 s handler that fails batches holding `fail`.
async fn run_metrics_route(app: App, route: &str) -> MemoryQueue {
    let queue = closed_queue(&["a", "b", "c", "fail", "e"]);
    let mut app = app;
    app.route(
        route,
        queue.source(),
        |batch: Vec<MemoryMessage>| async move {
            sleep(secs(2)).await;
            if batch.iter().any(|m| text(m) == "fail") {
                return Err(std::io::Error::other("failed"));
            }
            Ok(())
        },
    )
    .bulk_size(2);
    app.run().await.expect("app runs");
    queue
}

#[tokio::test(start_paused = true)]
async fn route_metrics_count_settlements_batches_durations_and_in_flight() {
    let metrics = LocalMetrics::install();
    let queue = run_metrics_route(quiet_app(), "orders").await;
    assert_eq!(
        settlements(&queue),
        [
            Some(Action::Ack),
            Some(Action::Ack),
            Some(Action::Requeue),
            Some(Action::Requeue),
            Some(Action::Ack)
        ]
    );

    let settled = "asyncworker_messages_settled_total";
    let batches = "asyncworker_batches_total";
    for (name, label, value, expected) in [
        (settled, "action", "ack", 3),
        (settled, "action", "requeue", 2),
        (settled, "action", "reject", 0),
        (batches, "reason", "size", 2),
        // The last, partial batch flushes when the (closed) source ends.
        (batches, "reason", "shutdown", 1),
        (batches, "reason", "interval", 0),
    ] {
        let labels = [("route", "orders"), (label, value)];
        assert_eq!(
            metrics.counter(name, &labels),
            expected,
            "{name} {label}={value}"
        );
    }
    let duration = "asyncworker_handler_duration_seconds";
    for (outcome, expected) in [("ok", &[2.0, 2.0][..]), ("error", &[2.0]), ("panic", &[])] {
        let labels = [("route", "orders"), ("outcome", outcome)];
        assert_eq!(metrics.histogram(duration, &labels), expected, "{outcome}");
    }
    assert_eq!(
        metrics.gauge("asyncworker_messages_in_flight", &[("route", "orders")]),
        Some(0.0),
        "the in-flight gauge returns to 0"
    );
}

#[tokio::test(start_paused = true)]
async fn the_in_flight_gauge_follows_unsettled_messages() {
    let metrics = LocalMetrics::install();
    let queue = MemoryQueue::new();
    for p in ["a", "b", "c"] {
        queue.push_bytes(p);
    }
    let release = Arc::new(Notify::new());
    let mut app = quiet_app();
    app.route("r", queue.source(), released_by(&release))
        .bulk_size(2);
    let handle = app.shutdown_handle();
    let run = tokio::spawn(app.run());

    sleep(secs(1)).await;
    let gauge = || metrics.gauge("asyncworker_messages_in_flight", &[("route", "r")]);
    assert_eq!(gauge(), Some(3.0));
    release.notify_waiters();
    sleep(secs(1)).await;
    assert_eq!(gauge(), Some(1.0), "the full batch settled");
    handle.trigger();
    sleep(secs(1)).await;
    release.notify_waiters();
    run.await.expect("no panic").expect("app runs");
    assert_eq!(gauge(), Some(0.0));
    assert_eq!(queue.outstanding(), 0);
}

#[tokio::test(start_paused = true)]
async fn metric_names_take_the_prefix_from_the_settings() {
    let metrics = LocalMetrics::install();
    let settings = Settings::from_lookup(|name| match name {
        "ASYNCWORKER_METRICS_NAMESPACE" => Some("acme".to_owned()),
        "ASYNCWORKER_METRICS_APPPREFIX" => Some("billing".to_owned()),
        _ => None,
    })
    .expect("valid settings");
    run_metrics_route(
        {
            let mut app = quiet_app();
            app.with_settings(settings);
            app
        },
        "invoices",
    )
    .await;

    assert_eq!(
        metrics.counter(
            "acme_billing_messages_settled_total",
            &[("route", "invoices"), ("action", "ack")]
        ),
        3
    );
    assert_eq!(
        metrics.counter(
            "acme_billing_batches_total",
            &[("route", "invoices"), ("reason", "size")]
        ),
        2
    );
    assert_eq!(
        metrics.histogram(
            "acme_billing_handler_duration_seconds",
            &[("route", "invoices"), ("outcome", "ok")]
        ),
        [2.0, 2.0]
    );
    assert_eq!(
        metrics.gauge("acme_billing_messages_in_flight", &[("route", "invoices")]),
        Some(0.0)
    );
    let names = names_for(&metrics.read(), "invoices");
    assert!(
        names.keys().all(|n| n.starts_with("acme_billing_")),
        "every metric of the route is prefixed: {names:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Health

#[tokio::test(start_paused = true)]
async fn health_is_ready_only_while_routes_run_and_before_shutdown() {
    let queue = MemoryQueue::new();
    queue.push_bytes("a");
    let release = Arc::new(Notify::new());
    let mut app = quiet_app();
    app.route("orders", queue.source(), released_by(&release));
    let health = app.health();
    let handle = app.shutdown_handle();
    assert!(!health.is_ready(), "not ready before start");
    assert!(health.is_live());

    let run = tokio::spawn(app.run());
    sleep(secs(1)).await;
    assert!(health.is_ready(), "ready while the route runs");
    let routes = health.routes();
    assert_eq!(routes.len(), 1);
    assert_eq!((routes[0].name.as_str(), routes[0].ready), ("orders", true));

    handle.trigger();
    assert!(!health.is_ready(), "not ready once shutdown has begun");
    sleep(secs(1)).await;
    assert!(!health.is_ready(), "not ready while draining");
    assert!(health.is_live(), "live while draining");

    release.notify_waiters();
    run.await.expect("no panic").expect("app runs");
    assert!(!health.is_ready());
    assert!(!health.is_live(), "not live once stopped");
    assert_eq!(queue.settlement(MessageId(0)), Some(Action::Ack));
}

/// `ASYNCWORKER_FLUSH_TIMEOUT`, read through the environment-lookup path, is the flush
/// interval of a route that sets none: a lone message of a bulk-10 route reaches the handler
/// after 0.5 s, not after the 60 s default.
#[tokio::test(start_paused = true)]
async fn the_flush_timeout_variable_sets_the_flush_interval_of_a_route() {
    let settings = Settings::from_lookup(|name| {
        (name == "ASYNCWORKER_FLUSH_TIMEOUT").then(|| "0.5".to_owned())
    })
    .expect("valid settings");
    let queue = MemoryQueue::new();
    queue.push_bytes("alone");
    let t0 = Instant::now();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let mut app = quiet_app();
    app.with_settings(settings);
    app.route(
        "env-flush",
        queue.source(),
        move |batch: Vec<MemoryMessage>| {
            let record = record.clone();
            async move {
                record.lock().unwrap().push((t0.elapsed(), batch.len()));
                Ok::<(), BoxError>(())
            }
        },
    )
    .bulk_size(10);
    let handle = app.shutdown_handle();
    let run = tokio::spawn(app.run());
    sleep(secs(5)).await;
    handle.trigger();
    run.await.expect("no panic").expect("clean shutdown");
    assert_eq!(*seen.lock().unwrap(), vec![(Duration::from_millis(500), 1)]);
}
