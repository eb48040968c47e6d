//! The admin listener as operators use it: the binary started with
//! `--admin-listen 127.0.0.1:0`, its `/healthz`, `/readyz` and `/metrics` read over
//! HTTP; the flag off or wrong.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::*;
use configwatch_test_support::procfs::listening_ports;
use configwatch_test_support::{ServerProcess, http_get};

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
    let out = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "localhost:nine",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("--admin-listen"), "{stderr}");
    assert!(out.stdout.is_empty(), "a port was bound");
}
