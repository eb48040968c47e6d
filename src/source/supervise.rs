//! Supervision of the source tasks: each runs by name under a [`Supervisor`], which
//! keeps its handle, and when a task ends or panics while the server is not shutting
//! down, logs it (error level, with the panic message), marks it down, and starts it
//! again after a backoff. What the sources are doing is one small struct,
//! [`SourcesState`], published on a watch channel: each task's status, and the
//! progress the task reports through its [`SourceHealth`] (see [`super::health`]).
//! The server's readiness reads it ([`SourcesState::verdict`]): not ready before an
//! awaited source's first success, nor while a source fails or its task is down
//! beyond the grace period.
//!
//! Knows nothing of what a source does: a task is a function from its shutdown token
//! (a child of the supervisor's), and its health handle, to a future.

use std::future::Future;
use std::time::Duration;

use configwatch_client::{Backoff, Retry};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::health::{Awaited, DEFAULT_DOWN_GRACE, Failing, Progress, SourceHealth};

/// How long a task must have run for its next failure to wait the initial delay
/// again, rather than longer than the last.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Whether a source task runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceStatus {
    /// Running (or started and not yet ended).
    Running,
    /// Ended or panicked; waiting to be started again.
    Down,
}

/// One source task as the supervisor sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceState {
    pub name: &'static str,
    pub status: SourceStatus,
    /// Times the task was started again after it ended or panicked.
    pub restarts: u64,
    /// Since when, and why, the task is down (while it is).
    pub down: Option<Failing>,
    /// What the task reported of its rounds.
    pub progress: Progress,
}

impl SourceState {
    /// A source whose task was just started.
    pub fn running(name: &'static str, awaited: Awaited) -> SourceState {
        SourceState {
            name,
            status: SourceStatus::Running,
            restarts: 0,
            down: None,
            progress: Progress {
                awaited,
                ..Progress::default()
            },
        }
    }
}

/// Every supervised source, in the order they were started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcesState {
    pub sources: Vec<SourceState>,
    /// How long a source may fail or be down before readiness says so.
    pub grace: Duration,
}

impl Default for SourcesState {
    fn default() -> Self {
        SourcesState {
            sources: Vec::new(),
            grace: DEFAULT_DOWN_GRACE,
        }
    }
}

impl SourcesState {
    /// True when every source runs (also when there are none).
    pub fn all_running(&self) -> bool {
        self.sources
            .iter()
            .all(|s| s.status == SourceStatus::Running)
    }

    /// `Ok` when every source lets the server be ready at `now`; otherwise the
    /// reasons of those that do not.
    pub fn verdict(&self, now: Instant) -> Result<(), String> {
        let reasons: Vec<String> = self
            .sources
            .iter()
            .filter_map(|s| s.verdict(now, self.grace).err())
            .collect();
        match reasons.is_empty() {
            true => Ok(()),
            false => Err(reasons.join("; ")),
        }
    }

    /// The next time after `now` the verdict would change by time alone.
    pub fn turns_at(&self, now: Instant) -> Option<Instant> {
        self.sources
            .iter()
            .filter_map(|s| s.turns_at(now, self.grace))
            .min()
    }
}

/// Starts source tasks and keeps them running until its shutdown token is cancelled.
pub struct Supervisor {
    shutdown: CancellationToken,
    backoff: Backoff,
    state: watch::Sender<SourcesState>,
    tasks: Vec<JoinHandle<()>>,
}

impl Supervisor {
    /// A supervisor whose tasks each get a child of `shutdown`, restarted after
    /// delays of `backoff`.
    pub fn new(shutdown: CancellationToken, backoff: Backoff) -> Self {
        Supervisor {
            shutdown,
            backoff,
            state: watch::Sender::new(SourcesState::default()),
            tasks: Vec::new(),
        }
    }

    /// How long a source may fail, or its task be down, before readiness says so
    /// (`--source-down-grace`).
    pub fn with_down_grace(self, grace: Duration) -> Self {
        self.state.send_modify(|s| s.grace = grace);
        self
    }

    /// The sources' state, updated as tasks go down and come back and as they
    /// report their first success and their failures.
    pub fn state(&self) -> watch::Receiver<SourcesState> {
        self.state.subscribe()
    }

