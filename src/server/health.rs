//! Readiness, and what the gRPC health service says of the ConfigService: ready
//! (SERVING) while every store can write and the sources are healthy: each awaited
//! source has made its first successful poll, and none has failed (or had its task
//! down) for longer than the grace period (see `source::health`). One function,
//! [`Readiness::check`], decides it for gRPC health and the admin `/readyz` alike;
//! the health reporter logs each change of it. Reads the stores' and the sources'
//! watch channels; knows nothing of what they do.
//! The signing keys (or the JWKS) are loaded before the server starts: a server
//! that could not load them never listens.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::api::ConfigApi;
use crate::auth::Authenticator;
use crate::proto::config_service_server::ConfigServiceServer;
use crate::source::supervise::SourcesState;
use crate::store::StoreHealth;

/// How often readiness looks again for keys while the authenticator has none.
const KEYS_RECHECK: Duration = Duration::from_secs(1);

/// What readiness follows: the token keys, the stores' health and the supervised
/// sources' state.
#[derive(Clone)]
pub struct Readiness {
    stores: Vec<watch::Receiver<StoreHealth>>,
    sources: Option<watch::Receiver<SourcesState>>,
    auth: Option<Arc<Authenticator>>,
}

impl Readiness {
    pub fn new(
        stores: Vec<watch::Receiver<StoreHealth>>,
        sources: Option<watch::Receiver<SourcesState>>,
    ) -> Readiness {
        Readiness {
            stores,
            sources,
            auth: None,
        }
    }

    /// Also not ready while `auth` has no keys.
    pub fn with_auth(mut self, auth: Arc<Authenticator>) -> Readiness {
        self.auth = Some(auth);
        self
    }

    fn has_keys(&self) -> bool {
        self.auth.as_ref().is_none_or(|a| a.has_keys())
    }

    /// `Ok` when every store can write and the sources are healthy; otherwise a
    /// short reason naming what is not.
    pub fn check(&self) -> Result<(), String> {
        if !self.has_keys() {
            return Err("no token keys loaded yet (the JWKS could not be fetched)".into());
        }
        if let Some(i) = self
            .stores
            .iter()
            .position(|h| !matches!(*h.borrow(), StoreHealth::Ok))
        {
            return Err(format!("store {i} cannot write"));
        }
        if let Some(sources) = &self.sources {
            sources.borrow().verdict(Instant::now())?;
        }
        Ok(())
    }

    /// When [`check`](Self::check) may change by time alone (a source's failure
    /// reaching the end of its grace).
    fn turns_at(&self) -> Option<Instant> {
        let now = Instant::now();
        self.sources.as_ref().and_then(|s| s.borrow().turns_at(now))
    }
}

/// Keeps the health of the ConfigService current: SERVING while `readiness` holds,
/// NOT_SERVING otherwise, until `stop`.
pub(super) fn report_health(
    reporter: tonic_health::server::HealthReporter,
    readiness: Readiness,
    stop: CancellationToken,
) {
    let Readiness {
        stores, sources, ..
    } = &readiness;
    if stores.is_empty() && sources.is_none() && readiness.has_keys() {
        return;
    }
    // Each receiver pings one task, which reads them all.
    let (ping, mut pinged) = mpsc::channel::<()>(1);
    for store in stores {
        forward_changes(store.clone(), ping.clone(), stop.child_token());
    }
    if let Some(sources) = sources {
        forward_changes(sources.clone(), ping.clone(), stop.child_token());
    }
    if !readiness.has_keys() {
        // Keys, once loaded, stay: look until they are, then ping once.
        let (readiness, ping, stop) = (readiness.clone(), ping.clone(), stop.child_token());
        tokio::spawn(async move {
            while !readiness.has_keys() {
                tokio::select! {
                    () = tokio::time::sleep(KEYS_RECHECK) => {}
                    () = stop.cancelled() => return,
                }
            }
            let _ = ping.send(()).await;
        });
    }
    drop(ping);
    tokio::spawn(async move {
        let mut was_ready = None;
        loop {
            let verdict = readiness.check();
            if stop.is_cancelled() {
                return;
            }
            let ready = verdict.is_ok();
            if was_ready != Some(ready) {
                log_change(was_ready, &verdict);
                was_ready = Some(ready);
            }
            if ready {
                reporter
                    .set_serving::<ConfigServiceServer<ConfigApi>>()
                    .await;
            } else {
                reporter
                    .set_not_serving::<ConfigServiceServer<ConfigApi>>()
                    .await;
            }
            let turn = readiness.turns_at();
            tokio::select! {
                pinged = pinged.recv() => if pinged.is_none() { return },
                () = sleep_until(turn) => {}
                () = stop.cancelled() => return,
            }
        }
    });
}

