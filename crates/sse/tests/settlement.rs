//! Settlement through the Bulk → Ack stack moves the checkpoint; what the next connection
//! asks for; restarts with a file checkpoint; metrics.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use asyncworker_core::ack::AckLayer;
use asyncworker_core::bulk::BulkLayer;
use asyncworker_core::runtime::Worker;
use asyncworker_core::{Action, BoxError, Message, Shutdown, SourceContext};
use asyncworker_sse::{FileCheckpoints, SseEvent, SseSource};
use support::{Direct, Gate, Part, Server, eventually, stream, text};
use tower::{ServiceBuilder, service_fn};

type Seen = Arc<Mutex<Vec<Vec<(String, u32)>>>>;

/// Run a worker over `source` with `BulkLayer(bulk)` + `AckLayer` and a handler that records
/// each batch and fails (once per event) on the ids in `fail_once`, or always on
/// `fail_always`.
fn worker(
    source: SseSource,
    bulk: usize,
    fail_once: &'static [&'static str],
    fail_always: &'static [&'static str],
) -> (Seen, Shutdown, tokio::task::JoinHandle<()>) {
    let seen: Seen = Arc::default();
    let record = Arc::clone(&seen);
    let handler = service_fn(move |events: Vec<SseEvent>| {
        handle(events, Arc::clone(&record), fail_once, fail_always)
    });
    let stack = ServiceBuilder::new()
        .layer(
            BulkLayer::new(bulk)
                .unwrap()
                .flush_interval(Duration::from_millis(300)),
        )
        .layer(AckLayer::new())
        .service(handler);
    let shutdown = Shutdown::new();
    let cx = SourceContext::new("r", shutdown.clone());
    let run = Worker::new(source, stack).source_context(cx).run();
    let task = tokio::spawn(async move {
        run.await.expect("worker runs");
    });
    (seen, shutdown, task)
}

async fn handle(
    events: Vec<SseEvent>,
    record: Seen,
    fail_once: &'static [&'static str],
    fail_always: &'static [&'static str],
) -> Result<(), BoxError> {
    let batch: Vec<_> = events
        .iter()
        .map(|e| (e.id().unwrap_or_default().to_owned(), e.delivery()))
        .collect();
    record.lock().unwrap().push(batch);
    for e in &events {
        let id = e.id().unwrap_or_default();
        if fail_always.contains(&id) || (fail_once.contains(&id) && e.delivery() == 1) {
            return Err(format!("handler failed on {id}").into());
        }
    }
    Ok(())
}

fn ids(seen: &Seen) -> Vec<String> {
    seen.lock()
        .unwrap()
        .iter()
        .flatten()
        .map(|(id, _)| id.clone())
        .collect()
}

#[tokio::test]
async fn bulk_2_with_a_flush_interval() {
    let server = Server::start().await;
    server.script(
        "/v2/events",
        [stream(vec![
            text("id: 1\ndata: a\n\nid: 2\ndata: b\n\nid: 3\ndata: c\n\n"),
            Part::Hang,
        ])],
    );
    let (source, store) = server.source_with_memory_checkpoints("/v2/events");
    let (seen, shutdown, task) = worker(source, 2, &[], &[]);
    // The third event waits for the flush interval (the stream is silent after it).
    eventually("three events handled", || ids(&seen).len() == 3).await;
    let sizes: Vec<usize> = seen.lock().unwrap().iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![2, 1]);
    eventually("checkpoint 3", || {
        store.get("r /v2/events").as_deref() == Some("3")
    })
    .await;
    shutdown.trigger();
    task.await.unwrap();
}

#[tokio::test]
async fn a_handler_failure_requeues_and_the_checkpoint_waits_for_it() {
    let server = Server::start().await;
    server.script(
        "/f",
        [stream(vec![
            text("id: 1\ndata: a\n\nid: 2\ndata: b\n\nid: 3\ndata: c\n\n"),
            Part::Hang,
        ])],
    );
    let (source, store) = server.source_with_memory_checkpoints("/f");
    let (seen, shutdown, task) = worker(source, 1, &["2"], &[]);
    eventually("event 2 handled twice", || ids(&seen).len() == 4).await;
    let mut all: Vec<_> = seen.lock().unwrap().iter().flatten().cloned().collect();
    all.sort();
    let expected: Vec<(String, u32)> = [("1", 1), ("2", 1), ("2", 2), ("3", 1)]
        .iter()
        .map(|(id, n)| (id.to_string(), *n))
        .collect();
    assert_eq!(all, expected);
    eventually("checkpoint 3", || store.get("r /f").as_deref() == Some("3")).await;
    shutdown.trigger();
    task.await.unwrap();
}

