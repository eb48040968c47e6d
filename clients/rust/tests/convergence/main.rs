//! Convergence under chaos: the product's central promise, checked end to end.
//!
//! Clients of both languages (this crate's `Client`, and the TypeScript
//! `ConfigWatchClient` run as child processes by `clients/typescript/test/
//! convergence-client.ts`) watch one tenant through a TCP proxy, while a writer
//! makes random writes (puts, deletes, re-creates, secrets, large values) and the
//! test kills the server with SIGKILL (sometimes SIGTERM), restarts it on the same
//! data directory, cuts every proxied connection (FIN or RST), freezes connections
//! silently (a half-open network), and makes the server look hung (connections
//! accepted, then silent). After each round, once writes stop:
//!
//! - the server's state (a `Get` of the whole tenant) equals the writer's own record
//!   of what was acknowledged: keys, versions, values, secrets, deletes;
//! - every client's cache equals the server's state under its prefixes (keys,
//!   versions, values; secrets by version only), and it is connected;
//! - every client's change events are consistent: per key, versions never go
//!   backwards, `previous_version` is the version last seen live, and the last event
//!   of each key is the server's state (a set with its version and value, or a
//!   delete).
//!
//! Environment (defaults in brackets):
//! - `CONFIGWATCH_CONVERGENCE_ROUNDS` [20], `CONFIGWATCH_CONVERGENCE_CLIENTS` (per
//!   language) [2], `CONFIGWATCH_CONVERGENCE_WRITES` (per round) [60],
//!   `CONFIGWATCH_CONVERGENCE_KEYS` [36];
//! - `CONFIGWATCH_CONVERGENCE_SEED`: replays the writes and the chaos plan of a run
//!   (the timing of a replay is not the same: it is a real network and real
//!   processes);
//! - `CONFIGWATCH_NODE` [node]: the Node.js binary; `CONFIGWATCH_BIN`: the server.
//!
//! `max_age` checks the same promise when connections reach the server's maximum
//! age (`--max-connection-age`) instead, and `spread` with two instances on the AWS
//! backend (moto) behind a round-robin `balancer`, the second started later: the
//! watchers spread to it and none misses a change. `failover` gives the clients both
//! instances' URLs instead and kills the one they use, then the other; `origins`
//! puts a relay listing both in front of the clients and kills the origin it uses,
//! then the other.
//!
//! The TypeScript driver must be built: `npm ci && npm run build` in
//! clients/typescript (tests/run does it before `cargo test`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod balancer;
mod changes;
mod chaos;
#[path = "../common/mod.rs"]
mod common;
mod compare;
mod failover;
mod instances;
mod max_age;
mod origins;
mod proxy;
mod rust_client;
mod server;
mod spread;
mod ts_client;
mod writer;

use balancer::*;
use chaos::*;
use compare::*;
use instances::*;
use proxy::*;
use rust_client::*;
use server::*;
use ts_client::*;
use writer::*;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use configwatch_client::proto::{self, config_service_client::ConfigServiceClient};
use configwatch_client::{Change, ChangeKind, Client, ClientBuilder, State, SyncMode};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use common::{TENANT, fast_backoff, temp_dir};
use configwatch_test_support::{ServerProcess, mint_token, poll, serve_command, server_bin};

/// How long the clients wait for a silent stream before reopening it. The server
/// sends progress every 500 ms here.
const IDLE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long every client gets to converge once writes stop.
const CONVERGE_WITHIN: Duration = Duration::from_secs(30);
/// Reader tokens live this long and are replaced every `TOKEN_REFRESH`.
const READER_TTL: &str = "20s";
const TOKEN_REFRESH: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_both_languages_converge_through_restarts_and_dropped_connections() {
    let config = Config::from_env();
    let driver = typescript_driver();
    let dir = temp_dir();
    eprintln!(
        "convergence: seed {} ({} rounds, {} Rust + {} TypeScript clients, {} writes per round, \
         {} keys); replay with CONFIGWATCH_CONVERGENCE_SEED={}",
        config.seed,
        config.rounds,
        config.clients,
        config.clients,
        config.writes,
        config.keys,
        config.seed
    );
    let started = Instant::now();
    match run(&config, &driver, dir.path()).await {
        Ok(stats) => eprintln!(
            "convergence: passed in {:.1} s: {}",
            started.elapsed().as_secs_f64(),
            stats.summary()
        ),
        Err(failure) => {
            let kept = dir.keep();
            panic!(
                "{failure}\n\nseed {seed}: replay with CONFIGWATCH_CONVERGENCE_SEED={seed} \
                 (and the same ROUNDS/CLIENTS/WRITES/KEYS); server and client logs kept in {}",
                kept.display(),
                seed = config.seed,
            );
        }
    }
}

