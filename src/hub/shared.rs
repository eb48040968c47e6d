//! How the hub holds and hands out an entry: the domain's [`Entry`], shared (behind
//! an `Arc`) by the view, its history and every pending set it reaches, with one
//! slot beside it that a layer above the hub may fill once.
//!
//! The slot is what lets the API encode a change once for all its watchers (see
//! `crate::api::frame`): the first stream to send an entry stores the entry's
//! encoding there and every other stream copies it. The hub never reads or writes
//! the slot and does not know what the bytes mean; it only keeps them as long as the
//! entry lives.
//!
//! Why bytes, rather than a slot of `Box<dyn Any>` or a hub generic over what it
//! stores: a type parameter on the hub would be named by every user of it (the
//! sources, the server, the tests) for the sake of one of them, and `dyn Any` costs
//! a type check on every read, on the path every delivery takes (measured: about 1%
//! of a delivery's instructions). Bytes are all the one user needs.
//!
//! The slot belongs to this one shared entry: the [`Entry`] inside has no slot, so
//! a copy of it made to be changed (a `Put`'s answer, a secret read on demand) can
//! never carry a form made for the original.

use std::fmt;
use std::ops::Deref;
use std::sync::OnceLock;
use std::sync::atomic::AtomicU64;

use super::fresh::{HANDING, Origin};
use crate::model::Entry;

/// An entry as the hub shares it, with room for one byte form of it made outside
/// the hub. Reads as the [`Entry`] it holds.
pub struct SharedEntry {
    entry: Entry,
    slot: OnceLock<Box<[u8]>>,
    /// Where and when the change was made, when its source says (see `fresh`).
    pub(super) origin: Option<Origin>,
    /// The copies of this change still pending in watchers' sets and the watchers
    /// that took one, for the delivered delay (see `fresh`).
    pub(super) holders: AtomicU64,
}

impl SharedEntry {
    /// The entry, with its slot empty.
    pub fn new(entry: Entry) -> Self {
        SharedEntry {
            entry,
            slot: OnceLock::new(),
            origin: None,
            holders: AtomicU64::new(0),
        }
    }

    /// A change the hub is applying, made at `origin`, before its fan-out.
    pub(super) fn applying(entry: Entry, origin: Option<Origin>) -> Self {
        SharedEntry {
            origin,
            holders: AtomicU64::new(HANDING),
            ..SharedEntry::new(entry)
        }
    }

    #[inline]
    pub fn entry(&self) -> &Entry {
        &self.entry
    }

    /// The bytes in the slot, made by `make` if it is empty. The first caller
    /// decides what they are; one layer (the API's encoder) uses the slot.
    #[inline]
    pub fn slot_or_init(&self, make: impl FnOnce() -> Vec<u8>) -> &[u8] {
        self.slot.get_or_init(|| make().into_boxed_slice())
    }
}

impl Deref for SharedEntry {
    type Target = Entry;

    #[inline]
    fn deref(&self) -> &Entry {
        &self.entry
    }
}

impl fmt::Debug for SharedEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let slot = if self.slot.get().is_some() {
            "filled"
        } else {
            "empty"
        };
        f.debug_struct("SharedEntry")
            .field("entry", &self.entry)
            .field("slot", &slot)
            .finish()
    }
}
