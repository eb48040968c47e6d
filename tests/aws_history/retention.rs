//! The history's limits: the count and the age, the current version always kept, a
//! table written before history, and a write refused whole when its history item
//! cannot be written.

use super::*;

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
