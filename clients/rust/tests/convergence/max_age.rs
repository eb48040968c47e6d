//! Connections that reach the server's maximum age (`--max-connection-age`): clients
//! of both languages reconnect and resume by token without losing or repeating a
//! change, and unary calls made while connections age are all answered.

use super::*;

/// Changes written while connections age.
const CHANGES: usize = 50;
/// Pause between writes: 50 writes span about five connection lifetimes
/// (an age of 1 s ±10%, then a grace of 500 ms).
const WRITE_PACE: Duration = Duration::from_millis(100);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_resume_without_loss_when_connections_reach_their_maximum_age() {
    let driver = typescript_driver();
    let dir = temp_dir();
    let mut server = Server::new(dir.path().join("data"), dir.path().to_owned());
    let addr = server
        .start_with(
            4096,
            &[
                "--max-connection-age",
                "1s",
                "--max-connection-age-grace",
                "500ms",
            ],
        )
        .await
        .unwrap();
    let token_file = dir.path().join("reader.token");
    refresh_token(&server.data_dir, &token_file).await.unwrap();
    let url = format!("http://{addr}");
    // Both start on the empty tenant: their first state carries no change, so any
    // change that arrives as a full state later is a resend.
    let rust = RustClient::start("rust".into(), &url, &token_file, vec![])
        .await
        .unwrap();
    let mut ts = TsClient::start(
        &driver,
        "ts".into(),
        &url,
        &token_file,
        vec![],
        &dir.path().join("ts.log"),
    )
    .await
    .unwrap();

    // Unary calls on one channel the whole time, back to back: the ones in flight
    // when their connection is asked to go away are answered there, later ones go
    // to a new connection.
    let reader_token = std::fs::read_to_string(&token_file).unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let gets = tokio::spawn(get_until(
        addr,
        reader_token.trim().to_owned(),
        stop.clone(),
    ));
    // The client library's own unary call, on the channel its Watch uses: it tries
    // a call its closing connection did not carry once more, so none fails.
    let reads = tokio::spawn({
        let (client, stop) = (rust.client.clone(), stop.clone());
        async move {
            let (mut answered, mut failed) = (0u64, Vec::new());
            while !stop.is_cancelled() {
                match client.read_secret("param_config_age/none").await {
                    Ok(_) => answered += 1,
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (answered, failed)
        }
    });

    let writer_token = mint_token(&server_bin(), &server.data_dir, TENANT, "writer", "24h")
        .await
        .unwrap();
    let keys: Vec<String> = (0..CHANGES)
        .map(|i| format!("tenant_config_age{i:02}"))
        .collect();
    let (_server_addr, server_rx) = watch::channel(addr);
    let mut writer = Writer::new(server_rx, &writer_token, &keys);
    // Meanwhile the TypeScript client reads with its own unary call, back to back.
    let writes = async {
        for (i, key) in keys.iter().enumerate() {
            let op = Op::Put {
                value: json!({ "n": i }),
                secret: false,
            };
            writer.write(key, op).await.unwrap();
            tokio::time::sleep(WRITE_PACE).await;
        }
        stop.cancel();
    };
    let ts_reads = async {
        let (mut answered, mut failed) = (0u64, Vec::new());
        while !stop.is_cancelled() {
            match ts
                .request_with("read", json!({ "key": "param_config_age/none" }))
                .await
            {
                Ok(_) => answered += 1,
                Err(e) => failed.push(e),
            }
        }
        (answered, failed)
    };
    let ((), (ts_read, ts_failed)) = tokio::join!(writes, ts_reads);
    assert!(
        ts_failed.is_empty(),
        "TypeScript readSecret failed: {ts_failed:?}"
    );
    assert!(ts_read > 0);
    eprintln!("max_age: {ts_read} TypeScript readSecret calls answered");
    let (answered, unsent, failed) = gets.await.unwrap();
    assert!(
        failed.is_empty(),
        "Gets failed while connections aged: {failed:?}"
    );
    assert!(answered > 0);
    eprintln!(
        "max_age: {answered} Gets answered, {unsent} not sent (their connection was closing)"
    );
    let (read, read_failed) = reads.await.unwrap();
    assert!(
        read_failed.is_empty(),
        "read_secret failed: {read_failed:?}"
    );
    assert!(read > 0);
    eprintln!("max_age: {read} read_secret calls answered");
    // A write whose stream the closing connection failed (an HTTP/2 error rather than
    // the server's answer) has an unknown outcome; the writer settles each by
    // compare-and-set, and the convergence check below shows none was lost.
    eprintln!(
        "max_age: {} writes with an unknown outcome, settled: {:?}",
        writer.stats.uncertain, writer.stats.errors
    );

    check_convergence(
        &mut writer,
        std::slice::from_ref(&rust),
        std::slice::from_mut(&mut ts),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", server.log_tail(40)));

    // The Rust client: reconnected several times, resumed each time, every change
    // once.
    let status = rust.client.status();
    {
        let recorded = rust.recorder.lock().unwrap();
        assert!(status.syncs >= 3, "{} syncs; {status:?}", status.syncs);
        assert_eq!(
            status.last_sync_mode,
            Some(configwatch_client::SyncMode::Resumed)
        );
        assert_eq!(recorded.changes, CHANGES as u64, "{:?}", recorded.causes);
        assert!(
            !recorded.causes.contains_key("Full"),
            "{:?}",
            recorded.causes
        );
        assert!(
            !recorded.causes.contains_key("Diff"),
            "{:?}",
            recorded.causes
        );
    }

    // The TypeScript client: the same, as its events count them.
    let counts = ts.dump().await.unwrap().counts;
    assert_eq!(counts["changes"], json!(CHANGES), "{counts}");
    assert_eq!(counts["syncs"]["full"], json!(1), "{counts}");
    assert_eq!(counts["syncs"]["diff"], json!(0), "{counts}");
    assert!(
        counts["syncs"]["resumed"].as_u64().unwrap() >= 2,
        "{counts}"
    );
    assert!(counts["disconnects"].as_u64().unwrap() >= 2, "{counts}");

    // The server says why those Watches ended.
    let log = std::fs::read_to_string(server.log()).unwrap();
    assert!(
        log.contains("connection reached its maximum age"),
        "{}",
        server.log_tail(40)
    );

    rust.client.close().await;
    ts.close().await.unwrap();
    server.kill().await;
}

/// Gets the whole tenant over one channel until `stop`; returns how many were
/// answered, how many the channel did not send (it had queued them on a connection
/// that closed after GOAWAY: safe to retry, the server never saw them), and the
/// errors of the others.
async fn get_until(
    addr: SocketAddr,
    token: String,
    stop: tokio_util::sync::CancellationToken,
) -> (u64, u64, Vec<Status>) {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    let mut rpc = ConfigServiceClient::new(channel);
    let header: MetadataValue<Ascii> = format!("Bearer {token}").parse().unwrap();
    let (mut answered, mut unsent, mut failed) = (0, 0, Vec::new());
    while !stop.is_cancelled() {
        let mut request = tonic::Request::new(proto::GetRequest::default());
        request
            .metadata_mut()
            .insert("authorization", header.clone());
        match rpc.get(request).await {
            Ok(_) => answered += 1,
            Err(status) if never_sent(&status) => unsent += 1,
            Err(status) => failed.push(status),
        }
    }
    (answered, unsent, failed)
}
