//! W4 reconnect storm: N watchers hold a cache; the server is restarted (SIGTERM,
//! same data directory and port) and they resume as each system's client library
//! does, then once more with a full resend (they forget what they hold). Time from
//! the SIGTERM until all have converged, and the bytes on the wire, counted by a
//! TCP relay in front of the server.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use configwatch_client::{Backoff, Retry};

use super::{Workload, against_each, wait_for};
use crate::Cli;
use crate::peer::{Binaries, Followed, MODES, Peer, PeerClient, StartOptions, Windows, connect};
use crate::stats::{now_us, ratio};
use crate::wire_counter::WireCounter;

#[derive(Args, Clone)]
pub struct ReconnectArgs {
    #[arg(long, default_value_t = 10_000)]
    watchers: usize,
    #[arg(long, default_value_t = 100)]
    connections: usize,
    /// Tenants the watchers spread over (default: one per 100 watchers).
    #[arg(long)]
    tenants: Option<usize>,
    /// Keys per tenant.
    #[arg(long, default_value_t = 20)]
    keys: usize,
    /// Bytes per value.
    #[arg(long, default_value_t = 400)]
    value_bytes: usize,
    /// Longest wait for all watchers to converge after a restart.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

/// The phases of a reconnect storm.
const PHASE_FIRST: usize = 0;
const PHASE_RESUME: usize = 1;
const PHASE_FULL: usize = 2;
const PHASES: usize = 3;

/// Shared by the watchers of a storm: which phase the run is in, and per phase how
/// many watchers converged, when the last did, and how.
struct Storm {
    start: Instant,
    phase: AtomicUsize,
    /// Reconnect without resume token or known versions (the full-resend baseline).
    forget: AtomicBool,
    converged: Vec<AtomicUsize>,
    last_us: Vec<AtomicU64>,
    /// Per phase, by initial mode (configwatch: the proto's enum value).
    modes: Vec<[AtomicUsize; MODES]>,
    attempts: AtomicU64,
}

impl Storm {
    fn new() -> Arc<Storm> {
        Arc::new(Storm {
            start: Instant::now(),
            phase: AtomicUsize::new(PHASE_FIRST),
            forget: AtomicBool::new(false),
            converged: (0..PHASES).map(|_| AtomicUsize::new(0)).collect(),
            last_us: (0..PHASES).map(|_| AtomicU64::new(0)).collect(),
            modes: (0..PHASES).map(|_| Default::default()).collect(),
            attempts: AtomicU64::new(0),
        })
    }

