//! W1 fan-out: N watchers over M connections, one tenant's configuration each,
//! spread over tenants; a writer makes K changes, one at a time, and each waits
//! until every watcher of its tenant has it. Latency runs from the write being sent
//! to each watcher receiving it; the server's CPU per delivery and RSS are read
//! around it. W5 runs the same with watchers that never read beside.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;
use tokio::sync::mpsc;

pub use super::deliveries::Plan;
use super::deliveries::{
    Deliveries, FILL_BASE, Received, Tally, collect, drive_changes, padded_stamp, received,
    spawn_readers, stamp,
};
use super::{Streams, wait_for};
use crate::peer::configwatch::Configwatch;
use crate::peer::etcd::Etcd;
use crate::peer::{Binaries, Peer, PeerClient, StartOptions, Windows, connect};
use crate::stats::{Summary, median, now_us, ratio, summarize};
use crate::{Against, Cli};

#[derive(Args, Clone)]
pub struct FanoutArgs {
    #[arg(long, default_value_t = 1000)]
    pub watchers: usize,
    #[arg(long, default_value_t = 100)]
    pub connections: usize,
    /// Tenants the watchers spread over (default: one per 100 watchers).
    #[arg(long)]
    pub tenants: Option<usize>,
    /// Changes the writer makes, one at a time.
    #[arg(long, default_value_t = 20)]
    pub changes: usize,
    /// Longest wait for one change to reach all its watchers.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// The outcome of one fan-out run.
pub struct FanoutResult {
    pub system: String,
    pub delivery: Summary,
    /// Median over changes of the time until the last watcher had it (ms).
    pub last_watcher_median: f64,
    pub last_watcher_max: f64,
    pub deliveries: u64,
    pub missing: u64,
    pub cpu_per_delivery_us: f64,
    /// Server RSS with every watcher connected, after the fill, and at the end.
    pub rss_mib: f64,
    pub rss_fill_mib: f64,
    pub rss_end_mib: f64,
}

/// W5's additions to a fan-out run: watchers that never read (on connections of
/// their own, with the HTTP/2 default windows of 64 KiB, so they fill), and large
/// changes written to every tenant before the measured ones, which fill them.
#[derive(Clone, Copy, Default)]
pub struct SlowSpec {
    pub watchers: usize,
    pub connections: usize,
    /// Changes per tenant before the measured ones (distinct keys).
    pub fill_changes: usize,
    pub fill_bytes: usize,
}

/// One fan-out run against a fresh `P`; `around` is the `--around-changes` hook.
pub async fn run<P: Peer>(
    bins: &Binaries,
    args: &FanoutArgs,
    plan: &Plan,
    streams: Streams,
    slow: SlowSpec,
    around: Option<&str>,
) -> Result<FanoutResult> {
    let opts = StartOptions {
        tenants: plan.tenants,
        quiet: false,
    };
    let peer = P::start(bins, opts).await?;
    let clients = peer
        .clients(peer.addr(), args.connections, Windows::Large)
        .await?;
    let tally = Tally::new(plan.changes);
    let start = tally.start;
    let (tx, rx): (Deliveries, _) = mpsc::unbounded_channel();
    let groups = streams.group(plan.watchers, clients.len());
    let readers = spawn_readers(
        groups.into_iter().map(|(conn, watchers)| {
            let tenants = watchers.iter().map(|w| plan.tenant_of_watcher(*w));
            (clients[conn].clone(), tenants.collect())
        }),
        &tally,
        &tx,
    );
    drop(tx);
    let limit = Duration::from_secs(120);
    let ready = "watchers became ready";
    wait_for(&tally.ready, plan.watchers, limit, ms(10), ready).await?;
    // Watchers that never read, one stream each, on connections of their own.
    let slow_ready = Arc::new(AtomicUsize::new(0));
    let mut holders = Vec::with_capacity(slow.watchers);
    if slow.watchers > 0 {
        let n = slow.connections.max(1);
        let slow_clients = peer.clients(peer.addr(), n, Windows::Small).await?;
        for s in 0..slow.watchers {
            let client = slow_clients[s % slow_clients.len()].clone();
            let tenant = s % plan.tenants;
            let slow_ready = slow_ready.clone();
            holders.push(tokio::spawn(async move {
                let Ok(held) = client.watch_unread(tenant).await else {
                    return;
                };
                slow_ready.fetch_add(1, Ordering::Release);
                // Never read; hold the stream until the run ends (the task is aborted).
                std::future::pending::<()>().await;
                drop(held);
            }));
        }
        wait_for(&slow_ready, slow.watchers, limit, ms(10), ready).await?;
    }
    let writer = peer.client(connect(peer.addr(), Windows::Large).await?);
    let rss_ready = peer.process().rss_kib();
    if slow.fill_changes > 0 {
        for t in 0..plan.tenants {
            for i in 0..slow.fill_changes {
                let value = padded_stamp(FILL_BASE + i, now_us(start), slow.fill_bytes);
                writer.put(t, &format!("fill{i}"), value).await?;
            }
        }
        let want = plan.watchers * slow.fill_changes;
        wait_for(
            &tally.fill,
            want,
            args.timeout * 4,
            ms(5),
            "fill deliveries",
        )
        .await?;
    }
    let rss_fill = peer.process().rss_kib();
    let pid = peer.process().pid();
    hook(around, "start", pid)?;
    let cpu_before = peer.process().cpu();
    drive_changes(plan, &tally.counts, args.timeout, |c, t| {
        writer.put(t, "flag", stamp(c, now_us(start)))
    })
    .await?;
    let cpu = peer.process().cpu().saturating_sub(cpu_before);
    hook(around, "stop", pid)?;
    let rss_end = peer.process().rss_kib();
    drop(peer);
    for h in holders {
        h.abort();
    }
    for r in readers {
        let _ = r.await;
    }
    let per_change = collect(rx, plan.changes).await;
    let Received {
        mut all,
        mut last,
        missing,
    } = received(plan, &per_change, |_| true);
    let deliveries = all.len() as u64;
    Ok(FanoutResult {
        system: streams.label::<P>(),
        delivery: summarize(&mut all),
        last_watcher_median: median(&mut last.clone()),
        last_watcher_max: last.iter_mut().fold(0.0, |a, b| a.max(*b)),
        deliveries,
        missing,
        cpu_per_delivery_us: cpu.as_secs_f64() * 1e6 / deliveries.max(1) as f64,
        rss_mib: rss_ready as f64 / 1024.0,
        rss_fill_mib: rss_fill as f64 / 1024.0,
        rss_end_mib: rss_end as f64 / 1024.0,
    })
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Runs the `--around-changes` hook, if any, and waits for it.
fn hook(cmd: Option<&str>, what: &str, pid: u32) -> Result<()> {
    if let Some(cmd) = cmd {
        let status = Command::new("sh")
            .args(["-c", cmd, "sh", what, &pid.to_string()])
            .status()?;
        if !status.success() {
            bail!("--around-changes {what} failed: {status}");
        }
    }
    Ok(())
}

/// W1: configwatch, then (with `--peer etcd`) etcd with a stream per watcher and
/// multiplexed; a table and the summary line.
pub async fn run_fanout(cli: &Cli, args: &FanoutArgs) -> Result<()> {
    let plan = Plan {
        watchers: args.watchers,
        tenants: super::tenants(args.tenants, args.watchers, args.watchers),
        changes: args.changes,
    };
    println!(
        "W1 fan-out: {} watchers over {} connections, {} tenants ({} watchers each), {} changes",
        plan.watchers,
        args.connections,
        plan.tenants,
        plan.watchers / plan.tenants,
        plan.changes
    );
    let bins = cli.binaries()?;
    let none = SlowSpec::default();
    let around = cli.around_changes.as_deref();
    let each = Streams::PerWatcher;
    let mut results = vec![run::<Configwatch>(&bins, args, &plan, each, none, around).await?];
    if cli.peer == Against::Etcd {
        results.push(run::<Etcd>(&bins, args, &plan, each, none, None).await?);
        let multiplexed = Streams::Multiplexed;
        results.push(run::<Etcd>(&bins, args, &plan, multiplexed, none, None).await?);
    }
    println!(
        "{:<28} {:>9} {:>9} {:>9} {:>12} {:>10} {:>10} {:>8} {:>11} {:>9}",
        "system",
        "p50 ms",
        "p99 ms",
        "max ms",
        "last med ms",
        "last max",
        "delivered",
        "missing",
        "cpu/deliv",
        "RSS MiB"
    );
    for r in &results {
        println!(
            "{:<28} {:>9.2} {:>9.2} {:>9.2} {:>12.2} {:>10.2} {:>10} {:>8} {:>9.1}us {:>9.1}",
            r.system,
            r.delivery.p50,
            r.delivery.p99,
            r.delivery.max,
            r.last_watcher_median,
            r.last_watcher_max,
            r.deliveries,
            r.missing,
            r.cpu_per_delivery_us,
            r.rss_mib
        );
    }
    let cw = &results[0];
    match results.get(1) {
        Some(peer) => println!(
            "W1 N={} configwatch p50={:.2}ms p99={:.2}ms cpu/delivery={:.1}us etcd p50={:.2}ms p99={:.2}ms cpu/delivery={:.1}us configwatch last={:.2}ms etcd last={:.2}ms ratio={:.3}",
            plan.watchers,
            cw.delivery.p50,
            cw.delivery.p99,
            cw.cpu_per_delivery_us,
            peer.delivery.p50,
            peer.delivery.p99,
            peer.cpu_per_delivery_us,
            cw.last_watcher_median,
            peer.last_watcher_median,
            ratio(cw.delivery.p99, peer.delivery.p99)
        ),
        None => println!(
            "W1 N={} configwatch p50={:.2}ms p99={:.2}ms cpu/delivery={:.1}us",
            plan.watchers, cw.delivery.p50, cw.delivery.p99, cw.cpu_per_delivery_us
        ),
    }
    Ok(())
}
