//! Storage accidents: a lost or replaced database, a full disk, damaged records.
//! Each is survived without serving wrong data and without turning the accident
//! into deletions pushed to clients.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use configwatch::auth::Role;
use configwatch::auth::local::LocalKey;
use configwatch::model::Scope;
use configwatch::proto::{self, watch_response::InitialMode};
use configwatch::store::Router;
use configwatch::store::embedded::{DB_FILE, EmbeddedStore};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

const BIN: &str = env!("CARGO_BIN_EXE_configwatch");

fn serve_command(dir: &Path, extra: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .args(extra)
        .env("CONFIGWATCH_LOG", "warn");
    command
}

/// Runs a command that must exit by itself; kills it after PATIENCE.
fn run_to_exit(mut command: Command) -> std::process::Output {
    let child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start configwatch");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(PATIENCE) {
        Ok(out) => out.expect("output"),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("configwatch serve did not exit: it started instead of refusing");
        }
    }
}

fn token(dir: &Path, tenant: &str, role: Role) -> String {
    let (key, _) = LocalKey::load_or_create(dir).unwrap();
    key.issue(
        &Scope::tenant(tenant).unwrap(),
        role,
        Duration::from_secs(600),
        "test",
    )
    .unwrap()
}

async fn get_all(client: &mut Client) -> Result<proto::GetResponse, tonic::Status> {
    client
        .get(proto::GetRequest::default())
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn a_lost_database_stops_the_server_and_new_store_starts_one_that_clients_notice() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join(DB_FILE);
    let server = ServerProcess::spawn(serve_command(dir.path(), &[]));
    let t = token(dir.path(), "acme", Role::Writer);
    let mut c = connect(server.addr, Some(&t)).await;
    for i in 0..3 {
        put(&mut c, &format!("tenant_config_k{i}"), &i.to_string()).await;
    }
    let before = get_all(&mut c).await.unwrap();
    assert_eq!(before.store_id.len(), 26, "{before:?}");
    let mut w = watch(&mut c, proto::WatchRequest::default()).await;
    let (_, done) = initial(&mut w).await;
    assert_eq!(done.store_id, before.store_id);
    drop((w, c));
    server.kill9();
    let saved = std::fs::read(&db).unwrap();

    // Deleted, then empty: start-up refuses, saying what happened and what to do.
    for (state, damage) in [("missing", None), ("empty", Some(Vec::new()))] {
        match &damage {
            None => std::fs::remove_file(&db).unwrap(),
            Some(bytes) => std::fs::write(&db, bytes).unwrap(),
        }
        let out = run_to_exit(serve_command(dir.path(), &[]));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{state}: {stderr}");
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("listening"),
            "{state}"
        );
        for needle in [DB_FILE, state, "--new-store", before.store_id.as_str()] {
            assert!(
                stderr.contains(needle),
                "{state}: no {needle:?} in {stderr}"
            );
        }
        // Nothing was created in its place.
        assert_eq!(
            std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0),
            0,
            "{state}"
        );
    }
    // Put back, it serves its data as before.
    std::fs::write(&db, &saved).unwrap();
    let server = ServerProcess::spawn(serve_command(dir.path(), &[]));
    let mut c = connect(server.addr, Some(&t)).await;
    let again = get_all(&mut c).await.unwrap();
    assert_eq!(again.store_id, before.store_id);
    assert_eq!(again.entries.len(), 3);
    server.kill9();

    // Started afresh on purpose: a new identity, and a client that comes back with
    // the old store's token and versions gets the full (empty) state, with no
    // removals that would wipe its cache.
    std::fs::remove_file(&db).unwrap();
    let server = ServerProcess::spawn(serve_command(dir.path(), &["--new-store"]));
    let mut c = connect(server.addr, Some(&t)).await;
    let fresh = get_all(&mut c).await.unwrap();
    assert_eq!(fresh.store_id.len(), 26);
    assert_ne!(fresh.store_id, before.store_id);
    assert!(fresh.entries.is_empty());
    let known = before
        .entries
        .iter()
        .map(|e| (e.key.clone(), e.version))
        .collect();
    let mut w = watch(
        &mut c,
        proto::WatchRequest {
            resume_token: before.resume_token.clone(),
            known_versions: known,
            known_store_id: before.store_id.clone(),
            ..Default::default()
        },
    )
    .await;
    let (entries, done) = initial(&mut w).await;
    assert_eq!(done.initial_mode, InitialMode::Full as i32);
    assert_eq!(done.store_id, fresh.store_id);
    assert!(entries.is_empty(), "{entries:?}");
    server.kill9();
}

