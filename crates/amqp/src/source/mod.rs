//! [`AmqpSource`]: a route's supply of deliveries from one or more RabbitMQ queues.
//!
//! - `builder`: [`AmqpSource`] and [`AmqpSourceBuilder`], what a route consumes and how;
//! - `stream`: [`AmqpStream`], the [`Source`](asyncworker_core::Source) side the runtime polls;
//! - `supervisor`: the route's background task, connecting and reconnecting.

mod builder;
mod stream;
mod supervisor;

use std::sync::Arc;

pub use builder::{AmqpSource, AmqpSourceBuilder};
pub use stream::AmqpStream;
pub(crate) use supervisor::BlockWatch;

use crate::AmqpError;

/// The `on_connection_error` callback; `Debug` without showing the closure.
#[derive(Clone)]
struct Callback(Arc<ConnectionErrorFn>);

/// What [`AmqpSourceBuilder::on_connection_error`] takes.
type ConnectionErrorFn = dyn Fn(&AmqpError, u32) + Send + Sync;

impl std::fmt::Debug for Callback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fn(&AmqpError, u32)")
    }
}
