//! [`SseError`]: what a stream reports while it reconnects.

use std::time::Duration;

use crate::parse::ParseError;

/// A recoverable error of an SSE stream: the source logs it (through the runtime), waits its
/// backoff and reconnects. Nothing is dispatched from a response that fails these checks.
///
/// URLs in these errors never carry credentials (basic auth is sent as a header).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SseError {
    /// The request could not be sent or the connection failed (refused, DNS, connect
    /// timeout, TLS).
    #[error("could not connect to {url}")]
    Connect {
        /// The stream's URL.
        url: String,
        /// What failed.
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with a status other than 2xx.
    #[error("{url} answered HTTP {status}")]
    Status {
        /// The stream's URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The wait the server asked for with `Retry-After`, if any.
        retry_after: Option<Duration>,
    },
    /// The server answered 2xx with a content type other than `text/event-stream`.
    #[error(
        "{url} answered HTTP {status} with content type {content_type:?}, not text/event-stream"
    )]
    ContentType {
        /// The stream's URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The content type it sent (empty when there was none).
        content_type: String,
    },
    /// Reading the body failed.
    #[error("reading the stream from {url} failed")]
    Read {
        /// The stream's URL.
        url: String,
        /// What failed.
        #[source]
        source: reqwest::Error,
    },
    /// No bytes at all (not even a comment) arrived for the idle timeout.
    #[error("no bytes from {url} for {timeout:?}; reconnecting")]
    Idle {
        /// The stream's URL.
        url: String,
        /// The idle timeout.
        timeout: Duration,
    },
    /// The body is not a valid event stream (not UTF-8, or an event over the size limit).
    #[error("the stream from {url} is not a valid event stream")]
    Parse {
        /// The stream's URL.
        url: String,
        /// What is wrong with it.
        #[source]
        source: ParseError,
    },
    /// The checkpoint store could not be read; the stream does not connect without its
    /// checkpoint, and loads it again after the client-error delay.
    #[error("could not load the checkpoint {key:?}")]
    Checkpoint {
        /// The checkpoint's key.
        key: String,
        /// What failed.
        #[source]
        source: asyncworker_core::BoxError,
    },
}

impl SseError {
    /// The label of this error in `asyncworker_sse_reconnects_total{cause}`.
    pub fn cause(&self) -> &'static str {
        match self {
            SseError::Connect { .. } => "connect",
            SseError::Status { status, .. } if *status == 429 => "status_429",
            SseError::Status { status, .. } if *status >= 500 => "status_5xx",
            SseError::Status { .. } => "status_4xx",
            SseError::ContentType { .. } => "content_type",
            SseError::Read { .. } => "read",
            SseError::Idle { .. } => "idle",
            SseError::Parse { .. } => "parse",
            SseError::Checkpoint { .. } => "checkpoint",
        }
    }

    /// Whether the error says the request itself is wrong (a 4xx other than 429, or a
    /// response that is not an event stream): retrying soon will not help, so the source
    /// waits the long [client-error delay](crate::SseConfigBuilder::client_error_delay).
    pub fn is_client_error(&self) -> bool {
        match self {
            SseError::Status { status, .. } => (400..500).contains(status) && *status != 429,
            SseError::ContentType { .. } => true,
            _ => false,
        }
    }
}
