//! Applying changes to a view by version, and the fan-out of each applied change to
//! the watchers whose prefixes match it.
//!
//! A change that is not newer than what the view holds is ignored, so duplicates and
//! reordered deliveries from any source are harmless (invariant 2). A removal
//! without a version becomes a tombstone one version above the live entry.
//! [`Hub::resync`] merges a fresh read of the sources: newer versions, and
//! tombstones for what they no longer have.
//!
//! Boundary: every change to a loaded view's entries, revision and history passes
//! through `apply_locked`, under the view's lock; what a watcher does with what it
//! was handed is `watch`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::fresh::{ChangeSource, Origin};
use super::shared::SharedEntry;
use super::view::{ScopeView, ViewState};
use super::{Hub, HubCounters, lock};
use crate::model::{Entry, Scope, now_millis};
use crate::store::StoreError;

/// What a [`Hub::resync`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Resync {
    /// Changes applied: the view had drifted from the sources by this many keys.
    pub applied: usize,
    /// Keys whose source version is older than the one served:
    /// (key, source version, served version). Left as served.
    pub regressed: Vec<(String, u64, u64)>,
}

impl Hub {
    /// Applies a change from any source. Returns the entry as applied, with its
    /// revision, or `None` when the view already holds this version or a newer one, or
    /// nobody has loaded the scope (the source of truth has it; a later load reads it).
    /// Its source time is unknown: see [`Hub::apply_from`].
    pub fn apply(&self, scope: &Scope, entry: Entry) -> Option<Arc<SharedEntry>> {
        self.apply_from(scope, entry, None)
    }

    /// [`Hub::apply`] of a change made at `origin`, which its freshness is timed
    /// from (a change without one is not timed).
    pub fn apply_from(
        &self,
        scope: &Scope,
        entry: Entry,
        origin: Option<Origin>,
    ) -> Option<Arc<SharedEntry>> {
        let view = self.views.get(scope)?.clone();
        let mut st = lock(&view.state);
        self.apply_locked(&view, &mut st, entry, origin)
    }

    /// Deletes a key that a source reports gone without a version (a Parameter
    /// Store delete, a reconciliation that no longer finds it): a tombstone one
    /// version above the live entry. `None` if the key is not live in a loaded view.
    /// While the scope's first load is in flight, the load is made to read again
    /// instead (it may have read the key before it went).
    pub fn remove_if_live(
        &self,
        scope: &Scope,
        key: &str,
        origin: Option<Origin>,
    ) -> Option<Arc<SharedEntry>> {
        let view = self.views.get(scope)?.clone();
        let mut st = lock(&view.state);
        if st.loading {
            st.reread = true;
            return None;
        }
        let current = st.entries.get(key).filter(|e| !e.deleted)?;
        let tombstone = Entry::tombstone(key, current.version + 1, now_millis());
        self.apply_locked(&view, &mut st, tombstone, origin)
    }

    /// What a loaded view holds for a key (tombstones included); `None` when the
    /// scope is not loaded or the key unknown.
    pub fn held(&self, scope: &Scope, key: &str) -> Option<Arc<SharedEntry>> {
        let view = self.views.get(scope)?.clone();
        if !view.loaded.initialized() {
            return None;
        }
        let st = lock(&view.state);
        st.entries.get(key).cloned()
    }

    /// The revision at which the view applied `key` at `version`: from the entry
    /// when it still holds that version, else from the history; else the view's
    /// revision, a state that already includes that version or a newer one. `None`
    /// when the scope is not loaded.
    pub fn applied_revision(&self, scope: &Scope, key: &str, version: u64) -> Option<u64> {
        let view = self.views.get(scope)?.clone();
        if !view.loaded.initialized() {
            return None;
        }
        let st = lock(&view.state);
        if let Some(e) = st.entries.get(key).filter(|e| e.version == version) {
            return Some(e.revision);
        }
        let from_history = st
            .history
            .iter()
            .rev()
            .find(|e| &*e.key == key && e.version == version)
            .map(|e| e.revision);
        Some(from_history.unwrap_or(st.revision))
    }

    /// Re-reads a loaded scope from the sources and applies what differs: newer
    /// versions, and tombstones for keys the sources no longer have. Used after a
    /// gap in a change stream and by periodic reconciliation. A scope that is not
    /// loaded is skipped: its first load reads fresh state anyway.
    pub async fn resync(&self, scope: &Scope) -> Result<Resync, StoreError> {
        let Some(view) = self.views.get(scope).map(|v| v.clone()) else {
            return Ok(Resync::default());
        };
        let before = {
            let mut st = lock(&view.state);
            if st.loading {
                // The load in flight may predate what made the caller resync.
                st.reread = true;
                return Ok(Resync::default());
            }
            st.revision
        };
        let fresh = self.loader.load_scope(scope).await?;
        HubCounters::add(&self.counters.resyncs, 1);
        let mut st = lock(&view.state);
        Ok(self.merge_fresh(&view, &mut st, fresh, before, ChangeSource::Reconcile))
    }

