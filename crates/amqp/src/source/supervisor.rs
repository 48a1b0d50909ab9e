//! The route's background task: connects, reconnects, runs one queue task per queue.
//!
//! Every reconnect waits the route's backoff, which grows with each failure in a row: a
//! failed connection attempt, or a connection lost before the route was ready (every queue
//! consuming) for [`HEALTHY_AFTER`]. Only a connection that stayed healthy that long starts
//! the backoff over, so a broker that closes each connection right after it was made (a user
//! allowed no channel, say) is not hammered.
//!
//! With several endpoints ([`AmqpConfig::endpoints`]) each attempt goes to the next one
//! ([`Failover`]): a failed attempt moves on to the next endpoint at once, and the backoff
//! is waited only once every endpoint has failed in turn; the reconnect after a lost
//! connection goes to the endpoint after the lost one.

use std::sync::Arc;
use std::time::Duration;

use asyncworker_core::FailureStreak;
use futures::StreamExt;
use lapin::{Connection, Event};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::Callback;
use crate::config::{AmqpConfig, Failover};
use crate::consumer::{HEALTHY_AFTER, Item, QueueTask, RouteShared};
use crate::error::{AmqpError, Endpoint};
use crate::message::QueueMeta;

/// How often the supervisor checks the connection's state, besides lapin's events.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);
/// How long a graceful connection close may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The route's background task: connects, reconnects, runs the queue tasks.
pub(super) struct Supervisor {
    pub(super) shared: Arc<RouteShared>,
    pub(super) config: AmqpConfig,
    pub(super) queues: Vec<Arc<QueueMeta>>,
    pub(super) callback: Option<Callback>,
    /// Dropped as soon as the source stops, so the stream ends while handed-out messages are
    /// still being settled.
    pub(super) out: Option<mpsc::UnboundedSender<Item>>,
    pub(super) shutdown: asyncworker_core::Shutdown,
}

enum Generation {
    Lost,
    Stopped,
}

