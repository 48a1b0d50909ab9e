//! Publishing with publisher confirms: [`Publisher`], [`PublisherBuilder`], [`OutgoingMessage`]
//! and [`PublishError`].

mod builder;
mod deadline;
mod error;
mod lane;
mod message;
mod publisher;

use std::time::Duration;

pub use builder::PublisherBuilder;
pub use error::PublishError;
pub use message::{HeaderValue, MAX_EXPIRATION_MS, OutgoingMessage};
pub use publisher::Publisher;

/// How long a publish may take, from the call to the broker's confirm, unless
/// [`PublisherBuilder::timeout`] says otherwise.
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest body a publisher sends unless [`PublisherBuilder::max_message_size`] says
/// otherwise: 128 MiB, RabbitMQ's default `max_message_size`.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 128 * 1024 * 1024;

/// The content type of [`OutgoingMessage::json`] messages.
pub const JSON_CONTENT_TYPE: &str = "application/json";
