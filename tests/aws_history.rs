//! History on the DynamoDB backend, on moto: writes through configwatch keep their
//! version with its writer (AUDIT# items, one transaction with the change), changes
//! by another tool are recorded from the stream as external (once, with two
//! origins reading), superseded versions expire by TTL, the count limit holds, and
//! neither a load nor a watcher ever sees a history item.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::types::AttributeValue;
use common::*;
use configwatch::auth::Role;
use configwatch::keys;
use configwatch::model::Scope;
use configwatch::source::ddb_streams::{self, StreamSettings};
use configwatch::source::health::SourceHealth;
use configwatch::source::{SourceContext, SourceCounters};
use configwatch::store::dynamodb::{DynamoBackend, UNRECORDED_INSTANCE};
use configwatch::store::history::{Audit, HistoryPage, HistoryQuery, Retention, Source};
use configwatch::store::{Backend, Router, Write};
use configwatch_test_support::moto::Moto;
use configwatch_test_support::{eventually, wait_for};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

type Item = HashMap<String, AttributeValue>;

const KEY: &str = "tenant_config_flags";
const ORIGINS: [&str; 2] = ["origin-1", "origin-2"];

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn read(counter: &std::sync::atomic::AtomicU64) -> u64 {
    SourceCounters::get(counter)
}

fn audit(subject: &str, reason: Option<&str>) -> Audit {
    Audit {
        subject: subject.into(),
        client_id: Some("app-1".into()),
        instance: "api-1".into(),
        reason: reason.map(str::to_owned),
    }
}

fn put(value: &str) -> Write {
    Write::Put {
        value: value.into(),
        secret: false,
    }
}

