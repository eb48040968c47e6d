//! Relay mode (`configwatch serve --upstream URL`): a server whose sources are
//! other configwatch servers, so that watchers spread over a tree of instances
//! while only the origins read DynamoDB, Parameter Store and their queues.
//!
//! A relay is an ordinary server above the hub: it validates its clients' tokens
//! itself, and its hub serves Get and Watch from its own views, with resume tokens
//! of its own and the upstream's store identity, so digests and known versions
//! carry across every instance of the tree. Below the hub, [`Relay`] is the
//! [`ScopeLoader`]: a scope is loaded by watching it upstream, one Watch per scope
//! whatever the number of its watchers here (`feed`), with the relay's own
//! credential (`credential`: a token file, or an ID token from Cognito), over a few
//! shared connections (`upstreams`). Writes and secrets' values are not the relay's
//! to serve: `forward` sends them upstream with the caller's own token. `probe` reports whether an upstream answers, for
//! readiness, and keeps new work on one that does.
//!
//! Boundary: a gRPC client of the upstream and the hub's loader. It knows the
//! proto (it is a client of the API) but nothing of stores or AWS.

pub mod credential;
mod feed;
mod forward;
mod probe;
pub mod upstreams;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry as Slot;
use tokio_util::sync::CancellationToken;

use crate::api::Forward;
use crate::hub::{Hub, ScopeLoader};
use crate::model::{Entry, Millis, Scope};
use crate::proto;
use crate::proto::watch_response::InitialMode;
use crate::source::health::SourceHealth;
use crate::store::StoreError;
use credential::{Credential, RefreshCounters, UpstreamCredential};
use feed::Feed;
use upstreams::{UpstreamError, Upstreams};

pub use feed::{RECONNECT_FIRST, RECONNECT_MAX};
pub use probe::PROBE_INTERVAL;

/// How long a first load of a scope waits for an upstream, unless configured.
pub const DEFAULT_LOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// What a relay is given.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// The upstream servers, tried in this order.
    pub upstreams: Vec<String>,
    /// Where the relay's own token comes from: a file, or Cognito.
    pub credential: UpstreamCredential,
    /// How long a first load of a scope waits for an upstream before the call that
    /// asked for it fails with UNAVAILABLE.
    pub load_timeout: Duration,
}

/// Why a relay cannot start.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

/// What a relay counts, for operators.
#[derive(Debug, Default)]
pub struct RelayCounters {
    /// Upstream Watch streams open now (one per scope served).
    pub upstream_watches: AtomicU64,
    /// Initial states received from upstreams, by how they were built.
    pub syncs_full: AtomicU64,
    pub syncs_diff: AtomicU64,
    pub syncs_resumed: AtomicU64,
}

impl RelayCounters {
    fn stream_opened(&self) -> feed::OpenStream<'_> {
        self.upstream_watches.fetch_add(1, Ordering::Relaxed);
        feed::OpenStream(&self.upstream_watches)
    }

    fn synced(&self, mode: InitialMode) {
        let counter = match mode {
            InitialMode::Diff => &self.syncs_diff,
            InitialMode::Resumed => &self.syncs_resumed,
            InitialMode::Full | InitialMode::Unspecified => &self.syncs_full,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The initial states received, by mode label.
    pub fn syncs(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("full", self.syncs_full.load(Ordering::Relaxed)),
            ("diff", self.syncs_diff.load(Ordering::Relaxed)),
            ("resumed", self.syncs_resumed.load(Ordering::Relaxed)),
        ]
    }
}

pub(crate) struct Inner {
    upstreams: Upstreams,
    credential: Credential,
    feeds: DashMap<Scope, Arc<Feed>>,
    /// The hub this relay loads for (it holds the relay, so the relay holds it
    /// weakly).
    hub: OnceLock<Weak<Hub>>,
    counters: Arc<RelayCounters>,
    stop: CancellationToken,
    load_timeout: Duration,
    /// Why an upstream last refused the relay's token, until one accepts it.
    refused: std::sync::Mutex<Option<String>>,
}

impl Inner {
    /// An upstream refused the relay's token: the relay cannot load anything new.
    fn credential_refused(&self, reason: String) {
        let mut held = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        if held.is_none() {
            let check = self.credential.what_to_check();
            tracing::error!(%reason, "the upstream refuses this relay's token; {check}");
        }
        *held = Some(reason);
    }

    /// An upstream accepted the relay's token.
    fn credential_accepted(&self) {
        let mut held = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        if held.take().is_some() {
            tracing::info!("the upstream accepts this relay's token again");
        }
    }

