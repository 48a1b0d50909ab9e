//! [`Action::RequeueTail`]: a confirmed copy at the tail of the queue, then the original acked.
//!
//! Copies are published on a connection of their own ([`TailPublisher`], opened on first
//! use), never on the route's consuming connection: under a memory or disk alarm RabbitMQ
//! stops reading from a connection as soon as it publishes, and on the consuming connection
//! that would hold back the acks of every queue of the route until the alarm clears. The
//! copies of a route take turns (a [`Publisher`]'s mandatory lane): lapin hands a
//! `basic.return` to whichever confirm it resolves next, so with several mandatory copies in
//! flight on one channel a returned copy could be matched to another copy's confirm, and the
//! original of the lost copy acked.

use std::sync::Arc;
use std::time::Duration;

use asyncworker_core::Action;
use futures::StreamExt;
use lapin::types::AMQPValue;
use lapin::{Connection, Event};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use super::channel::ChannelState;
use crate::config::{AmqpConfig, Failover};
use crate::error::Endpoint;
use crate::message::{Delivery, QueueMeta, REQUEUE_COUNT_HEADER};
use crate::publish::{OutgoingMessage, PublishError, Publisher};
use crate::settle::Cmd;

/// How long a requeue-tail copy may take to be confirmed before the original is requeued
/// instead (a blocked connection would otherwise hold it, and a graceful shutdown, forever).
const REQUEUE_TAIL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long opening the copies' connection and channel may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long closing the copies' connection may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The route's publisher of requeue-tail copies, on its own connection.
pub(crate) struct TailPublisher {
    /// The route's configuration, with the connection named after the copies.
    config: AmqpConfig,
    /// Which endpoint the next connection goes to.
    failover: Failover,
    endpoint: Endpoint,
    route: Arc<str>,
    current: Mutex<Option<Open>>,
}

/// An open copies' connection, its publisher and the task watching its events.
struct Open {
    publisher: Publisher,
    connection: Arc<Connection>,
    watch: JoinHandle<()>,
}

impl TailPublisher {
    /// A publisher for the route `route`, connecting (when first needed) as `config` says to
    /// `endpoint`'s vhost, as `<connection name> (requeue-tail copies)`.
    pub(crate) fn new(config: &AmqpConfig, endpoint: Endpoint, route: Arc<str>) -> Self {
        let name = format!(
            "{} (requeue-tail copies)",
            config.connection_name().unwrap_or("asyncworker")
        );
        TailPublisher {
            config: config.renamed(&name),
            failover: Failover::new(),
            endpoint,
            route,
            current: Mutex::new(None),
        }
    }

    /// The publisher, opening its connection when there is none (or it was lost); `None`
    /// when that fails or takes longer than [`OPEN_TIMEOUT`].
    async fn publisher(&self) -> Option<Publisher> {
        let mut current = self.current.lock().await;
        if let Some(open) = current.as_ref()
            && open.connection.status().connected()
        {
            return Some(open.publisher.clone());
        }
        if let Some(stale) = current.take() {
            stale.watch.abort();
        }
        let vhost = self.endpoint.vhost();
        let opened = tokio::time::timeout(OPEN_TIMEOUT, async {
            let (connection, used) = self
                .failover
                .sweep(&self.config, vhost)
                .await
                .map_err(|e| PublishError::Connect(Box::new(e)))?;
            let connection = Arc::new(connection);
            let publisher = Publisher::builder()
                .mandatory(true)
                .timeout(REQUEUE_TAIL_TIMEOUT)
                .from_connection(connection.clone())
                .await?;
            Ok::<_, PublishError>((connection, publisher, used))
        })
        .await;
        match opened {
            Ok(Ok((connection, publisher, used))) => {
                let watch = tokio::spawn(watch_blocks(
                    connection.clone(),
                    self.route.clone(),
                    self.config.endpoint_at(used, vhost),
                ));
                *current = Some(Open {
                    publisher: publisher.clone(),
                    connection,
                    watch,
                });
                Some(publisher)
            }
            Ok(Err(error)) => {
                tracing::warn!(route = %self.route, host = %self.endpoint.host(), %vhost,
                    error = &error as &dyn std::error::Error,
                    "cannot open the connection for requeue-tail copies");
                None
            }
            Err(_) => {
                tracing::warn!(route = %self.route, host = %self.endpoint.host(), %vhost,
                    timeout = ?OPEN_TIMEOUT,
                    "the connection for requeue-tail copies did not open in time");
                None
            }
        }
    }

