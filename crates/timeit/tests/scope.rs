//! Behaviour of `Timeit` scopes, guards and nested transactions, under tokio's paused clock
//! with a debugging recorder as the local recorder.

mod common;

use std::{fmt, time::Duration};

use asyncworker_timeit::{Outcome, Report, Timeit};
use common::{collector, histograms, ms, recorder, sample, taken, timings};
use tokio::time::{sleep, timeout};

#[derive(Debug)]
struct KeyError(&'static str);

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key error: {}", self.0)
    }
}

impl std::error::Error for KeyError {}

#[tokio::test(start_paused = true)]
async fn run_reports_the_exact_duration_to_the_callback() {
    let (recorder, snapshotter) = recorder();
    let _local = metrics::set_default_local_recorder(&recorder);
    let (reports, callback) = collector();

    Timeit::new("xablau")
        .callback(callback)
        .run(sleep(Duration::from_secs(1)))
        .await;

    let reports = taken(&reports);
    assert_eq!(reports.len(), 1);
    assert_eq!(timings(&reports[0]), [("xablau", Duration::from_secs(1))]);
    assert_eq!(reports[0].outcome(), Outcome::Ok);
    assert_eq!(reports[0].error(), None);
    assert_eq!(histograms(&snapshotter), [sample("xablau", "ok", &[1.0])]);
}

