//! A relay refuses writes and cross-tenant reads that the origin would refuse, with
//! the caller's token, and never caches a secret: an embedded origin and a relay in
//! front of it, both as `configwatch serve` processes.
//!
//! - `refusals`: every refusal and bad write asked of both, the answers compared;
//! - `secrets`: a service token reading its service through the relay, and secrets
//!   read upstream at each Get and never pushed;
//! - `credential`: the relay's own token rotated without a restart (before its first
//!   use, and while its upstream Watch runs), and the relay configurations that
//!   must not start;
//! - `cognito`: a relay whose token comes from Cognito (moto's user pool), with no
//!   AWS credentials, and the Cognito flags' wrong combinations.
//!
//! This file: the two servers, their tokens, and the calls the suites ask of them.
//!
//! Boundary: what a client of the relay sees (statuses, entries, stream messages)
//! and the binary's exit; nothing of the relay's internals.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cognito;
#[path = "../common/mod.rs"]
mod common;
mod credential;
mod refusals;
mod secrets;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::*;
use configwatch::auth::Role;
use configwatch::auth::local::{KEY_FILE, LocalKey};
use configwatch::clock::Clock;
use configwatch::model::Scope;
use configwatch::proto;
use configwatch_test_support::{Scrape, ServerProcess, eventually, http_get, run_to_exit};
use tonic::{Code, Status};

/// An origin on the embedded store and a relay whose only upstream it is.
struct Tier {
    origin: ServerProcess,
    relay: ServerProcess,
    origin_dir: tempfile::TempDir,
    relay_dir: tempfile::TempDir,
}

impl Tier {
    /// Starts both; the relay's token file holds `relay_token`, or a valid relay
    /// token when `None`.
    async fn start(relay_token: Option<&str>) -> Tier {
        let origin_dir = temp_dir();
        let origin = ServerProcess::start(serve_command(origin_dir.path(), &[])).await;
        let relay_dir = temp_dir();
        std::fs::copy(
            origin_dir.path().join(KEY_FILE),
            relay_dir.path().join(KEY_FILE),
        )
        .expect("copy the origin's signing key");
        let token = match relay_token {
            Some(t) => t.to_owned(),
            None => relay_token_of(origin_dir.path()),
        };
        let file = relay_dir.path().join("upstream-token");
        std::fs::write(&file, token).expect("write the token file");
        let relay =
            ServerProcess::start(relay_command(relay_dir.path(), &origin.url(), &file)).await;
        Tier {
            origin,
            relay,
            origin_dir,
            relay_dir,
        }
    }

    fn token_file(&self) -> PathBuf {
        self.relay_dir.path().join("upstream-token")
    }

    /// A token of `tenant` (narrowed to `service` when given) signed by the origin.
    fn token(&self, tenant: &str, service: Option<&str>, role: Role) -> String {
        let scope = Scope::new(tenant, service).expect("scope");
        key_of(self.origin_dir.path())
            .issue(&scope, role, Duration::from_secs(600), "test")
            .expect("token")
    }
}

fn key_of(dir: &Path) -> LocalKey {
    LocalKey::load_or_create(dir).expect("signing key").0
}

fn relay_token_of(origin_dir: &Path) -> String {
    key_of(origin_dir)
        .issue_relay(Duration::from_secs(600), "relay")
        .expect("relay token")
}

/// `serve --upstream URL --upstream-token-file FILE` on `dir`.
fn relay_command(dir: &Path, upstream: &str, token_file: &Path) -> std::process::Command {
    let mut command = serve_command(
        dir,
        &[
            "--admin-listen",
            "127.0.0.1:0",
            "--upstream",
            upstream,
            "--source-down-grace",
            "1s",
        ],
    );
    command.arg("--upstream-token-file").arg(token_file);
    command
}

/// Waits until `/readyz` on `admin` answers `status` with a body that says
/// `saying`; the body.
async fn readyz(admin: SocketAddr, status: u16, saying: &str) -> String {
    eventually(
        Duration::from_secs(20),
        || format!("the relay's /readyz to answer {status} saying {saying:?}"),
        || async move {
            let answer = http_get(admin, "/readyz").await;
            (answer.status == status && answer.body.contains(saying)).then_some(answer.body)
        },
    )
    .await
}

/// Runs a `serve` command that must refuse to start: exit 64, with a message that
/// names `fix`. Its stderr.
fn exits_64_naming(what: &str, command: std::process::Command, fix: &str) -> String {
    let out = run_to_exit(
        command,
        Duration::from_secs(20),
        &format!("{what}: the relay did not exit"),
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(64), "{what}: {stderr}");
    assert!(
        stderr.contains(fix),
        "{what}: the message names the fix: {stderr}"
    );
    stderr
}

/// One call a test asks of both servers.
#[derive(Clone, Debug)]
enum Call {
    Get(proto::GetRequest),
    Watch(proto::WatchRequest),
    Put(proto::PutRequest),
    Delete(proto::DeleteRequest),
}

impl Call {
    fn put(key: &str, value: &str, tenant: &str) -> Call {
        Call::Put(proto::PutRequest {
            key: key.to_owned(),
            value: value.to_owned(),
            tenant: tenant.to_owned(),
            ..Default::default()
        })
    }

    fn delete(key: &str, tenant: &str) -> Call {
        Call::Delete(proto::DeleteRequest {
            key: key.to_owned(),
            tenant: tenant.to_owned(),
            ..Default::default()
        })
    }

    fn get(tenant: &str, service: &str) -> Call {
        Call::Get(proto::GetRequest {
            tenant: tenant.to_owned(),
            service: service.to_owned(),
            ..Default::default()
        })
    }

    fn watch(tenant: &str, service: &str) -> Call {
        Call::Watch(proto::WatchRequest {
            tenant: tenant.to_owned(),
            service: service.to_owned(),
            ..Default::default()
        })
    }

    /// Runs the call on `addr`: a Watch counts as answered once its first message
    /// arrives (a refusal comes at the call or as the stream's first item).
    async fn on(&self, addr: SocketAddr, token: Option<&str>) -> Result<(), Status> {
        let mut client = connect(addr, token).await;
        match self.clone() {
            Call::Get(r) => client.get(r).await.map(drop),
            Call::Put(r) => client.put(r).await.map(drop),
            Call::Delete(r) => client.delete(r).await.map(drop),
            Call::Watch(r) => {
                let mut stream = client.watch(r).await?.into_inner();
                match tokio::time::timeout(PATIENCE, stream.message()).await {
                    Ok(first) => first.map(drop),
                    Err(_) => panic!("a watch neither answered nor ended within {PATIENCE:?}"),
                }
            }
        }
    }
}
