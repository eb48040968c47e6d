//! The chaos plan of a round (kills, restarts, cut and frozen connections, a server
//! that looks hung) and its execution.

use super::*;

#[derive(Debug, Clone, Copy)]
pub(crate) enum Disruption {
    /// SIGKILL the server, restart it on the same data directory (a new port).
    Kill,
    /// SIGTERM (graceful shutdown), then restart.
    Terminate,
    /// Close every proxied connection; with `reset`, abortively (RST).
    Cut { reset: bool },
    /// Stop forwarding on every open connection, silently and for good: a half-open
    /// network (a dead peer, a NAT that forgot the flow). New connections work. Every
    /// client must hear from the server again within twice its idle timeout (plus
    /// 5 s), on a new connection; the frozen ones are closed only then.
    Freeze,
    /// Reset every connection, then for this long accept new ones and forward
    /// nothing on them, for good (a hung server, a blackholed backend behind a load
    /// balancer); later ones work. Every client must hear from the server again
    /// within twice its idle timeout (plus 5 s) after that.
    Hang(Duration),
}

/// A silent network: half-open connections, or a hung server.
pub(crate) fn freeze(rng: &mut StdRng) -> Disruption {
    if rng.random_bool(0.5) {
        Disruption::Freeze
    } else {
        Disruption::Hang(Duration::from_millis(rng.random_range(200..1500)))
    }
}

#[derive(Debug)]
pub(crate) struct Planned {
    /// After this many writes were acknowledged (== writes: after the last one).
    pub(crate) after: usize,
    /// Then this much later, so that it often lands in the middle of a write.
    pub(crate) delay: Duration,
    pub(crate) chaos: Disruption,
}

/// Round `round`'s disruptions, at random points of its writes: one featured kind in
/// turn (so that every kind happens in any four rounds), and random others.
pub(crate) fn plan_round(rng: &mut StdRng, round: usize, writes: usize) -> Vec<Planned> {
    let mut plan = vec![match round % 4 {
        1 => Disruption::Kill,
        2 => freeze(rng),
        3 => Disruption::Cut {
            reset: rng.random_bool(0.5),
        },
        _ => Disruption::Terminate,
    }];
    for _ in 0..[0, 0, 1, 1, 2][rng.random_range(0..5)] {
        plan.push(if rng.random_bool(0.85) {
            Disruption::Kill
        } else {
            Disruption::Terminate
        });
    }
    for _ in 0..rng.random_range(0..3) {
        plan.push(Disruption::Cut {
            reset: rng.random_bool(0.5),
        });
    }
    if rng.random_bool(0.1) {
        plan.push(freeze(rng));
    }
    let mut plan: Vec<Planned> = plan
        .into_iter()
        .map(|chaos| Planned {
            after: rng.random_range(0..=writes),
            delay: Duration::from_millis(rng.random_range(0..8)),
            chaos,
        })
        .collect();
    plan.sort_by_key(|p| p.after);
    plan
}

#[derive(Debug, Default)]
pub(crate) struct ChaosStats {
    pub(crate) kills: u64,
    pub(crate) terms: u64,
    pub(crate) cuts: u64,
    pub(crate) resets: u64,
    pub(crate) freezes: u64,
    pub(crate) hangs: u64,
    /// The longest time from a freeze (the end of its blackhole) until every client
    /// heard from the server again.
    pub(crate) slowest_unfreeze: Duration,
}

pub(crate) struct Chaos {
    pub(crate) server: Server,
    pub(crate) proxy: Proxy,
    pub(crate) server_addr: watch::Sender<SocketAddr>,
    pub(crate) stats: ChaosStats,
}

impl Chaos {
    pub(crate) async fn round(
        &mut self,
        plan: &[Planned],
        mut progress: watch::Receiver<usize>,
        rng: &mut StdRng,
        rust: &[RustClient],
        ts: &mut [TsClient],
    ) -> Result<(), String> {
        for p in plan {
            let _ = progress.wait_for(|n| *n >= p.after).await;
            tokio::time::sleep(p.delay).await;
            match p.chaos {
                Disruption::Kill => {
                    self.stats.kills += 1;
                    self.server.kill().await;
                    self.restart(rng).await?;
                }
                Disruption::Terminate => {
                    self.stats.terms += 1;
                    self.server.terminate().await?;
                    self.restart(rng).await?;
                }
                Disruption::Cut { reset } => {
                    self.stats.cuts += 1;
                    if reset {
                        self.stats.resets += 1;
                    }
                    self.proxy.cut(reset);
                }
                Disruption::Freeze | Disruption::Hang(_) => {
                    if let Disruption::Hang(window) = p.chaos {
                        self.stats.hangs += 1;
                        self.proxy.cut(true);
                        self.proxy.freeze(true);
                        // The window in which new connections die at birth.
                        tokio::time::sleep(window).await;
                    } else {
                        self.stats.freezes += 1;
                        self.proxy.freeze(false);
                    }
                    let frozen = self.proxy.end_blackhole();
                    let at = SystemTime::now();
                    let t = Instant::now();
                    heard_from_after(at, rust, ts).await?;
                    self.stats.slowest_unfreeze = self.stats.slowest_unfreeze.max(t.elapsed());
                    self.proxy.cut_below(frozen, false);
                }
            }
        }
        Ok(())
    }

    pub(crate) async fn restart(&mut self, rng: &mut StdRng) -> Result<(), String> {
        // Down for a moment (clients fail to connect and back off), with a history
        // that is sometimes too short for resume tokens to reach back.
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..150))).await;
        let history = [8, 64, 4096][rng.random_range(0..3)];
        let addr = self.server.start(history).await?;
        self.proxy.retarget(addr);
        self.server_addr.send_replace(addr);
        Ok(())
    }
}
