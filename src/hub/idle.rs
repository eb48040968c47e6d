//! Idle views leave memory: a scope's view that has had no watcher and no `Get`,
//! `Put` or `Delete` for a while is dropped from the hub, and so from
//! reconciliation; its next use loads it again from the sources, as a first use does.
//!
//! A view is dropped only when the hub's map holds the one reference to it. Every
//! use holds one for as long as it runs: a watcher (its handle), a load, a `Get`, a
//! write from before its commit until its `apply` (the API keeps the view it loaded),
//! a resync. The check and the removal happen under the map's lock, and a new
//! reference is only ever taken through the map or from another, so nothing can
//! start using a view in between.
//!
//! Resume tokens stay right across a drop: a reloaded view numbers its revisions
//! above every revision a dropped view reached, so a token from before the drop is
//! below the new view's history and falls back to a diff, as after a restart.
//!
//! Boundary: when a view counts as used and when it goes; the view's content is
//! `view`. Sources never count as use (they only touch loaded views; a change for a
//! dropped scope is in the source of truth, which the next load reads).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::view::ScopeView;
use super::{Hub, HubCounters, lock};

/// How long a view may go unused before it is dropped, unless configured otherwise.
pub const DEFAULT_VIEW_IDLE: Duration = Duration::from_secs(600);

/// The shortest pause between two sweeps.
const MIN_SWEEP_EVERY: Duration = Duration::from_secs(1);

impl Hub {
    /// Milliseconds since the hub started, on tokio's clock (paused in tests).
    pub(super) fn now_ms(&self) -> u64 {
        ms_since(self.started)
    }

    /// Marks the view as used now.
    pub(super) fn touch(&self, view: &ScopeView) {
        touch_at(view, self.started);
    }

    /// Drops every view unused for at least `idle`: no watcher, no load, read or
    /// write in flight, and no use begun since. Returns how many were dropped.
    pub fn drop_idle(&self, idle: Duration) -> usize {
        let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        let now = self.now_ms();
        let candidates: Vec<_> = self
            .views
            .iter()
            .filter(|v| now.saturating_sub(v.last_used.load(Ordering::Relaxed)) >= idle_ms)
            .map(|v| v.key().clone())
            .collect();
        let mut dropped = 0;
        for scope in candidates {
            let gone = self.views.remove_if(&scope, |_, view| {
                // Under the map's lock: nobody else holds the view, and nobody can
                // take it now but through the map.
                if Arc::strong_count(view) != 1
                    || now.saturating_sub(view.last_used.load(Ordering::Relaxed)) < idle_ms
                {
                    return false;
                }
                let st = lock(&view.state);
                if !st.watchers.is_empty() {
                    return false;
                }
                // A reload numbers its revisions above this one.
                self.retired.fetch_max(st.revision, Ordering::AcqRel);
                true
            });
            if gone.is_some() {
                tracing::debug!(%scope, "idle view dropped from memory");
                dropped += 1;
            }
        }
        HubCounters::add(&self.counters.views_dropped, dropped);
        dropped
    }

    /// The revision a view created now starts at: above every revision a dropped
    /// view reached, so that no resume token from before a drop can resume it.
    pub(super) fn first_revision(&self) -> u64 {
        match self.retired.load(Ordering::Acquire) {
            0 => 0,
            r => r + 1,
        }
    }
}

fn ms_since(start: tokio::time::Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Marks the view as used now, on the clock of a hub started at `start` (for a
/// watcher that ends: the view was in use until then).
pub(super) fn touch_at(view: &ScopeView, start: tokio::time::Instant) {
    view.last_used.store(ms_since(start), Ordering::Relaxed);
}

/// Drops views unused for `idle`, checking a few times per `idle`, until
/// `shutdown`. A zero `idle` means never: the task returns at once.
pub async fn sweep(hub: Arc<Hub>, idle: Duration, shutdown: CancellationToken) {
    if idle.is_zero() {
        return;
    }
    let every = (idle / 4).max(MIN_SWEEP_EVERY);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let dropped = hub.drop_idle(idle);
        if dropped > 0 {
            tracing::debug!(dropped, views = hub.views.len(), "idle views dropped");
        }
    }
}

#[cfg(test)]
mod tests;
