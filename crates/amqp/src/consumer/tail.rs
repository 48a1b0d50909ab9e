//! [`Action::RequeueTail`]: a confirmed copy at the tail of the queue, then the original acked.

use std::sync::Arc;
use std::time::Duration;

use asyncworker_core::Action;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, ShortString};
use lapin::{Channel, Confirmation, Connection};

use super::channel::ChannelState;
use crate::message::{Delivery, QueueMeta, REQUEUE_COUNT_HEADER};
use crate::settle::Cmd;

/// How long a requeue-tail copy may take to be confirmed before the original is requeued
/// instead (a blocked connection would otherwise hold it, and a graceful shutdown, forever).
const REQUEUE_TAIL_TIMEOUT: Duration = Duration::from_secs(30);

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
        let publisher = match self.publisher.as_ref().filter(|p| p.status().connected()) {
            Some(p) => p.clone(),
            None => match open_publisher(&self.conn, &self.queue).await {
                Some(p) => {
                    self.publisher = Some(p.clone());
                    p
                }
                None => {
                    // Fall back to a plain requeue: nothing is lost.
                    self.outstanding.release(d.delivery_tag);
                    return self.reject(&d, Action::Requeue).await;
                }
            },
        };
        let tx = self.tx.clone();
        let queue = self.queue.clone();
        tokio::spawn(async move {
            let ok = publish_copy(&publisher, &queue, &d, count).await;
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

/// A channel in confirm mode on `conn`, for requeue-tail copies.
async fn open_publisher(conn: &Connection, queue: &QueueMeta) -> Option<Channel> {
    let result = async {
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok::<_, lapin::Error>(channel)
    }
    .await;
    match result {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::warn!(queue = %queue.name, error = %e, "cannot open a publisher channel");
            None
        }
    }
}

/// Publish a copy of `d` to the tail of its queue, with the requeue counter set to `count`,
/// and wait for the broker's confirmation.
async fn publish_copy(publisher: &Channel, queue: &QueueMeta, d: &Delivery, count: u64) -> bool {
    let mut headers = d.properties.headers().clone().unwrap_or_default();
    headers.insert(
        REQUEUE_COUNT_HEADER.into(),
        AMQPValue::LongLongInt(i64::try_from(count).unwrap_or(i64::MAX)),
    );
    let properties = d.properties.clone().with_headers(headers);
    let result = async {
        publisher
            .basic_publish(
                ShortString::default(),
                ShortString::from(&*queue.name),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                &d.payload,
                properties,
            )
            .await?
            .await
    };
    let Ok(result) = tokio::time::timeout(REQUEUE_TAIL_TIMEOUT, result).await else {
        tracing::warn!(queue = %queue.name, delivery_tag = d.delivery_tag, timeout = ?REQUEUE_TAIL_TIMEOUT,
            "requeue-tail copy not confirmed in time (blocked connection?); requeueing the original instead");
        return false;
    };
    match result {
        Ok(Confirmation::Ack(None)) => true,
        Ok(Confirmation::Ack(Some(_))) => {
            tracing::warn!(queue = %queue.name, delivery_tag = d.delivery_tag,
                "requeue-tail copy was unroutable (queue gone?); requeueing the original instead");
            false
        }
        Ok(other) => {
            tracing::warn!(queue = %queue.name, delivery_tag = d.delivery_tag, confirmation = ?other,
                "requeue-tail copy not confirmed; requeueing the original instead");
            false
        }
        Err(e) => {
            tracing::warn!(queue = %queue.name, delivery_tag = d.delivery_tag, error = %e,
                "requeue-tail copy failed; requeueing the original instead");
            false
        }
    }
}
