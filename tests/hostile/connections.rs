//! Connection-level misuse: silent sockets at the file limit, running out of
//! descriptors, streams beyond the cap, request bodies that never end, bad limit flags.

use super::*;

/// Item 2: at the open-file limit, silent sockets neither lock new clients out nor
/// make the accept loop spin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_beyond_the_file_limit_do_not_lock_out_new_clients() {
    let dir = temp_dir();
    let log = dir.path().join("server.log");
    let server = start(dir.path(), &["--handshake-timeout", "2s"], Some(256), &log).await;
    let writer = token(dir.path(), "acme", Role::Writer);
    let mut bystander = Bystander::new(server.addr, &writer).await;
    let baseline = bystander.probe(20).await;

    // Four times the file limit in sockets that never say anything.
    let addr = server.addr;
    let silent: Vec<std::net::TcpStream> = tokio::task::spawn_blocking(move || {
        (0..1000)
            .filter_map(|_| {
                std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()
            })
            .collect()
    })
    .await
    .unwrap();
    assert!(
        silent.len() > 256,
        "only {} sockets connected",
        silent.len()
    );

    let cpu_before = cpu(server.pid());
    let started = Instant::now();
    // A new client gets in, and its calls succeed, while the sockets are held.
    let newcomer = tokio::time::timeout(Duration::from_secs(3), async {
        let mut c = connect(server.addr, Some(&writer)).await;
        put(&mut c, "tenant_config_newcomer", "1").await;
        c.get(proto::GetRequest {
            keys: vec!["tenant_config_newcomer".into()],
            ..Default::default()
        })
        .await
        .unwrap()
    })
    .await
    .expect("a new client is served within 3 s while silent sockets are held");
    assert_eq!(newcomer.into_inner().entries.len(), 1);
    let during = bystander.probe(20).await;
    // Hold the sockets a while longer: the server must stay idle meanwhile.
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(started.elapsed())).await;
    let used = cpu(server.pid()) - cpu_before;
    let wall = started.elapsed();
    eprintln!(
        "silent sockets: {} held; newcomer in; bystander p99 {baseline:?} -> {during:?}; server CPU {used:?} in {wall:?}",
        silent.len()
    );
    assert!(
        used < wall / 4,
        "the server used {used:?} of CPU in {wall:?} while sockets sat silent"
    );
    assert!(
        during <= allowed(baseline),
        "bystander p99 {baseline:?} -> {during:?}"
    );
    drop(silent);
    let text = std::fs::read_to_string(&log).unwrap();
    let lines = text.lines().count();
    assert!(lines < 20, "{lines} log lines:\n{text}");
}

/// Item 2: when the process does run out of descriptors (a very low limit), the
/// accept loop backs off instead of spinning, says so once, and the client already
/// connected is served as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_the_accept_loop_backs_off_and_says_so_once() {
    let dir = temp_dir();
    let log = dir.path().join("server.log");
    let server = start(dir.path(), &["--handshake-timeout", "5s"], Some(40), &log).await;
    let writer = token(dir.path(), "acme", Role::Writer);
    let mut bystander = Bystander::new(server.addr, &writer).await;
    let baseline = bystander.probe(20).await;
    let addr = server.addr;
    let silent: Vec<std::net::TcpStream> = tokio::task::spawn_blocking(move || {
        (0..300)
            .filter_map(|_| {
                std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()
            })
            .collect()
    })
    .await
    .unwrap();
    let cpu_before = cpu(server.pid());
    let started = Instant::now();
    let during = bystander.probe(20).await;
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(started.elapsed())).await;
    let used = cpu(server.pid()) - cpu_before;
    let wall = started.elapsed();
    drop(silent);
    let text = std::fs::read_to_string(&log).unwrap();
    let warnings = text.matches("out of resources").count();
    eprintln!(
        "out of descriptors: server CPU {used:?} in {wall:?}; {warnings} warning(s); bystander p99 {baseline:?} -> {during:?}"
    );
    assert!(
        text.contains("Too many open files"),
        "the limit was not reached:\n{text}"
    );
    assert_eq!(warnings, 1, "{text}");
    assert!(
        used < wall / 4,
        "the server used {used:?} of CPU in {wall:?}"
    );
    assert!(
        during <= allowed(baseline),
        "bystander p99 {baseline:?} -> {during:?}"
    );
}

