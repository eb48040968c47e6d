//! W3 memory: the server's RSS growth per idle watch stream, all on one tenant's
//! configuration, against the RSS with that tenant loaded and no watch open.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Result;
use clap::Args;

use super::{Streams, Workload, against_each, wait_for};
use crate::Cli;
use crate::peer::configwatch::Configwatch;
use crate::peer::etcd::Etcd;
use crate::peer::{Binaries, Event, Peer, PeerClient, StartOptions, Windows};
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
    // Load the tenant first so the baseline includes its view.
    clients[0].load(0).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = peer.process().rss_kib();
    let ready = Arc::new(AtomicUsize::new(0));
    let mut holders = Vec::new();
    for w in 0..args.watchers {
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
    let limit = Duration::from_secs(120);
    let step = Duration::from_millis(10);
    wait_for(&ready, args.watchers, limit, step, "watchers became ready").await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = peer.process().rss_kib();
    drop(peer);
    for h in holders {
        h.abort();
    }
    let per = (after.saturating_sub(before)) as f64 * 1024.0 / args.watchers as f64;
    Ok((per, after as f64 / 1024.0))
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
