//! [`Client`], the handle applications read from: local, synchronous reads of the
//! cache, change notifications, and `close`. Its parts, each in its own file:
//!
//! - `builder.rs`: [`ClientBuilder`], the settings, their validation, and the start.
//! - `status.rs`: [`State`], [`Source`], [`Status`]: how current the cache is.
//! - `secrets.rs`: [`Client::read_secret`], a `Get` on demand, never cached.
//! - `history.rs`: [`Client::history`], a key's kept versions ([`KeyVersion`]), on
//!   demand, never cached.
//! - `reads.rs`: how those on-demand reads move through the servers' list.
//! - `shared.rs`: the state the handle shares with the background watch task.
//! - `connection.rs`: the channel to the server in use and the `authorization` header.

mod builder;
mod connection;
mod history;
mod reads;
mod secrets;
mod shared;
mod status;

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cache::decode;
use crate::changes::ChangeStream;
use crate::error::Error;
use crate::token::TokenSource;

pub use builder::ClientBuilder;
pub use history::KeyVersion;
pub(crate) use shared::{Shared, SnapshotConfig};
pub use status::{SnapshotStatus, Source, State, Status};

/// A cached value with its version.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    /// The value.
    pub value: T,
    /// The key's version: starts at 1 and only grows (deletes included).
    pub version: u64,
    /// The tenant revision at which the server applied this version.
    pub revision: u64,
    /// When the server says it was written, if it says.
    pub updated_at: Option<SystemTime>,
}

/// What the cache holds for one live key.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Entry {
    /// The key.
    pub key: String,
    /// Its version.
    pub version: u64,
    /// A secret: existence and version only (see [`Client::read_secret`]).
    pub secret: bool,
    /// The tenant revision at which the server applied this version.
    pub revision: u64,
    /// When it was written, if the server says.
    pub updated_at: Option<SystemTime>,
    raw: Option<Arc<str>>,
}

impl Entry {
    /// The value as JSON text; `None` for secrets.
    pub fn raw_value(&self) -> Option<&str> {
        self.raw.as_deref()
    }

    /// The value decoded from JSON; `Err(Error::Secret)` for secrets.
    pub fn value<T: DeserializeOwned>(&self) -> Result<T, Error> {
        match &self.raw {
            Some(raw) => decode(&self.key, raw),
            None => Err(Error::Secret {
                key: self.key.clone(),
            }),
        }
    }
}

/// A tenant's configuration, held in memory and kept current by a background Watch
/// that reconnects, resumes and re-authenticates by itself.
///
/// Reads are local and synchronous: they never touch the network and never wait on
/// it. Cloning is cheap; the clones share one cache and one watch. The watch stops
/// when [`close`](Self::close) is called or every clone is dropped; change streams
/// then end and [`updates`](Self::updates) receivers see the sender gone.
#[derive(Clone)]
pub struct Client {
    pub(crate) shared: Arc<Shared>,
    _handle: Arc<HandleGuard>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("servers", &self.shared.servers)
            .field("tenant", &self.shared.tenant)
            .field("prefixes", &self.shared.prefixes)
            .finish_non_exhaustive()
    }
}

/// Stops the watch when the last [`Client`] clone goes.
struct HandleGuard(CancellationToken);

impl Drop for HandleGuard {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

impl Client {
    /// Settings for a client; see [`ClientBuilder::new`].
    pub fn builder(
        server: impl Into<String>,
        tenant: impl Into<String>,
        tokens: impl TokenSource,
    ) -> ClientBuilder {
        ClientBuilder::new(server, tenant, tokens)
    }

    /// The URL of the server the watch uses now (or is trying): one of
    /// [`servers`](Self::servers). It changes when that server fails the watch.
    pub fn server(&self) -> String {
        self.shared.server().to_owned()
    }

    /// The servers the watch goes through, in order.
    pub fn servers(&self) -> &[String] {
        &self.shared.servers
    }

    /// The tenant this cache belongs to.
    pub fn tenant(&self) -> &str {
        &self.shared.tenant
    }

    /// The watched prefixes, sorted (empty: the whole tenant).
    pub fn prefixes(&self) -> &[String] {
        &self.shared.prefixes
    }

