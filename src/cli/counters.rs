//! Part of the composition root: registers the counters and gauges that the hub,
//! the Watch streams and the authenticator keep in plain atomics, each with the
//! name the dashboards use and a help text saying what an operator sees. Knows the
//! parts' read functions and the exporter's collectors; counts nothing itself.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::registry::Registry;

use crate::admin::family::CounterFamily;
use crate::admin::scalar::Scalar;
use crate::api::WatchEnds;
use crate::auth::Authenticator;
use crate::hub::{Hub, HubCounters};

/// Registers the hub's counters and gauges, the Watch endings by reason, and the
/// authenticator's token cache and key fetches.
pub(super) fn register_counters(
    registry: &mut Registry,
    hub: &Arc<Hub>,
    ends: &Arc<WatchEnds>,
    auth: &Arc<Authenticator>,
) {
    type Field = fn(&HubCounters) -> &AtomicU64;
    let hub_counters: [(&'static str, &'static str, Field); 5] = [
        (
            "configwatch_watch_deltas_sent",
            "Changes sent on Watch streams after their initial state (taken from the watchers' pending sets).",
            |c| &c.deltas_sent,
        ),
        (
            "configwatch_watch_changes_coalesced",
            "Pending changes replaced by a newer change of the same key before a slow watcher took them.",
            |c| &c.changes_coalesced,
        ),
        (
            "configwatch_views_loaded",
            "Scope views loaded from the sources (a first use, or a use after an idle drop).",
            |c| &c.views_loaded,
        ),
        (
            "configwatch_views_dropped",
            "Scope views dropped from memory as idle (--view-idle).",
            |c| &c.views_dropped,
        ),
        (
            "configwatch_hub_resyncs",
            "Loaded scopes re-read from the sources and merged (after a stream gap, or by reconciliation).",
            |c| &c.resyncs,
        ),
    ];
    for (name, help, field) in hub_counters {
        let hub = hub.clone();
        registry.register_collector(Scalar::counter(name, help, move || {
            HubCounters::get(field(hub.counters()))
        }));
    }
    let views = hub.clone();
    registry.register_collector(Scalar::gauge(
        "configwatch_views",
        "Scope views in memory now.",
        move || views.views_in_memory() as u64,
    ));
    let backlog = hub.clone();
    registry.register_collector(Scalar::gauge(
        "configwatch_watch_backlog_largest",
        "The most changes waiting now for any one watcher (a slow or stuck client shows here).",
        move || backlog.largest_backlog() as u64,
    ));
    let ends = ends.clone();
    registry.register_collector(Box::new(CounterFamily {
        name: "configwatch_watch_streams_ended",
        help: "Watch streams ended, by reason (the reason of the \"watch ended\" log line).",
        label: "reason",
        read: Box::new(move || ends.snapshot()),
    }));
    for (name, help, read) in [
        (
            "configwatch_auth_token_cache_hits",
            "Calls whose token was found in the cache of verified tokens (no signature check).",
            (|a: &Authenticator| a.token_cache_lookups().0) as fn(&Authenticator) -> u64,
        ),
        (
            "configwatch_auth_token_cache_misses",
            "Calls whose token was not in the cache and was verified in full.",
            |a| a.token_cache_lookups().1,
        ),
        (
            "configwatch_jwks_fetches",
            "Fetches of the JWKS (at start, on refresh, on an unknown key id); none without --jwks-url.",
            |a| a.key_fetches().made,
        ),
        (
            "configwatch_jwks_fetch_failures",
            "JWKS fetches that failed (the keys held before stay in use).",
            |a| a.key_fetches().failed,
        ),
    ] {
        let auth = auth.clone();
        registry.register_collector(Scalar::counter(name, help, move || read(&auth)));
    }
}
