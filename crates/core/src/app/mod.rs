//! [`App`]: routes, hooks, schedules and a graceful shutdown — the flask-like face.
//!
//! An `App` holds any number of routes and runs them concurrently. A route is a
//! [`Source`](crate::Source) plus a handler:
//!
//! - [`App::route`] takes an `async fn(Vec<M>) -> Result<(), E>` and returns a [`Route`],
//!   which sets the route's options (bulk size, flush interval, ack policy, retry, limits);
//! - [`App::route_service`] takes any tower `Service<Vec<M>>`, and returns a [`Route`] too;
//! - [`App::route_stack`] takes a closure that builds the whole `Service<M>` stack, for full
//!   control; it gets a [`RouteContext`] with the route's shutdown signal, in-flight limit and
//!   metric handles.
//!
//! Options become exactly the stack a user would write by hand —
//! `Bulk → Ack → Retry → handler` — through [`RouteOptions::layers`]; there is one code path.
//!
//! # Lifecycle
//!
//! [`App::run`]:
//!
//! 1. checks the configuration: settings, route names, route options (an error names the
//!    route);
//! 2. runs the [`on_startup`](App::on_startup) hooks, in order, all to completion, before any
//!    source is polled — a failing hook aborts the start;
//! 3. runs every route and schedule until shutdown begins (SIGINT or SIGTERM, the app's
//!    [`Shutdown`](App::shutdown_handle) triggered, every source ending, or a route failing
//!    — its stack cannot be built, its service fails or its task panics; `run` then returns
//!    that error);
//! 4. shuts down gracefully: intake stops, partial batches flush, in-flight handlers get the
//!    grace period (default 30 s) to finish, unfinished batches are requeued;
//! 5. runs the [`on_shutdown`](App::on_shutdown) hooks once, in order, and returns `Ok`.
//!
//! A second signal during shutdown aborts the in-flight work at once (its messages return
//! through their settlement guards, or through the broker when a connection dies) and `run`
//! returns [`Error::Forced`](crate::Error::Forced).
//!
//! # Example
//!
//! ```
//! use asyncworker_core::{App, Message, memory::{MemoryMessage, MemoryQueue}};
//!
//! async fn handler(batch: Vec<MemoryMessage>) -> Result<(), std::io::Error> {
//!     for message in &batch {
//!         println!("{}", message.text().unwrap_or("<binary>"));
//!     }
//!     Ok(())
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), asyncworker_core::Error> {
//! let queue = MemoryQueue::new();
//! queue.push_bytes("hello");
//! queue.close(); // the app stops when every source has ended
//!
//! let mut app = App::new();
//! app.route("greetings", queue.source(), handler).bulk_size(10);
//! app.run().await?;
//! # Ok(())
//! # }
//! ```

//!
//! The four steps of `run` are four functions: check (configuration), start (signals,
//! startup hooks, spawning the routes), join (waiting for the routes, failing fast) and stop
//! (shutdown hooks, the outcome).

mod application;
mod context;
mod health;
mod options;
mod route;
mod run;
mod signals;

pub use application::App;
pub use context::RouteContext;
pub use health::{Health, RouteHealth};
pub use options::RouteOptions;
pub use route::Route;
