//! [`RetryConfig`] and its builder: the attempts and the backoff between them.

use std::time::Duration;

use crate::{Backoff, BackoffBuilder, Error, Jitter};

/// The validated settings of a [`Retry`](super::Retry): how many attempts, and the [`Backoff`] between them.
///
/// Build one with [`RetryConfig::builder`]; [`RetryConfig::default`] gives 3 attempts and
/// [`Backoff::default`]: 100 ms initial delay, ×2 per retry, capped at 10 s, with
/// [`Jitter::Proportional(0.5)`](Jitter::Proportional).
///
/// The delay before retry `n` (`n = 1` before the second attempt) is
/// [`Backoff::delay(n)`](Backoff::delay).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryConfig {
    pub(super) max_attempts: u32,
    pub(super) backoff: Backoff,
}

impl RetryConfig {
    /// Default total number of attempts, the first one included: 3.
    pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

    /// A builder starting from the defaults.
    pub fn builder() -> RetryConfigBuilder {
        RetryConfigBuilder::default()
    }

    /// Total number of attempts, the first one included (at least 1).
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The delays between attempts.
    pub fn backoff(&self) -> &Backoff {
        &self.backoff
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: Self::DEFAULT_MAX_ATTEMPTS,
            backoff: Backoff::default(),
        }
    }
}

/// Builds a [`RetryConfig`], checking its parameters in [`build`](Self::build).
///
/// Every setter starts from the defaults of [`RetryConfig`]; the delay setters are those of
/// [`BackoffBuilder`], with its rules.
#[derive(Debug, Clone, Default)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct RetryConfigBuilder {
    max_attempts: Option<u32>,
    backoff: BackoffBuilder,
}

impl RetryConfigBuilder {
    /// Total number of attempts, the first one included. `1` disables retrying.
    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = Some(max_attempts);
        self
    }

    /// Take every delay setting from `backoff`.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff.to_builder();
        self
    }

    /// Delay before the first retry, before jitter. May be zero (retry at once).
    pub fn initial_delay(mut self, delay: Duration) -> Self {
        self.backoff = self.backoff.initial_delay(delay);
        self
    }

    /// Growth factor of the delay from one retry to the next; `1.0` keeps it constant.
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.backoff = self.backoff.multiplier(multiplier);
        self
    }

    /// Cap on any single delay.
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.backoff = self.backoff.max_delay(delay);
        self
    }

    /// How delays are randomised.
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.backoff = self.backoff.jitter(jitter);
        self
    }

    /// Check the parameters and return the configuration.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when `max_attempts` is 0, or the backoff is invalid (see
    /// [`BackoffBuilder::build`]).
    pub fn build(self) -> Result<RetryConfig, Error> {
        let max_attempts = self
            .max_attempts
            .unwrap_or(RetryConfig::DEFAULT_MAX_ATTEMPTS);
        if max_attempts == 0 {
            return Err(Error::config(
                "retry max_attempts must be at least 1 (the first attempt counts), got 0",
            ));
        }
        Ok(RetryConfig {
            max_attempts,
            backoff: self.backoff.build()?,
        })
    }
}
