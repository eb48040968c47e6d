//! Part of the composition root: builds a relay (`serve --upstream`): its hub
//! loading through the upstreams, the probe that readiness follows, and the
//! relay's counters for the admin listener.

use std::path::Path;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use super::Failure;
use crate::admin::family::CounterFamily;
use crate::admin::scalar::Scalar;
use crate::hub::{Hub, HubConfig};
use crate::relay::{Relay, RelaySettings};
use crate::source::health::Awaited;
use crate::source::supervise::Supervisor;
use crate::store::Router;

/// A relay without an identity provider checks tokens with its upstream's own
/// signing key, which it must be given: it never makes one (tokens its upstream
/// signed would then all be refused).
pub(super) fn check_key(data_dir: &Path, jwks: bool) -> Result<(), Failure> {
    let key = data_dir.join(crate::auth::local::KEY_FILE);
    if jwks || key.exists() {
        return Ok(());
    }
    Err(Failure::usage(format!(
        "a relay checks tokens with its upstream's signing key, and {} does not exist: copy {} from the upstream's data directory into --data-dir {}, or use --jwks-url",
        key.display(),
        crate::auth::local::KEY_FILE,
        data_dir.display()
    )))
}

/// The relay's hub and its supervised probe (the source named `upstream`), and the
/// router of a server that keeps no store.
pub(super) fn start_relay(
    settings: &RelaySettings,
    hub_config: HubConfig,
    sources: Supervisor,
    stop: CancellationToken,
) -> Result<(Arc<Router>, Arc<Hub>, Supervisor, Relay), Failure> {
    let relay = Relay::new(settings, stop).map_err(|e| Failure::usage(e.to_string()))?;
    let hub = Arc::new(Hub::new(Arc::new(relay.clone()), hub_config));
    relay.attach(&hub);
    let mut sources = sources;
    let probe = relay.clone();
    sources.spawn_reporting("upstream", Awaited::Success, move |stop, health| {
        probe.clone().probe(stop, health)
    });
    Ok((Arc::new(Router::new(Vec::new())), hub, sources, relay))
}

/// The relay's counters, for `/metrics`.
pub(super) fn register_relay(registry: &mut Registry, relay: &Relay) {
    let counters = relay.counters();
    let watches = counters.clone();
    registry.register_collector(Scalar::gauge(
        "configwatch_relay_upstream_watches",
        "Upstream Watch streams open now: one per scope this relay serves.",
        move || {
            watches
                .upstream_watches
                .load(std::sync::atomic::Ordering::Relaxed)
        },
    ));
    registry.register_collector(Box::new(CounterFamily {
        name: "configwatch_relay_upstream_syncs",
        help: "Initial states received from upstreams, by how they were built (full: the whole scope; diff or resumed: only what changed).",
        label: "mode",
        read: Box::new(move || counters.syncs()),
    }));
}
