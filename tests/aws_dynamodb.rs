//! The DynamoDB backend and stream reader on moto: changes made directly in the table
//! reach watchers, writes through configwatch land in the table with versions, items
//! written without a version bump are re-versioned, and bad items are skipped.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use common::*;
use configwatch::auth::Role;
use configwatch::keys;
use configwatch::proto;
use configwatch::source::ddb_streams::{self, StreamSettings};
use configwatch::source::health::SourceHealth;
use configwatch::source::{SourceContext, SourceCounters};
use configwatch::store::Router;
use configwatch::store::dynamodb::DynamoBackend;
use configwatch_test_support::moto::Moto;
use configwatch_test_support::{eventually, poll, wait_for};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::Code;

type Item = HashMap<String, AttributeValue>;

struct Env {
    _moto: Moto,
    _dir: tempfile::TempDir,
    ddb: aws_sdk_dynamodb::Client,
    table: String,
    server: TestServer,
    counters: Arc<SourceCounters>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn read(counter: &std::sync::atomic::AtomicU64) -> u64 {
    SourceCounters::get(counter)
}

impl Env {
    /// moto with the template's table, a server routing tenant_config_* to it, and
    /// the stream reader feeding the server's hub.
    async fn start() -> Env {
        let moto = Moto::start();
        let res = moto.create_resources(Duration::from_secs(2)).await;
        let ddb = moto.dynamodb().await;
        let backend = Arc::new(DynamoBackend::new(ddb.clone(), &res.table));
        let dir = temp_dir();
        let server = TestServer::start_routed(
            dir.path(),
            Router::new(vec![(&keys::TENANT_CONFIG, backend)]),
            Options::default(),
        )
        .await;
        let counters = Arc::new(SourceCounters::default());
        let ctx = SourceContext {
            hub: server.hub.clone(),
            counters: counters.clone(),
        };
        let settings = StreamSettings {
            poll_interval: Duration::from_millis(50),
            rediscover_interval: Duration::from_secs(1),
            ..StreamSettings::default()
        };
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(ddb_streams::run(
            ctx,
            settings,
            ddb.clone(),
            moto.streams().await,
            res.table.clone(),
            SourceHealth::detached("dynamodb-stream"),
            shutdown.clone(),
        ));
        Env {
            _moto: moto,
            _dir: dir,
            ddb,
            table: res.table,
            server,
            counters,
            shutdown,
            task,
        }
    }

    /// Returns once the reader has read a record: its iterators are in place, so
    /// every later change goes through the stream.
    async fn ready(&self) {
        // A probe item written again (a new version each time) until one is read.
        let probes = std::cell::Cell::new(0u64);
        eventually(
            PATIENCE,
            || "the reader to read a record".into(),
            || async {
                if read(&self.counters.stream_records_read) > 0 {
                    return Some(());
                }
                let i = probes.get() + 1;
                probes.set(i);
                self.put_item("probe", "probe", Some(i), n(i)).await;
                poll(Duration::from_millis(200), || {
                    std::future::ready((read(&self.counters.stream_records_read) > 0).then_some(()))
                })
                .await
                .ok()
            },
        )
        .await;
        assert!(
            read(&self.counters.stream_gaps) >= 1,
            "a first start is a gap"
        );
    }

    async fn put_raw(&self, item: Item) {
        self.ddb
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .expect("put item");
    }

    /// Writes an item as another tool would: directly, with the version given.
    async fn put_item(
        &self,
        tenant: &str,
        name: &str,
        version: Option<u64>,
        config: AttributeValue,
    ) {
        let mut item = Item::from([
            ("pk".to_owned(), s(&format!("TENANT#{tenant}"))),
            ("sk".to_owned(), s(&format!("CONFIG#{name}"))),
            ("config".to_owned(), config),
            ("isActive".to_owned(), AttributeValue::Bool(true)),
            ("updatedAt".to_owned(), s("2026-01-02T03:04:05Z")),
        ]);
        if let Some(v) = version {
            item.insert("version".into(), n(v));
        }
        self.put_raw(item).await;
    }

