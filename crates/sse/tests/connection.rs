//! Statuses, content types, credentials, reconnects and readiness against a real server.

mod support;

use std::time::Duration;

use asyncworker_core::{Action, Message};
use asyncworker_sse::{SseError, SseSource};
use support::{Direct, Gate, Part, Reply, Server, eventually, status, stream, text};

#[tokio::test]
async fn auth_and_headers_as_the_server_received_them() {
    let server = Server::start().await;
    server.script("/v2/events", [stream(vec![text("data: x\n\n")])]);
    let config = server
        .config()
        .basic_auth("deploy", "pa:ss w0rd")
        .header("x-tenant", "blue")
        .build()
        .unwrap();
    let source = SseSource::new(&config, ["/v2/events?since=now"]).unwrap();
    assert!(!format!("{source:?}").contains("pa:ss"));
    let mut d = Direct::start(source);
    d.event().await;
    let request = &server.received()[0];
    assert_eq!(request.path, "/v2/events");
    assert_eq!(request.query.as_deref(), Some("since=now"));
    let header = |name: &str| {
        request
            .headers
            .get(name)
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned()
    };
    // base64("deploy:pa:ss w0rd")
    assert_eq!(header("authorization"), "Basic ZGVwbG95OnBhOnNzIHcwcmQ=");
    assert_eq!(header("x-tenant"), "blue");
    assert_eq!(header("accept"), "text/event-stream");
    assert_eq!(header("cache-control"), "no-cache");
    assert!(request.headers.get("last-event-id").is_none());
}

#[tokio::test]
async fn a_500_then_a_200() {
    let server = Server::start().await;
    server.script("/s", [status(500), stream(vec![text("data: ok\n\n")])]);
    let mut d = Direct::start(SseSource::new(&server.config().build().unwrap(), ["/s"]).unwrap());
    let error = d.error().await;
    assert!(
        matches!(error, SseError::Status { status: 500, .. }),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        format!("{}/s answered HTTP 500", server.base)
    );
    assert_eq!(error.cause(), "status_5xx");
    assert!(!error.is_client_error());
    assert_eq!(d.acked().await.data(), "ok");
}

#[tokio::test]
async fn a_429_waits_its_retry_after() {
    let server = Server::start().await;
    server.script(
        "/r",
        [
            Reply::Status {
                status: 429,
                headers: vec![("retry-after", "1")],
            },
            stream(vec![text("data: ok\n\n")]),
        ],
    );
    let mut d = Direct::start(SseSource::new(&server.config().build().unwrap(), ["/r"]).unwrap());
    let error = d.error().await;
    assert!(
        matches!(
            error,
            SseError::Status {
                status: 429,
                retry_after: Some(d),
                ..
            } if d == Duration::from_secs(1)
        ),
        "{error:?}"
    );
    assert_eq!(d.acked().await.data(), "ok");
    let requests = server.received();
    // The backoff alone is 5 ms: only Retry-After explains the wait (a lower bound).
    assert!(requests[1].at - requests[0].at >= Duration::from_secs(1));
}

#[tokio::test]
async fn a_401_is_a_client_error_with_the_long_delay() {
    let server = Server::start().await;
    server.script("/a", [status(401), stream(vec![text("data: ok\n\n")])]);
    let mut d = Direct::start(SseSource::new(&server.config().build().unwrap(), ["/a"]).unwrap());
    let error = d.error().await;
    assert!(error.is_client_error(), "{error:?}");
    assert!(error.to_string().contains("401"));
    assert_eq!(d.acked().await.data(), "ok");
    let requests = server.received();
    // The client-error delay is 200 ms here, the backoff 5 ms.
    assert!(requests[1].at - requests[0].at >= Duration::from_millis(200));
}

#[tokio::test]
async fn a_204_stops_that_path_only() {
    let server = Server::start().await;
    server.script("/stop", [status(204)]);
    server.script("/go", [stream(vec![text("data: go\n\n")])]);
    let mut d =
        Direct::start(SseSource::new(&server.config().build().unwrap(), ["/stop", "/go"]).unwrap());
    let event = d.event().await;
    assert_eq!(event.data(), "go");
    // The stopped path is not asked again; the other one keeps the route ready.
    eventually("the route is ready", || d.cx.readiness().get()).await;
    event.settlement().settle(Action::Ack).unwrap();
    assert_eq!(
        server
            .received()
            .iter()
            .filter(|r| r.path == "/stop")
            .count(),
        1
    );
}

