//! The client against real configwatch servers (see `common` for the harness).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use configwatch_client::{Cause, ChangeKind, Client, Error, Source, State, SyncMode, static_token};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;
use tokio::time::timeout;

const SECS_10: Duration = Duration::from_secs(10);

#[derive(Debug, Deserialize, PartialEq)]
struct Flag {
    on: bool,
}

#[tokio::test]
async fn bootstrap_then_deltas_then_a_delete() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let mut w = server.writer(TENANT).await;
    w.put("tenant_config_a", json!({"on": false})).await;
    w.put("tenant_config_b", json!(1)).await;
    w.put("param_config_db/url", json!("pg://db")).await;
    // Another tenant's data never reaches this cache.
    let mut globex = server.writer("globex").await;
    globex.put("tenant_config_a", json!({"on": true})).await;
    globex.put("tenant_config_globex_only", json!(1)).await;

    let client = server.builder(TENANT).await.connect().await.unwrap();
    let s = client.status();
    assert!(s.connected && !s.stale, "{s:?}");
    assert_eq!((s.state, s.source), (State::Connected, Source::Server));
    assert_eq!(s.last_sync_mode, Some(SyncMode::Full));
    assert_eq!(s.entries, 3);
    assert_eq!(
        client.keys(),
        ["param_config_db/url", "tenant_config_a", "tenant_config_b"]
    );
    assert_eq!(client.len(), 3);
    let a = client.get::<Flag>("tenant_config_a").unwrap().unwrap();
    assert_eq!((a.value, a.version), (Flag { on: false }, 1));
    assert_eq!(
        &*client.get_raw("param_config_db/url").unwrap().value,
        "\"pg://db\""
    );
    assert!(
        client
            .get::<Flag>("tenant_config_missing")
            .unwrap()
            .is_none()
    );
    // A value that is not the caller's type is a typed error, not a panic.
    match client.get::<Flag>("param_config_db/url") {
        Err(Error::Decode { key, .. }) => assert_eq!(key, "param_config_db/url"),
        other => panic!("{other:?}"),
    }
    converged(&client, &mut w).await;

    let mut changes = client.changes();
    let mut updates = client.updates();
    let generation = *updates.borrow_and_update();

    // A delta.
    assert_eq!(w.put("tenant_config_a", json!({"on": true})).await, 2);
    timeout(SECS_10, updates.changed()).await.unwrap().unwrap();
    assert!(*updates.borrow_and_update() > generation);
    let a = client.get::<Flag>("tenant_config_a").unwrap().unwrap();
    assert_eq!((a.value, a.version), (Flag { on: true }, 2));
    let c = timeout(SECS_10, changes.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            c.key.as_str(),
            c.kind,
            c.version,
            c.previous_version,
            c.cause
        ),
        ("tenant_config_a", ChangeKind::Set, 2, Some(1), Cause::Delta)
    );
    assert_eq!(c.value::<Flag>().unwrap(), Some(Flag { on: true }));

    // A new key.
    w.put("tenant_config_c", json!([1, 2])).await;
    let c = timeout(SECS_10, changes.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (c.key.as_str(), c.version, c.previous_version),
        ("tenant_config_c", 1, None)
    );
    assert_eq!(
        client
            .get::<Vec<u8>>("tenant_config_c")
            .unwrap()
            .unwrap()
            .value,
        [1, 2]
    );

    // A delete.
    assert_eq!(w.delete("tenant_config_b").await, 2);
    let c = timeout(SECS_10, changes.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (c.key.as_str(), c.kind, c.version, c.previous_version),
        ("tenant_config_b", ChangeKind::Delete, 2, Some(1))
    );
    assert_eq!(c.raw_value(), None);
    assert!(!client.contains_key("tenant_config_b"));
    assert!(client.get::<u32>("tenant_config_b").unwrap().is_none());
    assert_eq!(
        client
            .entries_under("tenant_config_")
            .iter()
            .map(|e| e.key.as_str())
            .collect::<Vec<_>>(),
        ["tenant_config_a", "tenant_config_c"]
    );
    assert_eq!(changes.waiting(), 0);
    converged(&client, &mut w).await;
    assert!(client.revision() > 0);
}

