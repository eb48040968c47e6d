//! The background task: one Watch at a time, kept open for the life of the client.
//!
//! ```text
//!   start ──► token ──► Watch ──► initial state ──► deltas / progress ──┐
//!               ▲                                                       │
//!               ├── next server ◄── UNAVAILABLE, dropped, silent, ... ◄──┤
//!               ├── same server, backoff ◄── the token source failed ◄───┤
//!               ├── fresh token ◄── UNAUTHENTICATED ◄────────────────────┤
//!               ├── no resume token ◄── INVALID_ARGUMENT on a resume ◄───┤
//!               ├── versions, at once ◄── ABORTED: the digest differs ◄──┤
//!               ├── next server, cache kept ◄── a state removing all ◄───┤
//!               └ failed ◄── PERMISSION_DENIED, INVALID_ARGUMENT, ... ◄──┘
//! ```
//!
//! "next server": the next URL of the client's list, at once, and after the backoff
//! once every one failed in a row (`servers.rs`); with one URL, after the backoff.
//! A refused token or permission stays on the server it came from.
//!
//! It ends when the client is closed or its last handle dropped, or on an error the
//! application must fix; then it ends the change streams and writes the snapshot.

use std::mem;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::cache::{Cause, SyncMode, WireEntry};
use crate::client::{Shared, SnapshotConfig, Source, State};
use crate::error::{Error, Next, next_step};
use crate::guard::{MassRemoval, StoreChange};
use crate::proto;
use crate::proto::watch_response::Kind;
use crate::servers::Rotation;
use crate::snapshot;
use crate::wire;

pub(crate) async fn run(shared: Arc<Shared>) {
    let stop_writer = CancellationToken::new();
    let writer = shared
        .snapshot
        .clone()
        .map(|config| tokio::spawn(snapshot_loop(shared.clone(), config, stop_writer.clone())));

    let failure = watch_loop(&shared).await;
    match &failure {
        Some(error) => {
            tracing::error!(tenant = %shared.tenant, "watch stopped: {error}");
            shared.update(|l| {
                l.state = State::Failed;
                l.last_error = Some(error.clone());
                l.next_attempt_at = None;
            });
        }
        None => shared.update(|l| {
            l.state = State::Closed;
            l.next_attempt_at = None;
        }),
    }
    shared.queues.end_all(failure);

    stop_writer.cancel();
    if let Some(w) = writer {
        let _ = w.await;
    }
    shared.done.send_replace(true);
}

