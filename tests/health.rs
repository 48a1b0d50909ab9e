//! `/metrics`, `/health/*` and the user's own routes answered over real HTTP, through the
//! app's lifecycle.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use asyncworker::memory::{MemoryMessage, MemoryQueue};
use asyncworker::observe::{PROMETHEUS_CONTENT_TYPE, Server, prometheus::PrometheusBuilder};
use asyncworker::timeit::TimeitLayer;
use asyncworker::{Action, App};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing;
use axum::{Json, Router};
use tokio::sync::oneshot;
use tokio::time::{Instant, sleep};
use tower::{ServiceBuilder, service_fn};

const DEADLINE: Duration = Duration::from_secs(10);

/// A response: status code, headers (lowercase names), body.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A plain HTTP/1.1 GET with `Connection: close`, on a blocking thread.
async fn get(addr: SocketAddr, path: &str) -> std::io::Result<Reply> {
    request(addr, "GET", path).await
}

/// A plain HTTP/1.1 request without a body, with `Connection: close`, on a blocking thread.
async fn request(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<Reply> {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect_timeout(&addr, DEADLINE)?;
        stream.set_read_timeout(Some(DEADLINE))?;
        stream.write_all(request.as_bytes())?;
        let mut raw = String::new();
        stream.read_to_string(&mut raw)?;
        let (head, body) = raw
            .split_once("\r\n\r\n")
            .ok_or_else(|| std::io::Error::other(format!("no header end in {raw:?}")))?;
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line in {raw:?}")))?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Ok(Reply {
            status,
            headers,
            body: body.to_owned(),
        })
    })
    .await
    .expect("client thread panicked")
}

/// GET `path` until `done` accepts the reply, or panic after [`DEADLINE`].
/// Waits for `task` (the `what`: app or server) to end without error, then checks that its
/// port is closed: `GET path` is refused.
async fn assert_stopped<E: std::fmt::Debug>(
    what: &str,
    task: tokio::task::JoinHandle<Result<(), E>>,
    addr: SocketAddr,
    path: &str,
) {
    tokio::time::timeout(DEADLINE, task)
        .await
        .unwrap_or_else(|_| panic!("{what} did not stop"))
        .unwrap_or_else(|e| panic!("{what} task panicked: {e}"))
        .unwrap_or_else(|e| panic!("{what} failed: {e:?}"));
    let refused = get(addr, path).await.unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
}

async fn get_until(addr: SocketAddr, path: &str, done: impl Fn(&Reply) -> bool) -> Reply {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let reply = get(addr, path).await.expect("request failed");
        if done(&reply) {
            return reply;
        }
        assert!(
            Instant::now() < deadline,
            "GET {path}: still {reply:?} after {DEADLINE:?}"
        );
        sleep(Duration::from_millis(10)).await;
    }
}

async fn handle(_batch: Vec<MemoryMessage>) -> Result<(), std::io::Error> {
    Ok(())
}