#[tokio::test]
async fn server_restarted_mid_stream_the_cache_converges_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(&dir.path().join("data")).await;
    let mut w = server.writer(TENANT).await;
    w.put("tenant_config_a", json!(1)).await;
    w.put("tenant_config_b", json!(1)).await;
    w.put("param_config_c", json!("one")).await;

    // The token source can be held shut, so that writes land while the client is
    // away and the reconnection has something to catch up on. It is the test's only
    // lever: the application does nothing.
    let token = server.token(TENANT, "reader", "1h").await;
    let (gate, _) = watch::channel(true);
    let gate = Arc::new(gate);
    let calls = Arc::new(AtomicUsize::new(0));
    let source = {
        let (gate, calls) = (gate.clone(), calls.clone());
        move || {
            let (token, mut open, calls) = (token.clone(), gate.subscribe(), calls.clone());
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                let _ = open.wait_for(|o| *o).await;
                Ok::<_, std::convert::Infallible>(token)
            }
        }
    };
    let client = Client::builder(server.url(), TENANT, source)
        .backoff(fast_backoff())
        .connect()
        .await
        .unwrap();
    let changes = record(&client);
    converged(&client, &mut w).await;

    // 1. SIGKILL: the connection drops; writes land while the client is held away.
    gate.send_replace(false);
    server.kill().await;
    wait_for(
        SECS_10,
        || format!("{:?}", client.status()),
        || !client.status().connected,
    )
    .await;
    // Reads still serve the last known values, and say they are stale.
    assert_eq!(
        client.get::<u32>("tenant_config_a").unwrap().unwrap().value,
        1
    );
    let s = client.status();
    assert!(s.stale && s.last_error.is_some(), "{s:?}");
    server.restart().await;
    let mut w = server.writer(TENANT).await;
    w.put("tenant_config_a", json!(2)).await;
    w.delete("tenant_config_b").await;
    w.put("tenant_config_d", json!({"new": true})).await;
    gate.send_replace(true);
    converged(&client, &mut w).await;
    // The new server instance cannot use the old resume token: it diffs against the
    // versions the client holds, including the removal of b.
    assert_eq!(client.status().last_sync_mode, Some(SyncMode::Diff));
    wait_for(
        SECS_10,
        || format!("{:?}", seen(&changes)),
        || {
            let seen = seen(&changes);
            [
                "tenant_config_a@2",
                "tenant_config_b@2-",
                "tenant_config_d@1",
            ]
            .iter()
            .all(|c| seen.iter().any(|s| s == c))
        },
    )
    .await;

    // 2. SIGTERM: a graceful shutdown ends the watch with UNAVAILABLE; writes right
    // after the restart race the reconnection, and the cache converges either way.
    server.terminate().await;
    wait_for(
        SECS_10,
        || format!("{:?}", client.status()),
        || !client.status().connected,
    )
    .await;
    let s = client.status();
    assert_eq!(
        s.last_error.as_ref().and_then(Error::code),
        Some(tonic::Code::Unavailable),
        "{s:?}"
    );
    server.restart().await;
    let mut w = server.writer(TENANT).await;
    w.put("tenant_config_a", json!(3)).await;
    w.put("param_config_c", json!("two")).await;
    converged(&client, &mut w).await;
    assert_eq!(
        client.get::<u32>("tenant_config_a").unwrap().unwrap().value,
        3
    );
    assert_eq!(client.status().syncs, 3);
    // A token was asked for each connection.
    assert!(calls.load(Ordering::SeqCst) >= 3);
}

