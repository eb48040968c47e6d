//! Protection against a storage accident on the server: an initial state that would
//! remove everything the cache holds is reported and held back (by default) instead
//! of being applied, and a change of the server's store identity is reported.
//!
//! A store that lost its data (deleted, emptied, recreated) looks to a resuming
//! client like a state in which every key it holds was removed. Applying that would
//! turn the accident into an outage of every service reading the cache, so the
//! client keeps serving what it holds, marked stale, and says why, until the server
//! sends a state that keeps something, or the application accepts the removal.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use crate::cache::SyncMode;

/// An initial state from the server that would remove every entry the cache holds.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MassRemoval {
    /// How the server built the state: `Full` (the whole state) or `Diff` (removals
    /// against the versions the client sent).
    pub mode: SyncMode,
    /// Live entries the cache holds (secrets included).
    pub held: usize,
    /// How many of them the state removes: all of them.
    pub removed: usize,
    /// Live entries the cache would hold after applying it (keys it did not hold).
    pub remaining: usize,
    /// The store identity of the state the cache holds (empty when unknown).
    pub held_store_id: String,
    /// The store identity the server sent with this state (empty when unknown).
    pub server_store_id: String,
    /// When the server first sent such a state, in this run of refusals.
    pub first_seen: SystemTime,
    /// How many times in a row the server sent such a state (1 the first time).
    pub times: u32,
}

impl MassRemoval {
    /// Whether the server reported a store identity other than the one of the state
    /// held (a recreated store), both being known.
    pub fn store_changed(&self) -> bool {
        !self.held_store_id.is_empty()
            && !self.server_store_id.is_empty()
            && self.held_store_id != self.server_store_id
    }
}

impl fmt::Display for MassRemoval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match self.mode {
            SyncMode::Full => "full",
            SyncMode::Diff => "diff",
            SyncMode::Resumed => "resumed",
        };
        write!(
            f,
            "the server's initial state ({mode}) would remove all {} entries held ({} would remain)",
            self.held, self.remaining
        )?;
        if self.store_changed() {
            write!(
                f,
                "; the server's store identity changed from {:?} to {:?}",
                self.held_store_id, self.server_store_id
            )?;
        }
        write!(
            f,
            "; sent {} time(s) in a row. Held back: the cache keeps serving what it holds \
             (stale) and retries with backoff. If the removal is intended, accept it with \
             ClientBuilder::allow_mass_removal or on_mass_removal",
            self.times
        )
    }
}

/// A store identity the server reported that differs from the one of the state held.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreChange {
    /// The identity of the state held at the time.
    pub previous: String,
    /// The identity the server reported.
    pub current: String,
    /// When it was seen.
    pub at: SystemTime,
}

/// Decides whether an initial state that removes everything held is applied.
pub(crate) type Decide = Arc<dyn Fn(&MassRemoval) -> bool + Send + Sync>;

/// What the client does with a [`MassRemoval`].
#[derive(Clone)]
pub(crate) enum Policy {
    /// Hold it back (the default).
    Hold,
    /// Apply it.
    Apply,
    /// Ask the application each time.
    Ask(Decide),
}

impl Policy {
    pub fn allows(&self, removal: &MassRemoval) -> bool {
        match self {
            Policy::Hold => false,
            Policy::Apply => true,
            // A callback that panics decides nothing: the state stays held back.
            Policy::Ask(decide) => {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decide(removal)))
                    .unwrap_or(false)
            }
        }
    }
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Policy::Hold => "Hold",
            Policy::Apply => "Apply",
            Policy::Ask(_) => "Ask",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn removal(held: &str, server: &str) -> MassRemoval {
        MassRemoval {
            mode: SyncMode::Full,
            held: 3,
            removed: 3,
            remaining: 0,
            held_store_id: held.into(),
            server_store_id: server.into(),
            first_seen: SystemTime::UNIX_EPOCH,
            times: 2,
        }
    }

    #[test]
    fn the_policy_decides_and_a_panicking_callback_holds_back() {
        let r = removal("S1", "S2");
        assert!(!Policy::Hold.allows(&r));
        assert!(Policy::Apply.allows(&r));
        assert!(Policy::Ask(Arc::new(|r: &MassRemoval| r.held == 3)).allows(&r));
        assert!(!Policy::Ask(Arc::new(|_: &MassRemoval| false)).allows(&r));
        let panics: Decide = Arc::new(|_| panic!("the application's bug"));
        assert!(!Policy::Ask(panics).allows(&r));
    }

    #[test]
    fn the_message_gives_the_counts_and_an_identity_change_only_when_both_are_known() {
        let text = removal("S1", "S2").to_string();
        assert!(
            text.contains("would remove all 3 entries held (0 would remain)")
                && text.contains("changed from \"S1\" to \"S2\"")
                && text.contains("2 time(s) in a row")
                && text.contains("allow_mass_removal"),
            "{text}"
        );
        for (held, server) in [("", "S2"), ("S1", ""), ("S1", "S1")] {
            let r = removal(held, server);
            assert!(!r.store_changed(), "{r:?}");
            assert!(!r.to_string().contains("identity"), "{r}");
        }
    }
}