fn all() -> HistoryQuery {
    HistoryQuery {
        before: None,
        limit: 1000,
        with_secret: false,
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

struct Reader {
    counters: Arc<SourceCounters>,
    task: JoinHandle<()>,
}

struct Env {
    moto: Moto,
    _dir: tempfile::TempDir,
    ddb: aws_sdk_dynamodb::Client,
    table: String,
    backend: Arc<DynamoBackend>,
    server: TestServer,
    readers: Vec<Reader>,
    shutdown: CancellationToken,
}

impl Env {
    /// moto with the template's table; a server routing tenant_config_* to it; and
    /// one stream reader per name in `origins`, both feeding the server's hub.
    async fn start(retention: Retention, origins: &[&str]) -> Env {
        let moto = Moto::start();
        let res = moto.create_resources(Duration::from_secs(2)).await;
        let ddb = moto.dynamodb().await;
        let backend =
            Arc::new(DynamoBackend::new(ddb.clone(), &res.table).with_retention(retention));
        let dir = temp_dir();
        let server = TestServer::start_routed(
            dir.path(),
            Router::new(vec![(&keys::TENANT_CONFIG, backend.clone())]),
            Options::default(),
        )
        .await;
        let shutdown = CancellationToken::new();
        let mut readers = Vec::new();
        for origin in origins {
            let counters = Arc::new(SourceCounters::default());
            let ctx = SourceContext {
                hub: server.hub.clone(),
                counters: counters.clone(),
            };
            let settings = StreamSettings {
                poll_interval: Duration::from_millis(50),
                rediscover_interval: Duration::from_secs(1),
                instance: (*origin).to_owned(),
                retention,
                ..StreamSettings::default()
            };
            let task = tokio::spawn(ddb_streams::run(
                ctx,
                settings,
                ddb.clone(),
                moto.streams().await,
                res.table.clone(),
                SourceHealth::detached("dynamodb-stream"),
                shutdown.child_token(),
            ));
            readers.push(Reader { counters, task });
        }
        Env {
            moto,
            _dir: dir,
            ddb,
            table: res.table,
            backend,
            server,
            readers,
            shutdown,
        }
    }

    /// Returns once every reader has read a record (written through configwatch,
    /// in another tenant, so nothing is recorded as external).
    async fn ready(&self) {
        let probe = Scope::tenant("probe").unwrap();
        eventually(
            PATIENCE,
            || "every reader to read a record".into(),
            || async {
                if self
                    .readers
                    .iter()
                    .all(|r| read(&r.counters.stream_records_read) > 0)
                {
                    return Some(());
                }
                let written = self
                    .backend
                    .write(
                        &probe,
                        "tenant_config_probe",
                        put("1"),
                        None,
                        &audit("probe", None),
                    )
                    .await;
                written.expect("probe write");
                None
            },
        )
        .await;
    }

    async fn history(&self, scope: &Scope, key: &str) -> HistoryPage {
        self.backend
            .history(scope, key, &all())
            .await
            .expect("history")
    }

    /// The raw history items of `key` in `tenant`'s partition, oldest first.
    async fn history_items(&self, tenant: &str, name: &str) -> Vec<Item> {
        self.ddb
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
            .expression_attribute_values(":pk", s(&format!("TENANT#{tenant}")))
            .expression_attribute_values(":prefix", s(&format!("AUDIT#{name}#")))
            .consistent_read(true)
            .send()
            .await
            .expect("query history items")
            .items
            .unwrap_or_default()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        for reader in self.readers {
            tokio::time::timeout(Duration::from_secs(5), reader.task)
                .await
                .expect("the reader stops promptly")
                .expect("the reader did not panic");
        }
        self.server.stop().await;
        drop(self.moto);
    }
}

fn versions(page: &HistoryPage) -> Vec<u64> {
    page.versions.iter().map(|v| v.entry.version).collect()
}

#[tokio::test]
async fn seven_versions_five_through_configwatch_and_two_by_another_tool_are_all_kept() {
    let env = Env::start(Retention::default(), &ORIGINS).await;
    let acme = Scope::tenant("acme").unwrap();
    let mut c = env.server.client("acme", Role::Writer).await;
    let mut w = watch(&mut c, watch_prefixes(&["tenant_config_"])).await;
    let (entries, _) = initial(&mut w).await;
    assert!(entries.is_empty());
    env.ready().await;
    let before: Vec<(u64, u64)> = env
        .readers
        .iter()
        .map(|r| {
            (
                read(&r.counters.stream_gaps),
                read(&r.counters.stream_records_skipped),
            )
        })
        .collect();

    // Five writes through configwatch: three puts, a delete, a put again.
    let writes = [
        (put(r#"{"dark":true}"#), Some(0), "alice", Some("first")),
        (put(r#"{"dark":false}"#), Some(1), "bob", None),
        (
            put(r#"{"dark":false,"beta":[1,"two"]}"#),
            Some(2),
            "alice",
            Some("beta"),
        ),
        (Write::Delete, Some(3), "carol", Some("retire it")),
        (put(r#"{"dark":true}"#), Some(0), "alice", Some("back")),
    ];
    for (i, (write, expected, who, why)) in writes.into_iter().enumerate() {
        let entry = env
            .backend
            .write(&acme, KEY, write, expected, &audit(who, why))
            .await
            .expect("write through configwatch");
        assert_eq!(entry.version, i as u64 + 1);
    }
    // A stale expected version is still a conflict naming the current version.
    let stale = env
        .backend
        .write(&acme, KEY, put("1"), Some(2), &audit("mallory", None))
        .await;
    assert!(
        matches!(
            &stale,
            Err(configwatch::store::StoreError::Conflict { current: 5, .. })
        ),
        "{stale:?}"
    );
    // Two by another tool: a PutItem and an UpdateItem, each raising version.
    env.ddb
        .put_item()
        .table_name(&env.table)
        .set_item(Some(Item::from([
            ("pk".to_owned(), s("TENANT#acme")),
            ("sk".to_owned(), s("CONFIG#flags")),
            ("config".to_owned(), s("six")),
            ("version".to_owned(), n(6)),
            ("updatedAt".to_owned(), s("2026-01-02T03:04:05Z")),
        ])))
        .send()
        .await
        .unwrap();
    env.ddb
        .update_item()
        .table_name(&env.table)
        .key("pk", s("TENANT#acme"))
        .key("sk", s("CONFIG#flags"))
        .update_expression("SET config = :c, version = :v")
        .expression_attribute_values(":c", s("seven"))
        .expression_attribute_values(":v", n(7))
        .send()
        .await
        .unwrap();

    // The watcher sees the seven versions of the key and nothing else.
    let mut seen = Vec::new();
    while seen.last().map(|(_, v, _)| *v) != Some(7) {
        let got = tokio::time::timeout(PATIENCE, changes(&mut w, 1))
            .await
            .expect("a change within PATIENCE");
        seen.extend(summary(&got));
    }
    assert!(seen.iter().all(|(k, _, _)| k == KEY), "{seen:?}");

    // History lists all seven, newest first, once the stream recorded the two.
    let page = eventually(
        PATIENCE,
        || "both external changes recorded".into(),
        || async {
            let page = env.history(&acme, KEY).await;
            let recorded = page.versions.iter().all(|v| {
                !matches!(&v.source, Source::External { instance, .. } if instance == UNRECORDED_INSTANCE)
            });
            (page.versions.len() == 7 && recorded).then_some(page)
        },
    )
    .await;
    assert_eq!(versions(&page), [7, 6, 5, 4, 3, 2, 1]);
    assert_eq!(page.next_before, None);
    let previous: Vec<u64> = page.versions.iter().map(|v| v.previous).collect();
    assert_eq!(previous, [6, 5, 4, 3, 2, 1, 0]);
    for v in &page.versions[..2] {
        match &v.source {
            Source::External {
                instance,
                modified_by,
            } => {
                assert!(ORIGINS.contains(&instance.as_str()), "{instance}");
                assert_eq!(modified_by, &None);
            }
            other => panic!("version {} is not external: {other:?}", v.entry.version),
        }
    }
    assert_eq!(page.versions[0].entry.value.as_deref(), Some("\"seven\""));
    assert_eq!(page.versions[1].entry.value.as_deref(), Some("\"six\""));
    let writers: Vec<(String, Option<String>)> = page.versions[2..]
        .iter()
        .map(|v| match &v.source {
            Source::Api(a) => {
                assert_eq!(
                    (a.client_id.as_deref(), a.instance.as_str()),
                    (Some("app-1"), "api-1")
                );
                (a.subject.clone(), a.reason.clone())
            }
            other => panic!(
                "version {} is not through configwatch: {other:?}",
                v.entry.version
            ),
        })
        .collect();
    let expected: Vec<(String, Option<String>)> = [
        ("alice", Some("back")),
        ("carol", Some("retire it")),
        ("alice", Some("beta")),
        ("bob", None),
        ("alice", Some("first")),
    ]
    .into_iter()
    .map(|(who, why)| (who.to_owned(), why.map(str::to_owned)))
    .collect();
    assert_eq!(writers, expected);
    let v4 = &page.versions[3].entry;
    assert!(v4.deleted && v4.value.is_none(), "the delete is a version");
    assert_eq!(
        page.versions[4].entry.value.as_deref(),
        Some(r#"{"beta":[1,"two"],"dark":false}"#)
    );

    // Paging by `before`.
    let first = env
        .backend
        .history(
            &acme,
            KEY,
            &HistoryQuery {
                before: None,
                limit: 3,
                with_secret: false,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (versions(&first), first.next_before),
        (vec![7, 6, 5], Some(5))
    );
    let rest = env
        .backend
        .history(
            &acme,
            KEY,
            &HistoryQuery {
                before: Some(5),
                limit: 10,
                with_secret: false,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (versions(&rest), rest.next_before),
        (vec![4, 3, 2, 1], None)
    );

    // TTL: every superseded version expires in about 90 days; the current never.
    let items = env.history_items("acme", "flags").await;
    assert_eq!(items.len(), 7, "each version recorded once");
    let now = now_secs();
    for item in &items {
        let version = match item.get("version") {
            Some(AttributeValue::N(v)) => v.parse::<u64>().unwrap(),
            other => panic!("{other:?}"),
        };
        match (version, item.get("expiresAt")) {
            (7, None) => {}
            (7, Some(at)) => panic!("the current version expires: {at:?}"),
            (_, Some(AttributeValue::N(at))) => {
                let at: u64 = at.parse().unwrap();
                let ninety_days = 90 * 24 * 3600;
                assert!(
                    (now + ninety_days - 60..=now + ninety_days + 60).contains(&at),
                    "version {version} expires at {at}"
                );
            }
            (_, other) => panic!("version {version} has no expiry: {other:?}"),
        }
    }

    // A load never sees history items; neither reader took them for bad records
    // or gaps; the two external changes were recorded once between both origins.
    let loaded = env.backend.load(&acme, "tenant_config_").await.unwrap();
    assert_eq!(summary_of(&loaded), [(KEY.to_owned(), 7)]);
    for (reader, (gaps, skipped)) in env.readers.iter().zip(before) {
        // moto streams an UpdateItem that creates an item as two records, the key
        // alone and then the item (AWS streams one): the key alone is skipped.
        assert!(read(&reader.counters.stream_records_skipped) - skipped <= 1);
        assert_eq!(read(&reader.counters.stream_gaps), gaps);
        assert_eq!(read(&reader.counters.stream_history_failed), 0);
    }
    wait_for(
        PATIENCE,
        || "both readers past version 7".into(),
        || {
            env.server
                .hub
                .held(&acme, KEY)
                .is_some_and(|e| e.version == 7)
        },
    )
    .await;
    let recorded: u64 = env
        .readers
        .iter()
        .map(|r| read(&r.counters.stream_history_recorded))
        .sum();
    assert_eq!(recorded, 2);

    // An edit that does not raise the version (the console): the item is
    // re-versioned, and that version recorded as external, replacing 7.
    env.ddb
        .update_item()
        .table_name(&env.table)
        .key("pk", s("TENANT#acme"))
        .key("sk", s("CONFIG#flags"))
        .update_expression("SET config = :c")
        .expression_attribute_values(":c", s("edited"))
        .send()
        .await
        .unwrap();
    let page = eventually(
        PATIENCE,
        || "the re-versioned edit recorded".into(),
        || async {
            let page = env.history(&acme, KEY).await;
            let newest = page.versions.first()?;
            let recorded = matches!(&newest.source, Source::External { instance, .. } if ORIGINS.contains(&instance.as_str()));
            (newest.entry.version == 8 && recorded).then_some(page)
        },
    )
    .await;
    assert_eq!(versions(&page), [8, 7, 6, 5, 4, 3, 2, 1]);
    assert_eq!(page.versions[0].previous, 7);
    assert_eq!(page.versions[0].entry.value.as_deref(), Some("\"edited\""));
    env.stop().await;
}

fn summary_of(entries: &[configwatch::model::Entry]) -> Vec<(String, u64)> {
    entries
        .iter()
        .map(|e| (e.key.to_string(), e.version))
        .collect()
}

#[tokio::test]
async fn history_keeps_the_newest_versions_within_the_limits_and_the_current_one_always() {
    let env = Env::start(
        Retention {
            max_versions: 3,
            max_age: Duration::from_secs(90 * 24 * 3600),
        },
        &[],
    )
    .await;
    let acme = Scope::tenant("acme").unwrap();
    for i in 1..=6u64 {
        env.backend
            .write(
                &acme,
                KEY,
                put(&i.to_string()),
                Some(i - 1),
                &audit("alice", None),
            )
            .await
            .unwrap();
    }
    assert_eq!(versions(&env.history(&acme, KEY).await), [6, 5, 4]);
    assert_eq!(
        env.history_items("acme", "flags").await.len(),
        3,
        "older items deleted"
    );

    // Lowering the limit to one keeps the current version only.
    let one = DynamoBackend::new(env.ddb.clone(), &env.table).with_retention(Retention {
        max_versions: 1,
        max_age: Duration::from_secs(3600),
    });
    one.write(&acme, KEY, put("7"), Some(6), &audit("alice", None))
        .await
        .unwrap();
    assert_eq!(versions(&env.history(&acme, KEY).await), [7]);
    assert_eq!(env.history_items("acme", "flags").await.len(), 1);

    // An age limit of zero: superseded versions are past their expiry at once, and
    // history reads leave them out before DynamoDB's TTL deletes them.
    let at_once = DynamoBackend::new(env.ddb.clone(), &env.table).with_retention(Retention {
        max_versions: 100,
        max_age: Duration::ZERO,
    });
    for i in 1..=3u64 {
        at_once
            .write(
                &acme,
                "tenant_config_brief",
                put(&i.to_string()),
                None,
                &audit("bob", None),
            )
            .await
            .unwrap();
    }
    assert_eq!(
        env.history_items("acme", "brief").await.len(),
        3,
        "TTL is lazy"
    );
    let page = env.history(&acme, "tenant_config_brief").await;
    assert_eq!(versions(&page), [3], "the current version never expires");

    // A table written before history was kept: the current item is the newest
    // version, marked as recorded by no one; a key never written has none.
    env.ddb
        .put_item()
        .table_name(&env.table)
        .set_item(Some(Item::from([
            ("pk".to_owned(), s("TENANT#acme")),
            ("sk".to_owned(), s("CONFIG#legacy")),
            ("config".to_owned(), s("old")),
            ("version".to_owned(), n(3)),
        ])))
        .send()
        .await
        .unwrap();
    let page = env.history(&acme, "tenant_config_legacy").await;
    assert_eq!(versions(&page), [3]);
    assert_eq!(
        page.versions[0].source,
        Source::External {
            instance: UNRECORDED_INSTANCE.into(),
            modified_by: None
        }
    );
    assert_eq!(
        env.history(&acme, "tenant_config_never").await,
        HistoryPage::default()
    );
    let entry = env
        .backend
        .write(
            &acme,
            "tenant_config_legacy",
            put("\"new\""),
            Some(3),
            &audit("carol", None),
        )
        .await
        .unwrap();
    assert_eq!(entry.version, 4);
    let page = env.history(&acme, "tenant_config_legacy").await;
    assert_eq!((versions(&page), page.versions[0].previous), (vec![4], 3));
    env.stop().await;
}

/// A write never lands without its history item: when the history item's condition
/// refuses (here, an item at its sort key that is not a version, written by hand),
/// the transaction is cancelled whole, the config item is not written, and after
/// its tries the write is refused as passing. (moto cannot race writers: it runs
/// requests on threads without isolating transactions.)
#[tokio::test]
async fn a_write_whose_history_item_is_refused_is_not_written_at_all() {
    let env = Env::start(Retention::default(), &[]).await;
    let acme = Scope::tenant("acme").unwrap();
    let squatter = Item::from([
        ("pk".to_owned(), s("TENANT#acme")),
        ("sk".to_owned(), s("AUDIT#flags#00000000000000000001")),
        ("note".to_owned(), s("not a version")),
    ]);
    env.ddb
        .put_item()
        .table_name(&env.table)
        .set_item(Some(squatter))
        .send()
        .await
        .unwrap();
    let refused = env
        .backend
        .write(&acme, KEY, put("1"), None, &audit("alice", None))
        .await;
    assert!(
        matches!(
            &refused,
            Err(configwatch::store::StoreError::Unavailable(_))
        ),
        "{refused:?}"
    );
    assert_eq!(env.backend.read(&acme, KEY, false).await.unwrap(), None);
    assert_eq!(env.history(&acme, KEY).await, HistoryPage::default());

    env.ddb
        .delete_item()
        .table_name(&env.table)
        .key("pk", s("TENANT#acme"))
        .key("sk", s("AUDIT#flags#00000000000000000001"))
        .send()
        .await
        .unwrap();
    let entry = env
        .backend
        .write(&acme, KEY, put("1"), None, &audit("alice", None))
        .await
        .unwrap();
    assert_eq!(entry.version, 1);
    assert_eq!(versions(&env.history(&acme, KEY).await), [1]);
    env.stop().await;
}
