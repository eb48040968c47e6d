//! One scope's upstream Watch: the relay's view of a scope is kept by exactly one
//! Watch on an upstream, whatever the number of clients watching it here.
//!
//! A feed starts when the hub first loads the scope: the first complete initial
//! state it receives is what the load returns, and every change after it is applied
//! to the view by version. When the stream breaks, the view keeps serving what it
//! holds and is marked cut off since then (its watchers are told at once); the
//! feed reconnects with jittered backoff, to the next upstream in the list,
//! presenting what the view holds (the upstream's resume token, else the digest of
//! its versions, else the versions themselves when the upstream asks), so a
//! reconnect after a short cut costs an empty diff, not a full resend. A full
//! state (the upstream cannot tell what the relay holds) replaces the view's, with
//! tombstones for what it lacks. The feed ends when the hub no longer holds the
//! view (it was dropped as idle) or the relay stops.
//!
//! Boundary: the protocol with the upstream for one scope. Connections and the
//! choice of upstream are `upstreams`; what the hub does with a change is the hub's.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use configwatch_client::{Backoff, Retry};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::metadata::AsciiMetadataValue;
use tonic::{Code, Status};

use super::{Inner, from_proto, millis_of};
use crate::api::status::{RESUME_METADATA, RESUME_WITH_VERSIONS};
use crate::hub::{ChangeSource, Hub, Origin, StateDigest};
use crate::model::{Entry, Millis, Scope, now_millis};
use crate::proto;
use crate::proto::watch_response::{InitialMode, Kind};

/// The first delay between reconnects of one feed, and the longest (doubling in
/// between, each jittered by the policy).
pub const RECONNECT_FIRST: Duration = Duration::from_millis(200);
pub const RECONNECT_MAX: Duration = Duration::from_secs(10);
/// How long a reconnect waits for the hub to finish merging the first state.
const LOADED_WAIT: Duration = Duration::from_secs(5);
/// Largest upstream message accepted (a batch of about 1 MiB, or one large entry).
const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// What the first load of the scope waits for.
#[derive(Default)]
pub(super) struct First {
    /// The scope's complete state, once received, kept current with every change
    /// that follows until a load takes it (a load that gave up before it came
    /// leaves it for the next one, which then needs no new upstream Watch).
    pub(super) ready: Option<HashMap<Arc<str>, Entry>>,
    /// Why every upstream failed, once each was tried.
    pub(super) failed: Option<String>,
}

/// One scope's upstream Watch, shared by the loader and the task that runs it.
pub(super) struct Feed {
    pub(super) scope: Scope,
    pub(super) stop: CancellationToken,
    pub(super) first: watch::Sender<First>,
    /// A load took the state: the view holds it from then on, and changes go to
    /// the view (a later load needs a new feed: the view this one fed may be gone).
    taken: std::sync::atomic::AtomicBool,
}

