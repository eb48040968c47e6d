//! A bounded cache of tokens that verified, so a client that sends the same token on
//! every call pays for one signature check, not one per call.
//!
//! What it promises (the [`super::Authenticator`] relies on each):
//!
//! - **Only exact tokens that verified.** The key is the SHA-256 of the whole token
//!   string: a token that differs in any byte (a tampered payload, another
//!   signature, another header) misses and is verified in full. Only successful
//!   verifications are inserted. Failures are not cached at all: a refused token
//!   costs the same as before, and caching refusals would let a token that becomes
//!   valid later (nbf reached, a rotated key fetched) stay refused, while an
//!   attacker can vary a bad token for free, so a failure cache would save nothing
//!   against a flood.
//! - **The same time rule as a full verification.** An entry keeps the token's
//!   `exp` and `nbf` and every hit applies `claims::check_time`, the rule a full
//!   verification applies (same leeway, same comparisons, the same clock): a hit
//!   never outlives the token, and a clock stepped back makes a not-yet-valid token
//!   refused again.
//! - **Keys that leave the key set stop serving.** An entry holds a weak reference
//!   to the key that verified it; once the key source no longer holds that key (a
//!   JWKS fetch replaces every key object, so after any fetch; the embedded key
//!   never changes) the entry is ignored and the token is verified again, which
//!   fails if its key is gone. A Watch stream already open keeps its identity until
//!   the token's expiry either way: streams are authenticated when they start.
//! - **Bounded.** At most `capacity` entries, in shards of two generations: inserts
//!   go to the current generation; when it is full it becomes the previous one and
//!   the old previous one is dropped whole; a hit in the previous generation moves
//!   the entry to the current one. Tokens in use stay; a flood of distinct valid
//!   tokens evicts older ones and never grows memory past the bound. Each entry is
//!   about 250 bytes (identities with a subject over [`MAX_SUBJECT_BYTES`] are not
//!   cached), so the default 10,000 entries stay under 3 MB.
//! - **No bearer secrets kept.** Only the digest is stored, never the token. (A hit
//!   answers faster than a miss; that tells only someone who already holds the
//!   exact token that it was used recently.)

use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use super::claims::check_time;
use super::{AuthError, Identity, VerifyKey};

/// The default number of cached tokens.
pub const DEFAULT_CAPACITY: usize = 10_000;

/// Identities whose subject is longer than this are verified every time (a bound on
/// an entry's size; Cognito subjects are 36-byte UUIDs).
pub const MAX_SUBJECT_BYTES: usize = 256;

/// Above this capacity the cache is split in shards, each with its own lock.
const SHARDS: usize = 8;

/// The SHA-256 of a whole token string.
pub(crate) type TokenDigest = [u8; 32];

pub(crate) fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

/// What a successful verification proved.
pub(crate) struct Verified {
    pub identity: Identity,
    pub exp: u64,
    pub nbf: Option<u64>,
    /// The key that verified the signature; the entry is void once it is dropped.
    pub key: Weak<VerifyKey>,
}

impl Verified {
    fn key_alive(&self) -> bool {
        self.key.strong_count() > 0
    }
}

/// What a lookup found.
pub(crate) enum Lookup {
    /// Not cached (or cached for a key that is gone): verify in full.
    Miss,
    /// Cached and valid at `now`.
    Hit(Identity),
    /// Cached, but refused at `now` by the time rule (the entry is removed).
    Refused(AuthError),
}

#[derive(Default)]
struct Shard {
    current: HashMap<TokenDigest, Arc<Verified>>,
    previous: HashMap<TokenDigest, Arc<Verified>>,
}

