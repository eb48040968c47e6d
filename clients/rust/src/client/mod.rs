//! [`Client`] (the handle applications read from) and [`ClientBuilder`]; the state
//! they share with the background watch task.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant, SystemTime};

use serde::de::DeserializeOwned;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use crate::backoff::Backoff;
use crate::cache::{Cache, Change, SyncMode, decode};
use crate::changes::{ChangeStream, Queues};
use crate::error::Error;
use crate::guard::{MassRemoval, Policy, StoreChange};
use crate::proto;
use crate::proto::config_service_client::ConfigServiceClient;
use crate::snapshot::{self, SnapshotData, SnapshotRead};
use crate::token::TokenSource;
use crate::wire;

/// Largest message accepted from the server (the initial state comes in chunks).
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// TCP connect timeout of each attempt.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// A cached value with its version.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    /// The value.
    pub value: T,
    /// The key's version: starts at 1 and only grows (deletes included).
    pub version: u64,
    /// The tenant revision at which the server applied this version.
    pub revision: u64,
    /// When the server says it was written, if it says.
    pub updated_at: Option<SystemTime>,
}

/// What the cache holds for one live key.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Entry {
    /// The key.
    pub key: String,
    /// Its version.
    pub version: u64,
    /// A secret: existence and version only (see [`Client::read_secret`]).
    pub secret: bool,
    /// The tenant revision at which the server applied this version.
    pub revision: u64,
    /// When it was written, if the server says.
    pub updated_at: Option<SystemTime>,
    raw: Option<Arc<str>>,
}

impl Entry {
    /// The value as JSON text; `None` for secrets.
    pub fn raw_value(&self) -> Option<&str> {
        self.raw.as_deref()
    }

    /// The value decoded from JSON; `Err(Error::Secret)` for secrets.
    pub fn value<T: DeserializeOwned>(&self) -> Result<T, Error> {
        match &self.raw {
            Some(raw) => decode(&self.key, raw),
            None => Err(Error::Secret {
                key: self.key.clone(),
            }),
        }
    }
}

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
}

/// Settings of a [`Client`]; see the methods for what each does.
pub struct ClientBuilder {
    server: String,
    tenant: String,
    tokens: Arc<dyn TokenSource>,
    prefixes: Vec<String>,
    snapshot_path: Option<PathBuf>,
    snapshot_debounce: Duration,
    backoff: Backoff,
    stale_after: Duration,
    idle_timeout: Duration,
    call_timeout: Duration,
    ready_timeout: Duration,
    mass_removal: Policy,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("server", &self.server)
            .field("tenant", &self.tenant)
            .field("prefixes", &self.prefixes)
            .field("snapshot_path", &self.snapshot_path)
            .field("backoff", &self.backoff)
            .field("mass_removal", &self.mass_removal)
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// A client of `server` (`http://host:port`, `https://host:port`, or
    /// `host:port`) for `tenant`, with tokens from `tokens`.
    ///
    /// The tenant is sent in every request, so the server refuses a token of any
    /// other tenant (`PermissionDenied`), and is recorded in the snapshot.
    pub fn new(
        server: impl Into<String>,
        tenant: impl Into<String>,
        tokens: impl TokenSource,
    ) -> Self {
        ClientBuilder {
            server: server.into(),
            tenant: tenant.into(),
            tokens: Arc::new(tokens),
            prefixes: Vec::new(),
            snapshot_path: None,
            snapshot_debounce: Duration::from_millis(500),
            backoff: Backoff::default(),
            stale_after: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(30),
            call_timeout: Duration::from_secs(10),
            ready_timeout: Duration::from_secs(30),
            mass_removal: Policy::Hold,
        }
    }

    /// Key prefixes to watch (e.g. `tenant_config_`, `param_config_db/`), replacing
    /// any given before. Default: the whole tenant.
    pub fn prefixes<I, S>(mut self, prefixes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.prefixes = prefixes.into_iter().map(Into::into).collect();
        self
    }