#[tokio::test]
async fn token_expiry_the_token_source_is_called_again_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(Server::start(dir.path()).await);
    let mut w = server.writer(TENANT).await;
    w.put("tenant_config_flag", json!("v1")).await;
    let writer = Arc::new(tokio::sync::Mutex::new(w));

    // Every token lives 3 s (refused about 8 s after issue, with the server's 5 s of
    // leeway). Each time the client comes back for a new one, the source first writes
    // a change: it lands while the client has no stream, and must arrive through the
    // resumed one.
    let calls = Arc::new(AtomicUsize::new(0));
    let source = {
        let (server, writer, calls) = (server.clone(), writer.clone(), calls.clone());
        move || {
            let (server, writer, calls) = (server.clone(), writer.clone(), calls.clone());
            async move {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                if n > 1 {
                    writer
                        .lock()
                        .await
                        .put("tenant_config_flag", json!(format!("v{n}")))
                        .await;
                }
                Ok::<_, std::convert::Infallible>(server.token(TENANT, "reader", "3s").await)
            }
        }
    };
    let client = Client::builder(server.url(), TENANT, source)
        .backoff(fast_backoff())
        .connect()
        .await
        .unwrap();
    let changes = record(&client);
    let flag = |c: &Client| {
        c.get::<String>("tenant_config_flag")
            .unwrap()
            .unwrap()
            .value
    };
    assert_eq!(flag(&client), "v1");

    wait_for(
        Duration::from_secs(40),
        || {
            format!(
                "two token refreshes: calls {} flag {:?} status {:?}",
                calls.load(Ordering::SeqCst),
                client.get::<String>("tenant_config_flag"),
                client.status()
            )
        },
        || {
            let n = calls.load(Ordering::SeqCst);
            n >= 3 && flag(&client) == format!("v{n}") && client.status().connected
        },
    )
    .await;
    let s = client.status();
    // Resumed by token (same server, history reaches back): exactly the missed change.
    assert_eq!(s.last_sync_mode, Some(SyncMode::Resumed), "{s:?}");
    assert!(s.syncs >= 3, "{s:?}");
    wait_for(
        SECS_10,
        || format!("{:?}", seen(&changes)),
        || seen(&changes).len() >= 2,
    )
    .await;
    assert_eq!(
        seen(&changes)[..2],
        ["tenant_config_flag@2", "tenant_config_flag@3"]
    );
    converged(&client, &mut *writer.lock().await).await;
}

