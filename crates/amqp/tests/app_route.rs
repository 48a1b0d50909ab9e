//! An AMQP route through the core's App, Bulk and Ack layers against the real broker: batch
//! sizes, the prefetch clamp, acks reaching the broker before `run` returns.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use asyncworker_amqp::{AmqpMessage, AmqpSource};
use asyncworker_core::{App, RouteOptions};
use asyncworker_core::{BoxError, Message};

use support::*;

type Batches = Arc<Mutex<Vec<Vec<String>>>>;

/// Run `source` in an App with `options` until `expected` messages were handled; returns the
/// batches the handler saw.
async fn run_route(source: AmqpSource, options: RouteOptions, expected: usize) -> Vec<Vec<String>> {
    init_tracing();
    let batches: Batches = Arc::default();
    let seen = batches.clone();
    let mut app = App::new();
    app.handle_signals(false);
    app.route("amqp-route", source, move |batch: Vec<AmqpMessage>| {
        let seen = seen.clone();
        async move {
            let bodies = batch.iter().map(|m| m.text().unwrap().to_owned()).collect();
            seen.lock().unwrap().push(bodies);
            Ok::<_, BoxError>(())
        }
    })
    .options(options);
    let handle = app.shutdown_handle();
    let run = tokio::spawn(app.run());
    let done = wait_until(Duration::from_secs(30), || async {
        batches.lock().unwrap().iter().map(Vec::len).sum::<usize>() >= expected
    })
    .await
    .held();
    handle.trigger();
    let result = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the app stops")
        .expect("the app task does not panic");
    assert!(result.is_ok(), "{result:?}");
    assert!(done, "only {:?} handled", batches.lock().unwrap());
    batches.lock().unwrap().clone()
}

/// Batch sizes that depend on counts only (no flush on time: `Duration::MAX`), so the split
/// is exact however slowly the deliveries arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_of_ten_gives_full_batches_of_ten() {
    let conn = connect().await;
    let q = TestQueue::declare(&conn, "bulk10").await;
    publish_n(&conn, &q, 30).await;

    let source = AmqpSource::builder(config().build().unwrap(), [q.as_str()])
        .build()
        .unwrap();
    let options = RouteOptions::new()
        .bulk_size(10)
        .flush_interval(Duration::MAX);
    let batches = run_route(source, options, 30).await;
    let sizes: Vec<_> = batches.iter().map(Vec::len).collect();
    assert_eq!(sizes, [10, 10, 10]);
    let bodies: Vec<_> = batches.concat();
    assert_published_n(bodies, 30);
    // Every message was acked before `run` returned.
    let counts = queue_counts(&conn, &q).await.unwrap();
    assert_eq!((counts.messages, counts.consumers), (0, 0));
    let info = queue_info("/", &q).await.unwrap();
    assert_eq!(info.messages_unacknowledged, 0);
}

/// A partial batch is flushed by the interval: one message (which cannot be split) with a
/// bulk of ten reaches the handler alone, long before the shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_batch_is_flushed_by_the_interval() {
    let conn = connect().await;
    let q = TestQueue::declare(&conn, "bulk10-partial").await;
    publish_n(&conn, &q, 1).await;

    let source = AmqpSource::builder(config().build().unwrap(), [q.as_str()])
        .build()
        .unwrap();
    let options = RouteOptions::new()
        .bulk_size(10)
        .flush_interval(Duration::from_millis(500));
    let batches = run_route(source, options, 1).await;
    assert_eq!(batches, [["message-0"]]);
    let counts = queue_counts(&conn, &q).await.unwrap();
    assert_eq!((counts.messages, counts.consumers), (0, 0));
    let info = queue_info("/", &q).await.unwrap();
    assert_eq!(info.messages_unacknowledged, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_larger_than_the_prefetch_is_clamped_to_it() {
    let conn = connect().await;
    let q = TestQueue::declare(&conn, "bulk512").await;
    publish_n(&conn, &q, 256).await;

    let source = AmqpSource::builder(config().prefetch(128).build().unwrap(), [q.as_str()])
        .build()
        .unwrap();
    let options = RouteOptions::new()
        .bulk_size(512)
        .flush_interval(Duration::from_secs(20));
    let batches = run_route(source, options, 256).await;
    let sizes: Vec<_> = batches.iter().map(Vec::len).collect();
    assert_eq!(sizes, [128, 128]);
    let counts = queue_counts(&conn, &q).await.unwrap();
    assert_eq!((counts.messages, counts.consumers), (0, 0));
}