impl Feed {
    pub(super) fn new(scope: Scope, stop: CancellationToken) -> Arc<Feed> {
        Arc::new(Feed {
            scope,
            stop,
            first: watch::Sender::new(First::default()),
            taken: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Offers a complete state to the load waiting for it (replacing one no load
    /// took, from an earlier stream).
    fn offer(&self, state: Vec<Entry>) {
        let state = state.into_iter().map(|e| (e.key.clone(), e)).collect();
        self.first.send_modify(|f| f.ready = Some(state));
    }

    /// Keeps the offered state current with a change, while no load took it;
    /// `Err` gives the change back once one did (it is the view's then).
    fn keep_current(&self, entry: Entry) -> Result<(), Entry> {
        let mut back = Some(entry);
        self.first.send_if_modified(|f| {
            // Taken only when there is a state to keep it in.
            let Some(state) = &mut f.ready else {
                return false;
            };
            if let Some(entry) = back.take()
                && state
                    .get(&entry.key)
                    .is_none_or(|held| held.version < entry.version)
            {
                state.insert(entry.key.clone(), entry);
            }
            false
        });
        // Still here when nothing was offered, or a load took it.
        match back {
            None => Ok(()),
            Some(entry) => Err(entry),
        }
    }

    /// Withdraws a state no load took: its stream broke, so it may lack changes
    /// made since (the next stream offers a fresh one).
    fn withdraw(&self) {
        self.first.send_if_modified(|f| {
            f.ready = None;
            false
        });
    }

    /// The offered state, taken by a load: the view holds it from then on, so the
    /// feed keeps no second copy.
    pub(super) fn take_first(&self) -> Option<Vec<Entry>> {
        let mut taken = None;
        self.first.send_if_modified(|f| {
            taken = f.ready.take();
            if taken.is_some() {
                self.taken.store(true, Ordering::Release);
            }
            false
        });
        taken.map(|state| state.into_values().collect())
    }

    /// Whether a load took the state.
    pub(super) fn taken(&self) -> bool {
        self.taken.load(Ordering::Acquire)
    }
}

/// How a session with an upstream ended.
enum Ended {
    /// The relay stops, or the hub dropped the view.
    Stop,
    /// The upstream found the digest differs: reconnect at once with the versions.
    SendVersions,
    /// The stream failed; `served` when it had delivered a complete state.
    Failed { reason: String, served: bool },
}

/// What the feed knows between sessions.
struct State {
    /// The upstream's resume token for the last message received.
    resume: String,
    /// Since when this relay has had no stream to an upstream (while serving).
    own_cut: Option<Millis>,
    /// Since when the upstream says it is cut off from its own sources.
    upstream_cut: Option<Millis>,
}

impl State {
    /// Gives the hub the earlier of the two cut-off times. Given every time, not
    /// only when this feed's changed: the view's mark may have been left by a feed
    /// this one replaced (the hub wakes the watchers only when the mark changes).
    fn mark(&self, hub: &Hub, scope: &Scope) {
        let since = match (self.own_cut, self.upstream_cut) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        hub.set_disconnected(scope, since);
    }
}

/// Runs the feed until the relay stops or the hub drops the view.
pub(super) async fn run(feed: Arc<Feed>, inner: Arc<Inner>) {
    let Some(hub) = inner.hub() else { return };
    let mut retry = Retry::new(Backoff::doubling(RECONNECT_FIRST, RECONNECT_MAX));
    let mut state = State {
        resume: String::new(),
        own_cut: None,
        upstream_cut: None,
    };
    let mut at = inner.upstreams.preferred();
    let mut with_versions = false;
    let mut tried = 0usize;
    loop {
        if feed.stop.is_cancelled() {
            break;
        }
        let ended = session(&feed, &inner, &hub, at, &mut state, with_versions, tried).await;
        with_versions = false;
        match ended {
            Ended::Stop => break,
            Ended::SendVersions => {
                with_versions = true;
                continue;
            }
            Ended::Failed { reason, served } => {
                if served {
                    retry.succeeded();
                    tried = 0;
                }
                tried += 1;
                // Said once per outage; the retries that follow are debug lines.
                if tried == 1 {
                    tracing::warn!(scope = %feed.scope, upstream = inner.upstreams.url(at), %reason, "upstream watch failed; moving to the next upstream");
                } else {
                    tracing::debug!(scope = %feed.scope, upstream = inner.upstreams.url(at), %reason, attempts = tried, "upstream watch failed again");
                }
                feed.withdraw();
                if feed.taken() {
                    if state.own_cut.is_none() {
                        state.own_cut = Some(now_millis());
                    }
                    state.mark(&hub, &feed.scope);
                } else if tried >= inner.upstreams.len() {
                    // Every upstream was tried once: a load waiting gives up now
                    // (the feed keeps trying for the next one).
                    let reason = format!(
                        "no upstream could serve {}: {}: {reason}",
                        feed.scope,
                        inner.upstreams.url(at)
                    );
                    feed.first.send_modify(|f| f.failed = Some(reason));
                }
                at = (at + 1) % inner.upstreams.len();
                tokio::select! {
                    () = feed.stop.cancelled() => break,
                    () = tokio::time::sleep(retry.failed()) => {}
                }
            }
        }
        if !hub.has_view(&feed.scope) {
            break;
        }
    }
    inner.ended(&feed);
}

/// Waits (briefly) until the hub has merged the first state, so that a reconnect
/// can present what the view holds. `false` when the view is gone.
async fn view_loaded(hub: &Hub, scope: &Scope, stop: &CancellationToken) -> bool {
    let deadline = tokio::time::Instant::now() + LOADED_WAIT;
    while !hub.is_loaded(scope) {
        if !hub.has_view(scope) || stop.is_cancelled() || tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

/// The Watch request presenting what the view holds.
fn request(hub: &Hub, scope: &Scope, state: &State, with_versions: bool) -> proto::WatchRequest {
    let mut req = proto::WatchRequest {
        tenant: scope.tenant_id().to_owned(),
        service: scope.service().unwrap_or("").to_owned(),
        known_store_id: hub.store_id().to_string(),
        ..Default::default()
    };
    if let Some(held) = hub.versions_held(scope) {
        req.resume_token = state.resume.clone();
        if with_versions {
            req.known_versions = held.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        } else {
            req.known_digest = StateDigest::of(held.iter().map(|(k, v)| (&**k, *v)))
                .0
                .to_vec();
        }
    }
    req
}

/// One upstream Watch, until it fails or the feed stops.
async fn session(
    feed: &Feed,
    inner: &Inner,
    hub: &Hub,
    at: usize,
    state: &mut State,
    with_versions: bool,
    failures: usize,
) -> Ended {
    if feed.taken() && !view_loaded(hub, &feed.scope, &feed.stop).await {
        return Ended::Stop;
    }
    let lease = inner.upstreams.lease(at);
    let mut client = proto::config_service_client::ConfigServiceClient::new(lease.channel.clone())
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let header = tokio::select! {
        () = feed.stop.cancelled() => return Ended::Stop,
        header = inner.credential.header() => header,
    };
    let header = match header {
        Ok(header) => header,
        Err(e) => {
            return Ended::Failed {
                reason: e.to_string(),
                served: false,
            };
        }
    };
    let mut call = tonic::Request::new(request(hub, &feed.scope, state, with_versions));
    call.metadata_mut().insert("authorization", header.clone());
    let opened = tokio::select! {
        () = feed.stop.cancelled() => return Ended::Stop,
        opened = client.watch(call) => opened,
    };
    let mut stream = match opened {
        Ok(response) => response.into_inner(),
        Err(status) => return failed(inner, &header, status, false),
    };
    let _open = inner.counters.stream_opened();
    let mut initial: Vec<Entry> = Vec::new();
    let mut served = false;
    loop {
        let message = tokio::select! {
            () = feed.stop.cancelled() => return Ended::Stop,
            message = stream.message() => message,
        };
        let msg = match message {
            Ok(Some(msg)) => msg,
            Ok(None) => {
                return Ended::Failed {
                    reason: "the upstream ended the stream".to_owned(),
                    served,
                };
            }
            Err(status) => return failed(inner, &header, status, served),
        };
        if !msg.resume_token.is_empty() {
            state.resume.clone_from(&msg.resume_token);
        }
        state.upstream_cut = msg.disconnected_since.as_ref().map(millis_of);
        match Kind::try_from(msg.kind).unwrap_or(Kind::Unspecified) {
            Kind::Initial => {
                initial.extend(msg.changes.into_iter().map(from_proto));
                if !msg.initial_complete {
                    continue;
                }
                let own = hub.store_id();
                if !own.is_empty() && !msg.store_id.is_empty() && *own != *msg.store_id {
                    tracing::error!(scope = %feed.scope, upstream = inner.upstreams.url(at), serves = %msg.store_id, relay_serves = %own,
                        "the upstream serves another store than this relay; restart the relay to follow a store that was replaced");
                    return Ended::Failed {
                        reason: format!(
                            "the upstream serves store {} and this relay store {own}",
                            msg.store_id
                        ),
                        served,
                    };
                }
                if own.is_empty() && !msg.store_id.is_empty() {
                    hub.set_store_id(&msg.store_id);
                }
                let mode = InitialMode::try_from(msg.initial_mode).unwrap_or(InitialMode::Full);
                inner.counters.synced(mode);
                let state_now = std::mem::take(&mut initial);
                if feed.taken() {
                    sync(hub, &feed.scope, mode, state_now);
                } else {
                    // Nothing was known upstream: a full state.
                    feed.offer(state_now);
                }
                served = true;
                state.own_cut = None;
                inner.credential_accepted();
                inner.upstreams.prefer(at);
                if failures > 0 {
                    tracing::info!(scope = %feed.scope, upstream = inner.upstreams.url(at), ?mode, attempts = failures + 1, "upstream watch back in sync");
                } else {
                    tracing::debug!(scope = %feed.scope, upstream = inner.upstreams.url(at), ?mode, "upstream watch in sync");
                }
            }
            Kind::Delta => {
                for entry in msg.changes {
                    if let Err(entry) = feed.keep_current(from_proto(entry)) {
                        let origin = Origin::at_millis(ChangeSource::Upstream, entry.updated_at);
                        hub.apply_from(&feed.scope, entry, origin);
                    }
                }
            }
            Kind::Progress | Kind::Unspecified => {}
        }
        if served {
            state.mark(hub, &feed.scope);
        }
        if !hub.has_view(&feed.scope) {
            return Ended::Stop;
        }
    }
}

/// Applies an initial state received on a reconnect.
fn sync(hub: &Hub, scope: &Scope, mode: InitialMode, entries: Vec<Entry>) {
    match mode {
        InitialMode::Full | InitialMode::Unspecified => {
            hub.replace_state(scope, entries, ChangeSource::Upstream);
        }
        InitialMode::Diff | InitialMode::Resumed => {
            for entry in entries {
                if entry.deleted && entry.version == 0 {
                    // A key neither the upstream nor its sources know.
                    hub.remove_if_live(scope, &entry.key, None);
                    continue;
                }
                let origin = Origin::at_millis(ChangeSource::Upstream, entry.updated_at);
                hub.apply_from(scope, entry, origin);
            }
        }
    }
}

/// A failed call or stream: at once with the versions when the upstream asks. A
/// refusal of the relay's token is kept for readiness (see `probe`).
fn failed(inner: &Inner, sent: &AsciiMetadataValue, status: Status, served: bool) -> Ended {
    // The token sent refused (or expired under the stream): one from Cognito is
    // refreshed at once, unless a newer one is held already.
    if status.code() == Code::Unauthenticated {
        inner.credential.rejected(sent);
    }
    // Refused at the start of a Watch (a stream that served and then ended so is a
    // token that expired meanwhile: the next attempt reads the file again).
    if !served
        && matches!(
            status.code(),
            Code::Unauthenticated | Code::PermissionDenied
        )
    {
        inner.credential_refused(format!("{:?}: {}", status.code(), status.message()));
    }
    let asks_versions = status.code() == Code::Aborted
        && status
            .metadata()
            .get(RESUME_METADATA)
            .is_some_and(|v| v == RESUME_WITH_VERSIONS);
    if asks_versions {
        return Ended::SendVersions;
    }
    Ended::Failed {
        reason: format!("{:?}: {}", status.code(), status.message()),
        served,
    }
}

/// Keeps the gauge of open upstream streams honest: one guard per open stream.
pub(super) struct OpenStream<'a>(pub(super) &'a std::sync::atomic::AtomicU64);

impl Drop for OpenStream<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, version: u64) -> Entry {
        Entry::live(key, version, &version.to_string(), 1)
    }

    fn versions(mut state: Vec<Entry>) -> Vec<(String, u64, bool)> {
        state.sort_by(|a, b| a.key.cmp(&b.key));
        state
            .into_iter()
            .map(|e| (e.key.to_string(), e.version, e.deleted))
            .collect()
    }

    /// A state no load took yet is kept current by the changes that follow it, so
    /// a load that comes late gets it whole, without a new upstream Watch; once
    /// taken, changes go to the view.
    #[test]
    fn an_offered_state_is_kept_current_until_a_load_takes_it() {
        let scope = Scope::tenant("acme").unwrap_or_else(|e| panic!("{e}"));
        let feed = Feed::new(scope, CancellationToken::new());
        // Nothing offered yet: a change is not the feed's to keep.
        assert!(feed.keep_current(entry("tenant_config_a", 1)).is_err());
        feed.offer(vec![
            entry("tenant_config_a", 1),
            entry("tenant_config_b", 4),
        ]);
        assert!(feed.keep_current(entry("tenant_config_a", 2)).is_ok());
        assert!(
            feed.keep_current(entry("tenant_config_b", 3)).is_ok(),
            "older: kept out"
        );
        let gone = Entry::tombstone("tenant_config_b", 5, 1);
        assert!(feed.keep_current(gone).is_ok());
        assert!(!feed.taken());
        let state = feed.take_first().unwrap_or_default();
        assert_eq!(
            versions(state),
            [
                ("tenant_config_a".to_owned(), 2, false),
                ("tenant_config_b".to_owned(), 5, true)
            ]
        );
        assert!(feed.taken());
        assert!(feed.take_first().is_none(), "taken once");
        assert!(feed.keep_current(entry("tenant_config_a", 3)).is_err());

        // A state withdrawn (its stream broke) is not taken by the next load.
        let scope = Scope::tenant("acme").unwrap_or_else(|e| panic!("{e}"));
        let feed = Feed::new(scope, CancellationToken::new());
        feed.offer(vec![entry("tenant_config_a", 1)]);
        feed.withdraw();
        assert!(feed.take_first().is_none() && !feed.taken());
    }
}
