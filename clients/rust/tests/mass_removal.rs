//! A server whose store lost its data must not wipe the caches of its clients: a
//! state that would remove everything a client holds is held back and reported,
//! unless the application accepts it; partial removals apply as usual. Against real
//! servers (see `common` for the harness).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use configwatch_client::{Client, ClientBuilder, Error, State, SyncMode, TokenSource};
use serde_json::json;

const SECS_20: Duration = Duration::from_secs(20);

/// A token source reading a slot the test replaces (a server started on a new data
/// directory signs with a new key).
fn slot_source(slot: &Arc<Mutex<String>>) -> impl TokenSource + Clone {
    let slot = slot.clone();
    move || {
        let token = slot.lock().unwrap().clone();
        async move { Ok::<_, std::convert::Infallible>(token) }
    }
}

fn builder(url: &str, slot: &Arc<Mutex<String>>) -> ClientBuilder {
    Client::builder(url, TENANT, slot_source(slot)).backoff(fast_backoff())
}

#[tokio::test]
async fn a_store_lost_on_the_server_is_held_back_and_reported_unless_the_application_accepts_it() {
    let dir = temp_dir();
    let data = dir.path().join("data");
    let mut server = Server::start(&data).await;
    let mut w = server.writer(TENANT).await;
    w.put("tenant_config_a", json!({"on": true})).await;
    w.put("tenant_config_b", json!(2)).await;
    w.put("param_config_db/url", json!("pg://db")).await;
    let before = w.state().await;
    let slot = Arc::new(Mutex::new(server.token(TENANT, "reader", "1h").await));

    // The default: hold back. With a snapshot, which must keep the entries too.
    let snapshot = dir.path().join("held.json");
    let held = builder(&server.url(), &slot)
        .snapshot_path(&snapshot)
        .snapshot_debounce(Duration::from_millis(10))
        .connect()
        .await
        .unwrap();
    // Opted in.
    let allowed = builder(&server.url(), &slot)
        .allow_mass_removal(true)
        .connect()
        .await
        .unwrap();
    // Asks the application, which says no, then yes.
    let accept = Arc::new(AtomicBool::new(false));
    let asked = Arc::new(AtomicUsize::new(0));
    let decided = {
        let (accept, asked) = (accept.clone(), asked.clone());
        builder(&server.url(), &slot)
            .on_mass_removal(move |r| {
                if (r.held, r.removed) == (3, 3) {
                    asked.fetch_add(1, Ordering::SeqCst);
                }
                accept.load(Ordering::SeqCst)
            })
            .connect()
            .await
            .unwrap()
    };
    for c in [&held, &allowed, &decided] {
        converged(c, &mut w).await;
    }
    wait_for(
        SECS_20,
        || "the snapshot to be written".into(),
        || std::fs::read_to_string(&snapshot).is_ok_and(|s| s.contains("tenant_config_b")),
    )
    .await;
    let held_changes = record(&held);
    let allowed_changes = record(&allowed);

    // The store is lost: the server restarts on the same port with an empty data
    // directory (as a store recreated on purpose does), and a new signing key.
    server.kill().await;
    std::fs::remove_dir_all(&data).unwrap();
    server.restart().await;
    *slot.lock().unwrap() = server.token(TENANT, "reader", "1h").await;

    // The default client keeps its entries, says why, is stale, and keeps trying.
    wait_for(
        SECS_20,
        || format!("a second refusal: {:?}", held.status()),
        || held.status().held_back.is_some_and(|h| h.times >= 2),
    )
    .await;
    let s = held.status();
    assert!(s.stale && !s.connected, "{s:?}");
    assert_ne!(s.state, State::Failed, "it keeps retrying: {s:?}");
    let h = s.held_back.clone().unwrap();
    assert_eq!((h.held, h.removed, h.remaining), (3, 3, 0), "{h:?}");
    assert!(matches!(h.mode, SyncMode::Diff | SyncMode::Full), "{h:?}");
    // A server that reports its store identity: the new store has a new one, so it
    // sent the full (empty) state, and the change is reported. (One that reports
    // none diffed against the versions held, and there is nothing to compare.)
    if !s.store_id.is_empty() {
        assert!(h.store_changed() && h.mode == SyncMode::Full, "{h:?}");
        let change = s.last_store_change.clone().unwrap();
        assert_eq!(change.previous, s.store_id);
        assert!(!change.current.is_empty() && change.current != s.store_id);
    }
    match &s.last_error {
        Some(Error::MassRemoval(m)) => {
            assert_eq!(m.held, 3);
            let text = m.to_string();
            assert!(
                text.contains("remove all 3 entries held") && text.contains("allow_mass_removal"),
                "{text}"
            );
        }
        other => panic!("last_error {other:?}"),
    }
    assert_eq!(cache_state(&held), before);
    assert_eq!(
        held.get::<u32>("tenant_config_b").unwrap().unwrap().value,
        2
    );
    assert!(seen(&held_changes).is_empty(), "{:?}", seen(&held_changes));
    // The snapshot still holds what the cache holds.
    assert!(
        std::fs::read_to_string(&snapshot)
            .unwrap()
            .contains("tenant_config_b")
    );

    // The client that opted in applied the removal.
    wait_for(
        SECS_20,
        || format!("the removal applied: {:?}", allowed.status()),
        || allowed.status().connected && allowed.is_empty(),
    )
    .await;
    assert!(allowed.status().held_back.is_none());
    let mut removed = seen(&allowed_changes);
    removed.sort();
    assert_eq!(
        removed.iter().filter(|c| c.ends_with('-')).count(),
        3,
        "{removed:?}"
    );

    // The deciding client held it back while the application said no...
    wait_for(
        SECS_20,
        || format!("asked twice: {:?}", decided.status()),
        || asked.load(Ordering::SeqCst) >= 2,
    )
    .await;
    assert_eq!(decided.len(), 3);
    assert!(decided.status().held_back.is_some());
    // ...and applies it once the application says yes.
    accept.store(true, Ordering::SeqCst);
    wait_for(
        SECS_20,
        || format!("the removal accepted: {:?}", decided.status()),
        || decided.status().connected && decided.is_empty(),
    )
    .await;

    // A new key in the new store does not make it a partial removal: every key held
    // is still gone, so the default client keeps holding.
    let mut w = server.writer(TENANT).await;
    w.put("tenant_config_new", json!(1)).await;
    let times = held.status().held_back.map_or(0, |h| h.times);
    wait_for(
        SECS_20,
        || format!("another refusal: {:?}", held.status()),
        || {
            held.status()
                .held_back
                .is_some_and(|h| h.times > times && h.remaining == 1)
        },
    )
    .await;
    assert_eq!(cache_state(&held), before);
    // A state that keeps one of the keys held is a partial removal: it applies.
    // (Written twice: to a server that reports no store identity, the new store's
    // version 1 would look like the version 1 held, from the old store.)
    w.put("tenant_config_a", json!({"on": null})).await;
    w.put("tenant_config_a", json!({"on": false})).await;
    converged(&held, &mut w).await;
    let s = held.status();
    assert!(s.held_back.is_none() && !s.stale, "{s:?}");
    let changes = seen(&held_changes);
    for (key, delete) in [
        ("tenant_config_b@", true),
        ("param_config_db/url@", true),
        ("tenant_config_new@", false),
    ] {
        assert!(
            changes
                .iter()
                .any(|c| c.starts_with(key) && c.ends_with('-') == delete),
            "{key} in {changes:?}"
        );
    }
    for c in [&held, &allowed, &decided] {
        converged(c, &mut w).await;
    }
}

