//! [`Backoff`]: capped exponential delays with jitter, the one schedule every loop that waits
//! between attempts uses — the [`Retry`](crate::retry::Retry) layer, and the reconnect loops
//! of the backends; [`FailureStreak`]: the failures in a row such a loop feeds it, started
//! over only after a healthy period.

use std::time::Duration;

use tokio::time::Instant;

use crate::Error;

/// How a delay is randomised, so that many workers failing together do not retry (or
/// reconnect) in lockstep.
///
/// Jitter only ever shortens a delay: the capped exponential schedule is the upper bound of
/// every delay.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Jitter {
    /// No randomness: each delay is exactly the capped exponential schedule.
    None,
    /// "Full jitter": each delay is drawn uniformly from `[0, d]`, where `d` is the scheduled
    /// delay. Spreads attempts the most; a delay may be close to zero.
    Full,
    /// Each delay is drawn uniformly from `[d × (1 − ratio), d]`, with `ratio` in `0.0..=1.0`.
    /// `Proportional(0.5)` is "equal jitter"; `Proportional(0.0)` is [`Jitter::None`] and
    /// `Proportional(1.0)` is [`Jitter::Full`].
    Proportional(f64),
}

impl Jitter {
    /// Apply this jitter to the scheduled delay `delay`.
    fn apply(self, delay: Duration) -> Duration {
        // Work in whole nanoseconds (saturating at ~584 years) so that no float conversion can
        // panic; jitter never lengthens a delay.
        let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        let jittered = match self {
            Jitter::None => return delay,
            Jitter::Full => fastrand::u64(..=nanos),
            Jitter::Proportional(ratio) => {
                let factor = 1.0 - ratio * fastrand::f64();
                // `as` saturates; `factor` is within [0, 1] for a validated ratio.
                ((nanos as f64) * factor) as u64
            }
        };
        Duration::from_nanos(jittered.min(nanos))
    }
}

/// A validated backoff schedule: initial delay, growth factor, cap and jitter.
///
/// The delay before attempt `n + 1` (`n = 1` after the first failure) is
/// `min(initial_delay × multiplier^(n − 1), max_delay)`, shortened by the [`Jitter`]. Values
/// are checked once, by [`BackoffBuilder::build`]; a `Backoff` in hand is always valid, and
/// [`Backoff::delay`] never panics.
///
/// [`Backoff::default`] is 100 ms, doubling, capped at 10 s, with
/// [`Jitter::Proportional(0.5)`](Jitter::Proportional); each user states its own defaults
/// (a reconnect loop waits longer than a retry).
///
/// ```
/// use std::time::Duration;
/// use asyncworker_core::{Backoff, Jitter};
///
/// # fn main() -> Result<(), asyncworker_core::Error> {
/// let backoff = Backoff::builder()
///     .initial_delay(Duration::from_millis(100))
///     .max_delay(Duration::from_secs(1))
///     .jitter(Jitter::None)
///     .build()?;
/// assert_eq!(backoff.delay(1), Duration::from_millis(100));
/// assert_eq!(backoff.delay(3), Duration::from_millis(400));
/// assert_eq!(backoff.delay(50), Duration::from_secs(1));
///
/// // One set of rules for every user of a backoff:
/// assert!(Backoff::builder().multiplier(0.5).build().is_err());
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    initial_delay: Duration,
    multiplier: f64,
    max_delay: Duration,
    jitter: Jitter,
}

impl Backoff {
    /// Default delay after the first failure: 100 ms.
    pub const DEFAULT_INITIAL_DELAY: Duration = Duration::from_millis(100);
    /// Default growth factor from one delay to the next: 2.
    pub const DEFAULT_MULTIPLIER: f64 = 2.0;
    /// Default cap on any single delay: 10 s.
    pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(10);
    /// Default jitter: each delay drawn from `[d / 2, d]`.
    pub const DEFAULT_JITTER: Jitter = Jitter::Proportional(0.5);

