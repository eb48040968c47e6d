//! The admin listener as operators use it: the binary started with
//! `--admin-listen 127.0.0.1:0`, its `/healthz`, `/readyz` and `/metrics` read over
//! HTTP; the flag off or wrong.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};

use common::*;
use configwatch::auth::Role;
use configwatch_test_support::procfs::listening_ports;
use configwatch_test_support::{ServerProcess, eventually, http_get};
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

#[tokio::test]
async fn an_empty_admin_listen_opens_no_port() {
    let dir = temp_dir();
    let server = ServerProcess::start(serve_command(dir.path(), &["--admin-listen", ""])).await;
    assert!(server.admin.is_none());
    assert_eq!(listening_ports(server.pid()), vec![server.addr.port()]);
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

/// A scrape of `/metrics`: each series (name and labels as written) with its value.
async fn scrape(admin: std::net::SocketAddr) -> (String, HashMap<String, f64>) {
    let answer = http_get(admin, "/metrics").await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let series = answer
        .body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').expect("a series and its value");
            let value = value
                .parse()
                .unwrap_or_else(|_| panic!("a number in {l:?}"));
            (name.to_owned(), value)
        })
        .collect();
    (answer.body, series)
}

/// `promtool check metrics` on `text`, when promtool is installed.
fn promtool_check(text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        eprintln!("SKIPPED promtool check: promtool is not installed (Debian package prometheus)");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn metrics_count_exactly_the_calls_made() {
    let dir = temp_dir();
    let (server, admin) = start_with_admin(dir.path()).await;
    let (_, before) = scrape(admin).await;
    let delta = |after: &HashMap<String, f64>, series: &str| {
        after.get(series).copied().unwrap_or(0.0) - before.get(series).copied().unwrap_or(0.0)
    };

    let writer = token(dir.path(), "acme", Role::Writer);
    let mut client = connect(server.addr, Some(&writer)).await;
    for i in 0..3 {
        put(&mut client, &format!("tenant_config_k{i}"), "1").await;
    }
    let mut stream = watch(&mut client, watch_prefixes(&["tenant_config_"])).await;
    let (entries, _) = initial(&mut stream).await;
    assert_eq!(entries.len(), 3);
    let (_, during) = scrape(admin).await;
    assert_eq!(during["configwatch_watch_streams_open"], 1.0);
    drop(stream);
    let mut refused = connect(server.addr, Some("not-a-token")).await;
    let status = refused
        .get(configwatch::proto::GetRequest::default())
        .await
        .expect_err("a malformed token is refused");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);

    // The Watch is counted when the server sees its stream go.
    let watch_ended = r#"configwatch_rpc_calls_total{method="Watch",code="CANCELLED"}"#;
    let after = eventually(
        PATIENCE,
        || "the closed Watch to be counted".into(),
        || async {
            let (text, after) = scrape(admin).await;
            (delta(&after, watch_ended) == 1.0).then_some((text, after))
        },
    )
    .await;
    let (text, after) = after;
    for (series, moved) in [
        (
            r#"configwatch_rpc_calls_total{method="Put",code="OK"}"#,
            3.0,
        ),
        (
            r#"configwatch_rpc_latency_seconds_count{method="Put"}"#,
            3.0,
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
    ] {
        assert_eq!(delta(&after, series), moved, "{series}\n{text}");
    }
    // Nothing else moved: the sums over every label.
    let moved = |family: &str| -> f64 {
        after
            .keys()
            .filter(|s| s.starts_with(family))
            .map(|s| delta(&after, s))
            .sum()
    };
    assert_eq!(
        moved("configwatch_rpc_calls_total"),
        5.0,
        "three Puts, one Watch, one refused Get\n{text}"
    );
    assert_eq!(moved("configwatch_auth_refusals_total"), 1.0, "{text}");
    promtool_check(&text);
}

#[tokio::test]
async fn readyz_is_503_while_the_jwks_has_not_been_fetched() {
    // A JWKS URL on a port nothing listens on: the first fetch fails, the server
    // starts and says why it is not ready.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let dir = temp_dir();
    let url = format!("http://127.0.0.1:{port}/.well-known/jwks.json");
    let server = ServerProcess::start(serve_command(
        dir.path(),
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
    .await;
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