    /// Keeps an on-disk snapshot of the cache at `path`, and starts from it.
    pub fn snapshot_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.snapshot_path = Some(path.into());
        self
    }

    /// Coalesces snapshot writes over this window. Default 500 ms.
    pub fn snapshot_debounce(mut self, debounce: Duration) -> Self {
        self.snapshot_debounce = debounce;
        self
    }

    /// Reconnection backoff. Default: 250 ms doubling to 30 s, half of it random.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// [`Status::stale`] turns true when nothing arrived for this long while
    /// connected. Keep it above the server's progress interval (5 s). Default 15 s.
    pub fn stale_after(mut self, d: Duration) -> Self {
        self.stale_after = d;
        self
    }

    /// Reconnects when nothing (not even progress) arrived for this long: a half-open
    /// connection. Keep it well above the server's progress interval. Default 30 s.
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = d;
        self
    }

    /// Deadline of [`Client::read_secret`], token included. Default 10 s.
    pub fn call_timeout(mut self, d: Duration) -> Self {
        self.call_timeout = d;
        self
    }

    /// Whether an initial state that would remove every entry the cache holds is
    /// applied (`true`) or held back (`false`, the default). A server whose store lost
    /// its data, or was recreated, sends such a state to a client that resumes; held
    /// back, the cache keeps serving what it holds, [`Status::stale`] is true,
    /// [`Status::held_back`] and [`Status::last_error`] ([`Error::MassRemoval`]) say
    /// why with the counts, and the watch retries with backoff until the server sends
    /// a state that keeps at least one entry. Deltas are never held back.
    pub fn allow_mass_removal(mut self, allow: bool) -> Self {
        self.mass_removal = if allow { Policy::Apply } else { Policy::Hold };
        self
    }

    /// Asks `decide` each time the server sends an initial state that would remove
    /// every entry held (see [`allow_mass_removal`](Self::allow_mass_removal)): `true`
    /// applies it, `false` holds it back until the next attempt (with backoff), when
    /// `decide` is asked again. Runs on the watch task: return quickly. A `decide`
    /// that panics holds the state back.
    pub fn on_mass_removal(
        mut self,
        decide: impl Fn(&MassRemoval) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.mass_removal = Policy::Ask(Arc::new(decide));
        self
    }

    /// How long [`connect`](Self::connect) waits. Default 30 s.
    pub fn ready_timeout(mut self, d: Duration) -> Self {
        self.ready_timeout = d;
        self
    }

    /// Starts the client and waits until the cache is current from the server; or,
    /// when a snapshot was loaded and the server cannot be reached, returns at the
    /// first failed attempt with the snapshot's content ([`Status::source`] is
    /// [`Source::Snapshot`], [`Status::stale`] true) while the watch keeps trying.
    ///
    /// Fails with the error that stopped the watch (e.g. `PermissionDenied` for a
    /// token of another tenant, `InvalidArgument` for a bad prefix), or with
    /// [`Error::Timeout`] after `ready_timeout` (the last error in the message).
    pub async fn connect(self) -> Result<Client, Error> {
        let ready_timeout = self.ready_timeout;
        let server = self.server.clone();
        let client = self.start().await?;
        let waited = tokio::time::timeout(
            ready_timeout,
            client.shared.wait_for(|l| {
                if l.ever_synced || (l.source == Source::Snapshot && l.failed_attempts > 0) {
                    Some(Ok(()))
                } else {
                    l.stopped()
                }
            }),
        )
        .await;
        match waited {
            Ok(Ok(())) => Ok(client),
            Ok(Err(e)) => Err(e),
            Err(_) => {
                let last = client
                    .shared
                    .live()
                    .last_error
                    .as_ref()
                    .map_or_else(|| "no error".to_owned(), ToString::to_string);
                Err(Error::Timeout(format!(
                    "no initial state from {server} within {ready_timeout:?} (last error: {last})"
                )))
            }
        }
    }

    /// Starts the client without waiting for the server: loads the snapshot (if
    /// configured and this tenant's) and starts the background watch. Must be called
    /// within a tokio runtime. Fails only on invalid settings.
    pub async fn start(self) -> Result<Client, Error> {
        let invalid = |m: String| Err(Error::InvalidConfig(m));
        if self.tenant.trim().is_empty() {
            return invalid("the tenant must not be empty".into());
        }
        if self.prefixes.iter().any(String::is_empty) {
            return invalid(
                "prefixes must not be empty strings (no prefix means the whole tenant)".into(),
            );
        }
        self.backoff.validate().map_err(Error::InvalidConfig)?;
        for (name, d) in [
            ("idle_timeout", self.idle_timeout),
            ("call_timeout", self.call_timeout),
        ] {
            if d.is_zero() {
                return invalid(format!("{name} must be above zero"));
            }
        }
        let channel = channel(&self.server)?;
        let prefixes = snapshot::normalize_prefixes(&self.prefixes);

        let mut data = Data::default();
        let mut live = Live {
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
        };
        let snapshot = match self.snapshot_path {
            None => None,
            Some(path) => {
                let mut status = SnapshotStatus {
                    path: path.clone(),
                    loaded: false,
                    saved_at: None,
                    ignored: None,
                    write_error: None,
                };
                let (tenant, want, file) = (self.tenant.clone(), prefixes.clone(), path.clone());
                let read =
                    tokio::task::spawn_blocking(move || snapshot::read(&file, &tenant, &want))
                        .await
                        .unwrap_or_else(|e| SnapshotRead::Ignored(format!("cannot read it: {e}")));
                match read {
                    SnapshotRead::Loaded(s) => {
                        data.cache.load(s.entries);
                        data.revision = s.revision;
                        data.resume_token = s.resume_token;
                        data.store_id = s.store_id;
                        live.source = Source::Snapshot;
                        status.loaded = true;
                        status.saved_at = Some(s.saved_at);
                    }
                    SnapshotRead::Absent => {}
                    SnapshotRead::Ignored(why) => {
                        tracing::warn!(path = %path.display(), "snapshot ignored: {why}");
                        status.ignored = Some(why);
                    }
                }
                live.snapshot = Some(status);
                Some(SnapshotConfig {
                    path,
                    debounce: self.snapshot_debounce,
                })
            }
        };

        let shutdown = CancellationToken::new();
        let shared = Arc::new(Shared {
            server: self.server,
            tenant: self.tenant,
            prefixes,
            tokens: self.tokens,
            channel: Mutex::new(channel),
            opts: Options {
                backoff: self.backoff,
                stale_after: self.stale_after,
                idle_timeout: self.idle_timeout,
                call_timeout: self.call_timeout,
                mass_removal: self.mass_removal,
            },
            data: RwLock::new(data),
            live: Mutex::new(live),
            generation: watch::Sender::new(0),
            status_changed: watch::Sender::new(()),
            queues: Queues::default(),
            snapshot,
            snapshot_seq: AtomicU64::new(0),
            snapshot_notify: Notify::new(),
            shutdown: shutdown.clone(),
            done: watch::Sender::new(false),
        });
        tokio::spawn(crate::watch::run(shared.clone()));
        Ok(Client {
            shared,
            _handle: Arc::new(HandleGuard(shutdown)),
        })
    }
}

