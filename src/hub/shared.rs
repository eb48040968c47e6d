//! How the hub holds and hands out an entry: the domain's [`Entry`], shared (behind
//! an `Arc`) by the view, its history and every pending set it reaches, with one
//! slot beside it that a layer above the hub may fill once.
//!
//! The slot is what lets the API encode a change once for all its watchers (see
//! `crate::api::frame`): the first stream to send an entry stores the entry's
//! encoding there and every other stream copies it. The hub never reads, writes or
//! names what is in the slot; it only keeps it as long as the entry lives.
//!
//! Why a slot of `Box<dyn Any>` rather than a hub generic over what it stores: a
//! type parameter on the hub would be named by every user of it (the sources, the
//! server, the tests) for the sake of one of them. The slot costs one allocation
//! per entry that is sent, and reading it one type check (a call for the type id
//! and a comparison) per read, which is small beside the copy of the bytes that
//! follows. What goes in is decided by whoever fills it first; a reader that finds
//! another type there gets `None` and must do without.
//!
//! The slot belongs to this one shared entry: the [`Entry`] inside has no slot, so
//! a copy of it made to be changed (a `Put`'s answer, a secret read on demand) can
//! never carry a form made for the original.

use std::any::Any;
use std::fmt;
use std::ops::Deref;
use std::sync::OnceLock;

use crate::model::Entry;

/// An entry as the hub shares it, with room for one form of it made outside the
/// hub. Reads as the [`Entry`] it holds.
pub struct SharedEntry {
    entry: Entry,
    slot: OnceLock<Box<dyn Any + Send + Sync>>,
}

impl SharedEntry {
    /// The entry, with its slot empty.
    pub fn new(entry: Entry) -> Self {
        SharedEntry {
            entry,
            slot: OnceLock::new(),
        }
    }

    #[inline]
    pub fn entry(&self) -> &Entry {
        &self.entry
    }

    /// What the slot holds, made by `make` if it is empty. `None` when it holds
    /// something of another type (`make` is not called then).
    #[inline]
    pub fn slot_or_init<T: Any + Send + Sync>(&self, make: impl FnOnce() -> T) -> Option<&T> {
        self.slot.get_or_init(|| Box::new(make())).downcast_ref()
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
