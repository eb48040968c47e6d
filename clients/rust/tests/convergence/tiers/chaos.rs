//! The chaos of a round across the tiers, and its execution: which process is
//! killed (SIGKILL, sometimes SIGTERM) and restarted, and which link is cut (FIN or
//! RST) or goes silent (half-open connections, or a hung server): the link between
//! a tier and its clients, or a relay's link to its upstream. After a silence, the
//! round waits until the tier's clients hear from it again, or until the relay has
//! a new initial state from its upstream: both must find a frozen connection out
//! by themselves.
//!
//! Boundary: the plan and what it does to `Tiers`; the kinds of disruption are the
//! suite's (`chaos::Disruption`), the proxies' mechanics `proxy`'s.

use super::*;

use std::cell::Cell;

/// How long a relay may take to have its upstream back after its link went
/// silent: found dead by HTTP/2 pings (5 s apart, 5 s to answer) twice over (the
/// first reconnect may land on a connection frozen at birth), and some slack.
const UPSTREAM_BACK_WITHIN: Duration = Duration::from_secs(25);

/// Where a disruption strikes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target {
    /// The process of the tier at this depth (a kill or SIGTERM, then a restart).
    Process(usize),
    /// The link between the tier at this depth and its clients.
    Clients(usize),
    /// The link between the relay at this depth and its upstream.
    Upstream(usize),
}

const LINKS: [Target; 5] = [
    Target::Clients(0),
    Target::Clients(1),
    Target::Clients(2),
    Target::Upstream(1),
    Target::Upstream(2),
];

#[derive(Debug)]
pub(crate) struct Step {
    /// After this many writes were acknowledged (== writes: after the last one).
    pub(crate) after: usize,
    /// Then this much later, so that it often lands in the middle of a write.
    pub(crate) delay: Duration,
    pub(crate) chaos: Disruption,
    pub(crate) at: Target,
}

fn kill(rng: &mut StdRng) -> Disruption {
    if rng.random_bool(0.85) {
        Disruption::Kill
    } else {
        Disruption::Terminate
    }
}

fn cut(rng: &mut StdRng) -> Disruption {
    Disruption::Cut {
        reset: rng.random_bool(0.5),
    }
}

