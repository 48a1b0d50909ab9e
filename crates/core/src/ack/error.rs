//! The error [`Ack`](super::Ack) reports for a panicking handler.

use std::fmt;

/// The error [`Ack`](super::Ack) reports when the handler panicked. The panic message is
/// its [`source`](std::error::Error::source) (and [`message`](Self::message)).
#[derive(Debug)]
pub struct HandlerPanicked {
    message: PanicMessage,
}

/// A panic's message, as an error so that it can be [`HandlerPanicked`]'s source.
#[derive(Debug)]
struct PanicMessage(String);

impl fmt::Display for PanicMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PanicMessage {}

impl HandlerPanicked {
    pub(crate) fn from_payload(payload: &(dyn std::any::Any + Send)) -> Self {
        HandlerPanicked {
            message: PanicMessage(crate::util::panic_message(payload).to_owned()),
        }
    }

    /// The panic message.
    pub fn message(&self) -> &str {
        &self.message.0
    }
}

impl fmt::Display for HandlerPanicked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("handler panicked")
    }
}

impl std::error::Error for HandlerPanicked {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.message)
    }
}
