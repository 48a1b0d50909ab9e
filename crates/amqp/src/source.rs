//! [`AmqpSource`]: a route's supply of deliveries from one or more RabbitMQ queues.

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use asyncworker_core::{Action, Error, Source, SourceContext};
use futures::{Stream, StreamExt};
use lapin::{Connection, Event};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{AmqpConfig, Connections, check_short_string};
use crate::consumer::{Item, QueueTask, RouteShared};
use crate::error::AmqpError;
use crate::message::{AmqpMessage, QueueMeta};

/// How often the supervisor checks the connection's state, besides lapin's events.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);
/// How long a graceful connection close may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

type Callback = Arc<dyn Fn(&AmqpError, u32) + Send + Sync>;

/// Consumes a route's queues from RabbitMQ: an [`asyncworker_core::Source`] of
/// [`AmqpMessage`]s.
///
/// Built with [`AmqpSource::builder`] (or [`Connections::source`]) and started by the runtime
/// with [`Source::into_stream`]. The stream:
///
/// - opens one connection for the route (named `asyncworker route <route>` on the broker
///   unless the configuration has a connection name) and, on it, **one channel per queue**,
///   each with `basic.qos(prefetch)` and a consumer. A queue that cannot be consumed
///   (missing, access refused) yields an [`AmqpError`] naming it and is retried with backoff,
///   while the route's other queues keep being consumed;
/// - sets the route's [`Readiness`](asyncworker_core::Readiness) while every queue is being
///   consumed;
/// - reconnects after a connection failure with the configuration's [`Backoff`]
///   (exponential, capped, jittered), calling the [`on_connection_error`] callback with the
///   error and the attempt number (which restarts at 1 for each outage), then re-applies the
///   QoS and consumes every queue again. Settlements of messages delivered before the outage
///   return [`SettleError::ChannelClosed`], are logged and counted, and are never sent on the
///   new connection;
/// - on shutdown, cancels its consumers (`basic.cancel`) and ends, but keeps each channel
///   open until every message it handed out has been settled; then closes the channels and
///   the connection.
///
/// A message marked [`Action::RequeueTail`] is copied to the tail of its queue (default
/// exchange, routing key = queue name, same properties and headers, the
/// [`REQUEUE_COUNT_HEADER`](crate::REQUEUE_COUNT_HEADER) incremented) on a confirm-mode
/// channel of the same connection; the original is acked only once the broker confirmed the
/// copy. When the copy cannot be published (unroutable, nacked, not confirmed within 30 s), the
/// original is requeued instead: nothing is lost. Past the
/// [`requeue_tail_cap`](AmqpSourceBuilder::requeue_tail_cap), the message is rejected
/// (dead-lettered) instead.
///
/// [`max_in_flight`](Source::max_in_flight) is the prefetch, so the core's Bulk layer clamps
/// the batch size to it: a batch can always fill. (With several queues the route may hold up
/// to prefetch × queues messages.)
///
/// # Metrics
///
/// `asyncworker_amqp_connection_state{route, host, vhost}` (1 connected, 0 not),
/// `asyncworker_amqp_reconnects_total{host}` (connection attempts after a failure or a lost
/// connection), `asyncworker_amqp_connection_failures_total{host, kind}`,
/// `asyncworker_amqp_connection_blocked_total{host}` and
/// `asyncworker_amqp_connection_blocked{route, host}`,
/// `asyncworker_amqp_consume_failures_total{queue, kind}`,
/// `asyncworker_amqp_settlements_total{queue, action}` (settlements requested on a live
/// channel), `asyncworker_amqp_settle_failures_total{queue, action, reason}`,
/// `asyncworker_amqp_requeue_tail_total{queue, outcome}`,
/// `asyncworker_amqp_decode_failures_total{queue}`.
///
/// ```no_run
/// use asyncworker_amqp::{AmqpConfig, AmqpSource};
/// use asyncworker_core::Action;
///
/// # fn main() -> Result<(), asyncworker_core::Error> {
/// let config = AmqpConfig::from_url("amqp://guest:guest@127.0.0.1:5672/%2f")?;
/// let source = AmqpSource::builder(config, ["asgard/counts", "asgard/counts/errors"])
///     .vhost("/")
///     .on_decode_error(Action::Reject)
///     .requeue_tail_cap(5)
///     .on_connection_error(|error, attempt| eprintln!("attempt {attempt}: {error}"))
///     .build()?;
/// # let _ = source;
/// # Ok(())
/// # }
/// ```
///
/// [`Backoff`]: asyncworker_core::Backoff
/// [`on_connection_error`]: AmqpSourceBuilder::on_connection_error
/// [`SettleError::ChannelClosed`]: asyncworker_core::SettleError::ChannelClosed
pub struct AmqpSource {
    config: AmqpConfig,
    vhost: String,
    queues: Vec<String>,
    on_decode_error: Action,
    requeue_tail_cap: Option<u64>,
    on_connection_error: Option<Callback>,
}

