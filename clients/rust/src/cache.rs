//! The tenant-scoped cache and the rules that keep it equal to the server's state.
//! Pure: no I/O, no gRPC, no clock, so the rules can be read (and tested) alone.
//!
//! - FULL initial state: replaces everything held (the cache only ever holds keys
//!   under the watched prefixes of one tenant).
//! - DIFF initial state: each entry applies if it is newer than what is held for
//!   its key (live or deleted): the server may lag behind the instance the cache
//!   heard a version from, and versions only grow. A deleted entry is a
//!   removal; at version 0 (a key neither the server nor its sources know) it
//!   always applies, and the tombstone keeps the version held.
//! - RESUMED initial state and deltas: an entry applies only if its version is newer
//!   than the one held for its key. Versions of deleted keys are kept as tombstones,
//!   so an old message can never bring a deleted key back.
//! - Secrets: only their version and existence are held, never a value.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use serde::de::DeserializeOwned;

use crate::error::Error;

/// One entry as the server sends it (converted from protobuf by `wire`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WireEntry {
    pub key: String,
    pub version: u64,
    pub value: String,
    pub secret: bool,
    pub deleted: bool,
    pub revision: u64,
    pub updated_at: Option<SystemTime>,
}

/// How the server built an initial state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SyncMode {
    /// The whole state under the prefixes; it replaced what the cache held.
    Full,
    /// Only what differed from the versions the client held, with removals.
    Diff,
    /// Exactly the changes after the client's resume token.
    Resumed,
}

/// How a change reached the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cause {
    /// A full initial state (first connection, or nothing to resume from).
    Full,
    /// An initial state diffed against the versions held (after a server restart).
    Diff,
    /// Changes replayed after the resume token on reconnection.
    Resumed,
    /// A live change, as it happened.
    Delta,
}

impl From<SyncMode> for Cause {
    fn from(mode: SyncMode) -> Self {
        match mode {
            SyncMode::Full => Cause::Full,
            SyncMode::Diff => Cause::Diff,
            SyncMode::Resumed => Cause::Resumed,
        }
    }
}

/// Whether a key now has a value or no longer exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// The key has a (new) value.
    Set,
    /// The key was deleted.
    Delete,
}

/// One key's change.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Change {
    /// The key.
    pub key: String,
    /// Set or delete.
    pub kind: ChangeKind,
    /// The key's version after the change (for a delete, the tombstone's version).
    pub version: u64,
    /// The version the key had before, when it existed.
    pub previous_version: Option<u64>,
    /// A secret: no value; read it with [`Client::read_secret`](crate::Client::read_secret).
    pub secret: bool,
    /// The tenant revision at which the server applied the change.
    pub revision: u64,
    /// How the change reached the cache.
    pub cause: Cause,
    /// How many earlier changes to this key this one replaces in a
    /// [`ChangeStream`](crate::ChangeStream) whose reader fell behind (0 when none):
    /// a stream holds at most one waiting change per key, the newest.
    pub coalesced: u64,
    pub(crate) raw: Option<Arc<str>>,
}

impl Change {
    /// The new value as JSON text; `None` for deletes and secrets.
    pub fn raw_value(&self) -> Option<&str> {
        self.raw.as_deref()
    }

    /// The new value decoded from JSON; `None` for deletes and secrets.
    pub fn value<T: DeserializeOwned>(&self) -> Result<Option<T>, Error> {
        match &self.raw {
            None => Ok(None),
            Some(raw) => decode(&self.key, raw).map(Some),
        }
    }
}

pub(crate) fn decode<T: DeserializeOwned>(key: &str, raw: &str) -> Result<T, Error> {
    serde_json::from_str(raw).map_err(|e| Error::Decode {
        key: key.to_owned(),
        source: Arc::new(e),
    })
}

/// The counts of an initial state that would remove every live entry held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RemovalCounts {
    /// Live entries held.
    pub held: usize,
    /// How many of them the state removes (all).
    pub removed: usize,
    /// Live entries the cache would hold afterwards (keys it did not hold).
    pub remaining: usize,
}