    /// A watcher reached its initial state; counted once per watcher and phase.
    fn converged(&self, done_phase: &mut Option<usize>, mode: usize) {
        let phase = self.phase.load(Ordering::Acquire);
        if *done_phase == Some(phase) {
            return;
        }
        *done_phase = Some(phase);
        self.last_us[phase].fetch_max(now_us(self.start), Ordering::AcqRel);
        self.modes[phase][mode.min(MODES - 1)].fetch_add(1, Ordering::AcqRel);
        self.converged[phase].fetch_add(1, Ordering::AcqRel);
    }
}

/// One phase's outcome.
#[derive(Clone, Copy, Default)]
struct PhaseResult {
    /// From the SIGTERM to the last watcher converged.
    converge_ms: f64,
    /// From the restarted server answering to the last watcher converged.
    after_ready_ms: f64,
    /// The server's stop and start.
    restart_ms: f64,
    down_bytes: u64,
    up_bytes: u64,
    converged: usize,
    modes: [usize; MODES],
}

pub struct StormResult {
    system: &'static str,
    describe_modes: fn(&[usize; MODES]) -> String,
    first: PhaseResult,
    resume: PhaseResult,
    full: PhaseResult,
    /// What the state under one watch's prefix weighs as values (bytes).
    state_bytes: usize,
}

/// Runs the three phases against a server behind `wire`: the first connect, a
/// restart with resume, a restart with full resend. `storm` is shared with the
/// watchers, which the caller started.
async fn storm_phases<P: Peer>(
    peer: &mut P,
    wire: &WireCounter,
    storm: &Storm,
    watchers: usize,
    timeout: Duration,
) -> Result<[PhaseResult; PHASES]> {
    let mut out = [PhaseResult::default(); PHASES];
    let wait_all = |phase: usize| {
        let step = Duration::from_millis(1);
        let what = "watchers converged";
        async move {
            wait_for(&storm.converged[phase], watchers, timeout, step, what)
                .await
                .with_context(|| format!("phase {phase}"))
        }
    };
    wait_all(PHASE_FIRST).await?;
    let (down, up) = wire.bytes();
    out[PHASE_FIRST].down_bytes = down;
    out[PHASE_FIRST].up_bytes = up;
    out[PHASE_FIRST].converged = watchers;
    for phase in [PHASE_RESUME, PHASE_FULL] {
        // Let the streams settle, then restart.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        storm.forget.store(phase == PHASE_FULL, Ordering::Release);
        storm.phase.store(phase, Ordering::Release);
        let (down0, up0) = wire.bytes();
        let t_kill = now_us(storm.start);
        peer.restart().await?;
        let t_ready = now_us(storm.start);
        wait_all(phase).await?;
        let (down1, up1) = wire.bytes();
        let last = storm.last_us[phase].load(Ordering::Acquire);
        let r = &mut out[phase];
        r.converge_ms = last.saturating_sub(t_kill) as f64 / 1000.0;
        r.after_ready_ms = last.saturating_sub(t_ready) as f64 / 1000.0;
        r.restart_ms = t_ready.saturating_sub(t_kill) as f64 / 1000.0;
        r.down_bytes = down1 - down0;
        r.up_bytes = up1 - up0;
        r.converged = storm.converged[phase].load(Ordering::Acquire);
    }
    for (phase, r) in out.iter_mut().enumerate() {
        for (m, n) in r.modes.iter_mut().enumerate() {
            *n = storm.modes[phase][m].load(Ordering::Acquire);
        }
    }
    Ok(out)
}

fn storm_value(t: usize, k: usize, bytes: usize) -> String {
    let head = format!("{{\"tenant\":{t},\"key\":{k},\"pad\":\"");
    let pad = bytes.saturating_sub(head.len() + 2);
    format!("{head}{}\"}}", "x".repeat(pad))
}

/// One storm against a fresh `P`: every tenant holds `keys` values, then the
/// watchers follow their tenant through the three phases.
async fn run<P: Peer>(bins: &Binaries, args: &ReconnectArgs) -> Result<StormResult> {
    let tenants = super::tenants(args.tenants, args.watchers, args.watchers);
    // No periodic messages during the run: the bytes counted are the restart's.
    let opts = StartOptions {
        tenants,
        quiet: true,
    };
    let mut peer = P::start(bins, opts).await?;
    {
        let writer = peer.client(connect(peer.addr(), Windows::Large).await?);
        for t in 0..tenants {
            for k in 0..args.keys {
                let value = storm_value(t, k, args.value_bytes);
                writer.put(t, &format!("service{k}"), value).await?;
            }
        }
    }
    let wire = WireCounter::start(peer.addr()).await?;
    let clients = peer
        .clients(wire.addr, args.connections, Windows::Large)
        .await?;
    let storm = Storm::new();
    let mut tasks = Vec::with_capacity(args.watchers);
    for w in 0..args.watchers {
        let tenant = w % tenants;
        let client = clients[w % clients.len()].clone();
        let storm = storm.clone();
        tasks.push(tokio::spawn(async move {
            // What a client library keeps between attempts; on a broken stream it
            // waits the library's backoff, which starts over once a stream is current.
            let mut state = <P::Client as PeerClient>::Follow::default();
            let mut retry = Retry::new(Backoff::default());
            let mut done_phase = None;
            loop {
                if storm.forget.load(Ordering::Acquire) {
                    state = Default::default();
                }
                let initial = |mode: usize| {
                    retry.succeeded();
                    storm.converged(&mut done_phase, mode);
                };
                let followed = client.follow(tenant, &mut state, initial).await;
                storm.attempts.fetch_add(1, Ordering::Relaxed);
                if let Followed::Ended = followed {
                    tokio::time::sleep(retry.failed()).await;
                }
            }
        }));
    }
    let phases = storm_phases(&mut peer, &wire, &storm, args.watchers, args.timeout).await;
    for t in tasks {
        t.abort();
    }
    let [first, resume, full] = phases?;
    Ok(StormResult {
        system: P::NAME,
        describe_modes: P::describe_modes,
        first,
        resume,
        full,
        state_bytes: args.keys * args.value_bytes,
    })
}

impl Workload for ReconnectArgs {
    type Outcome = StormResult;

