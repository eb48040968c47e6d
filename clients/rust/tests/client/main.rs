//! The client against real configwatch servers (see `common` for the harness).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cache;
#[path = "../common/mod.rs"]
mod common;
mod failures;
mod history;
mod lifecycle;
mod relay;
mod servers;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use configwatch_client::{Cause, ChangeKind, Client, Error, Source, State, SyncMode, static_token};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;
use tokio::time::timeout;

const SECS_10: Duration = Duration::from_secs(10);

#[derive(Debug, Deserialize, PartialEq)]
struct Flag {
    on: bool,
}
