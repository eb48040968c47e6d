//! The History call: five writes by two writers listed newest first with who, where,
//! why and what they replaced; pages; one version; Get's rights (other tenants and
//! services refused, a reader may list); escaping keys and bad reasons refused.

use super::*;

const KEY: &str = "tenant_config_limits";

#[tokio::test]
async fn every_write_is_listed_with_its_writer_reason_instance_and_previous_version() {
    let dir = temp_dir();
    let server = server(dir.path(), &[]).await;
    let mut alice = client_of(
        &server,
        &token_of(dir.path(), "acme", None, Role::Writer, "alice"),
    )
    .await;
    let mut bob = client_of(
        &server,
        &token_of(dir.path(), "acme", None, Role::Admin, "bob"),
    )
    .await;
    for n in 1..=5u64 {
        let (who, reason) = if n % 2 == 1 {
            (&mut alice, format!("alice's change {n}"))
        } else {
            (&mut bob, format!("bob's change {n}"))
        };
        let v = put_because(who, KEY, &format!("{{\"max\":{n}}}"), &reason).await;
        assert_eq!(v, n);
    }
    // A reader may list history too.
    let mut reader = client_of(
        &server,
        &token_of(dir.path(), "acme", None, Role::Reader, "carol"),
    )
    .await;
    let versions = all_versions(&mut reader, KEY).await;
    assert_eq!(numbers(&versions), vec![5, 4, 3, 2, 1]);
    for v in &versions {
        let n = v.version;
        let (subject, reason) = if n % 2 == 1 {
            ("alice", format!("alice's change {n}"))
        } else {
            ("bob", format!("bob's change {n}"))
        };
        assert_eq!(v.subject, subject, "{v:?}");
        assert_eq!(v.reason, reason);
        assert_eq!(v.instance, INSTANCE);
        assert_eq!(v.source, "api");
        assert_eq!(
            v.client_id, "",
            "the server's own tokens name no app client"
        );
        assert_eq!(v.previous_version, n - 1);
        assert_eq!(v.value, format!("{{\"max\":{n}}}"));
        assert!(v.written_at.is_some() && !v.deleted && !v.secret);
    }

    // Pages of two, each older than the last.
    let mut pages = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = history(
            &mut reader,
            proto::HistoryRequest {
                key: KEY.into(),
                page_size: 2,
                page_token,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        pages.push(numbers(&page.versions));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(pages, vec![vec![5, 4], vec![3, 2], vec![1]]);

    // One version; one that was never written.
    let one = one_version(&mut reader, KEY, 2).await.unwrap();
    assert_eq!(numbers(&one.versions), vec![2]);
    assert_eq!(one.versions[0].value, "{\"max\":2}");
    let missing = one_version(&mut reader, KEY, 9).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");
    assert!(missing.message().contains("version 9"), "{missing:?}");

    // A delete is a version too; a key never written has no history.
    delete(&mut alice, KEY).await;
    let versions = all_versions(&mut reader, KEY).await;
    assert_eq!(numbers(&versions)[..2], [6, 5]);
    assert!(versions[0].deleted && versions[0].value.is_empty());
    assert!(
        all_versions(&mut reader, "tenant_config_never")
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn another_tenants_or_services_history_is_never_readable() {
    let dir = temp_dir();
    let server = server(dir.path(), &[]).await;
    let mut acme = client_of(
        &server,
        &token_of(dir.path(), "acme", None, Role::Writer, "a"),
    )
    .await;
    put_because(&mut acme, KEY, "1", "first").await;
    let mut other = client_of(
        &server,
        &token_of(dir.path(), "globex", None, Role::Admin, "g"),
    )
    .await;
    let refused = named(&mut other, "acme", "", KEY).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert!(refused.message().contains("'acme'"), "{refused:?}");
    // Its own tenant's key of the same name is another key: nothing there.
    assert!(all_versions(&mut other, KEY).await.is_empty());

    // A service's token sees its service's history, and no other service's.
    let mut billing = client_of(
        &server,
        &token_of(dir.path(), "acme", Some("billing"), Role::Writer, "b"),
    )
    .await;
    put_because(&mut billing, KEY, "2", "billing's own").await;
    let own = all_versions(&mut billing, KEY).await;
    assert_eq!(
        (numbers(&own), own[0].reason.as_str()),
        (vec![1], "billing's own")
    );
    let refused = named(&mut billing, "", "shipping", KEY).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert!(refused.message().contains("'shipping'"), "{refused:?}");
}

#[tokio::test]
async fn escaping_keys_and_bad_reasons_are_refused() {
    let dir = temp_dir();
    let server = server(dir.path(), &[]).await;
    let mut c = client_of(
        &server,
        &token_of(dir.path(), "acme", None, Role::Writer, "a"),
    )
    .await;
    for key in [
        "tenant_config_../x",
        "param_config_a/../../b",
        "other_key",
        "",
    ] {
        let refused = history(
            &mut c,
            proto::HistoryRequest {
                key: key.into(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
        assert_eq!(
            refused.code(),
            tonic::Code::InvalidArgument,
            "{key}: {refused:?}"
        );
    }
    let long = "x".repeat(257);
    let refused = c
        .put(proto::PutRequest {
            key: KEY.into(),
            value: "1".into(),
            reason: long,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("256"), "{refused:?}");
    let refused = c
        .delete(proto::DeleteRequest {
            key: KEY.into(),
            reason: "two\nlines".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    // Nothing was written.
    assert!(all_versions(&mut c, KEY).await.is_empty());
}

#[tokio::test]
async fn history_calls_are_counted_by_status() {
    let dir = temp_dir();
    let server = server(dir.path(), &["--admin-listen", "127.0.0.1:0"]).await;
    let admin = server.admin.expect("admin listener");
    let mut c = client_of(
        &server,
        &token_of(dir.path(), "acme", None, Role::Reader, "r"),
    )
    .await;
    let before = configwatch_test_support::Scrape::take(admin).await;
    all_versions(&mut c, KEY).await;
    let missing = one_version(&mut c, KEY, 1).await;
    assert_eq!(missing.unwrap_err().code(), tonic::Code::NotFound);
    let after = configwatch_test_support::Scrape::take(admin).await;
    after.assert_moved(
        &before,
        &[
            (
                r#"configwatch_rpc_calls_total{method="History",code="OK"}"#,
                1.0,
            ),
            (
                r#"configwatch_rpc_calls_total{method="History",code="NOT_FOUND"}"#,
                1.0,
            ),
            (
                r#"configwatch_rpc_latency_seconds_count{method="History"}"#,
                2.0,
            ),
        ],
    );
}

/// A page of large values is cut at the reply's bytes (`--get-page-bytes`), as a
/// Get page is, whatever `page_size` asks: the next page token goes on from there,
/// and every version is still listed once.
#[tokio::test]
async fn a_page_of_large_values_stays_within_the_reply_bytes() {
    let dir = temp_dir();
    let server = server(dir.path(), &["--get-page-bytes", "65536"]).await;
    let mut alice = client_of(
        &server,
        &token_of(dir.path(), "acme", None, Role::Writer, "alice"),
    )
    .await;
    let big = |n: u64| format!("\"{}{n}\"", "x".repeat(30_000));
    for n in 1..=6u64 {
        assert_eq!(put_because(&mut alice, KEY, &big(n), "big").await, n);
    }
    let first = history(
        &mut alice,
        proto::HistoryRequest {
            key: KEY.into(),
            page_size: 100,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let bytes: usize = first.versions.iter().map(|v| v.value.len()).sum();
    assert!(
        first.versions.len() < 6 && bytes < 100_000,
        "{} versions, {bytes} bytes",
        first.versions.len()
    );
    assert!(!first.next_page_token.is_empty());
    let mut versions = first.versions;
    let mut token = first.next_page_token;
    while !token.is_empty() {
        let page = history(
            &mut alice,
            proto::HistoryRequest {
                key: KEY.into(),
                page_size: 100,
                page_token: token,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        versions.extend(page.versions);
        token = page.next_page_token;
    }
    assert_eq!(numbers(&versions), vec![6, 5, 4, 3, 2, 1]);
    assert!(
        versions
            .iter()
            .zip((1..=6u64).rev())
            .all(|(v, n)| v.value == big(n))
    );
}
