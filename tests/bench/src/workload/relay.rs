//! The relay workload: configwatch's relay tier measured against the same clients
//! connected straight to the origin, in one run. Three parts, each on servers of
//! its own (an origin and the relays it needs, all started here):
//!
//! - `hops`: W1's shape with each tenant served by one tier (the origin, a relay of
//!   the origin, a relay of that relay) and the changes going round the tenants, so
//!   the three tiers' deliveries interleave in time; latency per tier and the
//!   latency each hop adds.
//! - `origin`: every watcher on one tenant, straight on the origin, then spread over
//!   two relays of a fresh origin: the origin's Watch streams (its `/metrics`), each
//!   relay's upstream Watches, and each process's CPU per change.
//! - `memory`: W3's idle streams on the origin, then through a relay: the relay's
//!   RSS per client stream against the origin's.
//!
//! Every server serves its admin listener (metrics on), direct runs included. The
//! servers and the timed runs over them are `tree.rs`'s.

use std::time::Duration;

use anyhow::Result;
use clap::{Args, ValueEnum};

use super::deliveries::{Plan, Received, received};
use super::memory::IdleStreams;
use super::tree::{Tree, timed};
use crate::Cli;
use crate::peer::{Binaries, Peer, Windows};
use crate::stats::{Summary, median, ratio, summarize};

#[derive(Args, Clone)]
pub struct RelayArgs {
    /// The parts to run, in order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "hops,origin,memory"
    )]
    parts: Vec<Part>,
    /// hops: watchers, over the three tiers.
    #[arg(long, default_value_t = 3000)]
    hop_watchers: usize,
    /// hops: tenants (tenant t is served by tier t mod 3).
    #[arg(long, default_value_t = 30)]
    hop_tenants: usize,
    /// hops: connections, a third on each tier.
    #[arg(long, default_value_t = 90)]
    hop_connections: usize,
    /// hops: changes, one at a time, round the tenants.
    #[arg(long, default_value_t = 300)]
    hop_changes: usize,
    /// origin: watchers of the one tenant.
    #[arg(long, default_value_t = 10_000)]
    tenant_watchers: usize,
    /// origin: connections (split between the relays when relayed).
    #[arg(long, default_value_t = 100)]
    tenant_connections: usize,
    /// origin: changes, each reaching every watcher.
    #[arg(long, default_value_t = 40)]
    tenant_changes: usize,
    /// memory: idle watch streams.
    #[arg(long, default_value_t = 10_000)]
    idle_watchers: usize,
    #[arg(long, default_value_t = 100)]
    idle_connections: usize,
    /// Longest wait for one change to reach all its watchers.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Part {
    Hops,
    Origin,
    Memory,
}

/// The relay workload: the parts asked for, in order.
pub async fn run_relay(cli: &Cli, args: &RelayArgs) -> Result<()> {
    let mut bins = cli.binaries()?;
    bins.configwatch_metrics = true;
    for part in &args.parts {
        match part {
            Part::Hops => hops(&bins, args).await?,
            Part::Origin => origin_cost(&bins, args).await?,
            Part::Memory => memory(&bins, args).await?,
        }
    }
    Ok(())
}

/// Latency figures of some changes' deliveries.
struct Latency {
    summary: Summary,
    last_median: f64,
    delivered: usize,
    missing: u64,
}

fn latency(plan: &Plan, per_change: &[Vec<u64>], which: impl Fn(usize) -> bool) -> Latency {
    let Received {
        mut all,
        mut last,
        missing,
    } = received(plan, per_change, which);
    Latency {
        delivered: all.len(),
        summary: summarize(&mut all),
        last_median: median(&mut last),
        missing,
    }
}

/// A sum that is 0, not -0, when there is nothing to add.
fn sum(values: impl Iterator<Item = f64>) -> f64 {
    values.fold(0.0, |a, b| a + b)
}

const TIER_NAMES: [&str; 3] = ["direct", "one relay", "two relays"];

