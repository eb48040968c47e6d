//! Whether the relay can reach an upstream that is ready, checked every
//! [`PROBE_INTERVAL`] with gRPC health: the relay's readiness follows it (an
//! upstream that is not ready, because its own sources fail, makes the relay not
//! ready too, after the same grace), and new work starts on the upstream that last
//! answered. Health needs no token, so an upstream that refused the relay's token
//! (as the feeds report it) counts as failing too, until one accepts it, and so
//! does a credential that cannot be renewed (Cognito refuses the refresh token).
//!
//! Boundary: the check and what it reports. The streams fail over on their own.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::Inner;
use crate::source::health::SourceHealth;

/// Time between two checks.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// Time a check may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// The service whose health is asked.
const SERVICE: &str = "configwatch.v1.ConfigService";

/// Checks upstream `at`: `Err` says why it cannot serve.
async fn check(inner: &Inner, at: usize) -> Result<(), String> {
    let mut client = HealthClient::new(inner.upstreams.channel(at));
    let request = HealthCheckRequest {
        service: SERVICE.to_owned(),
    };
    match tokio::time::timeout(PROBE_TIMEOUT, client.check(request)).await {
        Err(_) => Err(format!(
            "no answer within {}",
            humantime::format_duration(PROBE_TIMEOUT)
        )),
        Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
        Ok(Ok(reply)) => match ServingStatus::try_from(reply.into_inner().status) {
            Ok(ServingStatus::Serving) => Ok(()),
            _ => Err("it is not ready (its health says not serving)".to_owned()),
        },
    }
}

pub(super) async fn run(
    inner: std::sync::Arc<Inner>,
    stop: CancellationToken,
    health: SourceHealth,
) {
    // Not ready before the relay has a token (or knows why it has none).
    tokio::select! {
        () = stop.cancelled() => return,
        () = inner.credential.known() => {}
    }
    loop {
        let first = inner.upstreams.preferred();
        let mut failures = Vec::new();
        for step in 0..inner.upstreams.len() {
            let at = (first + step) % inner.upstreams.len();
            match check(&inner, at).await {
                Ok(()) => {
                    inner.upstreams.prefer(at);
                    failures.clear();
                    break;
                }
                Err(reason) => failures.push(format!("{}: {reason}", inner.upstreams.url(at))),
            }
        }
        if let Some(problem) = inner.credential.problem() {
            // No token to load anything new with, or none once this one expires.
            health.failing(problem);
        } else if let Some(refusal) = inner.refusal() {
            // Reachable, but nothing new can be loaded with this token.
            health.failing(format!(
                "the upstream refuses this relay's token ({refusal}); {}",
                inner.credential.what_to_check()
            ));
        } else if failures.is_empty() {
            health.succeeded();
        } else {
            health.failing(format!("no upstream is ready ({})", failures.join("; ")));
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(PROBE_INTERVAL) => {}
        }
    }
}
