//! Long-lived Watch behaviour: resume, restart, slow consumers, progress, shutdown,
//! and token checks.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use configwatch::auth::Role;
use configwatch::hub::StateDigest;
use configwatch::proto;
use configwatch::proto::watch_response::{InitialMode, Kind};
use tonic::Code;

#[tokio::test]
async fn a_resumed_watcher_gets_exactly_the_changes_it_missed() {
    let dir = temp_dir();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client("acme", Role::Writer).await;
    put(&mut c, "tenant_config_seen", "0").await;
    let mut w = watch(&mut c, watch_prefixes(&["tenant_config_"])).await;
    let (_, done) = initial(&mut w).await;
    let token = done.resume_token.clone();
    drop(w);

    let mut expected = Vec::new();
    for i in 0..50u64 {
        let key = format!("tenant_config_k{}", i % 7);
        let e = if i % 10 == 9 {
            delete(&mut c, &key).await
        } else {
            put(&mut c, &key, &i.to_string()).await
        };
        expected.push((e.key, e.version, e.deleted));
    }
    // Not under the watched prefix: must not be replayed.
    put(&mut c, "param_config_unrelated", "\"x\"").await;

    let mut w = watch(
        &mut c,
        proto::WatchRequest {
            prefixes: vec!["tenant_config_".into()],
            resume_token: token,
            ..Default::default()
        },
    )
    .await;
    let (replayed, done) = initial(&mut w).await;
    assert_eq!(done.initial_mode, InitialMode::Resumed as i32);
    assert_eq!(
        summary(&replayed),
        expected,
        "exactly the 50 missed changes, in order"
    );

    // And the stream continues live from there.
    put(&mut c, "tenant_config_live", "1").await;
    assert_eq!(
        summary(&changes(&mut w, 1).await),
        [("tenant_config_live".into(), 1, false)]
    );
    server.stop().await;
}

#[tokio::test]
async fn after_a_restart_known_versions_get_only_the_difference() {
    let dir = temp_dir();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client("acme", Role::Writer).await;
    for i in 0..20 {
        put(&mut c, &format!("tenant_config_k{i}"), &i.to_string()).await;
    }
    let mut w = watch(&mut c, watch_prefixes(&[])).await;
    let (state, done) = initial(&mut w).await;
    let token = done.resume_token.clone();
    let known: HashMap<String, u64> = state.iter().map(|e| (e.key.clone(), e.version)).collect();
    drop((w, c));
    server.stop().await;

    // Nothing changed: the diff is empty, though the token is from another run.
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client("acme", Role::Writer).await;
    let mut w = watch(
        &mut c,
        proto::WatchRequest {
            resume_token: token.clone(),
            known_versions: known.clone(),
            ..Default::default()
        },
    )
    .await;
    let (diff, done) = initial(&mut w).await;
    assert_eq!(done.initial_mode, InitialMode::Diff as i32);
    assert!(diff.is_empty(), "nothing changed, nothing sent: {diff:?}");
    drop(w);

    // Two changes and a delete while the client is away: exactly those come back.
    put(&mut c, "tenant_config_k3", "\"changed\"").await;
    put(&mut c, "tenant_config_new", "1").await;
    delete(&mut c, "tenant_config_k7").await;
    drop(c);
    server.stop().await;
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client("acme", Role::Reader).await;
    let mut w = watch(
        &mut c,
        proto::WatchRequest {
            resume_token: token,
            known_versions: known,
            ..Default::default()
        },
    )
    .await;
    let (diff, done) = initial(&mut w).await;
    assert_eq!(done.initial_mode, InitialMode::Diff as i32);
    assert_eq!(
        summary(&diff),
        [
            ("tenant_config_k3".into(), 2, false),
            ("tenant_config_k7".into(), 2, true),
            ("tenant_config_new".into(), 1, false),
        ]
    );
    server.stop().await;
}