#[tokio::test]
async fn server_down_at_start_reads_serve_the_snapshot_then_the_cache_is_current() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(&dir.path().join("data")).await;
    let snapshot = dir
        .path()
        .join("snapshots")
        .join("nested")
        .join("acme.json");
    let mut w = server.writer(TENANT).await;
    w.put("tenant_config_flag", json!({"on": false})).await;
    w.put("param_config_gone", json!("x")).await;

    // A first run writes the snapshot.
    let first = server
        .builder(TENANT)
        .await
        .snapshot_path(&snapshot)
        .snapshot_debounce(Duration::from_millis(20))
        .connect()
        .await
        .unwrap();
    wait_for(
        SECS_10,
        || "the first snapshot".into(),
        || first.status().snapshot.unwrap().saved_at.is_some(),
    )
    .await;
    first.close().await;
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&snapshot).unwrap()).unwrap();
    assert_eq!(written["tenant"], TENANT);
    let keys = |v: &serde_json::Value| -> Vec<String> {
        v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["key"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(keys(&written), ["param_config_gone", "tenant_config_flag"]);
    // Written atomically: nothing but the snapshot in its directory.
    let names: Vec<_> = std::fs::read_dir(snapshot.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["acme.json"]);

    // Changes the snapshot does not have, then the server goes away.
    w.put("tenant_config_flag", json!({"on": true})).await;
    w.delete("param_config_gone").await;
    w.put("tenant_config_added", json!(42)).await;
    server.kill().await;

    // The service starts while the server is down: connect() returns with the
    // snapshot once the server proves unreachable.
    let client = server
        .builder(TENANT)
        .await
        .snapshot_path(&snapshot)
        .snapshot_debounce(Duration::from_millis(20))
        .connect()
        .await
        .unwrap();
    let flag = |c: &Client| c.get::<Flag>("tenant_config_flag").unwrap().unwrap().value;
    assert_eq!(flag(&client), Flag { on: false });
    assert_eq!(
        client
            .get::<String>("param_config_gone")
            .unwrap()
            .unwrap()
            .value,
        "x"
    );
    let s = client.status();
    assert_eq!(s.source, Source::Snapshot);
    assert!(s.stale && !s.connected, "{s:?}");
    let snap = s.snapshot.clone().unwrap();
    assert!(
        snap.loaded && snap.saved_at.is_some() && snap.ignored.is_none(),
        "{snap:?}"
    );
    // It really is unreachable: attempts fail, the snapshot keeps serving.
    wait_for(
        SECS_10,
        || format!("{:?}", client.status()),
        || client.status().failed_attempts >= 3,
    )
    .await;
    let s = client.status();
    assert_eq!(s.source, Source::Snapshot);
    assert_eq!(
        s.last_error.as_ref().and_then(Error::code),
        Some(tonic::Code::Unavailable)
    );
    assert!(
        timeout(Duration::from_millis(100), client.ready())
            .await
            .is_err()
    );

    server.restart().await;
    timeout(Duration::from_secs(15), client.ready())
        .await
        .unwrap()
        .unwrap();
    let s = client.status();
    assert_eq!(s.source, Source::Server);
    assert!(!s.stale, "{s:?}");
    assert_eq!(flag(&client), Flag { on: true });
    assert!(!client.contains_key("param_config_gone"));
    assert_eq!(
        client
            .get::<u32>("tenant_config_added")
            .unwrap()
            .unwrap()
            .value,
        42
    );
    // The snapshot's resume token is from the previous server instance: a diff
    // against the versions the snapshot held.
    assert_eq!(s.last_sync_mode, Some(SyncMode::Diff));
    let mut w = server.writer(TENANT).await;
    converged(&client, &mut w).await;

    // And the snapshot follows.
    let before = snap.saved_at;
    wait_for(
        SECS_10,
        || "a new snapshot".into(),
        || client.status().snapshot.unwrap().saved_at > before,
    )
    .await;
    client.close().await;
    let after: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&snapshot).unwrap()).unwrap();
    assert_eq!(keys(&after), ["tenant_config_added", "tenant_config_flag"]);
}

#[tokio::test]
async fn a_snapshot_of_another_tenant_or_other_prefixes_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(&dir.path().join("data")).await;
    let snapshot = dir.path().join("snap.json");
    let mut w = server.writer(TENANT).await;
    w.put("tenant_config_plan", json!("acme only")).await;
    let acme = server
        .builder(TENANT)
        .await
        .snapshot_path(&snapshot)
        .connect()
        .await
        .unwrap();
    acme.close().await;
    assert!(snapshot.exists());
    let url = server.url();
    server.kill().await;

    let globex = Client::builder(&url, "globex", static_token("unused"))
        .snapshot_path(&snapshot)
        .start()
        .await
        .unwrap();
    assert!(globex.is_empty());
    assert!(
        globex
            .get::<String>("tenant_config_plan")
            .unwrap()
            .is_none()
    );
    let s = globex.status();
    assert_eq!(s.source, Source::None);
    let snap = s.snapshot.unwrap();
    assert!(!snap.loaded);
    assert!(
        snap.ignored.as_deref().unwrap().contains("tenant \"acme\""),
        "{snap:?}"
    );

    let narrow = Client::builder(&url, TENANT, static_token("unused"))
        .prefixes(["param_config_"])
        .snapshot_path(&snapshot)
        .start()
        .await
        .unwrap();
    assert!(narrow.is_empty());
    let snap = narrow.status().snapshot.unwrap();
    assert!(
        snap.ignored.as_deref().unwrap().contains("prefixes"),
        "{snap:?}"
    );
}