fn channel(server: &str) -> Result<Channel, Error> {
    let server = server.trim();
    let url = if server.contains("://") {
        server.to_owned()
    } else {
        format!("http://{server}")
    };
    let bad = |e: &dyn fmt::Display| Error::InvalidConfig(format!("server URL {url:?}: {e}"));
    let mut endpoint = Endpoint::from_shared(url.clone()).map_err(|e| bad(&e))?;
    if url.starts_with("https://") {
        #[cfg(feature = "tls")]
        {
            endpoint = endpoint
                .tls_config(tonic::transport::ClientTlsConfig::new().with_native_roots())
                .map_err(|e| bad(&e))?;
        }
        #[cfg(not(feature = "tls"))]
        {
            return Err(bad(&"https needs the crate's `tls` feature"));
        }
    } else if !url.starts_with("http://") {
        return Err(bad(&"the scheme must be http or https"));
    }
    endpoint = endpoint
        .connect_timeout(DIAL_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    Ok(endpoint.connect_lazy())
}

/// A tenant's configuration, held in memory and kept current by a background Watch
/// that reconnects, resumes and re-authenticates by itself.
///
/// Reads are local and synchronous: they never touch the network and never wait on
/// it. Cloning is cheap; the clones share one cache and one watch. The watch stops
/// when [`close`](Self::close) is called or every clone is dropped; change streams
/// then end and [`updates`](Self::updates) receivers see the sender gone.
#[derive(Clone)]
pub struct Client {
    pub(crate) shared: Arc<Shared>,
    _handle: Arc<HandleGuard>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.shared.server)
            .field("tenant", &self.shared.tenant)
            .field("prefixes", &self.shared.prefixes)
            .finish_non_exhaustive()
    }
}