/// A reconnect after a restart need not upload every version: a 16-byte digest of
/// them is enough when nothing changed; when something did, the server says so
/// with ABORTED and `configwatch-resume: known-versions`, and the versions then get
/// exactly the difference. A digest that is not 16 bytes is INVALID_ARGUMENT.
#[tokio::test]
async fn after_a_restart_a_digest_of_the_versions_held_is_enough_when_nothing_changed() {
    let dir = temp_dir();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client("acme", Role::Writer).await;
    for i in 0..20 {
        put(&mut c, &format!("tenant_config_k{i}"), &i.to_string()).await;
    }
    put(&mut c, "param_config_other", "\"not watched\"").await;
    let mut w = watch(&mut c, watch_prefixes(&["tenant_config_"])).await;
    let (state, done) = initial(&mut w).await;
    let token = done.resume_token.clone();
    let known: HashMap<String, u64> = state.iter().map(|e| (e.key.clone(), e.version)).collect();
    let digest = StateDigest::of(known.iter().map(|(k, v)| (k.as_str(), *v)))
        .0
        .to_vec();
    let by_digest = |digest: Vec<u8>| proto::WatchRequest {
        prefixes: vec!["tenant_config_".into()],
        resume_token: token.clone(),
        known_digest: digest,
        ..Default::default()
    };
    drop((w, c));
    server.stop().await;

    let server = TestServer::start(dir.path()).await;
    let mut c = server.client("acme", Role::Writer).await;
    let mut w = watch(&mut c, by_digest(digest.clone())).await;
    let (diff, done) = initial(&mut w).await;
    assert_eq!(done.initial_mode, InitialMode::Diff as i32);
    assert!(diff.is_empty(), "nothing changed, nothing sent: {diff:?}");
    assert!(!done.resume_token.is_empty());
    drop(w);

    for bad in [vec![0u8; 15], vec![0u8; 32]] {
        let err = c.watch(by_digest(bad)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("known_digest"), "{}", err.message());
    }

    // A change while the client is away: the digest no longer matches.
    put(&mut c, "tenant_config_k3", "\"changed\"").await;
    drop(c);
    server.stop().await;
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client("acme", Role::Reader).await;
    let err = c.watch(by_digest(digest)).await.unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    assert_eq!(
        err.metadata()
            .get("configwatch-resume")
            .and_then(|v| v.to_str().ok()),
        Some("known-versions")
    );
    assert!(
        err.message().contains("known_versions"),
        "{}",
        err.message()
    );
    let mut w = watch(
        &mut c,
        proto::WatchRequest {
            prefixes: vec!["tenant_config_".into()],
            resume_token: token,
            known_versions: known,
            ..Default::default()
        },
    )
    .await;
    let (diff, done) = initial(&mut w).await;
    assert_eq!(done.initial_mode, InitialMode::Diff as i32);
    assert_eq!(summary(&diff), [("tenant_config_k3".into(), 2, false)]);
    server.stop().await;
}

#[tokio::test]
async fn a_stalled_watcher_neither_slows_others_nor_grows_past_one_entry_per_key() {
    const KEYS: usize = 16;
    const WRITES: usize = 1_600;
    let dir = temp_dir();
    let server = TestServer::start(dir.path()).await;
    let mut writer = server.client("acme", Role::Writer).await;
    // Separate connections, as separate services would have.
    let mut stalled_client = server.client("acme", Role::Reader).await;
    let mut fast_client = server.client("acme", Role::Reader).await;
    let mut stalled = watch(&mut stalled_client, watch_prefixes(&[])).await;
    let mut fast = watch(&mut fast_client, watch_prefixes(&[])).await;
    initial(&mut fast).await;
    // The stalled watcher reads nothing from here on.

    let payload = "x".repeat(2_000);
    let mut last = HashMap::new();
    let mut fast_cache = HashMap::new();
    for i in 0..WRITES {
        let key = format!("tenant_config_k{}", i % KEYS);
        let e = put(&mut writer, &key, &format!("\"{i}:{payload}\"")).await;
        last.insert(key, (e.version, e.value.clone()));
        // The fast watcher keeps up while the other one sits on ~3 MB of changes.
        if i % 100 == 99 {
            while fast_cache.len() < KEYS
                || last
                    .iter()
                    .any(|(k, (v, _))| fast_cache.get(k).map(|(fv, _)| fv) != Some(v))
            {
                let msg = next(&mut fast).await;
                apply(&mut fast_cache, &msg.changes);
            }
        }
    }
    assert_eq!(fast_cache, last);

    let stats = server.hub.watcher_stats();
    assert_eq!(stats.len(), 2);
    for s in &stats {
        assert!(
            s.high_water <= KEYS,
            "watcher {} held {} pending changes for {KEYS} keys",
            s.id,
            s.high_water
        );
    }
    assert!(
        stats.iter().any(|s| s.pending > 0),
        "the stalled watcher should have changes waiting: {stats:?}"
    );

    // Once it reads, the stalled watcher converges to the newest values.
    let mut stalled_cache = HashMap::new();
    let (init, _) = initial(&mut stalled).await;
    apply(&mut stalled_cache, &init);
    while stalled_cache != last {
        let msg = next(&mut stalled).await;
        apply(&mut stalled_cache, &msg.changes);
    }
    server.stop().await;
}

