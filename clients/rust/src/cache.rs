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
mod tests {
    use super::*;

    fn e(key: &str, version: u64, value: &str) -> WireEntry {
        WireEntry {
            key: key.into(),
            version,
            value: value.into(),
            secret: false,
            deleted: false,
            revision: version,
            updated_at: None,
        }
    }

    fn del(key: &str, version: u64) -> WireEntry {
        WireEntry {
            deleted: true,
            value: String::new(),
            ..e(key, version, "")
        }
    }

    fn summary(changes: &[Change]) -> Vec<String> {
        changes
            .iter()
            .map(|c| {
                format!(
                    "{}@{}{}",
                    c.key,
                    c.version,
                    if c.kind == ChangeKind::Delete {
                        "-"
                    } else {
                        ""
                    }
                )
            })
            .collect()
    }

    #[test]
    fn deltas_apply_only_when_newer_and_tombstones_block_old_messages() {
        let mut c = Cache::default();
        let ch = c.apply_initial(SyncMode::Full, vec![e("a", 1, "1"), e("b", 2, "2")]);
        assert_eq!(summary(&ch), ["a@1", "b@2"]);
        assert_eq!(c.live_count(), 2);

        let ch = c.apply_deltas(
            vec![e("a", 1, "dup"), e("a", 3, "3"), del("b", 3)],
            Cause::Delta,
        );
        assert_eq!(summary(&ch), ["a@3", "b@3-"]);
        assert_eq!(ch[0].previous_version, Some(1));
        assert_eq!(c.live_count(), 1);
        // An old message cannot bring b back.
        assert!(
            c.apply_deltas(vec![e("b", 2, "old")], Cause::Delta)
                .is_empty()
        );
        assert!(c.live("b").is_none());
        assert_eq!(c.version_of("b"), Some(3));
        // A newer one re-creates it.
        let ch = c.apply_deltas(vec![e("b", 4, "\"new\"")], Cause::Delta);
        assert_eq!(summary(&ch), ["b@4"]);
        assert_eq!(ch[0].previous_version, None);
        assert_eq!(
            ch[0].value::<String>().ok().flatten().as_deref(),
            Some("new")
        );
        // Deleting a key never seen stores its tombstone and shows nothing.
        assert!(c.apply_deltas(vec![del("z", 5)], Cause::Delta).is_empty());
        assert_eq!(c.version_of("z"), Some(5));
    }

    /// The digest as the API defines it: the server's tests check the same values.
    #[test]
    fn known_digest_matches_the_api_definition() {
        let hex = |d: [u8; 16]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let mut c = Cache::default();
        assert_eq!(hex(c.known_digest()), "00000000000000000000000000000000");
        c.apply_deltas(vec![e("tenant_config_a", 1, "1")], Cause::Delta);
        assert_eq!(hex(c.known_digest()), "1189b337f183118e15d6dc71f6d0d83c");
        let mut secret = e("param_config_db/url", 1_732_406_400_123_456, "");
        secret.secret = true;
        c.apply_deltas(vec![secret], Cause::Delta);
        assert_eq!(hex(c.known_digest()), "00c129ddb1e3f7f8fc7dfd609aecf9f2");
        // Tombstones are not held state.
        c.apply_deltas(
            vec![del("param_config_db/url", 1_732_406_400_123_457)],
            Cause::Delta,
        );
        c.apply_deltas(vec![del("tenant_config_gone", 3)], Cause::Delta);
        assert_eq!(hex(c.known_digest()), "1189b337f183118e15d6dc71f6d0d83c");
    }

    #[test]
    fn full_replaces_everything_held() {
        let mut c = Cache::default();
        c.apply_initial(SyncMode::Full, vec![e("a", 1, "1"), e("b", 1, "1")]);
        let ch = c.apply_initial(SyncMode::Full, vec![e("b", 1, "1"), e("c", 1, "1")]);
        assert_eq!(summary(&ch), ["a@1-", "c@1"]);
        assert_eq!(c.known_versions().len(), 2);
        assert!(c.live("a").is_none());
    }

