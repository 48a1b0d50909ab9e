//! asyncworker-amqp: work in progress.
