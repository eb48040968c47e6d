//! What the hub counts for operators: Watches started by initial mode, changes
//! handed to watchers after their initial state, changes coalesced in pending
//! sets, views loaded and dropped, and scopes re-read by [`Hub::resync`]; and the
//! two gauges read on demand (views in memory, the largest backlog of any watcher).
//!
//! Counters are plain relaxed atomics, added to next to what they count (`apply`,
//! `watch`, `view`, `idle`) with one addition per batch, never under a lock of
//! their own. Boundary: counts and reads; knows nothing of who exports them.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{Hub, InitialMode, lock};

/// The hub's counters, each only growing.
#[derive(Debug, Default)]
pub struct HubCounters {
    /// Changes watchers took from their pending sets (sent after the initial state).
    pub deltas_sent: AtomicU64,
    /// Pending changes replaced by a newer change of the same key before a watcher
    /// took them.
    pub changes_coalesced: AtomicU64,
    /// Scope views loaded from the sources (a first use, or a use after a drop).
    pub views_loaded: AtomicU64,
    /// Scope views dropped from memory as idle.
    pub views_dropped: AtomicU64,
    /// Loaded scopes re-read from the sources and merged (after a stream gap, or
    /// by reconciliation).
    pub resyncs: AtomicU64,
    /// Watches started, by initial mode (full, diff, resumed).
    pub(super) initial_syncs: [AtomicU64; 3],
}

impl HubCounters {
    /// Adds `n` (a whole batch at once) to `counter`.
    #[inline]
    pub(super) fn add(counter: &AtomicU64, n: usize) {
        if n > 0 {
            counter.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    /// The value of `counter` now.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

impl Hub {
    /// What the hub has counted so far.
    pub fn counters(&self) -> &HubCounters {
        &self.counters
    }

    /// Watches started so far by initial mode, for operators.
    pub fn initial_syncs(&self) -> Vec<(&'static str, u64)> {
        [
            ("full", InitialMode::Full),
            ("diff", InitialMode::Diff),
            ("resumed", InitialMode::Resumed),
        ]
        .into_iter()
        .map(|(name, mode)| {
            (
                name,
                self.counters.initial_syncs[mode as usize].load(Ordering::Relaxed),
            )
        })
        .collect()
    }

    /// Scope views in memory now (loaded, or being loaded).
    pub fn views_in_memory(&self) -> usize {
        self.views.len()
    }

    /// The most changes waiting for any one watcher now (0 without watchers). Takes
    /// each view's lock and each watcher's in turn, briefly: a scrape's cost, not
    /// the delivery path's.
    pub fn largest_backlog(&self) -> usize {
        let mut largest = 0;
        for view in self.views.iter() {
            let st = lock(&view.state);
            for w in &st.watchers {
                largest = largest.max(lock(&w.pending).by_revision.len());
            }
        }
        largest
    }
}
