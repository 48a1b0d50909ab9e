//! The publisher's lanes: the shared channel of non-mandatory publishes, the channel of
//! mandatory ones, and the connection both are opened on (reconnected when it is gone).

use std::sync::Arc;

use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection};
use tokio::sync::Mutex;

use super::Publisher;
use super::error::ChannelError;
use super::publisher::Origin;

/// The lane of non-mandatory publishes: a publish only looks its channel up, under a std lock
/// held for an `Arc` clone (a tokio lock per publish cost more than the rest of the lookup);
/// the channel is (re)opened under `opening`, by one publish at a time.
pub(super) struct SharedLane {
    current: std::sync::Mutex<Option<Arc<Channel>>>,
    pub(super) opening: Mutex<()>,
}

impl SharedLane {
    pub(super) fn new() -> Self {
        SharedLane {
            current: std::sync::Mutex::new(None),
            opening: Mutex::new(()),
        }
    }

    pub(super) fn slot(&self) -> std::sync::MutexGuard<'_, Option<Arc<Channel>>> {
        // Every write is a single store: a poisoned lock holds a consistent value.
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The channel, if there is one and it is open.
    pub(super) fn connected(&self) -> Option<Arc<Channel>> {
        connected(&self.slot())
    }
}

/// The channel in `slot`, if it is open.
pub(super) fn connected(slot: &Option<Arc<Channel>>) -> Option<Arc<Channel>> {
    slot.as_ref()
        .filter(|channel| channel.status().connected())
        .cloned()
}

impl Publisher {
    /// The shared lane's channel, opened (and the connection re-established) when needed.
    pub(super) async fn shared_channel(&self) -> Result<Arc<Channel>, ChannelError> {
        let lane = &self.inner.shared;
        if let Some(channel) = lane.connected() {
            return Ok(channel);
        }
        // Boxed: inline, opening a channel (and reconnecting) would make every publish's
        // future, moved a few times on the way, larger by its state.
        Box::pin(async {
            let _opening = lane.opening.lock().await;
            // Another publish may have opened it while this one waited.
            let mut slot = lane.slot().clone();
            let channel = self.channel(&mut slot).await;
            *lane.slot() = slot;
            channel
        })
        .await
    }

    /// The lane's channel, opened (and the connection re-established) when needed.
    pub(super) async fn channel(
        &self,
        slot: &mut Option<Arc<Channel>>,
    ) -> Result<Arc<Channel>, ChannelError> {
        if let Some(channel) = slot.as_ref()
            && channel.status().connected()
        {
            return Ok(Arc::clone(channel));
        }
        *slot = None;
        let connection = self.connection().await?;
        let channel = connection
            .create_channel()
            .await
            .map_err(ChannelError::Amqp)?;
        if self.inner.confirms {
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(ChannelError::Amqp)?;
        }
        let channel = Arc::new(channel);
        *slot = Some(Arc::clone(&channel));
        Ok(channel)
    }

    /// The current connection, reconnected first when it is gone and the publisher owns it.
    async fn connection(&self) -> Result<Arc<Connection>, ChannelError> {
        let inner = &*self.inner;
        let mut connection = inner.connection.lock().await;
        if connection.status().connected() {
            return Ok(Arc::clone(&connection));
        }
        let Origin::Config(config, vhost, failover) = &inner.origin else {
            return Err(ChannelError::ConnectionClosed);
        };
        tracing::info!(broker = %config, %vhost, "publisher reconnecting");
        let (fresh, used) = failover
            .sweep(config, vhost)
            .await
            .map_err(ChannelError::Connect)?;
        let fresh = Arc::new(fresh);
        tracing::info!(endpoint = %config.endpoint_at(used, vhost), "publisher reconnected");
        if let Ok(mut status) = inner.status.lock() {
            *status = fresh.status().clone();
        }
        *connection = Arc::clone(&fresh);
        Ok(fresh)
    }
}

/// Holds a mandatory lane while its publish is in flight; dropped before being disarmed (the
/// publish future was dropped), it retires the lane's channel.
pub(super) struct RetireOnDrop<'a>(
    pub(super) Option<tokio::sync::MutexGuard<'a, Option<Arc<Channel>>>>,
);

impl Drop for RetireOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(guard) = self.0.as_mut() {
            **guard = None;
        }
    }
}