#[tokio::test]
async fn a_resume_token_the_server_cannot_read_falls_back_to_the_versions_held() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data")).await;
    let mut w = server.writer(TENANT).await;
    w.put("tenant_config_kept", json!(1)).await;
    w.put("tenant_config_changed", json!(2)).await;
    // A snapshot (as an older client version might have left) whose resume token is
    // not one at all.
    let snapshot = dir.path().join("snap.json");
    let doc = json!({
        "format": "configwatch-client-snapshot/1",
        "tenant": TENANT,
        "prefixes": [],
        "savedAt": "2024-01-01T00:00:00.000Z",
        "revision": 1,
        "resumeToken": "not-a-resume-token",
        "entries": [
            {"key": "tenant_config_kept", "version": 1, "value": "1", "secret": false,
             "revision": 1, "updatedAt": null},
            {"key": "tenant_config_changed", "version": 0, "value": "0", "secret": false,
             "revision": 1, "updatedAt": null},
            {"key": "tenant_config_removed", "version": 1, "value": "1", "secret": false,
             "revision": 1, "updatedAt": null}
        ]
    });
    std::fs::write(&snapshot, doc.to_string()).unwrap();
    let client = server
        .builder(TENANT)
        .await
        .snapshot_path(&snapshot)
        .start()
        .await
        .unwrap();
    assert_eq!(client.len(), 3);
    timeout(SECS_10, client.ready()).await.unwrap().unwrap();
    let s = client.status();
    assert_eq!(s.last_sync_mode, Some(SyncMode::Diff), "{s:?}");
    assert_eq!(s.failed_attempts, 0);
    converged(&client, &mut w).await;
    assert!(!client.contains_key("tenant_config_removed"));
}

#[tokio::test]
async fn secrets_are_read_on_demand_and_never_cached() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data")).await;
    let snapshot = dir.path().join("snap.json");
    let key = "param_config_db/password";
    let mut w = server.writer(TENANT).await;
    w.put_secret(key, "hunter2").await;
    w.put("param_config_db/user", json!("app")).await;

    let client = server
        .builder(TENANT)
        .await
        .snapshot_path(&snapshot)
        .snapshot_debounce(Duration::from_millis(20))
        .connect()
        .await
        .unwrap();
    let mut changes = client.changes();
    // The cache knows the secret exists, and its version, never its value.
    let e = client.entry(key).unwrap();
    assert!(
        e.secret && e.version == 1 && e.raw_value().is_none(),
        "{e:?}"
    );
    assert!(client.get_raw(key).is_none());
    assert!(matches!(
        client.get::<String>(key),
        Err(Error::Secret { .. })
    ));
    let v = client.read_secret(key).await.unwrap().unwrap();
    assert_eq!((v.value.as_str(), v.version), ("hunter2", 1));

    // A change to the secret says so, without the value.
    w.put_secret(key, "correct horse").await;
    let c = timeout(SECS_10, changes.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((c.key.as_str(), c.version, c.secret), (key, 2, true));
    assert_eq!(c.raw_value(), None);
    assert_eq!(client.entry(key).unwrap().version, 2);
    let v = client.read_secret(key).await.unwrap().unwrap();
    assert_eq!((v.value.as_str(), v.version), ("correct horse", 2));
    assert!(
        client
            .read_secret("param_config_db/none")
            .await
            .unwrap()
            .is_none()
    );
    // A bad key is the server's typed error.
    let e = client.read_secret("bogus").await.unwrap_err();
    assert_eq!(e.code(), Some(tonic::Code::InvalidArgument), "{e}");

    // Nowhere in the client: not in its entries, not in the snapshot.
    let held = format!("{:?} {:?}", client.entries(), client.status());
    assert!(!held.contains("hunter2") && !held.contains("correct horse"));
    wait_for(
        SECS_10,
        || "the snapshot".into(),
        || std::fs::read_to_string(&snapshot).is_ok_and(|t| t.contains("\"version\":2")),
    )
    .await;
    client.close().await;
    let file = std::fs::read_to_string(&snapshot).unwrap();
    assert!(file.contains(key) && file.contains("param_config_db/user"));
    assert!(
        !file.contains("hunter2") && !file.contains("correct horse"),
        "{file}"
    );
}