/// Stops the watch when the last [`Client`] clone goes.
struct HandleGuard(CancellationToken);

impl Drop for HandleGuard {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

impl Client {
    /// Settings for a client; see [`ClientBuilder::new`].
    pub fn builder(
        server: impl Into<String>,
        tenant: impl Into<String>,
        tokens: impl TokenSource,
    ) -> ClientBuilder {
        ClientBuilder::new(server, tenant, tokens)
    }

    /// The tenant this cache belongs to.
    pub fn tenant(&self) -> &str {
        &self.shared.tenant
    }

    /// The watched prefixes, sorted (empty: the whole tenant).
    pub fn prefixes(&self) -> &[String] {
        &self.shared.prefixes
    }

    /// A key's value decoded from JSON into `T`, with its version. `Ok(None)` when
    /// the key does not exist; [`Error::Decode`] when the value is not a `T`;
    /// [`Error::Secret`] when the key is a secret (the cache never holds those).
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<Versioned<T>>, Error> {
        let (raw, version, revision, updated_at) = {
            let data = self.shared.data();
            let Some(h) = data.cache.live(key) else {
                return Ok(None);
            };
            let Some(raw) = h.raw.clone() else {
                return Err(Error::Secret { key: key.into() });
            };
            (raw, h.version, h.revision, h.updated_at)
        };
        Ok(Some(Versioned {
            value: decode(key, &raw)?,
            version,
            revision,
            updated_at,
        }))
    }

    /// A key's value as JSON text, with its version. `None` when the key does not
    /// exist or is a secret ([`entry`](Self::entry) tells them apart).
    pub fn get_raw(&self, key: &str) -> Option<Versioned<Arc<str>>> {
        let data = self.shared.data();
        let h = data.cache.live(key)?;
        Some(Versioned {
            value: h.raw.clone()?,
            version: h.version,
            revision: h.revision,
            updated_at: h.updated_at,
        })
    }

    /// What is held for a live key, secrets included.
    pub fn entry(&self, key: &str) -> Option<Entry> {
        let data = self.shared.data();
        data.cache.live(key).map(|h| to_entry(key, h))
    }

    /// Whether a live key (secrets included) is held.
    pub fn contains_key(&self, key: &str) -> bool {
        self.shared.data().cache.live(key).is_some()
    }

