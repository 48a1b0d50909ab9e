//! [`App`]: routes, hooks, schedules and a graceful shutdown — the flask-like face. The
//! lifecycle is on [`App`].

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