// ------------------------------------------------------------------ configuration

struct Config {
    rounds: usize,
    /// Clients per language.
    clients: usize,
    writes: usize,
    keys: usize,
    seed: u64,
}

impl Config {
    fn from_env() -> Config {
        fn var(name: &str, default: u64, min: u64) -> u64 {
            match std::env::var(name) {
                Err(_) => default,
                Ok(v) => match v.trim().parse::<u64>() {
                    Ok(n) if n >= min => n,
                    _ => panic!("{name}={v:?}: expected a whole number of at least {min}"),
                },
            }
        }
        let seed = match std::env::var("CONFIGWATCH_CONVERGENCE_SEED") {
            Ok(v) => v
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("CONFIGWATCH_CONVERGENCE_SEED={v:?}: not a u64")),
            Err(_) => rand::rng().random(),
        };
        Config {
            rounds: var("CONFIGWATCH_CONVERGENCE_ROUNDS", 20, 1) as usize,
            clients: var("CONFIGWATCH_CONVERGENCE_CLIENTS", 2, 1) as usize,
            writes: var("CONFIGWATCH_CONVERGENCE_WRITES", 60, 1) as usize,
            keys: var("CONFIGWATCH_CONVERGENCE_KEYS", 36, 3) as usize,
            seed,
        }
    }
}

/// The keys the writer uses: two thirds `tenant_config_`, one third `param_config_`,
/// some with path segments, so that prefixed watches see part of them.
fn key_space(n: usize) -> Vec<String> {
    let params = n / 3;
    let mut keys = Vec::with_capacity(n);
    for i in 0..n - params {
        keys.push(if i % 3 == 0 {
            format!("tenant_config_svc-{}/flag.{i}", i % 2)
        } else {
            format!("tenant_config_k{i:02}")
        });
    }
    for i in 0..params {
        let group = if i % 2 == 0 { "db" } else { "app" };
        keys.push(format!("param_config_{group}/p{i:02}"));
    }
    keys
}

/// What client `i` of a language watches: every other one only part of the tenant.
fn prefixes_of(i: usize) -> Vec<String> {
    if i % 2 == 1 {
        vec!["tenant_config_svc-".into(), "param_config_db".into()]
    } else {
        Vec::new()
    }
}

fn watched(prefixes: &[String], key: &str) -> bool {
    prefixes.is_empty() || prefixes.iter().any(|p| key.starts_with(p.as_str()))
}

/// The TypeScript driver and Node.js; fails (never skips) when either is missing.
struct Driver {
    node: String,
    script: PathBuf,
}

fn typescript_driver() -> Driver {
    let clients = Path::new(env!("CARGO_MANIFEST_DIR"));
    let package = clients.parent().unwrap_or(clients).join("typescript");
    let script = package.join("dist/test/convergence-client.js");
    let build = "run `npm ci && npm run build` in clients/typescript (tests/run does it)";
    let built = std::fs::metadata(&script)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| {
            panic!(
                "the TypeScript convergence driver {} is missing ({e}): {build}",
                script.display()
            )
        });
    // A build older than the sources would test yesterday's client.
    let mut sources = vec![package.join("test/convergence-client.ts")];
    if let Ok(dir) = std::fs::read_dir(package.join("src")) {
        sources.extend(
            dir.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "ts")),
        );
    }
    for source in sources {
        if let Ok(written) = std::fs::metadata(&source).and_then(|m| m.modified()) {
            assert!(
                written <= built,
                "{} is older than its source {}: {build}",
                script.display(),
                source.display()
            );
        }
    }
    let node = std::env::var("CONFIGWATCH_NODE").unwrap_or_else(|_| "node".into());
    match std::process::Command::new(&node).arg("--version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!("`{node} --version` failed: {out:?}"),
        Err(e) => panic!(
            "cannot run `{node}` ({e}): Node.js 20 or later runs the TypeScript clients of this \
             test; install it (or set CONFIGWATCH_NODE), then {build}"
        ),
    }
    Driver { node, script }
}

