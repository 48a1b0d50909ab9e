//! A real HTTP server (axum on 127.0.0.1:0) serving scripted event streams, and helpers to
//! read what a source makes of them.
//!
//! No paused time here: with real sockets, tokio's auto-advance would fire timers (the idle
//! timeout, reqwest's, the backoff) whenever the runtime waits on I/O. These tests run in
//! real time with fast, jitter-free backoffs; they wait for conditions (gates the test opens,
//! [`eventually`], [`PATIENCE`] as a guard) and the only timings they assert are lower bounds
//! (a `Retry-After` was waited for), which a correct implementation cannot miss. The
//! reconnect schedule itself is unit-tested without a clock (`stream::tests`).
#![allow(dead_code, unreachable_pub)]

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use asyncworker_core::{Backoff, Jitter, Message, Shutdown, Source, SourceContext};
use asyncworker_sse::{
    MemoryCheckpoints, SseConfig, SseConfigBuilder, SseError, SseEvent, SseSource, SseStream,
};
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How long any wait in a test may take before it fails (a guard, not a timing assertion).
pub const PATIENCE: Duration = Duration::from_secs(20);

/// One piece of a scripted body.
#[derive(Clone)]
pub enum Part {
    /// Write these bytes (one chunk).
    Bytes(Bytes),
    /// Wait until the gate is opened.
    Gate(Gate),
    /// Pause for a while.
    Sleep(Duration),
    /// Never send anything more (the connection stays open).
    Hang,
    /// Break the connection (an I/O error mid-body).
    Abort,
}

/// Text as one chunk.
pub fn text(s: &str) -> Part {
    Part::Bytes(Bytes::copy_from_slice(s.as_bytes()))
}

/// A gate the test opens; a body waiting on it sends nothing until then.
#[derive(Clone, Default)]
pub struct Gate(Arc<(Notify, Mutex<bool>)>);

impl Gate {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn open(&self) {
        *self.0.1.lock().unwrap() = true;
        self.0.0.notify_waiters();
    }
    async fn wait(&self) {
        loop {
            let notified = self.0.0.notified();
            if *self.0.1.lock().unwrap() {
                return;
            }
            notified.await;
        }
    }
}

/// What the server answers to one request.
#[derive(Clone)]
pub enum Reply {
    /// A `text/event-stream` (or another content type) body made of parts.
    Stream {
        status: u16,
        content_type: &'static str,
        parts: Vec<Part>,
    },
    /// A plain status with headers and a short body.
    Status {
        status: u16,
        headers: Vec<(&'static str, &'static str)>,
    },
}

/// An event stream made of these parts.
pub fn stream(parts: Vec<Part>) -> Reply {
    Reply::Stream {
        status: 200,
        content_type: "text/event-stream",
        parts,
    }
}

pub fn status(status: u16) -> Reply {
    Reply::Status {
        status,
        headers: Vec::new(),
    }
}

/// A request as the server received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub at: Instant,
}

impl Received {
    pub fn last_event_id(&self) -> Option<&str> {
        self.headers
            .get("last-event-id")
            .map(|v| v.to_str().unwrap())
    }
}

#[derive(Default)]
struct State {
    scripts: Mutex<HashMap<String, VecDeque<Reply>>>,
    received: Mutex<Vec<Received>>,
    arrived: Notify,
}

/// The scripted server. Replies are used in order, per path; once a path's script is used
/// up, further requests get a stream that hangs.
#[derive(Clone)]
pub struct Server {
    pub base: String,
    state: Arc<State>,
}

