//! History, audit and rollback as users meet them, on the embedded store, with the
//! `configwatch` binary on 127.0.0.1: every write's version kept with who wrote it,
//! where and why (`api`), the retention flags (`retention`), a secret's history
//! (`secrets`), History through a relay (`relay`), and the command line's `history`
//! and `rollback` (`cli`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;

mod api;
mod cli;
mod relay;
mod retention;
mod secrets;

use std::path::Path;
use std::time::Duration;

use common::*;
use configwatch::auth::Role;
use configwatch::auth::local::LocalKey;
use configwatch::model::Scope;
use configwatch::proto;
use configwatch_test_support::ServerProcess;

/// The instance name the servers of this suite record.
const INSTANCE: &str = "cw-history-1";

/// `configwatch serve` on `dir` naming itself [`INSTANCE`], with `extra` flags.
async fn server(dir: &Path, extra: &[&str]) -> ServerProcess {
    let mut args = vec!["--instance-name", INSTANCE];
    args.extend_from_slice(extra);
    ServerProcess::start(serve_command(dir, &args)).await
}

/// A token of `subject` for `tenant` (and `service`), signed with `dir`'s key.
fn token_of(dir: &Path, tenant: &str, service: Option<&str>, role: Role, subject: &str) -> String {
    let (key, _) = LocalKey::load_or_create(dir).unwrap();
    key.issue(
        &Scope::new(tenant, service).unwrap(),
        role,
        Duration::from_secs(600),
        subject,
    )
    .unwrap()
}

async fn client_of(server: &ServerProcess, token: &str) -> Client {
    connect(server.addr, Some(token)).await
}

/// A Put with a reason; the new version.
async fn put_because(client: &mut Client, key: &str, value: &str, reason: &str) -> u64 {
    let request = proto::PutRequest {
        key: key.into(),
        value: value.into(),
        reason: reason.into(),
        ..Default::default()
    };
    put_request(client, request).await.version
}

/// A History call.
async fn history(
    client: &mut Client,
    request: proto::HistoryRequest,
) -> Result<proto::HistoryResponse, tonic::Status> {
    client
        .history(request)
        .await
        .map(tonic::Response::into_inner)
}

/// Version `version` of `key` alone.
async fn one_version(
    client: &mut Client,
    key: &str,
    version: u64,
) -> Result<proto::HistoryResponse, tonic::Status> {
    let request = proto::HistoryRequest {
        key: key.into(),
        version,
        ..Default::default()
    };
    history(client, request).await
}

/// The history of `key` asked for with a tenant and a service named.
async fn named(
    client: &mut Client,
    tenant: &str,
    service: &str,
    key: &str,
) -> Result<proto::HistoryResponse, tonic::Status> {
    let request = proto::HistoryRequest {
        tenant: tenant.into(),
        service: service.into(),
        key: key.into(),
        ..Default::default()
    };
    history(client, request).await
}

/// Every kept version of `key`, newest first.
async fn all_versions(client: &mut Client, key: &str) -> Vec<proto::KeyVersion> {
    history(
        client,
        proto::HistoryRequest {
            key: key.into(),
            ..Default::default()
        },
    )
    .await
    .unwrap_or_else(|s| panic!("history {key}: {s:?}"))
    .versions
}

fn numbers(versions: &[proto::KeyVersion]) -> Vec<u64> {
    versions.iter().map(|v| v.version).collect()
}