    /// A builder starting from the defaults.
    pub fn builder() -> BackoffBuilder {
        BackoffBuilder::default()
    }

    /// A builder starting from this schedule's values.
    pub fn to_builder(self) -> BackoffBuilder {
        BackoffBuilder { backoff: self }
    }

    /// Delay after the first failure, before jitter.
    pub fn initial_delay(&self) -> Duration {
        self.initial_delay
    }

    /// Growth factor from one delay to the next (at least 1).
    pub fn multiplier(&self) -> f64 {
        self.multiplier
    }

    /// Cap on any single delay.
    pub fn max_delay(&self) -> Duration {
        self.max_delay
    }

    /// How delays are randomised.
    pub fn jitter(&self) -> Jitter {
        self.jitter
    }

    /// The scheduled delay after failure number `attempt` (1 after the first), without
    /// jitter: `min(initial_delay × multiplier^(attempt − 1), max_delay)`. Attempt 0 is
    /// treated as 1.
    pub fn scheduled_delay(&self, attempt: u32) -> Duration {
        if self.initial_delay.is_zero() {
            return Duration::ZERO;
        }
        let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        // `multiplier` is finite and ≥ 1, so this is ≥ initial and at worst +∞: never NaN.
        let nanos = self.initial_delay.as_nanos() as f64 * self.multiplier.powi(exponent);
        if nanos >= self.max_delay.as_nanos() as f64 {
            return self.max_delay;
        }
        // Round to whole nanoseconds (100 ms × 2 is exactly 200 ms); `as` saturates.
        Duration::from_nanos(nanos.round() as u64).min(self.max_delay)
    }

    /// The delay after failure number `attempt` (1 after the first), jitter applied.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.jitter.apply(self.scheduled_delay(attempt))
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial_delay: Self::DEFAULT_INITIAL_DELAY,
            multiplier: Self::DEFAULT_MULTIPLIER,
            max_delay: Self::DEFAULT_MAX_DELAY,
            jitter: Self::DEFAULT_JITTER,
        }
    }
}

/// Builds a [`Backoff`], checking its values in [`build`](Self::build).
#[derive(Debug, Clone, Default)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct BackoffBuilder {
    backoff: Backoff,
}

impl BackoffBuilder {
    /// Delay after the first failure, before jitter. May be zero (try again at once).
    pub fn initial_delay(mut self, delay: Duration) -> Self {
        self.backoff.initial_delay = delay;
        self
    }

    /// Growth factor from one delay to the next; `1.0` keeps it constant.
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.backoff.multiplier = multiplier;
        self
    }

    /// Cap on any single delay.
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.backoff.max_delay = delay;
        self
    }

    /// How delays are randomised.
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.backoff.jitter = jitter;
        self
    }

    /// Check the values and return the schedule.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when the multiplier is not a finite number of at least 1.0, the
    /// initial delay exceeds the max delay, or a [`Jitter::Proportional`] ratio is not within
    /// `0.0..=1.0`.
    pub fn build(self) -> Result<Backoff, Error> {
        let b = self.backoff;
        if !b.multiplier.is_finite() {
            return Err(Error::config(format!(
                "backoff multiplier must be a finite number, got {}",
                b.multiplier
            )));
        }
        if b.multiplier < 1.0 {
            return Err(Error::config(format!(
                "backoff multiplier must be at least 1.0 (delays may not shrink), got {}",
                b.multiplier
            )));
        }
        if b.initial_delay > b.max_delay {
            return Err(Error::config(format!(
                "backoff initial_delay ({:?}) must not exceed max_delay ({:?})",
                b.initial_delay, b.max_delay
            )));
        }
        if let Jitter::Proportional(ratio) = b.jitter
            && !(0.0..=1.0).contains(&ratio)
        {
            return Err(Error::config(format!(
                "backoff jitter ratio must be between 0.0 and 1.0, got {ratio}"
            )));
        }
        Ok(b)
    }
}