impl Shard {
    fn put(&mut self, digest: TokenDigest, entry: Arc<Verified>, generation: usize) {
        if self.current.len() >= generation && !self.current.contains_key(&digest) {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(digest, entry);
    }
}

pub(crate) struct TokenCache {
    shards: Box<[Mutex<Shard>]>,
    /// Entries per generation per shard (0: the cache is off).
    generation: usize,
    /// Lookups answered from the cache (a verified token, or one its time rule
    /// refused) and lookups that were not (the token is verified in full).
    hits: AtomicU64,
    misses: AtomicU64,
}

fn lock(m: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    // Every critical section leaves the maps consistent before anything can panic.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl TokenCache {
    /// A cache of at most `capacity` tokens (0 turns it off).
    pub fn new(capacity: usize) -> Self {
        let shards = if capacity >= 64 * SHARDS { SHARDS } else { 1 };
        // Two generations per shard: shards * 2 * generation <= capacity.
        let generation = capacity / shards / 2;
        TokenCache {
            shards: (0..shards).map(|_| Mutex::new(Shard::default())).collect(),
            generation,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn shard(&self, digest: &TokenDigest) -> &Mutex<Shard> {
        &self.shards[usize::from(digest[0]) % self.shards.len()]
    }

    /// The cached verification of this token, checked at `now` with `leeway`.
    pub fn lookup(&self, digest: &TokenDigest, now: u64, leeway: u64) -> Lookup {
        let found = self.find(digest, now, leeway);
        let counter = match found {
            Lookup::Miss => &self.misses,
            Lookup::Hit(_) | Lookup::Refused(_) => &self.hits,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Lookups answered from the cache so far, and lookups that missed.
    pub fn lookups(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    fn find(&self, digest: &TokenDigest, now: u64, leeway: u64) -> Lookup {
        if self.generation == 0 {
            return Lookup::Miss;
        }
        let entry = {
            let mut shard = lock(self.shard(digest));
            match shard.current.get(digest) {
                Some(e) => e.clone(),
                None => match shard.previous.remove(digest) {
                    Some(e) => {
                        shard.put(*digest, e.clone(), self.generation);
                        e
                    }
                    None => return Lookup::Miss,
                },
            }
        };
        if !entry.key_alive() {
            self.remove(digest);
            return Lookup::Miss;
        }
        match check_time(entry.exp, entry.nbf, now, leeway) {
            Ok(()) => Lookup::Hit(entry.identity.clone()),
            Err(e) => {
                self.remove(digest);
                Lookup::Refused(e)
            }
        }
    }

    /// Remembers a successful verification.
    pub fn insert(&self, digest: TokenDigest, verified: Verified) {
        let id = &verified.identity;
        let named = id.subject.len() + id.client_id.as_ref().map_or(0, String::len);
        if self.generation == 0 || named > MAX_SUBJECT_BYTES {
            return;
        }
        lock(self.shard(&digest)).put(digest, Arc::new(verified), self.generation);
    }

    fn remove(&self, digest: &TokenDigest) {
        let mut shard = lock(self.shard(digest));
        shard.current.remove(digest);
        shard.previous.remove(digest);
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = lock(s);
                s.current.len() + s.previous.len()
            })
            .sum()
    }

    /// The most entries it can hold.
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.shards.len() * 2 * self.generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;
    use crate::model::Scope;

    fn verified(key: &Arc<VerifyKey>, exp: u64, nbf: Option<u64>) -> Verified {
        Verified {
            identity: Identity {
                scope: Scope::tenant("acme").ok(),
                role: Role::Reader,
                subject: "s".into(),
                client_id: None,
                expires_at: None,
            },
            exp,
            nbf,
            key: Arc::downgrade(key),
        }
    }

    fn key() -> Arc<VerifyKey> {
        Arc::new(VerifyKey {
            key: jsonwebtoken::DecodingKey::from_secret(b"unused"),
            algorithms: vec![jsonwebtoken::Algorithm::EdDSA],
        })
    }

    #[test]
    fn a_hit_expires_with_its_token_and_is_removed() {
        let k = key();
        let cache = TokenCache::new(100);
        let d = digest("token");
        cache.insert(d, verified(&k, 1_000, None));
        assert!(matches!(cache.lookup(&d, 1_005, 5), Lookup::Hit(_)));
        assert!(matches!(
            cache.lookup(&d, 1_006, 5),
            Lookup::Refused(AuthError::Expired)
        ));
        assert_eq!(cache.len(), 0);
        assert!(matches!(cache.lookup(&d, 1_000, 5), Lookup::Miss));
    }

    #[test]
    fn a_hit_is_not_yet_valid_when_the_clock_goes_back() {
        let k = key();
        let cache = TokenCache::new(100);
        let d = digest("token");
        cache.insert(d, verified(&k, 5_000, Some(1_000)));
        assert!(matches!(cache.lookup(&d, 995, 5), Lookup::Hit(_)));
        assert!(matches!(
            cache.lookup(&d, 994, 5),
            Lookup::Refused(AuthError::NotYetValid)
        ));
    }

    #[test]
    fn an_entry_whose_key_was_dropped_misses() {
        let k = key();
        let cache = TokenCache::new(100);
        let d = digest("token");
        cache.insert(d, verified(&k, u64::MAX, None));
        assert!(matches!(cache.lookup(&d, 0, 0), Lookup::Hit(_)));
        drop(k);
        assert!(matches!(cache.lookup(&d, 0, 0), Lookup::Miss));
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn a_flood_of_distinct_tokens_stays_within_capacity_and_keeps_tokens_in_use() {
        let k = key();
        for capacity in [10, 100, 1_000, 10_000] {
            let cache = TokenCache::new(capacity);
            assert!(cache.capacity() <= capacity);
            let busy = digest("busy");
            cache.insert(busy, verified(&k, u64::MAX, None));
            for i in 0..5 * capacity {
                cache.insert(digest(&format!("flood-{i}")), verified(&k, u64::MAX, None));
                assert!(cache.len() <= capacity, "{} > {capacity}", cache.len());
                if i % 2 == 0 {
                    // A token in use survives the flood.
                    assert!(matches!(cache.lookup(&busy, 0, 0), Lookup::Hit(_)), "{i}");
                }
            }
            // Nothing is cached unbounded: the rest fell out.
            assert!(cache.len() <= capacity);
            assert!(cache.len() >= capacity / 4, "the cache is still in use");
        }
    }

    #[test]
    fn capacity_zero_caches_nothing() {
        let k = key();
        let cache = TokenCache::new(0);
        let d = digest("t");
        cache.insert(d, verified(&k, u64::MAX, None));
        assert!(matches!(cache.lookup(&d, 0, 0), Lookup::Miss));
        assert_eq!(cache.len(), 0);
    }
}
