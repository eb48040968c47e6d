//! History on the DynamoDB backend, on moto: writes through configwatch keep their
//! version with its writer (AUDIT# items, one transaction with the change), changes
//! by another tool are recorded from the stream as external (once, with two
//! origins reading), superseded versions expire by TTL, the count limit holds, and
//! neither a load nor a watcher ever sees a history item; and through a server
//! process, the command line's history and rollback (`rollback.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;
mod external;
mod retention;
mod rollback;

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
        max_bytes: usize::MAX,
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