    /// A key's value decoded from JSON into `T`, with its version. `Ok(None)` when
    /// the key does not exist; [`Error::Decode`] when the value is not a `T`;
    /// [`Error::Secret`] when the key is a secret (the cache never holds those).
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<Versioned<T>>, Error> {
        let (raw, version, revision, updated_at) = {
            let data = self.shared.data();
            let Some(h) = data.cache.live(key) else {
                return Ok(None);
            };
            let Some(raw) = h.raw.clone() else {
                return Err(Error::Secret { key: key.into() });
            };
            (raw, h.version, h.revision, h.updated_at)
        };
        Ok(Some(Versioned {
            value: decode(key, &raw)?,
            version,
            revision,
            updated_at,
        }))
    }

    /// A key's value as JSON text, with its version. `None` when the key does not
    /// exist or is a secret ([`entry`](Self::entry) tells them apart).
    pub fn get_raw(&self, key: &str) -> Option<Versioned<Arc<str>>> {
        let data = self.shared.data();
        let h = data.cache.live(key)?;
        Some(Versioned {
            value: h.raw.clone()?,
            version: h.version,
            revision: h.revision,
            updated_at: h.updated_at,
        })
    }

    /// What is held for a live key, secrets included.
    pub fn entry(&self, key: &str) -> Option<Entry> {
        let data = self.shared.data();
        data.cache.live(key).map(|h| to_entry(key, h))
    }

    /// Whether a live key (secrets included) is held.
    pub fn contains_key(&self, key: &str) -> bool {
        self.shared.data().cache.live(key).is_some()
    }

    /// Live keys, secrets included, sorted.
    pub fn keys(&self) -> Vec<String> {
        self.shared
            .data()
            .cache
            .iter_live()
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Every live entry, sorted by key: a consistent copy (values are shared, not
    /// copied).
    pub fn entries(&self) -> Vec<Entry> {
        self.shared
            .data()
            .cache
            .iter_live()
            .map(|(k, h)| to_entry(k, h))
            .collect()
    }

    /// Live entries whose key starts with `prefix`, sorted by key.
    pub fn entries_under(&self, prefix: &str) -> Vec<Entry> {
        self.shared
            .data()
            .cache
            .iter_live_under(prefix)
            .map(|(k, h)| to_entry(k, h))
            .collect()
    }

    /// Live keys held, secrets included.
    pub fn len(&self) -> usize {
        self.shared.data().cache.live_count()
    }

    /// True when no live key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The tenant revision the cache is at (0 when unknown).
    pub fn revision(&self) -> u64 {
        self.shared.data().revision
    }

    /// A counter that grows each time the cache's content changes (once per server
    /// message that changed something), for [`watch::Receiver::changed`]: wake up,
    /// then read what you need. Loading a snapshot at start does not count.
    pub fn updates(&self) -> watch::Receiver<u64> {
        self.shared.generation.subscribe()
    }

    /// The current value of the [`updates`](Self::updates) counter.
    pub fn generation(&self) -> u64 {
        *self.shared.generation.borrow()
    }

    /// Every change from now on; see [`ChangeStream`].
    pub fn changes(&self) -> ChangeStream {
        self.shared.queues.open(None)
    }

    /// Changes to keys starting with `prefix`, from now on.
    pub fn changes_under(&self, prefix: impl Into<String>) -> ChangeStream {
        self.shared.queues.open(Some(prefix.into()))
    }

    /// Stops the watch, writes the snapshot (when configured and changed), and ends
    /// the change streams. Idempotent. Other clones can still read.
    pub async fn close(&self) {
        self.shared.shutdown.cancel();
        let mut done = self.shared.done.subscribe();
        let _ = done.wait_for(|d| *d).await;
        self.shared.update(|l| l.state = State::Closed);
    }
}

fn to_entry(key: &str, h: &crate::cache::Held) -> Entry {
    Entry {
        key: key.to_owned(),
        version: h.version,
        secret: h.secret,
        revision: h.revision,
        updated_at: h.updated_at,
        raw: h.raw.clone(),
    }
}