/// Latency per hop: tenants served by the origin, by a relay, by a relay of it.
async fn hops(bins: &Binaries, args: &RelayArgs) -> Result<()> {
    let tiers = TIER_NAMES.len();
    let plan = Plan {
        watchers: args.hop_watchers,
        tenants: super::tenants(Some(args.hop_tenants), args.hop_watchers, args.hop_watchers)
            .max(tiers),
        changes: args.hop_changes,
    };
    println!(
        "RELAY hops: {} watchers over {} connections, {} tenants ({} per tier), {} changes at the origin; \
         tier 1 watches the origin, tier 2 watches tier 1",
        plan.watchers,
        args.hop_connections,
        plan.tenants,
        plan.tenants / tiers,
        plan.changes
    );
    let tree = Tree::start(bins, plan.tenants, &[0, 1]).await?;
    let tier_of_tenant = |t: usize| t % tiers;
    let tier_of = |w: usize| tier_of_tenant(plan.tenant_of_watcher(w));
    let run = timed(tree, &plan, tier_of, args.hop_connections, args.timeout).await?;
    println!(
        "{:<12} {:>9} {:>9} {:>9} {:>12} {:>10} {:>8} {:>14} {:>9}",
        "tier",
        "p50 ms",
        "p99 ms",
        "max ms",
        "last med ms",
        "delivered",
        "missing",
        "cpu/change",
        "streams"
    );
    let mut lat = Vec::with_capacity(tiers);
    for (tier, name) in TIER_NAMES.iter().enumerate() {
        let by_tier = |c: usize| tier_of_tenant(plan.tenant_of_change(c)) == tier;
        let l = latency(&plan, &run.per_change, by_tier);
        println!(
            "{name:<12} {:>9.2} {:>9.2} {:>9.2} {:>12.2} {:>10} {:>8} {:>12.0}us {:>9} {:>9}",
            l.summary.p50,
            l.summary.p99,
            l.summary.max,
            l.last_median,
            l.delivered,
            l.missing,
            run.cpu_per_change_us[tier],
            run.streams[tier].0,
            run.streams[tier]
                .1
                .map_or("-".to_string(), |u| u.to_string())
        );
        lat.push(l);
    }
    let (d, r1, r2) = (&lat[0].summary, &lat[1].summary, &lat[2].summary);
    println!(
        "RELAY hops N={} direct p50={:.2}ms p99={:.2}ms one-relay p50={:.2}ms p99={:.2}ms \
         two-relays p50={:.2}ms p99={:.2}ms hop1 +p50={:.2}ms +p99={:.2}ms hop2 +p50={:.2}ms \
         +p99={:.2}ms ratio-p50 one/direct={:.3} two/direct={:.3}",
        plan.watchers,
        d.p50,
        d.p99,
        r1.p50,
        r1.p99,
        r2.p50,
        r2.p99,
        r1.p50 - d.p50,
        r1.p99 - d.p99,
        r2.p50 - r1.p50,
        r2.p99 - r1.p99,
        ratio(r1.p50, d.p50),
        ratio(r2.p50, d.p50)
    );
    Ok(())
}