    /// Replaces a loaded view's state with `state`, the whole of the scope as its
    /// source holds it now (a relay's upstream sent a full state): newer versions
    /// are applied, and keys the state lacks get tombstones. `None` when the scope
    /// is not loaded. Timed as `source`, from each entry's `updated_at`.
    pub fn replace_state(
        &self,
        scope: &Scope,
        state: Vec<Entry>,
        source: ChangeSource,
    ) -> Option<Resync> {
        let view = self.views.get(scope)?.clone();
        if !view.loaded.initialized() {
            return None;
        }
        let mut st = lock(&view.state);
        let before = st.revision;
        Some(self.merge_fresh(&view, &mut st, state, before, source))
    }

    /// The live keys of a loaded view and their versions (secrets included): what
    /// a relay tells its upstream it holds. `None` when the scope is not loaded.
    pub fn versions_held(&self, scope: &Scope) -> Option<Vec<(Arc<str>, u64)>> {
        let view = self.views.get(scope)?.clone();
        if !view.loaded.initialized() {
            return None;
        }
        let st = lock(&view.state);
        Some(
            st.entries
                .values()
                .filter(|e| !e.deleted)
                .map(|e| (e.key.clone(), e.version))
                .collect(),
        )
    }

    /// Applies a fresh read of a scope's sources begun at revision `before`: newer
    /// versions, and tombstones for keys the sources no longer have.
    pub(super) fn merge_fresh(
        &self,
        view: &ScopeView,
        st: &mut ViewState,
        fresh: Vec<Entry>,
        before: u64,
        source: ChangeSource,
    ) -> Resync {
        let mut report = Resync::default();
        let mut present = std::collections::HashSet::with_capacity(fresh.len());
        for entry in fresh {
            present.insert(entry.key.clone());
            if let Some(held) = st.entries.get(&entry.key)
                && held.version > entry.version
                && held.revision <= before
            {
                // The source went back to an older version than we served.
                report
                    .regressed
                    .push((entry.key.to_string(), entry.version, held.version));
                continue;
            }
            let origin = Origin::at_millis(source, entry.updated_at);
            if self.apply_locked(view, st, entry, origin).is_some() {
                report.applied += 1;
            }
        }
        // Keys changed after the read began are newer than it: leave them alone.
        let gone: Vec<(Arc<str>, u64)> = st
            .entries
            .values()
            .filter(|e| !e.deleted && e.revision <= before && !present.contains(&e.key))
            .map(|e| (e.key.clone(), e.version))
            .collect();
        // When they went is unknown: not timed.
        for (key, version) in gone {
            let tombstone = Entry::tombstone(&key, version + 1, now_millis());
            if self.apply_locked(view, st, tombstone, None).is_some() {
                report.applied += 1;
            }
        }
        report
    }

    fn apply_locked(
        &self,
        view: &ScopeView,
        st: &mut ViewState,
        entry: Entry,
        origin: Option<Origin>,
    ) -> Option<Arc<SharedEntry>> {
        if st
            .entries
            .get(&entry.key)
            .is_some_and(|cur| cur.version >= entry.version)
        {
            return None;
        }
        st.revision += 1;
        let mut entry = entry.without_secret();
        entry.revision = st.revision;
        if let Some(origin) = origin {
            self.fresh.observe_applied(origin);
        }
        let entry = Arc::new(SharedEntry::applying(entry, origin));
        st.entries.insert(entry.key.clone(), entry.clone());
        st.history.push_back(entry.clone());
        while st.history.len() > self.config.history_limit {
            if let Some(old) = st.history.pop_front() {
                st.history_floor = old.revision;
            }
        }
        let track = self.config.track_delivery;
        let mut handed = 0u32;
        let mut coalesced = 0;
        for w in &st.watchers {
            if w.prefixes.matches(&entry.key) {
                let (waker, replaced) = {
                    let mut p = lock(&w.pending);
                    let replaced = p.push(&entry);
                    (p.waker.take(), replaced)
                };
                if let Some(waker) = waker {
                    waker.wake();
                }
                handed += 1;
                if let Some(old) = replaced {
                    coalesced += 1;
                    if track {
                        self.fresh.left(&old);
                    }
                }
            }
        }
        if track {
            self.fresh.handed_out(&entry, handed);
        }
        HubCounters::add(&self.counters.changes_coalesced, coalesced);
        view.published.store(st.revision, Ordering::Release);
        Some(entry)
    }
}
