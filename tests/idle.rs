//! Idle views leave memory: a tenant's view dropped while nobody used it is loaded
//! again by the next use, and a Watch resumed across the drop gets everything it
//! missed, over real sockets.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use configwatch::auth::Role;
use configwatch::model::Scope;
use configwatch::proto;
use configwatch::proto::watch_response::{InitialMode, Kind};
use configwatch_test_support::wait::wait_for;

/// Drops the tenant's view once nothing holds it (a Watch that ended lets go of it
/// a moment after its stream closes), as the sweep would after the idle time.
async fn drop_view(server: &TestServer, scope: &Scope) {
    wait_for(
        PATIENCE,
        || format!("the view of {scope} to be dropped"),
        || {
            server.hub.drop_idle(Duration::ZERO);
            !server.hub.has_view(scope)
        },
    )
    .await;
    assert!(
        server.hub.scopes().is_empty(),
        "reconciliation still sees it"
    );
}

#[tokio::test]
async fn a_watch_resumed_after_its_view_was_dropped_gets_what_it_missed() {
    let dir = temp_dir();
    let server = TestServer::start(dir.path()).await;
    let scope = Scope::tenant("acme").unwrap();
    let mut c = server.client("acme", Role::Writer).await;
    put(&mut c, "tenant_config_a", "1").await;
    put(&mut c, "tenant_config_b", "2").await;

    // A client watches, takes a change, and keeps its cache and token.
    let mut w = watch(&mut c, watch_prefixes(&[])).await;
    let (entries, _) = initial(&mut w).await;
    let mut cache = HashMap::new();
    apply(&mut cache, &entries);
    put(&mut c, "tenant_config_a", "10").await;
    let token = loop {
        let msg = next(&mut w).await;
        if msg.kind == Kind::Delta as i32 {
            apply(&mut cache, &msg.changes);
            break msg.resume_token;
        }
    };
    drop(w);
    drop_view(&server, &scope).await;

    // While it is away, writes load the view again and take it past the revision
    // of the client's token.
    put(&mut c, "tenant_config_c", "3").await;
    put(&mut c, "tenant_config_a", "11").await;
    delete(&mut c, "tenant_config_b").await;
    assert!(server.hub.has_view(&scope));

    let mut w = watch(
        &mut c,
        proto::WatchRequest {
            resume_token: token,
            known_versions: cache.iter().map(|(k, (v, _))| (k.clone(), *v)).collect(),
            ..Default::default()
        },
    )
    .await;
    let (missed, done) = initial(&mut w).await;
    assert_eq!(
        done.initial_mode,
        InitialMode::Diff as i32,
        "a token from before the drop must not resume the reloaded view"
    );
    let mut got = summary(&missed);
    got.sort();
    assert_eq!(
        got,
        [
            ("tenant_config_a".into(), 3, false),
            ("tenant_config_b".into(), 2, true),
            ("tenant_config_c".into(), 1, false),
        ]
    );
    apply(&mut cache, &missed);

    // Nothing lost after it either, and the cache equals what a Get reads.
    put(&mut c, "tenant_config_d", "4").await;
    apply(&mut cache, &changes(&mut w, 1).await);
    let all = c
        .get(proto::GetRequest::default())
        .await
        .unwrap()
        .into_inner();
    let read: HashMap<String, (u64, String)> = all
        .entries
        .into_iter()
        .map(|e| (e.key, (e.version, e.value)))
        .collect();
    assert_eq!(cache, read);
    assert_eq!(cache.len(), 3);
    server.stop().await;
}
