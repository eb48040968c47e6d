//! A scope's view: its entries, revision, history and watchers, and how it is first
//! loaded from the sources of truth (a [`ScopeLoader`]; the [`Router`] is the real
//! one).
//!
//! Boundary: this file owns the view's state and reading it (entries under a prefix
//! set, in key order, in chunks that hold the lock briefly). Changing it by version
//! is `apply`; what watchers hold is `pending` and `watch`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::digest::StateDigest;
use super::fresh::ChangeSource;
use super::shared::SharedEntry;
use super::token::ResumeToken;
use super::watch::WatcherSlot;
use super::{Hub, HubCounters, lock};
use crate::keys::PrefixSet;
use crate::model::{Entry, Scope};
use crate::store::{Router, StoreError};

/// Loads a scope's whole state from the sources of truth.
#[async_trait]
pub trait ScopeLoader: Send + Sync + 'static {
    async fn load_scope(&self, scope: &Scope) -> Result<Vec<Entry>, StoreError>;

    /// One key as the sources of truth hold it now, a secret without its value;
    /// `None` when they do not have it. The default has no such read and answers
    /// `None`.
    async fn read_key(&self, _scope: &Scope, _key: &str) -> Result<Option<Entry>, StoreError> {
        Ok(None)
    }

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

    async fn read_key(&self, scope: &Scope, key: &str) -> Result<Option<Entry>, StoreError> {
        match self.route(key) {
            Ok((_, backend)) => backend.read(scope, key, false).await,
            // No backend holds such a key.
            Err(_) => Ok(None),
        }
    }

    fn store_id(&self) -> Arc<str> {
        Router::store_id(self).clone()
    }
}

/// One scope's materialized view.
pub struct ScopeView {
    pub(super) scope: Scope,
    pub(super) loaded: tokio::sync::OnceCell<()>,
    pub(super) state: Mutex<ViewState>,
    /// The revision whose fan-out is complete; read without the lock by idle
    /// watchers to build progress messages.
    pub(super) published: AtomicU64,
    /// The last resume token encoded: every watcher with the same prefixes gets
    /// the same token for the same change, so it is encoded once per change, not
    /// once per watcher.
    pub(super) last_token: Mutex<Option<(ResumeToken, Arc<str>)>>,
    /// When a client last used the view (ms on the hub's clock): see `idle`.
    pub(super) last_used: AtomicU64,
    /// Since when the view is cut off from its sources, in ms since the epoch; 0
    /// while it is current (see `cutoff`).
    pub(super) cut_off: AtomicI64,
    /// The same for every view of the hub (the hub's sources failing), shared.
    pub(super) all_cut_off: Arc<AtomicI64>,
}

pub(super) struct ViewState {
    /// Until the first load has merged: sources may apply versioned changes (merged
    /// by version), but what they cannot apply (a removal with no version, a gap)
    /// sets `reread`, and the load reads the sources once more before it ends.
    pub(super) loading: bool,
    pub(super) reread: bool,
    pub(super) entries: BTreeMap<Arc<str>, Arc<SharedEntry>>,
    pub(super) revision: u64,
    pub(super) history: VecDeque<Arc<SharedEntry>>,
    /// The history holds every change with a revision above this.
    pub(super) history_floor: u64,
    pub(super) watchers: Vec<Arc<WatcherSlot>>,
    /// Digests computed for reconnecting watchers at `.0` (a revision), by prefix
    /// set: a storm computes each once per prefix set, not once per watcher.
    pub(super) digests: (u64, Vec<(PrefixSet, StateDigest)>),
}

