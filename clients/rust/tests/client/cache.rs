//! The cache: bootstrap then deltas, snapshots of another tenant or prefixes,
//! resume tokens the server cannot read, secrets read on demand, slow readers.

use super::*;

#[tokio::test]
async fn bootstrap_then_deltas_then_a_delete() {
    let dir = temp_dir();
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
async fn a_snapshot_of_another_tenant_or_other_prefixes_is_ignored() {
    let dir = temp_dir();
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
    let dir = temp_dir();
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
    let dir = temp_dir();
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
async fn a_slow_reader_gets_the_newest_change_per_key() {
    let dir = temp_dir();
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
