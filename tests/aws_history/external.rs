//! Changes by another tool next to writes through configwatch: all recorded, the
//! external ones once between two origins, superseded versions expiring, and no
//! history item ever loaded or watched.

use super::*;

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
                max_bytes: usize::MAX,
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
                max_bytes: usize::MAX,
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
