//! The admin listener as operators use it: the binary started with
//! `--admin-listen 127.0.0.1:0`, its `/healthz`, `/readyz` and `/metrics` read over
//! HTTP; the flag off or wrong; `configwatch health`, a container's health check,
//! run against it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Stdio;

use common::*;
use configwatch::auth::Role;
use configwatch_test_support::procfs::listening_ports;
use configwatch_test_support::{Scrape, ServerProcess, eventually, http_get, promtool_check};
use tonic_health::pb::health_check_response::ServingStatus;

async fn start_with_admin(dir: &std::path::Path) -> (ServerProcess, std::net::SocketAddr) {
    let server = ServerProcess::start(serve_command(dir, &["--admin-listen", "127.0.0.1:0"])).await;
    let admin = server.admin.expect("the server said its admin address");
    (server, admin)
}

#[tokio::test]
async fn healthz_and_readyz_answer_200_on_the_embedded_store() {
    let dir = temp_dir();
    let (server, admin) = start_with_admin(dir.path()).await;
    assert_ne!(admin.port(), server.addr.port());
    let health = http_get(admin, "/healthz").await;
    assert_eq!(health.status, 200, "{health:?}");
    let ready = http_get(admin, "/readyz").await;
    assert_eq!(ready.status, 200, "{ready:?}");
    assert_eq!(ready.body.trim(), "ready");
    let missing = http_get(admin, "/nothing").await;
    assert_eq!(missing.status, 404, "{missing:?}");
    assert_eq!(
        listening_ports(server.pid()),
        {
            let mut ports = vec![server.addr.port(), admin.port()];
            ports.sort_unstable();
            ports
        },
        "the gRPC port and the admin port"
    );
}

/// Without an admin listener nothing counts calls (no layer wraps the replies),
/// and calls are answered as ever: a Put, a Get, and a Watch's initial state and
/// a delta.
#[tokio::test]
async fn an_empty_admin_listen_opens_no_port_and_serves_without_metrics() {
    let dir = temp_dir();
    let server = ServerProcess::start(serve_command(dir.path(), &["--admin-listen", ""])).await;
    assert!(server.admin.is_none());
    assert_eq!(listening_ports(server.pid()), vec![server.addr.port()]);

    let writer = token(dir.path(), "acme", Role::Writer);
    let mut client = connect(server.addr, Some(&writer)).await;
    put(&mut client, "tenant_config_a", "1").await;
    let got = get_keys(&mut client, &["tenant_config_a"]).await;
    assert_eq!(
        summary(&got.entries),
        [("tenant_config_a".into(), 1, false)]
    );
    let mut stream = watch(&mut client, watch_prefixes(&["tenant_config_"])).await;
    let (entries, _) = initial(&mut stream).await;
    assert_eq!(summary(&entries), [("tenant_config_a".into(), 1, false)]);
    put(&mut client, "tenant_config_a", "2").await;
    let delta = changes(&mut stream, 1).await;
    assert_eq!(summary(&delta), [("tenant_config_a".into(), 2, false)]);
}