impl AmqpSource {
    /// A builder for a source consuming `queues` with `config`.
    pub fn builder<I, Q>(config: AmqpConfig, queues: I) -> AmqpSourceBuilder
    where
        I: IntoIterator<Item = Q>,
        Q: Into<String>,
    {
        AmqpSourceBuilder {
            vhost: None,
            queues: queues.into_iter().map(Into::into).collect(),
            config,
            on_decode_error: Action::Reject,
            requeue_tail_cap: None,
            on_connection_error: None,
        }
    }

    /// The queues this source consumes.
    pub fn queues(&self) -> &[String] {
        &self.queues
    }

    /// The virtual host it consumes them on.
    pub fn vhost(&self) -> &str {
        &self.vhost
    }

    /// Its connection configuration.
    pub fn config(&self) -> &AmqpConfig {
        &self.config
    }
}

impl fmt::Debug for AmqpSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpSource")
            .field("config", &self.config)
            .field("vhost", &self.vhost)
            .field("queues", &self.queues)
            .field("on_decode_error", &self.on_decode_error)
            .field("requeue_tail_cap", &self.requeue_tail_cap)
            .field("on_connection_error", &self.on_connection_error.is_some())
            .finish()
    }
}

/// Builds an [`AmqpSource`]; checks happen in [`AmqpSourceBuilder::build`].
#[must_use = "a builder does nothing until .build() is called"]
pub struct AmqpSourceBuilder {
    config: AmqpConfig,
    vhost: Option<String>,
    queues: Vec<String>,
    on_decode_error: Action,
    requeue_tail_cap: Option<u64>,
    on_connection_error: Option<Callback>,
}

impl fmt::Debug for AmqpSourceBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpSourceBuilder")
            .field("config", &self.config)
            .field("vhost", &self.vhost)
            .field("queues", &self.queues)
            .finish_non_exhaustive()
    }
}

impl AmqpSourceBuilder {
    /// Consume on this virtual host instead of the configuration's.
    pub fn vhost(mut self, vhost: impl Into<String>) -> Self {
        self.vhost = Some(vhost.into());
        self
    }

    /// The action [`AmqpMessage::decode_json`] marks a message with when its body is not the
    /// expected JSON. Default [`Action::Reject`]: dropped or dead-lettered, never requeued in
    /// a loop.
    pub fn on_decode_error(mut self, action: Action) -> Self {
        self.on_decode_error = action;
        self
    }

    /// After this many [`Action::RequeueTail`] round trips (counted in the
    /// [`REQUEUE_COUNT_HEADER`](crate::REQUEUE_COUNT_HEADER) header), a message marked
    /// `RequeueTail` is rejected instead: dead-lettered when the queue has a dead-letter
    /// exchange, dropped otherwise. No cap by default.
    pub fn requeue_tail_cap(mut self, cap: u64) -> Self {
        self.requeue_tail_cap = Some(cap);
        self
    }

    /// Call `callback(error, attempt)` on each failed connection attempt. `attempt` is 1 for
    /// the first failure of an outage and restarts at 1 after the connection comes back.
    ///
    /// The callback runs on the source's task: keep it short (spawn for anything slow).
    pub fn on_connection_error<F>(mut self, callback: F) -> Self
    where
        F: Fn(&AmqpError, u32) + Send + Sync + 'static,
    {
        self.on_connection_error = Some(Arc::new(callback));
        self
    }