/// Item 2: the per-connection stream cap is advertised, and a client that respects
/// it gets its extra calls once others end.
#[tokio::test]
async fn the_stream_cap_is_advertised_and_enforced() {
    let dir = temp_dir();
    let log = dir.path().join("server.log");
    let server = start(
        dir.path(),
        &["--max-streams-per-connection", "4"],
        None,
        &log,
    )
    .await;
    let reader = token(dir.path(), "acme", Role::Reader);
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    // Drive the connection until the server's SETTINGS are in.
    let conn = tokio::sync::Mutex::new(conn);
    eventually(
        PATIENCE,
        || "a stream limit advertised".into(),
        || async {
            let mut conn = conn.lock().await;
            if conn.max_concurrent_send_streams() == 4 {
                return Some(());
            }
            let _ = tokio::time::timeout(Duration::from_millis(20), &mut *conn).await;
            None
        },
    )
    .await;
    tokio::spawn(conn.into_inner());
    // Four Watches take the four streams; a fifth waits for one of them to end.
    let mut streams = Vec::new();
    let mut send = send;
    for _ in 0..4 {
        send = send.ready().await.unwrap();
        let (resp, mut body) = send
            .send_request(grpc_request(server.addr, "Watch", &reader), false)
            .unwrap();
        body.send_data(frame(&proto::WatchRequest::default()), true)
            .unwrap();
        let resp = tokio::time::timeout(PATIENCE, resp).await.unwrap().unwrap();
        assert_eq!(resp.status(), 200);
        streams.push(resp);
    }
    // A fifth waits (the client holds it back: the server said four) until one of
    // the four ends.
    send = send.ready().await.unwrap();
    let (fifth, mut body) = send
        .send_request(grpc_request(server.addr, "Watch", &reader), false)
        .unwrap();
    body.send_data(frame(&proto::WatchRequest::default()), true)
        .unwrap();
    let mut fifth = Box::pin(fifth);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut fifth)
            .await
            .is_err(),
        "a fifth stream was opened"
    );
    streams.pop();
    let answered = tokio::time::timeout(PATIENCE, fifth).await;
    assert!(answered.is_ok_and(|r| r.is_ok_and(|r| r.status() == 200)));
}

/// Item 2: request bodies that never end are cut off by the request timeout, and
/// the memory they held is given back; a bystander is not slowed meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_that_never_end_are_cut_off() {
    let dir = temp_dir();
    let log = dir.path().join("server.log");
    let server = start(dir.path(), &["--request-timeout", "5s"], None, &log).await;
    let writer = token(dir.path(), "acme", Role::Writer);
    let mut bystander = Bystander::new(server.addr, &writer).await;
    let baseline = bystander.probe(20).await;
    let before = rss(server.pid());

    // 8 connections x 500 Puts, each sending 64 KiB of a 1 MiB message and no more.
    let started = Instant::now();
    let mut answers = Vec::new();
    let mut held = Vec::new();
    for _ in 0..8 {
        let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let (mut send, conn) = h2::client::Builder::new()
            .initial_window_size(1 << 20)
            .handshake::<_, Bytes>(tcp)
            .await
            .unwrap();
        tokio::spawn(conn);
        for _ in 0..500 {
            send = send.ready().await.unwrap();
            let (resp, mut body) = send
                .send_request(grpc_request(server.addr, "Put", &writer), false)
                .unwrap();
            let mut partial = vec![0u8];
            partial.extend_from_slice(&(1u32 << 20).to_be_bytes());
            partial.resize(64 * 1024, b'x');
            body.reserve_capacity(partial.len());
            body.send_data(Bytes::from(partial), false).unwrap();
            answers.push(resp);
            held.push(body);
        }
    }
    // Until the server has read what was sent (its memory stops growing), then
    // while it holds the 4,000 calls open.
    let peak = settled_rss(server.pid(), Duration::from_millis(200), PATIENCE).await;
    let during = bystander.probe(20).await;
    // Every call is answered (with a timeout) without the client ever finishing.
    for resp in answers {
        let resp = tokio::time::timeout(PATIENCE, resp)
            .await
            .expect("an answer in time")
            .expect("a response");
        let status = resp
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("(none)")
            .to_owned();
        assert_ne!(status, "0", "a request without its body succeeded");
    }
    let answered = started.elapsed();
    let after = rss(server.pid());
    eprintln!(
        "never-ending bodies: 4000 answered in {answered:?}; RSS {} MB -> peak {} MB -> {} MB; bystander p99 {baseline:?} -> {during:?}",
        before >> 20,
        peak >> 20,
        after >> 20
    );
    assert!(
        during <= allowed(baseline),
        "bystander p99 {baseline:?} -> {during:?}"
    );
    drop(held);
}

/// Bad limit flags are refused before any port is bound, naming the flag.
#[test]
fn bad_limit_flags_are_refused_before_binding() {
    let dir = temp_dir();
    for (flag, value) in [
        ("--max-connections", "0"),
        ("--max-streams-per-connection", "0"),
        ("--get-page-entries", "0"),
        ("--get-page-bytes", "100"),
        ("--get-page-entries", "20000"),
        ("--initial-state-slots", "0"),
        ("--handshake-timeout", "1ms"),
        ("--request-timeout", "10ms"),
        ("--reply-bytes-per-connection", "1000"),
    ] {
        let out = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .args([flag, value])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{flag} {value}: {stderr}");
        assert!(stderr.contains(flag), "{flag} {value}: {stderr}");
        assert!(out.stdout.is_empty(), "{flag} {value} bound a port");
    }
}