    async fn raw(&self, tenant: &str, name: &str) -> Option<Item> {
        self.ddb
            .get_item()
            .table_name(&self.table)
            .key("pk", s(&format!("TENANT#{tenant}")))
            .key("sk", s(&format!("CONFIG#{name}")))
            .consistent_read(true)
            .send()
            .await
            .expect("get item")
            .item
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("the reader stops promptly")
            .expect("the reader did not panic");
        self.server.stop().await;
    }
}

/// The next single change (one write at a time, so nothing coalesces).
async fn one_change(w: &mut tonic::codec::Streaming<proto::WatchResponse>) -> proto::Entry {
    // `changes` skips progress messages; the deadline covers the whole wait.
    tokio::time::timeout(PATIENCE, changes(w, 1))
        .await
        .expect("a change within PATIENCE")
        .remove(0)
}

#[tokio::test]
async fn changes_made_directly_in_dynamodb_reach_a_watcher_in_per_key_order() {
    let env = Env::start().await;
    let mut c = env.server.client("acme", Role::Writer).await;
    let mut w = watch(&mut c, watch_prefixes(&["tenant_config_"])).await;
    let (entries, _) = initial(&mut w).await;
    assert!(entries.is_empty());
    env.ready().await;

    let flags = |v: u64, deleted: bool| ("tenant_config_flags".to_owned(), v, deleted);
    // Put.
    let config = AttributeValue::M(HashMap::from([("dark".into(), AttributeValue::Bool(true))]));
    env.put_item("acme", "flags", Some(1), config).await;
    let got = one_change(&mut w).await;
    assert_eq!(summary(std::slice::from_ref(&got)), [flags(1, false)]);
    assert_eq!(got.value, r#"{"dark":true}"#);
    assert_eq!(
        got.updated_at.map(|t| t.seconds),
        Some(1_767_323_045),
        "updatedAt is served"
    );

    // Update.
    let config = AttributeValue::M(HashMap::from([
        ("dark".into(), AttributeValue::Bool(false)),
        ("beta".into(), AttributeValue::L(vec![n(1), s("two")])),
    ]));
    env.put_item("acme", "flags", Some(2), config).await;
    let got = one_change(&mut w).await;
    assert_eq!(summary(std::slice::from_ref(&got)), [flags(2, false)]);
    assert_eq!(got.value, r#"{"beta":[1,"two"],"dark":false}"#);

    // Soft delete.
    env.ddb
        .update_item()
        .table_name(&env.table)
        .key("pk", s("TENANT#acme"))
        .key("sk", s("CONFIG#flags"))
        .update_expression("SET isActive = :f, version = :v")
        .expression_attribute_values(":f", AttributeValue::Bool(false))
        .expression_attribute_values(":v", n(3))
        .send()
        .await
        .unwrap();
    assert_eq!(summary(&[one_change(&mut w).await]), [flags(3, true)]);

    // Back, then a hard delete: a tombstone one version above the deleted item.
    env.put_item("acme", "flags", Some(4), s("back")).await;
    let got = one_change(&mut w).await;
    assert_eq!(
        (summary(std::slice::from_ref(&got)), got.value),
        (vec![flags(4, false)], "\"back\"".into())
    );
    env.ddb
        .delete_item()
        .table_name(&env.table)
        .key("pk", s("TENANT#acme"))
        .key("sk", s("CONFIG#flags"))
        .send()
        .await
        .unwrap();
    assert_eq!(summary(&[one_change(&mut w).await]), [flags(5, true)]);

    // A burst over several keys: whatever coalesces, each key's versions only grow
    // and end at the last one written.
    for v in 1..=5u64 {
        for k in ["k0", "k1", "k2"] {
            env.put_item("acme", k, Some(v), n(v * 10)).await;
        }
    }
    let mut last: HashMap<String, u64> = HashMap::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while ["k0", "k1", "k2"]
        .iter()
        .any(|k| last.get(&format!("tenant_config_{k}")) != Some(&5))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "every key at version 5: {last:?}"
        );
        let msg = next(&mut w).await;
        if msg.kind != proto::watch_response::Kind::Delta as i32 {
            continue;
        }
        for e in msg.changes {
            let before = last.insert(e.key.clone(), e.version).unwrap_or(0);
            assert!(
                e.version > before,
                "{} went from {before} to {}",
                e.key,
                e.version
            );
            assert_eq!(e.value, (e.version * 10).to_string());
        }
    }
    // Another tenant's items never reach this watcher: the next change is ours.
    env.put_item("other", "flags", Some(1), n(1)).await;
    env.put_item("acme", "marker", Some(1), n(1)).await;
    assert_eq!(
        summary(&[one_change(&mut w).await]),
        [("tenant_config_marker".into(), 1, false)]
    );
    assert_eq!(read(&env.counters.stream_reversioned), 0);
    env.stop().await;
}

#[tokio::test]
async fn writes_through_configwatch_land_in_dynamodb_with_versions_and_conflicts_are_refused() {
    let env = Env::start().await;
    let mut c = env.server.client("acme", Role::Writer).await;
    env.ready().await;
    let key = "tenant_config_limits";

    let e = put(&mut c, key, r#"{ "rps": 100, "burst": [1.5, null, "x"] }"#).await;
    assert_eq!((e.version, e.deleted), (1, false));
    let item = env.raw("acme", "limits").await.expect("item written");
    assert_eq!(item["version"], n(1));
    assert_eq!(item["isActive"], AttributeValue::Bool(true));
    assert_eq!(
        item["config"],
        AttributeValue::M(HashMap::from([
            ("rps".into(), n(100)),
            (
                "burst".into(),
                AttributeValue::L(vec![
                    AttributeValue::N("1.5".into()),
                    AttributeValue::Null(true),
                    s("x")
                ])
            ),
        ]))
    );
    let created = item["createdAt"].as_s().unwrap().clone();
    assert!(created.ends_with('Z'), "{created}");

    let e = put(&mut c, key, r#""second""#).await;
    assert_eq!(e.version, 2);
    let item = env.raw("acme", "limits").await.unwrap();
    assert_eq!(
        (item["version"].clone(), item["config"].clone()),
        (n(2), s("second"))
    );
    assert_eq!(
        item["createdAt"].as_s().unwrap(),
        &created,
        "createdAt is kept"
    );

    // Compare-and-set: a stale version is refused and the current one named.
    let refused = c
        .put(proto::PutRequest {
            key: key.into(),
            value: "3".into(),
            expected_version: Some(1),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("current version is 2"),
        "{}",
        refused.message()
    );
    let refused = c
        .delete(proto::DeleteRequest {
            key: key.into(),
            expected_version: Some(1),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("current version is 2"),
        "{}",
        refused.message()
    );
    assert_eq!(env.raw("acme", "limits").await.unwrap()["version"], n(2));

    // Delete is a soft delete with its own version; a second one finds nothing.
    let gone = c
        .delete(proto::DeleteRequest {
            key: key.into(),
            expected_version: Some(2),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entry
        .unwrap();
    assert_eq!((gone.version, gone.deleted), (3, true));
    let item = env.raw("acme", "limits").await.unwrap();
    assert_eq!(
        (item["version"].clone(), item["isActive"].clone()),
        (n(3), AttributeValue::Bool(false))
    );
    let again = c
        .delete(proto::DeleteRequest {
            key: key.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::NotFound);

    // Expected version 0: "must not exist (or be deleted)".
    let create = |value: &str| proto::PutRequest {
        key: key.into(),
        value: value.into(),
        expected_version: Some(0),
        ..Default::default()
    };
    let back = c
        .put(create("4"))
        .await
        .unwrap()
        .into_inner()
        .entry
        .unwrap();
    assert_eq!((back.version, back.deleted), (4, false));
    let refused = c.put(create("5")).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("current version is 4"),
        "{}",
        refused.message()
    );

    // The stream brings our own writes back: nothing to re-version, nothing new.
    wait_for(
        PATIENCE,
        || "the probe and the 4 writes read".into(),
        || read(&env.counters.stream_records_read) >= 5,
    )
    .await;
    assert_eq!(read(&env.counters.stream_reversioned), 0);
    assert_eq!(env.raw("acme", "limits").await.unwrap()["version"], n(4));
    let got = c
        .get(proto::GetRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(summary(&got.entries), [(key.into(), 4, false)]);
    assert_eq!(got.entries[0].value, "4");
    env.stop().await;
}

#[tokio::test]
async fn an_item_changed_without_a_version_bump_is_re_versioned_and_pushed() {
    let env = Env::start().await;
    let mut c = env.server.client("acme", Role::Writer).await;
    let mut w = watch(&mut c, watch_prefixes(&["tenant_config_"])).await;
    initial(&mut w).await;
    env.ready().await;

    env.put_item("acme", "flags", Some(1), s("a")).await;
    assert_eq!(one_change(&mut w).await.value, "\"a\"");

    // The console: new content, same version.
    env.put_item("acme", "flags", Some(1), s("b")).await;
    let got = one_change(&mut w).await;
    assert_eq!(
        (summary(std::slice::from_ref(&got)), got.value),
        (
            vec![("tenant_config_flags".into(), 2, false)],
            "\"b\"".into()
        )
    );
    assert_eq!(env.raw("acme", "flags").await.unwrap()["version"], n(2));
    assert_eq!(read(&env.counters.stream_reversioned), 1);

    // A script that writes no version at all.
    env.put_item("acme", "plain", None, n(7)).await;
    let got = one_change(&mut w).await;
    assert_eq!(
        (summary(std::slice::from_ref(&got)), got.value),
        (vec![("tenant_config_plain".into(), 1, false)], "7".into())
    );
    assert_eq!(env.raw("acme", "plain").await.unwrap()["version"], n(1));

    // The same item written again (moto still emits MODIFY): nothing to push or fix.
    env.put_item("acme", "flags", Some(2), s("b")).await;
    env.put_item("acme", "marker", Some(1), n(1)).await;
    assert_eq!(
        summary(&[one_change(&mut w).await]),
        [("tenant_config_marker".into(), 1, false)]
    );
    assert_eq!(read(&env.counters.stream_reversioned), 2);
    env.stop().await;
}

#[tokio::test]
async fn malformed_items_are_skipped_by_load_and_stream_alike() {
    let env = Env::start().await;
    let bad = |pk: &str, sk: &str, extra: Vec<(&str, AttributeValue)>| {
        let mut item = Item::from([("pk".to_owned(), s(pk)), ("sk".to_owned(), s(sk))]);
        for (k, v) in extra {
            item.insert(k.to_owned(), v);
        }
        item
    };
    let config = || ("config", n(1));
    let malformed = [
        bad("TENANT#acme", "CONFIG#bad name", vec![config()]),
        bad("TENANT#acme", "CONFIG#", vec![config()]),
        bad("TENANT#acme", "CONFIG#no_config", vec![]),
        bad(
            "TENANT#acme",
            "CONFIG#bad_version",
            vec![config(), ("version", s("one"))],
        ),
        bad(
            "TENANT#acme",
            "CONFIG#bad_active",
            vec![config(), ("isActive", s("yes"))],
        ),
        bad("TENANT#acme", "NOTES#x", vec![config()]),
        bad("TENANT#a b", "CONFIG#x", vec![config()]),
        bad("tenant-acme", "CONFIG#x", vec![config()]),
    ];
    for item in &malformed {
        env.put_raw(item.clone()).await;
    }
    env.put_item("acme", "good", Some(3), s("ok")).await;

    // Load (Query) skips them.
    let mut c = env.server.client("acme", Role::Writer).await;
    let mut w = watch(&mut c, watch_prefixes(&[])).await;
    let (entries, _) = initial(&mut w).await;
    assert_eq!(summary(&entries), [("tenant_config_good".into(), 3, false)]);
    env.ready().await;

    // The stream skips them and keeps going.
    for item in &malformed {
        env.put_raw(item.clone()).await;
    }
    env.put_item("acme", "after", Some(1), s("still here"))
        .await;
    let got = one_change(&mut w).await;
    assert_eq!(
        (summary(std::slice::from_ref(&got)), got.value),
        (
            vec![("tenant_config_after".into(), 1, false)],
            "\"still here\"".into()
        )
    );
    assert!(!env.task.is_finished());
    // Each was counted (the first round too, if the reader was already reading).
    let skipped = read(&env.counters.stream_records_skipped);
    assert!(skipped >= malformed.len() as u64, "counted {skipped}");
    env.stop().await;
}

#[tokio::test]
async fn numbers_keep_every_digit_through_dynamodb_and_its_stream() {
    let env = Env::start().await;
    let mut c = env.server.client("acme", Role::Writer).await;
    let mut w = watch(&mut c, watch_prefixes(&["tenant_config_"])).await;
    initial(&mut w).await;
    env.ready().await;

    // Through configwatch: the item holds the number as written.
    let written = r#"{"id":123456789012345678901,"amount":0.1000000000000000055511151231257827}"#;
    // DynamoDB keeps no member order; the digits are the writer's.
    let same = |a: &str, b: &str| {
        let parse = |t: &str| configwatch::json::Json::parse(t, 32).unwrap();
        parse(a) == parse(b)
    };
    let e = put(&mut c, "tenant_config_ids", written).await;
    assert!(same(&e.value, written), "{}", e.value);
    let pushed = one_change(&mut w).await.value;
    assert!(same(&pushed, written), "{pushed}");
    let item = env.raw("acme", "ids").await.unwrap();
    let AttributeValue::M(config) = &item["config"] else {
        panic!("config is a map: {item:?}")
    };
    assert_eq!(
        config["id"],
        AttributeValue::N("123456789012345678901".into())
    );

    // Another tool changes only the last digit, without a version bump: the change
    // is noticed (not mistaken for the same float), re-versioned and pushed.
    let mut changed = config.clone();
    changed.insert(
        "id".into(),
        AttributeValue::N("123456789012345678902".into()),
    );
    env.put_item("acme", "ids", Some(e.version), AttributeValue::M(changed))
        .await;
    let got = one_change(&mut w).await;
    assert_eq!(got.version, e.version + 1);
    assert!(
        got.value.contains("\"id\":123456789012345678902"),
        "{}",
        got.value
    );

    // A fresh load reads the same digits.
    let got = get_keys(&mut c, &["tenant_config_ids"]).await;
    assert!(got.entries[0].value.contains("123456789012345678902"));
    env.stop().await;
}
