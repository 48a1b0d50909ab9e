//! Exponential backoff with jitter, for reconnecting and for retrying a missing queue.

use std::time::Duration;

use asyncworker_core::Error;

/// How long to wait between connection attempts (and between attempts to consume a queue that
/// failed): exponential, capped, jittered, optionally bounded in attempts.
///
/// Attempt `n` (1 for the first retry) waits `min(max_delay, initial_delay × multiplierⁿ⁻¹)`,
/// of which a random fraction up to `jitter` is taken off, so that many workers restarting
/// together do not reconnect in lockstep. The defaults — 500 ms, doubling, capped at 30 s,
/// jitter 0.5, retrying forever — suit a worker that should come back by itself after any
/// broker outage.
///
/// ```
/// use std::time::Duration;
/// use asyncworker_amqp::Backoff;
///
/// let backoff = Backoff::default()
///     .initial_delay(Duration::from_millis(100))
///     .max_delay(Duration::from_secs(5))
///     .max_attempts(10);
/// assert!(backoff.validate().is_ok());
/// assert!(backoff.delay(1) <= Duration::from_millis(100));
/// assert!(backoff.delay(50) <= Duration::from_secs(5));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[must_use = "a Backoff does nothing until it is given to a configuration"]
pub struct Backoff {
    initial_delay: Duration,
    max_delay: Duration,
    multiplier: f64,
    jitter: f64,
    max_attempts: Option<u32>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: 0.5,
            max_attempts: None,
        }
    }
}

impl Backoff {
    /// The delay before the first retry (default 500 ms).
    pub fn initial_delay(mut self, delay: Duration) -> Self {
        self.initial_delay = delay;
        self
    }

    /// The cap on any delay (default 30 s).
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// The growth factor between consecutive delays (default 2, at least 1).
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = multiplier;
        self
    }

    /// The largest fraction of a delay taken off at random, from 0 (no jitter) to 1 (full
    /// jitter). Default 0.5.
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter;
        self
    }

    /// Give up after this many failed attempts in a row (at least 1). By default a source
    /// retries forever; with a bound, it yields [`AmqpError::GaveUp`](crate::AmqpError::GaveUp)
    /// and ends its stream, which ends the route.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts);
        self
    }

    /// Retry forever (the default).
    pub fn unbounded(mut self) -> Self {
        self.max_attempts = None;
        self
    }

    /// The bound on attempts, if any.
    pub fn attempts_limit(&self) -> Option<u32> {
        self.max_attempts
    }

    /// Check the values.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a zero initial delay, a cap below the initial delay, a multiplier
    /// below 1 (or not finite), a jitter outside `0..=1`, or `max_attempts(0)`.
    pub fn validate(&self) -> Result<(), Error> {
        if self.initial_delay.is_zero() {
            return Err(Error::config(
                "backoff initial_delay must be greater than zero",
            ));
        }
        if self.max_delay < self.initial_delay {
            return Err(Error::config(format!(
                "backoff max_delay ({:?}) must not be below initial_delay ({:?})",
                self.max_delay, self.initial_delay
            )));
        }
        if !(self.multiplier.is_finite() && self.multiplier >= 1.0) {
            return Err(Error::config(format!(
                "backoff multiplier must be a finite number >= 1, got {}",
                self.multiplier
            )));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(Error::config(format!(
                "backoff jitter must be between 0 and 1, got {}",
                self.jitter
            )));
        }
        if self.max_attempts == Some(0) {
            return Err(Error::config(
                "backoff max_attempts must be at least 1 (or unbounded)",
            ));
        }
        Ok(())
    }

    /// The un-jittered delay before retry `attempt` (1 for the first retry).
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(64) as i32;
        let secs = self.initial_delay.as_secs_f64() * self.multiplier.powi(exp);
        let max = self.max_delay.as_secs_f64();
        // Written so that unvalidated values (a negative or NaN multiplier) cannot panic.
        if secs.is_nan() || secs >= max {
            self.max_delay
        } else if secs <= 0.0 {
            self.initial_delay.min(self.max_delay)
        } else {
            Duration::from_secs_f64(secs)
        }
    }

    /// The jittered delay before retry `attempt` (1 for the first retry): between
    /// `(1 - jitter) × base` and `base`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self.base_delay(attempt);
        // Written so that an unvalidated jitter (NaN, out of range) cannot panic.
        if self.jitter.is_nan() || self.jitter <= 0.0 {
            return base;
        }
        let cut = self.jitter.min(1.0) * fastrand::f64();
        base.mul_f64(1.0 - cut)
    }

    /// Whether attempt number `attempt` (1 for the first) is still allowed.
    pub(crate) fn allows(&self, attempt: u32) -> bool {
        self.max_attempts.is_none_or(|max| attempt <= max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_exponentially_and_are_capped() {
        let b = Backoff::default()
            .initial_delay(Duration::from_millis(100))
            .max_delay(Duration::from_secs(1))
            .jitter(0.0);
        assert_eq!(b.delay(1), Duration::from_millis(100));
        assert_eq!(b.delay(2), Duration::from_millis(200));
        assert_eq!(b.delay(3), Duration::from_millis(400));
        assert_eq!(b.delay(4), Duration::from_millis(800));
        assert_eq!(b.delay(5), Duration::from_secs(1));
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let b = Backoff::default()
            .initial_delay(Duration::from_millis(1000))
            .jitter(0.5);
        for _ in 0..1000 {
            let d = b.delay(1);
            assert!(d >= Duration::from_millis(500) && d <= Duration::from_millis(1000));
        }
    }

    #[test]
    fn invalid_values_are_config_errors() {
        assert!(
            Backoff::default()
                .initial_delay(Duration::ZERO)
                .validate()
                .is_err()
        );
        assert!(
            Backoff::default()
                .max_delay(Duration::from_millis(1))
                .validate()
                .is_err()
        );
        assert!(Backoff::default().multiplier(0.5).validate().is_err());
        assert!(Backoff::default().multiplier(f64::NAN).validate().is_err());
        assert!(Backoff::default().jitter(1.5).validate().is_err());
        assert!(Backoff::default().max_attempts(0).validate().is_err());
        assert!(Backoff::default().validate().is_ok());
    }

    #[test]
    fn unvalidated_values_never_panic() {
        for b in [
            Backoff::default().jitter(f64::NAN),
            Backoff::default().jitter(-1.0),
            Backoff::default().jitter(7.0),
            Backoff::default().multiplier(f64::NAN),
            Backoff::default().multiplier(f64::INFINITY),
            Backoff::default().multiplier(0.0),
            Backoff::default().multiplier(-2.0),
            Backoff::default().max_delay(Duration::ZERO),
        ] {
            for attempt in [0, 1, 2, 100, u32::MAX] {
                assert!(b.delay(attempt) <= Duration::from_secs(30));
            }
        }
    }

    #[test]
    fn attempts_are_bounded_only_when_asked() {
        assert!(Backoff::default().allows(u32::MAX));
        let b = Backoff::default().max_attempts(3);
        assert!(b.allows(3));
        assert!(!b.allows(4));
    }
}
