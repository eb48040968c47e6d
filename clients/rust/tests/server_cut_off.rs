//! A server cut off from its sources, against a scripted fake server over a real
//! socket: `Status::server_disconnected_since` follows what every message says
//! (the initial state and progress included), clears on a message without it, and
//! clears when the watch moves to another server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod fake;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{fast_backoff, wait_for};
use configwatch_client::{Client, Status as ClientStatus, static_token};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use api::watch_response::{InitialMode, Kind};
use fake::api;

const SECS_10: Duration = Duration::from_secs(10);

type Sender = mpsc::Sender<Result<api::WatchResponse, Status>>;

/// Answers a Watch with a one-key initial state that says the server is cut off
/// since `since`, then sends what the test pushes on the open stream.
#[derive(Clone)]
struct CutOff {
    since: Option<SystemTime>,
    open: Arc<Mutex<Option<Sender>>>,
}

impl CutOff {
    fn stream(&self) -> Sender {
        self.open.lock().unwrap().clone().expect("a Watch is open")
    }

    /// A progress message at `revision`, saying the server is cut off since `since`.
    async fn progress(&self, revision: u64, since: Option<SystemTime>) {
        let message = api::WatchResponse {
            kind: Kind::Progress as i32,
            revision,
            resume_token: format!("token-{revision}"),
            disconnected_since: since.map(Into::into),
            ..Default::default()
        };
        self.stream().send(Ok(message)).await.unwrap();
    }
}

impl CutOff {
    /// Answers a Watch with the initial state, and keeps the stream for the test.
    fn watch(&self, _: api::WatchRequest) -> Result<fake::Stream, Status> {
        let (tx, rx) = mpsc::channel(4);
        tx.try_send(Ok(api::WatchResponse {
            kind: Kind::Initial as i32,
            initial_mode: InitialMode::Full as i32,
            changes: vec![api::Entry {
                key: "tenant_config_a".into(),
                version: 1,
                value: "1".into(),
                revision: 1,
                ..Default::default()
            }],
            initial_complete: true,
            revision: 1,
            resume_token: "token-1".into(),
            disconnected_since: self.since.map(Into::into),
            store_id: "S1".into(),
        }))
        .unwrap();
        *self.open.lock().unwrap() = Some(tx);
        Ok(ReceiverStream::new(rx))
    }
}

/// A time as the wire carries it (whole seconds and nanoseconds).
fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::new(secs, 250_000_000)
}

async fn until(client: &Client, what: impl Fn(&ClientStatus) -> bool) {
    wait_for(
        SECS_10,
        || format!("{:?}", client.status()),
        || what(&client.status()),
    )
    .await;
}

#[tokio::test]
async fn the_status_says_since_when_the_server_in_use_is_cut_off_from_its_sources() {
    let cut_since = at(1_790_000_000);
    let fake = CutOff {
        since: Some(cut_since),
        open: Arc::default(),
    };
    let url = fake::start(fake::WatchOnly({
        let fake = fake.clone();
        move |request| fake.watch(request)
    }))
    .await;
    // The next server accepts connections and never answers: the client sits there
    // after moving, hearing nothing from it.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let next = format!("http://{}", silent.local_addr().unwrap());
    let client = Client::builder(&url, "acme", static_token("token"))
        .servers([url.clone(), next.clone()])
        .random_start(false)
        .backoff(fast_backoff())
        .connect()
        .await
        .unwrap();
    // Served by a cut-off instance from the first message on: the cache is current
    // with what the server holds, and the status says how old that may be.
    let status = client.status();
    assert!(status.connected && !status.stale, "{status:?}");
    assert_eq!(status.server_disconnected_since, Some(cut_since));

    // The server reaches its sources again: a progress message without the field.
    fake.progress(2, None).await;
    until(&client, |s| s.server_disconnected_since.is_none()).await;
    assert_eq!(client.revision(), 2);

    // Cut off again, later.
    let again = at(1_790_000_600);
    fake.progress(3, Some(again)).await;
    until(&client, |s| s.server_disconnected_since == Some(again)).await;
    // Every message repeats it while it lasts; it stays.
    fake.progress(4, Some(again)).await;
    until(&client, |s| s.revision == 4).await;
    assert_eq!(client.status().server_disconnected_since, Some(again));

    // The server goes away: the watch moves to the next, of which nothing is known.
    fake.stream()
        .send(Err(Status::unavailable("shutting down")))
        .await
        .unwrap();
    until(&client, |s| s.server == next).await;
    let status = client.status();
    assert_eq!(status.server_disconnected_since, None, "{status:?}");
    assert_eq!(
        client.get::<u32>("tenant_config_a").unwrap().unwrap().value,
        1
    );
}
