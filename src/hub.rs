//! The hub: one materialized view per scope, and the fan-out of its changes.
//!
//! Each [`ScopeView`] holds the scope's entries (tombstones included), a revision that
//! counts the changes applied to it, and a bounded history of the latest changes for
//! resume. Changes are applied by version: one that is not newer than what the view
//! holds is ignored, so duplicates and reordered deliveries from any source are
//! harmless (invariant 2).
//!
//! Fan-out happens while the view is locked, in revision order. Every watcher has a
//! pending set holding at most one change per key: a newer change for a key replaces
//! the pending one and moves to the back. A watcher that does not read therefore
//! costs at most one entry per distinct key and never delays anyone else (invariant 5),
//! and it is never skipped past a change: it always gets the newest version of each key
//! it has not yet taken. Resume tokens stay exact under coalescing: a token names the
//! revision of the last change delivered, and any earlier change not delivered was
//! replaced by a later one still pending.
//!
//! The hub knows nothing about gRPC: the API layer turns what [`WatchHandle`] yields
//! into messages.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use async_trait::async_trait;
use base64::Engine as _;
use dashmap::DashMap;

use crate::keys::PrefixSet;
use crate::model::{Entry, Millis, Scope, now_millis};
use crate::store::{Router, StoreError};

/// Loads a scope's whole state from the sources of truth.
#[async_trait]
pub trait ScopeLoader: Send + Sync + 'static {
    async fn load_scope(&self, scope: &Scope) -> Result<Vec<Entry>, StoreError>;

    /// The identity of the store loaded from (empty when unknown).
    fn store_id(&self) -> Arc<str> {
        Arc::from("")
    }
}

#[async_trait]
impl ScopeLoader for Router {
    async fn load_scope(&self, scope: &Scope) -> Result<Vec<Entry>, StoreError> {
        Router::load_scope(self, scope).await
    }

    fn store_id(&self) -> Arc<str> {
        Router::store_id(self).clone()
    }
}

/// Changes kept per scope for resume by token, unless configured.
pub const DEFAULT_HISTORY: usize = 4096;

/// Tuning of the hub.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Changes kept per scope for resume by token.
    pub history_limit: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            history_limit: DEFAULT_HISTORY,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves data that is still consistent (every
    // critical section here updates its state before anything can panic).
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The hub: views by scope.
pub struct Hub {
    epoch: u64,
    /// The identity of the store the views come from, for clients.
    store_id: Arc<str>,
    config: HubConfig,
    loader: Arc<dyn ScopeLoader>,
    views: DashMap<Scope, Arc<ScopeView>>,
    next_watcher: AtomicU64,
}

/// One scope's materialized view.
pub struct ScopeView {
    scope: Scope,
    loaded: tokio::sync::OnceCell<()>,
    state: Mutex<ViewState>,
    /// The revision whose fan-out is complete; read without the lock by idle
    /// watchers to build progress messages.
    published: AtomicU64,
    /// The last resume token encoded: every watcher with the same prefixes gets
    /// the same token for the same change, so it is encoded once per change, not
    /// once per watcher.
    last_token: Mutex<Option<(ResumeToken, Arc<str>)>>,
}

struct ViewState {
    /// Until the first load has merged: sources may apply versioned changes (merged
    /// by version), but what they cannot apply (a removal with no version, a gap)
    /// sets `reread`, and the load reads the sources once more before it ends.
    loading: bool,
    reread: bool,
    entries: BTreeMap<Arc<str>, Arc<Entry>>,
    revision: u64,
    history: VecDeque<Arc<Entry>>,
    /// The history holds every change with a revision above this.
    history_floor: u64,
    watchers: Vec<Arc<WatcherSlot>>,
    /// Digests computed for reconnecting watchers at `.0` (a revision), by prefix
    /// set: a storm computes each once per prefix set, not once per watcher.
    digests: (u64, Vec<(PrefixSet, StateDigest)>),
}

struct WatcherSlot {
    id: u64,
    prefixes: PrefixSet,
    pending: Mutex<Pending>,
}

/// Prefix sets whose digest a view keeps for the current revision.
const DIGESTS_KEPT: usize = 16;

/// Up to this many pending changes, the one for a key is found by comparing keys;
/// above it, through an index by key.
const PENDING_SCAN: usize = 8;

/// A watcher's changes not yet taken, at most one per key, in revision order.
///
/// A watcher that keeps up holds one or two changes, so the key of a new change is
/// compared with those few instead of hashed: no hashing at all on the delivery path
/// (SipHash of the key, once to push and once to take, was ~5% of a delivery). A
/// backlog above [`PENDING_SCAN`] gets an index by key, which stays until the
/// backlog is drained. That index keeps the standard library's keyed SipHash on
/// purpose: keys are chosen by clients (any writer of the tenant, or whoever writes
/// to the table), and a slow watcher's backlog can hold every key of its scope, so
/// a hasher without SipHash's resistance to crafted collisions (FxHash, or foldhash,
/// which its authors call only "minimally DoS-resistant") would let a writer
/// pick colliding keys and make every push to that backlog a scan of it, on the
/// thread that fans out to everyone. The scan itself is bounded by [`PENDING_SCAN`]
/// comparisons whatever the keys.
#[derive(Default)]
struct Pending {
    by_revision: BTreeMap<u64, Arc<Entry>>,
    /// Present while the backlog is above [`PENDING_SCAN`] (until it drains).
    index: Option<HashMap<Arc<str>, u64>>,
    waker: Option<Waker>,
    high_water: usize,
}

impl Pending {
    fn push(&mut self, entry: &Arc<Entry>) {
        let replaced = match &mut self.index {
            Some(index) => index.insert(entry.key.clone(), entry.revision),
            None => self
                .by_revision
                .iter()
                .find(|(_, e)| e.key == entry.key)
                .map(|(revision, _)| *revision),
        };
        if let Some(old) = replaced {
            self.by_revision.remove(&old);
        }
        self.by_revision.insert(entry.revision, entry.clone());
        if self.index.is_none() && self.by_revision.len() > PENDING_SCAN {
            self.index = Some(
                self.by_revision
                    .values()
                    .map(|e| (e.key.clone(), e.revision))
                    .collect(),
            );
        }
        self.high_water = self.high_water.max(self.by_revision.len());
    }

    /// Takes the oldest pending change.
    fn pop(&mut self) -> Option<Arc<Entry>> {
        let (_, entry) = self.by_revision.pop_first()?;
        if let Some(index) = &mut self.index {
            index.remove(&entry.key);
            if self.by_revision.is_empty() {
                self.index = None;
            }
        }
        Some(entry)
    }
}

/// How a watch's initial state was built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitialMode {
    /// The whole state under the prefixes.
    Full,
    /// What differs from the versions the caller holds, with removals.
    Diff,
    /// Exactly the changes after the resume token.
    Resumed,
}

/// What a [`Hub::resync`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Resync {
    /// Changes applied: the view had drifted from the sources by this many keys.
    pub applied: usize,
    /// Keys whose source version is older than the one served:
    /// (key, source version, served version). Left as served.
    pub regressed: Vec<(String, u64, u64)>,
}