// ------------------------------------------------------------------ the run

async fn run(config: &Config, driver: &Driver, dir: &Path) -> Result<Stats, String> {
    let keys = key_space(config.keys);
    let mut writes_rng = StdRng::seed_from_u64(config.seed);
    let mut chaos_rng = StdRng::seed_from_u64(config.seed ^ 0x9e37_79b9_7f4a_7c15);

    let mut server = Server::new(dir.join("data"), dir.to_owned());
    let first = server.start(4096).await?;
    let proxy = Proxy::start(first)
        .await
        .map_err(|e| format!("proxy: {e}"))?;
    let (server_addr, server_rx) = watch::channel(first);

    // Readers read the token file at each connection; a task keeps replacing it with
    // a fresh short-lived token.
    let token_file = dir.join("reader.token");
    refresh_token(&server.data_dir, &token_file).await?;
    let refresher = {
        let (data_dir, token_file) = (server.data_dir.clone(), token_file.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(TOKEN_REFRESH).await;
                if let Err(e) = refresh_token(&data_dir, &token_file).await {
                    eprintln!("convergence: token refresh failed (the old one stays): {e}");
                }
            }
        })
    };
    let _refresher = AbortOnDrop(refresher);

    let writer_token = mint_token(&server_bin(), &server.data_dir, TENANT, "writer", "24h").await?;
    let mut writer = Writer::new(server_rx, &writer_token, &keys);

    // Clients start before the first write: nothing can be applied before their
    // change recorders are attached.
    let url = format!("http://{}", proxy.addr);
    let mut rust = Vec::new();
    let mut ts = Vec::new();
    for i in 0..config.clients {
        rust.push(RustClient::start(format!("rust-{i}"), &url, &token_file, prefixes_of(i)).await?);
        ts.push(
            TsClient::start(
                driver,
                format!("ts-{i}"),
                &url,
                &token_file,
                prefixes_of(i),
                &dir.join(format!("ts-{i}.log")),
            )
            .await?,
        );
    }

    let mut chaos = Chaos {
        server,
        proxy,
        server_addr,
        stats: ChaosStats::default(),
    };
    let mut converge = Vec::new();
    for round in 1..=config.rounds {
        let plan = plan_round(&mut chaos_rng, round, config.writes);
        let (progress, progress_rx) = watch::channel(0usize);
        let failed = |server: &Server, e: String| {
            format!(
                "round {round}: {e}\nplan: {plan:?}\n--- server log (last lines) ---\n{}",
                server.log_tail(40)
            )
        };
        // The first error stops both.
        tokio::try_join!(
            writer.round(&mut writes_rng, config.writes, &progress),
            chaos.round(&plan, progress_rx, &mut chaos_rng, &rust, &mut ts)
        )
        .map_err(|e| failed(&chaos.server, e))?;

        let t = Instant::now();
        check_convergence(&mut writer, &rust, &mut ts)
            .await
            .map_err(|e| failed(&chaos.server, e))?;
        let took = t.elapsed();
        converge.push(took);
        eprintln!(
            "convergence: round {round}/{}: {} writes, chaos {:?}; converged in {} ms",
            config.rounds,
            config.writes,
            plan.iter().map(|p| p.chaos).collect::<Vec<_>>(),
            took.as_millis()
        );
    }

    let mut client_report = String::new();
    for c in &rust {
        let s = c.client.status();
        let _ = write!(
            client_report,
            " {}: {} syncs, {} changes;",
            c.name,
            s.syncs,
            c.recorder.lock().unwrap().changes
        );
    }
    for c in &mut ts {
        let d = c.dump().await?;
        let _ = write!(client_report, " {}: {};", c.name, d.counts);
    }
    close_all(rust, ts).await?;
    chaos.server.kill().await;
    Ok(Stats {
        rounds: config.rounds,
        writer: writer.stats,
        chaos: chaos.stats,
        converge,
        clients: client_report,
    })
}

