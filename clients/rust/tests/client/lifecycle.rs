//! Handles and processes: the Watch stops with its last handle, many clients in one
//! process, and the example program.

use super::*;

#[tokio::test]
async fn the_watch_stops_when_every_handle_is_dropped_or_on_close() {
    let dir = temp_dir();
    let server = Server::start(dir.path()).await;
    let mut w = server.writer(TENANT).await;
    w.put("tenant_config_a", json!(1)).await;

    // Dropping every clone.
    let client = server.builder(TENANT).await.connect().await.unwrap();
    let other = client.clone();
    let mut updates = client.updates();
    let mut changes = other.changes();
    drop(client);
    // One handle left: still watching.
    w.put("tenant_config_a", json!(2)).await;
    timeout(SECS_10, updates.changed()).await.unwrap().unwrap();
    assert_eq!(
        other.get::<u32>("tenant_config_a").unwrap().unwrap().value,
        2
    );
    drop(other);
    // The task ends: the stream ends, and the counter's sender is gone.
    assert!(matches!(
        timeout(SECS_10, changes.next()).await.unwrap(),
        Some(Ok(_))
    ));
    assert!(timeout(SECS_10, changes.next()).await.unwrap().is_none());
    assert!(timeout(SECS_10, updates.changed()).await.unwrap().is_err());

    // close(): reads go on serving what is held; nothing else works.
    let client = server.builder(TENANT).await.connect().await.unwrap();
    let mut changes = client.changes();
    client.close().await;
    assert_eq!(client.status().state, State::Closed);
    assert!(client.status().stale);
    assert_eq!(
        client.get::<u32>("tenant_config_a").unwrap().unwrap().value,
        2
    );
    assert!(timeout(SECS_10, changes.next()).await.unwrap().is_none());
    assert!(matches!(client.ready().await, Ok(())), "it was ready once");
    assert!(matches!(
        client.read_secret("tenant_config_a").await,
        Err(Error::Closed)
    ));
    client.close().await;
}

#[tokio::test]
async fn many_clients_in_one_process_each_see_only_their_tenant() {
    let dir = temp_dir();
    let server = Server::start(dir.path()).await;
    let tenants = ["t1", "t2", "t3"];
    let mut clients = Vec::new();
    for t in tenants {
        let mut w = server.writer(t).await;
        w.put("tenant_config_who", json!(t)).await;
        for _ in 0..2 {
            clients.push((
                t,
                server.builder(t).await.connect().await.unwrap(),
                server.writer(t).await,
            ));
        }
    }
    for (t, client, w) in &mut clients {
        w.put("tenant_config_n", json!(t.len())).await;
        converged(client, w).await;
        assert_eq!(
            client
                .get::<String>("tenant_config_who")
                .unwrap()
                .unwrap()
                .value,
            *t
        );
    }
}

#[tokio::test]
async fn the_example_prints_the_flag_each_time_it_changes() {
    let dir = temp_dir();
    let server = Server::start(dir.path()).await;
    let flag = "tenant_config_new-checkout";
    let mut w = server.writer(TENANT).await;
    w.put(flag, json!({"enabled": false})).await;
    let token = server.token(TENANT, "reader", "1h").await;

    // Built by `cargo test` beside this test binary (target/<profile>/examples).
    let exe = std::env::current_exe().unwrap();
    let example = exe
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join("examples")
        .join("feature_flag");
    assert!(
        example.is_file(),
        "no example at {}: `cargo test -p configwatch-client` builds it, as does \
         `cargo build -p configwatch-client --example feature_flag` (selecting a test \
         target alone does not)",
        example.display()
    );
    let mut child = tokio::process::Command::new(&example)
        .env("CONFIGWATCH_SERVER", server.url())
        .env("CONFIGWATCH_TENANT", TENANT)
        .env("CONFIGWATCH_TOKEN", &token)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = async || {
        timeout(SECS_10, lines.next_line())
            .await
            .expect("a line within 10 s")
            .unwrap()
            .unwrap()
    };
    assert_eq!(next().await, format!("{flag} off (version 1) [current]"));
    w.put(flag, json!({"enabled": true})).await;
    assert_eq!(next().await, format!("{flag} on (version 2) [changed]"));
    w.put("tenant_config_unrelated", json!(1)).await;
    w.delete(flag).await;
    assert_eq!(next().await, format!("{flag} unset (off) [changed]"));

    let pid = child.id().unwrap().to_string();
    let st = tokio::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .await
        .unwrap();
    assert!(st.success());
    let exit = timeout(SECS_10, child.wait()).await.unwrap().unwrap();
    assert!(exit.success(), "{exit:?}");
}