impl Hub {
    /// The scope's view, loaded from the sources on first use.
    ///
    /// This is a client's use of the view (see `idle`): the caller holds the view it
    /// gets for as long as its use runs, and it is not dropped meanwhile.
    pub async fn view(&self, scope: &Scope) -> Result<Arc<ScopeView>, StoreError> {
        let view = self
            .views
            .entry(scope.clone())
            .or_insert_with(|| {
                let revision = self.first_revision();
                Arc::new(ScopeView {
                    scope: scope.clone(),
                    loaded: tokio::sync::OnceCell::new(),
                    state: Mutex::new(ViewState {
                        loading: true,
                        reread: false,
                        entries: BTreeMap::new(),
                        revision,
                        history: VecDeque::new(),
                        history_floor: revision,
                        watchers: Vec::new(),
                        digests: (0, Vec::new()),
                    }),
                    published: AtomicU64::new(revision),
                    last_token: Mutex::new(None),
                    last_used: AtomicU64::new(self.now_ms()),
                    cut_off: AtomicI64::new(0),
                    all_cut_off: self.cut_off.clone(),
                })
            })
            .clone();
        self.touch(&view);
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
                        let entry = Arc::new(SharedEntry::new(entry.without_secret()));
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
                    self.merge_fresh(&view, &mut st, fresh, before, ChangeSource::Reconcile);
                    again = finish_load(&view, &mut st);
                }
                HubCounters::add(&self.counters.views_loaded, 1);
                Ok::<(), StoreError>(())
            })
            .await?;
        Ok(view)
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
}

/// Ends a first load, or, when a source asked for it meanwhile, returns the revision
/// from which to read the sources again.
pub(super) fn finish_load(view: &ScopeView, st: &mut ViewState) -> Option<u64> {
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
    pub(super) fn under<'a>(
        &'a self,
        set: &'a PrefixSet,
    ) -> impl Iterator<Item = &'a Arc<SharedEntry>> + 'a {
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
    pub(super) fn under_after<'a>(
        &'a self,
        set: &'a PrefixSet,
        after: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Arc<SharedEntry>> + 'a {
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
}

/// Entries looked at per hold of a view's lock when a watch's initial state is
/// computed.
pub(super) const SCAN_CHUNK: usize = 512;

impl ScopeView {
    /// Calls `f` with every entry under `set` (tombstones included) applied at or
    /// before `revision`, in key order, holding the lock for [`SCAN_CHUNK`] entries
    /// at a time and yielding to other tasks in between.
    pub(super) async fn scan_at(
        &self,
        set: &PrefixSet,
        revision: u64,
        mut f: impl FnMut(&Arc<SharedEntry>),
    ) {
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
    /// entries at newer versions than it holds, and removals for keys it holds that
    /// are deleted here (at a newer version); then, apart, the keys it holds that
    /// this view does not know at all, in key order (`confirm` decides their
    /// removals). Keys changed after `revision` are left out (the watcher's pending
    /// set has them). A key the caller holds at a newer version than this view is
    /// left as held: it comes from an instance whose sources brought the change
    /// first, and versions only grow, so sending this view's older one would take
    /// the caller back.
    pub(super) async fn diff_at(
        &self,
        set: &PrefixSet,
        known: &HashMap<String, u64>,
        revision: u64,
    ) -> (Vec<Arc<SharedEntry>>, Vec<String>) {
        let mut out: Vec<Arc<SharedEntry>> = Vec::new();
        self.scan_at(set, revision, |e| {
            let held = known.get(&*e.key).copied();
            let send = if e.deleted {
                held.is_some_and(|v| v < e.version)
            } else {
                held.is_none_or(|v| v < e.version)
            };
            if send {
                out.push(e.clone());
            }
        })
        .await;
        let mut held: Vec<&String> = known.keys().filter(|k| set.matches(k)).collect();
        held.sort();
        let mut unknown = Vec::new();
        for chunk in held.chunks(SCAN_CHUNK) {
            {
                let st = lock(&self.state);
                unknown.extend(
                    chunk
                        .iter()
                        .filter(|key| !st.entries.contains_key(key.as_str()))
                        .map(|key| (*key).clone()),
                );
            }
            tokio::task::yield_now().await;
        }
        (out, unknown)
    }
}