/// The failures in a row of a loop that keeps something up (a connection, a consumer), for
/// [`Backoff::delay`]: they start over only once what the loop keeps up has stayed healthy,
/// without a break, for [`healthy_after`](FailureStreak::healthy_after).
///
/// So a peer that ends every connection right after accepting it (a user allowed no channel,
/// a queue deleted as soon as it is consumed, a server closing each stream at once) is retried
/// with a growing delay, not at once; and one outage after a long healthy run starts at the
/// backoff's first delay again. Times are tokio's, so paused time drives it in tests.
///
/// ```
/// use std::time::Duration;
/// use asyncworker_core::FailureStreak;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let mut streak = FailureStreak::new(Duration::from_secs(30));
/// assert_eq!(streak.failed(), 1); // the first attempt failed
/// streak.healthy(); // connected ...
/// tokio::time::advance(Duration::from_secs(5)).await;
/// assert_eq!(streak.failed(), 2); // ... and lost too soon: one more in a row
/// streak.healthy();
/// tokio::time::advance(Duration::from_secs(30)).await;
/// assert_eq!(streak.failed(), 1); // lost after a healthy run: the first again
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct FailureStreak {
    healthy_after: Duration,
    in_a_row: u32,
    healthy_since: Option<Instant>,
}

impl FailureStreak {
    /// No failure yet; a healthy period of `healthy_after` starts the count over.
    pub fn new(healthy_after: Duration) -> Self {
        FailureStreak {
            healthy_after,
            in_a_row: 0,
            healthy_since: None,
        }
    }

    /// How long what the loop keeps up must stay healthy for the failures to start over.
    pub fn healthy_after(&self) -> Duration {
        self.healthy_after
    }

    /// What the loop keeps up is healthy now: starts a healthy period, or continues the
    /// current one (and once it has lasted [`healthy_after`](Self::healthy_after), the
    /// failures start over).
    pub fn healthy(&mut self) {
        let since = *self.healthy_since.get_or_insert_with(Instant::now);
        self.credit(since);
    }

    /// What the loop keeps up is not healthy now, though nothing failed (it ended, or part of
    /// it is not working): the healthy period, if any, ends here — counted if it was long
    /// enough.
    pub fn unhealthy(&mut self) {
        if let Some(since) = self.healthy_since.take() {
            self.credit(since);
        }
    }

    /// One more failure: an attempt failed, or what it had set up ended. Ends the healthy
    /// period like [`unhealthy`](Self::unhealthy), then returns the failure's number in the
    /// row (1 for the first), for [`Backoff::delay`].
    pub fn failed(&mut self) -> u32 {
        self.unhealthy();
        self.in_a_row = self.in_a_row.saturating_add(1);
        self.in_a_row
    }

    /// The failures in a row so far (0 after a healthy period).
    pub fn in_a_row(&self) -> u32 {
        self.in_a_row
    }

    fn credit(&mut self, since: Instant) {
        if since.elapsed() >= self.healthy_after {
            self.in_a_row = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff(initial_ms: u64, multiplier: f64, max_ms: u64, jitter: Jitter) -> Backoff {
        Backoff::builder()
            .initial_delay(Duration::from_millis(initial_ms))
            .multiplier(multiplier)
            .max_delay(Duration::from_millis(max_ms))
            .jitter(jitter)
            .build()
            .unwrap()
    }

    #[test]
    fn scheduled_delay_grows_exponentially_up_to_the_cap() {
        let b = backoff(100, 2.0, 1_000, Jitter::None);
        let ms: Vec<u128> = (1..=6).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1_000, 1_000]);
        assert_eq!(b.delay(0), Duration::from_millis(100));
    }

