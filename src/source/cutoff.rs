//! An origin's views marked cut off while its sources fail: when a source that
//! readiness waits for (the stream reader, the queue reader) has failed, or its task
//! has been down, for longer than `--source-down-grace`, every watcher is told that
//! changes made since the failure began may be missing (`disconnected_since`), and
//! told again when the sources recover. The mark dates from the start of the
//! failure, not from the end of the grace: that is how stale the views may be.
//!
//! Boundary: reads the supervisor's state and sets the hub's mark; knows nothing of
//! what a source does.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::health::Awaited;
use super::supervise::{SourceStatus, SourcesState};
use crate::hub::Hub;
use crate::model::{Millis, now_millis};

impl SourcesState {
    /// Since when the sources have been failing, when a failure (or a task down)
    /// has lasted past the grace at `now`; the earliest such start.
    pub fn cut_off_since(&self, now: Instant) -> Option<Instant> {
        self.sources
            .iter()
            .flat_map(|s| {
                let down = s.down.as_ref().filter(|_| s.status == SourceStatus::Down);
                let failing = s
                    .progress
                    .failing
                    .as_ref()
                    .filter(|_| s.progress.awaited == Awaited::Success);
                [down, failing]
            })
            .flatten()
            .filter(|f| now.saturating_duration_since(f.since) > self.grace)
            .map(|f| f.since)
            .min()
    }
}

/// A moment on the monotonic clock as wall time (ms since the epoch).
fn wall_millis(at: Instant) -> Millis {
    let ago = Instant::now().saturating_duration_since(at);
    now_millis().saturating_sub(i64::try_from(ago.as_millis()).unwrap_or(i64::MAX))
}

/// Keeps the hub's mark in step with the sources until `stop`.
pub async fn follow(
    mut state: watch::Receiver<SourcesState>,
    hub: Arc<Hub>,
    stop: CancellationToken,
) {
    loop {
        let (since, turns) = {
            let s = state.borrow_and_update();
            let now = Instant::now();
            (s.cut_off_since(now), s.turns_at(now))
        };
        hub.set_all_disconnected(since.map(wall_millis));
        // Woken by a change of the state, or when a failure reaches its grace.
        let wake = turns.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            () = stop.cancelled() => return,
            changed = state.changed() => if changed.is_err() { return },
            () = tokio::time::sleep_until(wake) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::health::Failing;
    use crate::source::supervise::SourceState;

    fn failing(since: Instant) -> Option<Failing> {
        Some(Failing {
            since,
            reason: "GetRecords failed".to_owned(),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn the_sources_are_cut_off_from_the_start_of_a_failure_once_it_outlasts_the_grace() {
        let grace = Duration::from_secs(30);
        let began = Instant::now();
        let mut stream = SourceState::running("dynamodb-stream", Awaited::Success);
        stream.progress.last_success = Some(began);
        stream.progress.failing = failing(began);
        // A pass of reconciliation failing is not awaited: it does not count.
        let mut reconcile = SourceState::running("reconcile", Awaited::TaskOnly);
        reconcile.progress.failing = failing(began - Duration::from_secs(600));
        let state = SourcesState {
            sources: vec![stream, reconcile],
            grace,
        };
        assert_eq!(state.cut_off_since(began + grace), None, "within the grace");
        let later = began + grace + Duration::from_millis(1);
        assert_eq!(state.cut_off_since(later), Some(began));
        assert_eq!(state.turns_at(began), Some(later));

        // A task down past the grace counts too, from when it went down.
        let mut queue = SourceState::running("sqs-events", Awaited::Success);
        queue.status = SourceStatus::Down;
        queue.down = failing(began - Duration::from_secs(100));
        let state = SourcesState {
            sources: vec![queue],
            grace,
        };
        assert_eq!(
            state.cut_off_since(began),
            Some(began - Duration::from_secs(100))
        );
    }
}
