//! The removals a diff sends for keys the caller holds and the view does not know,
//! checked with the sources of truth first.
//!
//! A view does not know a key that was deleted (by a tool's hard delete, say)
//! before the view was loaded: the caller must be told it is gone. But a caller
//! that moves between instances over the same sources (two origins, each reading
//! the stream and its own queue) may also hold a key that this instance's sources
//! have not brought yet: created through the other instance a moment ago. An
//! unchecked removal would delete that live key from the caller until the source
//! brings it back. So each such key is read from the sources: one they still hold
//! is applied to the view by version (its watchers, the caller included, get it
//! through their pending sets, and a caller ignores what is not newer than it
//! holds); one they do not have becomes the removal.
//!
//! Boundary: reads keys through the hub's `ScopeLoader` and changes the view only
//! through `apply` (by version). At most [`MAX_CONFIRMED`] reads per diff, so a
//! caller naming many unknown keys costs a bounded number of reads; the removals
//! past it are sent unchecked, and a read that fails leaves its removal as well.

use std::sync::Arc;

use super::Hub;
use super::shared::SharedEntry;
use crate::model::{Entry, Scope, now_millis};

/// Reads of the sources one diff may make for keys the view does not know.
pub const MAX_CONFIRMED: usize = 32;

impl Hub {
    /// The removals to send for `unknown` keys of `scope` (the keys a caller holds
    /// that the view does not know): those the sources do not hold either.
    pub(super) async fn confirm_removals(
        &self,
        scope: &Scope,
        unknown: Vec<String>,
    ) -> Vec<Arc<SharedEntry>> {
        let now = now_millis();
        let mut removals = Vec::new();
        for (i, key) in unknown.into_iter().enumerate() {
            if i < MAX_CONFIRMED
                && let Ok(Some(held)) = self.loader.read_key(scope, &key).await
            {
                self.apply(scope, held);
                continue;
            }
            removals.push(Arc::new(SharedEntry::new(Entry::tombstone(&key, 0, now))));
        }
        removals
    }
}
