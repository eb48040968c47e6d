//! The store identity, against a scripted fake server over a real socket (the real
//! server may not report one): remembered from the initial state, sent back as
//! `known_store_id`, reported when the server's differs, kept in the snapshot, and
//! an empty one taken as unknown.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod fake;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{fast_backoff, temp_dir, wait_for};
use configwatch_client::{Client, Error, SyncMode, static_token};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use api::watch_response::{InitialMode, Kind};
use fake::api;

const SECS_10: Duration = Duration::from_secs(10);

/// What the fake server answers to a Watch.
#[derive(Clone)]
struct Answer {
    mode: InitialMode,
    store_id: &'static str,
    entries: Vec<(&'static str, u64, &'static str)>,
}

#[derive(Default)]
struct Script {
    answer: Option<Answer>,
    /// `known_store_id` of each Watch, in order.
    requests: Vec<String>,
    open: Vec<mpsc::Sender<Result<api::WatchResponse, Status>>>,
}

#[derive(Clone, Default)]
struct Fake(Arc<Mutex<Script>>);

impl Fake {
    fn serve(&self, answer: Answer) {
        self.0.lock().unwrap().answer = Some(answer);
    }

    /// Ends every open stream (cleanly): the client reconnects.
    fn end_streams(&self) {
        self.0.lock().unwrap().open.clear();
    }

    fn requests(&self) -> Vec<String> {
        self.0.lock().unwrap().requests.clone()
    }

    /// Answers a Watch with the scripted initial state, and keeps the stream open.
    fn watch(&self, request: api::WatchRequest) -> Result<fake::Stream, Status> {
        let mut script = self.0.lock().unwrap();
        script.requests.push(request.known_store_id.clone());
        let n = script.requests.len() as u64;
        let answer = script.answer.clone().unwrap();
        let (tx, rx) = mpsc::channel(4);
        tx.try_send(Ok(api::WatchResponse {
            kind: Kind::Initial as i32,
            initial_mode: answer.mode as i32,
            changes: answer
                .entries
                .iter()
                .map(|(key, version, value)| api::Entry {
                    key: (*key).into(),
                    version: *version,
                    value: (*value).into(),
                    revision: n,
                    ..Default::default()
                })
                .collect(),
            initial_complete: true,
            revision: n,
            resume_token: format!("token-{n}"),
            disconnected_since: None,
            store_id: answer.store_id.into(),
        }))
        .unwrap();
        script.open.push(tx);
        Ok(ReceiverStream::new(rx))
    }
}

#[tokio::test]
async fn the_store_identity_is_remembered_sent_back_reported_when_it_changes_and_snapshotted() {
    let fake = Fake::default();
    let a1 = ("tenant_config_a", 1, "1");
    let b1 = ("tenant_config_b", 1, "2");
    fake.serve(Answer {
        mode: InitialMode::Full,
        store_id: "S1",
        entries: vec![a1, b1],
    });
    let url = fake::start(fake::WatchOnly({
        let fake = fake.clone();
        move |request| fake.watch(request)
    }))
    .await;
    let dir = temp_dir();
    let snapshot = dir.path().join("snap.json");
    let builder = || {
        Client::builder(&url, "acme", static_token("token"))
            .backoff(fast_backoff())
            .snapshot_path(&snapshot)
            .snapshot_debounce(Duration::from_millis(10))
    };
    let client = builder().connect().await.unwrap();
    assert_eq!(client.status().store_id, "S1");
    assert_eq!(fake.requests(), [""]);

    // The store is recreated: a new identity, and nothing in it. The identity held
    // is sent back, the new one reported, and the empty state held back.
    fake.serve(Answer {
        mode: InitialMode::Full,
        store_id: "S2",
        entries: vec![],
    });
    fake.end_streams();
    wait_for(
        SECS_10,
        || format!("{:?}", client.status()),
        || client.status().held_back.is_some_and(|h| h.times >= 2),
    )
    .await;
    assert!(
        fake.requests()[1..].iter().all(|r| r == "S1"),
        "{:?}",
        fake.requests()
    );
    let s = client.status();
    let held = s.held_back.clone().unwrap();
    assert!(held.store_changed(), "{held:?}");
    assert_eq!(held.mode, SyncMode::Full);
    assert_eq!(
        (held.held_store_id.as_str(), held.server_store_id.as_str()),
        ("S1", "S2")
    );
    assert_eq!(s.store_id, "S1", "the identity of the state held");
    let change = s.last_store_change.clone().unwrap();
    assert_eq!(
        (change.previous.as_str(), change.current.as_str()),
        ("S1", "S2")
    );
    match &s.last_error {
        Some(e @ Error::MassRemoval(_)) => assert!(
            e.to_string()
                .contains("store identity changed from \"S1\" to \"S2\""),
            "{e}"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(client.keys(), ["tenant_config_a", "tenant_config_b"]);

    // One of the keys written again in the new store: a partial removal, applied.
    fake.serve(Answer {
        mode: InitialMode::Full,
        store_id: "S2",
        entries: vec![("tenant_config_a", 1, "10")],
    });
    wait_for(
        SECS_10,
        || format!("{:?}", client.status()),
        || client.status().connected && client.status().store_id == "S2",
    )
    .await;
    assert_eq!(client.keys(), ["tenant_config_a"]);
    assert_eq!(
        client.get::<u32>("tenant_config_a").unwrap().unwrap().value,
        10
    );
    assert!(client.status().held_back.is_none());
    let reported = client.status().last_store_change;

    // A server that reports no identity: unknown, nothing reported, the identity held
    // stays.
    fake.serve(Answer {
        mode: InitialMode::Diff,
        store_id: "",
        entries: vec![],
    });
    let sent = fake.requests().len();
    fake.end_streams();
    wait_for(
        SECS_10,
        || format!("{:?}", client.status()),
        || fake.requests().len() > sent && client.status().connected,
    )
    .await;
    assert_eq!(fake.requests().last().map(String::as_str), Some("S2"));
    let s = client.status();
    assert_eq!(s.store_id, "S2");
    assert_eq!(s.last_store_change, reported);
    client.close().await;
    let file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&snapshot).unwrap()).unwrap();
    assert_eq!(file["storeId"], "S2");

    // A new client starts from the snapshot and sends its identity.
    let again = builder().start().await.unwrap();
    assert_eq!(again.status().store_id, "S2");
    let sent = fake.requests().len();
    wait_for(
        SECS_10,
        || format!("{:?}", fake.requests()),
        || fake.requests().len() > sent,
    )
    .await;
    assert_eq!(fake.requests().last().map(String::as_str), Some("S2"));
}