#[tokio::test]
async fn requeues_are_bounded_then_the_event_is_rejected() {
    let server = Server::start().await;
    server.script(
        "/b",
        [stream(vec![
            text("id: 1\ndata: a\n\nid: 2\ndata: b\n\n"),
            Part::Hang,
        ])],
    );
    let (source, store) = server.source_with_memory_checkpoints("/b");
    let source = source.max_redeliveries(2);
    let (seen, shutdown, task) = worker(source, 1, &[], &["1"]);
    eventually("checkpoint 2", || store.get("r /b").as_deref() == Some("2")).await;
    let deliveries_of_1 = seen
        .lock()
        .unwrap()
        .iter()
        .flatten()
        .filter(|(id, _)| id == "1")
        .count();
    assert_eq!(deliveries_of_1, 3, "the first delivery and 2 more");
    shutdown.trigger();
    task.await.unwrap();
}

#[tokio::test]
async fn the_next_connection_asks_for_the_last_event_before_an_unsettled_one() {
    let server = Server::start().await;
    let gate = Gate::new();
    server.script(
        "/n",
        [
            stream(vec![
                text("id: 1\ndata: a\n\nid: 2\ndata: b\n\nid: 3\ndata: c\n\n"),
                Part::Gate(gate.clone()),
            ]),
            stream(vec![text("id: 2\ndata: b\n\n")]),
        ],
    );
    let (source, store) = server.source_with_memory_checkpoints("/n");
    let mut d = Direct::start(source);
    let (a, b, c) = (d.event().await, d.event().await, d.event().await);
    a.settlement().settle(Action::Ack).unwrap();
    b.settlement().settle(Action::Requeue).unwrap();
    c.settlement().settle(Action::Ack).unwrap();
    // The requeued event comes back first, before anything new.
    let b_again = d.event().await;
    assert_eq!((b_again.id(), b_again.delivery()), (Some("2"), 2));
    // The connection ends while b is still unsettled: the next one asks from 1.
    gate.open();
    let replayed = d.event().await;
    assert_eq!(replayed.id(), Some("2"));
    assert_eq!(server.received()[1].last_event_id(), Some("1"));
    eventually("checkpoint 1 saved", || {
        store.get("r /n").as_deref() == Some("1")
    })
    .await;
    // Settling b lets the prefix run to c.
    b_again.settlement().settle(Action::Ack).unwrap();
    eventually("checkpoint 3", || store.get("r /n").as_deref() == Some("3")).await;
    // The window orders events by arrival: the replayed copy of 2 came last, so once it
    // settles the checkpoint is the new connection's position, 2 (the server sends 3 again
    // next: at least once, never a gap).
    replayed.settlement().settle(Action::Ack).unwrap();
    eventually("checkpoint 2", || store.get("r /n").as_deref() == Some("2")).await;
}

