//! Whether each source is making progress, as readiness sees it: the time of its last
//! success, and whether (since when, and why) it is failing. A source task holds a
//! [`SourceHealth`] and calls [`succeeded`](SourceHealth::succeeded) after each
//! round that worked (a stream poll over every shard, a queue receive that returned,
//! a reconciliation pass) and [`failing`](SourceHealth::failing) after one that did
//! not; the first failure and the recovery are logged, the retries between them are
//! not. [`SourceState::verdict`] turns that, and whether the task runs, into ready or
//! a reason, with a grace period so that one failed call does not flap a load
//! balancer.
//!
//! Boundary: knows nothing of what a source does, of AWS or of the health endpoints;
//! it writes into the supervisor's [`SourcesState`] channel, which readiness and the
//! metrics read.

use std::fmt::Display;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::supervise::{SourceState, SourceStatus, SourcesState};

/// How long a source may fail (or its task be down) before the server says it is
/// not ready, unless configured (`--source-down-grace`).
pub const DEFAULT_DOWN_GRACE: Duration = Duration::from_secs(30);

/// Whether readiness waits for a source's successes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Awaited {
    /// Not ready until its first success, and not ready while it fails beyond the
    /// grace (the stream reader, the queue reader).
    Success,
    /// Only its task being down counts; its successes are exported, not awaited
    /// (reconciliation, whose passes are minutes apart).
    #[default]
    TaskOnly,
}

/// A failure that has lasted since `since`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failing {
    pub since: Instant,
    pub reason: String,
}

impl Failing {
    fn now(reason: String) -> Failing {
        Failing {
            since: Instant::now(),
            reason,
        }
    }

    /// Whole seconds since it started (the reason texts' figure).
    fn seconds(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.since).as_secs()
    }

    fn beyond(&self, now: Instant, grace: Duration) -> bool {
        now.saturating_duration_since(self.since) > grace
    }
}

/// What a source task has reported.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Progress {
    pub awaited: Awaited,
    /// The end of its last successful round; `None` before the first.
    pub last_success: Option<Instant>,
    /// Set from its first failed round until its next success.
    pub failing: Option<Failing>,
}

impl SourceState {
    /// `Ok` when this source lets the server be ready at `now`; otherwise why not,
    /// naming the source.
    pub fn verdict(&self, now: Instant, grace: Duration) -> Result<(), String> {
        let name = self.name;
        if self.status == SourceStatus::Down {
            match &self.down {
                None => return Err(format!("source {name} down")),
                Some(down) if down.beyond(now, grace) => {
                    let secs = down.seconds(now);
                    return Err(format!("source {name} down for {secs}s: {}", down.reason));
                }
                Some(_) => {}
            }
        }
        let progress = &self.progress;
        if progress.awaited == Awaited::TaskOnly {
            return Ok(());
        }
        match (&progress.last_success, &progress.failing) {
            (None, None) => Err(format!("source {name}: no successful poll yet")),
            (None, Some(f)) => Err(format!(
                "source {name}: no successful poll yet (failing for {}s: {})",
                f.seconds(now),
                f.reason
            )),
            (Some(_), Some(f)) if f.beyond(now, grace) => Err(format!(
                "source {name} failing for {}s: {}",
                f.seconds(now),
                f.reason
            )),
            (Some(_), _) => Ok(()),
        }
    }

    /// When, after `now`, the verdict would change by time alone: a failure, or a
    /// task down, reaching the end of its grace.
    pub fn turns_at(&self, now: Instant, grace: Duration) -> Option<Instant> {
        let down = self
            .down
            .as_ref()
            .filter(|_| self.status == SourceStatus::Down);
        let failing = self
            .progress
            .failing
            .as_ref()
            .filter(|_| self.progress.awaited == Awaited::Success);
        [down, failing]
            .into_iter()
            .flatten()
            .map(|f| f.since + grace + Duration::from_millis(1))
            .filter(|at| *at > now)
            .min()
    }
}

/// A source task's handle on its own entry in the sources' state.
#[derive(Debug, Clone)]
pub struct SourceHealth {
    state: watch::Sender<SourcesState>,
    index: usize,
}

impl SourceHealth {
    pub(super) fn new(state: watch::Sender<SourcesState>, index: usize) -> SourceHealth {
        SourceHealth { state, index }
    }

    /// A handle on a state of its own, published nowhere (a source run alone, as in
    /// tests).
    pub fn detached(name: &'static str) -> SourceHealth {
        let state = watch::Sender::new(SourcesState::default());
        state.send_modify(|s| s.sources.push(SourceState::running(name, Awaited::Success)));
        SourceHealth::new(state, 0)
    }

    fn name(&self) -> &'static str {
        self.state
            .borrow()
            .sources
            .get(self.index)
            .map_or("?", |s| s.name)
    }

    /// A round worked. Readers are woken only when this changes the verdict (the
    /// first success, the end of a failure), not at each success.
    pub fn succeeded(&self) {
        let name = self.name();
        self.state.send_if_modified(|s| {
            let Some(source) = s.sources.get_mut(self.index) else {
                return false;
            };
            let progress = &mut source.progress;
            let first = progress.last_success.is_none();
            progress.last_success = Some(Instant::now());
            let recovered = progress.failing.take();
            if let Some(failing) = &recovered {
                tracing::info!(
                    source = name,
                    after = ?failing.since.elapsed(),
                    "source recovered"
                );
            } else if first {
                tracing::info!(source = name, "source made its first successful poll");
            }
            first || recovered.is_some()
        });
    }

    /// A round failed. The first failure is logged and readers woken; the next ones
    /// until a success only keep the latest reason.
    pub fn failing(&self, reason: impl Display) {
        let name = self.name();
        let reason = reason.to_string();
        self.state.send_if_modified(|s| {
            let Some(source) = s.sources.get_mut(self.index) else {
                return false;
            };
            match &mut source.progress.failing {
                Some(failing) => {
                    failing.reason = reason;
                    false
                }
                None => {
                    tracing::warn!(source = name, reason, "source failing");
                    source.progress.failing = Some(Failing::now(reason));
                    true
                }
            }
        });
    }

    /// Its task ended or panicked (the supervisor's report).
    pub(super) fn task_down(&self, reason: String) {
        self.state.send_modify(|s| {
            if let Some(source) = s.sources.get_mut(self.index) {
                source.status = SourceStatus::Down;
                source.down = Some(Failing::now(reason));
            }
        });
    }

    /// Its task was started again.
    pub(super) fn task_restarted(&self) {
        self.state.send_modify(|s| {
            if let Some(source) = s.sources.get_mut(self.index) {
                source.status = SourceStatus::Running;
                source.down = None;
                source.restarts += 1;
            }
        });
    }

    /// A copy of its entry (for tests).
    pub fn snapshot(&self) -> Option<SourceState> {
        self.state.borrow().sources.get(self.index).cloned()
    }
}

#[cfg(test)]
mod tests;
