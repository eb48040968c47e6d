//! The embedded store's history end to end: versions with their writers, pages,
//! retention on write, a secret's value only on demand, a damaged record refused,
//! and keys from before history.

use std::time::Duration;

use redb::ReadableTable;

use super::*;
use crate::store::history::{Audit, HistoryQuery, Source};
use crate::store::{Backend, Write};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn put(v: &str) -> Write {
    Write::Put {
        value: v.to_owned(),
        secret: false,
    }
}

fn by(subject: &str, reason: &str) -> Audit {
    Audit {
        subject: subject.into(),
        client_id: Some("app".into()),
        instance: "cw-test".into(),
        reason: Some(reason.into()),
    }
}

fn all(limit: usize) -> HistoryQuery {
    HistoryQuery {
        before: None,
        limit,
        with_secret: false,
        max_bytes: usize::MAX,
    }
}

type HistoryTable<'t> =
    redb::Table<'t, (&'static str, &'static str, &'static str, u64), &'static [u8]>;

/// Changes the history table of the closed store in `dir` behind its back.
fn change_history(
    dir: &std::path::Path,
    change: impl FnOnce(&mut HistoryTable<'_>) -> Result<(), redb::Error>,
) -> TestResult {
    let db = redb::Database::create(dir.join(DB_FILE))?;
    let txn = db.begin_write()?;
    change(&mut txn.open_table(HISTORY)?)?;
    txn.commit()?;
    Ok(())
}

/// Writes each of `values` to `tenant_config_x` in turn.
async fn write_values(
    store: &EmbeddedStore,
    scope: &Scope,
    values: std::ops::RangeInclusive<u32>,
) -> TestResult {
    for n in values {
        let value = put(&n.to_string());
        store
            .write(scope, "tenant_config_x", value, None, &by("a", "r"))
            .await?;
    }
    Ok(())
}

fn versions(page: &crate::store::history::HistoryPage) -> Vec<u64> {
    page.versions.iter().map(|v| v.entry.version).collect()
}

#[tokio::test]
async fn every_version_is_kept_with_its_writer_newest_first() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = EmbeddedStore::open(dir.path())?;
    let s = Scope::tenant("a")?;
    let k = "tenant_config_x";
    assert!(store.history(&s, k, &all(10)).await?.versions.is_empty());
    for n in 1..=3 {
        let who = if n % 2 == 0 { "bob" } else { "alice" };
        let reason = format!("step {n}");
        store
            .write(&s, k, put(&n.to_string()), None, &by(who, &reason))
            .await?;
    }
    store
        .write(&s, k, Write::Delete, None, &by("bob", "gone"))
        .await?;
    store
        .write(&s, k, put("5"), Some(0), &by("alice", "back"))
        .await?;

    let page = store.history(&s, k, &all(10)).await?;
    assert_eq!(versions(&page), vec![5, 4, 3, 2, 1]);
    assert_eq!(page.next_before, None);
    let previous: Vec<u64> = page.versions.iter().map(|v| v.previous).collect();
    assert_eq!(previous, vec![4, 3, 2, 1, 0]);
    assert!(page.versions[1].entry.deleted && page.versions[1].entry.value.is_none());
    assert_eq!(page.versions[2].entry.value.as_deref(), Some("3"));
    assert_eq!(page.versions[0].source, Source::Api(by("alice", "back")));
    assert_eq!(page.versions[3].source, Source::Api(by("bob", "step 2")));

    // Pages of two, then a page from a version on.
    let first = store.history(&s, k, &all(2)).await?;
    assert_eq!((versions(&first), first.next_before), (vec![5, 4], Some(4)));
    let next = HistoryQuery {
        before: first.next_before,
        ..all(2)
    };
    let second = store.history(&s, k, &next).await?;
    assert_eq!(
        (versions(&second), second.next_before),
        (vec![3, 2], Some(2))
    );
    let one = HistoryQuery {
        before: Some(3),
        ..all(1)
    };
    assert_eq!(versions(&store.history(&s, k, &one).await?), vec![2]);

    // Survives a reopen; other keys and scopes have their own.
    drop(store);
    let store = EmbeddedStore::open(dir.path())?;
    assert_eq!(versions(&store.history(&s, k, &all(10)).await?).len(), 5);
    let other = Scope::new("a", Some("svc"))?;
    assert!(
        store
            .history(&other, k, &all(10))
            .await?
            .versions
            .is_empty()
    );
    Ok(())
}

