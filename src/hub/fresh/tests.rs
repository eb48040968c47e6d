//! Freshness as a hub user sees it: a change's delays observed once whatever the
//! number of watchers, and what coalescing, ended watchers and no watcher do to the
//! delivered delay.

use std::future::poll_fn;
use std::sync::Arc;

use async_trait::async_trait;

use super::super::{Hub, HubConfig, Known, ScopeLoader, SharedEntry, WatchHandle};
use super::*;
use crate::keys::PrefixSet;
use crate::model::{Entry, Scope};
use crate::store::StoreError;

struct Empty;

#[async_trait]
impl ScopeLoader for Empty {
    async fn load_scope(&self, _: &Scope) -> Result<Vec<Entry>, StoreError> {
        Ok(Vec::new())
    }
}

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

fn hub(track_delivery: bool) -> Hub {
    Hub::new(
        Arc::new(Empty),
        HubConfig {
            track_delivery,
            ..HubConfig::default()
        },
    )
}

fn scope() -> TestResult<Scope> {
    Ok(Scope::tenant("t").map_err(|e| e.to_string())?)
}

/// A change made `ago` seconds before now by `source` (after now if negative).
fn made(source: ChangeSource, ago: f64) -> Option<Origin> {
    let by = std::time::Duration::from_secs_f64(ago.abs());
    let now = SystemTime::now();
    Origin::at(source, if ago < 0.0 { now + by } else { now - by })
}

fn change(key: &str, version: u64) -> Entry {
    Entry::live(key, version, "1", 0)
}

async fn watcher(hub: &Hub) -> TestResult<WatchHandle> {
    let sub = hub
        .subscribe(&scope()?, PrefixSet::everything(), None, &Known::Nothing)
        .await?;
    Ok(sub.handle)
}

/// Takes what is pending (the watcher must have something pending).
async fn take(h: &mut WatchHandle) -> Vec<Arc<SharedEntry>> {
    poll_fn(|cx| h.poll_changes(cx, 1000, usize::MAX)).await
}

fn delivered(hub: &Hub) -> DelaySnapshot {
    hub.freshness().delivered(ChangeSource::Api)
}

#[tokio::test]
async fn a_change_is_observed_once_not_once_per_watcher() -> TestResult {
    let hub = hub(true);
    let mut watchers = vec![watcher(&hub).await?, watcher(&hub).await?];
    watchers.push(watcher(&hub).await?);
    let origin = made(ChangeSource::Api, 2.0);
    hub.apply_from(&scope()?, change("tenant_config_a", 1), origin);
    // A duplicate and an older version are not applied, so not observed.
    hub.apply_from(&scope()?, change("tenant_config_a", 1), origin);
    let applied = hub.freshness().applied(ChangeSource::Api);
    assert_eq!(applied.count, 1);
    assert!((2.0..3.0).contains(&applied.sum_seconds), "{applied:?}");

    for (i, w) in watchers.iter_mut().enumerate() {
        assert_eq!(delivered(&hub).count, 0, "before watcher {i} took it");
        assert_eq!(take(w).await.len(), 1);
    }
    let delays = delivered(&hub);
    assert_eq!(delays.count, 1, "once, when the last of three took it");
    assert!((2.0..3.0).contains(&delays.sum_seconds), "{delays:?}");
    // In the bucket up to 2.5 s, none below.
    let at = |bound: f64| {
        delays
            .buckets
            .iter()
            .find(|(b, _)| *b == bound)
            .map(|b| b.1)
    };
    assert_eq!((at(1.0), at(2.5)), (Some(0), Some(1)));
    assert_eq!(hub.freshness().clock_skew(), 0);
    Ok(())
}

#[tokio::test]
async fn a_change_with_no_watcher_is_applied_but_not_delivered() -> TestResult {
    let hub = hub(true);
    hub.view(&scope()?).await?;
    hub.apply_from(
        &scope()?,
        change("tenant_config_a", 1),
        made(ChangeSource::Api, 0.0),
    );
    assert_eq!(hub.freshness().applied(ChangeSource::Api).count, 1);
    assert_eq!(delivered(&hub).count, 0);
    // A change without a source time is applied but timed nowhere.
    hub.apply(&scope()?, change("tenant_config_a", 2));
    assert_eq!(hub.freshness().applied(ChangeSource::Api).count, 1);
    Ok(())
}

#[tokio::test]
async fn a_coalesced_copy_is_not_a_delivery() -> TestResult {
    let hub = hub(true);
    let (mut fast, mut slow) = (watcher(&hub).await?, watcher(&hub).await?);
    let s = scope()?;
    hub.apply_from(
        &s,
        change("tenant_config_a", 1),
        made(ChangeSource::Api, 0.0),
    );
    assert_eq!(take(&mut fast).await.len(), 1);
    assert_eq!(delivered(&hub).count, 0, "the slow watcher still holds v1");
    // v2 replaces the slow watcher's v1: v1 is no longer waited for, and the fast
    // watcher took it, so it is observed.
    hub.apply_from(
        &s,
        change("tenant_config_a", 2),
        made(ChangeSource::Api, 0.0),
    );
    assert_eq!(delivered(&hub).count, 1);
    // v3 replaces v2 in both sets before anyone took it: v2 reached nobody.
    hub.apply_from(
        &s,
        change("tenant_config_a", 3),
        made(ChangeSource::Api, 0.0),
    );
    assert_eq!(
        delivered(&hub).count,
        1,
        "a change nobody took is not observed"
    );
    assert_eq!(take(&mut slow).await.len(), 1);
    assert_eq!(take(&mut fast).await.len(), 1);
    assert_eq!(delivered(&hub).count, 2, "v3, taken by both");
    Ok(())
}