/// Watches whose client leaves them unread fill their connection's budget of
/// unread replies; their changes then wait in the server, coalesced, and once the
/// client reads, each Watch gets the newest value of every key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_over_a_full_connection_budget_get_the_newest_values_once_read() {
    const KEYS: usize = 16;
    const WATCHES: usize = 6;
    let dir = temp_dir();
    let options = Options {
        connections: configwatch::server::ConnectionLimits {
            reply_bytes_per_connection: 256 << 10,
            ..Default::default()
        },
        ..Options::default()
    };
    let server = TestServer::start_with(dir.path(), options).await;
    let mut writer = server.client("acme", Role::Writer).await;
    let payload = "x".repeat(20_000);
    let mut last = HashMap::new();
    for i in 0..KEYS {
        let key = format!("tenant_config_k{i}");
        let e = put(&mut writer, &key, &format!("\"{i}:{payload}\"")).await;
        last.insert(key, (e.version, e.value.clone()));
    }
    // One connection with small HTTP/2 windows: what it does not read stays in
    // the server, and its Watches' initial states (~320 KB each) exceed its budget.
    let token = server.token("acme", Role::Reader);
    let mut reader = small_window_client(server.addr, &token).await;
    let mut unread = Vec::new();
    for _ in 0..WATCHES {
        unread.push(
            reader
                .watch(watch_prefixes(&[]))
                .await
                .unwrap()
                .into_inner(),
        );
    }
    // 400 writes while nothing is read.
    for i in 0..400 {
        let key = format!("tenant_config_k{}", i % KEYS);
        let e = put(&mut writer, &key, &format!("\"w{i}:{payload}\"")).await;
        last.insert(key, (e.version, e.value.clone()));
    }
    let stats = server.hub.watcher_stats();
    assert!(
        stats.iter().all(|s| s.high_water <= KEYS),
        "changes waiting beyond one per key: {stats:?}"
    );
    assert!(
        stats.iter().filter(|s| s.pending > 0).count() >= WATCHES - 1,
        "the unread Watches should have changes waiting: {stats:?}"
    );
    // Read all of them (at once: a connection's budget is shared).
    let mut readers = Vec::new();
    for mut stream in unread {
        let last = last.clone();
        readers.push(tokio::spawn(async move {
            let mut cache = HashMap::new();
            let (init, _) = initial(&mut stream).await;
            apply(&mut cache, &init);
            while cache != last {
                let msg = next(&mut stream).await;
                apply(&mut cache, &msg.changes);
            }
        }));
    }
    for r in readers {
        r.await.unwrap();
    }
    server.stop().await;
}

#[tokio::test]
async fn an_idle_watch_gets_progress_it_can_resume_from() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(
        dir.path(),
        Options {
            progress_interval: Duration::from_millis(200),
            ..Options::default()
        },
    )
    .await;
    let mut c = server.client("acme", Role::Writer).await;
    let mut w = watch(&mut c, watch_prefixes(&["tenant_config_a"])).await;
    initial(&mut w).await;
    // Changes outside the prefix advance the revision the progress message reports.
    put(&mut c, "tenant_config_b", "1").await;
    put(&mut c, "tenant_config_b", "2").await;
    let progress = next(&mut w).await;
    assert_eq!(progress.kind, Kind::Progress as i32);
    assert!(progress.changes.is_empty());
    assert!(progress.revision >= 2, "{progress:?}");
    drop(w);
    put(&mut c, "tenant_config_a", "1").await;
    let mut w = watch(
        &mut c,
        proto::WatchRequest {
            prefixes: vec!["tenant_config_a".into()],
            resume_token: progress.resume_token,
            ..Default::default()
        },
    )
    .await;
    let (replayed, done) = initial(&mut w).await;
    assert_eq!(done.initial_mode, InitialMode::Resumed as i32);
    assert_eq!(summary(&replayed), [("tenant_config_a".into(), 1, false)]);
    server.stop().await;
}