#[tokio::test(start_paused = true)]
async fn nested_transactions_report_once_to_root_callback() {
    let (recorder, snapshotter) = recorder();
    let _local = metrics::set_default_local_recorder(&recorder);
    let (reports, callback) = collector();

    Timeit::new("a")
        .callback(callback)
        .scope(async |t| {
            sleep(ms(100)).await;
            t.transaction("b")
                .run(async {
                    sleep(ms(100)).await;
                    t.transaction("c").run(sleep(ms(100))).await;
                })
                .await;
        })
        .await;

    let reports = taken(&reports);
    assert_eq!(reports.len(), 1, "one report, to the root only");
    assert_eq!(
        timings(&reports[0]),
        [("c", ms(100)), ("b", ms(200)), ("a", ms(300))]
    );
    assert_eq!(reports[0].root().name(), "a");
    assert_eq!(
        histograms(&snapshotter),
        [
            sample("a", "ok", &[0.3]),
            sample("b", "ok", &[0.2]),
            sample("c", "ok", &[0.1]),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn error_is_reported_to_the_callback_and_returned_unchanged() {
    let (recorder, snapshotter) = recorder();
    let _local = metrics::set_default_local_recorder(&recorder);
    let (reports, callback) = collector();

    let output = Timeit::new("xablau")
        .callback(callback)
        .run(async {
            sleep(ms(5)).await;
            Err::<(), _>(KeyError("error"))
        })
        .await;

    assert!(matches!(output, Err(KeyError("error"))));
    let reports = taken(&reports);
    assert_eq!(reports.len(), 1);
    assert_eq!(timings(&reports[0]), [("xablau", ms(5))]);
    assert_eq!(reports[0].outcome(), Outcome::Error);
    let error = reports[0].error().expect("the error is reported");
    assert_eq!(error.type_name(), std::any::type_name::<KeyError>());
    assert_eq!(error.message(), "key error: error");
    assert_eq!(
        histograms(&snapshotter),
        [sample("xablau", "error", &[0.005])]
    );
}

#[tokio::test(start_paused = true)]
async fn cancelled_scope_is_recorded_as_cancelled_without_callback() {
    let (recorder, snapshotter) = recorder();
    let _local = metrics::set_default_local_recorder(&recorder);
    let (reports, callback) = collector();

    let cancelled = timeout(
        ms(250),
        Timeit::new("slow").callback(callback).scope(async |t| {
            sleep(ms(100)).await;
            t.transaction("inner")
                .run(sleep(Duration::from_secs(10)))
                .await;
        }),
    )
    .await;

    assert!(cancelled.is_err(), "the timeout dropped the scope");
    assert!(
        taken(&reports).is_empty(),
        "a cancelled root calls no callback"
    );
    assert_eq!(
        histograms(&snapshotter),
        [
            sample("inner", "cancelled", &[0.15]),
            sample("slow", "cancelled", &[0.25]),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn dropped_guard_is_recorded_as_cancelled() {
    let (recorder, snapshotter) = recorder();
    let _local = metrics::set_default_local_recorder(&recorder);
    let (reports, callback) = collector();

    let guard = Timeit::new("abandoned").callback(callback).start();
    sleep(ms(40)).await;
    drop(guard);

    assert!(taken(&reports).is_empty());
    assert_eq!(
        histograms(&snapshotter),
        [sample("abandoned", "cancelled", &[0.04])]
    );
}

#[tokio::test(start_paused = true)]
async fn guard_reports_nested_transactions_when_finished_by_hand() {
    let (recorder, _snapshotter) = recorder();
    let _local = metrics::set_default_local_recorder(&recorder);
    let (reports, callback) = collector();

    let t = Timeit::new("a").callback(callback).start();
    let b = t.transaction("b");
    sleep(ms(10)).await;
    let c = b.transaction("c");
    sleep(ms(20)).await;
    c.finish();
    b.fail();
    sleep(ms(30)).await;
    assert_eq!(t.elapsed(), ms(60));
    t.fail(&KeyError("late")).await;

    let reports = taken(&reports);
    assert_eq!(reports.len(), 1);
    let report = &reports[0];
    assert_eq!(
        timings(report),
        [("c", ms(20)), ("b", ms(30)), ("a", ms(60))]
    );
    let outcomes: Vec<_> = report.transactions().iter().map(|t| t.outcome()).collect();
    assert_eq!(outcomes, [Outcome::Ok, Outcome::Error, Outcome::Error]);
    assert_eq!(report.error().map(|e| e.message()), Some("key error: late"));
}

#[tokio::test(start_paused = true)]
async fn duplicate_names_are_kept_in_order_and_totalled() {
    let (recorder, snapshotter) = recorder();
    let _local = metrics::set_default_local_recorder(&recorder);
    let (reports, callback) = collector();

    Timeit::new("batch")
        .callback(callback)
        .scope(async |t| {
            for step in 1..=3 {
                t.transaction("step").run(sleep(ms(10 * step))).await;
            }
            // A child may even repeat the root's name.
            t.transaction("batch").run(sleep(ms(5))).await;
        })
        .await;

    let reports = taken(&reports);
    let report = &reports[0];
    assert_eq!(
        timings(report),
        [
            ("step", ms(10)),
            ("step", ms(20)),
            ("step", ms(30)),
            ("batch", ms(5)),
            ("batch", ms(65)),
        ]
    );
    assert_eq!(report.total("step"), Some(ms(60)));
    assert_eq!(report.total("batch"), Some(ms(70)));
    assert_eq!(report.root().elapsed(), ms(65));
    assert_eq!(report.total("missing"), None);
    assert_eq!(
        histograms(&snapshotter),
        [
            sample("batch", "ok", &[0.005, 0.065]),
            sample("step", "ok", &[0.01, 0.02, 0.03]),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn dropped_nested_transaction_is_reported_as_cancelled() {
    let (recorder, _snapshotter) = recorder();
    let _local = metrics::set_default_local_recorder(&recorder);
    let (reports, callback) = collector();

    Timeit::new("root")
        .callback(callback)
        .scope(async |t| {
            let fetch = timeout(ms(30), t.transaction("fetch").run(sleep(ms(100)))).await;
            assert!(fetch.is_err());
        })
        .await;

    let reports = taken(&reports);
    let fetch = &reports[0].transactions()[0];
    assert_eq!(
        (fetch.name(), fetch.elapsed(), fetch.outcome()),
        ("fetch", ms(30), Outcome::Cancelled)
    );
    assert_eq!(reports[0].outcome(), Outcome::Ok);
}

#[tokio::test(start_paused = true)]
async fn transaction_finished_after_its_root_is_recorded_but_not_reported() {
    let (recorder, snapshotter) = recorder();
    let _local = metrics::set_default_local_recorder(&recorder);
    let (reports, callback) = collector();

    let t = Timeit::new("root").callback(callback).start();
    let late = t.transaction("late");
    sleep(ms(10)).await;
    t.finish().await;
    sleep(ms(10)).await;
    late.finish();

    let reports = taken(&reports);
    assert_eq!(timings(&reports[0]), [("root", ms(10))]);
    assert_eq!(
        histograms(&snapshotter),
        [sample("late", "ok", &[0.02]), sample("root", "ok", &[0.01])]
    );
}

#[tokio::test(start_paused = true)]
async fn callback_is_awaited_before_the_output_is_returned() {
    let start = tokio::time::Instant::now();
    let output = Timeit::new("slow-callback")
        .callback(async |report: Report| {
            assert_eq!(report.root().elapsed(), ms(10));
            sleep(ms(500)).await;
        })
        .run(async {
            sleep(ms(10)).await;
            Ok::<_, KeyError>(7)
        })
        .await;
    assert!(matches!(output, Ok(7)));
    assert_eq!(start.elapsed(), ms(510));
}

#[tokio::test(start_paused = true)]
async fn histogram_name_is_configurable_and_labels_are_transaction_and_outcome() {
    let (recorder, snapshotter) = recorder();
    let _local = metrics::set_default_local_recorder(&recorder);

    Timeit::new(String::from("dynamic-name"))
        .histogram("custom_seconds")
        .scope(async |t| t.transaction("child").run(sleep(ms(1))).await)
        .await;

    let samples = histograms(&snapshotter);
    assert_eq!(samples.len(), 2);
    for s in &samples {
        assert_eq!(s.name, "custom_seconds");
        let keys: Vec<_> = s.labels.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["outcome", "transaction"]);
    }
    assert_eq!(samples[0].labels[1].1, "child");
    assert_eq!(samples[1].labels[1].1, "dynamic-name");
}

// Compile-time: the scope types are `Send + Sync`, and the scope futures are `Send`, so they
// work on a multi-threaded runtime and across `tokio::spawn`.
type Callback = fn(Report) -> std::future::Ready<()>;
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Timeit<Callback>>();
    send_sync::<asyncworker_timeit::TimeitGuard<Callback>>();
    send_sync::<asyncworker_timeit::Transaction>();
    send_sync::<asyncworker_timeit::Handle>();
    send_sync::<Report>();
};

#[test]
fn scope_futures_are_send() {
    fn send<T: Send>(_: T) {}
    let callback: Callback = |_| std::future::ready(());
    send(
        Timeit::new("a")
            .callback(callback)
            .run(std::future::ready(())),
    );
    send(Timeit::new("a").callback(callback).scope(async |t| {
        t.transaction("b").run(sleep(ms(1))).await;
    }));
}