/// What one page of a `Get` asks for.
#[derive(Debug, Clone, Copy)]
pub struct PageRequest<'a> {
    /// Exact keys to read.
    pub keys: &'a [String],
    /// Prefixes to read; with neither keys nor prefixes, the whole scope.
    pub prefixes: &'a [String],
    /// Continue after this key (the previous page's cursor).
    pub after: Option<&'a str>,
    /// The revision of the first page, when continuing.
    pub at: Option<u64>,
    /// Most entries in the page (at least one is always allowed).
    pub max_entries: usize,
    /// About the most key and value bytes in the page; a single larger entry still
    /// goes alone.
    pub max_bytes: usize,
}

/// One page of a `Get`.
#[derive(Debug)]
pub struct Page {
    /// Live entries, by key; secrets without values.
    pub entries: Vec<Arc<Entry>>,
    /// The revision of the state read: the first page's, on every page.
    pub revision: u64,
    pub resume_token: String,
    /// Every key up to and including this one was considered; more may follow. `None`
    /// on the last page.
    pub cursor: Option<Arc<str>>,
}

/// Why a page cannot continue a paged `Get`.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Keys not yet returned changed after the first page's revision (or the
    /// history no longer shows whether they did): a later page would mix states.
    #[error(
        "the tenant changed while paging (keys after the last page changed since revision {0}, or too much changed to tell); start again without page_token"
    )]
    Changed(u64),
}

/// Bytes counted for a secret's value in a page (read on demand; Parameter Store
/// values are at most this long).
const SECRET_PAGE_BYTES: usize = 8 * 1024;

/// Bytes counted per entry besides its key and value (version, timestamps, framing).
const ENTRY_PAGE_OVERHEAD: usize = 32;

/// Besides the entries returned, a page looks at no more than this many deleted
/// keys, so a scope full of tombstones costs a bounded time per page.
const PAGE_EXTRA_SCAN: usize = 8 * SCAN_CHUNK;

/// A new watch: its initial state and the handle that yields what follows.
pub struct Subscription {
    pub mode: InitialMode,
    /// For `Full` live entries by key; for `Diff` changed entries by key followed by
    /// removals; for `Resumed` the missed changes in revision order.
    pub initial: Vec<Arc<Entry>>,
    pub revision: u64,
    pub handle: WatchHandle,
    /// The identity of the store the initial state comes from.
    pub store_id: Arc<str>,
}

/// What a watcher reports about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatcherStats {
    pub scope: Scope,
    pub id: u64,
    pub prefixes: Vec<String>,
    /// Changes waiting to be taken now.
    pub pending: usize,
    /// The most changes that ever waited at once.
    pub high_water: usize,
}

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
    /// resent; when it does not, [`Hub::subscribe`] asks for the versions.
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

/// Why a watch could not start.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The caller sent a [`StateDigest`] that is not the server's: it holds
    /// something else, and must say what (send its versions).
    #[error("the state you hold differs from the server's")]
    DigestDiffers,
}

/// Why a resume token was refused outright (as opposed to not reaching back).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "resume_token is not a token this server issues; omit it (and send known_versions) to start over"
)]
pub struct BadToken;

/// A position in a scope's change order, valid for one filter on one server run.
///
/// Encoded as URL-safe base64 without padding of: a format byte, the fields as
/// big-endian words, and the first 8 bytes of SHA-256 over all that. The check
/// makes any text that is not a token this server (or another release of it)
/// issued, a token with one character changed among them, an error instead of a
/// silent full resend. A checked token of a format this release does not know
/// (a newer one) and a token of the first format (which had no check) are
/// well-formed but not resumable here: the caller falls back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumeToken {
    epoch: u64,
    revision: u64,
    filter: u64,
}

/// The format this release writes.
const TOKEN_FORMAT: u8 = 2;
/// The first format: 25 bytes, no check. Never resumable any more.
const TOKEN_FORMAT_UNCHECKED: u8 = 1;
const TOKEN_BODY: usize = 25;
const TOKEN_CHECK: usize = 8;

fn token_check(body: &[u8]) -> [u8; TOKEN_CHECK] {
    use sha2::Digest as _;
    let hash = sha2::Sha256::digest(body);
    let mut check = [0u8; TOKEN_CHECK];
    check.copy_from_slice(&hash[..TOKEN_CHECK]);
    check
}

impl ResumeToken {
    pub fn encode(&self) -> String {
        let mut bytes = Vec::with_capacity(TOKEN_BODY + TOKEN_CHECK);
        bytes.push(TOKEN_FORMAT);
        bytes.extend_from_slice(&self.epoch.to_be_bytes());
        bytes.extend_from_slice(&self.revision.to_be_bytes());
        bytes.extend_from_slice(&self.filter.to_be_bytes());
        let check = token_check(&bytes);
        bytes.extend_from_slice(&check);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Reads a token. `Ok(None)` for a well-formed token that cannot resume here
    /// (another release's format), so the caller falls back. Text that is no token
    /// at all, or whose check fails, is an error.
    pub fn decode(text: &str) -> Result<Option<Self>, BadToken> {
        // Longer than any format: refuse before decoding.
        if text.len() > 256 {
            return Err(BadToken);
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| BadToken)?;
        if bytes.len() == TOKEN_BODY && bytes[0] == TOKEN_FORMAT_UNCHECKED {
            return Ok(None);
        }
        if bytes.len() <= TOKEN_CHECK {
            return Err(BadToken);
        }
        let (body, check) = bytes.split_at(bytes.len() - TOKEN_CHECK);
        if token_check(body) != check {
            return Err(BadToken);
        }
        match body[0] {
            TOKEN_FORMAT if body.len() == TOKEN_BODY => {}
            TOKEN_FORMAT | TOKEN_FORMAT_UNCHECKED | 0 => return Err(BadToken),
            _ => return Ok(None),
        }
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&body[i..i + 8]);
            u64::from_be_bytes(w)
        };
        Ok(Some(ResumeToken {
            epoch: word(1),
            revision: word(9),
            filter: word(17),
        }))
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }
}

/// FNV-1a over the scope and the prefixes: a token resumes only the same watch.
fn filter_hash(scope: &Scope, prefixes: &PrefixSet) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    };
    feed(scope.tenant_id().as_bytes());
    feed(scope.service().unwrap_or("").as_bytes());
    for p in prefixes.as_slice() {
        feed(p.as_bytes());
    }
    h
}

impl Hub {
    pub fn new(loader: Arc<dyn ScopeLoader>, config: HubConfig) -> Self {
        Hub {
            epoch: rand::random(),
            store_id: loader.store_id(),
            config,
            loader,
            views: DashMap::new(),
            next_watcher: AtomicU64::new(1),
        }
    }

    /// The identity of the store the views come from (empty when unknown).
    pub fn store_id(&self) -> &Arc<str> {
        &self.store_id
    }