/// One line when readiness changes: at warn with the reason when the server stops
/// being ready, at info when it becomes ready.
fn log_change(was_ready: Option<bool>, verdict: &Result<(), String>) {
    match (was_ready, verdict) {
        (_, Ok(())) => tracing::info!("ready"),
        (None, Err(reason)) => tracing::info!(reason, "not ready yet"),
        (Some(_), Err(reason)) => tracing::warn!(reason, "not ready"),
    }
}

/// Completes at `at`, or never.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Pings `ping` each time `rx` changes, until `stop` or the sender is gone.
fn forward_changes<T: Send + Sync + 'static>(
    mut rx: watch::Receiver<T>,
    ping: mpsc::Sender<()>,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return },
                () = stop.cancelled() => return,
            }
            let _ = ping.try_send(());
        }
    });
}

#[cfg(test)]
mod tests {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_server::Health;
    use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
    use tonic_health::server::{HealthReporter, HealthService};

    use std::time::Duration;

    use super::*;
    use crate::source::health::{Awaited, Failing};
    use crate::source::supervise::{SourceState, SourceStatus};

    const GRACE: Duration = Duration::from_secs(2);

    async fn status(health: &HealthService) -> i32 {
        let request = tonic::Request::new(HealthCheckRequest {
            service: "configwatch.v1.ConfigService".into(),
        });
        health
            .check(request)
            .await
            .map(|r| r.into_inner())
            .unwrap_or(HealthCheckResponse { status: -1 })
            .status
    }

    /// One source, `stream`, awaited, with what it reported.
    fn sources(
        status: SourceStatus,
        last_success: Option<Instant>,
        failing: Option<Failing>,
    ) -> SourcesState {
        let mut source = SourceState::running("stream", Awaited::Success);
        source.status = status;
        source.progress.last_success = last_success;
        source.progress.failing = failing;
        SourcesState {
            sources: vec![source],
            grace: GRACE,
        }
    }

    fn failing_now(reason: &str) -> Option<Failing> {
        Some(Failing {
            since: Instant::now(),
            reason: reason.to_owned(),
        })
    }

    /// Waits (on paused time, in small steps) until the health service answers
    /// `want`; returns how long that took.
    async fn until(health: &HealthService, want: ServingStatus) -> Duration {
        let start = Instant::now();
        for _ in 0..1000 {
            if status(health).await == want as i32 {
                return start.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("health never became {want:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn readiness_names_the_source_that_is_down_or_never_worked() {
        let (state, rx) = watch::channel(sources(SourceStatus::Running, None, None));
        let readiness = Readiness::new(Vec::new(), Some(rx));
        assert_eq!(
            readiness.check(),
            Err("source stream: no successful poll yet".to_owned())
        );
        state.send_replace(sources(SourceStatus::Running, Some(Instant::now()), None));
        assert_eq!(readiness.check(), Ok(()));
        state.send_replace(sources(SourceStatus::Down, Some(Instant::now()), None));
        assert_eq!(readiness.check(), Err("source stream down".to_owned()));
    }

    #[tokio::test(start_paused = true)]
    async fn health_turns_not_serving_when_a_failure_outlasts_the_grace() {
        let reporter = HealthReporter::new();
        let health = HealthService::from_health_reporter(reporter.clone());
        let (state, rx) = watch::channel(sources(SourceStatus::Running, None, None));
        let stop = CancellationToken::new();
        report_health(reporter, Readiness::new(Vec::new(), Some(rx)), stop.clone());
        until(&health, ServingStatus::NotServing).await;
        // Not before the first success, however long the source fails.
        state.send_replace(sources(SourceStatus::Running, None, failing_now("refused")));
        tokio::time::sleep(GRACE * 3).await;
        until(&health, ServingStatus::NotServing).await;
        state.send_replace(sources(SourceStatus::Running, Some(Instant::now()), None));
        until(&health, ServingStatus::Serving).await;

        // A failure: still serving within the grace, not serving right after it,
        // with nothing else changing.
        state.send_replace(sources(
            SourceStatus::Running,
            Some(Instant::now()),
            failing_now("GetRecords failed"),
        ));
        tokio::time::sleep(GRACE - Duration::from_millis(100)).await;
        assert_eq!(status(&health).await, ServingStatus::Serving as i32);
        let took = until(&health, ServingStatus::NotServing).await;
        assert!(
            took <= Duration::from_millis(200),
            "{took:?} after the grace"
        );

        state.send_replace(sources(SourceStatus::Running, Some(Instant::now()), None));
        until(&health, ServingStatus::Serving).await;
        stop.cancel();
    }
}
