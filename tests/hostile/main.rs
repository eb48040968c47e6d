//! Hostile and careless clients against the `configwatch` binary.
//!
//! Each case runs the server as a child process (so its memory and CPU, read from
//! /proc, are its own) with a bystander client: a watcher of its own keys that
//! writes and waits to see each write delivered. Its latency is measured before and
//! during the misuse, and must stay near its baseline; every write must arrive.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use configwatch::auth::Role;
use configwatch::auth::local::LocalKey;
use configwatch::model::Scope;
use configwatch::proto;
use tonic::codec::Streaming;

const BIN: &str = env!("CARGO_BIN_EXE_configwatch");

/// Starts the binary on 127.0.0.1 port 0 with `args`, under `ulimit -n` when given,
/// logging at `warn` into `log`.
fn start(dir: &Path, args: &[&str], nofile: Option<u32>, log: &Path) -> ServerProcess {
    let mut command = match nofile {
        Some(n) => {
            let mut c = Command::new("sh");
            c.args(["-c", &format!("ulimit -n {n} && exec \"$0\" \"$@\""), BIN]);
            c
        }
        None => Command::new(BIN),
    };
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .args(args)
        .env("CONFIGWATCH_LOG", "warn")
        .stderr(Stdio::from(std::fs::File::create(log).unwrap()));
    ServerProcess::spawn(command)
}

fn token(dir: &Path, tenant: &str, role: Role) -> String {
    let (key, _) = LocalKey::load_or_create(dir).unwrap();
    key.issue(
        &Scope::tenant(tenant).unwrap(),
        role,
        Duration::from_secs(600),
        "test",
    )
    .unwrap()
}

/// The server's resident memory in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS");
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmRSS value");
    kb * 1024
}

/// CPU time the server used so far (user + system).
fn cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (in parentheses): state is field 3, utime 14,
    // stime 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

/// A well-behaved client of its own tenant: a Watch on its keys and Puts it times
/// from the call until the Watch delivers them.
struct Bystander {
    client: Client,
    stream: Streaming<proto::WatchResponse>,
    written: u64,
}

impl Bystander {
    async fn new(addr: std::net::SocketAddr, token: &str) -> Bystander {
        let mut client = connect(addr, Some(token)).await;
        let mut stream = watch(&mut client, watch_prefixes(&["tenant_config_bystander/"])).await;
        initial(&mut stream).await;
        Bystander {
            client,
            stream,
            written: 0,
        }
    }

    /// Writes `count` keys one after another; returns the 99th percentile of the
    /// time from each Put to its delivery on the Watch. Panics if a write is not
    /// delivered within PATIENCE.
    async fn probe(&mut self, count: usize) -> Duration {
        let mut took = Vec::with_capacity(count);
        for _ in 0..count {
            self.written += 1;
            let key = format!("tenant_config_bystander/k{}", self.written % 16);
            let value = format!("{{\"n\":{}}}", self.written);
            let start = Instant::now();
            put(&mut self.client, &key, &value).await;
            loop {
                let msg = next(&mut self.stream).await;
                if msg.changes.iter().any(|c| c.key == key && c.value == value) {
                    break;
                }
            }
            took.push(start.elapsed());
        }
        took.sort();
        took[(took.len() * 99 / 100).min(took.len() - 1)]
    }
}

/// The bound a bystander's p99 must stay under during misuse: a small multiple of
/// its baseline (with a floor for timer and scheduler noise on a shared machine).
fn allowed(baseline: Duration) -> Duration {
    (baseline * 5).max(Duration::from_millis(150))
}

/// A gRPC frame: the 5-byte prefix and the message.
fn frame(msg: &impl prost::Message) -> Bytes {
    let body = msg.encode_to_vec();
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(0);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Bytes::from(out)
}

fn grpc_request(addr: std::net::SocketAddr, method: &str, token: &str) -> http::Request<()> {
    http::Request::builder()
        .method("POST")
        .uri(format!(
            "http://{addr}/configwatch.v1.ConfigService/{method}"
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {token}"))
        .body(())
        .unwrap()
}

/// Item 2: at the open-file limit, silent sockets neither lock new clients out nor
/// make the accept loop spin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_beyond_the_file_limit_do_not_lock_out_new_clients() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let server = start(dir.path(), &["--handshake-timeout", "2s"], Some(256), &log);
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
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let server = start(dir.path(), &["--handshake-timeout", "5s"], Some(40), &log);
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
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let server = start(
        dir.path(),
        &["--max-streams-per-connection", "4"],
        None,
        &log,
    );
    let reader = token(dir.path(), "acme", Role::Reader);
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (send, mut conn) = h2::client::handshake(tcp).await.unwrap();
    // Drive the connection until the server's SETTINGS are in.
    let deadline = Instant::now() + PATIENCE;
    while conn.max_concurrent_send_streams() != 4 {
        assert!(Instant::now() < deadline, "no stream limit advertised");
        let _ = tokio::time::timeout(Duration::from_millis(20), &mut conn).await;
    }
    tokio::spawn(conn);
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
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let server = start(dir.path(), &["--request-timeout", "5s"], None, &log);
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
    let mut peak = rss(server.pid());
    let deadline = Instant::now() + PATIENCE;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = rss(server.pid());
        let grew = now > peak + (2 << 20);
        peak = peak.max(now);
        if !grew || Instant::now() > deadline {
            break;
        }
    }
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

/// Item 3: Watches that each send 100,000 known versions do not hold the tenant's
/// writers back: the diff runs outside the view's lock, a few at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_known_versions_do_not_slow_a_writer_of_the_same_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let server = start(dir.path(), &[], None, &log);
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
    while completed.load(std::sync::atomic::Ordering::Relaxed) < 2 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let server = start(dir.path(), &[], None, &log);
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
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let server = start(dir.path(), &[], None, &log);
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
    let mut peak = rss(server.pid());
    let deadline = Instant::now() + PATIENCE;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = rss(server.pid());
        let grew = now > peak + (2 << 20);
        peak = peak.max(now);
        if !grew || Instant::now() > deadline {
            break;
        }
    }
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