    /// Check and build.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when there is no queue, a queue name is empty, repeated or longer
    /// than 255 bytes, or the vhost is too long.
    pub fn build(self) -> Result<AmqpSource, Error> {
        if self.queues.is_empty() {
            return Err(Error::config("an AMQP route needs at least one queue"));
        }
        for (i, q) in self.queues.iter().enumerate() {
            if q.is_empty() {
                return Err(Error::config("an AMQP queue name must not be empty"));
            }
            check_short_string(&format!("queue name {q:?}"), q)?;
            if self.queues[..i].contains(q) {
                return Err(Error::config(format!(
                    "queue {q:?} is listed twice in one route"
                )));
            }
        }
        let vhost = self.vhost.unwrap_or_else(|| self.config.vhost().to_owned());
        check_short_string("vhost", &vhost)?;
        Ok(AmqpSource {
            config: self.config,
            vhost,
            queues: self.queues,
            on_decode_error: self.on_decode_error,
            requeue_tail_cap: self.requeue_tail_cap,
            on_connection_error: self.on_connection_error,
        })
    }
}

impl Connections {
    /// A source builder for `route`, consuming `queues` with the connection named `choice`, or
    /// with the only one registered.
    ///
    /// # Errors
    ///
    /// As [`Connections::select`].
    pub fn source<I, Q>(
        &self,
        route: &str,
        choice: Option<&str>,
        queues: I,
    ) -> Result<AmqpSourceBuilder, Error>
    where
        I: IntoIterator<Item = Q>,
        Q: Into<String>,
    {
        let config = self.select(route, choice)?.clone();
        Ok(AmqpSource::builder(config, queues))
    }
}

impl Source for AmqpSource {
    type Message = AmqpMessage;
    type Error = AmqpError;
    type Stream = AmqpStream;

    fn max_in_flight(&self) -> Option<usize> {
        Some(usize::from(self.config.prefetch()))
    }

    fn into_stream(self, cx: SourceContext) -> AmqpStream {
        let stop = CancellationToken::new();
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(RouteShared {
            route: cx.route().into(),
            endpoint: self.config.endpoint(&self.vhost),
            prefetch: self.config.prefetch(),
            backoff: *self.config.reconnect(),
            max_attempts: self.config.max_reconnect_attempts(),
            requeue_tail_cap: self.requeue_tail_cap,
            stop: stop.clone(),
            readiness: cx.readiness().clone(),
            consuming: AtomicUsize::new(0),
            queue_count: self.queues.len(),
            channels_opened: AtomicU64::new(0),
            loss_reason: Mutex::new(None),
        });
        let queues = self
            .queues
            .iter()
            .map(|name| {
                Arc::new(QueueMeta {
                    name: name.as_str().into(),
                    route: shared.route.clone(),
                    on_decode_error: self.on_decode_error,
                })
            })
            .collect();
        // Name the connection after the route unless the configuration names it, so the
        // broker's connection list says which route each connection serves.
        let config = self
            .config
            .named_if_unnamed(&format!("asyncworker route {}", cx.route()));
        let supervisor = Supervisor {
            shared,
            config,
            queues,
            callback: self.on_connection_error,
            out: Some(tx),
            shutdown: cx.shutdown().clone(),
        };
        AmqpStream {
            rx,
            stop,
            pending: Some(supervisor),
            cx,
        }
    }
}

/// The stream of an [`AmqpSource`]: messages, and recoverable errors (logged by the source
/// too). Its background task starts on the first poll, so the stream can be created outside a
/// Tokio runtime but must be polled inside one.
///
/// Dropping the stream stops the source as a shutdown would.
pub struct AmqpStream {
    rx: mpsc::UnboundedReceiver<Item>,
    stop: CancellationToken,
    pending: Option<Supervisor>,
    /// Spawns the supervisor, so the runtime waits for its last settlements and close.
    cx: SourceContext,
}

impl fmt::Debug for AmqpStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpStream")
            .field("started", &self.pending.is_none())
            .field("stopping", &self.stop.is_cancelled())
            .finish()
    }
}

impl Stream for AmqpStream {
    type Item = Result<AmqpMessage, AmqpError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(supervisor) = self.pending.take() {
            self.cx.spawn(supervisor.run());
        }
        loop {
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(msg))) => {
                    if msg.is_stale() {
                        // Its channel died before the message was handed out: the broker
                        // redelivers it, so handling it now would only duplicate work.
                        msg.discard();
                        continue;
                    }
                    return Poll::Ready(Some(Ok(msg)));
                }
                other => return other,
            }
        }
    }
}