/// Watches until closed (`None`) or an error the application must fix.
async fn watch_loop(shared: &Arc<Shared>) -> Option<Error> {
    // Which server next, and the failures in a row that the waits grow with.
    let mut rotation = Rotation::new(
        shared.servers.len(),
        shared.current_index(),
        shared.opts.backoff,
    );
    // The server found the digest of the cache differs from its state: send the
    // versions themselves until a stream reaches its initial state.
    let mut with_versions = false;
    loop {
        if shared.shutdown.is_cancelled() {
            return None;
        }
        shared.update(|l| {
            l.state = State::Connecting;
            l.next_attempt_at = None;
        });
        let outcome = tokio::select! {
            biased;
            _ = shared.shutdown.cancelled() => return None,
            o = watch_once(shared, with_versions) => o,
        };
        if outcome.synced {
            rotation.synced();
        }
        let sent_versions = with_versions;
        with_versions = !outcome.synced && (with_versions || outcome.asked_for_versions);
        if outcome.asked_for_versions && !sent_versions {
            // Not a failure: the server needs the versions to send the difference.
            // (Asked again after sending them, it is an error like any other, so
            // nothing spins.)
            tracing::debug!(tenant = %shared.tenant, "state changed while away; resuming with the versions held");
            continue;
        }
        let step = next_step(&outcome.error, outcome.sent_resume_token, outcome.synced);
        let Some(delay) = rotation.after(step) else {
            return Some(outcome.error);
        };
        if step == Next::DropResumeToken {
            // The server cannot read the token (e.g. an old snapshot's): start over
            // from the versions held. A second refusal has no token to blame.
            shared.data_mut().resume_token.clear();
        }
        let (error, from) = (outcome.error, shared.server().to_owned());
        let moved = rotation.current() != shared.current_index();
        if moved {
            shared.use_server(rotation.current());
        }
        let to = shared.server();
        if outcome.synced {
            tracing::info!(tenant = %shared.tenant, server = %from, "watch interrupted: {error}; reconnecting to {to} in {delay:?}");
        } else {
            tracing::debug!(tenant = %shared.tenant, server = %from, "watch attempt failed: {error}; trying {to} in {delay:?}");
        }
        shared.update(|l| {
            l.state = State::Reconnecting;
            l.failed_attempts = if outcome.synced {
                0
            } else {
                l.failed_attempts.saturating_add(1)
            };
            l.last_error = Some(error);
            l.next_attempt_at = SystemTime::now().checked_add(delay);
            if moved {
                // What the last server said of its sources says nothing of the next.
                l.server_disconnected_since = None;
            }
        });
        tokio::select! {
            biased;
            _ = shared.shutdown.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// How one Watch ended.
struct Outcome {
    error: Error,
    /// The stream reached its initial state.
    synced: bool,
    /// The request carried a resume token.
    sent_resume_token: bool,
    /// The server answered that the digest sent differs from its state.
    asked_for_versions: bool,
}

/// What one stream has seen so far.
#[derive(Default)]
struct Session {
    mode: Option<SyncMode>,
    initial: Vec<WireEntry>,
    /// The store identity the initial messages carry ("" when the server sends none).
    store_id: String,
    synced: bool,
}

/// One Watch, from request to end. Never fails: returns why it ended.
async fn watch_once(shared: &Arc<Shared>, with_versions: bool) -> Outcome {
    let mut session = Session::default();
    let mut sent_resume_token = false;
    let mut asked_for_versions = false;
    let error = match stream(shared, &mut session, with_versions, &mut sent_resume_token).await {
        Ok(never) => match never {},
        Err(Ended::Status(status)) => {
            asked_for_versions = asks_for_versions(&status);
            status.into()
        }
        Err(Ended::Error(e)) => e,
    };
    Outcome {
        error,
        synced: session.synced,
        sent_resume_token,
        asked_for_versions,
    }
}

/// How a stream ended: a status from the server (whose metadata may say what to do
/// next), or anything else.
enum Ended {
    Status(tonic::Status),
    Error(Error),
}

impl From<tonic::Status> for Ended {
    fn from(status: tonic::Status) -> Self {
        Ended::Status(status)
    }
}

impl From<Error> for Ended {
    fn from(error: Error) -> Self {
        Ended::Error(error)
    }
}

/// Checks a complete initial state before it is applied: reports a store identity
/// other than the one of the state held, and refuses (with [`Error::MassRemoval`],
/// which ends the stream; the watch retries with backoff) a state that would remove
/// every entry held, unless the application accepts it.
fn guard(
    shared: &Shared,
    mode: SyncMode,
    entries: &[WireEntry],
    server_store: &str,
    now: SystemTime,
) -> Result<(), Error> {
    let (held_store, counts) = {
        let d = shared.data();
        (d.store_id.clone(), d.cache.mass_removal(mode, entries))
    };
    // Empty on either side is unknown (a server that reports none, a state received
    // before identities): nothing to compare.
    if !held_store.is_empty() && !server_store.is_empty() && held_store != server_store {
        tracing::warn!(
            tenant = %shared.tenant,
            previous = %held_store,
            current = %server_store,
            "the server's store identity differs from the one of the state held \
             (a recreated store, or another one); it sent a {mode:?} state"
        );
        shared.update(|l| {
            l.store_change = Some(StoreChange {
                previous: held_store.clone(),
                current: server_store.to_owned(),
                at: now,
            });
        });
    }
    let Some(counts) = counts else {
        return Ok(());
    };
    let (first_seen, times) = match &shared.live().held_back {
        Some(before) => (before.first_seen, before.times.saturating_add(1)),
        None => (now, 1),
    };
    let removal = MassRemoval {
        mode,
        held: counts.held,
        removed: counts.removed,
        remaining: counts.remaining,
        held_store_id: held_store,
        server_store_id: server_store.to_owned(),
        first_seen,
        times,
    };
    if shared.opts.mass_removal.allows(&removal) {
        tracing::warn!(
            tenant = %shared.tenant,
            held = removal.held,
            remaining = removal.remaining,
            "applying an initial state that removes every entry held, as the application allows"
        );
        return Ok(());
    }
    tracing::warn!(tenant = %shared.tenant, "{removal}");
    shared.update(|l| l.held_back = Some(removal.clone()));
    Err(Error::MassRemoval(Box::new(removal)))
}

/// The server's answer to a `known_digest` that differs from its state.
fn asks_for_versions(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Aborted
        && status
            .metadata()
            .get("configwatch-resume")
            .is_some_and(|v| v.as_bytes() == b"known-versions")
}

async fn stream(
    shared: &Arc<Shared>,
    session: &mut Session,
    with_versions: bool,
    sent_resume_token: &mut bool,
) -> Result<std::convert::Infallible, Ended> {
    let header = shared.auth_header().await?;
    let body = shared.watch_request(with_versions);
    *sent_resume_token = !body.resume_token.is_empty();
    let mut request = tonic::Request::new(body);
    request.metadata_mut().insert("authorization", header);
    let idle = shared.opts.idle_timeout;
    let mut rpc = shared.rpc();
    // A silent stream may sit on a half-open connection: the next attempt gets a new
    // one (a new call on the same connection would hang the same way).
    let mut stream = tokio::time::timeout(idle, rpc.watch(request))
        .await
        .map_err(|_| {
            shared.renew_channel();
            Error::unavailable(format!("no answer to Watch within {idle:?}"))
        })??
        .into_inner();
    loop {
        let message = tokio::time::timeout(idle, stream.message())
            .await
            .map_err(|_| {
                shared.renew_channel();
                Error::unavailable(format!(
                    "nothing arrived from the server for {idle:?}; reconnecting"
                ))
            })??
            .ok_or_else(|| Error::unavailable("the server ended the watch"))?;
        on_message(shared, session, message)?;
    }
}

/// Applies one message to the cache, then tells the readers.
fn on_message(
    shared: &Shared,
    session: &mut Session,
    msg: proto::WatchResponse,
) -> Result<(), Error> {
    let now = SystemTime::now();
    let server_disconnected_since = wire::time(msg.disconnected_since);
    shared.update(|l| {
        l.last_message_at = Some(now);
        l.last_message_instant = Some(Instant::now());
        l.server_disconnected_since = server_disconnected_since;
    });
    match Kind::try_from(msg.kind) {
        Ok(Kind::Initial) => {
            if session.synced {
                return Err(Error::Protocol(
                    "an initial message after the initial state was complete".into(),
                ));
            }
            let mode = wire::sync_mode(msg.initial_mode).ok_or_else(|| {
                Error::Protocol(format!("initial message with mode {}", msg.initial_mode))
            })?;
            if session.mode.is_some_and(|m| m != mode) {
                return Err(Error::Protocol(
                    "initial messages of one stream with different modes".into(),
                ));
            }
            session.mode = Some(mode);
            if !msg.store_id.is_empty() {
                session.store_id = msg.store_id;
            }
            session
                .initial
                .extend(msg.changes.into_iter().map(wire::entry));
            if !msg.initial_complete {
                return Ok(());
            }
            let entries = mem::take(&mut session.initial);
            guard(shared, mode, &entries, &session.store_id, now)?;
            let changes = {
                let mut d = shared.data_mut();
                let changes = d.cache.apply_initial(mode, entries);
                d.advance(msg.revision, msg.resume_token);
                if !session.store_id.is_empty() {
                    d.store_id = session.store_id.clone();
                }
                changes
            };
            session.synced = true;
            tracing::debug!(tenant = %shared.tenant, ?mode, changes = changes.len(), "in sync");
            shared.update(|l| {
                l.state = State::Connected;
                l.source = Source::Server;
                l.last_sync_at = Some(now);
                l.last_sync_mode = Some(mode);
                l.syncs += 1;
                l.last_error = None;
                l.failed_attempts = 0;
                l.next_attempt_at = None;
                l.ever_synced = true;
                l.held_back = None;
            });
            shared.publish(&changes);
            shared.snapshot_dirty();
        }
        Ok(Kind::Delta) => {
            if !session.synced {
                return Err(Error::Protocol(
                    "a delta arrived before the initial state was complete".into(),
                ));
            }
            let entries = msg.changes.into_iter().map(wire::entry).collect();
            let changes = {
                let mut d = shared.data_mut();
                let changes = d.cache.apply_deltas(entries, Cause::Delta);
                d.advance(msg.revision, msg.resume_token);
                changes
            };
            shared.publish(&changes);
            shared.snapshot_dirty();
        }
        Ok(Kind::Progress) => {
            if session.synced {
                shared.data_mut().advance(msg.revision, msg.resume_token);
            }
        }
        // A kind this client does not know (a newer server): liveness only.
        Ok(Kind::Unspecified) | Err(_) => {}
    }
    Ok(())
}

/// Writes the snapshot after changes, debounced, and once more when stopped.
async fn snapshot_loop(shared: Arc<Shared>, config: SnapshotConfig, stop: CancellationToken) {
    let mut written = 0;
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            _ = shared.snapshot_notify.notified() => {}
        }
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(config.debounce) => {}
        }
        written = write_snapshot(&shared, &config, written).await;
    }
    write_snapshot(&shared, &config, written).await;
}

/// Writes the snapshot if it changed since `written`; returns what is now written.
async fn write_snapshot(shared: &Shared, config: &SnapshotConfig, written: u64) -> u64 {
    let seq = shared.snapshot_seq.load(Ordering::Acquire);
    if seq == written {
        return written;
    }
    let data = shared.snapshot_data();
    let saved_at = data.saved_at;
    let path = config.path.clone();
    let result = match snapshot::encode(&data) {
        Ok(bytes) => tokio::task::spawn_blocking(move || snapshot::write_atomic(&path, &bytes))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string())),
        Err(e) => Err(e.to_string()),
    };
    match result {
        Ok(()) => {
            shared.update(|l| {
                if let Some(s) = &mut l.snapshot {
                    s.saved_at = Some(saved_at);
                    s.write_error = None;
                }
            });
            seq
        }
        Err(message) => {
            let error = Error::Snapshot {
                path: config.path.clone(),
                message,
            };
            tracing::warn!("{error}");
            shared.update(|l| {
                if let Some(s) = &mut l.snapshot {
                    s.write_error = Some(error.to_string());
                }
            });
            written
        }
    }
}
