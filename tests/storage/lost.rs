//! A lost, replaced or recreated store: the server refuses to start, or clients see a
//! new store identity and get the full state.

use super::*;

#[tokio::test]
async fn a_lost_database_stops_the_server_and_new_store_starts_one_that_clients_notice() {
    let dir = temp_dir();
    let db = dir.path().join(DB_FILE);
    let server = ServerProcess::start(serve_command(dir.path(), &[])).await;
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
    server.kill9().await;
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
    let server = ServerProcess::start(serve_command(dir.path(), &[])).await;
    let mut c = connect(server.addr, Some(&t)).await;
    let again = get_all(&mut c).await.unwrap();
    assert_eq!(again.store_id, before.store_id);
    assert_eq!(again.entries.len(), 3);
    server.kill9().await;

    // Started afresh on purpose: a new identity, and a client that comes back with
    // the old store's token and versions gets the full (empty) state, with no
    // removals that would wipe its cache.
    std::fs::remove_file(&db).unwrap();
    let server = ServerProcess::start(serve_command(dir.path(), &["--new-store"])).await;
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
    server.kill9().await;
}

#[tokio::test]
async fn a_watch_naming_another_store_gets_the_full_state_and_its_own_resumes() {
    let dir = temp_dir();
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
    let moto = configwatch_test_support::moto::Moto::start();
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