    /// Close the copies' connection, if open (the route stopped).
    pub(crate) async fn close(&self) {
        let Some(open) = self.current.lock().await.take() else {
            return;
        };
        let _ = open.publisher.close().await;
        if open.connection.status().connected() {
            let close = open.connection.close(200, "OK".into());
            if tokio::time::timeout(CLOSE_TIMEOUT, close).await.is_err() {
                tracing::debug!(route = %self.route, "closing the requeue-tail connection timed out");
            }
        }
        open.watch.abort();
    }
}

/// Log and count the blocked and unblocked events of the copies' connection.
async fn watch_blocks(connection: Arc<Connection>, route: Arc<str>, endpoint: Endpoint) {
    let mut events = connection.events_listener();
    let watch = crate::source::BlockWatch::new(&route, &endpoint, "requeue-tail copies");
    while let Some(event) = events.next().await {
        if let Event::ConnectionBlocked(_) | Event::ConnectionUnblocked = event {
            watch.event(&event);
        }
    }
}

impl ChannelState {
    pub(super) async fn requeue_tail(&mut self, d: Arc<Delivery>) -> Result<(), lapin::Error> {
        let count = d.requeue_count().saturating_add(1);
        if let Some(cap) = self.cap
            && count > cap
        {
            tracing::warn!(
                queue = %self.queue.name,
                delivery_tag = d.delivery_tag,
                requeues = count - 1,
                cap,
                "requeue cap reached: rejecting the message (dead-lettered when the queue has \
                 a dead-letter exchange)",
            );
            metrics::counter!(
                "asyncworker_amqp_requeue_tail_total",
                "queue" => self.queue.name.to_string(),
                "outcome" => "capped",
            )
            .increment(1);
            return self.reject(&d, Action::Reject).await;
        }
        if !self.outstanding.hold(d.delivery_tag) {
            self.unknown(&d, Action::RequeueTail);
            return Ok(());
        }
        let tx = self.tx.clone();
        let queue = self.queue.clone();
        let tail = self.tail.clone();
        // Off the channel task: opening the connection or a blocked publish must not hold up
        // the other settlements of the channel.
        tokio::spawn(async move {
            let ok = match tail.publisher().await {
                Some(publisher) => publish_copy(&publisher, &queue, &d, count).await,
                // Nothing is lost: the original goes back to (the head of) its queue.
                None => false,
            };
            metrics::counter!(
                "asyncworker_amqp_requeue_tail_total",
                "queue" => queue.name.to_string(),
                "outcome" => if ok { "published" } else { "failed" },
            )
            .increment(1);
            // A closed channel task drops this; the original is redelivered by the broker.
            let _ = tx.send(Cmd::TailDone(d, ok));
        });
        Ok(())
    }
}

/// Publish a copy of `d` to the tail of its queue, with the requeue counter set to `count`,
/// and wait for the broker's confirmation.
async fn publish_copy(publisher: &Publisher, queue: &QueueMeta, d: &Delivery, count: u64) -> bool {
    let mut headers = d.properties.headers().clone().unwrap_or_default();
    headers.insert(
        REQUEUE_COUNT_HEADER.into(),
        AMQPValue::LongLongInt(i64::try_from(count).unwrap_or(i64::MAX)),
    );
    // The original's properties as they are: persistent only when it was.
    let persistent = d.properties.delivery_mode().is_some_and(|mode| mode == 2);
    let message = OutgoingMessage::new("", &*queue.name, d.payload.clone())
        .with_properties(d.properties.clone().with_headers(headers))
        .persistent(persistent)
        .mandatory(true);
    match publisher.publish(message).await {
        Ok(()) => true,
        Err(PublishError::Unroutable { .. }) => {
            tracing::warn!(queue = %queue.name, delivery_tag = d.delivery_tag,
                "requeue-tail copy was unroutable (queue gone?); requeueing the original instead");
            false
        }
        Err(error @ PublishError::Timeout { .. }) => {
            tracing::warn!(queue = %queue.name, delivery_tag = d.delivery_tag,
                error = &error as &dyn std::error::Error,
                "requeue-tail copy not confirmed in time (blocked connection?); requeueing the \
                 original instead");
            false
        }
        Err(error) => {
            tracing::warn!(queue = %queue.name, delivery_tag = d.delivery_tag,
                error = &error as &dyn std::error::Error,
                "requeue-tail copy failed; requeueing the original instead");
            false
        }
    }
}
