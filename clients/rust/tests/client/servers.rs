//! Several server URLs: a server that is down or shutting down is passed over at
//! once (by the watch and by `read_secret`), a refused permission is not a reason to
//! move on, and many clients given one list start spread over it.

use super::*;

use configwatch_client::Backoff;

/// A backoff far longer than any wait here: a client that waited it would time out.
fn slow_backoff() -> Backoff {
    Backoff::doubling(Duration::from_secs(60), Duration::from_secs(60))
}

/// An address where nothing listens (bound on port 0, then closed).
fn dead_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

#[tokio::test]
async fn a_server_that_is_down_is_passed_over_without_waiting() {
    let dir = temp_dir();
    let server = Server::start(&dir.path().join("data")).await;
    let (dead, live) = (dead_url(), server.url());
    let client = server
        .builder(TENANT)
        .await
        .servers([dead.clone(), live.clone()])
        .random_start(false)
        .backoff(slow_backoff())
        .ready_timeout(SECS_10)
        .connect()
        .await
        .unwrap();
    assert_eq!(client.servers(), [dead, live.clone()]);
    assert_eq!(client.server(), live);
    let status = client.status();
    assert!(status.connected, "{status:?}");
    assert_eq!(status.server, live);
}

#[tokio::test]
async fn a_server_shutting_down_moves_the_watch_to_the_next() {
    let dir = temp_dir();
    let mut server = Server::start(&dir.path().join("data")).await;
    // The next one accepts connections and never answers: the client stays on it
    // (for its idle timeout) long enough to be seen there.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (live, next) = (
        server.url(),
        format!("http://{}", silent.local_addr().unwrap()),
    );
    let client = server
        .builder(TENANT)
        .await
        .servers([live.clone(), next.clone()])
        .random_start(false)
        .connect()
        .await
        .unwrap();
    assert_eq!(client.server(), live);
    // SIGTERM: the server ends its Watches with UNAVAILABLE ("shutting down").
    server.terminate().await;
    wait_for(
        SECS_10,
        || format!("{:?}", client.status()),
        || client.server() == next,
    )
    .await;
    assert!(!client.status().connected);
}

#[tokio::test]
async fn after_moving_to_the_next_server_of_the_same_store_the_client_resumes_by_digest() {
    let dir = temp_dir();
    let mut server = Server::start(&dir.path().join("data")).await;
    let mut w = server.writer(TENANT).await;
    for key in ["tenant_config_a", "tenant_config_b", "tenant_config_c"] {
        w.put(key, serde_json::json!(key)).await;
    }
    // The next URL is the same store served on another port once the first is gone
    // (one process at a time holds it): another server, the same state.
    let next = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let next_port = next.local_addr().unwrap().port();
    drop(next);
    let (first, second) = (server.url(), format!("http://127.0.0.1:{next_port}"));
    let client = server
        .builder(TENANT)
        .await
        .servers([first.clone(), second.clone()])
        .random_start(false)
        .connect()
        .await
        .unwrap();
    let told = record(&client);
    server.kill().await;
    server.port = next_port;
    server.restart().await;
    wait_for(
        SECS_10,
        || format!("{:?}", client.status()),
        || client.server() == second && client.status().syncs == 2,
    )
    .await;
    let s = client.status();
    // The digest of what the client held matched: an empty difference, nothing sent
    // again, and nothing told to the readers.
    assert_eq!(s.last_sync_mode, Some(SyncMode::Diff), "{s:?}");
    assert_eq!(client.len(), 3);
    assert_eq!(seen(&told), Vec::<String>::new());
    // And it follows the next server from there.
    let mut w = server.writer(TENANT).await;
    let version = w.put("tenant_config_a", serde_json::json!("again")).await;
    wait_for(
        SECS_10,
        || format!("{:?}", client.entry("tenant_config_a")),
        || {
            client
                .entry("tenant_config_a")
                .is_some_and(|e| e.version == version)
        },
    )
    .await;
}

#[tokio::test]
async fn a_refused_permission_stays_on_its_server_and_stops_the_watch() {
    let dir = temp_dir();
    let server = Server::start(&dir.path().join("data")).await;
    let other_tenant = server.token("globex", "reader", "1h").await;
    // Both in one setting, as an environment variable holds them.
    let list = format!("{},{}", server.url(), dead_url());
    let client = Client::builder(list, TENANT, static_token(other_tenant))
        .random_start(false)
        .backoff(slow_backoff())
        .start()
        .await
        .unwrap();
    let refused = timeout(SECS_10, client.ready()).await.unwrap();
    assert_eq!(
        refused.unwrap_err().code(),
        Some(tonic::Code::PermissionDenied)
    );
    assert_eq!(client.status().state, State::Failed);
    assert_eq!(client.server(), server.url());
}

#[tokio::test]
async fn clients_given_one_list_start_spread_over_it() {
    let list = [dead_url(), dead_url()];
    let mut first = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..40 {
        // On this test's single thread the watch has not run yet: the server in use
        // is the one the client starts with.
        let client = Client::builder(list.join(","), TENANT, static_token("t"))
            .start()
            .await
            .unwrap();
        *first.entry(client.server()).or_default() += 1;
        client.close().await;
    }
    assert_eq!(first.len(), 2, "{first:?}");
    assert!(first.values().all(|&n| n >= 5), "{first:?}");
}

#[tokio::test]
async fn read_secret_passes_over_a_server_that_is_down_and_names_every_server_it_tried() {
    let dir = temp_dir();
    let server = Server::start(&dir.path().join("data")).await;
    server
        .writer(TENANT)
        .await
        .put_secret("param_config_db/password", "hunter2")
        .await;
    let (dead, live) = (dead_url(), server.url());
    // The watch is kept on the dead server: on this test's single thread the read
    // asks for the first token, and the watch, which runs when the read first waits,
    // for the second, which fails (the watch then stays where it is, for the
    // backoff). So the read starts on the dead server and must move by itself.
    let token = server.token(TENANT, "reader", "1h").await;
    let calls = Arc::new(AtomicUsize::new(0));
    let tokens = {
        let calls = calls.clone();
        move || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            let token = token.clone();
            async move {
                match n {
                    1 => Err(std::io::Error::other(
                        "the watch's token: refused by the test",
                    )),
                    _ => Ok(token),
                }
            }
        }
    };
    let client = Client::builder(&dead, TENANT, tokens)
        .servers([dead.clone(), live.clone()])
        .random_start(false)
        .backoff(slow_backoff())
        .start()
        .await
        .unwrap();
    let read = client.read_secret("param_config_db/password").await;
    assert_eq!(read.unwrap().unwrap().value, "hunter2");
    assert_eq!(client.server(), dead, "the watch has not moved");
    assert!(calls.load(Ordering::SeqCst) >= 3);

    // Every server down: the error says which were asked, and why each failed.
    let (one, two) = (dead_url(), dead_url());
    let client = server
        .builder(TENANT)
        .await
        .servers([one.clone(), two.clone()])
        .random_start(false)
        .start()
        .await
        .unwrap();
    let e = client
        .read_secret("param_config_db/password")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(tonic::Code::Unavailable), "{e}");
    let message = e.to_string();
    assert!(
        message.contains(&format!("{one}: Unavailable"))
            && message.contains(&format!("{two}: Unavailable")),
        "{message}"
    );
}

#[tokio::test]
async fn an_empty_list_is_refused() {
    let built = Client::builder(" , ", TENANT, static_token("t"))
        .start()
        .await;
    assert!(matches!(built, Err(Error::InvalidConfig(_))), "{built:?}");
}