#[tokio::test]
async fn removals_of_some_keys_apply_as_usual_and_of_all_of_them_are_held_back() {
    let dir = temp_dir();
    let mut server = Server::start(&dir.path().join("data")).await;
    let mut w = server.writer(TENANT).await;
    for k in ["tenant_config_a", "tenant_config_b", "tenant_config_c"] {
        w.put(k, json!(1)).await;
    }
    w.put("param_config_x", json!("unwatched")).await;
    let slot = Arc::new(Mutex::new(server.token(TENANT, "reader", "1h").await));
    // The token source can be held shut, so the removals land while the client is
    // away and reach it as a diff against the versions it holds.
    let (gate, _) = tokio::sync::watch::channel(true);
    let gate = Arc::new(gate);
    let source = {
        let (gate, slot) = (gate.clone(), slot.clone());
        move || {
            let (mut open, token) = (gate.subscribe(), slot.lock().unwrap().clone());
            async move {
                let _ = open.wait_for(|o| *o).await;
                Ok::<_, std::convert::Infallible>(token)
            }
        }
    };
    let client = Client::builder(server.url(), TENANT, source)
        .prefixes(["tenant_config_"])
        .backoff(fast_backoff())
        .connect()
        .await
        .unwrap();
    let changes = record(&client);
    wait_for(
        SECS_20,
        || format!("{:?}", client.status()),
        || client.len() == 3,
    )
    .await;

    // Two of three removed while the client is away (after a server restart, so
    // that the reconnection is a diff): applied.
    gate.send_replace(false);
    server.kill().await;
    server.restart().await;
    let mut w = server.writer(TENANT).await;
    w.delete("tenant_config_a").await;
    w.delete("tenant_config_b").await;
    gate.send_replace(true);
    wait_for(
        SECS_20,
        || format!("{:?} {:?}", client.keys(), client.status()),
        || client.status().connected && client.keys() == ["tenant_config_c"],
    )
    .await;
    let s = client.status();
    assert_eq!(s.last_sync_mode, Some(SyncMode::Diff), "{s:?}");
    assert!(s.held_back.is_none(), "{s:?}");
    let seen_now = seen(&changes);
    assert!(
        ["tenant_config_a@2-", "tenant_config_b@2-"]
            .iter()
            .all(|c| seen_now.iter().any(|s| s == c)),
        "{seen_now:?}"
    );

    // Deleted while connected: deltas are never held back, even of the last key.
    w.delete("tenant_config_c").await;
    wait_for(
        SECS_20,
        || format!("{:?}", client.status()),
        || client.is_empty(),
    )
    .await;
    w.put("tenant_config_d", json!(1)).await;
    wait_for(
        SECS_20,
        || format!("{:?}", client.status()),
        || client.len() == 1,
    )
    .await;

    // The only key held removed while away looks like a lost store: held back.
    gate.send_replace(false);
    server.kill().await;
    server.restart().await;
    let mut w = server.writer(TENANT).await;
    w.delete("tenant_config_d").await;
    gate.send_replace(true);
    wait_for(
        SECS_20,
        || format!("{:?}", client.status()),
        || client.status().held_back.is_some(),
    )
    .await;
    assert!(client.contains_key("tenant_config_d"));
    let s = client.status();
    assert!(s.stale, "{s:?}");
    // Written again, the key is in the server's state: no longer a removal of
    // everything held, so it applies (and the removal never reached the readers).
    w.put("tenant_config_d", json!(2)).await;
    converged_under(&client, &mut w, "tenant_config_").await;
    assert!(client.status().held_back.is_none());
    assert!(
        seen(&changes).iter().all(|c| c != "tenant_config_d@2-"),
        "{:?}",
        seen(&changes)
    );
    assert_eq!(
        client.get::<u32>("tenant_config_d").unwrap().unwrap().value,
        2
    );
}

/// Waits until the client is connected and holds the server's state under `prefix`.
async fn converged_under(client: &Client, w: &mut Writer, prefix: &str) {
    let truth: common::State = w
        .state()
        .await
        .into_iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .collect();
    wait_for(
        SECS_20,
        || {
            format!(
                "cache {:?} vs {truth:?}: {:?}",
                cache_state(client),
                client.status()
            )
        },
        || client.status().connected && cache_state(client) == truth,
    )
    .await;
}
