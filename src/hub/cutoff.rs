//! A view cut off from its sources: a relay that lost its upstream (one view at a
//! time), or an origin whose sources fail (every view at once), keeps serving what
//! it holds, and every watcher of the view is told since when, at once (a progress
//! message) and on every message until the view is current again. A view marked
//! both ways reports the earlier time.
//!
//! Boundary: the marks and the wake-up. Who decides that a view is cut off (the
//! relay's upstream watch, the sources' supervisor) is outside the hub; what a
//! watcher sends is the API's.

use std::sync::atomic::Ordering;

use super::view::ScopeView;
use super::{Hub, lock};
use crate::model::{Millis, Scope};

impl ScopeView {
    /// Since when the view is cut off from its sources; `None` while current.
    pub fn disconnected_since(&self) -> Option<Millis> {
        let own = self.cut_off.load(Ordering::Acquire);
        let all = self.all_cut_off.load(Ordering::Acquire);
        match (own, all) {
            (0, 0) => None,
            (0, ms) | (ms, 0) => Some(ms),
            (a, b) => Some(a.min(b)),
        }
    }
}

/// A mark as kept: 0 means current, so a time at the epoch itself is 1 ms after.
fn mark_of(since: Option<Millis>) -> i64 {
    since.map_or(0, |ms| ms.max(1))
}

/// Wakes every watcher of `view`, so each says what changed.
fn wake_all(view: &ScopeView) {
    let st = lock(&view.state);
    for w in &st.watchers {
        let waker = lock(&w.pending).waker.take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl Hub {
    /// Marks the scope's view as cut off from its sources since `since`, or as
    /// current with `None`. Watchers are woken when the mark changes, so each sends
    /// a progress message that says so. Returns whether it changed (false too when
    /// the scope has no view).
    pub fn set_disconnected(&self, scope: &Scope, since: Option<Millis>) -> bool {
        let Some(view) = self.views.get(scope).map(|v| v.clone()) else {
            return false;
        };
        let mark = mark_of(since);
        if view.cut_off.swap(mark, Ordering::AcqRel) == mark {
            return false;
        }
        wake_all(&view);
        true
    }

    /// Marks every view, loaded now or later, as cut off from the sources since
    /// `since` (an origin whose sources fail), or as current with `None`. Returns
    /// whether it changed.
    pub fn set_all_disconnected(&self, since: Option<Millis>) -> bool {
        let mark = mark_of(since);
        if self.cut_off.swap(mark, Ordering::AcqRel) == mark {
            return false;
        }
        let views: Vec<_> = self.views.iter().map(|v| v.value().clone()).collect();
        for view in views {
            wake_all(&view);
        }
        true
    }

    /// Since when the scope's view is cut off from its sources; `None` while
    /// current, or when the scope has no view.
    pub fn disconnected_since(&self, scope: &Scope) -> Option<Millis> {
        self.views.get(scope)?.disconnected_since()
    }
}