#[tokio::test]
async fn a_refused_request_is_a_typed_error_and_does_not_spin() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let mut w = server.writer(TENANT).await;
    w.put("tenant_config_a", json!(1)).await;
    let globex_token = server.token("globex", "reader", "1h").await;
    let counting = |calls: Arc<AtomicUsize>| {
        let token = globex_token.clone();
        move || {
            let (token, calls) = (token.clone(), calls.clone());
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok::<_, std::convert::Infallible>(token)
            }
        }
    };

    // connect(): the error itself.
    let calls = Arc::new(AtomicUsize::new(0));
    let err = Client::builder(server.url(), TENANT, counting(calls.clone()))
        .backoff(fast_backoff())
        .connect()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::PermissionDenied), "{err}");
    assert!(!err.is_retryable());
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // start(): the watch stops, says why, and tells every reader.
    let calls = Arc::new(AtomicUsize::new(0));
    let client = Client::builder(server.url(), TENANT, counting(calls.clone()))
        .backoff(fast_backoff())
        .start()
        .await
        .unwrap();
    let mut changes = client.changes();
    let err = timeout(SECS_10, client.ready()).await.unwrap().unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::PermissionDenied), "{err}");
    let item = timeout(SECS_10, changes.next()).await.unwrap();
    assert!(
        matches!(
            item,
            Some(Err(Error::Status {
                code: tonic::Code::PermissionDenied,
                ..
            }))
        ),
        "{item:?}"
    );
    assert!(changes.next().await.is_none());
    let s = client.status();
    assert_eq!(s.state, State::Failed);
    assert_eq!(
        s.last_error.as_ref().and_then(Error::code),
        Some(tonic::Code::PermissionDenied)
    );
    assert!(client.is_empty(), "no data of any tenant");
    // No retry: the token source is not called again. (An observation window: the
    // loop has already returned, so nothing could call it.)
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // A bad prefix is the application's to fix too.
    let err = server
        .builder(TENANT)
        .await
        .prefixes(["not a prefix!"])
        .connect()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::InvalidArgument), "{err}");
    // And so is a bad configuration, before any I/O.
    let err = Client::builder(server.url(), "", static_token("t"))
        .start()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidConfig(_)), "{err}");
}

#[tokio::test]
async fn a_slow_reader_gets_the_newest_change_per_key() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let mut w = server.writer(TENANT).await;
    w.put("tenant_config_k", json!(1)).await;
    let client = server.builder(TENANT).await.connect().await.unwrap();
    let mut changes = client.changes();
    for v in 2..=5 {
        w.put("tenant_config_k", json!(v)).await;
    }
    w.put("tenant_config_other", json!(0)).await;
    wait_for(
        SECS_10,
        || format!("{:?}", cache_state(&client)),
        || client.contains_key("tenant_config_other"),
    )
    .await;
    assert_eq!(changes.waiting(), 2);
    let c = changes.next().await.unwrap().unwrap();
    assert_eq!(
        (c.key.as_str(), c.version, c.previous_version),
        ("tenant_config_k", 5, Some(1))
    );
    // How many it replaced depends on how the server batched them; never more than 3.
    assert!(c.coalesced <= 3, "{c:?}");
    let c = changes.next().await.unwrap().unwrap();
    assert_eq!(c.key, "tenant_config_other");
    assert_eq!(changes.waiting(), 0);
}