impl Drop for AmqpStream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The route's background task: connects, reconnects, runs the queue tasks.
struct Supervisor {
    shared: Arc<RouteShared>,
    config: AmqpConfig,
    queues: Vec<Arc<QueueMeta>>,
    callback: Option<Callback>,
    /// Dropped as soon as the source stops, so the stream ends while handed-out messages are
    /// still being settled.
    out: Option<mpsc::UnboundedSender<Item>>,
    shutdown: asyncworker_core::Shutdown,
}

enum Generation {
    Lost,
    Stopped,
}

impl Supervisor {
    async fn run(self) {
        let stop = self.shared.stop.clone();
        let shutdown = self.shutdown.clone();
        // The runtime's shutdown stops the source; so does dropping the stream.
        let relay = tokio::spawn({
            let stop = stop.clone();
            async move {
                tokio::select! {
                    () = shutdown.triggered() => stop.cancel(),
                    () = stop.cancelled() => {}
                }
            }
        });
        self.supervise().await;
        relay.abort();
    }

    fn emit(&self, item: Item) {
        if let Some(out) = &self.out {
            let _ = out.send(item);
        }
    }

    fn gauge(&self, connected: bool) {
        let e = &self.shared.endpoint;
        metrics::gauge!(
            "asyncworker_amqp_connection_state",
            "route" => self.shared.route.to_string(),
            "host" => e.host().to_owned(),
            "vhost" => e.vhost().to_owned(),
        )
        .set(if connected { 1.0 } else { 0.0 });
    }

    async fn supervise(mut self) {
        let stop = self.shared.stop.clone();
        let endpoint = self.shared.endpoint.clone();
        let host = endpoint.host().to_owned();
        let mut attempt = 0u32;
        let mut reconnecting = false;
        self.gauge(false);
        loop {
            if stop.is_cancelled() {
                break;
            }
            attempt = attempt.saturating_add(1);
            if reconnecting {
                metrics::counter!("asyncworker_amqp_reconnects_total", "host" => host.clone())
                    .increment(1);
            }
            tracing::debug!(route = %self.shared.route, %endpoint, attempt, "connecting");
            let connected = tokio::select! {
                biased;
                () = stop.cancelled() => break,
                c = self.config.connect_attempt(endpoint.vhost(), attempt) => c,
            };
            let conn = match connected {
                Ok(conn) => conn,
                Err(error) => {
                    reconnecting = true;
                    metrics::counter!(
                        "asyncworker_amqp_connection_failures_total",
                        "host" => host.clone(),
                        "kind" => error.kind(),
                    )
                    .increment(1);
                    if let Some(callback) = &self.callback {
                        callback(&error, attempt);
                    }
                    let next = attempt.saturating_add(1);
                    if self.shared.max_attempts.is_some_and(|max| next > max) {
                        tracing::error!(
                            route = %self.shared.route,
                            host = %endpoint.host(),
                            vhost = %endpoint.vhost(),
                            attempt,
                            error = %error,
                            "cannot connect; giving up",
                        );
                        self.emit(Err(error.clone()));
                        self.emit(Err(AmqpError::GaveUp {
                            endpoint: endpoint.clone(),
                            attempts: attempt,
                            last: Box::new(error),
                        }));
                        break;
                    }
                    let delay = self.shared.backoff.delay(attempt);
                    tracing::warn!(
                        route = %self.shared.route,
                        host = %endpoint.host(),
                        vhost = %endpoint.vhost(),
                        attempt,
                        retry_in = ?delay,
                        error = %error,
                        "cannot connect; retrying",
                    );
                    self.emit(Err(error));
                    tokio::select! {
                        biased;
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(delay) => continue,
                    }
                }
            };
            tracing::info!(
                route = %self.shared.route,
                host = %endpoint.host(),
                port = endpoint.port(),
                vhost = %endpoint.vhost(),
                heartbeat = conn.configuration().heartbeat(),
                "connected",
            );
            attempt = 0;
            reconnecting = true;
            self.shared.take_loss();
            self.gauge(true);
            match self.run_connection(Arc::new(conn)).await {
                Generation::Stopped => break,
                Generation::Lost => {
                    self.gauge(false);
                    let reason = self
                        .shared
                        .take_loss()
                        .unwrap_or_else(|| "the connection closed".to_owned());
                    tracing::warn!(
                        route = %self.shared.route,
                        host = %endpoint.host(),
                        vhost = %endpoint.vhost(),
                        %reason,
                        "connection lost; reconnecting",
                    );
                    let error = AmqpError::ConnectionLost {
                        endpoint: endpoint.clone(),
                        reason,
                    };
                    self.emit(Err(error));
                }
            }
        }
        self.shared.readiness.set(false);
        self.gauge(false);
        tracing::debug!(route = %self.shared.route, "AMQP source stopped");
    }

