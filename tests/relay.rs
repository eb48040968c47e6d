//! Relay mode as a user runs it: an origin, a relay of it and a relay of that relay,
//! each a `configwatch serve` process on 127.0.0.1.
//!
//! - Writes through either relay reach the origin (with the caller's token) and
//!   every tier serves them, with the origin's store identity; watchers on the last
//!   tier see changes made at the origin; each relay holds one upstream Watch per
//!   scope, however many clients watch it.
//! - A relay cut off from its origin keeps serving, tells its watchers (and the
//!   relay below it, and that relay's watchers) at once since when, says it on Get,
//!   and is not ready after the grace; once the origin is back, the changes made
//!   meanwhile arrive, the mark clears, and the relays resume by digest, not by a
//!   full resend.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use configwatch::auth::Role;
use configwatch::auth::local::{KEY_FILE, LocalKey};
use configwatch::proto;
use configwatch::proto::watch_response::Kind;
use configwatch_test_support::{CutProxy, PATIENCE, Scrape, ServerProcess, eventually, http_get};

/// How long a relay may take to come back: its reconnects back off up to 10 s.
const RECOVERY: Duration = Duration::from_secs(30);

/// Waits until `cond` gives true; panics naming `what` after `within`.
async fn wait_until<F, Fut>(within: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually(
        within,
        || what.to_owned(),
        || {
            let fut = cond();
            async move { fut.await.then_some(()) }
        },
    )
    .await
}

/// A relay of `upstream` with its data directory under `dir/name`: the origin's
/// signing key copied in, and a relay token in a file.
async fn relay(dir: &Path, name: &str, upstream: &str, extra: &[&str]) -> ServerProcess {
    let data = dir.join(name);
    std::fs::create_dir_all(&data).unwrap();
    std::fs::copy(dir.join("origin").join(KEY_FILE), data.join(KEY_FILE)).unwrap();
    let token_file = data.join("relay.token");
    let (key, _) = LocalKey::load_or_create(&dir.join("origin")).unwrap();
    let token = key
        .issue_relay(Duration::from_secs(600), "relay-test")
        .unwrap();
    std::fs::write(&token_file, token).unwrap();
    let mut args = vec![
        "--upstream",
        upstream,
        "--upstream-token-file",
        token_file.to_str().unwrap(),
        "--admin-listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    ServerProcess::start(serve_command(&data, &args)).await
}

async fn origin(dir: &Path) -> ServerProcess {
    let data = dir.join("origin");
    std::fs::create_dir_all(&data).unwrap();
    ServerProcess::start(serve_command(&data, &["--admin-listen", "127.0.0.1:0"])).await
}

fn tenant_watch() -> proto::WatchRequest {
    proto::WatchRequest::default()
}

/// The next message that is not an initial one (a delta or progress).
async fn after_initial(
    stream: &mut tonic::Streaming<proto::WatchResponse>,
) -> proto::WatchResponse {
    loop {
        let msg = next(stream).await;
        if msg.kind != Kind::Initial as i32 {
            return msg;
        }
    }
}

/// Messages until one satisfies `done`; panics after the suite's patience.
async fn until(
    stream: &mut tonic::Streaming<proto::WatchResponse>,
    within: Duration,
    what: &str,
    mut done: impl FnMut(&proto::WatchResponse) -> bool,
) -> proto::WatchResponse {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let msg = tokio::time::timeout(left, stream.message())
            .await
            .unwrap_or_else(|_| panic!("no message {what} within {within:?}"))
            .expect("the stream stays open")
            .expect("the stream stays open");
        if done(&msg) {
            return msg;
        }
    }
}

