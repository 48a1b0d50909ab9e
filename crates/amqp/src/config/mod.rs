//! Connection settings: from an `amqp://` / `amqps://` URL or a builder, validated at build
//! time, with the password kept out of every `Debug`, `Display` and log line.
//!
//! - `values`: [`AmqpConfig`], the validated configuration and its accessors;
//! - `builder`: [`AmqpConfigBuilder`], its defaults and checks;
//! - `uri`: parsing `amqp://` URLs into a builder;
//! - `connect`: opening a connection from a configuration, [`Failover`] between its endpoints;
//! - `connections`: [`Connections`], several configurations by name.

mod builder;
mod connect;
mod connections;
mod uri;
mod values;

use std::time::Duration;

pub use builder::AmqpConfigBuilder;
pub(crate) use builder::check_short_string;
pub(crate) use connect::Failover;
pub use connections::Connections;
pub use values::AmqpConfig;

/// The default prefetch (`basic.qos` prefetch count) per consumer.
pub const DEFAULT_PREFETCH: u16 = 128;
/// The default heartbeat interval proposed to the broker.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(60);
/// The default timeout of one connection attempt (TCP, TLS and AMQP handshake).
pub const DEFAULT_CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
