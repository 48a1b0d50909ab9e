//! Process level: the `sse_worker` example, run as a child process, prints the seed's
//! output, consumes a real server with credentials when given `SSE_URL`, and exits 0 on
//! SIGTERM.

#![cfg(unix)]

mod support;

use std::sync::{Arc, Mutex};

use axum::http::HeaderMap;
use axum::response::Response;
use futures::StreamExt;
use support::{Worker, example_binary};

#[test]
fn the_example_prints_the_seeds_output_and_exits_0_on_sigterm() {
    let binary = example_binary("sse_worker");
    let mut worker = Worker::start(&binary, &[]);
    let first = worker.wait_for("Events received:");
    assert_eq!(
        first,
        "Events received: 2 ['deployment_info', 'status_update_event']"
    );
    worker.wait_for("Event Received: deployment_info plan-1");
    worker
        .wait_for("Event Received: status_update_event app=/asgard/web, task=web.2 (TASK_RUNNING)");
    worker.wait_for("Event Received: deployment_success deploy-3");
    worker.signal("TERM");
    let (status, _) = worker.finish();
    assert!(status.success(), "{status:?}");
}

#[test]
fn with_sse_url_it_consumes_that_server_with_its_credentials() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let seen: Arc<Mutex<Vec<HeaderMap>>> = Arc::default();
    let record = Arc::clone(&seen);
    let base = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/api", listener.local_addr().unwrap());
        let app = axum::Router::new().route(
            "/api/marathon/events",
            axum::routing::get(move |headers: HeaderMap| {
                record.lock().unwrap().push(headers);
                async {
                    let body = "id: 10\nevent: deployment_success\ndata: {\"id\": \"d-10\"}\n\n\
                                id: 11\nevent: other\ndata: x\n\n";
                    let stream = futures::stream::iter([Ok::<_, std::convert::Infallible>(body)])
                        .chain(futures::stream::pending());
                    Response::builder()
                        .header("content-type", "text/event-stream; charset=utf-8")
                        .body(axum::body::Body::from_stream(stream))
                        .unwrap()
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        base
    });
    let binary = example_binary("sse_worker");
    let mut worker = Worker::start(
        &binary,
        &[
            ("SSE_URL", &base),
            ("SSE_USER", "ops"),
            ("SSE_PASSWORD", "hunter2"),
            ("SSE_PATHS", "/marathon/events"),
            ("BULK_SIZE", "1"),
        ],
    );
    assert_eq!(
        worker.wait_for("Events received:"),
        "Events received: 1 ['deployment_success']"
    );
    worker.wait_for("Event Received: deployment_success d-10");
    worker.wait_for("Event Received: other ");
    worker.signal("TERM");
    let (status, lines) = worker.finish();
    assert!(status.success(), "{status:?}");
    assert!(!lines.join("\n").contains("hunter2"));
    let headers = seen.lock().unwrap();
    // base64("ops:hunter2")
    assert_eq!(headers[0]["authorization"], "Basic b3BzOmh1bnRlcjI=");
    drop(headers);
    drop(runtime);
}
