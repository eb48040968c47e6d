//! Watching a scope: [`Hub::subscribe`] registers a watcher and computes its initial
//! state (full, a diff against what the caller holds, or the changes after a resume
//! token), and the [`WatchHandle`] yields the changes that follow, in revision order.
//!
//! Boundary: the handle reads its own pending set and the view's published
//! revision; it never changes the view (dropping it unregisters the watcher). What a
//! watcher is sent on the wire is the API's business.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use super::digest::{Known, StateDigest};
use super::fresh::Freshness;
use super::idle::touch_at;
use super::pending::Pending;
use super::shared::SharedEntry;
use super::token::{ResumeToken, filter_hash};
use super::view::ScopeView;
use super::{Hub, HubCounters, lock};
use crate::keys::PrefixSet;
use crate::model::{Millis, Scope};
use crate::store::StoreError;

/// The versions of a watcher that holds nothing (see [`StateDigest::EMPTY`]).
static NO_VERSIONS: std::sync::LazyLock<HashMap<String, u64>> =
    std::sync::LazyLock::new(HashMap::new);

/// How a watch's initial state was built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitialMode {
    /// The whole state under the prefixes.
    Full,
    /// What differs from the versions the caller holds, with removals.
    Diff,
    /// Exactly the changes after the resume token.
    Resumed,
}

/// A new watch: its initial state and the handle that yields what follows.
pub struct Subscription {
    pub mode: InitialMode,
    /// For `Full` live entries by key; for `Diff` changed entries by key followed by
    /// removals; for `Resumed` the missed changes in revision order.
    pub initial: Vec<Arc<SharedEntry>>,
    pub revision: u64,
    pub handle: WatchHandle,
    /// The identity of the store the initial state comes from.
    pub store_id: Arc<str>,
}

/// What a watcher reports about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatcherStats {
    pub scope: Scope,
    pub id: u64,
    pub prefixes: Vec<String>,
    /// Changes waiting to be taken now.
    pub pending: usize,
    /// The most changes that ever waited at once.
    pub high_water: usize,
}

/// Why a watch could not start.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The caller sent a [`StateDigest`](super::StateDigest) that is not the server's: it holds
    /// something else, and must say what (send its versions).
    #[error("the state you hold differs from the server's")]
    DigestDiffers,
}

pub(super) struct WatcherSlot {
    pub(super) id: u64,
    pub(super) prefixes: PrefixSet,
    pub(super) pending: Mutex<Pending>,
}

impl Hub {
    /// Starts a watch: registers the watcher, then computes its initial state.
    ///
    /// Under the view's lock only work bounded by the server's own settings is
    /// done: the registration, a resume from history (at most the history limit) or
    /// a digest comparison (cached per revision). The state to send for a full start
    /// or a diff against the caller's versions is computed afterwards, in chunks of
    /// `SCAN_CHUNK` entries each under a short hold of the lock, so a request with
    /// 100,000 versions never holds the writers of the tenant back.
    ///
    /// Nothing is lost or sent twice: the watcher is registered at revision `R`, so
    /// every change after `R` reaches its pending set. The chunks send only entries
    /// applied at or before `R` (those are the state at `R`: a key changed after `R`
    /// is skipped and arrives, newest version, through the pending set).
    pub async fn subscribe(
        &self,
        scope: &Scope,
        prefixes: PrefixSet,
        resume: Option<ResumeToken>,
        known: &Known,
    ) -> Result<Subscription, SubscribeError> {
        let view = self.view(scope).await?;
        let filter = filter_hash(scope, &prefixes);
        let slot = Arc::new(WatcherSlot {
            id: self.next_watcher.fetch_add(1, Ordering::Relaxed),
            prefixes,
            pending: Mutex::new(Pending::default()),
        });
        enum Plan<'k> {
            Ready(InitialMode, Vec<Arc<SharedEntry>>),
            Diff(&'k HashMap<String, u64>),
            Full,
        }
        let (plan, revision) = {
            let mut st = lock(&view.state);
            let resumable = resume.filter(|t| {
                t.epoch == self.epoch
                    && t.filter == filter
                    && t.revision >= st.history_floor
                    && t.revision <= st.revision
            });
            let plan = if let Some(token) = resumable {
                let from = st.history.partition_point(|e| e.revision <= token.revision);
                let missed = st
                    .history
                    .range(from..)
                    .filter(|e| slot.prefixes.matches(&e.key))
                    .cloned()
                    .collect();
                Plan::Ready(InitialMode::Resumed, missed)
            } else if let Known::Versions(versions) = known
                && !versions.is_empty()
            {
                Plan::Diff(versions)
            } else if let Known::Digest(digest) = known {
                if *digest == st.digest(&slot.prefixes) {
                    Plan::Ready(InitialMode::Diff, Vec::new())
                } else if *digest == StateDigest::EMPTY {
                    // It holds nothing under its prefixes (an empty state it was
                    // sent): the difference is every live entry. Asking for its
                    // versions would only get an empty list back, which says
                    // nothing, and the answer would be a full state again.
                    Plan::Diff(&NO_VERSIONS)
                } else {
                    return Err(SubscribeError::DigestDiffers);
                }
            } else {
                Plan::Full
            };
            st.watchers.push(slot.clone());
            (plan, st.revision)
        };
        // From here a dropped future (the caller went away) unregisters the watcher.
        let handle = WatchHandle {
            hub_started: self.started,
            counters: self.counters.clone(),
            token_base: self.token(scope, &slot.prefixes, 0),
            view,
            slot,
            delivered: revision,
            fresh: self.config.track_delivery.then(|| self.fresh.clone()),
        };
        let (mode, initial) = match plan {
            Plan::Ready(mode, initial) => (mode, initial),
            Plan::Full => {
                let mut all = Vec::new();
                handle
                    .view
                    .scan_at(&handle.slot.prefixes, revision, |e| {
                        if !e.deleted {
                            all.push(e.clone());
                        }
                    })
                    .await;
                (InitialMode::Full, all)
            }
            Plan::Diff(versions) => {
                let (mut out, unknown) = handle
                    .view
                    .diff_at(&handle.slot.prefixes, versions, revision)
                    .await;
                out.extend(self.confirm_removals(scope, unknown).await);
                (InitialMode::Diff, out)
            }
        };
        self.counters.initial_syncs[mode as usize].fetch_add(1, Ordering::Relaxed);
        Ok(Subscription {
            store_id: self.store_id(),
            mode,
            initial,
            revision,
            handle,
        })
    }

