//! Servers restarted or down at start, tokens that expire, refused requests.

use super::*;

#[tokio::test]
async fn server_restarted_mid_stream_the_cache_converges_by_itself() {
    let dir = temp_dir();
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
    let dir = temp_dir();
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
    let dir = temp_dir();
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
async fn a_refused_request_is_a_typed_error_and_does_not_spin() {
    let dir = temp_dir();
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