/// Waits until every client holds the server's state, after checking the server
/// against the writer's record.
async fn check_convergence(
    writer: &mut Writer,
    rust: &[RustClient],
    ts: &mut [TsClient],
) -> Result<(), String> {
    let truth = writer.truth().await?;
    let lost = writer.compare_record(&truth);
    if !lost.is_empty() {
        return Err(format!(
            "the server's state differs from the writes it acknowledged:\n  {}",
            lost.join("\n  ")
        ));
    }
    let keys: Vec<String> = writer.keys().cloned().collect();
    converge_on(&truth, &keys, rust, ts).await?;
    // Nothing may have moved in the meantime: no writes happen now.
    let again = writer.truth().await?;
    if again != truth {
        return Err(format!(
            "the server's state changed with no writes: {truth:?} then {again:?}"
        ));
    }
    Ok(())
}

/// Waits until every client holds `truth` (`keys`: every key written), checking
/// their change events on the way.
async fn converge_on(
    truth: &Truth,
    keys: &[String],
    rust: &[RustClient],
    ts: &mut [TsClient],
) -> Result<(), String> {
    let waiting = RefCell::new(Vec::new());
    // Locked across the awaits of one check; the checks never overlap.
    let ts = tokio::sync::Mutex::new(ts);
    let converged = poll(CONVERGE_WITHIN, || async {
        let mut ts = ts.lock().await;
        match not_converged(truth, keys, rust, &mut ts).await {
            Err(e) => Some(Err(e)),
            Ok(left) if left.is_empty() => Some(Ok(())),
            Ok(left) => {
                *waiting.borrow_mut() = left;
                None
            }
        }
    })
    .await;
    match converged {
        Ok(outcome) => outcome,
        Err(_) => {
            let waiting = waiting.into_inner();
            let mut msg = format!(
                "{} client(s) did not converge within {CONVERGE_WITHIN:?}:",
                waiting.len()
            );
            for (name, view, m) in waiting {
                let _ = write!(
                    msg,
                    "\n{name} ({}):\n  {}",
                    view.status,
                    m.iter().take(12).cloned().collect::<Vec<_>>().join("\n  ")
                );
            }
            Err(msg)
        }
    }
}

/// The clients whose cache does not equal `truth` yet, with their view and what
/// differs; an error for a client that broke a rule or failed.
async fn not_converged(
    truth: &Truth,
    keys: &[String],
    rust: &[RustClient],
    ts: &mut [TsClient],
) -> Result<Vec<(String, ClientView, Vec<String>)>, String> {
    let mut waiting = Vec::new();
    for c in rust {
        let view = c.view();
        if !view.violations.is_empty() || view.failed {
            return Err(format!("{}: {}", c.name, view.describe()));
        }
        let m = view.mismatches(truth, &c.prefixes, keys.iter());
        if !m.is_empty() {
            waiting.push((c.name.clone(), view, m));
        }
    }
    for c in ts.iter_mut() {
        let view = c.dump().await?.view;
        if !view.violations.is_empty() || view.failed {
            return Err(format!("{}: {}", c.name, view.describe()));
        }
        let m = view.mismatches(truth, &c.prefixes, keys.iter());
        if !m.is_empty() {
            waiting.push((c.name.clone(), view, m));
        }
    }
    Ok(waiting)
}

// ------------------------------------------------------------------ odds and ends

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

struct Stats {
    rounds: usize,
    writer: WriterStats,
    chaos: ChaosStats,
    converge: Vec<Duration>,
    clients: String,
}

impl Stats {
    fn summary(&self) -> String {
        let w = &self.writer;
        let c = &self.chaos;
        let max = self.converge.iter().max().copied().unwrap_or_default();
        let mean = self
            .converge
            .iter()
            .sum::<Duration>()
            .checked_div(u32::try_from(self.converge.len()).unwrap_or(u32::MAX))
            .unwrap_or_default();
        format!(
            "{} rounds; writes: {} creates, {} updates ({} same value), {} deletes, {} secret, \
             {} large; {} unanswered (then found applied: {}); chaos: {} SIGKILL, {} SIGTERM, \
             {} cuts ({} RST), {} freezes, {} hangs (every client back within {} ms); convergence \
             after writes stop: mean {} ms, max {} ms;{}\nunanswered write errors: {:?}",
            self.rounds,
            w.creates,
            w.updates,
            w.unchanged_values,
            w.deletes,
            w.secrets,
            w.large_values,
            w.uncertain,
            w.applied_unanswered,
            c.kills,
            c.terms,
            c.cuts,
            c.resets,
            c.freezes,
            c.hangs,
            c.slowest_unfreeze.as_millis(),
            mean.as_millis(),
            max.as_millis(),
            self.clients,
            w.errors,
        )
    }
}
