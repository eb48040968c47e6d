//! Client for configwatch: one tenant's configuration held in memory and kept current
//! by a server-streaming `Watch`, so reads never touch the network.
//!
//! ```no_run
//! # async fn run() -> Result<(), configwatch_client::Error> {
//! use configwatch_client::Client;
//!
//! #[derive(serde::Deserialize)]
//! struct Checkout { enabled: bool }
//!
//! let client = Client::builder("http://127.0.0.1:50051", "acme", || async {
//!     Ok::<_, std::io::Error>(std::env::var("CONFIGWATCH_TOKEN").unwrap_or_default())
//! })
//! .prefixes(["tenant_config_"])
//! .snapshot_path("/var/lib/my-service/config.json")
//! .connect()
//! .await?;
//!
//! // Local, synchronous, never blocks on the network.
//! if let Some(flag) = client.get::<Checkout>("tenant_config_checkout")? {
//!     println!("enabled={} (version {})", flag.value.enabled, flag.version);
//! }
//! let mut changes = client.changes();
//! while let Some(change) = changes.next().await {
//!     let change = change?;
//!     println!("{} is now at version {}", change.key, change.version);
//! }
//! # Ok(()) }
//! ```
//!
//! The parts:
//!
//! - [`Client`] and [`ClientBuilder`] (`client/`): reads, status, change
//!   notifications, `read_secret`, `history`, `close`. Clones share one cache. The handle and
//!   its reads in `mod.rs`; the settings and the start in `builder.rs`; [`Status`]
//!   in `status.rs`; `read_secret` in `secrets.rs`; `history` in `history.rs`;
//!   their failover over the servers in `reads.rs`; the state shared with the
//!   background task in `shared.rs`; the channel in `connection.rs`.
//! - the background task (`watch.rs`): one Watch at a time; reconnects with
//!   jittered exponential [`Backoff`] (to the next server when given several, the
//!   order in `servers.rs`), resumes by token or by the versions held,
//!   calls the [`TokenSource`] again on `UNAUTHENTICATED`, stops on errors the
//!   application must fix, and ends when every handle is dropped.
//! - the cache rules (`cache.rs`, no I/O): FULL replaces, DIFF is authoritative,
//!   deltas apply only when newer, tombstones keep the versions of deleted keys.
//! - [`ChangeStream`] (`changes.rs`): per-reader queues that coalesce to the newest
//!   change per key, so memory stays bounded and no key is ever skipped.
//! - the guard (`guard.rs`): an initial state that would remove everything held is
//!   held back and reported ([`MassRemoval`]) unless the application accepts it; a
//!   change of the server's store identity is reported ([`StoreChange`]).
//! - the snapshot (`snapshot.rs`): written atomically, tagged with the tenant and
//!   the prefixes, loaded at start when the server is unreachable.
//! - [`proto`]: the generated messages and gRPC client, for writes and anything else
//!   the cache does not cover. Only `wire.rs` converts them for the cache.
//!
//! Several servers serving the same configuration (two origins, relays) are given
//! as a list ([`ClientBuilder::servers`], or commas in the URL): the watch uses one
//! at a time and moves to the next when it fails, resuming by what it holds (the
//! first move after a stream broke waits [`Backoff::spread`], so the clients of a
//! server that died do not all arrive at once); `read_secret` moves on through the
//! list by itself. A server cut off from its sources (a relay that lost its
//! upstream) says since when: [`Status::server_disconnected_since`].
//!
//! Several clients (any tenants, any servers) can run in one process: there is no
//! global state.

mod backoff;
mod cache;
mod changes;
mod client;
mod error;
mod guard;
mod servers;
mod snapshot;
mod token;
mod watch;
mod wire;

pub use backoff::{Backoff, Retry};
pub use cache::{Cause, Change, ChangeKind, SyncMode};
pub use changes::ChangeStream;
pub use client::{
    Client, ClientBuilder, Entry, KeyVersion, SnapshotStatus, Source, State, Status, Versioned,
};
pub use error::{BoxError, Error};
pub use guard::{MassRemoval, StoreChange};
pub use token::{TokenFuture, TokenSource, static_token};
pub use wire::known_digest;

/// The messages and the gRPC client generated from `proto/configwatch/v1/config.proto`
/// (client only). The [`Client`] covers reading; use this for writes (`Put`,
/// `Delete`) or raw calls, with an `authorization: Bearer <JWT>` header.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    tonic::include_proto!("configwatch.v1");
}