/// What the cache holds for one key.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Held {
    pub version: u64,
    pub deleted: bool,
    pub secret: bool,
    /// JSON text as received; `None` for tombstones and secrets.
    pub raw: Option<Arc<str>>,
    pub revision: u64,
    pub updated_at: Option<SystemTime>,
}

impl Held {
    fn from_wire(e: WireEntry) -> (String, Held) {
        let raw = if e.deleted || e.secret {
            None
        } else {
            Some(Arc::from(e.value))
        };
        (
            e.key,
            Held {
                version: e.version,
                deleted: e.deleted,
                secret: e.secret && !e.deleted,
                raw,
                revision: e.revision,
                updated_at: e.updated_at,
            },
        )
    }

    fn same_state(&self, other: &Held) -> bool {
        self.version == other.version
            && self.deleted == other.deleted
            && self.secret == other.secret
            && self.raw == other.raw
    }
}

#[derive(Debug, Default)]
pub(crate) struct Cache {
    held: BTreeMap<String, Held>,
    live: usize,
}

impl Cache {
    /// The live entry for a key (secrets included).
    pub fn live(&self, key: &str) -> Option<&Held> {
        self.held.get(key).filter(|h| !h.deleted)
    }

    /// Every live entry, in key order.
    pub fn iter_live(&self) -> impl Iterator<Item = (&String, &Held)> {
        self.held.iter().filter(|(_, h)| !h.deleted)
    }

    /// Live entries whose key starts with `prefix`, in key order.
    pub fn iter_live_under<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a String, &'a Held)> + 'a {
        self.held
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(move |(k, _)| k.starts_with(prefix))
            .filter(|(_, h)| !h.deleted)
    }

    pub fn live_count(&self) -> usize {
        self.live
    }

    /// key -> version of every live entry, as Watch's `known_versions` wants it.
    pub fn known_versions(&self) -> HashMap<String, u64> {
        self.iter_live()
            .map(|(k, h)| (k.clone(), h.version))
            .collect()
    }

    /// The digest of [`Self::known_versions`], as Watch's `known_digest` wants it:
    /// for each live entry, SHA-256 over the key, a zero byte and the version as 8
    /// big-endian bytes; the first 16 bytes of each XORed together.
    pub fn known_digest(&self) -> [u8; 16] {
        crate::wire::known_digest(self.iter_live().map(|(k, h)| (k.as_str(), h.version)))
    }

    /// The version held for a key, tombstones included.
    #[cfg(test)]
    pub fn version_of(&self, key: &str) -> Option<u64> {
        self.held.get(key).map(|h| h.version)
    }

    /// Loads entries (from a snapshot) into an empty cache; reports no changes.
    pub fn load(&mut self, entries: Vec<WireEntry>) {
        for e in entries {
            let (key, held) = Held::from_wire(e);
            self.store(key, held);
        }
    }

    /// What a complete initial state would do to the live entries held: `Some` when
    /// it would remove every one of them (at least one is held), `None` otherwise.
    /// RESUMED states are changes that happened, applied by version: never checked.
    pub fn mass_removal(&self, mode: SyncMode, entries: &[WireEntry]) -> Option<RemovalCounts> {
        let held = self.live;
        if held == 0 || mode == SyncMode::Resumed {
            return None;
        }
        // A state carries one entry per key. Cheap answers first: an ordinary resync
        // keeps most keys, and is told apart without allocating.
        if mode == SyncMode::Full {
            // FULL: a held key stays if the state has it live.
            if entries
                .iter()
                .any(|e| !e.deleted && self.live(&e.key).is_some())
            {
                return None;
            }
        } else {
            // DIFF: only explicit removals remove; keys it does not name stay.
            if entries.iter().filter(|e| e.deleted).count() < held {
                return None;
            }
            let removed: HashSet<&str> = entries
                .iter()
                .filter(|e| e.deleted && self.live(&e.key).is_some())
                .map(|e| e.key.as_str())
                .collect();
            if removed.len() < held {
                return None;
            }
        }
        let remaining = entries
            .iter()
            .filter(|e| !e.deleted && self.live(&e.key).is_none())
            .count();
        Some(RemovalCounts {
            held,
            removed: held,
            remaining,
        })
    }