impl Server {
    pub async fn start() -> Self {
        let state = Arc::new(State::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app_state = Arc::clone(&state);
        let app = axum::Router::new().fallback(move |request: Request| {
            let state = Arc::clone(&app_state);
            async move { Ok::<_, Infallible>(serve(state, request)) }
        });
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Server {
            base: format!("http://{addr}"),
            state,
        }
    }

    /// Add replies to `path`'s script.
    pub fn script(&self, path: &str, replies: impl IntoIterator<Item = Reply>) {
        self.state
            .scripts
            .lock()
            .unwrap()
            .entry(path.to_owned())
            .or_default()
            .extend(replies);
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// Wait until at least `n` requests have arrived; returns them all.
    pub async fn wait_requests(&self, n: usize) -> Vec<Received> {
        tokio::time::timeout(PATIENCE, async {
            loop {
                let notified = self.state.arrived.notified();
                let received = self.received();
                if received.len() >= n {
                    return received;
                }
                notified.await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{n} requests never arrived: {:?}", self.received()))
    }

    /// A config for this server with fast, jitter-free reconnects.
    pub fn config(&self) -> SseConfigBuilder {
        SseConfig::builder(self.base.clone())
            .backoff(fast_backoff())
            .client_error_delay(Duration::from_millis(200))
            .idle_timeout(Duration::from_secs(30))
    }
}

impl Server {
    /// A source reading `path` with [`Server::config`], its checkpoints in a memory store the
    /// test can read.
    pub fn source_with_memory_checkpoints(&self, path: &str) -> (SseSource, MemoryCheckpoints) {
        let store = MemoryCheckpoints::new();
        let config = self.config().build().unwrap();
        let source = SseSource::new(&config, [path])
            .unwrap()
            .checkpoint_store(store.clone());
        (source, store)
    }
}

pub fn fast_backoff() -> Backoff {
    Backoff::builder()
        .initial_delay(Duration::from_millis(5))
        .max_delay(Duration::from_millis(20))
        .jitter(Jitter::None)
        .build()
        .unwrap()
}

fn serve(state: Arc<State>, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    state.received.lock().unwrap().push(Received {
        path: path.clone(),
        query: request.uri().query().map(str::to_owned),
        headers: request.headers().clone(),
        at: Instant::now(),
    });
    state.arrived.notify_waiters();
    let reply = state
        .scripts
        .lock()
        .unwrap()
        .get_mut(&path)
        .and_then(VecDeque::pop_front)
        .unwrap_or_else(|| stream(vec![Part::Hang]));
    match reply {
        Reply::Status { status, headers } => {
            let mut response = Response::builder().status(StatusCode::from_u16(status).unwrap());
            for (name, value) in headers {
                response = response.header(name, value);
            }
            response.body(Body::from("no stream here")).unwrap()
        }
        Reply::Stream {
            status,
            content_type,
            parts,
        } => {
            let body = futures::stream::unfold(VecDeque::from(parts), |mut parts| async move {
                loop {
                    match parts.pop_front()? {
                        Part::Bytes(bytes) => return Some((Ok(bytes), parts)),
                        Part::Gate(gate) => gate.wait().await,
                        Part::Sleep(d) => tokio::time::sleep(d).await,
                        Part::Hang => futures::future::pending::<()>().await,
                        Part::Abort => {
                            return Some((Err(std::io::Error::other("scripted abort")), parts));
                        }
                    }
                }
            });
            Response::builder()
                .status(StatusCode::from_u16(status).unwrap())
                .header("content-type", content_type)
                .body(Body::from_stream(body))
                .unwrap()
        }
    }
}

/// A source's stream, driven directly (no worker), with its shutdown and readiness.
pub struct Direct {
    pub stream: SseStream,
    pub cx: SourceContext,
    pub shutdown: Shutdown,
}

impl Direct {
    pub fn start(source: SseSource) -> Self {
        let shutdown = Shutdown::new();
        let cx = SourceContext::new("r", shutdown.clone());
        let stream = source.into_stream(cx.clone());
        Direct {
            stream,
            cx,
            shutdown,
        }
    }

    /// The next item.
    pub async fn next(&mut self) -> Option<Result<SseEvent, SseError>> {
        tokio::time::timeout(PATIENCE, self.stream.next())
            .await
            .expect("the stream produced nothing in time")
    }

    /// The next event, failing on an error.
    pub async fn event(&mut self) -> SseEvent {
        match self.next().await {
            Some(Ok(event)) => event,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    /// The next event, acknowledged at once (an event dropped unsettled is requeued and
    /// would be handed out again).
    pub async fn acked(&mut self) -> SseEvent {
        let event = self.event().await;
        event
            .settlement()
            .settle(asyncworker_core::Action::Ack)
            .unwrap();
        event
    }

    /// The next error, failing on an event.
    pub async fn error(&mut self) -> SseError {
        match self.next().await {
            Some(Err(error)) => error,
            other => panic!("expected an error, got {other:?}"),
        }
    }
}

/// Wait until `f` holds (polling every few milliseconds), or fail after [`PATIENCE`].
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !f() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// (name, id, data) of an event.
pub fn triple(event: &SseEvent) -> (String, Option<String>, String) {
    (
        event.name().to_owned(),
        event.id().map(str::to_owned),
        event.data().to_owned(),
    )
}
