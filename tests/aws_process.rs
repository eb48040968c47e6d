//! `configwatch serve --backend aws` as users run it, on moto: the binary is killed
//! (`kill -9`) and restarted while changes keep arriving in DynamoDB and Parameter
//! Store from other tools, and a watcher that reconnects by itself ends up holding
//! exactly what the sources hold, having seen every key's versions only grow.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_ssm::types::ParameterType;
use common::*;
use configwatch::auth::Role;
use configwatch::proto::{self, watch_response::InitialMode};
use configwatch_test_support::moto::{Moto, REGION, ROOT, Resources};
use configwatch_test_support::{ServerProcess, wait_for};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;

const TENANT: &str = "acme";

/// Starts the binary on 127.0.0.1 port 0 with `--backend aws` against `moto`.
async fn start_server(dir: &Path, moto: &Moto, res: &Resources) -> ServerProcess {
    let mut command = serve_command(dir, &["--backend", "aws"]);
    command
        .args(["--table", &res.table, "--queue-url", &res.queue_url])
        .args(["--ssm-root", ROOT, "--region", REGION])
        .args([
            "--reconcile-interval",
            "3s",
            "--stream-poll-interval",
            "100ms",
        ])
        .env("AWS_ENDPOINT_URL", &moto.endpoint)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    ServerProcess::start(command).await
}

/// What a key should be: its value as JSON, or deleted. `version` is checked for
/// DynamoDB keys, whose versions the writer sets.
#[derive(Debug, Clone, PartialEq)]
struct Truth {
    value: Option<Value>,
    version: Option<u64>,
}

/// A watcher's cache: key -> (version, value as JSON; None when deleted).
type Cache = BTreeMap<String, (u64, Option<Value>)>;

#[derive(Default)]
struct WatcherState {
    cache: Cache,
    /// Changes that would have taken a key's version backwards.
    regressions: Vec<String>,
    connects: usize,
}

/// A watcher that behaves as a client library should: resumes by token, and else by
/// the versions it holds, whichever server address is current.
async fn watcher(
    mut addr: watch::Receiver<SocketAddr>,
    token: String,
    state: Arc<Mutex<WatcherState>>,
) {
    let mut resume_token = String::new();
    loop {
        let target = *addr.borrow_and_update();
        let attempt = async {
            let Ok(mut c) = try_connect(target, Some(&token)).await else {
                return Ok(());
            };
            let known_versions: HashMap<String, u64> = {
                let s = state.lock().unwrap();
                s.cache
                    .iter()
                    .filter(|(_, (_, v))| v.is_some())
                    .map(|(k, (v, _))| (k.clone(), *v))
                    .collect()
            };
            let mut stream = c
                .watch(proto::WatchRequest {
                    resume_token: resume_token.clone(),
                    known_versions,
                    ..Default::default()
                })
                .await?
                .into_inner();
            state.lock().unwrap().connects += 1;
            while let Some(msg) = stream.message().await? {
                let mut s = state.lock().unwrap();
                let mode = msg.initial_mode();
                if msg.kind() == proto::watch_response::Kind::Initial && mode == InitialMode::Full {
                    s.cache.clear();
                }
                for e in &msg.changes {
                    let value = (!e.deleted).then(|| serde_json::from_str(&e.value).unwrap());
                    let held = s.cache.get(&e.key).map(|(v, _)| *v);
                    let authoritative = msg.kind() == proto::watch_response::Kind::Initial
                        && mode != InitialMode::Resumed;
                    match held {
                        Some(v) if e.version <= v && !authoritative => {
                            s.regressions
                                .push(format!("{} offered {} holding {v}", e.key, e.version));
                        }
                        _ => {
                            s.cache.insert(e.key.clone(), (e.version, value));
                        }
                    }
                }
                if !msg.resume_token.is_empty() {
                    resume_token = msg.resume_token.clone();
                }
            }
            Ok::<(), tonic::Status>(())
        };
        let _ = tokio::time::timeout(Duration::from_secs(60), attempt).await;
        // Dropped: wait a moment or for a new address, then resume.
        let _ = tokio::time::timeout(Duration::from_millis(200), addr.changed()).await;
    }
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.into())
}

