//! A view cut off from its sources: a relay that lost its upstream keeps serving
//! what it holds, and every watcher of the view is told since when, at once (a
//! progress message) and on every message until the view is current again.
//!
//! Boundary: the mark and the wake-up. Who decides that a view is cut off (the
//! relay's upstream watch) is outside the hub; what a watcher sends is the API's.

use std::sync::atomic::Ordering;

use super::view::ScopeView;
use super::{Hub, lock};
use crate::model::{Millis, Scope};

impl ScopeView {
    /// Since when the view is cut off from its sources; `None` while current.
    pub fn disconnected_since(&self) -> Option<Millis> {
        match self.cut_off.load(Ordering::Acquire) {
            0 => None,
            ms => Some(ms),
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
        // 0 means current: a cut-off time at the epoch itself is taken as 1 ms after.
        let mark = since.map_or(0, |ms| ms.max(1));
        if view.cut_off.swap(mark, Ordering::AcqRel) == mark {
            return false;
        }
        let st = lock(&view.state);
        for w in &st.watchers {
            let waker = lock(&w.pending).waker.take();
            if let Some(waker) = waker {
                waker.wake();
            }
        }
        true
    }

    /// Since when the scope's view is cut off from its sources; `None` while
    /// current, or when the scope has no view.
    pub fn disconnected_since(&self, scope: &Scope) -> Option<Millis> {
        self.views.get(scope)?.disconnected_since()
    }
}
