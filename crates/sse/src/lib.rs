//! Server-Sent Events for asyncworker.

pub mod parse;
pub mod window;