#[tokio::test]
async fn a_204_on_the_only_path_ends_the_stream() {
    let server = Server::start().await;
    server.script("/stop", [status(204)]);
    let mut d =
        Direct::start(SseSource::new(&server.config().build().unwrap(), ["/stop"]).unwrap());
    assert!(d.next().await.is_none());
    assert!(!d.cx.readiness().get());
}

#[tokio::test]
async fn a_wrong_content_type_dispatches_nothing_from_its_body() {
    let server = Server::start().await;
    server.script(
        "/w",
        [
            Reply::Stream {
                status: 200,
                content_type: "text/plain",
                parts: vec![text("id: 9\ndata: not for you\n\n")],
            },
            stream(vec![text("data: right\n\n")]),
        ],
    );
    let mut d = Direct::start(SseSource::new(&server.config().build().unwrap(), ["/w"]).unwrap());
    let error = d.error().await;
    assert!(
        matches!(&error, SseError::ContentType { status: 200, content_type, .. } if content_type == "text/plain"),
        "{error:?}"
    );
    assert!(error.to_string().contains("/w"));
    let event = d.event().await;
    assert_eq!((event.data(), event.id()), ("right", None));
}

#[tokio::test]
async fn a_disconnect_mid_stream_resumes_with_the_settled_checkpoint() {
    let server = Server::start().await;
    let gate = Gate::new();
    server.script(
        "/d",
        [
            stream(vec![
                text("id: 1\ndata: a\n\nid: 2\ndata: b\n\n"),
                Part::Gate(gate.clone()),
                Part::Abort,
            ]),
            stream(vec![text("id: 3\ndata: c\n\n")]),
        ],
    );
    let (source, store) = server.source_with_memory_checkpoints("/d");
    let mut d = Direct::start(source);
    let a = d.event().await;
    let b = d.event().await;
    // b settles first: the checkpoint waits for a.
    b.settlement().settle(Action::Ack).unwrap();
    assert_eq!(store.get("r /d"), None);
    a.settlement().settle(Action::Reject).unwrap();
    eventually("checkpoint 2 saved", || {
        store.get("r /d").as_deref() == Some("2")
    })
    .await;
    assert!(d.cx.readiness().get());
    gate.open();
    let error = d.error().await;
    assert!(matches!(error, SseError::Read { .. }), "{error:?}");
    let c = d.event().await;
    assert_eq!(c.id(), Some("3"));
    assert_eq!(server.received()[1].last_event_id(), Some("2"));
}

#[tokio::test]
async fn an_idle_stream_reconnects() {
    let server = Server::start().await;
    server.script(
        "/i",
        [
            stream(vec![text("id: 1\ndata: a\n\n"), Part::Hang]),
            stream(vec![text("data: b\n\n")]),
        ],
    );
    let config = server
        .config()
        .idle_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let mut d = Direct::start(SseSource::new(&config, ["/i"]).unwrap());
    d.acked().await;
    let error = d.error().await;
    assert!(matches!(error, SseError::Idle { .. }), "{error:?}");
    let b = d.event().await;
    // The id carries over from the checkpoint.
    assert_eq!((b.data(), b.id()), ("b", Some("1")));
    assert_eq!(server.received()[1].last_event_id(), Some("1"));
}

#[tokio::test]
async fn readiness_needs_every_stream_connected() {
    let server = Server::start().await;
    let gate = Gate::new();
    server.script("/up", [stream(vec![text("data: up\n\n"), Part::Hang])]);
    server.script(
        "/down",
        [
            status(503),
            stream(vec![Part::Gate(gate.clone()), text("data: late\n\n")]),
        ],
    );
    let mut d =
        Direct::start(SseSource::new(&server.config().build().unwrap(), ["/up", "/down"]).unwrap());
    let mut saw_error = false;
    let mut saw_event = false;
    while !(saw_error && saw_event) {
        match d.next().await.unwrap() {
            // Settled, else dropping it would requeue it (and it would come back).
            Ok(event) => {
                event.settlement().settle(Action::Ack).unwrap();
                saw_event = true;
            }
            Err(_) => {
                saw_error = true;
                assert!(!d.cx.readiness().get());
            }
        }
    }
    gate.open();
    assert_eq!(d.acked().await.data(), "late");
    assert!(d.cx.readiness().get());
    d.shutdown.trigger();
    assert!(d.next().await.is_none());
    assert!(!d.cx.readiness().get());
}

