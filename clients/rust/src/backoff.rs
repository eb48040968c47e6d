//! Jittered exponential backoff: the one retry policy of configwatch. The client's
//! reconnects, the server's source tasks and accept loop, the CLI and the benchmark
//! all wait by it ([`Backoff`] is the policy, [`Retry`] one caller's count of failures).

use std::time::Duration;

/// How long to wait before reconnecting.
///
/// Retry `n` (0 for the first) waits a uniform draw from
/// `[(1 - jitter) * d, d]` where `d = min(max, initial * multiplier^n)`, so clients
/// that lost the same server do not come back in step. The count starts over once a
/// stream reaches its initial state.
///
/// A client given several servers moves to the next at once when the one it uses
/// fails; only the first move after an established stream broke waits, by
/// [`spread`](Self::spread), at most `initial`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The first delay. Default 250 ms.
    pub initial: Duration,
    /// The longest delay. Default 30 s.
    pub max: Duration,
    /// Growth per failed attempt, at least 1. Default 2.
    pub multiplier: f64,
    /// The random share of each delay, within 0..=1. Default 0.5.
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: 0.5,
        }
    }
}

impl Backoff {
    pub(crate) fn validate(&self) -> Result<(), String> {
        if !(self.multiplier.is_finite() && self.multiplier >= 1.0) {
            return Err(format!(
                "backoff multiplier must be a finite number >= 1, got {}",
                self.multiplier
            ));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(format!(
                "backoff jitter must be within 0..=1, got {}",
                self.jitter
            ));
        }
        if self.initial > self.max {
            return Err(format!(
                "backoff initial delay {:?} is above the maximum {:?}",
                self.initial, self.max
            ));
        }
        Ok(())
    }

    /// The delay before retry `attempt` (0 for the first retry), with `random` in
    /// 0..1 (a parameter so tests can pin it).
    pub(crate) fn delay_with(&self, attempt: u32, random: f64) -> Duration {
        let max = self.max.as_secs_f64();
        let exp = self.initial.as_secs_f64() * self.multiplier.powi(attempt.min(1024) as i32);
        let capped = if exp.is_finite() { exp.min(max) } else { max };
        let secs = capped * (1.0 - self.jitter * random.clamp(0.0, 1.0));
        Duration::try_from_secs_f64(secs).unwrap_or(self.max)
    }

    /// The delay before retry `attempt` (0 for the first retry), with a random jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, rand::random::<f64>())
    }

    /// The wait before the first reconnect after an established stream broke, when
    /// the next attempt would otherwise go at once (to another server of the list):
    /// a uniform draw from `[0, initial]`, whatever `jitter`. A server that dies
    /// breaks every stream it holds in the same instant; spread over the first step,
    /// its clients reach the next server at a rate of about N / `initial` instead of
    /// all in the same millisecond (10,000 clients over the default 250 ms: 40 per
    /// millisecond).
    pub fn spread(&self) -> Duration {
        self.spread_with(rand::random::<f64>())
    }

    /// [`spread`](Self::spread) with `random` in 0..1 (a parameter so tests can pin it).
    pub(crate) fn spread_with(&self, random: f64) -> Duration {
        let secs = self.initial.as_secs_f64() * random.clamp(0.0, 1.0);
        Duration::try_from_secs_f64(secs).unwrap_or(self.initial)
    }

    /// A policy from `initial` doubling to `max`, half of each delay random.
    pub fn doubling(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
            ..Backoff::default()
        }
    }
}

/// One caller's failures in a row under a [`Backoff`] policy: each failure waits
/// longer, a success starts over.
#[derive(Debug, Clone)]
pub struct Retry {
    policy: Backoff,
    failures: u32,
}

impl Retry {
    pub fn new(policy: Backoff) -> Self {
        Retry {
            policy,
            failures: 0,
        }
    }

    /// Records a failure and returns how long to wait before the next attempt.
    pub fn failed(&mut self) -> Duration {
        let delay = self.policy.delay(self.failures);
        self.failures = self.failures.saturating_add(1);
        delay
    }

    /// Records a success: the next failure waits the initial delay again.
    pub fn succeeded(&mut self) {
        self.failures = 0;
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_with_jitter_below() {
        let b = Backoff::default();
        assert_eq!(b.delay_with(0, 0.0), Duration::from_millis(250));
        assert_eq!(b.delay_with(0, 1.0), Duration::from_millis(125));
        assert_eq!(b.delay_with(3, 0.0), Duration::from_secs(2));
        assert_eq!(b.delay_with(30, 0.0), Duration::from_secs(30));
        assert_eq!(b.delay_with(u32::MAX, 0.0), Duration::from_secs(30));
        for n in 0..40 {
            let d = b.delay(n);
            assert!(d <= Duration::from_secs(30), "{d:?}");
        }
    }

    #[test]
    fn the_first_move_after_a_break_is_spread_over_the_first_step() {
        let b = Backoff {
            jitter: 0.0,
            ..Backoff::default()
        };
        assert_eq!(b.spread_with(0.0), Duration::ZERO);
        assert_eq!(b.spread_with(0.5), Duration::from_millis(125));
        assert_eq!(b.spread_with(1.0), Duration::from_millis(250));
        assert_eq!(b.spread_with(7.0), Duration::from_millis(250));
        // Drawn: never above the first step, and spread over all of it.
        let draws: Vec<Duration> = (0..2000).map(|_| b.spread()).collect();
        assert!(draws.iter().all(|d| *d <= b.initial), "{draws:?}");
        let (min, max) = (draws.iter().min(), draws.iter().max());
        assert!(min < Some(&Duration::from_millis(25)), "{min:?}");
        assert!(max > Some(&Duration::from_millis(225)), "{max:?}");
        let distinct: std::collections::BTreeSet<_> = draws.iter().collect();
        assert!(distinct.len() > 1000, "{} distinct waits", distinct.len());
        // In ten 25 ms slices of the step, each holds some of the draws.
        for slice in 0..10u32 {
            let (lo, hi) = (
                Duration::from_millis(25) * slice,
                Duration::from_millis(25) * (slice + 1),
            );
            let n = draws.iter().filter(|d| **d >= lo && **d < hi).count();
            assert!(n > 100, "{n} waits in {lo:?}..{hi:?}");
        }
    }

    #[test]
    fn retry_grows_and_starts_over() {
        let mut r = Retry::new(Backoff {
            jitter: 0.0,
            ..Backoff::doubling(Duration::from_millis(100), Duration::from_secs(1))
        });
        assert_eq!(r.failed(), Duration::from_millis(100));
        assert_eq!(r.failed(), Duration::from_millis(200));
        for _ in 0..10 {
            assert!(r.failed() <= Duration::from_secs(1));
        }
        assert_eq!(r.failed(), Duration::from_secs(1));
        assert_eq!(r.failures(), 13);
        r.succeeded();
        assert_eq!(r.failed(), Duration::from_millis(100));
    }

    #[test]
    fn bad_settings_are_refused() {
        let mut b = Backoff {
            multiplier: 0.5,
            ..Backoff::default()
        };
        assert!(b.validate().is_err());
        b.multiplier = 2.0;
        b.jitter = 1.5;
        assert!(b.validate().is_err());
        b.jitter = 0.0;
        b.initial = Duration::from_secs(60);
        assert!(b.validate().is_err());
        assert!(Backoff::default().validate().is_ok());
    }
}
