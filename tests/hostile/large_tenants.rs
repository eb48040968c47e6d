//! Large tenants and readers that do not read: huge `known_versions`, unread Get
//! replies and unread Watches stay bounded and do not slow writers.

use super::*;

/// Item 3: Watches that each send 100,000 known versions do not hold the tenant's
/// writers back: the diff runs outside the view's lock, a few at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_known_versions_do_not_slow_a_writer_of_the_same_tenant() {
    let dir = temp_dir();
    let log = dir.path().join("server.log");
    let server = start(dir.path(), &[], None, &log).await;
    let writer = token(dir.path(), "acme", Role::Writer);
    let mut bystander = Bystander::new(server.addr, &writer).await;
    // The tenant holds 2,000 keys; the hostile watchers claim 100,000.
    let mut c = connect(server.addr, Some(&writer)).await;
    for i in 0..2_000 {
        put(&mut c, &format!("tenant_config_bulk/k{i:05}"), "1").await;
    }
    let baseline = bystander.probe(30).await;
    let known: std::collections::HashMap<String, u64> = (0..100_000)
        .map(|i| (format!("tenant_config_bulk/k{i:05}"), 1))
        .collect();
    // Encoded once: the misuse measured is the server's work, not the test's.
    let request = frame(&proto::WatchRequest {
        known_versions: known,
        ..Default::default()
    });
    let stop = tokio_util::sync::CancellationToken::new();
    let mut hostile = Vec::new();
    let completed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    for _ in 0..8 {
        let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let (send, conn) = h2::client::Builder::new()
            .initial_window_size(4 << 20)
            .initial_connection_window_size(4 << 20)
            .handshake::<_, Bytes>(tcp)
            .await
            .unwrap();
        tokio::spawn(conn);
        let (request, stop, completed) = (request.clone(), stop.clone(), completed.clone());
        let (addr, writer) = (server.addr, writer.clone());
        hostile.push(tokio::spawn(async move {
            let mut send = send;
            while !stop.is_cancelled() {
                // Open, take the first message of the initial state, drop, again.
                send = send.ready().await.unwrap();
                let (resp, mut body) = send
                    .send_request(grpc_request(addr, "Watch", &writer), false)
                    .unwrap();
                body.reserve_capacity(request.len());
                body.send_data(request.clone(), true).unwrap();
                // Slow answers are expected (the server takes its time with these);
                // only that they come matters.
                let first = tokio::select! {
                    () = stop.cancelled() => break,
                    first = async {
                        let mut data = resp.await.ok()?.into_body();
                        data.data().await?.ok()
                    } => first,
                };
                assert!(first.is_some(), "a hostile Watch got no initial state");
                completed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    // Let the flood build up, then measure.
    wait_for(
        FLOOD_BUILDS_UP,
        || "two hostile Watches with their initial state".into(),
        || completed.load(std::sync::atomic::Ordering::Relaxed) >= 2,
    )
    .await;
    let during = bystander.probe(30).await;
    stop.cancel();
    for h in hostile {
        h.await.unwrap();
    }
    eprintln!(
        "known_versions flood: {} watches with 100k versions; bystander p99 {baseline:?} -> {during:?}",
        completed.load(std::sync::atomic::Ordering::Relaxed)
    );
    assert!(
        during <= allowed(baseline),
        "bystander p99 {baseline:?} -> {during:?}"
    );
}

/// Item 1: Gets of a large tenant whose replies are never read do not grow the
/// server's memory without bound, and the tenant can still be read, page by page,
/// by a client with the default 4 MiB message limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_get_replies_of_a_large_tenant_stay_bounded() {
    let dir = temp_dir();
    let log = dir.path().join("server.log");
    let server = start(dir.path(), &[], None, &log).await;
    let writer = token(dir.path(), "acme", Role::Writer);
    let mut bystander = Bystander::new(server.addr, &writer).await;
    // About 12 MB: 120 values of 100 KB.
    let big = format!("\"{}\"", "v".repeat(100_000));
    let mut c = connect(server.addr, Some(&writer)).await;
    for i in 0..120 {
        put(&mut c, &format!("tenant_config_big/k{i:03}"), &big).await;
    }
    let baseline = bystander.probe(20).await;
    let before = rss(server.pid());

    // One connection that asks for the whole tenant 300 times and reads nothing:
    // its window is 1 byte, so nothing it is sent can leave the server.
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (mut send, conn) = h2::client::Builder::new()
        .initial_window_size(1)
        .initial_connection_window_size(1 << 16)
        .handshake::<_, Bytes>(tcp)
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut unread = Vec::new();
    for _ in 0..300 {
        send = send.ready().await.unwrap();
        let (resp, mut body) = send
            .send_request(grpc_request(server.addr, "Get", &writer), false)
            .unwrap();
        body.send_data(frame(&proto::GetRequest::default()), true)
            .unwrap();
        unread.push(resp);
    }
    // Give the server 3 s to answer what it will: only what fits the
    // connection's budget of unread replies (8 MiB: about 7 pages) is answered;
    // the other calls wait, holding nothing.
    let mut answered = 0;
    let deadline = Instant::now() + Duration::from_secs(3);
    for resp in unread.iter_mut() {
        let left = deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, resp).await.is_ok() {
            answered += 1;
        }
    }
    assert!(answered < 20, "{answered} unread replies were built");
    let during = bystander.probe(20).await;
    let after = rss(server.pid());
    eprintln!(
        "unread Gets: {answered} of 300 answered; RSS {} MB -> {} MB; bystander p99 {baseline:?} -> {during:?}",
        before >> 20,
        after >> 20
    );
    assert!(
        after < before + (64 << 20),
        "300 unread Gets of a 12 MB tenant took RSS from {} MB to {} MB",
        before >> 20,
        after >> 20
    );
    assert!(
        during <= allowed(baseline),
        "bystander p99 {baseline:?} -> {during:?}"
    );

    // A client with the default message limit reads the whole tenant by pages.
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let header: tonic::metadata::MetadataValue<_> = format!("Bearer {writer}").parse().unwrap();
    let mut plain = proto::config_service_client::ConfigServiceClient::with_interceptor(
        channel,
        move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", header.clone());
            Ok(r)
        },
    );
    let mut keys = Vec::new();
    let mut page_token = String::new();
    let mut first_revision = None;
    loop {
        let page = plain
            .get(proto::GetRequest {
                prefixes: vec!["tenant_config_big/".into()],
                page_token,
                ..Default::default()
            })
            .await
            .expect("each page fits the default 4 MiB limit")
            .into_inner();
        assert_eq!(*first_revision.get_or_insert(page.revision), page.revision);
        keys.extend(page.entries.into_iter().map(|e| e.key));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(keys.len(), 120);
    assert!(keys.windows(2).all(|w| w[0] < w[1]));
    drop(unread);
}

/// Item 1: Watches of a large tenant whose messages are never read count against
/// their connection's budget of unread replies: 500 of them on one connection do
/// not hold a message each in the server's memory, and a bystander on another
/// connection keeps getting every write at its usual speed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_watches_of_a_large_tenant_stay_bounded() {
    let dir = temp_dir();
    let log = dir.path().join("server.log");
    let server = start(dir.path(), &[], None, &log).await;
    let writer = token(dir.path(), "acme", Role::Writer);
    let mut bystander = Bystander::new(server.addr, &writer).await;
    // About 4 MB: 40 values of 100 KB, so an initial state is 4 messages of ~1 MiB.
    let big = format!("\"{}\"", "v".repeat(100_000));
    let mut c = connect(server.addr, Some(&writer)).await;
    for i in 0..40 {
        put(&mut c, &format!("tenant_config_big/k{i:03}"), &big).await;
    }
    let baseline = bystander.probe(20).await;
    let before = rss(server.pid());

    // One connection that watches the whole tenant 500 times and reads nothing:
    // once its 64 KiB window is full, nothing it is sent can leave the server.
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (mut send, conn) = h2::client::Builder::new()
        .initial_window_size(1 << 16)
        .initial_connection_window_size(1 << 16)
        .handshake::<_, Bytes>(tcp)
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut unread = Vec::new();
    for _ in 0..500 {
        send = send.ready().await.unwrap();
        let (resp, mut body) = send
            .send_request(grpc_request(server.addr, "Watch", &writer), false)
            .unwrap();
        body.send_data(frame(&proto::WatchRequest::default()), true)
            .unwrap();
        unread.push(resp);
    }
    // Every Watch starts (its headers arrive)...
    let mut started = Vec::new();
    for resp in unread {
        let resp = tokio::time::timeout(PATIENCE, resp)
            .await
            .expect("a Watch started in time")
            .expect("a response");
        assert_eq!(resp.status(), http::StatusCode::OK);
        started.push(resp);
    }
    // ...and the server builds what it will of their messages: sampled until its
    // memory stops growing.
    let mut peak = settled_rss(server.pid(), Duration::from_millis(300), PATIENCE).await;
    // The bystander's writes are changes for the 500 Watches too; they wait
    // there, coalesced, while the bystander gets each of its own.
    let during = bystander.probe(20).await;
    let after = rss(server.pid());
    peak = peak.max(after);
    eprintln!(
        "unread Watches: 500 started; RSS {} MB -> peak {} MB -> {} MB; bystander p99 {baseline:?} -> {during:?}",
        before >> 20,
        peak >> 20,
        after >> 20
    );
    assert!(
        peak < before + (150 << 20),
        "500 unread Watches of a 4 MB tenant took RSS from {} MB to {} MB",
        before >> 20,
        peak >> 20
    );
    assert!(
        during <= allowed(baseline),
        "bystander p99 {baseline:?} -> {during:?}"
    );
    drop(started);
}

/// History replies count against the same budget: 300 unread History calls for a
/// key with 100 versions of 100 KB (a 10 MB history) on one connection answer only
/// what fits its budget, the server's memory stays bounded, and a bystander on
/// another connection is not slowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_history_replies_stay_bounded() {
    let dir = temp_dir();
    let log = dir.path().join("server.log");
    let server = start(dir.path(), &[], None, &log).await;
    let writer = token(dir.path(), "acme", Role::Writer);
    let mut bystander = Bystander::new(server.addr, &writer).await;
    let mut c = connect(server.addr, Some(&writer)).await;
    for i in 0..100 {
        let big = format!("\"{i}{}\"", "v".repeat(100_000));
        put(&mut c, "tenant_config_big", &big).await;
    }
    let baseline = bystander.probe(20).await;
    let before = rss(server.pid());

    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (mut send, conn) = h2::client::Builder::new()
        .initial_window_size(1)
        .initial_connection_window_size(1 << 16)
        .handshake::<_, Bytes>(tcp)
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = frame(&proto::HistoryRequest {
        key: "tenant_config_big".into(),
        page_size: 1000,
        ..Default::default()
    });
    let mut unread = Vec::new();
    for _ in 0..300 {
        send = send.ready().await.unwrap();
        let (resp, mut body) = send
            .send_request(grpc_request(server.addr, "History", &writer), false)
            .unwrap();
        body.send_data(request.clone(), true).unwrap();
        unread.push(resp);
    }
    let mut answered = 0;
    let deadline = Instant::now() + Duration::from_secs(3);
    for resp in unread.iter_mut() {
        let left = deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, resp).await.is_ok() {
            answered += 1;
        }
    }
    assert!(
        answered < 20,
        "{answered} unread History replies were built"
    );
    let during = bystander.probe(20).await;
    let after = rss(server.pid());
    eprintln!(
        "unread History calls: {answered} of 300 answered; RSS {} MB -> {} MB; bystander p99 {baseline:?} -> {during:?}",
        before >> 20,
        after >> 20
    );
    assert!(
        after < before + (64 << 20),
        "300 unread History calls of a 10 MB history took RSS from {} MB to {} MB",
        before >> 20,
        after >> 20
    );
    assert!(
        during <= allowed(baseline),
        "bystander p99 {baseline:?} -> {during:?}"
    );
    drop(unread);
}
