//! configwatch-bench: drives the same workloads against configwatch and against etcd,
//! in the same run, and prints a table and one summary line with the ratio.
//!
//! Both servers are started by the benchmark itself on 127.0.0.1 with temporary data
//! directories: configwatch from the binary beside this one (`cargo build --release
//! -p configwatch -p configwatch-bench` puts them together), etcd from `etcd` on the
//! PATH (Debian's etcd-server). Workloads:
//!
//! - `fanout` (W1): N watchers over M connections, one prefix each, spread over
//!   tenants; a writer makes K changes, one at a time; latency from the write being
//!   sent to each watcher receiving it. etcd runs with one watch stream per watcher
//!   and with all watches of a connection multiplexed on one stream.
//! - `get` (W2): C concurrent clients reading existing keys (etcd: serializable
//!   range reads).
//! - `memory` (W3): server RSS per idle watch stream.
//! - `reconnect` (W4): N watchers hold a cache; the server is restarted (SIGTERM,
//!   same data directory and port) and they resume as a client library does
//!   (configwatch: resume token and a digest of the versions held, the versions when
//!   the server asks; etcd: a watch from the next revision), then once more with a full resend (configwatch: neither; etcd: a
//!   range read and a watch). Time from the SIGTERM until all have converged, and
//!   the bytes on the wire, counted by a TCP relay in front of the server.
//! - `slow` (W5): 10% of the watchers never read (their windows fill); the others'
//!   latency and the server's RSS, against the same run without them.
//! - `relay`: configwatch's relay tier against the same clients on the origin, in
//!   one run: latency per relay hop, the origin's streams and CPU per change for a
//!   tenant behind two relays, and a relay's RSS per idle client stream.
//!
//! All load goes to 127.0.0.1; every loop is bounded in count and time.
//!
//! The parts: this file is the driver and its flags; `workload/` holds each
//! workload, written once against the [`peer::Peer`] abstraction; `peer/` maps it
//! to configwatch (over its gRPC API, as any client) and to etcd, and starts
//! configwatch relays; `process.rs` starts, measures and restarts the server
//! processes; `wire_counter.rs` counts bytes on the wire; `metrics.rs` reads a
//! server's `/metrics`; `stats.rs` turns samples into percentiles.

mod metrics;
mod peer;
mod process;
mod stats;
mod wire_counter;
mod workload;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};

use workload::fanout::FanoutArgs;
use workload::get::GetArgs;
use workload::memory::MemoryArgs;
use workload::reconnect::ReconnectArgs;
use workload::relay::RelayArgs;
use workload::slow::SlowArgs;

#[derive(Parser)]
#[command(
    name = "configwatch-bench",
    about = "configwatch against etcd, same workloads, same run"
)]
pub struct Cli {
    #[command(subcommand)]
    workload: Workload,
    /// The peer to measure beside configwatch.
    #[arg(long, global = true, default_value = "etcd")]
    pub peer: Against,
    /// The configwatch binary (default: the one beside this binary).
    #[arg(long, global = true)]
    pub configwatch_bin: Option<PathBuf>,
    /// The etcd binary.
    #[arg(long, global = true, default_value = "etcd")]
    pub etcd_bin: PathBuf,
    /// A shell command run just before W1's measured changes with arguments
    /// `start PID` and just after them with `stop PID` (PID: the server's), for
    /// profiling exactly the fan-out, e.g. `callgrind_control -i on "$2"`.
    #[arg(long, global = true)]
    pub around_changes: Option<String>,
    /// Serve configwatch with its admin listener (on a free port) and so with its
    /// metrics; without it the server keeps none. Compare runs with and without to
    /// measure what the metrics cost.
    #[arg(long, global = true)]
    pub metrics: bool,
}

impl Cli {
    /// The server binaries: configwatch by default from beside this binary.
    pub fn binaries(&self) -> Result<peer::Binaries> {
        let configwatch = match &self.configwatch_bin {
            Some(p) => p.clone(),
            None => std::env::current_exe()?.with_file_name("configwatch"),
        };
        Ok(peer::Binaries {
            configwatch,
            etcd: self.etcd_bin.clone(),
            configwatch_metrics: self.metrics,
        })
    }
}

/// The peer measured beside configwatch (`--peer`).
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Against {
    Etcd,
    None,
}

#[derive(Subcommand)]
enum Workload {
    /// W1: fan-out latency.
    Fanout(FanoutArgs),
    /// W2: Get throughput.
    Get(GetArgs),
    /// W3: memory per idle watch stream.
    Memory(MemoryArgs),
    /// W4: reconnect storm after a server restart.
    Reconnect(ReconnectArgs),
    /// W5: slow consumers beside reading ones.
    Slow(SlowArgs),
    /// Relays: latency per hop, the origin's cost of a tenant behind relays, memory
    /// per stream on a relay (configwatch only; opt-in, not in the default suite).
    Relay(RelayArgs),
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match &cli.workload {
        Workload::Fanout(a) => workload::fanout::run_fanout(&cli, a).await,
        Workload::Get(a) => workload::get::run_get(&cli, a).await,
        Workload::Memory(a) => workload::memory::run_memory(&cli, a).await,
        Workload::Reconnect(a) => workload::reconnect::run_reconnect(&cli, a).await,
        Workload::Slow(a) => workload::slow::run_slow(&cli, a).await,
        Workload::Relay(a) => workload::relay::run_relay(&cli, a).await,
    }
}