    /// The scope's view, loaded from the sources on first use.
    pub async fn view(&self, scope: &Scope) -> Result<Arc<ScopeView>, StoreError> {
        let view = self
            .views
            .entry(scope.clone())
            .or_insert_with(|| {
                Arc::new(ScopeView {
                    scope: scope.clone(),
                    loaded: tokio::sync::OnceCell::new(),
                    state: Mutex::new(ViewState {
                        loading: true,
                        reread: false,
                        entries: BTreeMap::new(),
                        revision: 0,
                        history: VecDeque::new(),
                        history_floor: 0,
                        watchers: Vec::new(),
                        digests: (0, Vec::new()),
                    }),
                    published: AtomicU64::new(0),
                    last_token: Mutex::new(None),
                })
            })
            .clone();
        view.loaded
            .get_or_try_init(|| async {
                let loaded = self.loader.load_scope(scope).await?;
                let mut again = {
                    let mut st = lock(&view.state);
                    // Changes applied while loading are kept: merge by version.
                    let revision = st.revision + 1;
                    let mut merged = false;
                    for mut entry in loaded {
                        if st
                            .entries
                            .get(&entry.key)
                            .is_some_and(|cur| cur.version >= entry.version)
                        {
                            continue;
                        }
                        entry.revision = revision;
                        let entry = Arc::new(entry.without_secret());
                        st.entries.insert(entry.key.clone(), entry);
                        merged = true;
                    }
                    if merged {
                        st.revision = revision;
                    }
                    finish_load(&view, &mut st)
                };
                // A source saw a change it could not apply while the load was in
                // flight: the load may predate it, so read again.
                while let Some(before) = again {
                    let fresh = self.loader.load_scope(scope).await?;
                    let mut st = lock(&view.state);
                    self.merge_fresh(&view, &mut st, fresh, before);
                    again = finish_load(&view, &mut st);
                }
                Ok::<(), StoreError>(())
            })
            .await?;
        Ok(view)
    }

    /// Applies a change from any source. Returns the entry as applied, with its
    /// revision, or `None` when the view already holds this version or a newer one, or
    /// nobody has loaded the scope (the source of truth has it; a later load reads it).
    pub fn apply(&self, scope: &Scope, entry: Entry) -> Option<Arc<Entry>> {
        let view = self.views.get(scope)?.clone();
        let mut st = lock(&view.state);
        self.apply_locked(&view, &mut st, entry)
    }

    /// Deletes a key that a source reports gone without a version (a Parameter
    /// Store delete, a reconciliation that no longer finds it): a tombstone one
    /// version above the live entry. `None` if the key is not live in a loaded view.
    /// While the scope's first load is in flight, the load is made to read again
    /// instead (it may have read the key before it went).
    pub fn remove_if_live(&self, scope: &Scope, key: &str) -> Option<Arc<Entry>> {
        let view = self.views.get(scope)?.clone();
        let mut st = lock(&view.state);
        if st.loading {
            st.reread = true;
            return None;
        }
        let current = st.entries.get(key).filter(|e| !e.deleted)?;
        let tombstone = Entry::tombstone(key, current.version + 1, now_millis());
        self.apply_locked(&view, &mut st, tombstone)
    }

    /// What a loaded view holds for a key (tombstones included); `None` when the
    /// scope is not loaded or the key unknown.
    pub fn held(&self, scope: &Scope, key: &str) -> Option<Arc<Entry>> {
        let view = self.views.get(scope)?.clone();
        if !view.loaded.initialized() {
            return None;
        }
        let st = lock(&view.state);
        st.entries.get(key).cloned()
    }

    /// The revision at which the view applied `key` at `version`: from the entry
    /// when it still holds that version, else from the history; else the view's
    /// revision, a state that already includes that version or a newer one. `None`
    /// when the scope is not loaded.
    pub fn applied_revision(&self, scope: &Scope, key: &str, version: u64) -> Option<u64> {
        let view = self.views.get(scope)?.clone();
        if !view.loaded.initialized() {
            return None;
        }
        let st = lock(&view.state);
        if let Some(e) = st.entries.get(key).filter(|e| e.version == version) {
            return Some(e.revision);
        }
        let from_history = st
            .history
            .iter()
            .rev()
            .find(|e| &*e.key == key && e.version == version)
            .map(|e| e.revision);
        Some(from_history.unwrap_or(st.revision))
    }

    /// Whether the scope's view is loaded (some client has asked for it).
    pub fn is_loaded(&self, scope: &Scope) -> bool {
        self.views
            .get(scope)
            .is_some_and(|v| v.loaded.initialized())
    }

    /// Whether the scope is loaded or being loaded: a source's change to it must be
    /// brought in ([`Hub::apply`] merges into a load in flight).
    pub fn has_view(&self, scope: &Scope) -> bool {
        self.views.contains_key(scope)
    }

    /// The scopes loaded or being loaded now: what a gap or reconciliation must
    /// [`Hub::resync`] (a load in flight then reads again before it ends).
    pub fn scopes(&self) -> Vec<Scope> {
        self.views.iter().map(|v| v.key().clone()).collect()
    }

    /// Re-reads a loaded scope from the sources and applies what differs: newer
    /// versions, and tombstones for keys the sources no longer have. Used after a
    /// gap in a change stream and by periodic reconciliation. A scope that is not
    /// loaded is skipped: its first load reads fresh state anyway.
    pub async fn resync(&self, scope: &Scope) -> Result<Resync, StoreError> {
        let Some(view) = self.views.get(scope).map(|v| v.clone()) else {
            return Ok(Resync::default());
        };
        let before = {
            let mut st = lock(&view.state);
            if st.loading {
                // The load in flight may predate what made the caller resync.
                st.reread = true;
                return Ok(Resync::default());
            }
            st.revision
        };
        let fresh = self.loader.load_scope(scope).await?;
        let mut st = lock(&view.state);
        Ok(self.merge_fresh(&view, &mut st, fresh, before))
    }

    /// Applies a fresh read of a scope's sources begun at revision `before`: newer
    /// versions, and tombstones for keys the sources no longer have.
    fn merge_fresh(
        &self,
        view: &ScopeView,
        st: &mut ViewState,
        fresh: Vec<Entry>,
        before: u64,
    ) -> Resync {
        let mut report = Resync::default();
        let mut present = std::collections::HashSet::with_capacity(fresh.len());
        for entry in fresh {
            present.insert(entry.key.clone());
            if let Some(held) = st.entries.get(&entry.key)
                && held.version > entry.version
                && held.revision <= before
            {
                // The source went back to an older version than we served.
                report
                    .regressed
                    .push((entry.key.to_string(), entry.version, held.version));
                continue;
            }
            if self.apply_locked(view, st, entry).is_some() {
                report.applied += 1;
            }
        }
        // Keys changed after the read began are newer than it: leave them alone.
        let gone: Vec<(Arc<str>, u64)> = st
            .entries
            .values()
            .filter(|e| !e.deleted && e.revision <= before && !present.contains(&e.key))
            .map(|e| (e.key.clone(), e.version))
            .collect();
        for (key, version) in gone {
            let tombstone = Entry::tombstone(&key, version + 1, now_millis());
            if self.apply_locked(view, st, tombstone).is_some() {
                report.applied += 1;
            }
        }
        report
    }

    fn apply_locked(
        &self,
        view: &ScopeView,
        st: &mut ViewState,
        entry: Entry,
    ) -> Option<Arc<Entry>> {
        if st
            .entries
            .get(&entry.key)
            .is_some_and(|cur| cur.version >= entry.version)
        {
            return None;
        }
        st.revision += 1;
        let mut entry = entry.without_secret();
        entry.revision = st.revision;
        let entry = Arc::new(entry);
        st.entries.insert(entry.key.clone(), entry.clone());
        st.history.push_back(entry.clone());
        while st.history.len() > self.config.history_limit {
            if let Some(old) = st.history.pop_front() {
                st.history_floor = old.revision;
            }
        }
        for w in &st.watchers {
            if w.prefixes.matches(&entry.key) {
                let waker = {
                    let mut p = lock(&w.pending);
                    p.push(&entry);
                    p.waker.take()
                };
                if let Some(waker) = waker {
                    waker.wake();
                }
            }
        }
        view.published.store(st.revision, Ordering::Release);
        Some(entry)
    }

