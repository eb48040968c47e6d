//! The admin side of `configwatch serve`: registers what each part counts with the
//! metrics registry and starts the admin listener. Part of the composition root:
//! the only code besides `serve` that knows both the parts and the exporter.

use std::sync::Arc;

use prometheus_client::registry::{Registry, Unit};
use tokio_util::sync::CancellationToken;

use super::{Failure, ServeArgs};
use crate::admin::family::CounterFamily;
use crate::admin::fresh::FreshnessMetrics;
use crate::admin::{Admin, Started, serve_admin};
use crate::api::WatchEnds;
use crate::auth::Authenticator;
use crate::hub::Hub;
use crate::server::{Readiness, RpcMetrics};

/// Registers the metrics of the calls, the authenticator and the hub (the sources'
/// are registered where they start).
pub(super) fn register_metrics(
    registry: &mut Registry,
    rpc: &Arc<RpcMetrics>,
    auth: &Arc<Authenticator>,
    hub: &Arc<Hub>,
    ends: &Arc<WatchEnds>,
) {
    super::counters::register_counters(registry, hub, ends, auth);
    registry.register(
        "configwatch_rpc_calls",
        "gRPC calls ended, by method and status code (a Watch when its stream ends)",
        rpc.calls.clone(),
    );
    registry.register_with_unit(
        "configwatch_rpc_latency",
        "Time from request to the end of the reply of unary calls, by method",
        Unit::Seconds,
        rpc.latency.clone(),
    );
    registry.register(
        "configwatch_watch_streams_open",
        "Watch streams open now",
        rpc.watch_streams_open.clone(),
    );
    let auth = auth.clone();
    registry.register_collector(Box::new(CounterFamily {
        name: "configwatch_auth_refusals",
        help: "Calls refused before any handler, by why the token was refused.",
        label: "reason",
        read: Box::new(move || auth.refusals().snapshot()),
    }));
    registry.register_collector(Box::new(FreshnessMetrics { hub: hub.clone() }));
    let hub = hub.clone();
    registry.register_collector(Box::new(CounterFamily {
        name: "configwatch_watch_initial_syncs",
        help: "Watches started, by how their initial state was built (full, diff, resumed).",
        label: "mode",
        read: Box::new(move || hub.initial_syncs()),
    }));
}

/// Binds the admin listener (unless `--admin-listen` is empty), says its address on
/// stdout after the gRPC one, and serves `admin` on it until `stop`: `/healthz` at
/// once, `/readyz` and `/metrics` once the server has started (see
/// [`Admin::started`]).
pub(super) async fn open_admin(
    args: &ServeArgs,
    admin: Arc<Admin>,
    stop: CancellationToken,
) -> Result<(), Failure> {
    let Some(addr) = args.admin_addr()? else {
        return Ok(());
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Failure::error(format!("cannot listen on {addr} (--admin-listen): {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Failure::error(format!("cannot read the bound admin address: {e}")))?;
    super::serve::announce(&format!("admin listening on {addr}"));
    tokio::spawn(serve_admin(listener, admin, stop));
    Ok(())
}

/// Turns the admin routes to the started server's readiness and metrics.
pub(super) fn admin_started(admin: &Admin, readiness: Readiness, registry: Registry) {
    admin.started(Started {
        readiness,
        registry,
    });
}