#[tokio::test]
async fn a_watch_naming_another_store_gets_the_full_state_and_its_own_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client("acme", Role::Writer).await;
    put(&mut c, "tenant_config_a", "1").await;
    put(&mut c, "tenant_config_b", "2").await;
    let got = get_all(&mut c).await.unwrap();
    assert_eq!(got.store_id.len(), 26);
    put(&mut c, "tenant_config_c", "3").await;

    // Another store's identity: the token and versions are ignored.
    let other = "0".repeat(26);
    let mut w = watch(
        &mut c,
        proto::WatchRequest {
            resume_token: got.resume_token.clone(),
            known_versions: [("tenant_config_gone".to_string(), 9)].into(),
            known_store_id: other,
            ..Default::default()
        },
    )
    .await;
    let first = next(&mut w).await;
    assert_eq!(
        first.store_id, got.store_id,
        "every initial message names it"
    );
    let mut entries = first.changes.clone();
    let mut done = first;
    while !done.initial_complete {
        done = next(&mut w).await;
        assert_eq!(done.store_id, got.store_id);
        entries.extend(done.changes.clone());
    }
    assert_eq!(done.initial_mode, InitialMode::Full as i32);
    assert_eq!(
        summary(&entries),
        [
            ("tenant_config_a".into(), 1, false),
            ("tenant_config_b".into(), 1, false),
            ("tenant_config_c".into(), 1, false)
        ]
    );
    // Deltas carry no identity.
    put(&mut c, "tenant_config_d", "4").await;
    let delta = next(&mut w).await;
    assert!(delta.store_id.is_empty() && delta.changes.len() == 1);

    // Its own identity: resumed as before.
    let mut w = watch(
        &mut c,
        proto::WatchRequest {
            resume_token: got.resume_token.clone(),
            known_store_id: got.store_id.clone(),
            ..Default::default()
        },
    )
    .await;
    let (missed, done) = initial(&mut w).await;
    assert_eq!(done.initial_mode, InitialMode::Resumed as i32);
    assert_eq!(done.store_id, got.store_id);
    assert_eq!(missed.len(), 2);
    server.stop().await;
}

/// Values written to `tenants` x `per` keys, each unique so its bytes can be found
/// in the database file.
fn value_of(t: usize, k: usize) -> String {
    format!("{{\"id\":\"value-{t:02}-{k:02}-{}\"}}", "x".repeat(40))
}

async fn write_reference(dir: &Path, tenants: usize, per: usize) -> String {
    let store = EmbeddedStore::open(dir).unwrap();
    use configwatch::store::{Backend, Write};
    for t in 0..tenants {
        let scope = Scope::tenant(&format!("t{t}")).unwrap();
        for k in 0..per {
            store
                .write(
                    &scope,
                    &format!("tenant_config_k{k:02}"),
                    Write::Put {
                        value: value_of(t, k),
                        secret: false,
                    },
                    None,
                )
                .await
                .unwrap();
        }
    }
    store.id().to_owned()
}

fn find_all(haystack: &[u8], needle: &[u8]) -> Vec<usize> {
    haystack
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect()
}

/// Opens a damaged copy, serves it, and reads every tenant: each answer is either
/// exactly what was written or DATA_LOSS. Returns the damaged keys reported.
async fn serve_damaged(
    dir: &Path,
    tenants: usize,
    per: usize,
) -> (BTreeMap<(String, String), String>, usize) {
    let store = match EmbeddedStore::open(dir) {
        Ok(store) => store,
        // Too damaged to open at all: refused cleanly, which is fine.
        Err(e) => {
            assert!(e.to_string().contains("damaged"), "{e}");
            return (BTreeMap::new(), tenants);
        }
    };
    let report = store.verify_report().clone();
    let damaged: BTreeMap<_, _> = report
        .damaged
        .iter()
        .map(|d| ((d.tenant.clone(), d.key.clone()), d.reason.clone()))
        .collect();
    let server =
        TestServer::start_routed(dir, Router::single(Arc::new(store)), Options::default()).await;
    let mut refused = 0;
    for t in 0..tenants {
        let tenant = format!("t{t}");
        let mut c = server.client(&tenant, Role::Reader).await;
        match get_all(&mut c).await {
            Ok(resp) => {
                assert_eq!(resp.entries.len(), per, "{tenant}: {resp:?}");
                for e in &resp.entries {
                    let k: usize = e.key["tenant_config_k".len()..].parse().unwrap();
                    assert_eq!(e.value, value_of(t, k), "{tenant} served a wrong value");
                    assert!(
                        !damaged.contains_key(&(tenant.clone(), e.key.clone())),
                        "{tenant}/{} was reported damaged yet served",
                        e.key
                    );
                }
            }
            Err(s) => {
                assert_eq!(s.code(), Code::DataLoss, "{tenant}: {s:?}");
                refused += 1;
            }
        }
    }
    server.stop().await;
    (damaged, refused)
}