/// Bad limit flags are refused before any port is bound, naming the flag.
#[test]
fn bad_limit_flags_are_refused_before_binding() {
    let dir = tempfile::tempdir().unwrap();
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

/// Items 5 and 10: a flood of malformed input (tokens dated past 9999, 10 KB kids,
/// crit headers, garbage resume tokens, request bytes that are not protobuf) is
/// refused with the right status every time, never panics the server or logs per
/// call, and a bystander's deliveries stay on time with memory bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_malformed_input_is_refused_without_slowing_others() {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let server = start(dir.path(), &[], None, &log);
    let writer = token(dir.path(), "acme", Role::Writer);
    let mut bystander = Bystander::new(server.addr, &writer).await;
    let baseline = bystander.probe(30).await;
    let rss_before = rss(server.pid());

    let pem = std::fs::read(dir.path().join("signing-key.pem")).unwrap();
    let key = EncodingKey::from_ed_pem(&pem).unwrap();
    let sign = |header: &Header, exp: u64| {
        let claims = serde_json::json!({
            "iss": "configwatch", "sub": "x", "exp": exp,
            "custom:tenantId": "acme", "custom:role": "writer",
        });
        jsonwebtoken::encode(header, &claims, &key).unwrap()
    };
    let plain = Header::new(Algorithm::EdDSA);
    let mut long_kid = Header::new(Algorithm::EdDSA);
    long_kid.kid = Some("k".repeat(10_000));
    let mut crit = Header::new(Algorithm::EdDSA);
    crit.crit = Some(vec!["b64".into()]);
    let in_an_hour = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let bad_tokens = [
        sign(&plain, u64::MAX),
        sign(&plain, i64::MAX as u64),
        sign(&long_kid, in_an_hour),
        sign(&crit, in_an_hour),
    ];

    let stop = tokio_util::sync::CancellationToken::new();
    let refused = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut flood = Vec::new();
    for bad in bad_tokens {
        let (addr, stop, refused) = (server.addr, stop.clone(), refused.clone());
        flood.push(tokio::spawn(async move {
            let mut c = connect(addr, Some(&bad)).await;
            while !stop.is_cancelled() {
                let status = c.get(proto::GetRequest::default()).await.unwrap_err();
                assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
                assert!(status.message().len() < 600, "{}", status.message().len());
                refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    {
        // Resume tokens that are not tokens.
        let (addr, stop, refused, writer) =
            (server.addr, stop.clone(), refused.clone(), writer.clone());
        flood.push(tokio::spawn(async move {
            let mut c = connect(addr, Some(&writer)).await;
            while !stop.is_cancelled() {
                let status = c
                    .watch(proto::WatchRequest {
                        resume_token: "AAAA".into(),
                        ..Default::default()
                    })
                    .await
                    .unwrap_err();
                assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
                refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    {
        // A PutRequest whose key is not UTF-8, over raw HTTP/2.
        let (addr, stop, refused, writer) =
            (server.addr, stop.clone(), refused.clone(), writer.clone());
        flood.push(tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (send, conn) = h2::client::handshake(tcp).await.unwrap();
            tokio::spawn(conn);
            let body = Bytes::from_static(&[0, 0, 0, 0, 4, 0x0a, 0x02, 0xff, 0xfe]);
            let mut send = send;
            while !stop.is_cancelled() {
                send = send.ready().await.unwrap();
                let (resp, mut stream) = send
                    .send_request(grpc_request(addr, "Put", &writer), false)
                    .unwrap();
                stream.send_data(body.clone(), true).unwrap();
                let resp = resp.await.unwrap();
                // An error before any message comes "trailers-only": in the headers.
                let status = |h: &http::HeaderMap| {
                    h.get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                };
                let in_headers = status(resp.headers());
                let mut body = resp.into_body();
                while let Some(chunk) = body.data().await {
                    chunk.unwrap();
                }
                let trailers = body.trailers().await.unwrap().unwrap_or_default();
                let code = in_headers.or_else(|| status(&trailers)).unwrap_or_default();
                assert_eq!(code, "3", "INVALID_ARGUMENT, got grpc-status {code}");
                refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    while refused.load(std::sync::atomic::Ordering::Relaxed) < 200 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let during = bystander.probe(30).await;
    stop.cancel();
    for f in flood {
        f.await.unwrap();
    }
    let grown = rss(server.pid()).saturating_sub(rss_before);
    let logged = std::fs::read_to_string(&log).unwrap();
    eprintln!(
        "malformed flood: {} refusals; bystander p99 {baseline:?} -> {during:?}; RSS +{} KiB; {} log bytes",
        refused.load(std::sync::atomic::Ordering::Relaxed),
        grown / 1024,
        logged.len()
    );
    assert!(!logged.contains("panicked"), "{logged}");
    assert!(
        logged.len() < 4096,
        "nothing is logged per refused call at warn: {logged}"
    );
    assert!(grown < 64 << 20, "RSS grew {} MiB", grown >> 20);
    assert!(
        during <= allowed(baseline),
        "bystander p99 {baseline:?} -> {during:?}"
    );
}