    /// Why the relay's token is refused, while it is.
    fn refusal(&self) -> Option<String> {
        self.refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn hub(&self) -> Option<Arc<Hub>> {
        self.hub.get()?.upgrade()
    }

    /// The scope's feed for a load: the running one while no load has taken its
    /// state (a load that gave up before the state came leaves it to this one),
    /// else a new one (the old one fed a view the hub dropped, or a load that must
    /// read again).
    fn feed_for(self: &Arc<Self>, scope: &Scope) -> Arc<Feed> {
        let (feed, start) = match self.feeds.entry(scope.clone()) {
            Slot::Occupied(held) if !held.get().taken() && !held.get().stop.is_cancelled() => {
                (held.get().clone(), false)
            }
            Slot::Occupied(mut held) => {
                held.get().stop.cancel();
                let feed = Feed::new(scope.clone(), self.stop.child_token());
                held.insert(feed.clone());
                (feed, true)
            }
            Slot::Vacant(free) => {
                let feed = Feed::new(scope.clone(), self.stop.child_token());
                free.insert(feed.clone());
                (feed, true)
            }
        };
        if start {
            tokio::spawn(feed::run(feed.clone(), self.clone()));
        }
        feed
    }

    /// A feed ended: it leaves the map unless a newer one took its place.
    fn ended(&self, feed: &Arc<Feed>) {
        self.feeds
            .remove_if(&feed.scope, |_, held| Arc::ptr_eq(held, feed));
    }
}

/// A relay: the hub's loader, and the upstream that writes go to.
#[derive(Clone)]
pub struct Relay(Arc<Inner>);

impl Relay {
    /// Checks the settings; the credential is the one `settings` describe, opened
    /// by the caller. No upstream is contacted yet.
    pub fn new(
        settings: &RelaySettings,
        credential: Credential,
        stop: CancellationToken,
    ) -> Result<Relay, RelayError> {
        Ok(Relay(Arc::new(Inner {
            upstreams: Upstreams::new(&settings.upstreams)?,
            credential,
            feeds: DashMap::new(),
            hub: OnceLock::new(),
            counters: Arc::default(),
            stop,
            load_timeout: settings.load_timeout,
            refused: std::sync::Mutex::new(None),
        })))
    }

    /// Connects the relay to the hub it loads for (built with the relay as its
    /// loader).
    pub fn attach(&self, hub: &Arc<Hub>) {
        let _ = self.0.hub.set(Arc::downgrade(hub));
    }

    pub fn counters(&self) -> Arc<RelayCounters> {
        self.0.counters.clone()
    }

    /// The exchanges of a refresh token for an upstream token, by result, when the
    /// token comes from Cognito.
    pub fn token_refreshes(&self) -> Option<Arc<RefreshCounters>> {
        self.0.credential.refreshes()
    }

    /// Where the API sends writes and secret reads, with the caller's token.
    pub fn forward(&self) -> Arc<dyn Forward> {
        Arc::new(forward::Forwarder(self.0.clone()))
    }

    /// Checks the upstreams until `stop`, reporting to `health` (see `probe`).
    pub async fn probe(self, stop: CancellationToken, health: SourceHealth) {
        probe::run(self.0, stop, health).await;
    }

    /// The upstream URLs, for the log line at start.
    pub fn upstream_urls(&self) -> Vec<String> {
        (0..self.0.upstreams.len())
            .map(|i| self.0.upstreams.url(i).to_owned())
            .collect()
    }
}

#[async_trait]
impl ScopeLoader for Relay {
    async fn load_scope(&self, scope: &Scope) -> Result<Vec<Entry>, StoreError> {
        let feed = self.0.feed_for(scope);
        let mut first = feed.first.subscribe();
        let waited = tokio::time::timeout(
            self.0.load_timeout,
            first.wait_for(|f| f.ready.is_some() || f.failed.is_some()),
        )
        .await;
        let failed = match waited {
            Ok(Ok(f)) => {
                let failed = f.failed.clone();
                // The channel's read lock, released before the state is taken.
                drop(f);
                failed
            }
            Ok(Err(_)) => return Err(StoreError::Unavailable("the relay is stopping".to_owned())),
            Err(_) => {
                return Err(StoreError::Unavailable(format!(
                    "no upstream served {scope} within {}; retry",
                    humantime::format_duration(self.0.load_timeout)
                )));
            }
        };
        match feed.take_first() {
            Some(state) => Ok(state),
            // Taken by a load before this one (which the hub then cancelled): the
            // next load starts a new feed.
            None if feed.taken() => Err(StoreError::Unavailable(format!(
                "the first load of {scope} was cancelled; retry"
            ))),
            None => Err(StoreError::Unavailable(failed.unwrap_or_default())),
        }
    }

    /// Asked when a client holds a key this relay's view does not know (it comes
    /// from an instance that is ahead): the upstream is asked, as the relay.
    async fn read_key(&self, scope: &Scope, key: &str) -> Result<Option<Entry>, StoreError> {
        let header = self
            .0
            .credential
            .header()
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        forward::read_upstream(&self.0, &header, scope, key)
            .await
            .map(|e| e.map(Entry::without_secret))
            .map_err(|s| StoreError::Unavailable(s.message().to_owned()))
    }
}

/// A time as milliseconds since the epoch.
fn millis_of(t: &prost_types::Timestamp) -> Millis {
    t.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(t.nanos) / 1_000_000)
}

/// An entry as the upstream sent it, in the hub's terms.
fn from_proto(e: proto::Entry) -> Entry {
    // No value for a tombstone, nor for a secret sent without one (every Watch).
    let withheld = e.deleted || (e.secret && e.value.is_empty());
    let value = (!withheld).then(|| Arc::from(e.value));
    Entry {
        key: Arc::from(e.key),
        version: e.version,
        value,
        secret: e.secret,
        deleted: e.deleted,
        updated_at: e.updated_at.as_ref().map_or(0, millis_of),
        revision: 0,
    }
}