#[tokio::test]
async fn flipped_bytes_are_reported_and_never_served() {
    let (tenants, per) = (4, 10);
    let reference = tempfile::tempdir().unwrap();
    write_reference(reference.path(), tenants, per).await;
    let original = std::fs::read(reference.path().join(DB_FILE)).unwrap();

    // One byte flipped in the middle of 12 of the 40 values (every stored copy).
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = original.clone();
    let mut flipped = Vec::new();
    for n in 0..12 {
        let (t, k) = (n % tenants, (n * 3) % per);
        let at = find_all(&original, value_of(t, k).as_bytes());
        assert!(!at.is_empty(), "value {t}/{k} not found in the file");
        for i in at {
            bytes[i + 20] ^= 0x01;
        }
        flipped.push((format!("t{t}"), format!("tenant_config_k{k:02}")));
    }
    std::fs::write(dir.path().join(DB_FILE), &bytes).unwrap();
    std::fs::copy(
        reference
            .path()
            .join(configwatch::store::identity::MARKER_FILE),
        dir.path().join(configwatch::store::identity::MARKER_FILE),
    )
    .unwrap();
    let (damaged, refused) = serve_damaged(dir.path(), tenants, per).await;
    for key in &flipped {
        assert!(
            damaged.contains_key(key),
            "{key:?} not reported: {damaged:?}"
        );
        assert!(damaged[key].contains("checksum"), "{:?}", damaged[key]);
    }
    assert_eq!(damaged.len(), flipped.len(), "{damaged:?}");
    assert_eq!(refused, tenants, "every tenant has a damaged key");
}

#[tokio::test]
async fn four_kib_of_random_bytes_never_panic_or_serve_wrong_values() {
    let (tenants, per) = (4, 10);
    let reference = tempfile::tempdir().unwrap();
    write_reference(reference.path(), tenants, per).await;
    let original = std::fs::read(reference.path().join(DB_FILE)).unwrap();
    let marker = std::fs::read(
        reference
            .path()
            .join(configwatch::store::identity::MARKER_FILE),
    )
    .unwrap();
    // Several places, so the damage lands on tree pages as well as on values.
    let step = (original.len() / 8).max(4096);
    let mut at = 4096;
    let mut detected = 0;
    while at + 4096 <= original.len() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = original.clone();
        for b in &mut bytes[at..at + 4096] {
            *b = rand::random();
        }
        std::fs::write(dir.path().join(DB_FILE), &bytes).unwrap();
        std::fs::write(
            dir.path().join(configwatch::store::identity::MARKER_FILE),
            &marker,
        )
        .unwrap();
        let (damaged, refused) = serve_damaged(dir.path(), tenants, per).await;
        println!(
            "4 KiB at {at}: {} damaged records reported, {refused} of {tenants} tenants refused",
            damaged.len()
        );
        if !damaged.is_empty() || refused > 0 {
            detected += 1;
        }
        at += step;
    }
    assert!(
        detected > 0,
        "no run met the damage: the test proves nothing"
    );
}

#[tokio::test]
async fn serve_names_the_damaged_keys_at_start() {
    let reference = tempfile::tempdir().unwrap();
    write_reference(reference.path(), 2, 5).await;
    let db = reference.path().join(DB_FILE);
    let mut bytes = std::fs::read(&db).unwrap();
    for i in find_all(&bytes.clone(), value_of(1, 3).as_bytes()) {
        bytes[i + 10] ^= 0x20;
    }
    std::fs::write(&db, &bytes).unwrap();
    let log = reference.path().join("stderr.log");
    let mut command = serve_command(reference.path(), &[]);
    command.stderr(std::fs::File::create(&log).unwrap());
    let server = ServerProcess::spawn(command);
    let t = token(reference.path(), "t1", Role::Reader);
    let mut c = connect(server.addr, Some(&t)).await;
    let refused = get_all(&mut c).await.unwrap_err();
    assert_eq!(refused.code(), Code::DataLoss);
    assert!(
        refused.message().contains("tenant_config_k03"),
        "{refused:?}"
    );
    // A client resuming with the versions it holds is refused too: the damaged key
    // is never sent to it as a removal.
    let known = (0..5)
        .map(|k| (format!("tenant_config_k{k:02}"), 1))
        .collect();
    let resumed = c
        .watch(proto::WatchRequest {
            known_versions: known,
            ..Default::default()
        })
        .await;
    let status = match resumed {
        Err(s) => s,
        Ok(stream) => stream
            .into_inner()
            .message()
            .await
            .expect_err("no message may come from a damaged tenant"),
    };
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
    let t0 = token(reference.path(), "t0", Role::Reader);
    let mut c0 = connect(server.addr, Some(&t0)).await;
    assert_eq!(get_all(&mut c0).await.unwrap().entries.len(), 5);
    server.kill9();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("tenant_config_k03"), "{text}");
    assert!(text.contains("damaged"), "{text}");
}

