//! What the binary writes on stderr as an operator reads it: JSON lines with
//! `--log-format json`, the line a Watch leaves when it ends, and refused tokens
//! logged at a bounded rate, never with the token.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use configwatch::auth::Role;
use configwatch::proto;
use configwatch_test_support::{ServerProcess, wait_for};
use serde_json::Value;

/// The binary at `info` with `extra` arguments, its stderr into `dir/server.log`.
async fn start_logging(dir: &Path, extra: &[&str]) -> (ServerProcess, PathBuf) {
    let log = dir.join("server.log");
    let mut command = serve_command(dir, extra);
    command
        .env("CONFIGWATCH_LOG", "info")
        .stderr(std::fs::File::create(&log).unwrap());
    (ServerProcess::start(command).await, log)
}

fn read(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap()
}

/// Every line parsed as a JSON object (panics on one that is not).
fn json_lines(log: &Path) -> Vec<Value> {
    read(log)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn watch_ends(log: &Path) -> Vec<Value> {
    json_lines(log)
        .into_iter()
        .filter(|l| l["message"] == "watch ended")
        .collect()
}

/// The parts of a token that must never reach a log.
fn assert_no_token(text: &str, token: &str) {
    for part in token.split('.').skip(1) {
        assert!(!text.contains(part), "a token part was logged: {text}");
    }
}

#[tokio::test]
async fn json_lines_say_when_and_why_each_watch_ended() {
    let dir = temp_dir();
    let (server, log) = start_logging(dir.path(), &["--log-format", "json"]).await;
    let t = token(dir.path(), "acme", Role::Writer);
    let mut c = connect(server.addr, Some(&t)).await;
    put(&mut c, "tenant_config_a", "1").await;
    put(&mut c, "tenant_config_b", "2").await;

    // A Watch the client closes after the initial state and one delta.
    let mut w = watch(&mut c, watch_prefixes(&["tenant_config_"])).await;
    let (initial_entries, _) = initial(&mut w).await;
    assert_eq!(initial_entries.len(), 2);
    put(&mut c, "tenant_config_c", "3").await;
    assert_eq!(changes(&mut w, 1).await.len(), 1);
    drop(w);
    wait_for(
        Duration::from_secs(10),
        || format!("a watch end line in {}", read(&log)),
        || !watch_ends(&log).is_empty(),
    )
    .await;
    let ends = watch_ends(&log);
    assert_eq!(ends.len(), 1, "{ends:#?}");
    let end = &ends[0];
    assert_eq!(end["level"], "INFO");
    assert_eq!(end["tenant"], "acme");
    assert_eq!(end["reason"], "client went away");
    assert_eq!(end["prefixes"], 1);
    assert_eq!(end["messages"], 2, "the initial state and one delta: {end}");
    assert_eq!(end["changes"], 3, "{end}");
    assert!(end["duration_ms"].is_u64(), "{end}");
    assert!(end.get("timestamp").is_some() && end.get("target").is_some());

    // A Watch open when the server stops ends by the shutdown.
    let mut w = watch(&mut c, watch_prefixes(&[])).await;
    initial(&mut w).await;
    server.terminate(Duration::from_secs(30)).await.unwrap();
    let ends = watch_ends(&log);
    assert_eq!(ends.len(), 2, "{ends:#?}");
    assert_eq!(ends[1]["reason"], "shutdown", "{}", ends[1]);
    assert_eq!(ends[1]["code"], "Unavailable", "{}", ends[1]);
    assert_eq!(ends[1]["prefixes"], 0);

    // Every line of the run, start to stop, is an object with a level and a message.
    let lines = json_lines(&log);
    assert!(lines.len() > 3, "{lines:#?}");
    for line in &lines {
        assert!(line["level"].is_string(), "{line}");
        assert!(line["message"].is_string(), "{line}");
    }
    assert_no_token(&read(&log), &t);
}

#[tokio::test]
async fn a_flood_of_refused_tokens_logs_the_limit_then_a_count() {
    let dir = temp_dir();
    let (server, log) = start_logging(dir.path(), &[]).await;
    let good = token(dir.path(), "acme", Role::Reader);
    let forged = format!("{good}tampered");
    let mut bad = connect(server.addr, Some(&forged)).await;
    let began = Instant::now();
    for _ in 0..100 {
        let status = bad.get(proto::GetRequest::default()).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
    }
    let flood = began.elapsed();
    wait_for(
        Duration::from_secs(30),
        || format!("the refusals' summary in {}", read(&log)),
        || read(&log).contains("more refusals in the last 10s"),
    )
    .await;
    let text = read(&log);
    let refused: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("token refused"))
        .collect();
    let summaries: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("more refusals"))
        .collect();
    eprintln!(
        "100 refusals in {flood:?}: {} lines",
        refused.len() + summaries.len()
    );
    assert_eq!(refused.len(), 10, "{text}");
    assert!(
        refused[0].contains("reason=token is malformed"),
        "the reason: {}",
        refused[0]
    );
    assert_eq!(summaries.len(), 1, "{text}");
    assert!(summaries[0].contains("90 more refusals"), "{text}");
    assert_no_token(&text, &forged);
    assert_no_token(&text, &good);
}

#[test]
fn an_unknown_log_format_exits_64_before_binding() {
    let dir = temp_dir();
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(["--log-format", "xml"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("--log-format"), "{stderr}");
    assert!(out.stdout.is_empty(), "a port was bound");
}
