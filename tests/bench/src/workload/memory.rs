//! W3 memory: the server's RSS growth per idle watch stream, all on one tenant's
//! configuration, against the RSS with that tenant loaded and no watch open. The
//! relay workload opens the same streams through a relay.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Result, anyhow};
use clap::Args;
use tokio::task::JoinHandle;

use super::{Streams, Workload, against_each, wait_for};
use crate::Cli;
use crate::peer::configwatch::Configwatch;
use crate::peer::etcd::Etcd;
use crate::peer::{Binaries, Event, Peer, PeerClient, StartOptions, Windows};
use crate::process::Process;
use crate::stats::ratio;

#[derive(Args, Clone)]
pub struct MemoryArgs {
    #[arg(long, default_value_t = 10_000)]
    watchers: usize,
    #[arg(long, default_value_t = 100)]
    connections: usize,
}

/// Bytes of RSS per stream and the RSS with all of them open (MiB).
async fn run<P: Peer>(bins: &Binaries, args: &MemoryArgs) -> Result<(f64, f64)> {
    let opts = StartOptions {
        tenants: 1,
        quiet: false,
    };
    let peer = P::start(bins, opts).await?;
    let clients = peer
        .clients(peer.addr(), args.connections, Windows::Large)
        .await?;
    let open = IdleStreams::open(peer.process(), &clients, args.watchers).await?;
    let figures = (open.bytes_per_stream, open.rss_mib);
    drop(peer);
    drop(open);
    Ok(figures)
}

/// Idle watch streams of tenant 0, held open until dropped, and what they cost
/// the server process that serves them.
pub struct IdleStreams {
    /// RSS growth per stream, against the RSS with the tenant loaded and none open.
    pub bytes_per_stream: f64,
    /// RSS with all of them open.
    pub rss_mib: f64,
    holders: Vec<JoinHandle<()>>,
}

impl IdleStreams {
    /// Loads tenant 0 through `clients[0]`, then opens `watchers` streams over
    /// `clients` and measures `server`'s RSS before and after.
    pub async fn open<C: PeerClient>(
        server: &Process,
        clients: &[C],
        watchers: usize,
    ) -> Result<IdleStreams> {
        let first = clients
            .first()
            .ok_or_else(|| anyhow!("no connection to open streams on"))?;
        // Load the tenant first so the baseline includes its view.
        first.load(0).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = server.rss_kib();
        let ready = Arc::new(AtomicUsize::new(0));
        let mut holders = Vec::new();
        for w in 0..watchers {
            let client = clients[w % clients.len()].clone();
            let ready = ready.clone();
            holders.push(tokio::spawn(async move {
                let count = |event: Event<'_>| {
                    if let Event::Ready = event {
                        ready.fetch_add(1, Ordering::Release);
                    }
                };
                let _ = client.watch(&[0], count).await;
            }));
        }
        let mut open = IdleStreams {
            bytes_per_stream: 0.0,
            rss_mib: 0.0,
            holders,
        };
        let limit = Duration::from_secs(120);
        let step = Duration::from_millis(10);
        wait_for(&ready, watchers, limit, step, "watchers became ready").await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = server.rss_kib();
        open.bytes_per_stream = (after.saturating_sub(before)) as f64 * 1024.0 / watchers as f64;
        open.rss_mib = after as f64 / 1024.0;
        Ok(open)
    }
}

impl Drop for IdleStreams {
    fn drop(&mut self) {
        for h in &self.holders {
            h.abort();
        }
    }
}

impl Workload for MemoryArgs {
    /// Bytes of RSS per stream and the RSS with all of them open (MiB).
    type Outcome = (f64, f64);

    async fn run<P: Peer>(&self, bins: &Binaries) -> Result<(f64, f64)> {
        run::<P>(bins, self).await
    }
}

/// W3: configwatch, then (with `--peer etcd`) etcd; a table and the summary line.
pub async fn run_memory(cli: &Cli, args: &MemoryArgs) -> Result<()> {
    println!(
        "W3 memory: {} idle watch streams over {} connections",
        args.watchers, args.connections
    );
    let results = against_each(cli, args).await?;
    let (cw_per, cw_rss) = results[0];
    println!("{:<28} {:>14} {:>12}", "system", "bytes/stream", "RSS MiB");
    println!("{:<28} {cw_per:>14.0} {cw_rss:>12.1}", Configwatch::NAME);
    match results.get(1) {
        Some(&(e_per, e_rss)) => {
            let name = Streams::PerWatcher.label::<Etcd>();
            println!("{name:<28} {e_per:>14.0} {e_rss:>12.1}");
            println!(
                "W3 N={} configwatch bytes/stream={cw_per:.0} etcd bytes/stream={e_per:.0} ratio={:.3}",
                args.watchers,
                ratio(cw_per, e_per)
            );
        }
        None => println!(
            "W3 N={} configwatch bytes/stream={cw_per:.0}",
            args.watchers
        ),
    }
    Ok(())
}
