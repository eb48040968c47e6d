//! The `configwatch` binary as users run it: durability across `kill -9`, and the
//! command-line client.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;
use configwatch::auth::Role;
use configwatch::proto;
use configwatch_test_support::ServerProcess;

/// Starts the binary on 127.0.0.1 port 0.
async fn start_server(dir: &Path) -> ServerProcess {
    ServerProcess::start(serve_command(dir, &[])).await
}

#[tokio::test]
async fn acknowledged_writes_survive_kill_9() {
    let dir = temp_dir();
    let server = start_server(dir.path()).await;
    let t = token(dir.path(), "acme", Role::Writer);
    let c = connect(server.addr, Some(&t)).await;
    // Concurrent writers, so commits interleave; every acknowledged one must survive.
    let mut tasks = Vec::new();
    for w in 0..8 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..25 {
                let key = format!("tenant_config_w{w}-{i}");
                let e = put(&mut c, &key, &format!("{{\"w\":{w},\"i\":{i}}}")).await;
                acked.push((e.key, e.version));
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    let mut c2 = c.clone();
    put(&mut c2, "tenant_config_w0-0", "\"second version\"").await;
    delete(&mut c2, "tenant_config_w1-1").await;
    server.kill9().await;

    let server = start_server(dir.path()).await;
    let mut c = connect(server.addr, Some(&t)).await;
    let all = c
        .get(proto::GetRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.entries.len(), acked.len() - 1);
    for e in &all.entries {
        let expected = match e.key.as_str() {
            "tenant_config_w0-0" => 2,
            _ => 1,
        };
        assert_eq!(e.version, expected, "{}", e.key);
    }
    assert!(!all.entries.iter().any(|e| e.key == "tenant_config_w1-1"));
    // The version sequence continues after the restart, deletes included.
    let e = put(&mut c, "tenant_config_w1-1", "\"back\"").await;
    assert_eq!(e.version, 3);
}

fn cli(args: &[&str], server: &ServerProcess, token: &str) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env("CONFIGWATCH_SERVER", format!("http://{}", server.addr))
        .env("CONFIGWATCH_TOKEN", token)
        .output()
        .expect("run configwatch")
}

#[tokio::test]
async fn the_command_line_client() {
    let dir = temp_dir();
    let server = start_server(dir.path()).await;
    let out = Command::new(BIN)
        .args([
            "token",
            "--tenant",
            "acme",
            "--role",
            "writer",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let t = String::from_utf8(out.stdout).unwrap().trim().to_owned();

    let mut watcher = Command::new(BIN)
        .args(["watch", "tenant_config_"])
        .env("CONFIGWATCH_SERVER", format!("http://{}", server.addr))
        .env("CONFIGWATCH_TOKEN", &t)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watcher.stdout.take().unwrap()).lines();

    let out = cli(
        &["put", "tenant_config_flags", "{\"dark\": true}"],
        &server,
        &t,
    );
    assert!(out.status.success(), "{out:?}");
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["version"], 1);

    let out = cli(&["get", "tenant_config_flags"], &server, &t);
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["value"]["dark"], true);
    // Several servers: the first that answers (nothing listens on the first).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let out = Command::new(BIN)
        .args(["get", "tenant_config_flags"])
        .env(
            "CONFIGWATCH_SERVER",
            format!("{down},http://{}", server.addr),
        )
        .env("CONFIGWATCH_TOKEN", &t)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["value"]["dark"], true);
    let out = Command::new(BIN)
        .args(["get", "tenant_config_flags"])
        .env("CONFIGWATCH_SERVER", &down)
        .env("CONFIGWATCH_TOKEN", &t)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot connect to {down}")),
        "{stderr}"
    );

    let out = cli(
        &["put", "tenant_config_flags", "{}", "--expect-version", "7"],
        &server,
        &t,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("FailedPrecondition") && err.contains("current version is 1"),
        "{err}"
    );

    let out = cli(&["delete", "tenant_config_flags"], &server, &t);
    assert!(out.status.success(), "{out:?}");
    let out = cli(&["get", "tenant_config_flags"], &server, &t);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));

    let out = cli(&["put", "bogus", "1"], &server, &t);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("InvalidArgument"));

    let out = cli(&["get", "tenant_config_x"], &server, "");
    assert_eq!(out.status.code(), Some(64), "no token is a usage error");

    // The watcher printed each change as one JSON object per line.
    let mut seen = Vec::new();
    for _ in 0..2 {
        let line = lines.next().unwrap().unwrap();
        seen.push(serde_json::from_str::<serde_json::Value>(&line).unwrap());
    }
    assert_eq!(seen[0]["key"], "tenant_config_flags");
    assert_eq!(seen[0]["value"]["dark"], true);
    assert_eq!(seen[1]["deleted"], true);
    assert_eq!(seen[1]["version"], 2);
    let _ = watcher.kill();
    let _ = watcher.wait();
}