    fn token(&self, scope: &Scope, prefixes: &PrefixSet, revision: u64) -> ResumeToken {
        ResumeToken {
            epoch: self.epoch,
            revision,
            filter: filter_hash(scope, prefixes),
        }
    }

    /// One page of live entries with the given keys or under the given prefixes
    /// (neither: all), in key order, and a token that resumes a watch on `prefixes`
    /// from the page's revision.
    ///
    /// A page continuing another (`at` and `after` set) serves the state of the
    /// first page's revision: it is served only if no key after `after` that the
    /// request covers changed since (as the history shows); otherwise
    /// [`PageError::Changed`], never a mix of two states. The work under the lock is
    /// bounded by the page size, the keys asked for and the history limit.
    pub async fn snapshot_page(
        &self,
        scope: &Scope,
        req: PageRequest<'_>,
    ) -> Result<Page, PageError> {
        let view = self.view(scope).await?;
        let mut keys: Vec<&str> = req
            .keys
            .iter()
            .map(String::as_str)
            .filter(|k| req.after.is_none_or(|a| *k > a))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let with_prefixes = req.keys.is_empty() || !req.prefixes.is_empty();
        let set = PrefixSet::new(req.prefixes.iter().cloned());
        let covered =
            |key: &str| (with_prefixes && set.matches(key)) || keys.binary_search(&key).is_ok();
        let st = lock(&view.state);
        let revision = match req.at {
            None => st.revision,
            Some(at) if at == st.revision => at,
            Some(at) if at > st.revision || at < st.history_floor => {
                return Err(PageError::Changed(at));
            }
            Some(at) => {
                let from = st.history.partition_point(|e| e.revision <= at);
                let changed = st
                    .history
                    .range(from..)
                    .any(|e| req.after.is_none_or(|a| &*e.key > a) && covered(&e.key));
                if changed {
                    return Err(PageError::Changed(at));
                }
                at
            }
        };
        let mut by_key = keys.iter().copied().peekable();
        let mut under = with_prefixes
            .then(|| st.under_after(&set, req.after))
            .into_iter()
            .flatten()
            .peekable();
        let max_entries = req.max_entries.max(1);
        let budget = max_entries + PAGE_EXTRA_SCAN;
        let mut entries: Vec<Arc<Entry>> = Vec::new();
        let mut bytes = 0usize;
        let mut scanned = 0usize;
        let mut cursor: Option<Arc<str>> = None;
        let mut more = false;
        loop {
            let (key, entry, from_key, from_under) = match (by_key.peek(), under.peek()) {
                (None, None) => break,
                (Some(k), None) => (*k, st.entries.get(*k), true, false),
                (None, Some(e)) => (&*e.key, Some(*e), false, true),
                (Some(k), Some(e)) => match (*k).cmp(&*e.key) {
                    std::cmp::Ordering::Less => (*k, st.entries.get(*k), true, false),
                    std::cmp::Ordering::Equal => (&*e.key, Some(*e), true, true),
                    std::cmp::Ordering::Greater => (&*e.key, Some(*e), false, true),
                },
            };
            if entries.len() == max_entries || scanned == budget {
                more = true;
                break;
            }
            let live = entry.filter(|e| !e.deleted);
            if let Some(e) = live {
                let size = e.key.len()
                    + ENTRY_PAGE_OVERHEAD
                    + if e.secret {
                        SECRET_PAGE_BYTES
                    } else {
                        e.value.as_deref().map_or(0, str::len)
                    };
                if !entries.is_empty() && bytes + size > req.max_bytes {
                    more = true;
                    break;
                }
                bytes += size;
                entries.push(e.clone());
            }
            cursor = Some(match entry {
                Some(e) => e.key.clone(),
                None => Arc::from(key),
            });
            scanned += 1;
            if from_key {
                by_key.next();
            }
            if from_under {
                under.next();
            }
        }
        drop(by_key);
        drop(under);
        let token_set = if with_prefixes {
            set
        } else {
            PrefixSet::new(req.keys.iter().map(|k| format!("\u{0}{k}")))
        };
        Ok(Page {
            entries,
            revision,
            resume_token: self.token(scope, &token_set, revision).encode(),
            cursor: if more { cursor } else { None },
        })
    }

    /// Starts a watch: registers the watcher, then computes its initial state.
    ///
    /// Under the view's lock only work bounded by the server's own settings is
    /// done: the registration, a resume from history (at most the history limit) or
    /// a digest comparison (cached per revision). The state to send for a full start
    /// or a diff against the caller's versions is computed afterwards, in chunks of
    /// [`SCAN_CHUNK`] entries each under a short hold of the lock, so a request with
    /// 100,000 versions never holds the writers of the tenant back.
    ///
    /// Nothing is lost or sent twice: the watcher is registered at revision `R`, so
    /// every change after `R` reaches its pending set. The chunks send only entries
    /// applied at or before `R` (those are the state at `R`: a key changed after `R`
    /// is skipped and arrives, newest version, through the pending set).
    pub async fn subscribe(
        &self,
        scope: &Scope,
        prefixes: PrefixSet,
        resume: Option<ResumeToken>,
        known: &Known,
    ) -> Result<Subscription, SubscribeError> {
        let view = self.view(scope).await?;
        let filter = filter_hash(scope, &prefixes);
        let slot = Arc::new(WatcherSlot {
            id: self.next_watcher.fetch_add(1, Ordering::Relaxed),
            prefixes,
            pending: Mutex::new(Pending::default()),
        });
        enum Plan<'k> {
            Ready(InitialMode, Vec<Arc<Entry>>),
            Diff(&'k HashMap<String, u64>),
            Full,
        }
        let (plan, revision) = {
            let mut st = lock(&view.state);
            let resumable = resume.filter(|t| {
                t.epoch == self.epoch
                    && t.filter == filter
                    && t.revision >= st.history_floor
                    && t.revision <= st.revision
            });
            let plan = if let Some(token) = resumable {
                let from = st.history.partition_point(|e| e.revision <= token.revision);
                let missed = st
                    .history
                    .range(from..)
                    .filter(|e| slot.prefixes.matches(&e.key))
                    .cloned()
                    .collect();
                Plan::Ready(InitialMode::Resumed, missed)
            } else if let Known::Versions(versions) = known
                && !versions.is_empty()
            {
                Plan::Diff(versions)
            } else if let Known::Digest(digest) = known {
                if *digest != st.digest(&slot.prefixes) {
                    return Err(SubscribeError::DigestDiffers);
                }
                Plan::Ready(InitialMode::Diff, Vec::new())
            } else {
                Plan::Full
            };
            st.watchers.push(slot.clone());
            (plan, st.revision)
        };
        // From here a dropped future (the caller went away) unregisters the watcher.
        let handle = WatchHandle {
            token_base: self.token(scope, &slot.prefixes, 0),
            view,
            slot,
            delivered: revision,
        };
        let (mode, initial) = match plan {
            Plan::Ready(mode, initial) => (mode, initial),
            Plan::Full => {
                let mut all = Vec::new();
                handle
                    .view
                    .scan_at(&handle.slot.prefixes, revision, |e| {
                        if !e.deleted {
                            all.push(e.clone());
                        }
                    })
                    .await;
                (InitialMode::Full, all)
            }
            Plan::Diff(versions) => {
                let out = handle
                    .view
                    .diff_at(&handle.slot.prefixes, versions, revision)
                    .await;
                (InitialMode::Diff, out)
            }
        };
        Ok(Subscription {
            store_id: self.store_id.clone(),
            mode,
            initial,
            revision,
            handle,
        })
    }

