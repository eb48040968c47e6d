//! The state digest: a fixed-size summary of the versions a watcher holds under its
//! prefixes, so a reconnecting watcher whose token cannot be replayed can say in 16
//! bytes that it holds the server's state ([`Known`] is what it may say).
//!
//! Boundary: the definition (shared with the client libraries, which compute it from
//! their caches) and a view's per-revision cache of it.

use std::collections::HashMap;

use super::view::ViewState;
use crate::keys::PrefixSet;

/// What a reconnecting watcher says it holds, for when its resume token cannot be
/// replayed (another server run, history too short).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Known {
    /// Nothing: the initial state is the full state.
    #[default]
    Nothing,
    /// key -> version of every live entry held: the initial state is the difference.
    Versions(HashMap<String, u64>),
    /// The [`StateDigest`] of what it holds: when it equals the server's, nothing is
    /// resent; when it does not, [`Hub::subscribe`](super::Hub::subscribe) asks for the versions.
    Digest(StateDigest),
}

/// A fixed-size summary of the versions held under a watch's prefixes: for each
/// live entry (secrets included), SHA-256 over the key's bytes, a zero byte and the
/// version as 8 big-endian bytes; the first 16 bytes of each, XORed together. The
/// empty state is 16 zero bytes. Order does not matter, so a client computes it from
/// its cache as it is. (Keys never contain a zero byte, see `keys`.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StateDigest(pub [u8; 16]);

impl StateDigest {
    pub const LEN: usize = 16;

    /// The digest of the empty state: what a watcher that holds nothing under its
    /// prefixes sends.
    pub const EMPTY: StateDigest = StateDigest([0; 16]);

    pub fn of<'a>(entries: impl IntoIterator<Item = (&'a str, u64)>) -> Self {
        use sha2::Digest as _;
        let mut acc = [0u8; 16];
        for (key, version) in entries {
            let mut h = sha2::Sha256::new();
            h.update(key.as_bytes());
            h.update([0u8]);
            h.update(version.to_be_bytes());
            let sum = h.finalize();
            for (a, b) in acc.iter_mut().zip(sum.iter()) {
                *a ^= b;
            }
        }
        StateDigest(acc)
    }

    /// Reads the bytes of a request's `known_digest`; `None` when they are not
    /// [`Self::LEN`] long.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        Some(StateDigest(bytes.try_into().ok()?))
    }
}

/// Prefix sets whose digest a view keeps for the current revision.
const DIGESTS_KEPT: usize = 16;

impl ViewState {
    /// The digest of the live entries under `set` (see [`StateDigest`]).
    pub(super) fn digest(&mut self, set: &PrefixSet) -> StateDigest {
        if self.digests.0 != self.revision {
            self.digests = (self.revision, Vec::new());
        }
        if let Some((_, digest)) = self.digests.1.iter().find(|(p, _)| p == set) {
            return *digest;
        }
        let digest = StateDigest::of(
            self.under(set)
                .filter(|e| !e.deleted)
                .map(|e| (&*e.key, e.version)),
        );
        // Bounded: a scope's watchers use a few prefix sets; past that, recompute.
        if self.digests.1.len() < DIGESTS_KEPT {
            self.digests.1.push((set.clone(), digest));
        }
        digest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition in the API docs, on fixed inputs: the client libraries' tests
    /// check the same three values.
    #[test]
    fn state_digest_matches_its_definition() {
        let hex = |d: StateDigest| d.0.iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert_eq!(hex(StateDigest::of([])), "00000000000000000000000000000000");
        assert_eq!(
            hex(StateDigest::of([("tenant_config_a", 1)])),
            "1189b337f183118e15d6dc71f6d0d83c"
        );
        let two = [
            ("tenant_config_a", 1),
            ("param_config_db/url", 1_732_406_400_123_456),
        ];
        assert_eq!(
            hex(StateDigest::of(two)),
            "00c129ddb1e3f7f8fc7dfd609aecf9f2"
        );
        // Order does not matter; a version does.
        assert_eq!(
            StateDigest::of(two.iter().rev().copied()),
            StateDigest::of(two)
        );
        assert_ne!(
            StateDigest::of([("tenant_config_a", 2)]),
            StateDigest::of([("tenant_config_a", 1)])
        );
        assert_eq!(StateDigest::from_bytes(&[0; 15]), None);
    }
}
