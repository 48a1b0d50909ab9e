//! [`AmqpStream`]: the stream the runtime polls, and [`Source`] for [`AmqpSource`].

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use asyncworker_core::{Source, SourceContext};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::AmqpSource;
use super::supervisor::Supervisor;
use crate::consumer::{Consuming, Item, RouteShared, TailPublisher};
use crate::error::AmqpError;
use crate::message::{AmqpMessage, QueueMeta};

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
        // Name the connection after the route unless the configuration names it, so the
        // broker's connection list says which route each connection serves.
        let config = self
            .config
            .named_if_unnamed(&format!("asyncworker route {}", cx.route()));
        let route: Arc<str> = cx.route().into();
        let endpoint = self.config.endpoint(&self.vhost);
        let shared = Arc::new(RouteShared {
            route: route.clone(),
            endpoint: endpoint.clone(),
            prefetch: self.config.prefetch(),
            backoff: *self.config.reconnect(),
            max_attempts: self.config.max_reconnect_attempts(),
            requeue_tail_cap: self.requeue_tail_cap,
            tail: Arc::new(TailPublisher::new(&config, endpoint, route)),
            stop: stop.clone(),
            consuming: Consuming::new(self.queues.len(), cx.readiness().clone()),
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
