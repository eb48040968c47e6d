//! W5 slow consumers: 10% of the watchers never read (their HTTP/2 windows fill);
//! the others' latency and the server's RSS, against the same run without them,
//! alternating, fresh servers each time. The runs are W1's with a [`SlowSpec`].

use std::time::Duration;

use anyhow::Result;
use clap::Args;

use super::Streams;
use super::fanout::{self, FanoutArgs, FanoutResult, Plan, SlowSpec};
use crate::peer::Peer;
use crate::peer::configwatch::Configwatch;
use crate::peer::etcd::Etcd;
use crate::stats::{median, ratio};
use crate::{Against, Cli};

#[derive(Args, Clone)]
pub struct SlowArgs {
    /// All watchers, slow ones included.
    #[arg(long, default_value_t = 10_000)]
    watchers: usize,
    /// The share of watchers that never read, in percent.
    #[arg(long, default_value_t = 10)]
    slow_percent: usize,
    /// Connections of the reading watchers (the slow ones get a tenth as many more).
    #[arg(long, default_value_t = 100)]
    connections: usize,
    #[arg(long)]
    tenants: Option<usize>,
    /// Measured changes (one at a time, as W1).
    #[arg(long, default_value_t = 50)]
    changes: usize,
    /// Large changes per tenant first, which fill the slow watchers' windows.
    #[arg(long, default_value_t = 8)]
    fill_changes: usize,
    #[arg(long, default_value_t = 16_384)]
    fill_bytes: usize,
    /// Each round runs without and with slow watchers; figures are medians.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

/// W5: each round runs every system without and with the slow watchers.
pub async fn run_slow(cli: &Cli, args: &SlowArgs) -> Result<()> {
    let slow_n = args.watchers * args.slow_percent / 100;
    let fast_n = args.watchers - slow_n;
    let plan = Plan {
        watchers: fast_n,
        tenants: super::tenants(args.tenants, args.watchers, fast_n),
        changes: args.changes,
    };
    let fanout = FanoutArgs {
        watchers: fast_n,
        connections: args.connections,
        tenants: Some(plan.tenants),
        changes: args.changes,
        timeout: args.timeout,
    };
    let spec = |slow: usize| SlowSpec {
        watchers: slow,
        connections: (args.connections / 10).max(1),
        fill_changes: args.fill_changes,
        fill_bytes: args.fill_bytes,
    };
    println!(
        "W5 slow consumers: {fast_n} reading watchers over {} connections, {slow_n} never-reading \
         watchers over {} more (64 KiB windows), {} tenants; {} x {} B fill changes per tenant, then {} \
         measured changes; {} rounds, medians",
        args.connections,
        spec(slow_n).connections,
        plan.tenants,
        args.fill_changes,
        args.fill_bytes,
        args.changes,
        args.rounds
    );
    let bins = cli.binaries()?;
    let systems: &[&str] = if cli.peer == Against::Etcd {
        &[Configwatch::NAME, Etcd::NAME]
    } else {
        &[Configwatch::NAME]
    };
    // [system][with slow] -> per-round results
    let mut runs: Vec<[Vec<FanoutResult>; 2]> = (0..systems.len())
        .map(|_| [Vec::new(), Vec::new()])
        .collect();
    let each = Streams::PerWatcher;
    for round in 0..args.rounds {
        for (si, system) in systems.iter().enumerate() {
            for (wi, slow) in [0, slow_n].into_iter().enumerate() {
                let r = if si == 0 {
                    fanout::run::<Configwatch>(&bins, &fanout, &plan, each, spec(slow), None)
                        .await?
                } else {
                    fanout::run::<Etcd>(&bins, &fanout, &plan, each, spec(slow), None).await?
                };
                println!(
                    "  round {} {:<12} slow={:<6} p50={:.2}ms p99={:.2}ms max={:.2}ms missing={} RSS ready/fill/end={:.1}/{:.1}/{:.1} MiB",
                    round + 1,
                    system,
                    slow,
                    r.delivery.p50,
                    r.delivery.p99,
                    r.delivery.max,
                    r.missing,
                    r.rss_mib,
                    r.rss_fill_mib,
                    r.rss_end_mib
                );
                runs[si][wi].push(r);
            }
        }
    }
    let med = |rs: &[FanoutResult], f: fn(&FanoutResult) -> f64| {
        median(&mut rs.iter().map(f).collect::<Vec<_>>())
    };
    println!(
        "{:<12} {:>10} {:>10} {:>10} {:>10} {:>8} {:>12} {:>12} {:>12} {:>12}",
        "system",
        "p50 none",
        "p99 none",
        "p50 slow",
        "p99 slow",
        "p99 +%",
        "RSS none",
        "RSS slow",
        "RSS fill",
        "RSS end"
    );
    let mut summary = Vec::new();
    for (si, system) in systems.iter().enumerate() {
        let [none, slow] = &runs[si];
        let p99n = med(none, |r| r.delivery.p99);
        let p99s = med(slow, |r| r.delivery.p99);
        let rss_n = med(none, |r| r.rss_end_mib);
        let rss_s = med(slow, |r| r.rss_end_mib);
        println!(
            "{:<12} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>8.1} {:>12.1} {:>12.1} {:>12.1} {:>12.1}",
            system,
            med(none, |r| r.delivery.p50),
            p99n,
            med(slow, |r| r.delivery.p50),
            p99s,
            100.0 * (ratio(p99s, p99n) - 1.0),
            rss_n,
            rss_s,
            med(slow, |r| r.rss_fill_mib),
            med(slow, |r| r.rss_end_mib),
        );
        summary.push((p99n, p99s, rss_n, rss_s));
    }
    let (cn, cs, crn, crs) = summary[0];
    match summary.get(1) {
        Some(&(en, es, ern, ers)) => println!(
            "W5 N={} slow={slow_n} configwatch p99 none={cn:.2}ms slow={cs:.2}ms ({:+.1}%) RSS none={crn:.1}MiB slow={crs:.1}MiB etcd p99 none={en:.2}ms slow={es:.2}ms ({:+.1}%) RSS none={ern:.1}MiB slow={ers:.1}MiB ratio={:.3}",
            args.watchers,
            100.0 * (ratio(cs, cn) - 1.0),
            100.0 * (ratio(es, en) - 1.0),
            ratio(cs, es)
        ),
        None => println!(
            "W5 N={} slow={slow_n} configwatch p99 none={cn:.2}ms slow={cs:.2}ms ({:+.1}%) RSS none={crn:.1}MiB slow={crs:.1}MiB",
            args.watchers,
            100.0 * (ratio(cs, cn) - 1.0)
        ),
    }
    Ok(())
}