impl Supervisor {
    pub(super) async fn run(self) {
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

    /// `asyncworker_amqp_connection_state{route, host, port, vhost}`: 1 for the endpoint
    /// `connected` names, 0 for the others.
    fn gauge(&self, connected: Option<usize>) {
        let vhost = self.shared.endpoint.vhost();
        for index in 0..self.config.endpoint_count() {
            let e = self.config.endpoint_at(index, vhost);
            metrics::gauge!(
                "asyncworker_amqp_connection_state",
                "route" => self.shared.route.to_string(),
                "host" => e.host().to_owned(),
                "port" => e.port().to_string(),
                "vhost" => e.vhost().to_owned(),
            )
            .set(if connected == Some(index) { 1.0 } else { 0.0 });
        }
    }

    async fn supervise(mut self) {
        let stop = self.shared.stop.clone();
        let endpoint = self.shared.endpoint.clone();
        let host = endpoint.host().to_owned();
        // Connection attempts of this outage (for the callback and the give-up rule): a
        // successful connect ends the outage.
        let mut attempt = 0u32;
        // Failures in a row (failed attempts and connections lost before the route was
        // ready for HEALTHY_AFTER), for the backoff: a connection lost right after it was
        // made does not end the backoff.
        let mut failures = FailureStreak::new(HEALTHY_AFTER);
        // Connections lost in a row before the route was ready for HEALTHY_AFTER.
        let mut quick_losses = 0u32;
        let mut reconnecting = false;
        // Where each attempt goes; failed attempts in a row since every endpoint was last
        // tried (the backoff is waited when all have failed in turn).
        let failover = Failover::new();
        let mut failed_in_round = 0usize;
        self.gauge(None);
        loop {
            if stop.is_cancelled() {
                break;
            }
            attempt = attempt.saturating_add(1);
            if reconnecting {
                metrics::counter!("asyncworker_amqp_reconnects_total", "host" => host.clone())
                    .increment(1);
            }
            let target = self
                .config
                .endpoint_at(failover.next(&self.config), endpoint.vhost());
            tracing::debug!(route = %self.shared.route, endpoint = %target, attempt, "connecting");
            let connected = tokio::select! {
                biased;
                () = stop.cancelled() => break,
                c = failover.attempt(&self.config, endpoint.vhost(), attempt) => c,
            };
            let (conn, used) = match connected {
                Ok(connected) => connected,
                Err(error) => {
                    let tried = error.endpoint().clone();
                    reconnecting = true;
                    metrics::counter!(
                        "asyncworker_amqp_connection_failures_total",
                        "host" => tried.host().to_owned(),
                        "kind" => error.kind(),
                    )
                    .increment(1);
                    if let Some(callback) = &self.callback {
                        (callback.0)(&error, attempt);
                    }
                    let next = attempt.saturating_add(1);
                    if self.shared.max_attempts.is_some_and(|max| next > max) {
                        tracing::error!(
                            route = %self.shared.route,
                            host = %tried.host(),
                            port = tried.port(),
                            vhost = %tried.vhost(),
                            attempt,
                            error = &error as &dyn std::error::Error,
                            "cannot connect; giving up",
                        );
                        self.emit(Err(error.clone()));
                        self.emit(Err(AmqpError::GaveUp {
                            endpoint: tried,
                            attempts: attempt,
                            last: Box::new(error),
                        }));
                        break;
                    }
                    failed_in_round += 1;
                    if failed_in_round < self.config.endpoint_count() {
                        tracing::warn!(
                            route = %self.shared.route,
                            host = %tried.host(),
                            port = tried.port(),
                            vhost = %tried.vhost(),
                            attempt,
                            error = &error as &dyn std::error::Error,
                            "cannot connect; trying the next endpoint",
                        );
                        self.emit(Err(error));
                        continue;
                    }
                    failed_in_round = 0;
                    let delay = self.shared.backoff.delay(failures.failed());
                    tracing::warn!(
                        route = %self.shared.route,
                        host = %tried.host(),
                        port = tried.port(),
                        vhost = %tried.vhost(),
                        attempt,
                        retry_in = ?delay,
                        error = &error as &dyn std::error::Error,
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
            let connected_to = self.config.endpoint_at(used, endpoint.vhost());
            tracing::info!(
                route = %self.shared.route,
                host = %connected_to.host(),
                port = connected_to.port(),
                vhost = %connected_to.vhost(),
                heartbeat = conn.configuration().heartbeat(),
                "connected",
            );
            attempt = 0;
            failed_in_round = 0;
            reconnecting = true;
            self.shared.take_loss();
            self.gauge(Some(used));
            match self
                .run_connection(Arc::new(conn), &connected_to, &mut failures)
                .await
            {
                Generation::Stopped => break,
                Generation::Lost => {
                    self.gauge(None);
                    let reason = self
                        .shared
                        .take_loss()
                        .unwrap_or_else(|| "the connection closed".to_owned());
                    if failures.in_a_row() == 0 {
                        quick_losses = 0;
                    }
                    quick_losses = quick_losses.saturating_add(1);
                    let delay = self.shared.backoff.delay(failures.failed());
                    if quick_losses == 1 {
                        tracing::warn!(
                            route = %self.shared.route,
                            host = %connected_to.host(),
                            port = connected_to.port(),
                            vhost = %connected_to.vhost(),
                            %reason,
                            retry_in = ?delay,
                            "connection lost; reconnecting",
                        );
                    } else {
                        tracing::warn!(
                            route = %self.shared.route,
                            host = %connected_to.host(),
                            port = connected_to.port(),
                            vhost = %connected_to.vhost(),
                            %reason,
                            lost_in_a_row = quick_losses,
                            retry_in = ?delay,
                            "connection lost {quick_losses} times in a row shortly after \
                             connecting (before every queue was consumed for {HEALTHY_AFTER:?}); \
                             reconnecting",
                        );
                    }
                    let error = AmqpError::ConnectionLost {
                        endpoint: connected_to,
                        reason,
                    };
                    self.emit(Err(error));
                    tokio::select! {
                        biased;
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        self.shared.consuming.not_ready();
        self.gauge(None);
        self.shared.tail.close().await;
        tracing::debug!(route = %self.shared.route, "AMQP source stopped");
    }

    /// Run the queue tasks on `conn` until it is lost or the source stops; tell `failures`
    /// whether the route is ready meanwhile.
    async fn run_connection(
        &mut self,
        conn: Arc<Connection>,
        endpoint: &Endpoint,
        failures: &mut FailureStreak,
    ) -> Generation {
        let stop = &self.shared.stop;
        let lost = CancellationToken::new();
        let events = tokio::spawn(watch_events(
            conn.clone(),
            lost.clone(),
            self.shared.clone(),
            endpoint.clone(),
        ));
        let mut tasks = JoinSet::new();
        for queue in &self.queues {
            tasks.spawn(
                QueueTask {
                    shared: self.shared.clone(),
                    queue: queue.clone(),
                    conn: conn.clone(),
                    endpoint: endpoint.clone(),
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
                    if self.shared.consuming.ready() {
                        failures.healthy();
                    } else {
                        failures.unhealthy();
                    }
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
        self.shared.consuming.not_ready();
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
async fn watch_events(
    conn: Arc<Connection>,
    lost: CancellationToken,
    shared: Arc<RouteShared>,
    endpoint: Endpoint,
) {
    let mut events = conn.events_listener();
    let watch = BlockWatch::new(&shared.route, &endpoint, "consuming");
    loop {
        let event = tokio::select! {
            () = lost.cancelled() => break,
            e = events.next() => match e { Some(e) => e, None => break },
        };
        match event {
            Event::ConnectionBlocked(_) | Event::ConnectionUnblocked => watch.event(&event),
            Event::Error(error) if !conn.status().connected() => {
                tracing::debug!(route = %shared.route, %error, "connection error");
                shared.note_loss(|| error.to_string());
                lost.cancel();
            }
            _ => {}
        }
    }
}

/// The blocked and unblocked events of one of a route's connections (the consuming one, or
/// the one of its requeue-tail copies): logged, counted in
/// `asyncworker_amqp_connection_blocked_total{host}` and
/// `asyncworker_amqp_connection_unblocked_total{host}`, and shown by
/// `asyncworker_amqp_connection_blocked{route, host}`.
pub(crate) struct BlockWatch {
    route: Arc<str>,
    host: String,
    vhost: String,
    connection: &'static str,
    gauge: metrics::Gauge,
}

impl BlockWatch {
    /// Watch a connection of `route` to `endpoint`; `connection` says which, for logs.
    pub(crate) fn new(route: &Arc<str>, endpoint: &Endpoint, connection: &'static str) -> Self {
        let host = endpoint.host().to_owned();
        let gauge = metrics::gauge!(
            "asyncworker_amqp_connection_blocked",
            "route" => route.to_string(),
            "host" => host.clone(),
        );
        gauge.set(0.0);
        BlockWatch {
            route: route.clone(),
            host,
            vhost: endpoint.vhost().to_owned(),
            connection,
            gauge,
        }
    }

    /// Record `event` if it is a block or an unblock.
    pub(crate) fn event(&self, event: &Event) {
        match event {
            Event::ConnectionBlocked(reason) => {
                tracing::warn!(
                    route = %self.route,
                    host = %self.host,
                    vhost = %self.vhost,
                    connection = self.connection,
                    %reason,
                    "the broker blocked the connection (resource alarm): publishing stalls",
                );
                metrics::counter!("asyncworker_amqp_connection_blocked_total", "host" => self.host.clone())
                    .increment(1);
                self.gauge.set(1.0);
            }
            Event::ConnectionUnblocked => {
                tracing::info!(
                    route = %self.route,
                    host = %self.host,
                    vhost = %self.vhost,
                    connection = self.connection,
                    "the broker unblocked the connection",
                );
                metrics::counter!("asyncworker_amqp_connection_unblocked_total", "host" => self.host.clone())
                    .increment(1);
                self.gauge.set(0.0);
            }
            _ => {}
        }
    }
}

impl Drop for BlockWatch {
    fn drop(&mut self) {
        self.gauge.set(0.0);
    }
}
