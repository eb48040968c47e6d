//! A tree of configwatch servers started for one measurement (an origin and
//! relays, each relay watching the origin or another relay), and W1 run over it:
//! watchers on any tier, the writer at the origin, latencies per change, each
//! process's CPU per change and each tier's streams from its `/metrics`. Knows
//! nothing of which figures the relay workload prints.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Result, anyhow};
use tokio::sync::mpsc;

use super::deliveries::{Deliveries, Plan, Tally, collect, drive_changes, spawn_readers, stamp};
use super::wait_for;
use crate::metrics;
use crate::peer::configwatch::Configwatch;
use crate::peer::configwatch_relay::Relay;
use crate::peer::{Binaries, Peer, PeerClient, StartOptions, Windows, connect};
use crate::process::Process;
use crate::stats::now_us;

/// An origin and relays: tier 0 is the origin, tier i the i-th relay.
pub struct Tree {
    pub origin: Configwatch,
    relays: Vec<Relay>,
}

impl Drop for Tree {
    /// Stops the relays from the last started, then the origin, so no relay is left
    /// behind an upstream that is gone.
    fn drop(&mut self) {
        while let Some(relay) = self.relays.pop() {
            drop(relay);
        }
    }
}

impl Tree {
    /// Starts an origin holding `tenants` tenants' tokens, then one relay per entry
    /// of `upstreams`, which names the tier it watches (already started).
    pub async fn start(bins: &Binaries, tenants: usize, upstreams: &[usize]) -> Result<Tree> {
        let opts = StartOptions {
            tenants,
            quiet: false,
        };
        let mut tree = Tree {
            origin: Configwatch::start(bins, opts).await?,
            relays: Vec::new(),
        };
        for &up in upstreams {
            let upstream = tree.addr(up)?;
            let origin_dir = tree.origin.process().dir();
            tree.relays
                .push(Relay::start(bins, upstream, origin_dir).await?);
        }
        Ok(tree)
    }

    pub fn tiers(&self) -> usize {
        1 + self.relays.len()
    }

    pub fn addr(&self, tier: usize) -> Result<SocketAddr> {
        match tier {
            0 => Ok(self.origin.addr()),
            _ => Ok(self.relay(tier)?.server.addr),
        }
    }

    pub fn process(&self, tier: usize) -> Result<&Process> {
        match tier {
            0 => Ok(self.origin.process()),
            _ => Ok(&self.relay(tier)?.server.process),
        }
    }

    fn admin(&self, tier: usize) -> Result<SocketAddr> {
        match tier {
            0 => self
                .origin
                .admin()
                .ok_or_else(|| anyhow!("the origin serves no metrics")),
            _ => Ok(self.relay(tier)?.admin),
        }
    }

    fn relay(&self, tier: usize) -> Result<&Relay> {
        self.relays
            .get(tier.wrapping_sub(1))
            .ok_or_else(|| anyhow!("no tier {tier}"))
    }

    /// Per tier: Watch streams its clients hold open, and (relays) its upstream
    /// Watches, from its `/metrics`.
    pub async fn streams(&self) -> Result<Vec<(f64, Option<f64>)>> {
        let mut out = Vec::with_capacity(self.tiers());
        for tier in 0..self.tiers() {
            let text = metrics::scrape(self.admin(tier)?).await?;
            let open = metrics::sample(&text, "configwatch_watch_streams_open")
                .ok_or_else(|| anyhow!("tier {tier} exports no Watch stream count"))?;
            let upstream = metrics::sample(&text, "configwatch_relay_upstream_watches");
            out.push((open, upstream));
        }
        Ok(out)
    }
}

/// What one timed run over a tree measured.
pub struct Timed {
    /// Latencies (µs) per change.
    pub per_change: Vec<Vec<u64>>,
    /// CPU per change of each tier's process (µs, from the scheduler's run time).
    pub cpu_per_change_us: Vec<f64>,
    /// Each tier's streams once every watcher was ready (see [`Tree::streams`]).
    pub streams: Vec<(f64, Option<f64>)>,
}

/// W1 over a tree: watcher `w` watches `plan.tenant_of_watcher(w)` on tier
/// `tier_of(w)`, the tiers' connections splitting `connections`; the writer writes
/// at the origin. The tree is stopped at the end, which ends every stream.
pub async fn timed(
    tree: Tree,
    plan: &Plan,
    tier_of: impl Fn(usize) -> usize,
    connections: usize,
    timeout: Duration,
) -> Result<Timed> {
    let mut used: Vec<usize> = (0..plan.watchers).map(&tier_of).collect();
    used.sort_unstable();
    used.dedup();
    let per_tier = (connections / used.len().max(1)).max(1);
    let mut clients = vec![Vec::new(); tree.tiers()];
    for &tier in &used {
        let addr = tree.addr(tier)?;
        clients[tier] = tree.origin.clients(addr, per_tier, Windows::Large).await?;
    }
    let tally = Tally::new(plan.changes);
    let start = tally.start;
    let (tx, rx): (Deliveries, _) = mpsc::unbounded_channel();
    let streams = (0..plan.watchers).map(|w| {
        let on = &clients[tier_of(w)];
        (on[w % on.len()].clone(), vec![plan.tenant_of_watcher(w)])
    });
    let readers = spawn_readers(streams, &tally, &tx);
    drop(tx);
    let limit = Duration::from_secs(120);
    let step = Duration::from_millis(10);
    wait_for(
        &tally.ready,
        plan.watchers,
        limit,
        step,
        "watchers became ready",
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let streams = tree.streams().await?;
    let writer = tree
        .origin
        .client(connect(tree.origin.addr(), Windows::Large).await?);
    let cpu = |tree: &Tree| -> Result<Vec<Duration>> {
        (0..tree.tiers())
            .map(|t| Ok(tree.process(t)?.cpu_fine()))
            .collect()
    };
    let before = cpu(&tree)?;
    drive_changes(plan, &tally.counts, timeout, |c, t| {
        writer.put(t, "flag", stamp(c, now_us(start)))
    })
    .await?;
    let after = cpu(&tree)?;
    drop(tree);
    for r in readers {
        let _ = r.await;
    }
    let per_change = collect(rx, plan.changes).await;
    let changes = plan.changes.max(1) as f64;
    let cpu_per_change_us = before
        .iter()
        .zip(&after)
        .map(|(b, a)| a.saturating_sub(*b).as_secs_f64() * 1e6 / changes)
        .collect();
    Ok(Timed {
        per_change,
        cpu_per_change_us,
        streams,
    })
}