#[tokio::test]
async fn shutdown_ends_watches_with_a_status_to_resume_from() {
    let dir = temp_dir();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client("acme", Role::Reader).await;
    let mut w = watch(&mut c, watch_prefixes(&[])).await;
    initial(&mut w).await;
    let stopping = tokio::spawn(server.stop());
    let end = tokio::time::timeout(PATIENCE, w.message())
        .await
        .expect("the watch ends promptly");
    let status = end.expect_err("a status, not a clean end");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains("resume"), "{status:?}");
    tokio::time::timeout(PATIENCE, stopping)
        .await
        .expect("server stops within the grace period")
        .unwrap();
}

/// Signs claims with the server's own key, as its own issuer (`configwatch`).
fn sign(dir: &std::path::Path, mut claims: serde_json::Value) -> String {
    claims["iss"] = serde_json::json!("configwatch");
    let pem = std::fs::read(dir.join("signing-key.pem")).unwrap();
    let key = jsonwebtoken::EncodingKey::from_ed_pem(&pem).unwrap();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA),
        &claims,
        &key,
    )
    .unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn bad_tokens_are_unauthenticated_with_a_reason() {
    let dir = temp_dir();
    let other = temp_dir();
    let server = TestServer::start(dir.path()).await;
    let foreign = TestServer::start(other.path()).await;
    let expired = sign(
        dir.path(),
        serde_json::json!({"custom:tenantId": "acme", "exp": now() - 600}),
    );
    let no_tenant = sign(dir.path(), serde_json::json!({"exp": now() + 600}));
    let bad_tenant = sign(
        dir.path(),
        serde_json::json!({"custom:tenantId": "../b", "exp": now() + 600}),
    );
    let wrong_key = foreign.token("acme", Role::Admin);
    let cases: Vec<(&str, Option<String>, Code, &str)> = vec![
        (
            "missing",
            None,
            Code::Unauthenticated,
            "missing 'authorization'",
        ),
        (
            "malformed",
            Some("abc.def".into()),
            Code::Unauthenticated,
            "malformed",
        ),
        ("expired", Some(expired), Code::Unauthenticated, "expired"),
        (
            "wrong key",
            Some(wrong_key),
            Code::Unauthenticated,
            "not one of this server's keys",
        ),
        (
            "no tenant",
            Some(no_tenant),
            Code::Unauthenticated,
            "custom:tenantId",
        ),
        (
            "bad tenant",
            Some(bad_tenant),
            Code::Unauthenticated,
            "tenant id",
        ),
    ];
    for (what, token, code, text) in cases {
        let mut c = connect(server.addr, token.as_deref()).await;
        let err = c.get(proto::GetRequest::default()).await.expect_err(what);
        assert_eq!(err.code(), code, "{what}: {err:?}");
        assert!(err.message().contains(text), "{what}: {:?}", err.message());
        let err = c
            .watch(proto::WatchRequest::default())
            .await
            .expect_err(what);
        assert_eq!(err.code(), code, "{what}: {err:?}");
    }
    // A good token still works afterwards.
    let mut c = server.client("acme", Role::Reader).await;
    c.get(proto::GetRequest::default()).await.unwrap();
    foreign.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn a_watch_ends_when_its_token_expires() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    // exp 1 s ahead: the stream ends then.
    let short = sign(
        dir.path(),
        serde_json::json!({"custom:tenantId": "acme", "exp": now() + 1}),
    );
    let mut c = connect(server.addr, Some(&short)).await;
    let mut w = watch(&mut c, watch_prefixes(&[])).await;
    initial(&mut w).await;
    let end = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match w.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the watch ends at expiry");
    let status = end.expect_err("ends with a status");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("token expired"), "{status:?}");
    server.stop().await;
}
