//! The maximum connection age: when a connection is asked to go away (HTTP/2
//! GOAWAY, so the client opens its next calls elsewhere) and when its Watch streams
//! end, so that behind a load balancer clients spread over new instances.
//! Knows durations and instants only; the accept loop stamps each connection with
//! its end, tonic sends the GOAWAY, the Watch stream ends itself.

use std::time::Duration;

use tokio::time::Instant;

/// How long Watch streams stay on a connection after its age, unless configured.
pub const DEFAULT_MAX_CONNECTION_AGE_GRACE: Duration = Duration::from_secs(30);

/// A connection's age varies by this fraction either way, drawn per connection, so
/// connections opened together (after a restart) do not all reconnect together.
const JITTER: f64 = 0.1;

/// The maximum age of a connection and the grace after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxConnectionAge {
    /// The mean age; each connection's is within ±10% of it.
    pub age: Duration,
    /// How long its Watch streams go on after the connection's age.
    pub grace: Duration,
}

impl MaxConnectionAge {
    /// When tonic sends GOAWAY: one value for every connection, so the shortest
    /// age a connection can draw, which keeps GOAWAY before its Watch streams end.
    pub fn goaway_after(&self) -> Duration {
        self.age.mul_f64(1.0 - JITTER)
    }

    /// When the Watch streams of a connection accepted at `accepted` end: its age
    /// (drawn within ±10%), then the grace.
    pub fn ends_at(&self, accepted: Instant) -> Instant {
        let drawn = self
            .age
            .mul_f64(rand::random_range((1.0 - JITTER)..=(1.0 + JITTER)));
        accepted + drawn + self.grace
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_end_after_goaway_within_the_jitter() {
        let max = MaxConnectionAge {
            age: Duration::from_secs(100),
            grace: Duration::from_secs(5),
        };
        let now = Instant::now();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let end = max.ends_at(now) - now;
            assert!(end >= max.goaway_after() + max.grace, "{end:?}");
            assert!(end <= Duration::from_secs(115), "{end:?}");
            seen.insert(end.as_secs());
        }
        // Spread, not one value for every connection.
        assert!(seen.len() > 5, "{seen:?}");
    }
}
