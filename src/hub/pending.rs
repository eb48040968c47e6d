//! One watcher's pending set: the changes handed to it and not yet taken, at most
//! one per key, in revision order.
//!
//! Boundary: a plain data structure, filled by the fan-out (`apply`) and drained by
//! the watch handle (`watch`), both under its own lock; it knows nothing of views.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::task::Waker;

use super::shared::SharedEntry;

/// Up to this many pending changes, the one for a key is found by comparing keys;
/// above it, through an index by key.
const PENDING_SCAN: usize = 8;

/// A watcher's changes not yet taken, at most one per key, in revision order.
///
/// A watcher that keeps up holds one or two changes, so the key of a new change is
/// compared with those few instead of hashed: no hashing at all on the delivery path
/// (SipHash of the key, once to push and once to take, was ~5% of a delivery). A
/// backlog above [`PENDING_SCAN`] gets an index by key, which stays until the
/// backlog is drained. That index keeps the standard library's keyed SipHash on
/// purpose: keys are chosen by clients (any writer of the tenant, or whoever writes
/// to the table), and a slow watcher's backlog can hold every key of its scope, so
/// a hasher without SipHash's resistance to crafted collisions (FxHash, or foldhash,
/// which its authors call only "minimally DoS-resistant") would let a writer
/// pick colliding keys and make every push to that backlog a scan of it, on the
/// thread that fans out to everyone. The scan itself is bounded by [`PENDING_SCAN`]
/// comparisons whatever the keys.
#[derive(Default)]
pub(super) struct Pending {
    pub(super) by_revision: BTreeMap<u64, Arc<SharedEntry>>,
    /// Present while the backlog is above [`PENDING_SCAN`] (until it drains).
    pub(super) index: Option<HashMap<Arc<str>, u64>>,
    pub(super) waker: Option<Waker>,
    pub(super) high_water: usize,
}

impl Pending {
    /// Adds a change; returns the pending change of the same key it replaced.
    #[inline]
    pub(super) fn push(&mut self, entry: &Arc<SharedEntry>) -> Option<Arc<SharedEntry>> {
        let replaced = match &mut self.index {
            Some(index) => index.insert(entry.key.clone(), entry.revision),
            None => self
                .by_revision
                .iter()
                .find(|(_, e)| e.key == entry.key)
                .map(|(revision, _)| *revision),
        };
        let replaced = replaced.and_then(|old| self.by_revision.remove(&old));
        self.by_revision.insert(entry.revision, entry.clone());
        if self.index.is_none() && self.by_revision.len() > PENDING_SCAN {
            self.index = Some(
                self.by_revision
                    .values()
                    .map(|e| (e.key.clone(), e.revision))
                    .collect(),
            );
        }
        self.high_water = self.high_water.max(self.by_revision.len());
        replaced
    }

    /// Takes the oldest pending change.
    #[inline]
    pub(super) fn pop(&mut self) -> Option<Arc<SharedEntry>> {
        let (_, entry) = self.by_revision.pop_first()?;
        if let Some(index) = &mut self.index {
            index.remove(&entry.key);
            if self.by_revision.is_empty() {
                self.index = None;
            }
        }
        Some(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Entry;

    /// The pending set against a plain model (newest change per key, in revision
    /// order), across the switch from scanning to the index and back.
    #[test]
    fn pending_coalesces_the_same_with_and_without_its_index() {
        let mut p = Pending::default();
        let mut model: BTreeMap<u64, String> = BTreeMap::new();
        let mut revision = 0u64;
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut saw_index = false;
        for step in 0..20_000 {
            // Phases of pushing more than taking and the other way round, so the
            // backlog crosses PENDING_SCAN often and drains to zero often.
            let pushing = (step / 500) % 2 == 0;
            if next(10) < if pushing { 7 } else { 3 } {
                revision += 1;
                let key = format!("k{}", next(if step % 3 == 0 { 5 } else { 40 }));
                let mut e = Entry::live(&key, revision, "1", 0);
                e.revision = revision;
                p.push(&Arc::new(SharedEntry::new(e)));
                model.retain(|_, k| *k != key);
                model.insert(revision, key);
            } else {
                let got = p.pop().map(|e| (e.revision, e.key.to_string()));
                assert_eq!(got, model.pop_first(), "step {step}");
            }
            saw_index |= p.index.is_some();
            assert_eq!(p.by_revision.len(), model.len(), "step {step}");
            if let Some(index) = &p.index {
                assert_eq!(index.len(), model.len(), "step {step}");
            }
            if model.is_empty() {
                assert!(p.index.is_none(), "the index goes when the backlog drains");
            }
            let held: Vec<(u64, String)> = p
                .by_revision
                .iter()
                .map(|(r, e)| (*r, e.key.to_string()))
                .collect();
            let want: Vec<(u64, String)> = model.iter().map(|(r, k)| (*r, k.clone())).collect();
            assert_eq!(held, want, "step {step}");
        }
        assert!(saw_index);
    }
}