    /// Every watcher's backlog, for operators and tests.
    pub fn watcher_stats(&self) -> Vec<WatcherStats> {
        let mut out = Vec::new();
        for view in self.views.iter() {
            let st = lock(&view.state);
            for w in &st.watchers {
                let p = lock(&w.pending);
                out.push(WatcherStats {
                    scope: view.scope.clone(),
                    id: w.id,
                    prefixes: w.prefixes.as_slice().to_vec(),
                    pending: p.by_revision.len(),
                    high_water: p.high_water,
                });
            }
        }
        out
    }
}

/// A registered watcher. Dropping it unregisters it.
pub struct WatchHandle {
    view: Arc<ScopeView>,
    slot: Arc<WatcherSlot>,
    token_base: ResumeToken,
    delivered: u64,
    /// The hub's clock, to mark the view used when the watcher ends.
    hub_started: tokio::time::Instant,
    /// Where changes taken are counted, when the hub times deliveries.
    fresh: Option<Arc<Freshness>>,
    /// Where the changes taken are counted.
    counters: Arc<HubCounters>,
}

impl WatchHandle {
    /// Takes up to `max_entries` pending changes (and at most about `max_bytes` of
    /// values, but at least one change), in revision order. `Pending` means nothing
    /// is waiting; the task is woken when something arrives.
    pub fn poll_changes(
        &mut self,
        cx: &mut Context<'_>,
        max_entries: usize,
        max_bytes: usize,
    ) -> Poll<Vec<Arc<SharedEntry>>> {
        let mut p = lock(&self.slot.pending);
        if p.by_revision.is_empty() {
            match &p.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => p.waker = Some(cx.waker().clone()),
            }
            return Poll::Pending;
        }
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        while batch.len() < max_entries {
            let Some((_, first)) = p.by_revision.first_key_value() else {
                break;
            };
            let size = first.value.as_deref().map_or(0, str::len) + first.key.len();
            if !batch.is_empty() && bytes + size > max_bytes {
                break;
            }
            bytes += size;
            let Some(entry) = p.pop() else { break };
            if let Some(fresh) = &self.fresh {
                fresh.taken(&entry);
            }
            batch.push(entry);
        }
        if let Some(last) = batch.last() {
            self.delivered = last.revision;
        }
        HubCounters::add(&self.counters.deltas_sent, batch.len());
        Poll::Ready(batch)
    }

    /// When nothing is pending, the revision this watcher is current through (for a
    /// progress message); `None` when changes are waiting to be taken.
    pub fn idle_revision(&mut self) -> Option<u64> {
        // Read the published revision before looking at the pending set: every change
        // up to it has been fanned out, so if none is pending, all were delivered.
        let published = self.view.published.load(Ordering::Acquire);
        let p = lock(&self.slot.pending);
        if !p.by_revision.is_empty() {
            return None;
        }
        self.delivered = self.delivered.max(published);
        Some(self.delivered)
    }

    /// The resume token for `revision` of this watch.
    pub fn token_at(&self, revision: u64) -> Arc<str> {
        let token = ResumeToken {
            revision,
            ..self.token_base
        };
        let mut last = lock(&self.view.last_token);
        match &*last {
            Some((cached, text)) if *cached == token => text.clone(),
            _ => {
                let text: Arc<str> = Arc::from(token.encode());
                *last = Some((token, text.clone()));
                text
            }
        }
    }

    pub fn scope(&self) -> &Scope {
        &self.view.scope
    }

    /// Since when the view is cut off from its sources (see `cutoff`); `None`
    /// while it is current. One atomic load.
    pub fn disconnected_since(&self) -> Option<Millis> {
        self.view.disconnected_since()
    }
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        let mut st = lock(&self.view.state);
        if let Some(i) = st.watchers.iter().position(|w| w.id == self.slot.id) {
            st.watchers.swap_remove(i);
        }
        touch_at(&self.view, self.hub_started);
        drop(st);
        // Unregistered: nothing is added any more. What it had not taken was not
        // delivered, and is no longer waited for.
        if let Some(fresh) = &self.fresh {
            let left = std::mem::take(&mut lock(&self.slot.pending).by_revision);
            for entry in left.values() {
                fresh.left(entry);
            }
        }
    }
}