    async fn run<P: Peer>(&self, bins: &Binaries) -> Result<StormResult> {
        run::<P>(bins, self).await
    }
}

/// W4: configwatch, then (with `--peer etcd`) etcd; a table and the summary line.
pub async fn run_reconnect(cli: &Cli, args: &ReconnectArgs) -> Result<()> {
    let tenants = super::tenants(args.tenants, args.watchers, args.watchers);
    println!(
        "W4 reconnect storm: {} watchers over {} connections, {} tenants, {} keys x {} B per tenant; \
         server restarted with SIGTERM on the same data dir and port; bytes counted by a TCP relay \
         (HTTP/2 on the wire, both directions)",
        args.watchers, args.connections, tenants, args.keys, args.value_bytes
    );
    let results = against_each(cli, args).await?;
    println!(
        "{:<12} {:<22} {:>11} {:>13} {:>11} {:>13} {:>12} {:>10}  modes",
        "system",
        "phase",
        "converge ms",
        "after-ready",
        "restart ms",
        "down bytes",
        "up bytes",
        "B/watcher",
    );
    for r in &results {
        for (name, p) in [
            ("first connect", &r.first),
            ("restart, resume", &r.resume),
            ("restart, full resend", &r.full),
        ] {
            let modes = (r.describe_modes)(&p.modes);
            println!(
                "{:<12} {:<22} {:>11.1} {:>13.1} {:>11.1} {:>13} {:>12} {:>10.0}  {}",
                r.system,
                name,
                p.converge_ms,
                p.after_ready_ms,
                p.restart_ms,
                p.down_bytes,
                p.up_bytes,
                p.down_bytes as f64 / args.watchers as f64,
                modes
            );
        }
    }
    let share = |r: &StormResult| r.resume.down_bytes as f64 / r.full.down_bytes.max(1) as f64;
    let share_total = |r: &StormResult| {
        (r.resume.down_bytes + r.resume.up_bytes) as f64
            / (r.full.down_bytes + r.full.up_bytes).max(1) as f64
    };
    let cw = &results[0];
    println!(
        "state per watcher: {} B of values; resume/full bytes server->client: configwatch {:.2}%{}",
        cw.state_bytes,
        100.0 * share(cw),
        results
            .get(1)
            .map(|e| format!(" etcd {:.2}%", 100.0 * share(e)))
            .unwrap_or_default()
    );
    match results.get(1) {
        Some(e) => println!(
            "W4 N={} configwatch converge={:.1}ms bytes={} ({:.2}% of full, {:.2}% both ways) etcd converge={:.1}ms bytes={} ({:.2}% of full, {:.2}% both ways) ratio={:.3}",
            args.watchers,
            cw.resume.converge_ms,
            cw.resume.down_bytes,
            100.0 * share(cw),
            100.0 * share_total(cw),
            e.resume.converge_ms,
            e.resume.down_bytes,
            100.0 * share(e),
            100.0 * share_total(e),
            ratio(cw.resume.converge_ms, e.resume.converge_ms)
        ),
        None => println!(
            "W4 N={} configwatch converge={:.1}ms bytes={} ({:.2}% of full, {:.2}% both ways)",
            args.watchers,
            cw.resume.converge_ms,
            cw.resume.down_bytes,
            100.0 * share(cw),
            100.0 * share_total(cw)
        ),
    }
    Ok(())
}