    /// Live keys, secrets included, sorted.
    pub fn keys(&self) -> Vec<String> {
        self.shared
            .data()
            .cache
            .iter_live()
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Every live entry, sorted by key: a consistent copy (values are shared, not
    /// copied).
    pub fn entries(&self) -> Vec<Entry> {
        self.shared
            .data()
            .cache
            .iter_live()
            .map(|(k, h)| to_entry(k, h))
            .collect()
    }

    /// Live entries whose key starts with `prefix`, sorted by key.
    pub fn entries_under(&self, prefix: &str) -> Vec<Entry> {
        self.shared
            .data()
            .cache
            .iter_live_under(prefix)
            .map(|(k, h)| to_entry(k, h))
            .collect()
    }

    /// Live keys held, secrets included.
    pub fn len(&self) -> usize {
        self.shared.data().cache.live_count()
    }

    /// True when no live key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The tenant revision the cache is at (0 when unknown).
    pub fn revision(&self) -> u64 {
        self.shared.data().revision
    }

    /// A counter that grows each time the cache's content changes (once per server
    /// message that changed something), for [`watch::Receiver::changed`]: wake up,
    /// then read what you need. Loading a snapshot at start does not count.
    pub fn updates(&self) -> watch::Receiver<u64> {
        self.shared.generation.subscribe()
    }

    /// The current value of the [`updates`](Self::updates) counter.
    pub fn generation(&self) -> u64 {
        *self.shared.generation.borrow()
    }

    /// Every change from now on; see [`ChangeStream`].
    pub fn changes(&self) -> ChangeStream {
        self.shared.queues.open(None)
    }

    /// Changes to keys starting with `prefix`, from now on.
    pub fn changes_under(&self, prefix: impl Into<String>) -> ChangeStream {
        self.shared.queues.open(Some(prefix.into()))
    }

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

    /// Reads a value from the server with `Get`, on demand: for secrets, which the
    /// cache never holds. Never cached. `Ok(None)` when the key does not exist. The
    /// value must be a JSON string (as secrets are). A refused token gets one fresh
    /// one; the whole call is bounded by `call_timeout`.
    pub async fn read_secret(&self, key: &str) -> Result<Option<Versioned<String>>, Error> {
        if self.shared.shutdown.is_cancelled() {
            return Err(Error::Closed);
        }
        let timeout = self.shared.opts.call_timeout;
        let call = async {
            match self.shared.get_once(key).await {
                Err(e) if e.code() == Some(tonic::Code::Unauthenticated) => {
                    self.shared.get_once(key).await
                }
                other => other,
            }
        };
        let response = tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| Error::Timeout(format!("reading {key} took over {timeout:?}")))??;
        let Some(e) = response.entries.into_iter().find(|e| e.key == key) else {
            return Ok(None);
        };
        let e = wire::entry(e);
        Ok(Some(Versioned {
            value: decode(key, &e.value)?,
            version: e.version,
            revision: e.revision,
            updated_at: e.updated_at,
        }))
    }

    /// Stops the watch, writes the snapshot (when configured and changed), and ends
    /// the change streams. Idempotent. Other clones can still read.
    pub async fn close(&self) {
        self.shared.shutdown.cancel();
        let mut done = self.shared.done.subscribe();
        let _ = done.wait_for(|d| *d).await;
        self.shared.update(|l| l.state = State::Closed);
    }
}

fn to_entry(key: &str, h: &crate::cache::Held) -> Entry {
    Entry {
        key: key.to_owned(),
        version: h.version,
        secret: h.secret,
        revision: h.revision,
        updated_at: h.updated_at,
        raw: h.raw.clone(),
    }
}

// ------------------------------------------------------------------ shared state

pub(crate) struct Options {
    pub backoff: Backoff,
    pub stale_after: Duration,
    pub idle_timeout: Duration,
    pub call_timeout: Duration,
    pub mass_removal: Policy,
}

#[derive(Clone)]
pub(crate) struct SnapshotConfig {
    pub path: PathBuf,
    pub debounce: Duration,
}

/// The cache with the stream position it reflects (kept together so a snapshot is
/// consistent).
#[derive(Default)]
pub(crate) struct Data {
    pub cache: Cache,
    pub revision: u64,
    pub resume_token: String,
    /// The store identity of the state held ("" when unknown).
    pub store_id: String,
}

impl Data {
    /// Takes the revision and the (non-empty) resume token of a message.
    pub fn advance(&mut self, revision: u64, resume_token: String) {
        if revision > 0 {
            self.revision = revision;
        }
        if !resume_token.is_empty() {
            self.resume_token = resume_token;
        }
    }
}

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
}

impl Live {
    /// The end of a wait when the watch stopped.
    fn stopped(&self) -> Option<Result<(), Error>> {
        match self.state {
            State::Failed => Some(Err(self.last_error.clone().unwrap_or(Error::Closed))),
            State::Closed => Some(Err(Error::Closed)),
            _ => None,
        }
    }
}

pub(crate) struct Shared {
    pub server: String,
    pub tenant: String,
    pub prefixes: Vec<String>,
    pub tokens: Arc<dyn TokenSource>,
    /// Replaced by [`Shared::renew_channel`] when a stream went silent.
    channel: Mutex<Channel>,
    pub opts: Options,
    data: RwLock<Data>,
    live: Mutex<Live>,
    /// Bumped after each message that changed the cache.
    pub generation: watch::Sender<u64>,
    /// Bumped on every change of `live` that a wait may be looking for.
    status_changed: watch::Sender<()>,
    pub queues: Queues,
    pub snapshot: Option<SnapshotConfig>,
    /// Bumped each time the snapshot should be rewritten.
    pub snapshot_seq: AtomicU64,
    pub snapshot_notify: Notify,
    pub shutdown: CancellationToken,
    /// True once the background task has finished.
    pub done: watch::Sender<bool>,
}

impl Shared {
    // Locks are held for memory operations only, never across an await, and nothing
    // panics while holding them; a poisoned lock still holds a consistent cache.

    pub fn data(&self) -> RwLockReadGuard<'_, Data> {
        self.data.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn data_mut(&self) -> RwLockWriteGuard<'_, Data> {
        self.data.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn live(&self) -> MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the status and wakes the waits.
    pub fn update(&self, f: impl FnOnce(&mut Live)) {
        f(&mut self.live());
        self.status_changed.send_replace(());
    }