    /// Applies a complete initial state; returns the visible changes.
    pub fn apply_initial(&mut self, mode: SyncMode, entries: Vec<WireEntry>) -> Vec<Change> {
        match mode {
            SyncMode::Resumed => self.apply_deltas(entries, Cause::Resumed),
            SyncMode::Diff => self.apply_diff(entries),
            SyncMode::Full => {
                let present: HashSet<&str> = entries.iter().map(|e| e.key.as_str()).collect();
                let gone: Vec<String> = self
                    .iter_live()
                    .filter(|(k, _)| !present.contains(k.as_str()))
                    .map(|(k, _)| k.clone())
                    .collect();
                let mut changes = Vec::new();
                for key in gone {
                    // Gone from the server: keep its version as a tombstone.
                    if let Some(cur) = self.held.get(&key) {
                        let tombstone = Held {
                            deleted: true,
                            secret: false,
                            raw: None,
                            ..cur.clone()
                        };
                        if let Some(c) = self.set(key, tombstone, Cause::Full) {
                            changes.push(c);
                        }
                    }
                }
                changes.extend(self.apply_authoritative(entries, Cause::Full));
                changes
            }
        }
    }

    /// Applies deltas: each entry only if its version is newer than what is held.
    pub fn apply_deltas(&mut self, entries: Vec<WireEntry>, cause: Cause) -> Vec<Change> {
        let mut changes = Vec::new();
        for e in entries {
            if let Some(cur) = self.held.get(&e.key)
                && e.version <= cur.version
            {
                continue;
            }
            let (key, next) = Held::from_wire(e);
            if let Some(c) = self.set(key, next, cause) {
                changes.push(c);
            }
        }
        changes
    }

    /// A DIFF: each entry newer than what is held for its key (live or deleted);
    /// a removal at version 0 (a key the server does not know) always,
    /// as a tombstone at the version held (as a FULL state's removals).
    fn apply_diff(&mut self, entries: Vec<WireEntry>) -> Vec<Change> {
        let entries = entries
            .into_iter()
            .filter_map(|mut e| {
                let held = self.held.get(&e.key).map(|cur| cur.version);
                if e.deleted && e.version == 0 {
                    e.version = held.unwrap_or(0);
                    return Some(e);
                }
                held.is_none_or(|v| v < e.version).then_some(e)
            })
            .collect();
        self.apply_authoritative(entries, Cause::Diff)
    }

    fn apply_authoritative(&mut self, entries: Vec<WireEntry>, cause: Cause) -> Vec<Change> {
        let mut changes = Vec::new();
        for e in entries {
            let (key, next) = Held::from_wire(e);
            if let Some(cur) = self.held.get(&key)
                && cur.same_state(&next)
            {
                continue;
            }
            if let Some(c) = self.set(key, next, cause) {
                changes.push(c);
            }
        }
        changes
    }

    /// Stores `next`; returns the change a reader can see, if any (a tombstone for a
    /// key that was not live changes nothing visible).
    fn set(&mut self, key: String, next: Held, cause: Cause) -> Option<Change> {
        let previous = self.store(key.clone(), next.clone());
        let previous_version = previous.filter(|p| !p.deleted).map(|p| p.version);
        if next.deleted && previous_version.is_none() {
            return None;
        }
        Some(Change {
            key,
            kind: if next.deleted {
                ChangeKind::Delete
            } else {
                ChangeKind::Set
            },
            version: next.version,
            previous_version,
            secret: next.secret,
            revision: next.revision,
            cause,
            coalesced: 0,
            raw: next.raw,
        })
    }

    /// Inserts, keeping the live count; returns what was held.
    fn store(&mut self, key: String, next: Held) -> Option<Held> {
        let now_live = !next.deleted;
        let previous = self.held.insert(key, next);
        let was_live = previous.as_ref().is_some_and(|p| !p.deleted);
        match (was_live, now_live) {
            (false, true) => self.live += 1,
            (true, false) => self.live = self.live.saturating_sub(1),
            _ => {}
        }
        previous
    }
}

#[cfg(test)]
mod tests;