#[test]
fn bad_configuration_exits_64_before_binding() {
    let dir = temp_dir();
    let out = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--history",
            "0",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--history"));
    let out = Command::new(BIN)
        .args(["serve", "--listen", "not-an-address"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    // AWS settings: each refusal names the flag to fix.
    for (args, names) in [
        (&["--table", "t"][..], "--backend aws"),
        (&["--backend", "aws"][..], "--table"),
        (
            &["--backend", "aws", "--table", "t", "--ssm-root", "/a/"][..],
            "--ssm-root",
        ),
        (
            &[
                "--backend",
                "aws",
                "--table",
                "t",
                "--reconcile-interval",
                "10ms",
            ][..],
            "--reconcile-interval",
        ),
        (
            &[
                "--backend",
                "aws",
                "--table",
                "t",
                "--stream-poll-interval",
                "1ms",
            ][..],
            "--stream-poll-interval",
        ),
        (&["--backend", "dynamo"][..], "--backend"),
        (&["--view-idle", "500ms"][..], "--view-idle"),
        (&["--view-idle", "soon"][..], "--view-idle"),
        (&["--max-connection-age", "0s"][..], "--max-connection-age"),
        (
            &["--max-connection-age", "500ms"][..],
            "--max-connection-age",
        ),
    ] {
        let out = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .args(args)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains(names), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?} bound a port");
    }
}

#[tokio::test]
async fn tokens_and_secret_values_never_reach_the_logs() {
    let dir = temp_dir();
    let log_path = dir.path().join("server.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut command = serve_command(dir.path(), &[]);
    command.env("CONFIGWATCH_LOG", "trace").stderr(log);
    let server = ServerProcess::start(command).await;
    let addr = server.addr;

    let good = token(dir.path(), "acme", Role::Writer);
    let mut c = connect(addr, Some(&good)).await;
    let secret = "s3cr3t-value-that-must-not-be-logged";
    c.put(proto::PutRequest {
        key: "param_config_db/password".into(),
        value: format!("\"{secret}\""),
        secret: true,
        ..Default::default()
    })
    .await
    .unwrap();
    c.get(proto::GetRequest::default()).await.unwrap();
    let mut w = watch(&mut c, watch_prefixes(&[])).await;
    initial(&mut w).await;
    let forged = format!("{good}tampered");
    let mut bad = connect(addr, Some(&forged)).await;
    bad.get(proto::GetRequest::default()).await.unwrap_err();
    let mut garbage = connect(addr, Some("not.a.jwt")).await;
    garbage.get(proto::GetRequest::default()).await.unwrap_err();
    drop((w, c, bad, garbage));
    server.kill9().await;

    let logged = std::fs::read_to_string(&log_path).unwrap();
    assert!(logged.len() > 1_000, "trace logging produced output");
    let signature = good.rsplit('.').next().unwrap();
    assert!(!logged.contains(signature), "a token signature was logged");
    assert!(
        !logged.contains(good.split('.').nth(1).unwrap()),
        "a token payload was logged"
    );
    assert!(!logged.contains("not.a.jwt"));
    assert!(!logged.contains(secret), "a secret value was logged");
}

/// An HTTP/2 frame type: GOAWAY.
const GOAWAY: u8 = 0x7;

#[tokio::test]
async fn a_connection_at_its_maximum_age_is_sent_goaway() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = temp_dir();
    let server = ServerProcess::start(serve_command(
        dir.path(),
        &[
            "--max-connection-age",
            "1s",
            "--max-connection-age-grace",
            "1s",
        ],
    ))
    .await;
    // A client that speaks HTTP/2 and makes no call: the preface, empty SETTINGS.
    let mut socket = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let opened = tokio::time::Instant::now();
    socket
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    // Frames until a GOAWAY: a 9-byte header (24-bit length, type, flags, stream).
    let goaway = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            let mut header = [0u8; 9];
            socket.read_exact(&mut header).await?;
            let len =
                usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
            let mut payload = vec![0u8; len];
            socket.read_exact(&mut payload).await?;
            if header[3] == GOAWAY {
                return Ok::<_, std::io::Error>(payload);
            }
        }
    })
    .await
    .expect("no GOAWAY within 10 s")
    .unwrap();
    // Sent at 90% of the age at the earliest; error code 0, NO_ERROR: a graceful end.
    assert!(opened.elapsed() >= std::time::Duration::from_millis(900));
    assert_eq!(goaway.get(4..8), Some(&[0u8, 0, 0, 0][..]), "{goaway:?}");
}