    /// Every watcher's backlog, for operators and tests.
    pub fn watcher_stats(&self) -> Vec<WatcherStats> {
        let mut out = Vec::new();
        for view in self.views.iter() {
            let st = lock(&view.state);
            for w in &st.watchers {
                let p = lock(&w.pending);
                out.push(WatcherStats {
                    scope: view.scope.clone(),
                    id: w.id,
                    prefixes: w.prefixes.as_slice().to_vec(),
                    pending: p.by_revision.len(),
                    high_water: p.high_water,
                });
            }
        }
        out
    }
}

/// Ends a first load, or, when a source asked for it meanwhile, returns the revision
/// from which to read the sources again.
fn finish_load(view: &ScopeView, st: &mut ViewState) -> Option<u64> {
    if std::mem::take(&mut st.reread) {
        return Some(st.revision);
    }
    st.loading = false;
    // Nobody can hold a token from before the load.
    st.history.clear();
    st.history_floor = st.revision;
    view.published.store(st.revision, Ordering::Release);
    None
}

impl ViewState {
    /// Entries (tombstones included) under a normalized prefix set, in key order.
    fn under<'a>(&'a self, set: &'a PrefixSet) -> impl Iterator<Item = &'a Arc<Entry>> + 'a {
        set.as_slice().iter().flat_map(move |p| {
            self.entries
                .range::<str, _>((
                    std::ops::Bound::Included(p.as_str()),
                    std::ops::Bound::Unbounded,
                ))
                .take_while(move |(k, _)| k.starts_with(p.as_str()))
                .map(|(_, e)| e)
        })
    }

    /// Entries (tombstones included) under a normalized prefix set whose keys sort
    /// after `after` (all of them when `None`), in key order.
    fn under_after<'a>(
        &'a self,
        set: &'a PrefixSet,
        after: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Arc<Entry>> + 'a {
        use std::ops::Bound;
        set.as_slice().iter().flat_map(move |p| {
            let start = match after {
                Some(a) if a >= p.as_str() => Bound::Excluded(a),
                _ => Bound::Included(p.as_str()),
            };
            self.entries
                .range::<str, _>((start, Bound::Unbounded))
                .take_while(move |(k, _)| k.starts_with(p.as_str()))
                .map(|(_, e)| e)
        })
    }

    /// The digest of the live entries under `set` (see [`StateDigest`]).
    fn digest(&mut self, set: &PrefixSet) -> StateDigest {
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

/// Entries looked at per hold of a view's lock when a watch's initial state is
/// computed.
const SCAN_CHUNK: usize = 512;

impl ScopeView {
    /// Calls `f` with every entry under `set` (tombstones included) applied at or
    /// before `revision`, in key order, holding the lock for [`SCAN_CHUNK`] entries
    /// at a time and yielding to other tasks in between.
    async fn scan_at(&self, set: &PrefixSet, revision: u64, mut f: impl FnMut(&Arc<Entry>)) {
        let mut after: Option<Arc<str>> = None;
        loop {
            let done = {
                let st = lock(&self.state);
                let mut seen = 0;
                let mut last = None;
                for e in st.under_after(set, after.as_deref()) {
                    if e.revision <= revision {
                        f(e);
                    }
                    seen += 1;
                    last = Some(e.key.clone());
                    if seen == SCAN_CHUNK {
                        break;
                    }
                }
                after = last.or(after.take());
                seen < SCAN_CHUNK
            };
            if done {
                return;
            }
            tokio::task::yield_now().await;
        }
    }

    /// What a caller holding `known` lacks under `set` in the state at `revision`:
    /// entries at other versions, and removals for keys it holds that are deleted
    /// or unknown here. Keys changed after `revision` are left out (the watcher's
    /// pending set has them).
    async fn diff_at(
        &self,
        set: &PrefixSet,
        known: &HashMap<String, u64>,
        revision: u64,
    ) -> Vec<Arc<Entry>> {
        let mut out: Vec<Arc<Entry>> = Vec::new();
        self.scan_at(set, revision, |e| {
            let held = known.get(&*e.key);
            let send = if e.deleted {
                held.is_some()
            } else {
                held != Some(&e.version)
            };
            if send {
                out.push(e.clone());
            }
        })
        .await;
        let mut unknown: Vec<&String> = known.keys().filter(|k| set.matches(k)).collect();
        unknown.sort();
        let now: Millis = now_millis();
        for chunk in unknown.chunks(SCAN_CHUNK) {
            {
                let st = lock(&self.state);
                for key in chunk {
                    if !st.entries.contains_key(key.as_str()) {
                        out.push(Arc::new(Entry::tombstone(key, 0, now)));
                    }
                }
            }
            tokio::task::yield_now().await;
        }
        out
    }
}

/// A registered watcher. Dropping it unregisters it.
pub struct WatchHandle {
    view: Arc<ScopeView>,
    slot: Arc<WatcherSlot>,
    token_base: ResumeToken,
    delivered: u64,
}

impl WatchHandle {
    /// Takes up to `max_entries` pending changes (and at most about `max_bytes` of
    /// values, but at least one change), in revision order. `Pending` means nothing
    /// is waiting; the task is woken when something arrives.
    pub fn poll_changes(
        &mut self,
        cx: &mut Context<'_>,
        max_entries: usize,
        max_bytes: usize,
    ) -> Poll<Vec<Arc<Entry>>> {
        let mut p = lock(&self.slot.pending);
        if p.by_revision.is_empty() {
            match &p.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => p.waker = Some(cx.waker().clone()),
            }
            return Poll::Pending;
        }
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        while batch.len() < max_entries {
            let Some((_, first)) = p.by_revision.first_key_value() else {
                break;
            };
            let size = first.value.as_deref().map_or(0, str::len) + first.key.len();
            if !batch.is_empty() && bytes + size > max_bytes {
                break;
            }
            bytes += size;
            let Some(entry) = p.pop() else { break };
            batch.push(entry);
        }
        if let Some(last) = batch.last() {
            self.delivered = last.revision;
        }
        Poll::Ready(batch)
    }

    /// When nothing is pending, the revision this watcher is current through (for a
    /// progress message); `None` when changes are waiting to be taken.
    pub fn idle_revision(&mut self) -> Option<u64> {
        // Read the published revision before looking at the pending set: every change
        // up to it has been fanned out, so if none is pending, all were delivered.
        let published = self.view.published.load(Ordering::Acquire);
        let p = lock(&self.slot.pending);
        if !p.by_revision.is_empty() {
            return None;
        }
        self.delivered = self.delivered.max(published);
        Some(self.delivered)
    }

    /// The resume token for `revision` of this watch.
    pub fn token_at(&self, revision: u64) -> Arc<str> {
        let token = ResumeToken {
            revision,
            ..self.token_base
        };
        let mut last = lock(&self.view.last_token);
        match &*last {
            Some((cached, text)) if *cached == token => text.clone(),
            _ => {
                let text: Arc<str> = Arc::from(token.encode());
                *last = Some((token, text.clone()));
                text
            }
        }
    }

    pub fn scope(&self) -> &Scope {
        &self.view.scope
    }
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        let mut st = lock(&self.view.state);
        if let Some(i) = st.watchers.iter().position(|w| w.id == self.slot.id) {
            st.watchers.swap_remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    /// A source whose content the test changes behind the hub's back.
    struct Fixed(Mutex<Vec<Entry>>);

    #[async_trait]
    impl ScopeLoader for Fixed {
        async fn load_scope(&self, _: &Scope) -> Result<Vec<Entry>, StoreError> {
            Ok(lock(&self.0).clone())
        }
    }

    fn hub(initial: Vec<Entry>) -> Hub {
        Hub::new(
            Arc::new(Fixed(Mutex::new(initial))),
            HubConfig { history_limit: 8 },
        )
    }

    fn e(key: &str, version: u64, value: &str) -> Entry {
        Entry::live(key, version, value, 0)
    }

    async fn next(h: &mut WatchHandle) -> Vec<Arc<Entry>> {
        poll_fn(|cx| h.poll_changes(cx, 1000, usize::MAX)).await
    }

    fn summary(batch: &[Arc<Entry>]) -> Vec<(String, u64)> {
        batch
            .iter()
            .map(|e| (e.key.to_string(), e.version))
            .collect()
    }

    /// Writes land while a watch's initial state is read in chunks: the initial
    /// state plus the deltas that follow equal the view's final state, and no
    /// version of a key arrives twice. The writes run between the chunks (a
    /// current-thread runtime runs the writer at each yield).
    #[tokio::test]
    async fn changes_during_a_chunked_initial_state_are_neither_lost_nor_repeated()
    -> Result<(), Box<dyn std::error::Error>> {
        let scope = Scope::tenant("t").map_err(|e| StoreError::Internal(e.to_string()))?;
        let n = 5 * SCAN_CHUNK;
        let keys: Vec<String> = (0..n).map(|i| format!("tenant_config_k{i:05}")).collect();
        let hub = Arc::new(hub(keys.iter().map(|k| e(k, 1, "1")).collect()));
        hub.view(&scope).await?;
        for (mode, known) in [
            ("full", Known::Nothing),
            (
                "diff",
                // Holds every other key at version 1, and a key the view never had.
                Known::Versions(
                    keys.iter()
                        .step_by(2)
                        .map(|k| (k.clone(), 1))
                        .chain([("tenant_config_zz_gone".to_owned(), 3)])
                        .collect(),
                ),
            ),
        ] {
            let writer = tokio::spawn({
                let (hub, scope, keys) = (hub.clone(), scope.clone(), keys.clone());
                async move {
                    // Keys at both ends and in the middle, new keys, and deletions,
                    // spread over the chunks.
                    for round in 0..40u64 {
                        let v = 100 + round;
                        for i in [0, n / 2, n - 1, (round as usize * 61) % n] {
                            hub.apply(&scope, e(&keys[i], v, "w"));
                        }
                        hub.apply(&scope, e(&format!("tenant_config_new{round:02}"), 1, "n"));
                        hub.apply(&scope, Entry::tombstone(&keys[round as usize + 7], v, 0));
                        tokio::task::yield_now().await;
                    }
                }
            });
            let mut sub = hub
                .subscribe(&scope, PrefixSet::everything(), None, &known)
                .await?;
            writer.await?;
            let mut cache: HashMap<String, u64> = match &known {
                Known::Versions(v) => v.clone(),
                _ => HashMap::new(),
            };
            let mut seen: std::collections::HashSet<(String, u64)> = Default::default();
            let mut take = |batch: &[Arc<Entry>], cache: &mut HashMap<String, u64>| {
                for c in batch {
                    assert!(
                        seen.insert((c.key.to_string(), c.version)),
                        "{mode}: {} v{} twice",
                        c.key,
                        c.version
                    );
                    if c.deleted {
                        cache.remove(&*c.key);
                    } else {
                        cache.insert(c.key.to_string(), c.version);
                    }
                }
            };
            take(&sub.initial, &mut cache);
            while sub.handle.idle_revision().is_none() {
                let batch = next(&mut sub.handle).await;
                take(&batch, &mut cache);
            }
            let want: HashMap<String, u64> = {
                let view = hub.view(&scope).await?;
                let st = lock(&view.state);
                st.entries
                    .values()
                    .filter(|e| !e.deleted)
                    .map(|e| (e.key.to_string(), e.version))
                    .collect()
            };
            assert_eq!(cache.len(), want.len(), "{mode}");
            assert_eq!(cache, want, "{mode}");
        }
        Ok(())
    }

    #[tokio::test]
    async fn stale_and_duplicate_changes_are_ignored() -> Result<(), Box<dyn std::error::Error>> {
        let scope = Scope::tenant("t").map_err(|e| StoreError::Internal(e.to_string()))?;
        let hub = hub(vec![e("tenant_config_a", 3, "1")]);
        let mut sub = hub
            .subscribe(&scope, PrefixSet::everything(), None, &Known::Nothing)
            .await?;
        assert_eq!(sub.mode, InitialMode::Full);
        assert_eq!(summary(&sub.initial), [("tenant_config_a".into(), 3)]);
        assert!(hub.apply(&scope, e("tenant_config_a", 3, "dup")).is_none());
        assert!(hub.apply(&scope, e("tenant_config_a", 2, "old")).is_none());
        assert!(hub.apply(&scope, e("tenant_config_a", 4, "new")).is_some());
        assert_eq!(
            summary(&next(&mut sub.handle).await),
            [("tenant_config_a".into(), 4)]
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_slow_watcher_holds_one_change_per_key_in_revision_order()
    -> Result<(), Box<dyn std::error::Error>> {
        let scope = Scope::tenant("t").map_err(|e| StoreError::Internal(e.to_string()))?;
        let hub = hub(vec![]);
        let mut sub = hub
            .subscribe(&scope, PrefixSet::everything(), None, &Known::Nothing)
            .await?;
        for v in 1..=100u64 {
            for k in ["tenant_config_a", "tenant_config_b", "tenant_config_c"] {
                hub.apply(&scope, e(k, v, "1"));
            }
        }
        hub.apply(&scope, e("tenant_config_a", 101, "1"));
        let stats = hub.watcher_stats();
        assert_eq!(stats[0].pending, 3);
        assert!(stats[0].high_water <= 3);
        let batch = next(&mut sub.handle).await;
        assert_eq!(
            summary(&batch),
            [
                ("tenant_config_b".into(), 100),
                ("tenant_config_c".into(), 100),
                ("tenant_config_a".into(), 101)
            ]
        );
        Ok(())
    }

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

    /// A watcher that cannot be resumed by token but sends the digest of what it
    /// holds gets nothing when nothing changed, and is asked for its versions when
    /// anything did: a new version, a deletion, a new key, or a secret.
    #[tokio::test]
    async fn a_matching_digest_resends_nothing_and_a_different_one_asks_for_versions()
    -> Result<(), Box<dyn std::error::Error>> {
        let scope = Scope::tenant("t").map_err(|e| StoreError::Internal(e.to_string()))?;
        let hub = hub(vec![
            e("tenant_config_a", 3, "1"),
            e("tenant_config_b", 1, "1"),
            e("param_config_x", 7, "1"),
        ]);
        let under = PrefixSet::new(vec!["tenant_config_".into()]);
        let held = |pairs: &[(&str, u64)]| Known::Digest(StateDigest::of(pairs.iter().copied()));
        let now = held(&[("tenant_config_a", 3), ("tenant_config_b", 1)]);
        let sub = hub.subscribe(&scope, under.clone(), None, &now).await?;
        assert_eq!(sub.mode, InitialMode::Diff);
        assert!(sub.initial.is_empty());
        // Another prefix set at the same revision has its own digest.
        let whole = held(&[
            ("tenant_config_a", 3),
            ("tenant_config_b", 1),
            ("param_config_x", 7),
        ]);
        let sub = hub
            .subscribe(&scope, PrefixSet::everything(), None, &whole)
            .await?;
        assert!(sub.initial.is_empty());
        assert!(matches!(
            hub.subscribe(&scope, PrefixSet::everything(), None, &now)
                .await,
            Err(SubscribeError::DigestDiffers)
        ));
        let sub = hub.subscribe(&scope, under.clone(), None, &now).await?;
        assert!(sub.initial.is_empty());

        for stale in [
            held(&[("tenant_config_a", 2), ("tenant_config_b", 1)]),
            held(&[("tenant_config_a", 3)]),
            held(&[
                ("tenant_config_a", 3),
                ("tenant_config_b", 1),
                ("tenant_config_c", 1),
            ]),
            // The whole tenant's digest is not the digest under the prefixes.
            held(&[
                ("tenant_config_a", 3),
                ("tenant_config_b", 1),
                ("param_config_x", 7),
            ]),
        ] {
            let r = hub.subscribe(&scope, under.clone(), None, &stale).await;
            assert!(matches!(r, Err(SubscribeError::DigestDiffers)), "{stale:?}");
        }

        // Changes after the digest was taken: a deletion, then a secret.
        hub.apply(&scope, Entry::tombstone("tenant_config_b", 2, 0));
        assert!(matches!(
            hub.subscribe(&scope, under.clone(), None, &now).await,
            Err(SubscribeError::DigestDiffers)
        ));
        let after_delete = held(&[("tenant_config_a", 3)]);
        let sub = hub
            .subscribe(&scope, under.clone(), None, &after_delete)
            .await?;
        assert!(sub.initial.is_empty());
        let mut secret = e("tenant_config_s", 1, "hidden");
        secret.secret = true;
        hub.apply(&scope, secret);
        let with_secret = held(&[("tenant_config_a", 3), ("tenant_config_s", 1)]);
        let sub = hub
            .subscribe(&scope, under.clone(), None, &with_secret)
            .await?;
        assert_eq!(sub.mode, InitialMode::Diff);
        assert!(sub.initial.is_empty());
        assert!(matches!(
            hub.subscribe(&scope, under.clone(), None, &after_delete)
                .await,
            Err(SubscribeError::DigestDiffers)
        ));
        // The versions themselves always work.
        let versions = Known::Versions([("tenant_config_a".to_owned(), 3)].into());
        let sub = hub.subscribe(&scope, under, None, &versions).await?;
        assert_eq!(summary(&sub.initial), [("tenant_config_s".into(), 1)]);
        Ok(())
    }

    #[tokio::test]
    async fn resume_replays_exactly_and_falls_back_when_history_is_gone()
    -> Result<(), Box<dyn std::error::Error>> {
        let scope = Scope::tenant("t").map_err(|e| StoreError::Internal(e.to_string()))?;
        let hub = hub(vec![]);
        let snap = hub
            .snapshot_page(
                &scope,
                PageRequest {
                    keys: &[],
                    prefixes: &[],
                    after: None,
                    at: None,
                    max_entries: 1_000,
                    max_bytes: 1 << 20,
                },
            )
            .await?;
        let token = ResumeToken::decode(&snap.resume_token)
            .ok()
            .flatten()
            .ok_or_else(|| StoreError::Internal("token".into()))?;
        for v in 1..=5u64 {
            hub.apply(&scope, e("tenant_config_a", v, "1"));
        }
        let sub = hub
            .subscribe(
                &scope,
                PrefixSet::everything(),
                Some(token),
                &Known::Nothing,
            )
            .await?;
        assert_eq!(sub.mode, InitialMode::Resumed);
        assert_eq!(sub.initial.len(), 5);
        // Another prefix set cannot resume from this token.
        let other = PrefixSet::new(vec!["param_config_".into()]);
        let sub = hub
            .subscribe(&scope, other, Some(token), &Known::Nothing)
            .await?;
        assert_eq!(sub.mode, InitialMode::Full);
        // Past the history limit (8), the token no longer reaches back.
        for v in 6..=20u64 {
            hub.apply(&scope, e("tenant_config_a", v, "1"));
        }
        let known = Known::Versions(
            [
                ("tenant_config_a".to_owned(), 20),
                ("tenant_config_gone".to_owned(), 1),
            ]
            .into(),
        );
        let sub = hub
            .subscribe(&scope, PrefixSet::everything(), Some(token), &known)
            .await?;
        assert_eq!(sub.mode, InitialMode::Diff);
        assert_eq!(summary(&sub.initial), [("tenant_config_gone".into(), 0)]);
        assert!(sub.initial[0].deleted);
        Ok(())
    }

    #[tokio::test]
    async fn resync_applies_drift_and_removes_what_the_source_lost()
    -> Result<(), Box<dyn std::error::Error>> {
        let scope = Scope::tenant("t").map_err(|e| StoreError::Internal(e.to_string()))?;
        let source = Arc::new(Fixed(Mutex::new(vec![
            e("tenant_config_a", 1, "1"),
            e("tenant_config_b", 1, "1"),
            e("tenant_config_old", 5, "1"),
        ])));
        let hub = Hub::new(source.clone(), HubConfig { history_limit: 8 });
        let mut sub = hub
            .subscribe(&scope, PrefixSet::everything(), None, &Known::Nothing)
            .await?;
        *lock(&source.0) = vec![
            e("tenant_config_a", 2, "2"),
            e("tenant_config_c", 1, "1"),
            e("tenant_config_old", 3, "regressed"),
        ];
        let report = hub.resync(&scope).await?;
        assert_eq!(report.applied, 3);
        assert_eq!(report.regressed, [("tenant_config_old".to_owned(), 3, 5)]);
        let got = summary(&next(&mut sub.handle).await);
        assert_eq!(
            got,
            [
                ("tenant_config_a".into(), 2),
                ("tenant_config_c".into(), 1),
                ("tenant_config_b".into(), 2)
            ]
        );
        // Nothing drifted since: a second pass applies nothing.
        assert_eq!(hub.resync(&scope).await?.applied, 0);
        assert_eq!(hub.scopes(), std::slice::from_ref(&scope));
        assert!(
            hub.remove_if_live(&scope, "tenant_config_b").is_none(),
            "already gone"
        );
        let removed = hub.remove_if_live(&scope, "tenant_config_c");
        assert!(removed.is_some_and(|r| r.deleted && r.version == 2));
        Ok(())
    }

    /// A source whose first read is held until the test releases it, and then returns
    /// what the source held when the read began: a load slower than the changes.
    struct SlowFirstRead {
        now: Mutex<Vec<Entry>>,
        first: Mutex<Option<(Vec<Entry>, tokio::sync::oneshot::Receiver<()>)>>,
        reads: AtomicU64,
    }

    #[async_trait]
    impl ScopeLoader for SlowFirstRead {
        async fn load_scope(&self, _: &Scope) -> Result<Vec<Entry>, StoreError> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            let first = lock(&self.first).take();
            if let Some((stale, release)) = first {
                let _ = release.await;
                return Ok(stale);
            }
            Ok(lock(&self.now).clone())
        }
    }

    #[tokio::test]
    async fn changes_during_the_first_load_are_neither_lost_nor_undone()
    -> Result<(), Box<dyn std::error::Error>> {
        let scope = Scope::tenant("t").map_err(|e| StoreError::Internal(e.to_string()))?;
        let before = vec![e("tenant_config_a", 1, "1"), e("tenant_config_b", 1, "1")];
        let (release, held) = tokio::sync::oneshot::channel();
        let source = Arc::new(SlowFirstRead {
            now: Mutex::new(before.clone()),
            first: Mutex::new(Some((before, held))),
            reads: AtomicU64::new(0),
        });
        let hub = Arc::new(Hub::new(source.clone(), HubConfig { history_limit: 8 }));
        let loading = tokio::spawn({
            let (hub, scope) = (hub.clone(), scope.clone());
            async move {
                hub.subscribe(&scope, PrefixSet::everything(), None, &Known::Nothing)
                    .await
                    .map(|sub| summary(&sub.initial))
            }
        });
        while source.reads.load(Ordering::Relaxed) == 0 {
            tokio::task::yield_now().await;
        }
        // While the read is out: `a` changes with a version, `b` goes without one.
        assert!(hub.has_view(&scope) && !hub.is_loaded(&scope));
        *lock(&source.now) = vec![e("tenant_config_a", 2, "2")];
        assert!(hub.apply(&scope, e("tenant_config_a", 2, "2")).is_some());
        assert!(hub.remove_if_live(&scope, "tenant_config_b").is_none());
        let _ = release.send(());
        let initial = loading
            .await
            .map_err(|e| StoreError::Internal(e.to_string()))??;
        assert_eq!(initial, [("tenant_config_a".into(), 2)]);
        assert_eq!(source.reads.load(Ordering::Relaxed), 2, "read again once");
        Ok(())
    }

    #[tokio::test]
    async fn a_resync_asked_during_the_first_load_makes_it_read_again() -> Result<(), StoreError> {
        let scope = Scope::tenant("t").map_err(|e| StoreError::Internal(e.to_string()))?;
        let (release, held) = tokio::sync::oneshot::channel();
        let source = Arc::new(SlowFirstRead {
            now: Mutex::new(vec![e("tenant_config_new", 1, "1")]),
            first: Mutex::new(Some((vec![], held))),
            reads: AtomicU64::new(0),
        });
        let hub = Arc::new(Hub::new(source.clone(), HubConfig { history_limit: 8 }));
        let loading = tokio::spawn({
            let (hub, scope) = (hub.clone(), scope.clone());
            async move { hub.view(&scope).await.map(|_| ()) }
        });
        while source.reads.load(Ordering::Relaxed) == 0 {
            tokio::task::yield_now().await;
        }
        // A stream gap while the scope loads: the loading scope is listed and marked.
        assert_eq!(hub.scopes(), std::slice::from_ref(&scope));
        assert_eq!(hub.resync(&scope).await?, Resync::default());
        let _ = release.send(());
        loading
            .await
            .map_err(|e| StoreError::Internal(e.to_string()))??;
        assert!(hub.held(&scope, "tenant_config_new").is_some());
        Ok(())
    }

    #[test]
    fn tokens_of_another_format_fall_back_and_garbage_is_refused() {
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let checked = |body: &[u8]| {
            let mut bytes = body.to_vec();
            bytes.extend_from_slice(&token_check(body));
            b64(&bytes)
        };
        // A newer release's format, checked: not resumable here, fall back.
        assert_eq!(ResumeToken::decode(&checked(&[9u8; 30])), Ok(None));
        // The first format (no check): fall back.
        let mut first = [0u8; TOKEN_BODY];
        first[0] = TOKEN_FORMAT_UNCHECKED;
        assert_eq!(ResumeToken::decode(&b64(&first)), Ok(None));
        // Text that is no token.
        for garbage in [
            "not a token!",
            "",
            "AAAA",
            "test",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert_eq!(ResumeToken::decode(garbage), Err(BadToken), "{garbage:?}");
        }
        assert_eq!(ResumeToken::decode(&b64(&[TOKEN_FORMAT; 5])), Err(BadToken));
        assert_eq!(ResumeToken::decode(&"A".repeat(10_000)), Err(BadToken));
        // This format, checked, but the wrong length.
        assert_eq!(
            ResumeToken::decode(&checked(&[TOKEN_FORMAT; 30])),
            Err(BadToken)
        );
    }

    #[test]
    fn a_token_with_any_one_character_changed_is_refused() {
        let token = ResumeToken {
            epoch: 0x0123_4567_89ab_cdef,
            revision: 42,
            filter: 7,
        };
        let text = token.encode();
        assert_eq!(ResumeToken::decode(&text), Ok(Some(token)));
        let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        for i in 0..text.len() {
            for c in alphabet.chars() {
                let mut changed: Vec<char> = text.chars().collect();
                if changed[i] == c {
                    continue;
                }
                changed[i] = c;
                let changed: String = changed.into_iter().collect();
                // The last character carries spare bits that base64 decoders may
                // ignore; any change that decodes to other bytes must be refused.
                match ResumeToken::decode(&changed) {
                    Ok(Some(t)) if t == token => {}
                    Ok(other) => panic!("{changed} (position {i}) decoded as {other:?}"),
                    Err(BadToken) => {}
                }
            }
        }
    }

    #[tokio::test]
    async fn dropping_a_handle_unregisters_it() -> Result<(), Box<dyn std::error::Error>> {
        let scope = Scope::tenant("t").map_err(|e| StoreError::Internal(e.to_string()))?;
        let hub = hub(vec![]);
        let sub = hub
            .subscribe(&scope, PrefixSet::everything(), None, &Known::Nothing)
            .await?;
        assert_eq!(hub.watcher_stats().len(), 1);
        drop(sub);
        assert!(hub.watcher_stats().is_empty());
        Ok(())
    }

    /// The pending set against a plain model (newest change per key, in revision
    /// order), across the switch from scanning to the index and back.
    #[test]
    fn pending_coalesces_the_same_with_and_without_its_index() {
        let mut p = Pending::default();
        let mut model: BTreeMap<u64, String> = BTreeMap::new();
        let mut revision = 0u64;
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut saw_index = false;
        for step in 0..20_000 {
            // Phases of pushing more than taking and the other way round, so the
            // backlog crosses PENDING_SCAN often and drains to zero often.
            let pushing = (step / 500) % 2 == 0;
            if next(10) < if pushing { 7 } else { 3 } {
                revision += 1;
                let key = format!("k{}", next(if step % 3 == 0 { 5 } else { 40 }));
                let mut e = Entry::live(&key, revision, "1", 0);
                e.revision = revision;
                p.push(&Arc::new(e));
                model.retain(|_, k| *k != key);
                model.insert(revision, key);
            } else {
                let got = p.pop().map(|e| (e.revision, e.key.to_string()));
                assert_eq!(got, model.pop_first(), "step {step}");
            }
            saw_index |= p.index.is_some();
            assert_eq!(p.by_revision.len(), model.len(), "step {step}");
            if let Some(index) = &p.index {
                assert_eq!(index.len(), model.len(), "step {step}");
            }
            if model.is_empty() {
                assert!(p.index.is_none(), "the index goes when the backlog drains");
            }
            let held: Vec<(u64, String)> = p
                .by_revision
                .iter()
                .map(|(r, e)| (*r, e.key.to_string()))
                .collect();
            let want: Vec<(u64, String)> = model.iter().map(|(r, k)| (*r, k.clone())).collect();
            assert_eq!(held, want, "step {step}");
        }
        assert!(saw_index);
    }
}
