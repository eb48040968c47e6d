//! Paged Get: every page of one revision or a clear refusal, bounded pages, and
//! page tokens that cannot be forged or reused for another request.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use configwatch::api::Limits;
use configwatch::auth::Role;
use configwatch::proto;
use prost::Message as _;
use tonic::Code;

async fn server_with(dir: &std::path::Path, limits: Limits, history: usize) -> TestServer {
    TestServer::start_with(
        dir,
        Options {
            limits,
            history,
            ..Options::default()
        },
    )
    .await
}

fn prefix_page(prefix: &str, limit: u32, page_token: &str) -> proto::GetRequest {
    proto::GetRequest {
        prefixes: vec![prefix.into()],
        limit,
        page_token: page_token.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn pages_serve_one_revision_and_refuse_when_later_keys_change() {
    let dir = temp_dir();
    let server = server_with(dir.path(), Limits::default(), 4096).await;
    let mut c = server.client("acme", Role::Writer).await;
    for i in 0..25 {
        put(&mut c, &format!("tenant_config_p/k{i:02}"), "1").await;
    }
    put(&mut c, "param_config_other", "\"x\"").await;

    let first = c
        .get(prefix_page("tenant_config_p/", 10, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.entries.len(), 10);
    assert!(!first.next_page_token.is_empty());
    // Changes to keys already returned, or outside the request, do not matter.
    put(&mut c, "tenant_config_p/k03", "2").await;
    put(&mut c, "param_config_other", "\"y\"").await;
    let second = c
        .get(prefix_page("tenant_config_p/", 10, &first.next_page_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.revision, first.revision);
    assert_eq!(second.resume_token, first.resume_token);
    assert_eq!(second.entries[0].key, "tenant_config_p/k10");
    assert!(second.entries.iter().all(|e| e.revision <= first.revision));
    // A change after the cursor: the next page would mix two states.
    put(&mut c, "tenant_config_p/k24", "2").await;
    let refused = c
        .get(prefix_page("tenant_config_p/", 10, &second.next_page_token))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Aborted, "{refused:?}");
    assert!(
        refused.message().contains("without page_token"),
        "{refused:?}"
    );

    // Started again, the pages cover every key once, in order, at one revision.
    let mut keys = Vec::new();
    let mut token = String::new();
    let mut revision = None;
    loop {
        let page = c
            .get(prefix_page("tenant_config_p/", 7, &token))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(*revision.get_or_insert(page.revision), page.revision);
        keys.extend(page.entries.into_iter().map(|e| e.key));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let want: Vec<String> = (0..25)
        .map(|i| format!("tenant_config_p/k{i:02}"))
        .collect();
    assert_eq!(keys, want);
    server.stop().await;
}

#[tokio::test]
async fn a_page_is_refused_when_the_history_no_longer_reaches_its_revision() {
    let dir = temp_dir();
    let server = server_with(dir.path(), Limits::default(), 4).await;
    let mut c = server.client("acme", Role::Writer).await;
    for i in 0..6 {
        put(&mut c, &format!("tenant_config_h/k{i}"), "1").await;
    }
    let first = c
        .get(prefix_page("tenant_config_h/", 2, ""))
        .await
        .unwrap()
        .into_inner();
    // Enough changes (to a key already returned) that the history forgets the
    // first page's revision: the server can no longer tell, so it refuses.
    for v in 0..6 {
        put(&mut c, "tenant_config_h/k0", &v.to_string()).await;
    }
    let refused = c
        .get(prefix_page("tenant_config_h/", 2, &first.next_page_token))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Aborted, "{refused:?}");
    server.stop().await;
}

#[tokio::test]
async fn page_tokens_are_checked_and_bound_to_their_request() {
    let dir = temp_dir();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client("acme", Role::Writer).await;
    for i in 0..3 {
        put(&mut c, &format!("tenant_config_t/k{i}"), "1").await;
    }
    let first = c
        .get(prefix_page("tenant_config_t/", 1, ""))
        .await
        .unwrap()
        .into_inner();
    let token = first.next_page_token;

    let mut tampered: Vec<char> = token.chars().collect();
    let i = tampered.len() / 2;
    tampered[i] = if tampered[i] == 'A' { 'B' } else { 'A' };
    let tampered: String = tampered.into_iter().collect();
    for bad in [tampered.as_str(), "not a page token", "AAAA"] {
        let e = c
            .get(prefix_page("tenant_config_t/", 1, bad))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad}: {e:?}");
        assert!(e.message().contains("page_token"), "{e:?}");
    }
    // The same token with other prefixes, or from another tenant.
    let e = c
        .get(prefix_page("tenant_config_", 1, &token))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let mut other = server.client("globex", Role::Reader).await;
    let e = other
        .get(prefix_page("tenant_config_t/", 1, &token))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    // The right request continues.
    let second = c
        .get(prefix_page("tenant_config_t/", 1, &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.entries[0].key, "tenant_config_t/k1");
    server.stop().await;
}

#[tokio::test]
async fn pages_stop_at_the_byte_bound_and_missing_keys_are_reported_by_page() {
    let dir = temp_dir();
    let limits = Limits {
        page_bytes: 1 << 20,
        ..Limits::default()
    };
    let server = server_with(dir.path(), limits, 4096).await;
    let mut c = server.client("acme", Role::Writer).await;
    let big = format!("\"{}\"", "v".repeat(300_000));
    for i in 0..10 {
        put(&mut c, &format!("tenant_config_b/k{i}"), &big).await;
    }
    let mut pages = 0;
    let mut entries = 0;
    let mut token = String::new();
    loop {
        let page = c
            .get(prefix_page("tenant_config_b/", 0, &token))
            .await
            .unwrap()
            .into_inner();
        assert!(
            page.encoded_len() < (1 << 20) + (64 << 10),
            "a page of {} bytes",
            page.encoded_len()
        );
        pages += 1;
        entries += page.entries.len();
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(entries, 10);
    assert!(pages >= 4, "{pages} pages");

    // Keys across pages: each page names the missing ones it covers, once.
    let keys: Vec<String> = ["k0", "k0x", "k1", "k2", "k9", "k9x"]
        .iter()
        .map(|k| format!("tenant_config_b/{k}"))
        .collect();
    let mut missing = Vec::new();
    let mut found = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .get(proto::GetRequest {
                keys: keys.clone(),
                limit: 2,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        missing.extend(page.missing_keys);
        found.extend(page.entries.into_iter().map(|e| e.key));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(
        missing,
        ["tenant_config_b/k0x", "tenant_config_b/k9x"],
        "found {found:?}"
    );
    assert_eq!(found.len(), 4);
    server.stop().await;
}

/// `configwatch get` follows the pages: every entry once, in order.
#[tokio::test]
async fn the_command_line_get_reads_every_page() {
    let dir = temp_dir();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client("acme", Role::Writer).await;
    for i in 0..30 {
        put(
            &mut c,
            &format!("tenant_config_cli/k{i:02}"),
            &i.to_string(),
        )
        .await;
    }
    let token = server.token("acme", Role::Reader);
    let url = server.url();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(BIN)
            .args(["get", "--prefix", "tenant_config_cli/", "--page-size", "7"])
            .env("CONFIGWATCH_SERVER", url)
            .env("CONFIGWATCH_TOKEN", token)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let keys: Vec<&str> = lines.iter().map(|l| l["key"].as_str().unwrap()).collect();
    let want: Vec<String> = (0..30)
        .map(|i| format!("tenant_config_cli/k{i:02}"))
        .collect();
    assert_eq!(keys, want);
    assert_eq!(lines[29]["value"], 29);
    server.stop().await;
}
