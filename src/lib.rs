//! configwatch: a multi-tenant configuration push server.
//!
//! Services open one long-lived `Watch` and keep a tenant-scoped cache that the server
//! keeps current with versioned deltas; `Get` serves bootstrap. The parts, from the
//! outside in:
//!
//! - [`cli`]: the command line; `cli::serve` is the composition root that wires the
//!   parts below.
//! - [`server`]: binds the gRPC service, health and reflection on a listener; the auth
//!   layer validates the bearer token before any handler runs; graceful shutdown.
//! - [`api`]: protobuf in and out; request validation; errors to statuses.
//! - [`auth`]: JWT validation into an [`auth::Identity`] (tenant, service, role). The
//!   tenant comes only from the token.
//! - [`hub`]: per-scope materialized views with a revision counter and bounded history;
//!   coalescing fan-out to watchers; resume tokens.
//! - [`store`]: storage backends behind one trait, routed by key prefix
//!   (`tenant_config_*`, `param_config_*`); the embedded redb store, DynamoDB and
//!   Parameter Store.
//! - [`source`]: background tasks that bring outside changes into the hub (DynamoDB
//!   Streams, Parameter Store events through SQS, periodic reconciliation), run under
//!   a supervisor that restarts them.
//! - [`admin`]: the admin HTTP listener (`/healthz`, `/readyz`, `/metrics`).
//! - [`aws`]: AWS settings and SDK configuration.
//! - [`keys`] and [`model`]: keys, families, limits, scopes and entries; [`json`]:
//!   values kept exactly as written (numbers keep their digits).
//! - [`clock`]: wall time, injectable (the system clock, or a test's clock on tokio time).
//!
//! Nothing below `api` knows about protobuf; nothing outside `store` knows about a
//! database. The contributor's map, `src/ARCHITECTURE.md`, gives the path of a write
//! and of a Watch, what each folder may import, and where new parts go.

pub mod admin;
pub mod api;
pub mod auth;
pub mod aws;
pub mod cli;
pub mod clock;
pub mod hub;
pub mod json;
pub mod keys;
pub mod model;
pub mod relay;
pub mod server;
pub mod source;
pub mod store;

/// Code generated from `proto/configwatch/v1/config.proto`.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("configwatch.v1");
    include!(concat!(env!("OUT_DIR"), "/server/configwatch.v1.rs"));
}