    /// Starts the task `name`, which reports no progress: only its task being down
    /// counts. `start` is called with a fresh child of the shutdown token each time
    /// the task (re)starts.
    pub fn spawn<F, Fut>(&mut self, name: &'static str, mut start: F)
    where
        F: FnMut(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.spawn_reporting(name, Awaited::TaskOnly, move |stop, _| start(stop));
    }

    /// Starts the task `name`, which reports its rounds through the [`SourceHealth`]
    /// it is given; with [`Awaited::Success`] readiness waits for its first success.
    pub fn spawn_reporting<F, Fut>(&mut self, name: &'static str, awaited: Awaited, mut start: F)
    where
        F: FnMut(CancellationToken, SourceHealth) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let index = self.state.borrow().sources.len();
        self.state
            .send_modify(|s| s.sources.push(SourceState::running(name, awaited)));
        let health = SourceHealth::new(self.state.clone(), index);
        let shutdown = self.shutdown.clone();
        let mut retry = Retry::new(self.backoff);
        self.tasks.push(tokio::spawn(async move {
            loop {
                let started = Instant::now();
                let task = tokio::spawn(start(shutdown.child_token(), health.clone()));
                let ended = task.await;
                if shutdown.is_cancelled() {
                    return;
                }
                let reason = match ended {
                    Ok(()) => {
                        tracing::error!(source = name, "source task ended; restarting it");
                        "its task ended".to_owned()
                    }
                    Err(e) => {
                        let panic = panic_message(e);
                        tracing::error!(source = name, %panic, "source task failed; restarting it");
                        format!("its task failed: {panic}")
                    }
                };
                health.task_down(reason);
                if started.elapsed() >= HEALTHY_RUN {
                    retry.succeeded();
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(retry.failed()) => {}
                }
                health.task_restarted();
            }
        }));
    }

    /// Waits for every task to stop (after the shutdown token is cancelled).
    pub async fn join(self) {
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// What a task that did not end normally said: its panic message, or why it stopped.
fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_owned()),
        Err(e) => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn backoff() -> Backoff {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(1),
            multiplier: 1.0,
            jitter: 0.0,
        }
    }

    /// A supervisor running one task, `run(n, stop)` on its n-th start (from 0), and
    /// the count of starts.
    fn supervised<Fut>(
        name: &'static str,
        run: impl Fn(u32, CancellationToken) -> Fut + Send + 'static,
    ) -> (CancellationToken, Supervisor, Arc<AtomicU32>)
    where
        Fut: Future<Output = ()> + Send + 'static,
    {
        let shutdown = CancellationToken::new();
        let mut supervisor = Supervisor::new(shutdown.clone(), backoff());
        let starts = Arc::new(AtomicU32::new(0));
        let counted = starts.clone();
        supervisor.spawn(name, move |stop| {
            run(counted.fetch_add(1, Ordering::SeqCst), stop)
        });
        (shutdown, supervisor, starts)
    }

    /// Lets the spawned tasks run until they wait for time.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_panics_is_restarted_after_the_backoff_and_counted() {
        let (shutdown, supervisor, starts) = supervised("flaky", |n, stop| async move {
            assert!(n != 0, "the first run fails");
            stop.cancelled().await;
        });
        let state = supervisor.state();
        settle().await;
        assert_eq!(starts.load(Ordering::SeqCst), 1);
        let down = state.borrow().clone();
        assert!(!down.all_running());
        assert_eq!(down.sources[0].status, SourceStatus::Down);
        assert_eq!(down.sources[0].restarts, 0);

        tokio::time::sleep(Duration::from_millis(900)).await;
        settle().await;
        assert_eq!(starts.load(Ordering::SeqCst), 1, "not before the backoff");
        tokio::time::sleep(Duration::from_millis(200)).await;
        settle().await;
        assert_eq!(starts.load(Ordering::SeqCst), 2);
        let up = state.borrow().clone();
        assert!(up.all_running());
        assert_eq!(up.sources[0].restarts, 1);

        shutdown.cancel();
        supervisor.join().await;
        assert_eq!(starts.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_ends_while_shutting_down_is_not_restarted() {
        let (shutdown, supervisor, starts) =
            supervised("steady", |_, stop| async move { stop.cancelled().await });
        let state = supervisor.state();
        settle().await;
        shutdown.cancel();
        supervisor.join().await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(starts.load(Ordering::SeqCst), 1);
        let after = state.borrow().clone();
        assert!(after.all_running(), "a stop is not an outage");
        assert_eq!(after.sources[0].restarts, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_ends_by_itself_is_down_until_restarted() {
        let (shutdown, supervisor, starts) = supervised("ends", |n, stop| async move {
            if n > 0 {
                stop.cancelled().await;
            }
        });
        let mut state = supervisor.state();
        settle().await;
        assert!(!state.borrow_and_update().all_running());
        state.changed().await.ok();
        assert!(state.borrow_and_update().all_running());
        assert_eq!(state.borrow().sources[0].restarts, 1);
        assert_eq!(starts.load(Ordering::SeqCst), 2);
        shutdown.cancel();
        supervisor.join().await;
    }
}