    #[test]
    fn a_diff_never_takes_a_key_back_but_removes_what_the_server_does_not_know() {
        let mut c = Cache::default();
        c.apply_initial(SyncMode::Full, vec![e("a", 5, "5"), e("b", 5, "5")]);
        c.apply_deltas(vec![del("d", 9)], Cause::Delta);
        // A server that lags behind the instance the cache came from: a at 1 and d
        // live at 8 are older than held; b it does not know at all (version 0).
        let ch = c.apply_initial(
            SyncMode::Diff,
            vec![e("a", 1, "1"), del("b", 0), e("d", 8, "8")],
        );
        // b is gone: its tombstone keeps the version held.
        assert_eq!(summary(&ch), ["b@5-"]);
        assert_eq!(c.version_of("a"), Some(5));
        assert!(c.live("d").is_none());
        assert_eq!(c.version_of("b"), Some(5));
        // What is newer applies.
        let ch = c.apply_initial(
            SyncMode::Diff,
            vec![e("a", 6, "6"), e("d", 10, "10"), e("b", 5, "old")],
        );
        assert_eq!(summary(&ch), ["a@6", "d@10"]);
        let ch = c.apply_deltas(vec![e("b", 6, "x")], Cause::Delta);
        assert_eq!(summary(&ch), ["b@6"]);
    }

    #[test]
    fn a_state_that_removes_everything_held_is_recognised() {
        let mut c = Cache::default();
        // Nothing held: nothing to protect.
        assert_eq!(c.mass_removal(SyncMode::Full, &[]), None);
        c.apply_initial(SyncMode::Full, vec![e("a", 1, "1"), e("b", 1, "1")]);
        let counts = |held, removed, remaining| {
            Some(RemovalCounts {
                held,
                removed,
                remaining,
            })
        };
        // An empty FULL state (a new, empty store).
        assert_eq!(c.mass_removal(SyncMode::Full, &[]), counts(2, 2, 0));
        // A FULL state of other keys removes everything held too.
        assert_eq!(
            c.mass_removal(SyncMode::Full, &[e("z", 1, "1")]),
            counts(2, 2, 1)
        );
        // One key kept: a partial removal.
        assert_eq!(c.mass_removal(SyncMode::Full, &[e("b", 1, "1")]), None);
        // A DIFF removing every key held (an empty store diffed against the versions).
        assert_eq!(
            c.mass_removal(SyncMode::Diff, &[del("a", 0), del("b", 0)]),
            counts(2, 2, 0)
        );
        // A DIFF that removes some, or changes the others, is a partial removal.
        assert_eq!(c.mass_removal(SyncMode::Diff, &[del("a", 2)]), None);
        assert_eq!(
            c.mass_removal(SyncMode::Diff, &[del("a", 2), e("b", 2, "2")]),
            None
        );
        assert_eq!(c.mass_removal(SyncMode::Diff, &[]), None);
        // RESUMED states are changes that happened, applied by version.
        assert_eq!(
            c.mass_removal(SyncMode::Resumed, &[del("a", 2), del("b", 2)]),
            None
        );
        // Tombstones are not held: deleting the last live key is still everything.
        c.apply_deltas(vec![del("a", 2)], Cause::Delta);
        assert_eq!(
            c.mass_removal(SyncMode::Diff, &[del("b", 2)]),
            counts(1, 1, 0)
        );
    }

    #[test]
    fn resumed_applies_like_deltas() {
        let mut c = Cache::default();
        c.apply_initial(SyncMode::Full, vec![e("a", 2, "2")]);
        let ch = c.apply_initial(SyncMode::Resumed, vec![e("a", 2, "2"), e("a", 3, "3")]);
        assert_eq!(summary(&ch), ["a@3"]);
        assert_eq!(ch[0].cause, Cause::Resumed);
    }

    #[test]
    fn secrets_never_hold_a_value() {
        let mut c = Cache::default();
        let mut s = e("param_config_pw", 1, "\"leaked\"");
        s.secret = true;
        let ch = c.apply_initial(SyncMode::Full, vec![s]);
        assert!(ch[0].secret);
        assert_eq!(ch[0].raw_value(), None);
        let held = c.live("param_config_pw");
        assert!(held.is_some_and(|h| h.secret && h.raw.is_none()));
    }

    #[test]
    fn prefix_iteration() {
        let mut c = Cache::default();
        c.apply_initial(
            SyncMode::Full,
            vec![e("p_a", 1, "1"), e("p_b", 1, "1"), e("q", 1, "1")],
        );
        c.apply_deltas(vec![del("p_b", 2)], Cause::Delta);
        let keys: Vec<&String> = c.iter_live_under("p_").map(|(k, _)| k).collect();
        assert_eq!(keys, ["p_a"]);
    }
}
