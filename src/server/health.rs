//! Readiness, and what the gRPC health service says of the ConfigService: ready
//! (SERVING) while every store can write and every source task runs. One function,
//! [`Readiness::check`], decides it for gRPC health and the admin `/readyz` alike.
//! Reads the stores' and the sources' watch channels; knows nothing of what they do.
//! The signing keys (or the JWKS) are loaded before the server starts: a server
//! that could not load them never listens.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::api::ConfigApi;
use crate::auth::Authenticator;
use crate::proto::config_service_server::ConfigServiceServer;
use crate::source::supervise::{SourceStatus, SourcesState};
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

    /// `Ok` when every store can write and every source runs; otherwise a short
    /// reason naming what is not.
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
            let state = sources.borrow();
            let down: Vec<&str> = state
                .sources
                .iter()
                .filter(|s| s.status != SourceStatus::Running)
                .map(|s| s.name)
                .collect();
            if !down.is_empty() {
                return Err(format!("source down: {}", down.join(", ")));
            }
        }
        Ok(())
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
        loop {
            let ok = readiness.check().is_ok();
            if stop.is_cancelled() {
                return;
            }
            if ok {
                reporter
                    .set_serving::<ConfigServiceServer<ConfigApi>>()
                    .await;
            } else {
                reporter
                    .set_not_serving::<ConfigServiceServer<ConfigApi>>()
                    .await;
            }
            tokio::select! {
                pinged = pinged.recv() => if pinged.is_none() { return },
                () = stop.cancelled() => return,
            }
        }
    });
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
    use crate::source::supervise::SourceState;

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

    fn sources(status: SourceStatus) -> SourcesState {
        SourcesState {
            sources: vec![SourceState {
                name: "stream",
                status,
                restarts: 0,
            }],
        }
    }

    /// Waits (on paused time) until the health service answers `want`.
    async fn until(health: &HealthService, want: ServingStatus) {
        for _ in 0..100 {
            if status(health).await == want as i32 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("health never became {want:?}");
    }

    #[test]
    fn readiness_names_the_source_that_is_down() {
        let (state, rx) = watch::channel(sources(SourceStatus::Running));
        let readiness = Readiness::new(Vec::new(), Some(rx));
        assert_eq!(readiness.check(), Ok(()));
        state.send_replace(sources(SourceStatus::Down));
        assert_eq!(readiness.check(), Err("source down: stream".to_owned()));
    }

    #[tokio::test(start_paused = true)]
    async fn health_is_not_serving_while_a_source_is_down() {
        let reporter = HealthReporter::new();
        let health = HealthService::from_health_reporter(reporter.clone());
        let (state, rx) = watch::channel(sources(SourceStatus::Running));
        let stop = CancellationToken::new();
        report_health(reporter, Readiness::new(Vec::new(), Some(rx)), stop.clone());
        until(&health, ServingStatus::Serving).await;
        state.send_replace(sources(SourceStatus::Down));
        until(&health, ServingStatus::NotServing).await;
        state.send_replace(sources(SourceStatus::Running));
        until(&health, ServingStatus::Serving).await;
        stop.cancel();
    }
}