#[tokio::test]
async fn a_restarted_worker_resumes_from_its_file_checkpoint() {
    let dir = std::env::temp_dir().join(format!(
        "asyncworker-sse-restart-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let server = Server::start().await;
    server.script(
        "/p",
        [
            stream(vec![
                text("id: 1\ndata: a\n\nid: 2\ndata: b\n\n"),
                Part::Hang,
            ]),
            stream(vec![text("id: 3\ndata: c\n\n"), Part::Hang]),
        ],
    );
    let config = server.config().build().unwrap();
    let source = SseSource::new(&config, ["/p"])
        .unwrap()
        .checkpoint_store(FileCheckpoints::new(&dir));
    let (seen, shutdown, task) = worker(source, 1, &[], &[]);
    eventually("two events handled", || ids(&seen).len() == 2).await;
    shutdown.trigger();
    task.await.unwrap();
    // The worker waited for its checkpoint writer before it returned.
    let store = FileCheckpoints::new(&dir);
    assert_eq!(
        std::fs::read_to_string(store.path("r /p")).unwrap(),
        "2",
        "checkpoint on disk"
    );

    let source = SseSource::new(&config, ["/p"])
        .unwrap()
        .checkpoint_store(FileCheckpoints::new(&dir));
    let (seen, shutdown, task) = worker(source, 1, &[], &[]);
    eventually("the third event handled", || ids(&seen) == ["3"]).await;
    assert_eq!(server.received()[1].last_event_id(), Some("2"));
    shutdown.trigger();
    task.await.unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn metrics_count_events_bytes_reconnects_and_the_checkpoint() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder: &'static DebuggingRecorder = Box::leak(Box::new(DebuggingRecorder::new()));
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(recorder);

    let server = Server::start().await;
    let body = "id: 7\ndata: a\n\n";
    server.script(
        "/m",
        [support::status(503), stream(vec![text(body), Part::Hang])],
    );
    let config = server.config().build().unwrap();
    let mut d = Direct::start(SseSource::new(&config, ["/m"]).unwrap());
    d.error().await;
    d.acked().await;
    let snapshot = snapshotter.snapshot().into_hashmap();
    let value = |name: &str, extra: Option<(&str, &str)>| {
        snapshot
            .iter()
            .find(|(key, _)| {
                let key = key.key();
                key.name() == name
                    && key.labels().any(|l| l.key() == "path" && l.value() == "/m")
                    && extra
                        .is_none_or(|(k, v)| key.labels().any(|l| l.key() == k && l.value() == v))
            })
            .map(|(_, (_, _, value))| value)
    };
    assert_eq!(
        value("asyncworker_sse_events_received_total", None),
        Some(&DebugValue::Counter(1))
    );
    assert_eq!(
        value("asyncworker_sse_bytes_received_total", None),
        Some(&DebugValue::Counter(body.len() as u64))
    );
    assert_eq!(
        value(
            "asyncworker_sse_reconnects_total",
            Some(("cause", "status_5xx"))
        ),
        Some(&DebugValue::Counter(1))
    );
    assert_eq!(
        value("asyncworker_sse_checkpoint", None),
        Some(&DebugValue::Gauge(7.0.into()))
    );
    assert_eq!(
        value("asyncworker_sse_connected", None),
        Some(&DebugValue::Gauge(1.0.into()))
    );
}

#[tokio::test]
async fn while_a_failing_handler_holds_an_event_the_next_connection_asks_from_before_it() {
    let server = Server::start().await;
    let end_first = Gate::new();
    server.script(
        "/h",
        [
            stream(vec![
                text("id: 1\ndata: a\n\nid: 2\ndata: b\n\nid: 3\ndata: c\n\n"),
                Part::Gate(end_first.clone()),
            ]),
            stream(vec![Part::Hang]),
        ],
    );
    let (source, store) = server.source_with_memory_checkpoints("/h");
    // The handler holds event 2's first delivery until `release` opens, then fails it.
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let held = Arc::new(tokio::sync::Notify::new());
    let seen: Seen = Arc::default();
    let (r, h, s) = (Arc::clone(&release), Arc::clone(&held), Arc::clone(&seen));
    let handler = service_fn(move |events: Vec<SseEvent>| {
        let (release, held, seen) = (Arc::clone(&r), Arc::clone(&h), Arc::clone(&s));
        hold_then_fail(events, release, held, seen)
    });
    let stack = ServiceBuilder::new()
        .layer(BulkLayer::new(1).unwrap())
        .layer(AckLayer::new())
        .service(handler);
    let shutdown = Shutdown::new();
    let cx = SourceContext::new("r", shutdown.clone());
    let task = tokio::spawn(Worker::new(source, stack).source_context(cx).run());
    held.notified().await;
    eventually("3 handled", || ids(&seen).contains(&"3".to_owned())).await;
    eventually("checkpoint 1", || store.get("r /h").as_deref() == Some("1")).await;
    end_first.open();
    let requests = server.wait_requests(2).await;
    assert_eq!(requests[1].last_event_id(), Some("1"));
    release.add_permits(1);
    eventually("checkpoint 3", || store.get("r /h").as_deref() == Some("3")).await;
    let deliveries: Vec<_> = seen
        .lock()
        .unwrap()
        .iter()
        .flatten()
        .filter(|(id, _)| id == "2")
        .map(|(_, n)| *n)
        .collect();
    assert_eq!(deliveries, vec![1, 2]);
    shutdown.trigger();
    task.await.unwrap().unwrap();
}

async fn hold_then_fail(
    events: Vec<SseEvent>,
    release: Arc<tokio::sync::Semaphore>,
    held: Arc<tokio::sync::Notify>,
    seen: Seen,
) -> Result<(), BoxError> {
    let batch: Vec<_> = events
        .iter()
        .map(|e| (e.id().unwrap_or_default().to_owned(), e.delivery()))
        .collect();
    seen.lock().unwrap().push(batch);
    if events
        .iter()
        .any(|e| e.id() == Some("2") && e.delivery() == 1)
    {
        held.notify_one();
        let _permit = release.acquire().await;
        return Err("event 2 failed".into());
    }
    Ok(())
}

#[tokio::test]
async fn an_unreadable_checkpoint_file_is_an_error_not_a_fresh_start() {
    let dir = std::env::temp_dir().join(format!(
        "asyncworker-sse-corrupt-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let store = FileCheckpoints::new(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(store.path("r /k"), b"\xff\xfe not utf-8").unwrap();
    let server = Server::start().await;
    server.script("/k", [stream(vec![text("id: 6\ndata: f\n\n"), Part::Hang])]);
    let config = server.config().build().unwrap();
    let source = SseSource::new(&config, ["/k"])
        .unwrap()
        .checkpoint_store(store.clone());
    let mut d = Direct::start(source);
    let error = d.error().await;
    assert!(
        matches!(&error, asyncworker_sse::SseError::Checkpoint { key, .. } if key == "r /k"),
        "{error:?}"
    );
    assert!(std::error::Error::source(&error).is_some());
    // It does not start from nothing (which would overwrite the file): it keeps reporting
    // the error, connecting to nothing, until the file can be read.
    let again = d.error().await;
    assert!(
        matches!(again, asyncworker_sse::SseError::Checkpoint { .. }),
        "{again:?}"
    );
    assert!(server.received().is_empty());
    assert!(!d.cx.readiness().get());
    std::fs::write(store.path("r /k"), b"5").unwrap();
    let event = d.acked().await;
    assert_eq!(event.id(), Some("6"));
    assert_eq!(server.received()[0].last_event_id(), Some("5"));
    std::fs::remove_dir_all(dir).unwrap();
}

/// Records the reason of every batch Bulk seals.
#[derive(Clone, Default)]
struct Reasons(Arc<Mutex<Vec<(asyncworker_core::bulk::FlushReason, usize)>>>);

impl asyncworker_core::metrics::LayerMetrics for Reasons {
    fn on_batch(&self, reason: asyncworker_core::bulk::FlushReason, size: usize) {
        self.0.lock().unwrap().push((reason, size));
    }
}

#[tokio::test]
async fn a_204_after_the_last_events_flushes_the_partial_batch_at_once() {
    use asyncworker_core::bulk::FlushReason;
    let server = Server::start().await;
    server.script(
        "/end",
        [
            stream(vec![text(
                "id: 1\ndata: a\n\nid: 2\ndata: b\n\nid: 3\ndata: c\n\n",
            )]),
            support::status(204),
        ],
    );
    let (source, store) = server.source_with_memory_checkpoints("/end");
    let seen: Seen = Arc::default();
    let record = Arc::clone(&seen);
    let handler =
        service_fn(move |events: Vec<SseEvent>| handle(events, Arc::clone(&record), &[], &[]));
    let reasons = Reasons::default();
    let shutdown = Shutdown::new();
    // A bulk bigger than the stream and a flush interval far beyond the test's patience:
    // only the end of the stream can flush the batch.
    let stack = ServiceBuilder::new()
        .layer(
            BulkLayer::new(10)
                .unwrap()
                .flush_interval(Duration::from_secs(3600))
                .with_shutdown(shutdown.clone())
                .metrics(reasons.clone()),
        )
        .layer(AckLayer::new())
        .service(handler);
    let cx = SourceContext::new("r", shutdown.clone());
    let run = Worker::new(source, stack)
        .source_context(cx)
        .with_shutdown(shutdown.clone())
        .run();
    // The route ends by itself after the 204: nothing triggers the shutdown here.
    tokio::time::timeout(support::PATIENCE, run)
        .await
        .expect("the route ends after the 204 without waiting for the flush interval")
        .expect("worker runs");
    assert_eq!(ids(&seen), ["1", "2", "3"]);
    assert_eq!(
        *reasons.0.lock().unwrap(),
        [(FlushReason::Shutdown, 3)],
        "the partial batch flushed at the end of the stream, not by the interval"
    );
    eventually("checkpoint 3 saved after the batch settled", || {
        store.get("r /end").as_deref() == Some("3")
    })
    .await;
}

#[tokio::test]
async fn after_a_204_the_stream_ends_with_events_unsettled_and_a_late_requeue_is_left_for_replay() {
    let server = Server::start().await;
    server.script(
        "/late",
        [
            stream(vec![text("id: 1\ndata: a\n\nid: 2\ndata: b\n\n")]),
            support::status(204),
        ],
    );
    let (source, store) = server.source_with_memory_checkpoints("/late");
    let mut d = Direct::start(source);
    let a = d.event().await;
    let b = d.event().await;
    // Both are unsettled, and the stream still ends.
    assert!(d.next().await.is_none());
    a.settlement().settle(Action::Ack).unwrap();
    eventually("checkpoint 1", || {
        store.get("r /late").as_deref() == Some("1")
    })
    .await;
    // Requeued after the end: nobody hands it out again; the checkpoint stays before it.
    b.settlement().settle(Action::Requeue).unwrap();
    drop(b);
    drop(d);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(store.get("r /late").as_deref(), Some("1"));
}