#[tokio::test(flavor = "current_thread")]
async fn endpoints_follow_the_app_lifecycle() {
    // A local recorder: every task of this current-thread runtime records into it.
    let recorder = PrometheusBuilder::new().build_recorder();
    let _local = metrics::set_default_local_recorder(&recorder);

    let queue = MemoryQueue::new();
    let mut app = App::new();
    app.handle_signals(false);
    let stop = app.shutdown_handle();
    let (open_start, started_gate) = oneshot::channel::<()>();
    let (open_stop, stopping_gate) = oneshot::channel::<()>();

    // Shutdown hooks run in order: this one holds the app in its drain, server still up.
    app.on_shutdown(move || stopping_gate);
    let server = Server::bind("127.0.0.1:0")
        .expect("bind")
        .metrics(recorder.handle());
    let addr = server.local_addr();
    server.attach(&mut app);
    // Startup hooks run in order: the server is up, the routes are not.
    app.on_startup(move || started_gate);
    let handler = ServiceBuilder::new()
        .layer(TimeitLayer::new("orders-handler"))
        .service(service_fn(handle));
    app.route_service("orders", queue.source(), handler);
    let app = tokio::spawn(app.run());

    // Starting: live, not ready.
    let live = get_until(addr, "/health/live", |_| true).await;
    assert_eq!(live.status, 200, "{live:?}");
    assert_eq!(live.body, r#"{"live":true}"#);
    let ready = get(addr, "/health/ready").await.unwrap();
    assert_eq!(ready.status, 503, "{ready:?}");
    assert_eq!(ready.header("content-type"), Some("application/json"));
    assert_eq!(ready.body, r#"{"ready":false,"routes":[]}"#);

    // Running: ready, every route listed.
    for i in 0..3 {
        queue.push_bytes(format!("order {i}"));
    }
    open_start.send(()).unwrap();
    let ready = get_until(addr, "/health/ready", |r| r.status == 200).await;
    assert_eq!(
        ready.body,
        r#"{"ready":true,"routes":[{"name":"orders","ready":true}]}"#
    );

    // Metrics, once the messages went through.
    let deadline = Instant::now() + DEADLINE;
    while queue
        .settlements()
        .iter()
        .filter(|(_, a)| *a == Some(Action::Ack))
        .count()
        < 3
    {
        assert!(
            Instant::now() < deadline,
            "not acked: {:?}",
            queue.settlements()
        );
        sleep(Duration::from_millis(10)).await;
    }
    let scrape = get(addr, "/metrics").await.unwrap();
    assert_eq!(scrape.status, 200, "{scrape:?}");
    assert_eq!(scrape.header("content-type"), Some(PROMETHEUS_CONTENT_TYPE));
    assert!(
        scrape
            .body
            .contains(r#"asyncworker_messages_settled_total{route="orders",action="ack"} 3"#),
        "{}",
        scrape.body
    );
    assert!(
        scrape.body.contains(
            r#"asyncworker_timeit_seconds_count{transaction="orders-handler",outcome="ok"} 3"#
        ),
        "{}",
        scrape.body
    );
    assert!(
        scrape.body.contains("asyncworker_handler_duration_seconds"),
        "{}",
        scrape.body
    );

    // Draining: still live and scrapable, no longer ready.
    stop.trigger();
    let ready = get_until(addr, "/health/ready", |r| r.status == 503).await;
    assert!(ready.body.starts_with(r#"{"ready":false,"#), "{ready:?}");
    assert_eq!(get(addr, "/health/live").await.unwrap().status, 200);
    assert_eq!(get(addr, "/metrics").await.unwrap().status, 200);

    // Stopped: the server is gone with the app.
    open_stop.send(()).unwrap();
    assert_stopped("app", app, addr, "/health/live").await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_served_health_endpoint_reports_a_stopped_app_and_stops_on_its_signal() {
    let queue = MemoryQueue::new();
    queue.push_bytes("only");
    queue.close(); // the app ends once the queue is drained
    let mut app = App::new();
    app.handle_signals(false);
    app.route("drain", queue.source(), handle);
    let health = app.health();
    app.run().await.expect("app failed");

    let server = Server::bind("127.0.0.1:0").expect("bind").health(health);
    let addr = server.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));

    let live = get(addr, "/health/live").await.unwrap();
    assert_eq!(
        (live.status, live.body.as_str()),
        (503, r#"{"live":false}"#)
    );
    let ready = get(addr, "/health/ready").await.unwrap();
    assert_eq!(
        (ready.status, ready.body.as_str()),
        (
            503,
            r#"{"ready":false,"routes":[{"name":"drain","ready":false}]}"#
        )
    );
    // No metrics handle given: no /metrics route.
    assert_eq!(get(addr, "/metrics").await.unwrap().status, 404);

    stop.send(()).unwrap();
    assert_stopped("server", served, addr, "/health/live").await;
}

/// What the user's `/orders/{id}` route answers: the order and how many messages the worker
/// has handled so far.
#[derive(Debug, serde::Serialize, serde::Deserialize, PartialEq)]
struct OrderView {
    id: u32,
    handled: usize,
}

async fn order(State(handled): State<Arc<AtomicUsize>>, Path(id): Path<u32>) -> Json<OrderView> {
    Json(OrderView {
        id,
        handled: handled.load(Ordering::SeqCst),
    })
}

#[tokio::test(flavor = "current_thread")]
async fn user_routes_are_served_beside_metrics_and_health_and_stop_with_the_app() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let _local = metrics::set_default_local_recorder(&recorder);

    let queue = MemoryQueue::new();
    let handled = Arc::new(AtomicUsize::new(0));
    let mut app = App::new();
    app.handle_signals(false);
    let stop = app.shutdown_handle();
    let routes = Router::new()
        .route("/orders/{id}", routing::get(order))
        .with_state(handled.clone());
    let server = Server::bind("127.0.0.1:0")
        .expect("bind")
        .metrics(recorder.handle())
        .routes(routes);
    let addr = server.local_addr();
    server.attach(&mut app);
    let counter = handled.clone();
    app.route(
        "orders",
        queue.source(),
        move |batch: Vec<MemoryMessage>| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(batch.len(), Ordering::SeqCst);
                Ok::<(), std::io::Error>(())
            }
        },
    )
    .bulk_size(1);
    queue.push_bytes("order 7");
    let app = tokio::spawn(app.run());

    // The user's route: a path parameter in, JSON out, state shared with the worker.
    let reply = get_until(addr, "/orders/7", |r| {
        r.status == 200
            && serde_json::from_str::<OrderView>(&r.body).is_ok_and(|view| view.handled == 1)
    })
    .await;
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(
        serde_json::from_str::<OrderView>(&reply.body).unwrap(),
        OrderView { id: 7, handled: 1 }
    );
    // The user's router answers its own rejections, and unknown paths are 404.
    assert_eq!(get(addr, "/orders/seven").await.unwrap().status, 400);
    assert_eq!(get(addr, "/nowhere").await.unwrap().status, 404);
    // The server's own endpoints still answer.
    let scrape = get(addr, "/metrics").await.unwrap();
    assert_eq!(scrape.status, 200, "{scrape:?}");
    assert_eq!(scrape.header("content-type"), Some(PROMETHEUS_CONTENT_TYPE));
    assert!(
        scrape
            .body
            .contains(r#"asyncworker_messages_settled_total{route="orders",action="ack"} 1"#),
        "{}",
        scrape.body
    );
    let ready = get_until(addr, "/health/ready", |r| r.status == 200).await;
    assert_eq!(
        ready.body,
        r#"{"ready":true,"routes":[{"name":"orders","ready":true}]}"#
    );

    // Stopped: the user's routes are gone with the app, like the rest.
    stop.trigger();
    assert_stopped("app", app, addr, "/orders/7").await;
}

#[tokio::test(flavor = "current_thread")]
async fn the_servers_own_paths_win_over_user_routes_and_everything_else_is_the_users() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let queue = MemoryQueue::new();
    let mut app = App::new();
    app.handle_signals(false);
    app.route("drain", queue.source(), handle);
    let health = app.health();

    // A user router that claims the server's paths, one more under /health, and a fallback.
    let routes = Router::new()
        .route(
            "/metrics",
            routing::get(|| async { "the user's metrics" }).post(|| async { "posted" }),
        )
        .route(
            "/health/live",
            routing::get(|| async { "the user's liveness" }),
        )
        .route(
            "/health/{probe}",
            routing::get(|Path(probe): Path<String>| async move { probe }),
        )
        .fallback(|| async { (StatusCode::IM_A_TEAPOT, "the user's fallback") });
    let server = Server::bind("127.0.0.1:0")
        .expect("bind")
        .routes(routes.clone())
        .metrics(recorder.handle())
        .health(health.clone());
    let addr = server.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));

    // The server's paths are its own, whatever the method: the user's never see them.
    let scrape = get(addr, "/metrics").await.unwrap();
    assert_eq!(scrape.header("content-type"), Some(PROMETHEUS_CONTENT_TYPE));
    assert_eq!(request(addr, "POST", "/metrics").await.unwrap().status, 405);
    let live = get(addr, "/health/live").await.unwrap();
    assert!(live.body.starts_with(r#"{"live":"#), "{live:?}");
    // Every other path is the user's, their fallback included.
    let probe = get(addr, "/health/deep").await.unwrap();
    assert_eq!((probe.status, probe.body.as_str()), (200, "deep"));
    let other = get(addr, "/other").await.unwrap();
    assert_eq!(
        (other.status, other.body.as_str()),
        (418, "the user's fallback")
    );
    stop.send(()).unwrap();
    served.await.unwrap().unwrap();

    // A path the server does not serve (no metrics handle given) is the user's.
    let server = Server::bind("127.0.0.1:0")
        .expect("bind")
        .health(health)
        .routes(routes);
    let addr = server.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));
    let metrics = get(addr, "/metrics").await.unwrap();
    assert_eq!(
        (metrics.status, metrics.body.as_str()),
        (200, "the user's metrics")
    );
    let live = get(addr, "/health/live").await.unwrap();
    assert!(live.body.starts_with(r#"{"live":"#), "{live:?}");
    stop.send(()).unwrap();
    served.await.unwrap().unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn routes_given_twice_are_merged() {
    let server = Server::bind("127.0.0.1:0")
        .expect("bind")
        .routes(Router::new().route("/a", routing::get(|| async { "a" })))
        .routes(Router::new().route("/b", routing::get(|| async { "b" })));
    let addr = server.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));
    assert_eq!(get(addr, "/a").await.unwrap().body, "a");
    assert_eq!(get(addr, "/b").await.unwrap().body, "b");
    assert_eq!(get(addr, "/health/live").await.unwrap().status, 404);
    stop.send(()).unwrap();
    served.await.unwrap().unwrap();
}