    #[test]
    fn scheduled_delay_is_exact_for_fractional_multipliers() {
        let b = backoff(100, 1.5, 10_000, Jitter::None);
        assert_eq!(b.delay(2), Duration::from_millis(150));
        assert_eq!(b.delay(3), Duration::from_millis(225));
    }

    #[test]
    fn scheduled_delay_saturates_at_the_cap_for_huge_attempt_numbers() {
        let b = backoff(100, 2.0, 30_000, Jitter::None);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(30));
        let huge = Backoff::builder()
            .max_delay(Duration::MAX)
            .jitter(Jitter::Full)
            .build()
            .unwrap();
        assert!(huge.delay(u32::MAX) <= Duration::MAX);
    }

    #[test]
    fn zero_initial_delay_never_waits() {
        let b = backoff(0, 2.0, 1_000, Jitter::Full);
        assert!((1..100).all(|n| b.delay(n).is_zero()));
    }

    #[test]
    fn jitter_only_shortens_within_its_bounds() {
        let b = backoff(1_000, 1.0, 1_000, Jitter::Proportional(0.5));
        for _ in 0..1_000 {
            let d = b.delay(1);
            assert!(
                d >= Duration::from_millis(500) && d <= Duration::from_secs(1),
                "{d:?}"
            );
        }
        let full = backoff(1_000, 1.0, 1_000, Jitter::Full);
        assert!((0..1_000).all(|_| full.delay(1) <= Duration::from_secs(1)));
    }

    #[test]
    fn invalid_values_are_config_errors_naming_the_value() {
        let message = |b: BackoffBuilder| b.build().unwrap_err().to_string();
        assert!(message(Backoff::builder().multiplier(0.5)).contains("got 0.5"));
        assert!(message(Backoff::builder().multiplier(f64::NAN)).contains("finite"));
        assert!(
            message(Backoff::builder().initial_delay(Duration::from_secs(20)))
                .contains("initial_delay (20s) must not exceed max_delay (10s)")
        );
        assert!(message(Backoff::builder().jitter(Jitter::Proportional(1.5))).contains("1.5"));
        assert!(Backoff::builder().build().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_streak_starts_over_only_after_an_unbroken_healthy_period() {
        const HEALTHY_AFTER: Duration = Duration::from_secs(30);
        let second = Duration::from_secs(1);
        let mut failures = FailureStreak::new(HEALTHY_AFTER);
        assert_eq!(failures.failed(), 1, "a failed attempt");
        // Up, then lost a second before it would have counted as healthy.
        failures.healthy();
        tokio::time::advance(HEALTHY_AFTER - second).await;
        failures.healthy();
        assert_eq!(
            failures.failed(),
            2,
            "lost too soon: one more failure in a row"
        );
        // Up long enough in total, but with a break (a queue not consuming for a while).
        failures.healthy();
        tokio::time::advance(HEALTHY_AFTER / 2).await;
        failures.unhealthy();
        failures.healthy();
        tokio::time::advance(HEALTHY_AFTER / 2 + second).await;
        failures.healthy();
        assert_eq!(
            failures.failed(),
            3,
            "a broken healthy period does not count"
        );
        // Healthy without a break for the whole period: the backoff starts over.
        failures.healthy();
        tokio::time::advance(HEALTHY_AFTER).await;
        failures.healthy();
        assert_eq!(failures.in_a_row(), 0);
        assert_eq!(failures.failed(), 1, "the next failure is the first again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_healthy_period_ended_by_unhealthy_counts_when_long_enough() {
        let mut streak = FailureStreak::new(Duration::from_secs(30));
        assert_eq!(streak.failed(), 1);
        assert_eq!(streak.failed(), 2);
        streak.healthy();
        tokio::time::advance(Duration::from_secs(30)).await;
        streak.unhealthy();
        assert_eq!(
            streak.in_a_row(),
            0,
            "a full healthy period, ended without a failure"
        );
        assert_eq!(streak.failed(), 1);
    }
}
