//! The hub's unit tests that span its parts (views, applying, watching, resuming),
//! on in-memory sources.

use std::collections::HashMap;
use std::future::poll_fn;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;

use super::view::SCAN_CHUNK;
use super::*;
use crate::keys::PrefixSet;
use crate::model::Entry;
use crate::store::StoreError;

/// A source whose content the test changes behind the hub's back.
struct Fixed(Mutex<Vec<Entry>>);

#[async_trait]
impl ScopeLoader for Fixed {
    async fn load_scope(&self, _: &Scope) -> Result<Vec<Entry>, StoreError> {
        Ok(lock(&self.0).clone())
    }

    async fn read_key(&self, _: &Scope, key: &str) -> Result<Option<Entry>, StoreError> {
        Ok(lock(&self.0).iter().find(|e| &*e.key == key).cloned())
    }
}

fn hub(initial: Vec<Entry>) -> Hub {
    Hub::new(
        Arc::new(Fixed(Mutex::new(initial))),
        HubConfig {
            history_limit: 8,
            ..HubConfig::default()
        },
    )
}

fn e(key: &str, version: u64, value: &str) -> Entry {
    Entry::live(key, version, value, 0)
}

async fn next(h: &mut WatchHandle) -> Vec<Arc<SharedEntry>> {
    poll_fn(|cx| h.poll_changes(cx, 1000, usize::MAX)).await
}

