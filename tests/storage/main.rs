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

use common::*;
use configwatch::auth::Role;
use configwatch::model::Scope;
use configwatch::proto::{self, watch_response::InitialMode};
use configwatch::store::Router;
use configwatch::store::embedded::{DB_FILE, EmbeddedStore};
use configwatch_test_support::{ServerProcess, eventually};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

/// Runs `configwatch serve` that must refuse to start; kills it after PATIENCE.
fn run_to_exit(command: Command) -> std::process::Output {
    configwatch_test_support::run_to_exit(
        command,
        PATIENCE,
        "configwatch serve did not exit: it started instead of refusing",
    )
}

async fn get_all(client: &mut Client) -> Result<proto::GetResponse, tonic::Status> {
    client
        .get(proto::GetRequest::default())
        .await
        .map(|r| r.into_inner())
}
