//! Behaviour of `TimeitLayer` around tower services, under tokio's paused clock with a
//! debugging recorder as the local recorder.

mod common;

use std::{convert::Infallible, future::Ready};

use asyncworker_timeit::{
    Outcome, Report, TimeitLayer, TimeitService, middleware::future::ResponseFuture,
};
use common::{collector, histograms, ms, recorder, sample, taken, timings};
use tokio::time::{sleep, timeout};
use tower::{BoxError, Layer, Service, ServiceBuilder, ServiceExt, service_fn};

/// A handler that sleeps for the requested number of milliseconds, and fails on 0.
fn sleeper() -> impl Service<u64, Response = u64, Error = BoxError, Future: Send> + Clone {
    service_fn(|millis: u64| async move {
        sleep(ms(millis)).await;
        if millis == 0 {
            Err::<u64, BoxError>("zero is not a duration".into())
        } else {
            Ok(millis)
        }
    })
}

#[tokio::test(start_paused = true)]
async fn same_service_times_call_after_call() {
    let (recorder, snapshotter) = recorder();
    let _local = metrics::set_default_local_recorder(&recorder);
    let (reports, callback) = collector();

    let mut service = ServiceBuilder::new()
        .layer(TimeitLayer::new("handler").callback(callback))
        .service(sleeper());

    for millis in [100, 250, 50] {
        let response = service.ready().await.unwrap().call(millis).await.unwrap();
        assert_eq!(response, millis);
    }

    let reports = taken(&reports);
    let durations: Vec<_> = reports.iter().map(timings).collect();
    assert_eq!(
        durations,
        [
            [("handler", ms(100))],
            [("handler", ms(250))],
            [("handler", ms(50))],
        ]
    );
    assert_eq!(
        histograms(&snapshotter),
        [sample("handler", "ok", &[0.1, 0.25, 0.05])]
    );
}

#[tokio::test(start_paused = true)]
async fn one_layer_serves_many_services_and_concurrent_calls() {
    let (recorder, snapshotter) = recorder();
    let _local = metrics::set_default_local_recorder(&recorder);
    let (reports, callback) = collector();
    let layer = TimeitLayer::new("handler").callback(callback);

    let first = layer.layer(sleeper());
    let second = layer.clone().layer(sleeper());
    let (a, b, c) = tokio::join!(
        first.clone().oneshot(30),
        first.oneshot(10),
        second.oneshot(20),
    );
    assert_eq!((a.unwrap(), b.unwrap(), c.unwrap()), (30, 10, 20));

    let mut durations: Vec<_> = taken(&reports).iter().map(|r| r.root().elapsed()).collect();
    durations.sort();
    assert_eq!(durations, [ms(10), ms(20), ms(30)]);
    assert_eq!(
        histograms(&snapshotter),
        [sample("handler", "ok", &[0.01, 0.02, 0.03])]
    );
}

#[tokio::test(start_paused = true)]
async fn inner_error_is_reported_and_recorded_as_error() {
    let (recorder, snapshotter) = recorder();
    let _local = metrics::set_default_local_recorder(&recorder);
    let (reports, callback) = collector();

    let service = TimeitLayer::new("handler")
        .callback(callback)
        .layer(sleeper());
    let error = service.oneshot(0).await.unwrap_err();
    assert_eq!(error.to_string(), "zero is not a duration");

    let reports = taken(&reports);
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].outcome(), Outcome::Error);
    assert_eq!(
        reports[0].error().map(|e| e.message()),
        Some("zero is not a duration")
    );
    assert_eq!(
        histograms(&snapshotter),
        [sample("handler", "error", &[0.0])]
    );
}

#[tokio::test(start_paused = true)]
async fn dropped_response_future_is_recorded_as_cancelled() {
    let (recorder, snapshotter) = recorder();
    let _local = metrics::set_default_local_recorder(&recorder);
    let (reports, callback) = collector();

    let service = TimeitLayer::new("handler")
        .callback(callback)
        .layer(sleeper());
    let cancelled = timeout(ms(75), service.oneshot(1_000)).await;
    assert!(cancelled.is_err());

    assert!(
        taken(&reports).is_empty(),
        "no callback for a cancelled call"
    );
    assert_eq!(
        histograms(&snapshotter),
        [sample("handler", "cancelled", &[0.075])]
    );
}

#[tokio::test(start_paused = true)]
async fn histogram_name_and_label_set_in_a_service_builder_stack() {
    let (recorder, snapshotter) = recorder();
    let _local = metrics::set_default_local_recorder(&recorder);

    let service = ServiceBuilder::new()
        .layer(TimeitLayer::new(String::from("drain_handler")).histogram("worker_seconds"))
        .map_response(|millis: u64| millis * 2)
        .service(sleeper());
    assert_eq!(service.name(), "drain_handler");
    assert_eq!(service.oneshot(20).await.unwrap(), 40);

    let samples = histograms(&snapshotter);
    assert_eq!(samples.len(), 1);
    assert_eq!(samples[0].name, "worker_seconds");
    assert_eq!(
        samples[0].labels,
        [
            ("outcome".to_owned(), "ok".to_owned()),
            ("transaction".to_owned(), "drain_handler".to_owned()),
        ]
    );
    assert_eq!(samples[0].values, [0.02]);
}

#[tokio::test(start_paused = true)]
async fn service_without_callback_records_and_exposes_its_inner_service() {
    let (recorder, snapshotter) = recorder();
    let _local = metrics::set_default_local_recorder(&recorder);

    let mut service = TimeitService::new(sleeper(), "plain");
    let _: &mut _ = service.get_mut();
    let _: &_ = service.get_ref();
    service.ready().await.unwrap().call(40).await.unwrap();
    let inner = service.into_inner();
    assert_eq!(
        inner.oneshot(1).await.unwrap(),
        1,
        "the inner service is not timed"
    );

    assert_eq!(histograms(&snapshotter), [sample("plain", "ok", &[0.04])]);
}

// Compile-time: the public service and future are `Send + Sync` when their parts are.
type Handler = fn(u64) -> Ready<Result<u64, BoxError>>;
type Callback = fn(Report) -> Ready<()>;
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<TimeitLayer<Callback>>();
    send_sync::<TimeitService<tower::util::ServiceFn<Handler>, Callback>>();
    send_sync::<ResponseFuture<Ready<Result<u64, BoxError>>, Callback>>();
    send_sync::<ResponseFuture<Ready<Result<(), Infallible>>, ()>>();
};