/// Round `round`'s disruptions at random points of its writes: the process of each
/// tier in turn, and each link in turn (frozen and cut, alternately), so that in
/// any ten rounds every tier is killed and every link both cut and frozen; and
/// random others.
pub(crate) fn plan_tier_round(rng: &mut StdRng, round: usize, writes: usize) -> Vec<Step> {
    let r = round - 1;
    let link = if (r % LINKS.len() + r / LINKS.len()).is_multiple_of(2) {
        freeze(rng)
    } else {
        cut(rng)
    };
    let mut strikes = vec![
        (kill(rng), Target::Process(r % TIERS)),
        (link, LINKS[r % LINKS.len()]),
    ];
    for _ in 0..[0, 0, 1][rng.random_range(0..3)] {
        strikes.push((kill(rng), Target::Process(rng.random_range(0..TIERS))));
    }
    for _ in 0..rng.random_range(0..3) {
        strikes.push((cut(rng), LINKS[rng.random_range(0..LINKS.len())]));
    }
    if rng.random_bool(0.1) {
        strikes.push((freeze(rng), LINKS[rng.random_range(0..LINKS.len())]));
    }
    let mut plan: Vec<Step> = strikes
        .into_iter()
        .map(|(chaos, at)| Step {
            after: rng.random_range(0..=writes),
            delay: Duration::from_millis(rng.random_range(0..8)),
            chaos,
            at,
        })
        .collect();
    plan.sort_by_key(|s| s.after);
    plan
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.chaos {
            Disruption::Kill => "SIGKILL",
            Disruption::Terminate => "SIGTERM",
            Disruption::Cut { reset: true } => "cut (RST)",
            Disruption::Cut { reset: false } => "cut (FIN)",
            Disruption::Freeze => "freeze",
            Disruption::Hang(_) => "hang",
        };
        match self.at {
            Target::Process(d) => write!(f, "{what} {}", NAMES[d]),
            Target::Clients(d) => write!(f, "{what} {}'s clients", NAMES[d]),
            Target::Upstream(d) => write!(f, "{what} {}'s upstream", NAMES[d]),
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct TierChaosStats {
    /// SIGKILLs and SIGTERMs, by tier.
    pub(crate) kills: [u64; TIERS],
    pub(crate) terms: [u64; TIERS],
    pub(crate) cuts: u64,
    pub(crate) resets: u64,
    pub(crate) freezes: u64,
    pub(crate) hangs: u64,
    /// The longest time from the end of a silence until every client of the tier
    /// heard from it again.
    pub(crate) slowest_clients_back: Duration,
    /// ... until the relay had a new initial state from its upstream.
    pub(crate) slowest_upstream_back: Duration,
}

/// The clients of each tier: `per_tier` of each language, in tier order.
pub(crate) struct Clients {
    pub(crate) rust: Vec<RustClient>,
    pub(crate) ts: Vec<TsClient>,
    pub(crate) per_tier: usize,
}

impl Clients {
    /// The clients of the tier at `depth`.
    pub(crate) fn of(&mut self, depth: usize) -> (&[RustClient], &mut [TsClient]) {
        let range = depth * self.per_tier..(depth + 1) * self.per_tier;
        (&self.rust[range.clone()], &mut self.ts[range])
    }
}

pub(crate) struct TierChaos {
    pub(crate) tiers: Tiers,
    pub(crate) stats: TierChaosStats,
}

impl TierChaos {
    pub(crate) async fn round(
        &mut self,
        plan: &[Step],
        mut progress: watch::Receiver<usize>,
        rng: &mut StdRng,
        clients: &mut Clients,
    ) -> Result<(), String> {
        for step in plan {
            let _ = progress.wait_for(|n| *n >= step.after).await;
            tokio::time::sleep(step.delay).await;
            let failed = |e: String| format!("{step}: {e}");
            match (step.chaos, step.at) {
                (Disruption::Kill | Disruption::Terminate, Target::Process(d)) => {
                    let server = &mut self.tiers.tiers[d].server;
                    if matches!(step.chaos, Disruption::Kill) {
                        self.stats.kills[d] += 1;
                        server.kill().await;
                    } else {
                        self.stats.terms[d] += 1;
                        server.terminate().await.map_err(failed)?;
                    }
                    // Down for a moment (clients and relays below fail to connect and
                    // back off), with a history that is sometimes too short for
                    // resume tokens to reach back.
                    tokio::time::sleep(Duration::from_millis(rng.random_range(0..150))).await;
                    let history = [8, 64, 4096][rng.random_range(0..3)];
                    self.tiers.restart(d, history).await.map_err(failed)?;
                }
                (Disruption::Cut { reset }, link) => {
                    self.stats.cuts += 1;
                    if reset {
                        self.stats.resets += 1;
                    }
                    proxy(&self.tiers, link).cut(reset);
                }
                (Disruption::Freeze | Disruption::Hang(_), link) => {
                    self.silence(step.chaos, link, clients)
                        .await
                        .map_err(failed)?;
                }
                (chaos, at) => return Err(format!("test bug: {chaos:?} on {at:?}")),
            }
        }
        Ok(())
    }

    /// Freezes the link's connections (or plays a hung server for a moment), then
    /// waits until the ones it served find their way back, and closes the frozen
    /// connections.
    async fn silence(
        &mut self,
        chaos: Disruption,
        link: Target,
        clients: &mut Clients,
    ) -> Result<(), String> {
        let syncs_before = match link {
            Target::Upstream(d) => total(self.tiers.tiers[d].upstream_syncs().await),
            Target::Process(_) | Target::Clients(_) => 0,
        };
        let proxy = proxy(&self.tiers, link);
        if let Disruption::Hang(window) = chaos {
            self.stats.hangs += 1;
            proxy.cut(true);
            proxy.freeze(true);
            // The window in which new connections die at birth.
            tokio::time::sleep(window).await;
        } else {
            self.stats.freezes += 1;
            proxy.freeze(false);
        }
        let frozen = proxy.end_blackhole();
        let at = SystemTime::now();
        let t = Instant::now();
        match link {
            Target::Upstream(d) => {
                self.upstream_back(d, syncs_before).await?;
                let took = t.elapsed();
                self.stats.slowest_upstream_back = self.stats.slowest_upstream_back.max(took);
            }
            Target::Clients(d) | Target::Process(d) => {
                let (rust, ts) = clients.of(d);
                heard_from_after(at, rust, ts).await?;
                let took = t.elapsed();
                self.stats.slowest_clients_back = self.stats.slowest_clients_back.max(took);
            }
        }
        proxy.cut_below(frozen, false);
        Ok(())
    }

    /// Waits until the relay at `depth` received an initial state from its
    /// upstream after its `before`-th.
    async fn upstream_back(&self, depth: usize, before: u64) -> Result<(), String> {
        let tier = &self.tiers.tiers[depth];
        let last = Cell::new(before);
        let back = poll(UPSTREAM_BACK_WITHIN, || async {
            last.set(total(tier.upstream_syncs().await));
            (last.get() > before).then_some(())
        })
        .await;
        back.map_err(|_| {
            format!(
                "its upstream link frozen, {} had no new state from its upstream within \
                 {UPSTREAM_BACK_WITHIN:?} (still {} initial states received), though new \
                 connections work:\n{}",
                tier.name(),
                last.get(),
                tier.server.log_tail(20)
            )
        })
    }
}

/// The proxy of a link.
fn proxy(tiers: &Tiers, link: Target) -> &Proxy {
    match link {
        Target::Process(d) | Target::Clients(d) => &tiers.tiers[d].front,
        Target::Upstream(d) => tiers.tiers[d]
            .uplink
            .as_ref()
            .expect("a relay's upstream link"),
    }
}

/// The initial states a relay received, of every mode.
pub(crate) fn total(syncs: Option<[u64; 3]>) -> u64 {
    syncs.map_or(0, |s| s.iter().sum())
}