    /// Run the queue tasks on `conn` until it is lost or the source stops.
    async fn run_connection(&mut self, conn: Arc<Connection>) -> Generation {
        let stop = &self.shared.stop;
        let lost = CancellationToken::new();
        let events = tokio::spawn(watch_events(
            conn.clone(),
            lost.clone(),
            self.shared.clone(),
        ));
        let mut tasks = JoinSet::new();
        for queue in &self.queues {
            tasks.spawn(
                QueueTask {
                    shared: self.shared.clone(),
                    queue: queue.clone(),
                    conn: conn.clone(),
                    connection_lost: lost.clone(),
                    out: self.out.clone(),
                }
                .run(),
            );
        }
        let outcome = loop {
            tokio::select! {
                biased;
                () = lost.cancelled() => break Generation::Lost,
                () = stop.cancelled() => break Generation::Stopped,
                () = tokio::time::sleep(WATCH_INTERVAL) => {
                    if !conn.status().connected() {
                        self.shared.note_loss(|| {
                            let status = conn.status();
                            if status.errored() {
                                "the connection failed".to_owned()
                            } else {
                                "the connection was closed".to_owned()
                            }
                        });
                        lost.cancel();
                    }
                }
            }
        };
        self.shared.readiness.set(false);
        match outcome {
            Generation::Lost => {
                // The queue tasks see `lost` and end at once.
                while tasks.join_next().await.is_some() {}
            }
            Generation::Stopped => {
                self.out = None;
                // The queue tasks cancel their consumers and wait for their handed-out
                // messages to be settled — unless the connection dies meanwhile.
                loop {
                    tokio::select! {
                        joined = tasks.join_next() => if joined.is_none() { break },
                        () = tokio::time::sleep(WATCH_INTERVAL) => {
                            if !conn.status().connected() {
                                lost.cancel();
                            }
                        }
                    }
                }
                if conn.status().connected() {
                    match tokio::time::timeout(CLOSE_TIMEOUT, conn.close(200, "OK".into())).await {
                        Ok(Ok(())) => {
                            tracing::debug!(route = %self.shared.route, "connection closed")
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(route = %self.shared.route, error = %e, "connection close failed")
                        }
                        Err(_) => {
                            tracing::debug!(route = %self.shared.route, "connection close timed out")
                        }
                    }
                }
            }
        }
        lost.cancel();
        events.abort();
        outcome
    }
}

/// Log and count the connection's events; notice its loss.
async fn watch_events(conn: Arc<Connection>, lost: CancellationToken, shared: Arc<RouteShared>) {
    let mut events = conn.events_listener();
    let host = shared.endpoint.host().to_owned();
    let blocked = metrics::gauge!(
        "asyncworker_amqp_connection_blocked",
        "route" => shared.route.to_string(),
        "host" => host.clone(),
    );
    blocked.set(0.0);
    loop {
        let event = tokio::select! {
            () = lost.cancelled() => break,
            e = events.next() => match e { Some(e) => e, None => break },
        };
        match event {
            Event::ConnectionBlocked(reason) => {
                tracing::warn!(
                    route = %shared.route,
                    host = %host,
                    vhost = %shared.endpoint.vhost(),
                    %reason,
                    "the broker blocked the connection (resource alarm): publishing stalls",
                );
                metrics::counter!("asyncworker_amqp_connection_blocked_total", "host" => host.clone())
                    .increment(1);
                blocked.set(1.0);
            }
            Event::ConnectionUnblocked => {
                tracing::info!(
                    route = %shared.route,
                    host = %host,
                    vhost = %shared.endpoint.vhost(),
                    "the broker unblocked the connection",
                );
                blocked.set(0.0);
            }
            Event::Error(error) if !conn.status().connected() => {
                tracing::debug!(route = %shared.route, %error, "connection error");
                shared.note_loss(|| error.to_string());
                lost.cancel();
            }
            _ => {}
        }
    }
    blocked.set(0.0);
}
