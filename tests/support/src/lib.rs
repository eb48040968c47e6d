//! Test support shared by every test suite of the workspace (the server's `tests/`
//! and the Rust client's `clients/rust/tests/`): what a test needs that is not
//! configwatch's own code.
//!
//! - [`process`]: the `configwatch` binary as a child process on 127.0.0.1 port 0
//!   (its address read from its first line), stopped with SIGTERM or `kill -9`;
//!   commands that must exit by themselves.
//! - [`http`]: a plain HTTP GET, for the admin listener, and other plain requests.
//! - [`metrics`]: scrapes of `/metrics` and their deltas; `promtool check metrics`.
//! - [`token`]: tokens minted by the binary's own `token` command.
//! - [`wait`]: waiting for a condition by polling it against a deadline, never by a
//!   fixed sleep.
//! - `moto` (feature `moto`): a private moto server (AWS emulator) with the
//!   resources of the CloudFormation template (and, for a second instance, one
//!   more queue the rule feeds: `Moto::add_event_queue`); `moto_stack`: the
//!   template itself deployed by moto's CloudFormation, its outputs and resources;
//!   `moto_ecs`: the service template (ECS, load balancers, the data template
//!   nested) deployed the way `aws cloudformation package` deploys it, and moto's
//!   own state for what the suite has no SDK client for;
//!   `cognito`: a Cognito user pool on moto, its users and their tokens.
//! - [`procfs`]: a process's resident memory and CPU time from `/proc`.
//! - [`proxy`]: a TCP proxy a test can cut (resetting connections) and restore.
//! - [`lossy`]: a TCP proxy that adds delay per direction, stalls (a lost segment's
//!   retransmission timeout) and resets, as a bad network looks to TCP's users.
//! - [`netns`]: network namespaces joined to the host by veth links, which a test
//!   takes down to partition a namespace; skipped where the machine does not allow
//!   them ([`Netns::available`]).
//! - [`temp_dir`]: a temporary directory, removed when dropped.
//!
//! Boundary: this crate knows the binary's command line and output, the AWS SDK and
//! the operating system; it does not link configwatch. Whatever needs the library
//! (an in-process server, tokens signed with its key type) stays in the server's
//! `tests/common/`, on top of this crate.

// Test support: a failed step is a failed test, so panicking is how it reports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[cfg(feature = "moto")]
pub mod cognito;
pub mod http;
pub mod lossy;
pub mod metrics;
#[cfg(feature = "moto")]
pub mod moto;
#[cfg(feature = "moto")]
pub mod moto_ecs;
#[cfg(feature = "moto")]
mod moto_fanout;
#[cfg(feature = "moto")]
pub mod moto_stack;
pub mod netns;
pub mod process;
pub mod procfs;
pub mod proxy;
pub mod token;
pub mod wait;

pub use http::{HttpAnswer, http_get, http_request};
pub use lossy::{Lossy, LossyProxy};
pub use metrics::{Scrape, promtool_check};
pub use netns::{Link, Netns};
pub use process::{ServerProcess, run_to_exit, serve_command, server_bin, under_file_limit};
pub use proxy::CutProxy;
pub use token::mint_token;
pub use wait::{PATIENCE, eventually, poll, wait_for};

/// A temporary directory, removed with its contents when dropped.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("a temporary directory")
}
