//! ack (in progress)