#[tokio::test]
async fn a_watcher_that_ends_before_taking_stops_being_waited_for() -> TestResult {
    let hub = hub(true);
    let (mut taker, gone) = (watcher(&hub).await?, watcher(&hub).await?);
    let s = scope()?;
    hub.apply_from(
        &s,
        change("tenant_config_a", 1),
        made(ChangeSource::Api, 0.0),
    );
    assert_eq!(take(&mut taker).await.len(), 1);
    assert_eq!(delivered(&hub).count, 0);
    drop(gone);
    assert_eq!(
        delivered(&hub).count,
        1,
        "observed when the other watcher ended"
    );

    // A change whose only watcher ended without taking it was delivered nowhere.
    hub.apply_from(
        &s,
        change("tenant_config_b", 1),
        made(ChangeSource::Api, 0.0),
    );
    drop(taker);
    assert_eq!(delivered(&hub).count, 1);
    Ok(())
}

#[tokio::test]
async fn without_delivery_tracking_only_the_applied_delay_is_observed() -> TestResult {
    let hub = hub(false);
    let mut w = watcher(&hub).await?;
    hub.apply_from(
        &scope()?,
        change("tenant_config_a", 1),
        made(ChangeSource::Api, 0.0),
    );
    let got = take(&mut w).await;
    assert_eq!(got.len(), 1);
    assert_eq!(hub.freshness().applied(ChangeSource::Api).count, 1);
    assert_eq!(delivered(&hub).count, 0);
    // Nothing per delivery: the entry's count was never touched after it was made.
    assert_eq!(got[0].holders.load(Ordering::Relaxed), HANDING);
    Ok(())
}

/// A watcher on another thread may take a change before its fan-out has handed it
/// to every watcher: the fan-out's own copies keep it from counting as delivered.
#[test]
fn a_take_during_the_fan_out_does_not_end_it_early() {
    let fresh = Freshness::default();
    let entry = SharedEntry::applying(change("k", 1), made(ChangeSource::DynamodbStream, 0.5));
    fresh.taken(&entry);
    assert_eq!(fresh.delivered(ChangeSource::DynamodbStream).count, 0);
    fresh.handed_out(&entry, 2);
    assert_eq!(fresh.delivered(ChangeSource::DynamodbStream).count, 0);
    fresh.taken(&entry);
    let delays = fresh.delivered(ChangeSource::DynamodbStream);
    assert_eq!(delays.count, 1);
    assert!((0.5..1.5).contains(&delays.sum_seconds), "{delays:?}");

    // Every copy taken before the fan-out finished: the fan-out observes it.
    let entry = SharedEntry::applying(change("k", 2), made(ChangeSource::DynamodbStream, 0.0));
    fresh.taken(&entry);
    fresh.handed_out(&entry, 1);
    assert_eq!(fresh.delivered(ChangeSource::DynamodbStream).count, 2);
}

#[test]
fn a_source_clock_ahead_of_ours_counts_zero_and_is_counted() -> TestResult {
    let fresh = Freshness::default();
    let ahead = made(ChangeSource::ParameterEvents, -30.0).ok_or("no origin")?;
    fresh.observe_applied(ahead);
    let delays = fresh.applied(ChangeSource::ParameterEvents);
    assert_eq!((delays.count, delays.sum_seconds), (1, 0.0));
    assert_eq!(delays.buckets[0], (0.001, 1));
    assert_eq!(fresh.clock_skew(), 1);
    Ok(())
}

#[test]
fn the_newest_record_age_is_absent_until_one_is_seen_and_follows_the_newest() {
    let fresh = Freshness::default();
    let age = |f: &Freshness| f.newest_record_age(ChangeSource::DynamodbStream);
    assert_eq!(age(&fresh), None);
    for ago in [60.0, 5.0, 120.0] {
        if let Some(origin) = made(ChangeSource::DynamodbStream, ago) {
            fresh.saw(origin);
        }
    }
    let seen = age(&fresh).unwrap_or_default();
    assert!(
        (5.0..6.0).contains(&seen),
        "the newest, not the last: {seen}"
    );
    assert_eq!(fresh.newest_record_age(ChangeSource::ParameterEvents), None);
}

#[test]
fn buckets_hold_a_delay_up_to_their_bound() {
    let h = DelayHistogram::default();
    for micros in [0, 1_000, 1_001, 400_000_000] {
        h.observe(micros);
    }
    let s = h.snapshot();
    assert_eq!(s.count, 4);
    assert_eq!(s.buckets[0], (0.001, 2));
    assert_eq!(s.buckets[1], (0.0025, 1));
    assert_eq!(s.buckets.last(), Some(&(f64::INFINITY, 1)));
}