#[tokio::test]
async fn killed_and_restarted_while_changes_arrive_watchers_converge_and_miss_nothing() {
    let moto = Moto::start();
    let res = moto.create_resources(Duration::from_secs(2)).await;
    let ddb = moto.dynamodb().await;
    let ssm = moto.ssm().await;
    let dir = temp_dir();
    let token = token(dir.path(), TENANT, Role::Reader);

    let first = start_server(dir.path(), &moto, &res).await;
    let (addr_tx, addr_rx) = watch::channel(first.addr);
    let mut server = Some(first);
    let state = Arc::new(Mutex::new(WatcherState::default()));
    let watching = tokio::spawn(watcher(addr_rx, token.clone(), state.clone()));

    // Other tools change 4 items and 3 parameters, one change every 40 ms, while the
    // server is killed twice.
    let mut truth: BTreeMap<String, Truth> = BTreeMap::new();
    let mut ddb_versions: HashMap<String, u64> = HashMap::new();
    let started = Instant::now();
    let mut kills = 0;
    let mut down_since = Instant::now();
    for i in 0..150u64 {
        if (i == 40 || i == 100)
            && let Some(running) = server.take()
        {
            running.kill9().await;
            kills += 1;
            down_since = Instant::now();
        }
        if server.is_none() && down_since.elapsed() > Duration::from_millis(700) {
            let started = start_server(dir.path(), &moto, &res).await;
            addr_tx.send(started.addr).unwrap();
            server = Some(started);
        }
        if i % 2 == 0 {
            let name = format!("item{}", i % 8 / 2);
            let key = format!("tenant_config_{name}");
            let version = ddb_versions.entry(name.clone()).or_insert(0);
            *version += 1;
            let pk = s(&format!("TENANT#{TENANT}"));
            let sk = s(&format!("CONFIG#{name}"));
            match i % 10 {
                // A hard delete, as a script would do it.
                4 if *version > 1 => {
                    ddb.delete_item()
                        .table_name(&res.table)
                        .key("pk", pk)
                        .key("sk", sk)
                        .send()
                        .await
                        .unwrap();
                    // Served as a tombstone one version above the last item; the
                    // next put continues after it.
                    truth.insert(
                        key,
                        Truth {
                            value: None,
                            version: None,
                        },
                    );
                }
                _ => {
                    let active = i % 10 != 8;
                    ddb.put_item()
                        .table_name(&res.table)
                        .item("pk", pk)
                        .item("sk", sk)
                        .item(
                            "config",
                            AttributeValue::M(HashMap::from([(
                                "n".to_owned(),
                                AttributeValue::N(i.to_string()),
                            )])),
                        )
                        .item("isActive", AttributeValue::Bool(active))
                        .item("version", AttributeValue::N(version.to_string()))
                        .send()
                        .await
                        .unwrap();
                    truth.insert(
                        key,
                        Truth {
                            value: active.then(|| json!({ "n": i })),
                            version: Some(*version),
                        },
                    );
                }
            }
        } else {
            let path = format!("p{}", i % 3);
            let name = format!("{ROOT}/{TENANT}/{path}");
            let key = format!("param_config_{path}");
            if i % 7 == 0 && truth.get(&key).is_some_and(|t| t.value.is_some()) {
                ssm.delete_parameter().name(&name).send().await.unwrap();
                moto.ssm_change_event(&name, "Delete", "String").await;
                truth.insert(
                    key,
                    Truth {
                        value: None,
                        version: None,
                    },
                );
            } else {
                let existed = truth.get(&key).is_some_and(|t| t.value.is_some());
                ssm.put_parameter()
                    .name(&name)
                    .value(format!("v{i}"))
                    .r#type(ParameterType::String)
                    .overwrite(true)
                    .send()
                    .await
                    .unwrap();
                let op = if existed { "Update" } else { "Create" };
                moto.ssm_change_event(&name, op, "String").await;
                truth.insert(
                    key,
                    Truth {
                        value: Some(json!(format!("v{i}"))),
                        version: None,
                    },
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let server = match server {
        Some(running) => running,
        None => {
            let started = start_server(dir.path(), &moto, &res).await;
            addr_tx.send(started.addr).unwrap();
            started
        }
    };
    assert_eq!(kills, 2);
    let writes_took = started.elapsed();

    // Writes have stopped: the watcher must converge on exactly the sources' state.
    let matches = |cache: &Cache| {
        let live: BTreeMap<&String, &Value> = cache
            .iter()
            .filter_map(|(k, (_, v))| v.as_ref().map(|v| (k, v)))
            .collect();
        let want: BTreeMap<&String, &Value> = truth
            .iter()
            .filter_map(|(k, t)| t.value.as_ref().map(|v| (k, v)))
            .collect();
        live == want
            && truth.iter().all(|(k, t)| match (t.version, cache.get(k)) {
                (Some(v), Some((held, Some(_)))) => *held == v,
                _ => true,
            })
    };
    wait_for(
        Duration::from_secs(45),
        || {
            let snapshot = state.lock().unwrap().cache.clone();
            format!(
                "the watcher to converge after {writes_took:?} of writes.\nholds: {snapshot:#?}\nsources: {truth:#?}"
            )
        },
        || matches(&state.lock().unwrap().cache),
    )
    .await;
    let (regressions, connects) = {
        let s = state.lock().unwrap();
        (s.regressions.clone(), s.connects)
    };
    assert!(
        regressions.is_empty(),
        "versions went backwards: {regressions:?}"
    );
    assert!(connects >= 3, "the watcher reconnected after each restart");

    // A fresh Get agrees with the sources too.
    let mut c = connect(server.addr, Some(&token)).await;
    let all = c
        .get(proto::GetRequest::default())
        .await
        .unwrap()
        .into_inner();
    let got: BTreeMap<String, Value> = all
        .entries
        .iter()
        .filter(|e| !e.deleted)
        .map(|e| (e.key.clone(), serde_json::from_str(&e.value).unwrap()))
        .collect();
    let want: BTreeMap<String, Value> = truth
        .iter()
        .filter_map(|(k, t)| t.value.clone().map(|v| (k.clone(), v)))
        .collect();
    assert_eq!(got, want);
    watching.abort();
}