#[tokio::test]
async fn the_watch_stops_when_every_handle_is_dropped_or_on_close() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let mut w = server.writer(TENANT).await;
    w.put("tenant_config_a", json!(1)).await;

    // Dropping every clone.
    let client = server.builder(TENANT).await.connect().await.unwrap();
    let other = client.clone();
    let mut updates = client.updates();
    let mut changes = other.changes();
    drop(client);
    // One handle left: still watching.
    w.put("tenant_config_a", json!(2)).await;
    timeout(SECS_10, updates.changed()).await.unwrap().unwrap();
    assert_eq!(
        other.get::<u32>("tenant_config_a").unwrap().unwrap().value,
        2
    );
    drop(other);
    // The task ends: the stream ends, and the counter's sender is gone.
    assert!(matches!(
        timeout(SECS_10, changes.next()).await.unwrap(),
        Some(Ok(_))
    ));
    assert!(timeout(SECS_10, changes.next()).await.unwrap().is_none());
    assert!(timeout(SECS_10, updates.changed()).await.unwrap().is_err());

    // close(): reads go on serving what is held; nothing else works.
    let client = server.builder(TENANT).await.connect().await.unwrap();
    let mut changes = client.changes();
    client.close().await;
    assert_eq!(client.status().state, State::Closed);
    assert!(client.status().stale);
    assert_eq!(
        client.get::<u32>("tenant_config_a").unwrap().unwrap().value,
        2
    );
    assert!(timeout(SECS_10, changes.next()).await.unwrap().is_none());
    assert!(matches!(client.ready().await, Ok(())), "it was ready once");
    assert!(matches!(
        client.read_secret("tenant_config_a").await,
        Err(Error::Closed)
    ));
    client.close().await;
}

#[tokio::test]
async fn many_clients_in_one_process_each_see_only_their_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let tenants = ["t1", "t2", "t3"];
    let mut clients = Vec::new();
    for t in tenants {
        let mut w = server.writer(t).await;
        w.put("tenant_config_who", json!(t)).await;
        for _ in 0..2 {
            clients.push((
                t,
                server.builder(t).await.connect().await.unwrap(),
                server.writer(t).await,
            ));
        }
    }
    for (t, client, w) in &mut clients {
        w.put("tenant_config_n", json!(t.len())).await;
        converged(client, w).await;
        assert_eq!(
            client
                .get::<String>("tenant_config_who")
                .unwrap()
                .unwrap()
                .value,
            *t
        );
    }
}

#[tokio::test]
async fn the_example_prints_the_flag_each_time_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let flag = "tenant_config_new-checkout";
    let mut w = server.writer(TENANT).await;
    w.put(flag, json!({"enabled": false})).await;
    let token = server.token(TENANT, "reader", "1h").await;

    // Built by `cargo test` beside this test binary (target/<profile>/examples).
    let exe = std::env::current_exe().unwrap();
    let example = exe
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join("examples")
        .join("feature_flag");
    assert!(
        example.is_file(),
        "no example at {}: `cargo test -p configwatch-client` builds it, as does \
         `cargo build -p configwatch-client --example feature_flag` (selecting a test \
         target alone does not)",
        example.display()
    );
    let mut child = tokio::process::Command::new(&example)
        .env("CONFIGWATCH_SERVER", server.url())
        .env("CONFIGWATCH_TENANT", TENANT)
        .env("CONFIGWATCH_TOKEN", &token)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = async || {
        timeout(SECS_10, lines.next_line())
            .await
            .expect("a line within 10 s")
            .unwrap()
            .unwrap()
    };
    assert_eq!(next().await, format!("{flag} off (version 1) [current]"));
    w.put(flag, json!({"enabled": true})).await;
    assert_eq!(next().await, format!("{flag} on (version 2) [changed]"));
    w.put("tenant_config_unrelated", json!(1)).await;
    w.delete(flag).await;
    assert_eq!(next().await, format!("{flag} unset (off) [changed]"));

    let pid = child.id().unwrap().to_string();
    let st = tokio::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .await
        .unwrap();
    assert!(st.success());
    let exit = timeout(SECS_10, child.wait()).await.unwrap().unwrap();
    assert!(exit.success(), "{exit:?}");
}