fn summary(batch: &[Arc<SharedEntry>]) -> Vec<(String, u64)> {
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
        let mut take = |batch: &[Arc<SharedEntry>], cache: &mut HashMap<String, u64>| {
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

/// A watcher that was sent an empty state and cannot be resumed by token sends the
/// empty digest: it gets every live entry as a difference at once, not a request
/// for its versions (an empty list, which would say nothing) and a full state.
#[tokio::test]
async fn the_empty_digest_gets_every_entry_as_a_difference()
-> Result<(), Box<dyn std::error::Error>> {
    let scope = Scope::tenant("t").map_err(|e| StoreError::Internal(e.to_string()))?;
    let hub = hub(vec![
        e("tenant_config_a", 3, "1"),
        e("tenant_config_b", 1, "1"),
        Entry::tombstone("tenant_config_c", 2, 0),
    ]);
    let empty = Known::Digest(StateDigest::of([]));
    assert_eq!(empty, Known::Digest(StateDigest::EMPTY));
    let sub = hub
        .subscribe(&scope, PrefixSet::everything(), None, &empty)
        .await?;
    assert_eq!(sub.mode, InitialMode::Diff);
    let mut sent: Vec<(&str, u64)> = sub.initial.iter().map(|e| (&*e.key, e.version)).collect();
    sent.sort();
    assert_eq!(sent, [("tenant_config_a", 3), ("tenant_config_b", 1)]);
    // Under prefixes that hold nothing the empty digest matches: nothing is sent.
    let none = PrefixSet::new(vec!["param_config_".into()]);
    let sub = hub.subscribe(&scope, none, None, &empty).await?;
    assert_eq!(sub.mode, InitialMode::Diff);
    assert!(sub.initial.is_empty());
    Ok(())
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
    let hub = Hub::new(
        source.clone(),
        HubConfig {
            history_limit: 8,
            ..HubConfig::default()
        },
    );
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
        hub.remove_if_live(&scope, "tenant_config_b", None)
            .is_none(),
        "already gone"
    );
    let removed = hub.remove_if_live(&scope, "tenant_config_c", None);
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
    let hub = Arc::new(Hub::new(
        source.clone(),
        HubConfig {
            history_limit: 8,
            ..HubConfig::default()
        },
    ));
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
    assert!(
        hub.remove_if_live(&scope, "tenant_config_b", None)
            .is_none()
    );
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
    let hub = Arc::new(Hub::new(
        source.clone(),
        HubConfig {
            history_limit: 8,
            ..HubConfig::default()
        },
    ));
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

/// A caller that moves from an instance whose sources brought changes first to one
/// that has not applied them yet holds newer versions than this view: the diff
/// leaves those as held (versions only grow) and still sends what is newer here.
#[tokio::test]
async fn a_diff_never_takes_a_caller_back_to_an_older_version()
-> Result<(), Box<dyn std::error::Error>> {
    let scope = Scope::tenant("t").map_err(|e| StoreError::Internal(e.to_string()))?;
    let hub = hub(vec![
        e("tenant_config_a", 3, "1"),
        Entry::tombstone("tenant_config_b", 2, 0),
        e("tenant_config_c", 4, "1"),
    ]);
    let ahead = Known::Versions(
        [
            ("tenant_config_a".to_owned(), 5),
            ("tenant_config_b".to_owned(), 6),
            ("tenant_config_c".to_owned(), 4),
        ]
        .into(),
    );
    let sub = hub
        .subscribe(&scope, PrefixSet::everything(), None, &ahead)
        .await?;
    assert_eq!(sub.mode, InitialMode::Diff);
    assert_eq!(summary(&sub.initial), []);
    let behind = Known::Versions(
        [
            ("tenant_config_a".to_owned(), 2),
            ("tenant_config_b".to_owned(), 1),
            ("tenant_config_c".to_owned(), 4),
        ]
        .into(),
    );
    let sub = hub
        .subscribe(&scope, PrefixSet::everything(), None, &behind)
        .await?;
    assert_eq!(
        summary(&sub.initial),
        [("tenant_config_a".into(), 3), ("tenant_config_b".into(), 2)]
    );
    assert!(sub.initial[1].deleted);
    Ok(())
}

/// A caller holding a key this view has not heard of yet (its sources have not
/// brought it; another instance's have) keeps it: the hub reads it from the
/// sources, applies it, and the caller gets it as a change; a key the sources do
/// not hold either is removed.
#[tokio::test]
async fn a_diff_removes_an_unknown_key_only_when_the_sources_do_not_hold_it()
-> Result<(), Box<dyn std::error::Error>> {
    let scope = Scope::tenant("t").map_err(|e| StoreError::Internal(e.to_string()))?;
    let source = Arc::new(Fixed(Mutex::new(vec![e("tenant_config_a", 1, "1")])));
    let hub = Hub::new(
        source.clone(),
        HubConfig {
            history_limit: 8,
            ..HubConfig::default()
        },
    );
    hub.subscribe(&scope, PrefixSet::everything(), None, &Known::Nothing)
        .await?;
    // Written through another instance: in the sources, not yet in this view.
    lock(&source.0).push(e("tenant_config_new", 2, "2"));
    let known = Known::Versions(
        [
            ("tenant_config_a".to_owned(), 1),
            ("tenant_config_new".to_owned(), 2),
            ("tenant_config_gone".to_owned(), 1),
        ]
        .into(),
    );
    let mut sub = hub
        .subscribe(&scope, PrefixSet::everything(), None, &known)
        .await?;
    assert_eq!(sub.mode, InitialMode::Diff);
    assert_eq!(summary(&sub.initial), [("tenant_config_gone".into(), 0)]);
    assert!(sub.initial[0].deleted);
    // The view has it now, and the watcher gets it like any change.
    assert_eq!(
        summary(&next(&mut sub.handle).await),
        [("tenant_config_new".into(), 2)]
    );
    Ok(())
}

/// The hub's counters move by exactly what happened: one view loaded, each change
/// taken counted once per watcher that took it, a change replacing a pending one of
/// the same key counted as coalesced, a resync counted, and the largest backlog
/// read from the slow watcher.
#[tokio::test]
async fn counters_count_deltas_coalescing_loads_and_resyncs()
-> Result<(), Box<dyn std::error::Error>> {
    let scope = Scope::tenant("t")?;
    let hub = hub(vec![e("tenant_config_a", 1, "1")]);
    let all = || PrefixSet::new(["tenant_config_".to_string()]);
    let mut fast = hub.subscribe(&scope, all(), None, &Known::Nothing).await?;
    let slow = hub.subscribe(&scope, all(), None, &Known::Nothing).await?;
    assert_eq!(hub.views_in_memory(), 1);
    for version in 2..=4 {
        hub.apply(&scope, e("tenant_config_a", version, "2"));
        assert_eq!(next(&mut fast.handle).await.len(), 1);
    }
    hub.apply(&scope, e("tenant_config_b", 1, "3"));
    let c = hub.counters();
    // The fast watcher took 3 changes and has 1 waiting; the slow one took none
    // and holds one change per key: a's three versions coalesced into one.
    assert_eq!(HubCounters::get(&c.deltas_sent), 3);
    assert_eq!(HubCounters::get(&c.changes_coalesced), 2);
    assert_eq!(hub.largest_backlog(), 2);
    assert_eq!(next(&mut fast.handle).await.len(), 1);
    assert_eq!(
        HubCounters::get(&c.deltas_sent),
        4,
        "a batch counts its changes"
    );
    hub.resync(&scope).await?;
    assert_eq!(HubCounters::get(&c.resyncs), 1);
    assert_eq!(HubCounters::get(&c.views_loaded), 1);
    drop((fast, slow));
    assert_eq!(hub.largest_backlog(), 0);
    Ok(())
}
