//! RabbitMQ for asyncworker, through [lapin]: consume a route's queues as an
//! [`asyncworker_core::Source`], settle deliveries without blocking, reconnect with backoff.
//!
//! - [`AmqpConfig`]: how to reach a broker, from an `amqp://` / `amqps://` URL or a builder,
//!   validated at build time; the password never shows in `Debug`, `Display` or logs.
//!   [`Connections`] holds several, by name.
//! - [`AmqpSettings`]: the connection defaults (vhost, port, prefetch, heartbeat) from the
//!   `ASYNCWORKER_AMQP_DEFAULT_*` variables, read once per process; code wins over them.
//! - [`AmqpSource`]: a route's queues on a vhost, one channel per queue with
//!   `basic.qos(prefetch)`; reconnects with core's [`Backoff`](asyncworker_core::Backoff);
//!   cancels its consumers on shutdown and keeps channels open until every handed-out message
//!   is settled.
//! - [`AmqpMessage`]: body, typed JSON ([`AmqpMessage::json_or_reject`] rejects poison messages
//!   instead of requeueing them forever), headers, properties, routing key, exchange,
//!   redelivered flag, delivery tag, queue; the core's accept / reject / requeue marks, plus
//!   [`Action::RequeueTail`](asyncworker_core::Action::RequeueTail): a copy goes to the tail of
//!   the queue with a requeue counter, optionally capped.
//! - [`Publisher`]: publishing [`OutgoingMessage`]s with confirms (see its docs for the
//!   defaults and the channel strategy).
//!
//! # Design choices
//!
//! - **One connection per route, one channel per queue.** A channel error (a missing queue
//!   closes the channel that tried to consume it) then touches one queue only: the others keep
//!   flowing while the failed one is retried with backoff — the Python original stopped the
//!   whole route. A connection per route keeps one route's outage, blocked publishing or
//!   reconnect from stalling another's.
//! - **Settling never blocks.** [`Settle`](asyncworker_core::Settle) hands `(delivery,
//!   action)` to the channel's task, which drains whatever is pending and acks the longest
//!   run of outstanding tags with one `multiple` ack; it tracks every tag it handed out, so a
//!   `multiple` ack never covers a delivery that is not being acked, and no tag is acked twice.
//! - **Generations.** Every channel has a liveness flag shared with its deliveries. After the
//!   channel or its connection is gone, their settlements fail at once with
//!   [`SettleError::ChannelClosed`](asyncworker_core::SettleError::ChannelClosed) (logged,
//!   counted in `asyncworker_amqp_settle_failures_total`) instead of reaching a new channel,
//!   where the same tag would name another delivery. Deliveries of a dead channel still
//!   waiting in the stream are dropped before the handler sees them: the broker redelivers
//!   them.
//! - **No lapin auto-recovery.** The source reconnects itself, so it controls the backoff,
//!   the callback, the generations and the re-consuming of every queue.
//! - **Readiness** is set while every queue of the route is being consumed: a route with a
//!   missing queue is live but not ready.
//! - **Poison messages** are rejected, not requeued forever: [`AmqpMessage::json_or_reject`]
//!   marks an undecodable message with the route's decode-error action (default reject).
//! - **RequeueTail** publishes the copy with confirms on a channel of the route's connection
//!   and acks the original only once the copy is confirmed; otherwise the original is
//!   requeued. Nothing is lost; a cap turns endless requeueing into a dead-letter.
//! - **TLS** verifies the broker against the bundled Mozilla roots plus any CA given to
//!   [`AmqpConfigBuilder::tls_ca_pem`]; there is no way to turn verification off.
//!
//! # Example
//!
//! ```no_run
//! use asyncworker_amqp::{AmqpConfig, AmqpSource};
//! use asyncworker_core::{Action, Message, Shutdown, Source, SourceContext};
//! use futures::StreamExt;
//!
//! async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//!     let config = AmqpConfig::from_url("amqp://guest:guest@127.0.0.1:5672/%2f")?;
//!     let source = AmqpSource::builder(config, ["jobs"]).build()?;
//!     let shutdown = Shutdown::new();
//!     let mut stream = source.into_stream(SourceContext::new("jobs", shutdown.clone()));
//!     while let Some(item) = stream.next().await {
//!         match item {
//!             Ok(msg) => {
//!                 println!("{:?}", msg.text());
//!                 let _ = msg.settlement().settle_marked_or(Action::Ack);
//!             }
//!             Err(error) => eprintln!("{error}"),
//!         }
//!     }
//!     Ok(())
//! }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

mod config;
mod consumer;
mod error;
mod logs;
mod message;
mod publish;
mod settings;
mod settle;
mod source;

pub use config::{
    AmqpConfig, AmqpConfigBuilder, Connections, DEFAULT_CONNECTION_TIMEOUT, DEFAULT_HEARTBEAT,
    DEFAULT_PREFETCH,
};
pub use error::{AmqpError, Endpoint};
pub use logs::LAPIN_LOG_CAPS;
pub use message::{AmqpMessage, DecodeError, REQUEUE_COUNT_HEADER};
pub use publish::{
    DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_PUBLISH_TIMEOUT, HeaderValue, JSON_CONTENT_TYPE,
    MAX_EXPIRATION_MS, OutgoingMessage, PublishError, Publisher, PublisherBuilder,
};
pub use settings::AmqpSettings;
pub use source::{AmqpSource, AmqpSourceBuilder, AmqpStream};

/// The lapin version this crate is built on, re-exported so its types (properties, field
/// tables, connections) can be named.
pub use lapin;

#[cfg(test)]
mod tests {
    use super::*;

    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}

    #[test]
    fn public_types_are_send_and_sync() {
        send_sync::<AmqpConfig>();
        send_sync::<Connections>();
        send_sync::<AmqpSettings>();
        send_sync::<AmqpMessage>();
        send_sync::<AmqpError>();
        send_sync::<DecodeError>();
        send_sync::<AmqpSource>();
        send::<AmqpStream>();
    }
}

/// The README's example (the crate docs' example above), compiled as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