/// A small tmpfs, unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs { path, _dir: dir })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

async fn config_health(addr: std::net::SocketAddr) -> i32 {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: "configwatch.v1.ConfigService".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

async fn wait_for_health(addr: std::net::SocketAddr, want: ServingStatus) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if config_health(addr).await == want as i32 {
            return;
        }
        assert!(Instant::now() < deadline, "health never became {want:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_full_disk_fails_writes_with_unavailable_and_recovers_without_restart() {
    let Some(fs) = Tmpfs::mount("2m") else {
        println!("SKIPPED: mounting a tmpfs needs root (mount -t tmpfs); this test did not run");
        return;
    };
    let dir = fs.path.join("data");
    let server = TestServer::start(&dir).await;
    let mut writer = server.client("a", Role::Writer).await;
    let mut bystander = server.client("b", Role::Writer).await;
    put(&mut bystander, "tenant_config_kept", "\"b\"").await;
    let mut bw = watch(&mut bystander, proto::WatchRequest::default()).await;
    initial(&mut bw).await;
    wait_for_health(server.addr, ServingStatus::Serving).await;

    // Fill the disk.
    let filler = fs.path.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![7u8; 16 * 1024];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
    // Writes fail with UNAVAILABLE (the first may fit in pages redb already has).
    let big = format!("\"{}\"", "v".repeat(100_000));
    let mut failure = None;
    for i in 0..50 {
        let r = writer
            .put(proto::PutRequest {
                key: format!("tenant_config_big{i}"),
                value: big.clone(),
                ..Default::default()
            })
            .await;
        if let Err(s) = r {
            failure = Some(s);
            break;
        }
    }
    let failure = failure.expect("a write failed on the full disk");
    println!("full disk: {}", failure.message());
    assert_eq!(failure.code(), Code::Unavailable, "{failure:?}");
    assert!(failure.message().contains("disk is full"), "{failure:?}");
    assert!(failure.message().contains("retry"), "{failure:?}");
    // Every later write too, for every tenant, at once and with the same answer.
    let small = writer
        .put(proto::PutRequest {
            key: "tenant_config_small".into(),
            value: "1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(small.code(), Code::Unavailable, "{small:?}");
    wait_for_health(server.addr, ServingStatus::NotServing).await;
    // The bystander still reads.
    let kept = get_all(&mut bystander).await.unwrap();
    assert_eq!(kept.entries[0].value, "\"b\"");

    // Space comes back: writes work again by themselves.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + PATIENCE;
    let entry = loop {
        match writer
            .put(proto::PutRequest {
                key: "tenant_config_small".into(),
                value: "2".into(),
                ..Default::default()
            })
            .await
        {
            Ok(r) => break r.into_inner().entry.unwrap(),
            Err(s) => {
                assert_eq!(s.code(), Code::Unavailable, "{s:?}");
                assert!(Instant::now() < deadline, "never recovered: {s:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(entry.version, 1);
    wait_for_health(server.addr, ServingStatus::Serving).await;
    // The bystander's watch sees its own next write.
    put(&mut bystander, "tenant_config_kept", "\"b2\"").await;
    let change = changes(&mut bw, 1).await;
    assert_eq!(change[0].value, "\"b2\"");
    server.stop().await;
    drop(fs);
}

async fn create_table(ddb: &aws_sdk_dynamodb::Client, name: &str) {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    };
    ddb.create_table()
        .table_name(name)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("pk")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("pk")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .expect("create table");
}

#[tokio::test]
async fn aws_a_recreated_table_has_a_new_store_identity() {
    use configwatch::store::identity::aws_store_id;
    let moto = common::moto::Moto::start();
    let ddb = moto.dynamodb().await;
    create_table(&ddb, "identity").await;
    let first = aws_store_id(&ddb, "identity", "/config-service")
        .await
        .unwrap();
    assert_eq!(first.as_str().len(), 26);
    assert_eq!(
        aws_store_id(&ddb, "identity", "/config-service")
            .await
            .unwrap(),
        first,
        "stable while the table lives"
    );
    assert_ne!(
        aws_store_id(&ddb, "identity", "/other-root").await.unwrap(),
        first,
        "another Parameter Store root is another store"
    );
    ddb.delete_table()
        .table_name("identity")
        .send()
        .await
        .unwrap();
    assert!(
        aws_store_id(&ddb, "identity", "/config-service")
            .await
            .is_err()
    );
    create_table(&ddb, "identity").await;
    let second = aws_store_id(&ddb, "identity", "/config-service")
        .await
        .unwrap();
    assert_ne!(second, first, "a recreated table is a new store");
}
