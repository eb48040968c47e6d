//! The reader as a whole ([`super::run_with`]) over the fake stream, in paused time:
//! split shards, expired iterators, trimmed data, re-versioning.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use tokio_util::sync::CancellationToken;

use super::fake::{Fake, Table, Versions, put_record};
use super::sdk::lock;
use super::*;
use crate::hub::{Hub, HubConfig, SharedEntry};
use crate::model::{Entry, Scope};
use crate::source::SourceCounters;
use crate::source::health::SourceHealth;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn settings() -> StreamSettings {
    StreamSettings {
        poll_interval: Duration::from_millis(100),
        rediscover_interval: Duration::from_millis(100),
        instance: "origin-a".into(),
        ..StreamSettings::default()
    }
}

struct Setup {
    hub: Arc<Hub>,
    counters: Arc<SourceCounters>,
    table: Arc<Table>,
    scope: Scope,
    shutdown: CancellationToken,
    versions: Versions,
    task: tokio::task::JoinHandle<()>,
}

async fn start(fake: &Fake) -> Result<Setup, Box<dyn std::error::Error>> {
    let table = Arc::new(Table::default());
    let hub = Arc::new(Hub::new(table.clone(), HubConfig::default()));
    let scope = Scope::tenant("acme")?;
    hub.view(&scope).await?;
    let counters = Arc::new(SourceCounters::default());
    let ctx = SourceContext {
        hub: hub.clone(),
        counters: counters.clone(),
    };
    let shutdown = CancellationToken::new();
    let versions = Versions::default();
    let task = tokio::spawn(run_with(
        ctx,
        settings(),
        fake.clone(),
        versions.clone(),
        SourceHealth::detached("dynamodb-stream"),
        shutdown.clone(),
    ));
    Ok(Setup {
        hub,
        counters,
        table,
        scope,
        shutdown,
        versions,
        task,
    })
}

impl Setup {
    fn held(&self, name: &str) -> Option<Arc<SharedEntry>> {
        self.hub.held(&self.scope, &format!("tenant_config_{name}"))
    }

    async fn stop(self) -> TestResult {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(1), self.task).await??;
        Ok(())
    }
}

