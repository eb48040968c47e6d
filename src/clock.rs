//! Wall time, injectable: the [`Clock`] that token validation (`exp`, `nbf`), the
//! verified-token cache, token signing and a Watch's end at its token's expiry read
//! instead of `SystemTime::now()`.
//!
//! The server runs on [`Clock::system`], the default everywhere. A test may start a
//! clock at a chosen wall time ([`Clock::starting_at`]); it then moves as tokio's
//! clock moves, so on paused time `tokio::time::advance` moves the wall time and
//! every tokio timer together, and on real time it is the real clock shifted.
//!
//! Only wall time lives here: durations and deadlines stay on `tokio::time::Instant`.
//! Knows nothing of tokens or streams.

use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Where wall time comes from. Cheap to copy; the system clock unless a test sets
/// another.
#[derive(Debug, Clone, Copy, Default)]
pub struct Clock(Source);

#[derive(Debug, Clone, Copy, Default)]
enum Source {
    #[default]
    System,
    /// `wall` when tokio's clock read `at`, then moving with tokio's clock.
    FollowsTokio { wall: SystemTime, at: Instant },
}

impl Clock {
    /// The operating system's wall clock.
    pub fn system() -> Self {
        Clock(Source::System)
    }

    /// A clock that reads `wall` now and then moves as tokio's clock does (paused
    /// time in a test that pauses it, real time otherwise).
    pub fn starting_at(wall: SystemTime) -> Self {
        Clock(Source::FollowsTokio {
            wall,
            at: Instant::now(),
        })
    }

    /// The wall time now.
    pub fn now(&self) -> SystemTime {
        match self.0 {
            Source::System => SystemTime::now(),
            Source::FollowsTokio { wall, at } => wall.checked_add(at.elapsed()).unwrap_or(wall),
        }
    }

    /// Whole seconds since the Unix epoch, as JWT NumericDates count; `None` before
    /// 1970.
    pub fn unix_secs(&self) -> Option<u64> {
        self.now()
            .duration_since(UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_started_clock_moves_with_paused_tokio_time() {
        let start = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let clock = Clock::starting_at(start);
        assert_eq!(clock.now(), start);
        assert_eq!(clock.unix_secs(), Some(1_800_000_000));
        tokio::time::advance(Duration::from_millis(2_500)).await;
        assert_eq!(clock.now(), start + Duration::from_millis(2_500));
        assert_eq!(clock.unix_secs(), Some(1_800_000_002));
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(clock.unix_secs(), Some(1_800_003_602));
    }

    #[test]
    fn before_1970_has_no_unix_seconds() {
        let clock = Clock::starting_at(UNIX_EPOCH - Duration::from_secs(1));
        assert_eq!(clock.unix_secs(), None);
        assert!(Clock::system().unix_secs().is_some());
    }
}