fn millis(t: &prost_types::Timestamp) -> i64 {
    t.seconds * 1000 + i64::from(t.nanos) / 1_000_000
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test]
async fn three_tiers_serve_writes_reads_and_watches_with_one_upstream_watch_per_scope() {
    let dir = temp_dir();
    let origin = origin(dir.path()).await;
    let r1 = relay(dir.path(), "r1", &origin.url(), &[]).await;
    let r2 = relay(dir.path(), "r2", &r1.url(), &[]).await;
    let writer = token(&dir.path().join("origin"), "acme", Role::Writer);
    let reader = token(&dir.path().join("origin"), "acme", Role::Reader);
    let other = token(&dir.path().join("origin"), "globex", Role::Writer);

    // A write through the last tier is made at the origin, as the writer.
    let mut via_r2 = connect(r2.addr, Some(&writer)).await;
    let written = put(&mut via_r2, "tenant_config_checkout", r#"{"enabled":true}"#).await;
    assert_eq!(written.version, 1);
    assert!(
        written.revision > 0,
        "the relay's own revision: {written:?}"
    );
    let mut at_origin = connect(origin.addr, Some(&writer)).await;
    let there = get_keys(&mut at_origin, &["tenant_config_checkout"]).await;
    assert_eq!(there.entries[0].value, r#"{"enabled":true}"#);
    let store_id = there.store_id.clone();
    assert!(!store_id.is_empty());

    // Every tier serves it, with the origin's store identity and no cut-off mark.
    for server in [&r1, &r2] {
        let mut c = connect(server.addr, Some(&reader)).await;
        let got = get_keys(&mut c, &["tenant_config_checkout"]).await;
        assert_eq!(got.entries.len(), 1, "{got:?}");
        assert_eq!(got.entries[0].version, 1);
        assert_eq!(got.store_id, store_id);
        assert!(got.disconnected_since.is_none());
    }

    // Many watchers on the last tier, two tenants: one upstream Watch per scope.
    let mut watchers = Vec::new();
    for _ in 0..6 {
        let mut c = connect(r2.addr, Some(&reader)).await;
        let mut stream = watch(&mut c, tenant_watch()).await;
        let first = next(&mut stream).await;
        assert_eq!(first.store_id, store_id);
        watchers.push((c, stream));
    }
    let mut g = connect(r2.addr, Some(&other)).await;
    put(&mut g, "tenant_config_x", "1").await;
    let mut globex = watch(&mut g, tenant_watch()).await;
    next(&mut globex).await;
    for server in [&r1, &r2] {
        let admin = server.admin.unwrap();
        wait_until(PATIENCE, "one upstream Watch per scope", || async move {
            Scrape::take(admin)
                .await
                .value("configwatch_relay_upstream_watches")
                == 2.0
        })
        .await;
    }
    // A relay reads no AWS source: it exports its upstream's health, not the
    // stream's or the queue's counters.
    let relay_metrics = Scrape::take(r1.admin.unwrap()).await;
    assert!(
        relay_metrics
            .series
            .contains_key(r#"configwatch_source_up{source="upstream"}"#)
    );
    assert!(
        !relay_metrics.text.contains("configwatch_stream_records")
            && !relay_metrics.text.contains("configwatch_sqs_"),
        "{}",
        relay_metrics.text
    );
    let origin_admin = origin.admin.unwrap();
    let streams = Scrape::take(origin_admin)
        .await
        .value("configwatch_watch_streams_open");
    assert_eq!(streams, 2.0, "the origin holds R1's two Watches only");

    // A change at the origin reaches every watcher on the last tier.
    put(
        &mut at_origin,
        "tenant_config_checkout",
        r#"{"enabled":false}"#,
    )
    .await;
    for (_, stream) in &mut watchers {
        let delta = after_initial(stream).await;
        assert_eq!(delta.kind, Kind::Delta as i32, "{delta:?}");
        assert_eq!(delta.changes[0].version, 2);
        assert_eq!(delta.changes[0].value, r#"{"enabled":false}"#);
    }
    // A delete through the first relay, seen on the last.
    let mut via_r1 = connect(r1.addr, Some(&writer)).await;
    let gone = delete(&mut via_r1, "tenant_config_checkout").await;
    assert!(gone.deleted && gone.version == 3);
    let (_, stream) = &mut watchers[0];
    let removal = after_initial(stream).await;
    assert!(removal.changes[0].deleted, "{removal:?}");
}

#[tokio::test]
async fn a_cut_off_relay_says_so_down_the_tree_and_resumes_by_digest_when_its_origin_is_back() {
    let dir = temp_dir();
    let origin = origin(dir.path()).await;
    let cut = CutProxy::start(origin.addr).await;
    let r1 = relay(dir.path(), "r1", &cut.url(), &["--source-down-grace", "1s"]).await;
    let r2 = relay(dir.path(), "r2", &r1.url(), &[]).await;
    let writer = token(&dir.path().join("origin"), "acme", Role::Writer);
    let reader = token(&dir.path().join("origin"), "acme", Role::Reader);
    let mut at_origin = connect(origin.addr, Some(&writer)).await;
    for i in 0..50 {
        put(
            &mut at_origin,
            &format!("tenant_config_k{i:02}"),
            &format!("{i}"),
        )
        .await;
    }
    let mut on_r1 = connect(r1.addr, Some(&reader)).await;
    let mut w1 = watch(&mut on_r1, tenant_watch()).await;
    let mut on_r2 = connect(r2.addr, Some(&reader)).await;
    let mut w2 = watch(&mut on_r2, tenant_watch()).await;
    for w in [&mut w1, &mut w2] {
        let first = until(w, PATIENCE, "completing the initial state", |m| {
            m.initial_complete
        })
        .await;
        assert!(first.disconnected_since.is_none());
    }
    let r1_admin = r1.admin.unwrap();
    let before = Scrape::take(r1_admin).await;
    assert_eq!(
        before.value(r#"configwatch_relay_upstream_syncs_total{mode="full"}"#),
        1.0
    );

    // The origin is lost: both tiers' watchers are told, since about now.
    let lost_at = now_ms();
    cut.cut();
    for (w, tier) in [(&mut w1, "R1"), (&mut w2, "R2")] {
        let told = until(w, PATIENCE, "saying the relay is cut off", |m| {
            m.disconnected_since.is_some()
        })
        .await;
        assert_eq!(told.kind, Kind::Progress as i32, "{tier}: {told:?}");
        let since = millis(told.disconnected_since.as_ref().unwrap());
        assert!(
            (lost_at - 1000..=now_ms()).contains(&since),
            "{tier}: cut off since {since}, lost at {lost_at}"
        );
    }
    // Get says it too, and still serves what it holds.
    let got = get_keys(&mut on_r2, &["tenant_config_k07"]).await;
    assert_eq!(got.entries[0].value, "7");
    assert!(got.disconnected_since.is_some());
    // Not ready once the grace has passed; alive all along.
    wait_until(
        PATIENCE,
        "the relay to say it is not ready",
        || async move { http_get(r1_admin, "/readyz").await.status == 503 },
    )
    .await;
    assert_eq!(http_get(r1_admin, "/healthz").await.status, 200);

    // Changes while cut off arrive once the origin is back, and the mark clears.
    put(&mut at_origin, "tenant_config_k03", "\"changed\"").await;
    delete(&mut at_origin, "tenant_config_k04").await;
    cut.restore();
    for (w, tier) in [(&mut w1, "R1"), (&mut w2, "R2")] {
        let mut changed = false;
        let mut deleted = false;
        until(
            w,
            RECOVERY,
            "bringing the changes and clearing the mark",
            |m| {
                for e in &m.changes {
                    changed |= e.key == "tenant_config_k03" && e.value == "\"changed\"";
                    deleted |= e.key == "tenant_config_k04" && e.deleted;
                }
                changed && deleted && m.disconnected_since.is_none()
            },
        )
        .await;
        assert!(changed && deleted, "{tier}");
    }
    wait_until(RECOVERY, "the relay to be ready again", || async move {
        http_get(r1_admin, "/readyz").await.status == 200
    })
    .await;
    let after = Scrape::take(r1_admin).await;
    assert_eq!(
        after.delta(
            &before,
            r#"configwatch_relay_upstream_syncs_total{mode="full"}"#
        ),
        0.0,
        "no full resend after a short cut"
    );
    assert!(
        after.delta(
            &before,
            r#"configwatch_relay_upstream_syncs_total{mode="diff"}"#
        ) + after.delta(
            &before,
            r#"configwatch_relay_upstream_syncs_total{mode="resumed"}"#
        ) >= 1.0
    );
    // The relay's clients were never resent anything: they only got deltas.
    let got = get_keys(&mut on_r2, &["tenant_config_k03", "tenant_config_k04"]).await;
    assert_eq!(got.entries.len(), 1);
    assert_eq!(got.missing_keys, vec!["tenant_config_k04".to_owned()]);
    assert!(got.disconnected_since.is_none());
}

#[tokio::test]
async fn a_relay_that_cannot_reach_any_upstream_answers_unavailable_and_says_why() {
    let dir = temp_dir();
    let origin = origin(dir.path()).await;
    let dead = CutProxy::start(origin.addr).await;
    dead.cut();
    let r1 = relay(
        dir.path(),
        "r1",
        &dead.url(),
        &["--upstream-load-timeout", "2s"],
    )
    .await;
    let reader = token(&dir.path().join("origin"), "acme", Role::Reader);
    let mut c = connect(r1.addr, Some(&reader)).await;
    let refused = c
        .get(proto::GetRequest::default())
        .await
        .expect_err("no upstream");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("upstream"),
        "{}",
        refused.message()
    );
    let admin = r1.admin.unwrap();
    assert_eq!(http_get(admin, "/readyz").await.status, 503);
    // Once it can, it serves.
    dead.restore();
    wait_until(RECOVERY, "the relay to serve", || {
        let mut c = c.clone();
        async move { c.get(proto::GetRequest::default()).await.is_ok() }
    })
    .await;
}