/// The origin's cost of one tenant's watchers, straight on it and behind two relays.
async fn origin_cost(bins: &Binaries, args: &RelayArgs) -> Result<()> {
    let plan = Plan {
        watchers: args.tenant_watchers,
        tenants: 1,
        changes: args.tenant_changes,
    };
    println!(
        "RELAY origin: {} watchers of one tenant over {} connections, {} changes; straight on the \
         origin, then half on each of two relays of a fresh origin, then with no watcher (the \
         Put alone)",
        plan.watchers, args.tenant_connections, plan.changes
    );
    let conns = args.tenant_connections;
    let direct = timed(
        Tree::start(bins, 1, &[]).await?,
        &plan,
        |_| 0,
        conns,
        args.timeout,
    )
    .await?;
    let relayed = timed(
        Tree::start(bins, 1, &[0, 0]).await?,
        &plan,
        |w| 1 + w % 2,
        conns,
        args.timeout,
    )
    .await?;
    let unwatched = Plan {
        watchers: 0,
        tenants: 1,
        changes: plan.changes,
    };
    let alone = timed(
        Tree::start(bins, 1, &[]).await?,
        &unwatched,
        |_| 0,
        conns,
        args.timeout,
    )
    .await?;
    println!(
        "{:<18} {:>9} {:>9} {:>12} {:>8} {:>13} {:>15} {:>13} {:>15}",
        "system",
        "p50 ms",
        "p99 ms",
        "last med ms",
        "missing",
        "origin Watch",
        "origin cpu/chg",
        "relay upstr.",
        "relays cpu/chg"
    );
    let runs = [("direct", &direct), ("behind two relays", &relayed)];
    let lat = runs.map(|(_, run)| latency(&plan, &run.per_change, |_| true));
    for ((name, run), l) in runs.iter().zip(&lat) {
        let upstream = sum(run.streams.iter().filter_map(|s| s.1));
        let relays_cpu = sum(run.cpu_per_change_us.iter().skip(1).copied());
        println!(
            "{name:<18} {:>9.2} {:>9.2} {:>12.2} {:>8} {:>13} {:>13.0}us {:>13} {:>13.0}us",
            l.summary.p50,
            l.summary.p99,
            l.last_median,
            l.missing,
            run.streams[0].0,
            run.cpu_per_change_us[0],
            upstream,
            relays_cpu
        );
    }
    println!(
        "{:<18} {:>69.0}us",
        "no watcher", alone.cpu_per_change_us[0]
    );
    let relay_upstreams: Vec<String> = relayed
        .streams
        .iter()
        .skip(1)
        .map(|s| format!("{}", s.1.unwrap_or(f64::NAN)))
        .collect();
    let relay_clients: Vec<String> = relayed
        .streams
        .iter()
        .skip(1)
        .map(|s| format!("{}", s.0))
        .collect();
    println!(
        "RELAY origin N={} direct p50={:.2}ms p99={:.2}ms last={:.2}ms origin-streams={} \
         origin-cpu/change={:.0}us relayed p50={:.2}ms p99={:.2}ms last={:.2}ms origin-streams={} \
         relay-upstream-watches={} relay-client-streams={} origin-cpu/change={:.0}us relays-cpu/change={:.0}us \
         ratio origin-cpu relayed/direct={:.4} unwatched origin-cpu/change={:.0}us",
        plan.watchers,
        lat[0].summary.p50,
        lat[0].summary.p99,
        lat[0].last_median,
        direct.streams[0].0,
        direct.cpu_per_change_us[0],
        lat[1].summary.p50,
        lat[1].summary.p99,
        lat[1].last_median,
        relayed.streams[0].0,
        relay_upstreams.join("+"),
        relay_clients.join("+"),
        relayed.cpu_per_change_us[0],
        sum(relayed.cpu_per_change_us.iter().skip(1).copied()),
        ratio(relayed.cpu_per_change_us[0], direct.cpu_per_change_us[0]),
        alone.cpu_per_change_us[0]
    );
    Ok(())
}

/// W3 on the origin, then through a relay of a fresh origin.
async fn memory(bins: &Binaries, args: &RelayArgs) -> Result<()> {
    let n = args.idle_watchers;
    println!(
        "RELAY memory: {n} idle watch streams over {} connections, on the origin, then on a relay",
        args.idle_connections
    );
    let direct = {
        let tree = Tree::start(bins, 1, &[]).await?;
        let clients = tree
            .origin
            .clients(tree.addr(0)?, args.idle_connections, Windows::Large)
            .await?;
        let open = IdleStreams::open(tree.process(0)?, &clients, n).await?;
        (open.bytes_per_stream, open.rss_mib)
    };
    let (relay_per, relay_rss, origin_rss, streams) = {
        let tree = Tree::start(bins, 1, &[0]).await?;
        let clients = tree
            .origin
            .clients(tree.addr(1)?, args.idle_connections, Windows::Large)
            .await?;
        let open = IdleStreams::open(tree.process(1)?, &clients, n).await?;
        let origin_rss = tree.process(0)?.rss_kib() as f64 / 1024.0;
        let streams = tree.streams().await?;
        (open.bytes_per_stream, open.rss_mib, origin_rss, streams)
    };
    println!("{:<20} {:>14} {:>12}", "server", "bytes/stream", "RSS MiB");
    println!(
        "{:<20} {:>14.0} {:>12.1}",
        "origin (direct)", direct.0, direct.1
    );
    println!("{:<20} {relay_per:>14.0} {relay_rss:>12.1}", "relay");
    println!(
        "RELAY memory N={n} origin bytes/stream={:.0} relay bytes/stream={relay_per:.0} \
         relay RSS={relay_rss:.1}MiB origin-behind-relay RSS={origin_rss:.1}MiB \
         origin-behind-relay streams={} relay upstream-watches={} ratio relay/origin={:.3}",
        direct.0,
        streams[0].0,
        streams[1].1.unwrap_or(f64::NAN),
        ratio(relay_per, direct.0)
    );
    Ok(())
}