#[test]
fn a_bad_admin_listen_exits_64_before_binding() {
    let dir = temp_dir();
    let out = serve_command(dir.path(), &["--admin-listen", "localhost:nine"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("--admin-listen"), "{stderr}");
    assert!(out.stdout.is_empty(), "a port was bound");
}

/// A Watch on a connection whose HTTP/2 windows are small and that never reads:
/// what it is sent stays in the server, and its pending set coalesces.
async fn unread_watch(
    addr: std::net::SocketAddr,
    token: &str,
) -> tonic::codec::Streaming<configwatch::proto::WatchResponse> {
    let mut client = small_window_client(addr, token).await;
    client
        .watch(watch_prefixes(&["tenant_config_"]))
        .await
        .unwrap()
        .into_inner()
}

/// Writes to one key while a Watch of it does not read.
const UNREAD_PUTS: usize = 40;

#[tokio::test]
async fn metrics_count_exactly_the_calls_made() {
    let dir = temp_dir();
    let server = ServerProcess::start(serve_command(
        dir.path(),
        &["--admin-listen", "127.0.0.1:0", "--view-idle", "3s"],
    ))
    .await;
    let admin = server.admin.expect("the server said its admin address");
    let before = Scrape::take(admin).await;

    let writer = token(dir.path(), "acme", Role::Writer);
    let mut client = connect(server.addr, Some(&writer)).await;
    for i in 0..3 {
        put(&mut client, &format!("tenant_config_k{i}"), "1").await;
    }
    let mut stream = watch(&mut client, watch_prefixes(&["tenant_config_"])).await;
    let (entries, _) = initial(&mut stream).await;
    assert_eq!(entries.len(), 3);
    // Two changes after the initial state: two deltas.
    for i in 3..5 {
        put(&mut client, &format!("tenant_config_k{i}"), "1").await;
    }
    assert_eq!(changes(&mut stream, 2).await.len(), 2);
    let during = Scrape::take(admin).await;
    assert_eq!(during.value("configwatch_watch_streams_open"), 1.0);
    assert_eq!(during.value("configwatch_views"), 1.0);
    assert_eq!(
        during.delta(&before, "configwatch_watch_deltas_sent_total"),
        2.0
    );
    drop(stream);
    refused_get(server.addr).await;

    // The Watch is counted when the server sees its stream go.
    let watch_ended = r#"configwatch_rpc_calls_total{method="Watch",code="CANCELLED"}"#;
    let gone = r#"configwatch_watch_streams_ended_total{reason="client_gone"}"#;
    let after = eventually(
        PATIENCE,
        || "the closed Watch to be counted".into(),
        || async {
            let after = Scrape::take(admin).await;
            (after.delta(&before, watch_ended) == 1.0 && after.delta(&before, gone) == 1.0)
                .then_some(after)
        },
    )
    .await;
    after.assert_moved(
        &before,
        &[
            (
                r#"configwatch_rpc_calls_total{method="Put",code="OK"}"#,
                5.0,
            ),
            (
                r#"configwatch_rpc_latency_seconds_count{method="Put"}"#,
                5.0,
            ),
            (watch_ended, 1.0),
            (
                r#"configwatch_rpc_calls_total{method="Get",code="UNAUTHENTICATED"}"#,
                1.0,
            ),
            (
                r#"configwatch_auth_refusals_total{reason="malformed"}"#,
                1.0,
            ),
            (r#"configwatch_watch_initial_syncs_total{mode="full"}"#, 1.0),
            (r#"configwatch_watch_initial_syncs_total{mode="diff"}"#, 0.0),
            ("configwatch_watch_streams_open", 0.0),
            ("configwatch_watch_deltas_sent_total", 2.0),
            ("configwatch_watch_changes_coalesced_total", 0.0),
            (gone, 1.0),
            ("configwatch_views_loaded_total", 1.0),
            // Six calls with the writer's token (the first verifies it), and the
            // refused one.
            ("configwatch_auth_token_cache_hits_total", 5.0),
            ("configwatch_auth_token_cache_misses_total", 2.0),
            ("configwatch_jwks_fetches_total", 0.0),
        ],
    );
    // Nothing else moved: the sums over every label.
    after.assert_families_moved(
        &before,
        &[
            ("configwatch_rpc_calls_total", 7.0),
            ("configwatch_auth_refusals_total", 1.0),
            ("configwatch_watch_streams_ended_total", 1.0),
        ],
    );
    promtool_check(&after.text);

    // A Watch that does not read while one key changes UNREAD_PUTS times: every
    // change was taken (a delta), replaced by a newer one (coalesced) or is
    // waiting (the largest backlog).
    let reader = token(dir.path(), "beta", Role::Reader);
    let unread = unread_watch(server.addr, &reader).await;
    let mut beta = connect(server.addr, Some(&token(dir.path(), "beta", Role::Writer))).await;
    let big = format!("\"{}\"", "x".repeat(20_000));
    for _ in 0..UNREAD_PUTS {
        put(&mut beta, "tenant_config_big", &big).await;
    }
    let slow = eventually(
        PATIENCE,
        || "the unread Watch's changes to be taken, coalesced or waiting".into(),
        || async {
            let s = Scrape::take(admin).await;
            let accounted = s.delta(&after, "configwatch_watch_deltas_sent_total")
                + s.delta(&after, "configwatch_watch_changes_coalesced_total")
                + s.value("configwatch_watch_backlog_largest");
            (accounted == UNREAD_PUTS as f64).then_some(s)
        },
    )
    .await;
    let coalesced = slow.delta(&after, "configwatch_watch_changes_coalesced_total");
    assert!(coalesced > 0.0, "nothing coalesced\n{}", slow.text);
    drop(unread);

    // Every view goes once idle: each one loaded was dropped.
    let last = eventually(
        PATIENCE,
        || "both Watches counted as ended and both views dropped".into(),
        || async {
            let s = Scrape::take(admin).await;
            (s.family_delta(&before, "configwatch_watch_streams_ended_total") == 2.0
                && s.value("configwatch_views") == 0.0)
                .then_some(s)
        },
    )
    .await;
    assert_eq!(
        last.delta(&before, "configwatch_views_loaded_total"),
        2.0,
        "{}",
        last.text
    );
    assert_eq!(
        last.delta(&before, "configwatch_views_dropped_total"),
        2.0,
        "{}",
        last.text
    );
    assert_eq!(last.value("configwatch_watch_backlog_largest"), 0.0);
    assert_eq!(
        last.delta(&before, "configwatch_watch_changes_coalesced_total"),
        coalesced,
        "{}",
        last.text
    );
    promtool_check(&last.text);
}

/// A port on 127.0.0.1 that nothing listens on.
fn closed_port() -> u16 {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    closed.local_addr().unwrap().port()
}

/// A server (with an admin listener) whose JWKS URL is on a port nothing listens
/// on: the first fetch fails, the server starts and says why it is not ready.
async fn without_token_keys(dir: &std::path::Path) -> ServerProcess {
    let url = format!("http://127.0.0.1:{}/.well-known/jwks.json", closed_port());
    ServerProcess::start(serve_command(
        dir,
        &[
            "--admin-listen",
            "127.0.0.1:0",
            "--jwks-url",
            &url,
            "--audience",
            "app",
            "--issuer",
            "https://idp.example.com",
        ],
    ))
    .await
}

#[tokio::test]
async fn readyz_is_503_while_the_jwks_has_not_been_fetched() {
    let dir = temp_dir();
    let server = without_token_keys(dir.path()).await;
    let admin = server.admin.expect("an admin address");
    let ready = http_get(admin, "/readyz").await;
    assert_eq!(ready.status, 503, "{ready:?}");
    assert!(ready.body.contains("no token keys"), "{ready:?}");
    assert_eq!(http_get(admin, "/healthz").await.status, 200);
    // gRPC health follows the same readiness.
    wait_for_health(server.addr, ServingStatus::NotServing).await;
}

/// A supervisor that reads only the first line of stdout (the gRPC address) and then
/// closes the pipe must not stop the server: the admin line after it finds a broken
/// pipe, and the server goes on serving.
#[tokio::test]
async fn a_reader_that_closes_stdout_after_the_first_line_does_not_stop_the_server() {
    use std::io::{BufRead, BufReader};
    let dir = temp_dir();
    let mut child = serve_command(dir.path(), &["--admin-listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    // The reader (and the pipe) is gone here.
    let addr: std::net::SocketAddr = first
        .trim()
        .trim_start_matches("listening on ")
        .parse()
        .unwrap();
    let token = token(dir.path(), "acme", Role::Writer);
    let mut c = connect(addr, Some(&token)).await;
    for n in 0..3 {
        put(&mut c, "tenant_config_a", &n.to_string()).await;
    }
    assert!(child.try_wait().unwrap().is_none(), "the server exited");
    child.kill().unwrap();
    let _ = child.wait();
}

/// Clients that connect to the admin listener and send nothing hold its connection
/// slots; a probe arriving while every slot is held is still answered at once: a
/// new connection closes the oldest one.
#[tokio::test]
async fn idle_connections_holding_every_slot_do_not_keep_a_probe_out() {
    let dir = temp_dir();
    let (_server, admin) = start_with_admin(dir.path()).await;
    let mut idle = Vec::new();
    for _ in 0..40 {
        idle.push(tokio::net::TcpStream::connect(admin).await.unwrap());
    }
    // A bystander's probes, each timed: answered well within the 5 s the idle
    // connections would otherwise hold their slots for.
    for _ in 0..5 {
        let started = std::time::Instant::now();
        let health = http_get(admin, "/healthz").await;
        assert_eq!(health.status, 200, "{health:?}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "a probe took {:?} beside idle connections",
            started.elapsed()
        );
    }
    drop(idle);
}

/// `configwatch health ARGS` run to its end: its exit code and stderr.
fn health(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_configwatch"));
    command
        .arg("health")
        .args(args)
        .env_remove("CONFIGWATCH_ADMIN_LISTEN");
    command.envs(env.iter().copied());
    let out = configwatch_test_support::run_to_exit(
        command,
        std::time::Duration::from_secs(20),
        "configwatch health did not exit",
    );
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn health_exits_0_on_healthz_and_on_readyz_when_ready() {
    let dir = temp_dir();
    let (_server, admin) = start_with_admin(dir.path()).await;
    let admin = admin.to_string();
    assert_eq!(health(&["--admin", &admin], &[]), (Some(0), String::new()));
    // The embedded store is ready as soon as the server says its address.
    assert_eq!(
        health(&["--admin", &admin, "--ready"], &[]),
        (Some(0), String::new())
    );
}

/// As in a container: the server listens on 0.0.0.0 by `CONFIGWATCH_ADMIN_LISTEN`,
/// and `health` with the same environment (no flag) reaches it on loopback.
#[tokio::test]
async fn health_reaches_an_unspecified_admin_address_on_loopback() {
    let dir = temp_dir();
    let server =
        ServerProcess::start(serve_command(dir.path(), &["--admin-listen", "0.0.0.0:0"])).await;
    let admin = server.admin.expect("an admin address");
    assert!(admin.ip().is_unspecified(), "{admin}");
    let env = admin.to_string();
    let (code, stderr) = health(&[], &[("CONFIGWATCH_ADMIN_LISTEN", &env)]);
    assert_eq!(code, Some(0), "{stderr}");
}

#[tokio::test]
async fn health_exits_1_saying_why_when_nothing_listens_or_the_server_is_not_ready() {
    let nobody = format!("127.0.0.1:{}", closed_port());
    let (code, stderr) = health(&["--admin", &nobody], &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains(&format!("http://{nobody}/healthz: cannot connect")),
        "{stderr}"
    );

    // Alive but not ready: its token keys (a JWKS nobody serves) never arrive.
    let dir = temp_dir();
    let server = without_token_keys(dir.path()).await;
    let admin = server.admin.expect("an admin address").to_string();
    assert_eq!(health(&["--admin", &admin], &[]).0, Some(0), "alive");
    let (code, stderr) = health(&["--admin", &admin, "--ready"], &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains(&format!("http://{admin}/readyz: 503 ")) && stderr.contains("token keys"),
        "{stderr}"
    );
}

#[test]
fn health_with_a_bad_address_or_timeout_exits_64() {
    for args in [
        &["--admin", "localhost:nine"][..],
        &["--admin", ""],
        &["--admin", "127.0.0.1:9", "--timeout", "0s"],
    ] {
        let (code, stderr) = health(args, &[]);
        assert_eq!(code, Some(64), "{args:?}: {stderr}");
    }
}
