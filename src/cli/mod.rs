//! The `configwatch` command line: `serve`, `token`, the client commands `get`,
//! `put`, `delete`, `history`, `rollback` and `watch`, and `health`. Every flag can also be set by
//! environment variable.
//!
//! Exit codes: 0 success; 1 an error from the server (printed as its gRPC status and
//! message) or a key not found; 64 bad usage or configuration, detected before any
//! port is bound.
//!
//! The parts: [`flags`] (the clap structs, value parsers and the checks made before
//! any port is bound), [`serve`] (the composition root: the only code that knows
//! every part of the server and wires them; `admin` its half that registers the
//! metrics and starts the admin listener, `counters` the parts' counters and gauges,
//! `origin` the AWS backends and sources of an origin, `relay` a relay's parts), and
//! the client commands in
//! [`commands`] (`token`, `get`, `put`, `delete`), `history` (`history`,
//! `rollback`) and [`watch`]; [`health`] checks a
//! running server's admin listener (a container's health check).

mod admin;
pub mod commands;
mod counters;
pub mod flags;
pub mod health;
mod history;
mod origin;
mod relay;
pub mod serve;
pub mod watch;

use std::path::Path;

use clap::{Parser, Subcommand};

use crate::auth::local::LocalKey;

pub use flags::*;

/// Exit code for bad usage or configuration (EX_USAGE).
pub const EXIT_USAGE: i32 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "configwatch",
    version,
    about = "Multi-tenant configuration push server"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(Box<ServeArgs>),
    /// Print a token signed with the server's key (for local use and testing).
    Token(TokenArgs),
    /// Read keys (or prefixes) and print one JSON object per entry.
    Get(GetArgs),
    /// Write a JSON value.
    Put(PutArgs),
    /// Delete a key.
    Delete(DeleteArgs),
    /// Print the versions of a key the store keeps, newest first, one JSON object
    /// per line.
    History(HistoryArgs),
    /// Write a key's earlier version again as a new version (compare-and-set on
    /// the current one).
    Rollback(RollbackArgs),
    /// Print one JSON object per line for every change under the prefixes.
    Watch(WatchArgs),
    /// Check a running server's admin listener (/healthz, or /readyz with --ready):
    /// exit 0 when it answers 200, 1 otherwise.
    Health(HealthArgs),
}

/// A command's failure: what to print and the exit code.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub code: i32,
}

impl Failure {
    fn usage(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            code: EXIT_USAGE,
        }
    }

    fn error(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            code: 1,
        }
    }
}

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Self {
        Failure::error(format!("{:?}: {}", s.code(), s.message()))
    }
}

/// Runs a parsed command.
pub async fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Serve(args) => serve::run_serve(*args).await,
        Command::Token(args) => commands::run_token(args),
        Command::Get(args) => commands::run_get(args).await,
        Command::Put(args) => commands::run_put(args).await,
        Command::Delete(args) => commands::run_delete(args).await,
        Command::History(args) => history::run_history(args).await,
        Command::Rollback(args) => history::run_rollback(args).await,
        Command::Watch(args) => watch::run_watch(args).await,
        Command::Health(args) => health::run_health(args).await,
    }
}

fn open_key(data_dir: &Path) -> Result<LocalKey, Failure> {
    let (key, created) =
        LocalKey::load_or_create(data_dir).map_err(|e| Failure::usage(e.to_string()))?;
    if created {
        tracing::info!(path = %data_dir.display(), "created a new signing key");
    }
    Ok(key)
}
