//! W2 Get throughput: C closed-loop clients over a few connections read existing
//! keys, one at a time, for a fixed duration after a warm-up.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Args;

use super::{Workload, against_each};
use crate::Cli;
use crate::peer::{Binaries, Peer, PeerClient, StartOptions, Windows, connect};
use crate::stats::{Summary, ratio, summarize};

#[derive(Args, Clone)]
pub struct GetArgs {
    #[arg(long, default_value_t = 64)]
    clients: usize,
    #[arg(long, default_value_t = 8)]
    connections: usize,
    #[arg(long, default_value_t = 1000)]
    keys: usize,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
}

pub struct GetResult {
    system: String,
    ops_per_sec: f64,
    latency: Summary,
}

/// The keys are spread over this many tenants.
const TENANTS: usize = 10;
/// Workers step through keys by a prime, so they spread over all of them.
const STRIDE: usize = 7919;

async fn run<P: Peer>(bins: &Binaries, args: &GetArgs) -> Result<GetResult> {
    let opts = StartOptions {
        tenants: TENANTS,
        quiet: false,
    };
    let peer = P::start(bins, opts).await?;
    let writer = peer.client(connect(peer.addr(), Windows::Large).await?);
    for k in 0..args.keys {
        let value = format!("{{\"k\":{k},\"payload\":\"{}\"}}", "x".repeat(200));
        writer.put(k % TENANTS, &format!("k{k}"), value).await?;
    }
    let clients = peer
        .clients(peer.addr(), args.connections, Windows::Large)
        .await?;
    let keys = args.keys;
    let result = closed_loop(args, move |i, n| {
        let client = clients[i % clients.len()].clone();
        let k = n % keys;
        async move {
            if !client.get(k % TENANTS, &format!("k{k}")).await? {
                bail!("{}: key k{k} missing", P::NAME);
            }
            Ok(())
        }
    })
    .await?;
    drop(peer);
    Ok(GetResult {
        system: match P::READS {
            Some(reads) => format!("{} ({reads})", P::NAME),
            None => P::NAME.to_string(),
        },
        ..result
    })
}

impl Workload for GetArgs {
    type Outcome = GetResult;

    async fn run<P: Peer>(&self, bins: &Binaries) -> Result<GetResult> {
        run::<P>(bins, self).await
    }
}

/// `clients` workers each issue requests back to back for the duration (after a
/// one-second warm-up); returns throughput and latency.
async fn closed_loop<F, Fut>(args: &GetArgs, make: F) -> Result<GetResult>
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send + 'static,
{
    let make = Arc::new(make);
    let warmup = Duration::from_secs(1);
    let start = Instant::now();
    let done = AtomicU64::new(0);
    let done = Arc::new(done);
    let mut workers = Vec::new();
    for i in 0..args.clients {
        let (make, done) = (make.clone(), done.clone());
        let duration = args.duration;
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut n = i;
            while start.elapsed() < warmup + duration {
                let t0 = Instant::now();
                make(i, n).await?;
                if start.elapsed() > warmup {
                    lat.push(t0.elapsed().as_micros() as u64);
                    done.fetch_add(1, Ordering::Relaxed);
                }
                n += STRIDE;
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await??);
    }
    let ops = done.load(Ordering::Relaxed) as f64 / args.duration.as_secs_f64();
    Ok(GetResult {
        system: String::new(),
        ops_per_sec: ops,
        latency: summarize(&mut all),
    })
}

/// W2: configwatch, then (with `--peer etcd`) etcd; a table and the summary line.
pub async fn run_get(cli: &Cli, args: &GetArgs) -> Result<()> {
    println!(
        "W2 get: {} clients over {} connections, {} keys, {:?}",
        args.clients, args.connections, args.keys, args.duration
    );
    let results = against_each(cli, args).await?;
    println!(
        "{:<22} {:>12} {:>9} {:>9} {:>9}",
        "system", "ops/s", "p50 ms", "p99 ms", "max ms"
    );
    for r in &results {
        println!(
            "{:<22} {:>12.0} {:>9.3} {:>9.3} {:>9.3}",
            r.system, r.ops_per_sec, r.latency.p50, r.latency.p99, r.latency.max
        );
    }
    match results.get(1) {
        Some(peer) => println!(
            "W2 configwatch ops/s={:.0} p99={:.3}ms etcd ops/s={:.0} p99={:.3}ms ratio={:.3}",
            results[0].ops_per_sec,
            results[0].latency.p99,
            peer.ops_per_sec,
            peer.latency.p99,
            ratio(results[0].ops_per_sec, peer.ops_per_sec)
        ),
        None => println!("W2 configwatch ops/s={:.0}", results[0].ops_per_sec),
    }
    Ok(())
}
