//! Periodic reconciliation: every loaded scope is re-read from the sources and
//! whatever drifted is pushed. A scope whose view was dropped as idle is not read:
//! its next use loads it fresh.
//!
//! Parameter Store events are best effort (EventBridge may drop or delay them, a
//! queue message may expire), so this pass is what guarantees convergence for
//! `param_config_*`; for DynamoDB it repairs anything a stream reader missed. Each
//! pass runs the scopes one after another so that a fleet of tenants does not burst
//! against Parameter Store's request limits.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::health::SourceHealth;
use super::{SourceContext, SourceCounters};

/// Runs passes every `interval` (jittered ±20%) until `shutdown`, reporting each to
/// `health`: a success when every scope was read, a failure otherwise.
pub async fn run(
    ctx: SourceContext,
    interval: Duration,
    health: SourceHealth,
    shutdown: CancellationToken,
) {
    loop {
        let wait = interval.mul_f64(rand::random_range(0.8..1.2));
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        let mut unread = None;
        pass_reporting(&ctx, &shutdown, &mut unread).await;
        match unread {
            None => health.succeeded(),
            Some(why) => health.failing(why),
        }
    }
}

/// One pass over every loaded scope. Returns the drift found (changes applied).
pub async fn pass(ctx: &SourceContext, shutdown: &CancellationToken) -> u64 {
    pass_reporting(ctx, shutdown, &mut None).await
}

/// [`pass`], keeping in `unread` why the last scope that could not be read was not.
async fn pass_reporting(
    ctx: &SourceContext,
    shutdown: &CancellationToken,
    unread: &mut Option<String>,
) -> u64 {
    let mut drift = 0u64;
    let scopes = ctx.hub.scopes();
    for scope in &scopes {
        if shutdown.is_cancelled() {
            return drift;
        }
        match ctx.hub.resync(scope).await {
            Ok(report) => {
                if report.applied > 0 {
                    tracing::warn!(
                        %scope,
                        drift = report.applied,
                        "reconciliation found changes no event had delivered"
                    );
                }
                for (key, source_version, served) in &report.regressed {
                    tracing::warn!(
                        %scope,
                        key,
                        source_version,
                        served,
                        "source holds an older version than was served; keeping the served one"
                    );
                }
                drift += report.applied as u64;
            }
            Err(e) => {
                tracing::warn!(%scope, error = %e, "reconciliation could not read the scope; next pass retries");
                *unread = Some(format!("cannot read a scope: {e}"));
            }
        }
    }
    SourceCounters::add(&ctx.counters.reconcile_drift, drift);
    SourceCounters::add(&ctx.counters.reconcile_runs, 1);
    tracing::debug!(scopes = scopes.len(), drift, "reconciliation pass done");
    drift
}
