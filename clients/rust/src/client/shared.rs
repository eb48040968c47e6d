//! The state a [`Client`](super::Client) shares with its background watch task: the
//! cache and its stream position ([`Data`]), the status ([`Live`]), the settings
//! ([`Options`]), the readers' queues, the snapshot trigger and the shutdown token.
//! Locking and waking live here; what the watch does with them is in `watch.rs`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use super::status::Live;
use crate::backoff::Backoff;
use crate::cache::{Cache, Change};
use crate::changes::Queues;
use crate::error::Error;
use crate::guard::Policy;
use crate::proto;
use crate::snapshot::SnapshotData;
use crate::token::TokenSource;

pub(crate) struct Options {
    pub backoff: Backoff,
    pub stale_after: Duration,
    pub idle_timeout: Duration,
    pub call_timeout: Duration,
    pub mass_removal: Policy,
}

#[derive(Clone)]
pub(crate) struct SnapshotConfig {
    pub path: PathBuf,
    pub debounce: Duration,
}

/// The cache with the stream position it reflects (kept together so a snapshot is
/// consistent).
#[derive(Default)]
pub(crate) struct Data {
    pub cache: Cache,
    pub revision: u64,
    pub resume_token: String,
    /// The store identity of the state held ("" when unknown).
    pub store_id: String,
}

impl Data {
    /// Takes the revision and the (non-empty) resume token of a message.
    pub fn advance(&mut self, revision: u64, resume_token: String) {
        if revision > 0 {
            self.revision = revision;
        }
        if !resume_token.is_empty() {
            self.resume_token = resume_token;
        }
    }
}

/// The server the watch uses now, and the channel to it.
pub(crate) struct Current {
    /// Its index in `Shared::servers`.
    pub index: usize,
    pub channel: Channel,
}

pub(crate) struct Shared {
    /// The server URLs, in the order the watch goes through them (at least one).
    pub servers: Vec<String>,
    pub tenant: String,
    pub prefixes: Vec<String>,
    pub tokens: Arc<dyn TokenSource>,
    /// Replaced by [`Shared::use_server`] when the watch moves to another server, or
    /// renews the connection after a stream went silent.
    pub(super) current: Mutex<Current>,
    pub opts: Options,
    pub(super) data: RwLock<Data>,
    pub(super) live: Mutex<Live>,
    /// Bumped after each message that changed the cache.
    pub generation: watch::Sender<u64>,
    /// Bumped on every change of `live` that a wait may be looking for.
    pub(super) status_changed: watch::Sender<()>,
    pub queues: Queues,
    pub snapshot: Option<SnapshotConfig>,
    /// Bumped each time the snapshot should be rewritten.
    pub snapshot_seq: AtomicU64,
    pub snapshot_notify: Notify,
    pub shutdown: CancellationToken,
    /// True once the background task has finished.
    pub done: watch::Sender<bool>,
}

impl Shared {
    // Locks are held for memory operations only, never across an await, and nothing
    // panics while holding them; a poisoned lock still holds a consistent cache.

    pub fn data(&self) -> RwLockReadGuard<'_, Data> {
        self.data.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn data_mut(&self) -> RwLockWriteGuard<'_, Data> {
        self.data.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn live(&self) -> MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the status and wakes the waits.
    pub fn update(&self, f: impl FnOnce(&mut Live)) {
        f(&mut self.live());
        self.status_changed.send_replace(());
    }

    pub(super) async fn wait_for(
        &self,
        f: impl Fn(&Live) -> Option<Result<(), Error>>,
    ) -> Result<(), Error> {
        let mut changed = self.status_changed.subscribe();
        loop {
            if let Some(result) = f(&self.live()) {
                return result;
            }
            if changed.changed().await.is_err() {
                return Err(Error::Closed);
            }
        }
    }

    /// Hands changes to the readers, after the cache was updated.
    pub fn publish(&self, changes: &[Change]) {
        if changes.is_empty() {
            return;
        }
        self.generation.send_modify(|g| *g += 1);
        self.queues.deliver(changes);
    }

    /// Asks for a snapshot write (debounced).
    pub fn snapshot_dirty(&self) {
        if self.snapshot.is_some() {
            self.snapshot_seq.fetch_add(1, Ordering::AcqRel);
            self.snapshot_notify.notify_one();
        }
    }

    pub fn snapshot_data(&self) -> SnapshotData {
        let d = self.data();
        SnapshotData {
            tenant: self.tenant.clone(),
            prefixes: self.prefixes.clone(),
            saved_at: SystemTime::now(),
            revision: d.revision,
            resume_token: d.resume_token.clone(),
            store_id: d.store_id.clone(),
            entries: d
                .cache
                .iter_live()
                .map(|(k, h)| crate::cache::WireEntry {
                    key: k.clone(),
                    version: h.version,
                    value: h.raw.as_deref().unwrap_or_default().to_owned(),
                    secret: h.secret,
                    deleted: false,
                    revision: h.revision,
                    updated_at: h.updated_at,
                })
                .collect(),
        }
    }

    /// The watch request for the current state: prefixes, tenant, resume token and
    /// what the cache holds. With a resume token (so the cache holds a state the
    /// server sent) that is a 16-byte digest, unless `with_versions` (the server
    /// found the digest differs and asked for them): then, as without a token, the
    /// versions themselves.
    pub fn watch_request(&self, with_versions: bool) -> proto::WatchRequest {
        let d = self.data();
        let digest = !with_versions && !d.resume_token.is_empty();
        proto::WatchRequest {
            prefixes: self.prefixes.clone(),
            tenant: self.tenant.clone(),
            resume_token: d.resume_token.clone(),
            known_versions: if digest {
                Default::default()
            } else {
                d.cache.known_versions()
            },
            known_digest: if digest {
                d.cache.known_digest().to_vec()
            } else {
                Vec::new()
            },
            known_store_id: d.store_id.clone(),
            ..Default::default()
        }
    }
}