    async fn wait_for(&self, f: impl Fn(&Live) -> Option<Result<(), Error>>) -> Result<(), Error> {
        let mut changed = self.status_changed.subscribe();
        loop {
            if let Some(result) = f(&self.live()) {
                return result;
            }
            if changed.changed().await.is_err() {
                return Err(Error::Closed);
            }
        }
    }

    /// Hands changes to the readers, after the cache was updated.
    pub fn publish(&self, changes: &[Change]) {
        if changes.is_empty() {
            return;
        }
        self.generation.send_modify(|g| *g += 1);
        self.queues.deliver(changes);
    }

    /// Asks for a snapshot write (debounced).
    pub fn snapshot_dirty(&self) {
        if self.snapshot.is_some() {
            self.snapshot_seq.fetch_add(1, Ordering::AcqRel);
            self.snapshot_notify.notify_one();
        }
    }

    pub fn snapshot_data(&self) -> SnapshotData {
        let d = self.data();
        SnapshotData {
            tenant: self.tenant.clone(),
            prefixes: self.prefixes.clone(),
            saved_at: SystemTime::now(),
            revision: d.revision,
            resume_token: d.resume_token.clone(),
            store_id: d.store_id.clone(),
            entries: d
                .cache
                .iter_live()
                .map(|(k, h)| crate::cache::WireEntry {
                    key: k.clone(),
                    version: h.version,
                    value: h.raw.as_deref().unwrap_or_default().to_owned(),
                    secret: h.secret,
                    deleted: false,
                    revision: h.revision,
                    updated_at: h.updated_at,
                })
                .collect(),
        }
    }

    /// `authorization` metadata with a token from the source.
    pub async fn auth_header(&self) -> Result<MetadataValue<Ascii>, Error> {
        let token = self
            .tokens
            .token()
            .await
            .map_err(|e| Error::TokenSource(Arc::from(e)))?;
        let token = token.trim();
        if token.is_empty() {
            return Err(Error::token_source(
                "the token source returned an empty token",
            ));
        }
        format!("Bearer {token}").parse().map_err(|_| {
            Error::token_source("the token has characters not allowed in an HTTP header")
        })
    }

    pub fn rpc(&self) -> ConfigServiceClient<Channel> {
        let channel = self
            .channel
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        ConfigServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Drops the connection for a new one, made at the next call. For a stream that
    /// went silent: its connection may be half-open (a dead peer, a NAT that forgot
    /// the flow), and a new call on it would hang the same way until HTTP/2
    /// keepalive gives up on it, 40 s later.
    pub fn renew_channel(&self) {
        match channel(&self.server) {
            Ok(fresh) => *self.channel.lock().unwrap_or_else(|p| p.into_inner()) = fresh,
            // Cannot happen: the same URL made the first channel.
            Err(e) => tracing::warn!("cannot make a new channel: {e}"),
        }
    }

    async fn get_once(&self, key: &str) -> Result<proto::GetResponse, Error> {
        let header = self.auth_header().await?;
        let mut request = tonic::Request::new(proto::GetRequest {
            keys: vec![key.to_owned()],
            prefixes: Vec::new(),
            tenant: self.tenant.clone(),
            ..Default::default()
        });
        request.set_timeout(self.opts.call_timeout);
        request.metadata_mut().insert("authorization", header);
        Ok(self.rpc().get(request).await?.into_inner())
    }

    /// The watch request for the current state: prefixes, tenant, resume token and
    /// what the cache holds. With a resume token (so the cache holds a state the
    /// server sent) that is a 16-byte digest, unless `with_versions` (the server
    /// found the digest differs and asked for them): then, as without a token, the
    /// versions themselves.
    pub fn watch_request(&self, with_versions: bool) -> proto::WatchRequest {
        let d = self.data();
        let digest = !with_versions && !d.resume_token.is_empty();
        proto::WatchRequest {
            prefixes: self.prefixes.clone(),
            tenant: self.tenant.clone(),
            resume_token: d.resume_token.clone(),
            known_versions: if digest {
                Default::default()
            } else {
                d.cache.known_versions()
            },
            known_digest: if digest {
                d.cache.known_digest().to_vec()
            } else {
                Vec::new()
            },
            known_store_id: d.store_id.clone(),
        }
    }
}
