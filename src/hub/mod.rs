//! The hub: one materialized view per scope, and the fan-out of its changes.
//!
//! Each [`ScopeView`] holds the scope's entries (tombstones included), a revision that
//! counts the changes applied to it, and a bounded history of the latest changes for
//! resume. Changes are applied by version: one that is not newer than what the view
//! holds is ignored, so duplicates and reordered deliveries from any source are
//! harmless (invariant 2).
//!
//! Fan-out happens while the view is locked, in revision order. Every watcher has a
//! pending set holding at most one change per key: a newer change for a key replaces
//! the pending one and moves to the back. A watcher that does not read therefore
//! costs at most one entry per distinct key and never delays anyone else (invariant 5),
//! and it is never skipped past a change: it always gets the newest version of each key
//! it has not yet taken. Resume tokens stay exact under coalescing: a token names the
//! revision of the last change delivered, and any earlier change not delivered was
//! replaced by a later one still pending.
//!
//! The hub knows nothing about gRPC: the API layer turns what [`WatchHandle`] yields
//! into messages.
//!
//! The parts:
//!
//! - `view`: a scope's view ([`ScopeView`]) and its first load from the sources
//!   ([`ScopeLoader`]); reading entries under prefixes, in chunks.
//! - `apply`: applying changes by version, removals without one, and [`Hub::resync`]
//!   against a fresh read of the sources; the fan-out into pending sets.
//! - `pending`: one watcher's changes not yet taken, coalesced by key.
//! - `watch`: [`Hub::subscribe`] and the [`WatchHandle`] a watcher reads through.
//! - `confirm`: a diff's removals of keys the view does not know, checked with the
//!   sources first (the caller may come from an instance that is ahead).
//! - `token`: [`ResumeToken`], a position in a scope's change order.
//! - `digest`: [`StateDigest`] and [`Known`], what a reconnecting watcher holds.
//! - `page`: one page of a `Get` ([`Hub::snapshot_page`]).
//! - `idle`: dropping views nobody has used for a while ([`Hub::drop_idle`],
//!   [`sweep`]); the next use loads them again.
//! - `shared`: [`SharedEntry`], an entry as the hub shares it, with a slot the API
//!   fills with the entry's encoding.
//! - `fresh`: [`Freshness`], delays from a change's source to applied and to
//!   delivered, by source ([`Origin`]).
//! - `stats`: [`HubCounters`] and the gauges operators read (views, largest backlog).
//! - `cutoff`: when a view is cut off from its sources (a relay's lost upstream),
//!   which its watchers are told at once.
//!
//! This file holds the [`Hub`] itself (views by scope) and its tuning.

mod apply;
mod confirm;
mod cutoff;
mod digest;
mod fresh;
mod idle;
mod page;
mod pending;
mod shared;
mod stats;
mod token;
mod view;
mod watch;

#[cfg(test)]
mod tests;

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};

use dashmap::DashMap;

pub use apply::Resync;
pub use digest::{Known, StateDigest};
pub use fresh::{ChangeSource, DELAY_BUCKETS, DelaySnapshot, Freshness, Origin};
pub use idle::{DEFAULT_VIEW_IDLE, sweep};
pub use page::{Page, PageError, PageRequest};
pub use shared::SharedEntry;
pub use stats::HubCounters;
pub use token::{BadToken, ResumeToken};
pub use view::{ScopeLoader, ScopeView};
pub use watch::{InitialMode, SubscribeError, Subscription, WatchHandle, WatcherStats};

use crate::model::Scope;

/// Changes kept per scope for resume by token, unless configured otherwise.
pub const DEFAULT_HISTORY: usize = 4096;

/// Tuning of the hub.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Changes kept per scope for resume by token.
    pub history_limit: usize,
    /// Time every change to the last watcher that takes it (the delivered delay of
    /// `fresh`): one atomic operation per delivery.
    pub track_delivery: bool,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            history_limit: DEFAULT_HISTORY,
            track_delivery: true,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves data that is still consistent (every
    // critical section here updates its state before anything can panic).
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The hub: views by scope.
pub struct Hub {
    epoch: u64,
    /// The identity of the store the views come from, for clients. Fixed on an
    /// origin; a relay learns it from its upstream (see [`Hub::set_store_id`]).
    store_id: std::sync::RwLock<Arc<str>>,
    config: HubConfig,
    loader: Arc<dyn ScopeLoader>,
    views: DashMap<Scope, Arc<ScopeView>>,
    next_watcher: AtomicU64,
    /// When the hub started: views' last use is counted from here.
    started: tokio::time::Instant,
    /// The highest revision any dropped view reached.
    retired: AtomicU64,
    fresh: Arc<fresh::Freshness>,
    /// What operators read (see `stats`); watch handles share it.
    counters: Arc<HubCounters>,
    /// Since when every view is cut off from the sources (ms since the epoch; 0:
    /// current), shared with the views (see `cutoff`).
    cut_off: Arc<std::sync::atomic::AtomicI64>,
}

impl Hub {
    pub fn new(loader: Arc<dyn ScopeLoader>, config: HubConfig) -> Self {
        Hub {
            epoch: rand::random(),
            store_id: std::sync::RwLock::new(loader.store_id()),
            config,
            loader,
            views: DashMap::new(),
            next_watcher: AtomicU64::new(1),
            started: tokio::time::Instant::now(),
            retired: AtomicU64::new(0),
            fresh: Arc::default(),
            counters: Arc::default(),
            cut_off: Arc::default(),
        }
    }

    /// The identity of the store the views come from (empty when unknown).
    pub fn store_id(&self) -> Arc<str> {
        self.store_id
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Names the store the views come from, for a hub whose loader learns it with
    /// the first load (a relay, from its upstream).
    pub fn set_store_id(&self, id: &str) {
        let mut held = self
            .store_id
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if **held != *id {
            *held = Arc::from(id);
        }
    }

    /// How fresh changes are: delays by source, newest source timestamps seen.
    pub fn freshness(&self) -> &Freshness {
        &self.fresh
    }
}
