//! Dropping idle views, on paused tokio time: what is dropped and when, what keeps a
//! view, and that the next use (a read, a resumed watch) sees what a first use does.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::hub::{
    Hub, HubConfig, InitialMode, Known, PageRequest, ScopeLoader, ScopeView, lock, sweep,
};
use crate::keys::PrefixSet;
use crate::model::{Entry, Scope};
use crate::store::StoreError;

/// The source of truth: what the test writes, and how often the hub read it.
#[derive(Default)]
struct Source {
    entries: Mutex<Vec<Entry>>,
    loads: AtomicUsize,
}

impl Source {
    /// A committed write, as a store would have it.
    fn write(&self, entry: Entry) {
        let mut all = lock(&self.entries);
        all.retain(|e| e.key != entry.key);
        all.push(entry);
    }

    fn loads(&self) -> usize {
        self.loads.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl ScopeLoader for Source {
    async fn load_scope(&self, _: &Scope) -> Result<Vec<Entry>, StoreError> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        Ok(lock(&self.entries).clone())
    }
}

const IDLE: Duration = Duration::from_secs(600);

fn setup() -> (Arc<Source>, Hub, Scope) {
    let source = Arc::new(Source::default());
    source.write(Entry::live("tenant_config_a", 3, "\"a\"", 0));
    source.write(Entry::live("tenant_config_b", 7, "\"b\"", 0));
    let hub = Hub::new(
        source.clone(),
        HubConfig {
            history_limit: 8,
            ..HubConfig::default()
        },
    );
    let scope = Scope::tenant("t").unwrap_or_else(|e| panic!("{e}"));
    (source, hub, scope)
}

fn all() -> PrefixSet {
    PrefixSet::new(Vec::<String>::new())
}

/// Key, version and value of every live entry, by a Get.
async fn get(hub: &Hub, scope: &Scope) -> Result<Vec<(String, u64, String)>, StoreError> {
    let request = PageRequest {
        keys: &[],
        prefixes: &[],
        after: None,
        at: None,
        max_entries: 1000,
        max_bytes: usize::MAX,
    };
    let page = hub
        .snapshot_page(scope, request)
        .await
        .map_err(|e| StoreError::Internal(format!("{e:?}")))?;
    Ok(page
        .entries
        .iter()
        .map(|e| {
            (
                e.key.to_string(),
                e.version,
                e.value.as_deref().unwrap_or("").to_owned(),
            )
        })
        .collect())
}

async fn pass(d: Duration) {
    tokio::time::advance(d).await;
}

#[tokio::test(start_paused = true)]
async fn a_view_nobody_uses_is_dropped_after_the_idle_time_and_reloads_the_same()
-> Result<(), StoreError> {
    let (source, hub, scope) = setup();
    let before = get(&hub, &scope).await?;
    assert_eq!(source.loads(), 1);
    pass(IDLE - Duration::from_secs(1)).await;
    assert_eq!(hub.drop_idle(IDLE), 0, "dropped before its idle time");
    assert!(hub.is_loaded(&scope));
    pass(Duration::from_secs(1)).await;
    assert_eq!(hub.drop_idle(IDLE), 1);
    assert!(!hub.has_view(&scope));
    assert!(
        hub.scopes().is_empty(),
        "reconciliation would still read it"
    );
    // The next Get loads it again: the same entries at the same versions.
    assert_eq!(get(&hub, &scope).await?, before);
    assert_eq!(source.loads(), 2);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_recent_read_keeps_a_view() -> Result<(), StoreError> {
    let (_source, hub, scope) = setup();
    get(&hub, &scope).await?;
    pass(IDLE / 2).await;
    get(&hub, &scope).await?;
    pass(IDLE / 2 + Duration::from_secs(1)).await;
    assert_eq!(hub.drop_idle(IDLE), 0, "read {:?} ago", IDLE / 2);
    assert!(hub.is_loaded(&scope));
    pass(IDLE / 2).await;
    assert_eq!(hub.drop_idle(IDLE), 1);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_view_with_a_watcher_is_kept_and_its_idle_time_starts_when_the_watcher_ends()
-> Result<(), Box<dyn std::error::Error>> {
    let (_source, hub, scope) = setup();
    let sub = hub.subscribe(&scope, all(), None, &Known::Nothing).await?;
    pass(IDLE * 3).await;
    assert_eq!(hub.drop_idle(IDLE), 0, "dropped under a watcher");
    assert!(hub.is_loaded(&scope));
    drop(sub);
    pass(IDLE - Duration::from_secs(1)).await;
    assert_eq!(hub.drop_idle(IDLE), 0, "the watcher ended just now");
    pass(Duration::from_secs(1)).await;
    assert_eq!(hub.drop_idle(IDLE), 1);
    Ok(())
}

/// A use in flight (a write between its load and its apply, a load, a resync)
/// holds the view: it is not dropped however long ago it was last touched.
#[tokio::test(start_paused = true)]
async fn a_view_held_by_a_use_in_flight_is_kept() -> Result<(), StoreError> {
    let (source, hub, scope) = setup();
    let held: Arc<ScopeView> = hub.view(&scope).await?;
    pass(IDLE * 2).await;
    assert_eq!(hub.drop_idle(IDLE), 0);
    // The write commits, then is applied to the view it loaded.
    let write = Entry::live("tenant_config_c", 1, "\"c\"", 0);
    source.write(write.clone());
    let applied = hub.apply(&scope, write);
    assert!(
        applied.is_some(),
        "the write's view was dropped before its apply"
    );
    drop(held);
    assert_eq!(hub.drop_idle(IDLE), 1);
    Ok(())
}

/// A source's change for a dropped scope does not bring back a partial view, and
/// reconciliation does not read it; the next use reads the change from the source.
#[tokio::test(start_paused = true)]
async fn sources_do_not_resurrect_a_dropped_view() -> Result<(), StoreError> {
    let (source, hub, scope) = setup();
    get(&hub, &scope).await?;
    pass(IDLE).await;
    assert_eq!(hub.drop_idle(IDLE), 1);
    let change = Entry::live("tenant_config_a", 4, "\"a4\"", 0);
    source.write(change.clone());
    assert!(hub.apply(&scope, change).is_none());
    assert!(
        hub.remove_if_live(&scope, "tenant_config_b", None)
            .is_none()
    );
    assert_eq!(hub.resync(&scope).await?.applied, 0);
    assert!(
        !hub.has_view(&scope),
        "a source's change made a partial view"
    );
    assert_eq!(source.loads(), 1, "a dropped scope was read without a use");
    let after = get(&hub, &scope).await?;
    assert_eq!(
        after,
        vec![
            ("tenant_config_a".to_owned(), 4, "\"a4\"".to_owned()),
            ("tenant_config_b".to_owned(), 7, "\"b\"".to_owned()),
        ]
    );
    Ok(())
}

/// A resume token from before the drop does not resume the reloaded view (its
/// history does not reach back): the watcher gets a diff against what it holds,
/// with every change it missed, as after a restart.
#[tokio::test(start_paused = true)]
async fn a_token_from_before_the_drop_falls_back_to_a_diff()
-> Result<(), Box<dyn std::error::Error>> {
    let (source, hub, scope) = setup();
    let sub = hub.subscribe(&scope, all(), None, &Known::Nothing).await?;
    // Changes raise the old view's revision well above the reload's first ones.
    let mut last = 0;
    for v in 4..10 {
        let change = Entry::live("tenant_config_a", v, "\"a\"", 0);
        source.write(change.clone());
        last = hub.apply(&scope, change).map_or(last, |e| e.revision);
    }
    let token = sub.handle.token_at(last);
    let token = crate::hub::ResumeToken::decode(&token)?;
    drop(sub);
    pass(IDLE).await;
    assert_eq!(hub.drop_idle(IDLE), 1);
    // Missed while dropped: a new key, a change, a deletion.
    source.write(Entry::live("tenant_config_c", 1, "\"c\"", 0));
    source.write(Entry::live("tenant_config_a", 10, "\"a10\"", 0));
    source.write(Entry::tombstone("tenant_config_b", 8, 0));
    let held = Known::Versions(
        [
            ("tenant_config_a".to_owned(), 9),
            ("tenant_config_b".to_owned(), 7),
        ]
        .into(),
    );
    // The reloaded view goes on making changes (fewer than its history holds): its
    // revision passes the token's.
    for v in 11..19 {
        let change = Entry::live("tenant_config_d", v, "\"d\"", 0);
        source.write(change.clone());
        let view = hub.view(&scope).await?;
        hub.apply(&scope, change);
        drop(view);
    }
    let sub = hub.subscribe(&scope, all(), token, &held).await?;
    assert_eq!(sub.mode, InitialMode::Diff);
    let mut got: Vec<(String, u64, bool)> = sub
        .initial
        .iter()
        .map(|e| (e.key.to_string(), e.version, e.deleted))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("tenant_config_a".to_owned(), 10, false),
            ("tenant_config_b".to_owned(), 8, true),
            ("tenant_config_c".to_owned(), 1, false),
            ("tenant_config_d".to_owned(), 18, false),
        ]
    );
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn the_sweep_drops_idle_views_and_stops_on_shutdown() -> Result<(), StoreError> {
    let (_source, hub, scope) = setup();
    let hub = Arc::new(hub);
    get(&hub, &scope).await?;
    let stop = CancellationToken::new();
    let task = tokio::spawn(sweep(hub.clone(), IDLE, stop.clone()));
    // Paused time: the runtime jumps from timer to timer, the sweep's included.
    tokio::time::sleep(IDLE + IDLE / 4 + Duration::from_secs(1)).await;
    assert!(!hub.has_view(&scope), "the sweep left an idle view");
    stop.cancel();
    task.await
        .map_err(|e| StoreError::Internal(e.to_string()))?;
    // Off: returns at once.
    sweep(hub, Duration::ZERO, CancellationToken::new()).await;
    Ok(())
}
