//! Storage accidents: a lost or replaced database, a full disk, damaged records.
//! Each is survived without serving wrong data and without turning the accident
//! into deletions pushed to clients.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;
mod damaged;
mod full_disk;
mod lost;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use configwatch::auth::Role;
use configwatch::auth::local::LocalKey;
use configwatch::model::Scope;
use configwatch::proto::{self, watch_response::InitialMode};
use configwatch::store::Router;
use configwatch::store::embedded::{DB_FILE, EmbeddedStore};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

const BIN: &str = env!("CARGO_BIN_EXE_configwatch");

fn serve_command(dir: &Path, extra: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .args(extra)
        .env("CONFIGWATCH_LOG", "warn");
    command
}

/// Runs a command that must exit by itself; kills it after PATIENCE.
fn run_to_exit(mut command: Command) -> std::process::Output {
    let child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start configwatch");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(PATIENCE) {
        Ok(out) => out.expect("output"),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("configwatch serve did not exit: it started instead of refusing");
        }
    }
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

async fn get_all(client: &mut Client) -> Result<proto::GetResponse, tonic::Status> {
    client
        .get(proto::GetRequest::default())
        .await
        .map(|r| r.into_inner())
}