#[tokio::test]
async fn a_connection_refused_is_retried() {
    // Bind and drop a listener: its port refuses connections.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let config = asyncworker_sse::SseConfig::builder(format!("http://127.0.0.1:{port}"))
        .backoff(support::fast_backoff())
        .build()
        .unwrap();
    let mut d = Direct::start(SseSource::new(&config, ["/x"]).unwrap());
    for _ in 0..2 {
        let error = d.error().await;
        assert!(matches!(error, SseError::Connect { .. }), "{error:?}");
        assert!(error.to_string().contains(&format!("127.0.0.1:{port}/x")));
    }
}

#[tokio::test]
async fn the_servers_retry_sets_the_reconnect_delay() {
    let server = Server::start().await;
    server.script(
        "/t",
        [
            stream(vec![text("retry: 400\n\nid: 1\ndata: a\n\n")]),
            stream(vec![text("data: b\n\n")]),
        ],
    );
    let mut d = Direct::start(SseSource::new(&server.config().build().unwrap(), ["/t"]).unwrap());
    assert_eq!(d.acked().await.data(), "a");
    assert_eq!(d.acked().await.data(), "b");
    let requests = server.received();
    // The backoff alone is 5 ms: only the server's retry explains the wait (a lower bound).
    assert!(requests[1].at - requests[0].at >= Duration::from_millis(400));
}

#[tokio::test]
async fn comments_keep_an_idle_stream_alive() {
    // Comments every 50 ms for longer than the 500 ms idle timeout: the stream stays up
    // (the next item is the event after them, not an idle error); then silence idles it.
    let server = Server::start().await;
    let mut parts = vec![text("id: 1\ndata: a\n\n")];
    for _ in 0..15 {
        parts.push(Part::Sleep(Duration::from_millis(50)));
        parts.push(text(": ping\n"));
    }
    parts.push(text("data: after the pings\n\n"));
    parts.push(Part::Hang);
    server.script("/p", [stream(parts)]);
    let config = server
        .config()
        .idle_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let mut d = Direct::start(SseSource::new(&config, ["/p"]).unwrap());
    assert_eq!(d.acked().await.data(), "a");
    assert_eq!(d.acked().await.data(), "after the pings");
    let error = d.error().await;
    assert!(matches!(error, SseError::Idle { .. }), "{error:?}");
    assert_eq!(server.received().len(), 1);
}

#[tokio::test]
async fn requeues_do_not_postpone_the_idle_timeout() {
    // A handler requeueing an event over and over wakes the stream while it waits for bytes;
    // the idle timeout counts from the last byte all the same.
    let server = Server::start().await;
    server.script("/q", [stream(vec![text("id: 1\ndata: a\n\n"), Part::Hang])]);
    let config = server
        .config()
        .idle_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let source = SseSource::new(&config, ["/q"])
        .unwrap()
        .max_redeliveries(1000);
    let mut d = Direct::start(source);
    // 40 requeues 100 ms apart: 4 s, eight idle timeouts.
    for _ in 0..40 {
        match d.next().await.unwrap() {
            // Requeued while the stream waits for bytes.
            Ok(event) => drop(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                event.settlement().settle(Action::Requeue).unwrap();
            })),
            Err(error) => {
                assert!(matches!(error, SseError::Idle { .. }), "{error:?}");
                return;
            }
        }
    }
    panic!("no idle timeout while the event was requeued");
}

#[tokio::test]
async fn huge_timeouts_are_accepted() {
    // "Never time out", said with the largest Duration: no deadline overflows.
    let server = Server::start().await;
    server.script("/h", [stream(vec![text("data: a\n\n"), Part::Hang])]);
    let config = server
        .config()
        .idle_timeout(Duration::MAX)
        .connect_timeout(Duration::MAX)
        .client_error_delay(Duration::MAX)
        .healthy_after(Duration::MAX)
        .build()
        .unwrap();
    let source = SseSource::new(&config, ["/h"])
        .unwrap()
        .checkpoint_interval(Duration::MAX);
    let mut d = Direct::start(source);
    assert_eq!(d.acked().await.data(), "a");
}
