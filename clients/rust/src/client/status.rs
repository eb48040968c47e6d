//! How current the cache is: the public [`State`], [`Source`], [`Status`] and
//! [`SnapshotStatus`]; the [`Live`] record the watch task keeps them in;
//! [`Client::status`] and [`Client::ready`], which read it.

use std::path::PathBuf;
use std::time::{Instant, SystemTime};

use super::Client;
use crate::cache::SyncMode;
use crate::error::Error;
use crate::guard::{MassRemoval, StoreChange};

/// Where the client is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Opening a Watch, or receiving its initial state.
    Connecting,
    /// The initial state is applied; changes arrive as they happen.
    Connected,
    /// Waiting (backoff) before the next attempt.
    Reconnecting,
    /// Stopped on an error the application must fix (see [`Status::last_error`]);
    /// reads keep serving the last known values.
    Failed,
    /// [`Client::close`] was called, or every handle was dropped.
    Closed,
}

/// Where the cache's content came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// Nothing yet.
    None,
    /// The on-disk snapshot; the server has not been reached since start.
    Snapshot,
    /// The server.
    Server,
}

/// The snapshot's part of [`Status`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SnapshotStatus {
    /// The snapshot file.
    pub path: PathBuf,
    /// Whether the cache started from it.
    pub loaded: bool,
    /// When the snapshot in use (loaded, or last written) was taken.
    pub saved_at: Option<SystemTime>,
    /// Why an existing file was not used (another tenant or prefixes, malformed, ...).
    pub ignored: Option<String>,
    /// Why the last write failed, until one succeeds.
    pub write_error: Option<String>,
}

/// How current the cache is, and why not.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Status {
    /// Where the client is in its life.
    pub state: State,
    /// A Watch is open and its initial state was applied.
    pub connected: bool,
    /// Where the content came from.
    pub source: Source,
    /// False only while connected, current from the server, and a message or progress
    /// arrived within `stale_after`. A cache served from a snapshot is stale.
    pub stale: bool,
    /// When the last message (change or progress) arrived.
    pub last_message_at: Option<SystemTime>,
    /// When the cache last completed an initial state from the server.
    pub last_sync_at: Option<SystemTime>,
    /// How the server built the last initial state.
    pub last_sync_mode: Option<SyncMode>,
    /// Initial states applied since start (one per stream that reached it).
    pub syncs: u64,
    /// The tenant revision the cache is at (0 when unknown).
    pub revision: u64,
    /// Live keys held, secrets included.
    pub entries: usize,
    /// The last error of the watch, cleared when a stream reaches its initial state.
    pub last_error: Option<Error>,
    /// Attempts that ended without an initial state since the last one (0 while
    /// connected).
    pub failed_attempts: u32,
    /// When the next attempt is due, while reconnecting.
    pub next_attempt_at: Option<SystemTime>,
    /// The snapshot, when one is configured.
    pub snapshot: Option<SnapshotStatus>,
    /// The last initial state the server sent would have removed every entry held,
    /// and was held back: the cache serves what it held before (and is stale) until a
    /// state that keeps something is applied. `None` once one is.
    pub held_back: Option<MassRemoval>,
    /// The store identity of the state the cache holds (empty when unknown: a server
    /// that does not report one, or nothing received yet).
    pub store_id: String,
    /// The last time the server reported a store identity other than the one of the
    /// state held (a store recreated, or a server pointed at another one).
    pub last_store_change: Option<StoreChange>,
    /// The URL of the server the watch uses now (or is trying), one of those the
    /// client was given.
    pub server: String,
    /// Since when the server in use says it is cut off from the sources of its data
    /// (a relay that lost its upstream, or whose upstream did). `None` while it says
    /// it is current.
    ///
    /// The cache stays consistent meanwhile, but only as of that time: changes made
    /// since may be missing until it clears. [`stale`](Self::stale) says whether this
    /// client hears from its server; this says whether the server hears from its
    /// sources. Alert when it has been set for longer than the application tolerates
    /// old configuration, and, where the application can, prefer another server
    /// (the client does not move by itself: a cut-off server still serves a
    /// consistent state, and its clients moving together would crowd the next one).
    ///
    /// Taken from every message of the Watch, progress included (a server sends one at
    /// once when it is cut off and when it is current again); cleared by a message
    /// without it and when the watch moves to another server.
    pub server_disconnected_since: Option<SystemTime>,
}

/// The status as the watch task keeps it; [`Client::status`] reads it.
pub(crate) struct Live {
    pub state: State,
    pub source: Source,
    pub last_message_at: Option<SystemTime>,
    pub last_message_instant: Option<Instant>,
    pub last_sync_at: Option<SystemTime>,
    pub last_sync_mode: Option<SyncMode>,
    pub syncs: u64,
    pub last_error: Option<Error>,
    pub failed_attempts: u32,
    pub next_attempt_at: Option<SystemTime>,
    pub ever_synced: bool,
    pub snapshot: Option<SnapshotStatus>,
    pub held_back: Option<MassRemoval>,
    pub store_change: Option<StoreChange>,
    /// As the last message of the server in use said (see [`Status`]).
    pub server_disconnected_since: Option<SystemTime>,
}

impl Live {
    /// A client that has just started: nothing received, nothing failed.
    pub(super) fn connecting() -> Live {
        Live {
            state: State::Connecting,
            source: Source::None,
            last_message_at: None,
            last_message_instant: None,
            last_sync_at: None,
            last_sync_mode: None,
            syncs: 0,
            last_error: None,
            failed_attempts: 0,
            next_attempt_at: None,
            ever_synced: false,
            snapshot: None,
            held_back: None,
            store_change: None,
            server_disconnected_since: None,
        }
    }

    /// The end of a wait when the watch stopped.
    pub(super) fn stopped(&self) -> Option<Result<(), Error>> {
        match self.state {
            State::Failed => Some(Err(self.last_error.clone().unwrap_or(Error::Closed))),
            State::Closed => Some(Err(Error::Closed)),
            _ => None,
        }
    }
}

impl Client {
    /// How current the cache is.
    pub fn status(&self) -> Status {
        let (revision, entries, store_id) = {
            let d = self.shared.data();
            (d.revision, d.cache.live_count(), d.store_id.clone())
        };
        let l = self.shared.live();
        let connected = l.state == State::Connected;
        let fresh = l
            .last_message_instant
            .is_some_and(|t| t.elapsed() <= self.shared.opts.stale_after);
        Status {
            state: l.state,
            connected,
            source: l.source,
            stale: !(connected && l.source == Source::Server && fresh),
            last_message_at: l.last_message_at,
            last_sync_at: l.last_sync_at,
            last_sync_mode: l.last_sync_mode,
            syncs: l.syncs,
            revision,
            entries,
            last_error: l.last_error.clone(),
            failed_attempts: l.failed_attempts,
            next_attempt_at: l.next_attempt_at,
            snapshot: l.snapshot.clone(),
            held_back: l.held_back.clone(),
            store_id,
            last_store_change: l.store_change.clone(),
            server: self.shared.server().to_owned(),
            server_disconnected_since: l.server_disconnected_since,
        }
    }

    /// Waits until the cache has been current from the server (an initial state was
    /// applied since start). Fails with the error that stopped the watch, or
    /// [`Error::Closed`]. Wrap it in [`tokio::time::timeout`] to bound the wait.
    pub async fn ready(&self) -> Result<(), Error> {
        self.shared
            .wait_for(|l| {
                if l.ever_synced {
                    Some(Ok(()))
                } else {
                    l.stopped()
                }
            })
            .await
    }
}