#[tokio::test]
async fn retention_trims_on_write_and_keeps_the_current_version() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = EmbeddedStore::open(dir.path())?.with_retention(Retention {
        max_versions: 3,
        max_age: Duration::from_secs(3600),
    });
    let s = Scope::tenant("a")?;
    write_values(&store, &s, 1..=6).await?;
    let page = store.history(&s, "tenant_config_x", &all(10)).await?;
    assert_eq!(versions(&page), vec![6, 5, 4]);

    // An age of nothing: each write leaves only itself and the version it just
    // replaced... which was replaced now, so not yet expired.
    let store = store.with_retention(Retention {
        max_versions: 100,
        max_age: Duration::ZERO,
    });
    tokio::time::sleep(Duration::from_millis(5)).await;
    store
        .write(&s, "tenant_config_x", put("7"), None, &by("a", "r"))
        .await?;
    let page = store.history(&s, "tenant_config_x", &all(10)).await?;
    assert_eq!(versions(&page), vec![7, 6]);
    Ok(())
}

#[tokio::test]
async fn a_secrets_history_shows_values_only_when_asked() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = EmbeddedStore::open(dir.path())?;
    let s = Scope::tenant("a")?;
    let secret = Write::Put {
        value: "\"hunter2\"".into(),
        secret: true,
    };
    store
        .write(&s, "param_config_db", secret, None, &by("a", "r"))
        .await?;
    let hidden = store.history(&s, "param_config_db", &all(10)).await?;
    assert_eq!(hidden.versions[0].entry.value, None);
    assert!(hidden.versions[0].entry.secret);
    let query = HistoryQuery {
        with_secret: true,
        max_bytes: usize::MAX,
        ..all(10)
    };
    let shown = store.history(&s, "param_config_db", &query).await?;
    assert_eq!(
        shown.versions[0].entry.value.as_deref(),
        Some("\"hunter2\"")
    );
    Ok(())
}

#[tokio::test]
async fn a_damaged_history_record_fails_the_read() -> TestResult {
    let dir = tempfile::tempdir()?;
    let s = Scope::tenant("a")?;
    {
        let store = EmbeddedStore::open(dir.path())?;
        write_values(&store, &s, 1..=2).await?;
    }
    change_history(dir.path(), |table| {
        let id = ("a", "", "tenant_config_x", 1u64);
        let mut bytes = table
            .get(id)?
            .map(|v| v.value().to_vec())
            .unwrap_or_default();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        table.insert(id, bytes.as_slice())?;
        Ok(())
    })?;
    let store = EmbeddedStore::open(dir.path())?;
    // The check at open names it; the entries are intact.
    let report = store.verify_report();
    assert_eq!((report.history_records, report.damaged.len()), (2, 0));
    assert_eq!(report.damaged_history.len(), 1);
    assert!(report.damaged_history[0].reason.starts_with("version 1:"));
    assert!(!report.is_clean());
    let got = store.history(&s, "tenant_config_x", &all(10)).await;
    assert!(matches!(got, Err(StoreError::Damaged(_))), "{got:?}");
    // The page that does not reach it is served.
    assert_eq!(
        versions(&store.history(&s, "tenant_config_x", &all(1)).await?),
        vec![2]
    );
    Ok(())
}

#[tokio::test]
async fn a_key_from_before_history_shows_its_current_version() -> TestResult {
    let dir = tempfile::tempdir()?;
    let s = Scope::tenant("a")?;
    {
        let store = EmbeddedStore::open(dir.path())?;
        store
            .write(&s, "tenant_config_x", put("1"), None, &by("a", "r"))
            .await?;
    }
    // As if written by a configwatch that kept no history.
    change_history(dir.path(), |table| {
        table.remove(("a", "", "tenant_config_x", 1u64))?;
        Ok(())
    })?;
    let store = EmbeddedStore::open(dir.path())?;
    let page = store.history(&s, "tenant_config_x", &all(10)).await?;
    assert_eq!(versions(&page), vec![1]);
    assert_eq!(page.versions[0].source, Source::Api(Audit::default()));
    store
        .write(&s, "tenant_config_x", put("2"), Some(1), &by("b", "r"))
        .await?;
    let page = store.history(&s, "tenant_config_x", &all(10)).await?;
    assert_eq!(versions(&page), vec![2]);
    assert_eq!(page.versions[0].previous, 1);
    Ok(())
}