/// Waits (in paused time) until `cond` holds.
async fn until(what: &str, mut cond: impl FnMut() -> bool) -> TestResult {
    for _ in 0..2000 {
        if cond() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(format!("timed out waiting for {what}").into())
}

fn get(counter: &std::sync::atomic::AtomicU64) -> u64 {
    SourceCounters::get(counter)
}

#[tokio::test(start_paused = true)]
async fn a_split_shard_is_read_parent_first() -> TestResult {
    let fake = Fake::new(2);
    fake.add_shard("p", None);
    let s = start(&fake).await?;
    until("the first start at LATEST", || {
        fake.requests() == [("p".into(), IteratorStart::Latest)]
    })
    .await?;
    // The parent gets records, then splits: it closes and two children appear
    // with records of their own, all before the reader has read the parent.
    let parent = fake.append(
        "p",
        &[
            ("k1", 1, "p1"),
            ("k2", 1, "p2"),
            ("k1", 2, "p3"),
            ("only_parent", 1, "p4"),
            ("k2", 2, "p5"),
        ],
    );
    fake.close("p");
    fake.add_shard("c1", Some("p"));
    fake.add_shard("c2", Some("p"));
    let c1 = fake.append(
        "c1",
        &[("k1", 3, "c1a"), ("c1", 1, "c1b"), ("c1", 2, "c1c")],
    );
    let c2 = fake.append("c2", &[("k2", 3, "c2a"), ("c2", 1, "c2b")]);
    until("every record", || fake.delivered().len() == 10).await?;
    until("the children's records applied", || {
        s.held("c1").is_some_and(|e| e.version == 2) && s.held("c2").is_some()
    })
    .await?;

    let delivered = fake.delivered();
    let (from_parent, from_children) = delivered.split_at(parent.len());
    assert!(
        from_parent.iter().all(|(shard, _)| shard == "p"),
        "{delivered:?}"
    );
    assert_eq!(
        from_parent
            .iter()
            .map(|(_, seq)| seq.clone())
            .collect::<Vec<_>>(),
        parent
    );
    for seqs in [&c1, &c2] {
        let got: Vec<_> = from_children
            .iter()
            .filter(|(_, seq)| seqs.contains(seq))
            .map(|(_, seq)| seq.clone())
            .collect();
        assert_eq!(&got, seqs, "each child in order");
    }
    // Children were read from their start, not from LATEST.
    assert!(
        fake.requests()
            .contains(&("c1".into(), IteratorStart::TrimHorizon))
    );
    // In the hub: every parent change applied before any child change.
    let parent_last = s
        .held("only_parent")
        .map(|e| e.revision)
        .unwrap_or(u64::MAX);
    for name in ["k1", "k2", "c1", "c2"] {
        let e = s.held(name).ok_or("missing key")?;
        assert!(e.revision > parent_last, "{name} applied after the parent");
    }
    assert_eq!(s.held("k1").map(|e| e.version), Some(3));
    assert_eq!(s.held("k2").map(|e| e.version), Some(3));
    assert_eq!(get(&s.counters.stream_records_read), 10);
    assert_eq!(get(&s.counters.stream_records_applied), 10);
    assert_eq!(get(&s.counters.stream_gaps), 1, "only the first start");
    s.stop().await
}

#[tokio::test(start_paused = true)]
async fn an_expired_iterator_resumes_after_the_last_record_read() -> TestResult {
    let fake = Fake::new(2);
    fake.add_shard("s", None);
    let s = start(&fake).await?;
    until("the first start", || fake.requests().len() == 1).await?;
    let seqs = fake.append(
        "s",
        &[
            ("a", 1, "1"),
            ("b", 1, "1"),
            ("c", 1, "1"),
            ("d", 1, "1"),
            ("e", 1, "1"),
            ("f", 1, "1"),
        ],
    );
    // The iterator positioned after the 4th record has expired when used.
    fake.fail_at("s", 4, StreamError::ExpiredIterator);
    until("all keys", || s.held("f").is_some()).await?;

    assert_eq!(
        fake.requests(),
        [
            ("s".into(), IteratorStart::Latest),
            ("s".into(), IteratorStart::AfterSequence(seqs[3].clone())),
        ]
    );
    let delivered: Vec<String> = fake.delivered().into_iter().map(|(_, q)| q).collect();
    assert_eq!(delivered, seqs, "each record once, in order");
    for name in ["a", "b", "c", "d", "e", "f"] {
        assert!(s.held(name).is_some(), "{name}");
    }
    assert_eq!(get(&s.counters.stream_records_read), 6);
    assert_eq!(
        get(&s.counters.stream_gaps),
        1,
        "an expiry with a known position is no gap"
    );
    assert_eq!(get(&s.counters.stream_iterator_renewals), 1);
    assert_eq!(get(&s.counters.stream_shards), 1);
    s.stop().await
}

#[tokio::test(start_paused = true)]
async fn trimmed_data_is_a_gap_repaired_from_the_table() -> TestResult {
    let fake = Fake::new(10);
    fake.add_shard("s", None);
    let s = start(&fake).await?;
    until("the first start", || fake.requests().len() == 1).await?;
    fake.append("s", &[("a", 1, "1"), ("b", 1, "1")]);
    until("the first records", || s.held("b").is_some()).await?;
    assert_eq!(get(&s.counters.stream_gaps), 1);

    // Meanwhile the table got changes whose records are trimmed before the reader
    // gets to them; one more record stays.
    *lock(&s.table.0) = vec![
        Entry::live("tenant_config_a", 1, "1", 0),
        Entry::live("tenant_config_b", 1, "1", 0),
        Entry::live("tenant_config_lost", 1, "\"x\"", 0),
        Entry::live("tenant_config_trimmed", 1, "\"y\"", 0),
        Entry::live("tenant_config_kept", 1, "\"z\"", 0),
    ];
    let seqs = fake.append("s", &[("trimmed", 1, "y"), ("kept", 1, "z")]);
    fake.trim("s", 3);
    until("the lost change", || s.held("lost").is_some()).await?;
    until("the record after the trim point", || {
        fake.delivered().iter().any(|(_, seq)| *seq == seqs[1])
    })
    .await?;
    assert!(
        !fake.delivered().iter().any(|(_, seq)| *seq == seqs[0]),
        "the trimmed record cannot be read"
    );
    assert_eq!(get(&s.counters.stream_gaps), 2);
    assert!(
        s.held("trimmed").is_some(),
        "resync read what the stream lost"
    );
    assert!(
        fake.requests()
            .contains(&("s".into(), IteratorStart::TrimHorizon)),
        "{:?}",
        fake.requests()
    );
    s.stop().await
}

#[tokio::test(start_paused = true)]
async fn changes_without_a_version_bump_are_re_versioned_and_bad_records_skipped() -> TestResult {
    let fake = Fake::new(10);
    fake.add_shard("s", None);
    let s = start(&fake).await?;
    until("the first start", || fake.requests().len() == 1).await?;
    fake.append("s", &[("a", 3, "v3"), ("b", 1, "b")]);
    until("a and b", || s.held("b").is_some()).await?;

    let mut bad = put_record("00000100", "x", Some(1), "1");
    if let Some(image) = bad.new_image.as_mut() {
        image.insert("sk".into(), AttributeValue::S("CONFIG#a b".into()));
    }
    fake.push("s", bad);
    // Same version, other content (the console); the same content again (an
    // identical put); no version at all.
    fake.push("s", put_record("00000101", "a", Some(3), "edited"));
    fake.push("s", put_record("00000102", "a", Some(3), "v3"));
    fake.push("s", put_record("00000103", "fresh", None, "1"));
    // A hard delete of a live item: a tombstone one version above.
    let mut remove = put_record("00000104", "b", Some(1), "b");
    remove.kind = ChangeKind::Remove;
    remove.old_image = remove.new_image.take();
    fake.push("s", remove);
    fake.append("s", &[("after", 1, "1")]);
    until("the record after them", || s.held("after").is_some()).await?;

    assert_eq!(
        lock(&s.versions.0).clone(),
        [
            ("tenant_config_a".to_owned(), Some(3), 4),
            ("tenant_config_fresh".to_owned(), None, 1),
        ]
    );
    assert_eq!(get(&s.counters.stream_reversioned), 2);
    assert_eq!(
        s.held("a").and_then(|e| e.value.clone()).as_deref(),
        Some("\"v3\""),
        "not applied until the re-versioned record arrives"
    );
    assert!(s.held("fresh").is_none());
    assert!(s.held("b").is_some_and(|e| e.deleted && e.version == 2));
    s.stop().await
}

#[tokio::test(start_paused = true)]
async fn history_items_are_passed_over_and_other_tools_changes_are_recorded() -> TestResult {
    let fake = Fake::new(10);
    fake.add_shard("s", None);
    let s = start(&fake).await?;
    until("the first start", || fake.requests().len() == 1).await?;
    let skipped_before = get(&s.counters.stream_records_skipped);

    // A write through configwatch: its history item and its config item, marked
    // as recorded.
    let mut history = put_record("00000200", "a", Some(1), "1");
    if let Some(image) = history.new_image.as_mut() {
        let sk = AttributeValue::S("AUDIT#a#00000000000000000001".into());
        image.insert("sk".into(), sk.clone());
        history.keys.insert("sk".into(), sk);
    }
    fake.push("s", history.clone());
    let mut written = put_record("00000201", "a", Some(1), "1");
    if let Some(image) = written.new_image.as_mut() {
        image.insert("auditedVersion".into(), AttributeValue::N("1".into()));
    }
    fake.push("s", written);
    // Its history item expired by TTL.
    let mut expired = history;
    expired.sequence = "00000202".into();
    expired.kind = ChangeKind::Remove;
    expired.old_image = expired.new_image.take();
    fake.push("s", expired);
    // Another tool raises b from 1 to 2, and removes c (live at version 4).
    let mut external = put_record("00000203", "b", Some(2), "2");
    external.old_image = put_record("0", "b", Some(1), "1").new_image;
    fake.push("s", external);
    let mut remove = put_record("00000204", "c", Some(4), "4");
    remove.kind = ChangeKind::Remove;
    remove.old_image = remove.new_image.take();
    fake.push("s", remove);
    fake.append("s", &[("after", 1, "1")]);
    until("the record after them", || s.held("after").is_some()).await?;
    until("the changes recorded", || {
        get(&s.counters.stream_history_recorded) == 3
    })
    .await?;

    assert_eq!(
        get(&s.counters.stream_records_skipped),
        skipped_before,
        "a history item is not a bad record"
    );
    assert!(s.held("a").is_some_and(|e| e.version == 1));
    let recorded: Vec<(String, u64, bool, u64, String)> = lock(&s.versions.1)
        .iter()
        .map(|(c, instance)| {
            (
                c.entry.key.to_string(),
                c.entry.version,
                c.entry.deleted,
                c.previous,
                instance.clone(),
            )
        })
        .collect();
    assert_eq!(
        recorded,
        [
            ("tenant_config_b".into(), 2, false, 1, "origin-a".into()),
            ("tenant_config_c".into(), 5, true, 4, "origin-a".into()),
            ("tenant_config_after".into(), 1, false, 0, "origin-a".into()),
        ],
        "only other tools' changes, each with the version it replaced"
    );
    assert_eq!(get(&s.counters.stream_history_failed), 0);
    s.stop().await
}
