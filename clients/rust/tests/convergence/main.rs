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
//! The TypeScript driver must be built: `npm ci && npm run build` in
//! clients/typescript (tests/run does it before `cargo test`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use configwatch_client::proto::{self, config_service_client::ConfigServiceClient};
use configwatch_client::{Change, ChangeKind, Client, State};
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

use common::{TENANT, bin, fast_backoff};

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
    let dir = tempfile::tempdir().unwrap();
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

    let mut server = ServerProcess::new(dir.join("data"), dir.to_owned());
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

    let writer_token = mint_token(&server.data_dir, "writer", "24h").await?;
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
        let failed = |server: &ServerProcess, e: String| {
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
    for c in rust {
        c.client.close().await;
    }
    for c in ts {
        c.close().await?;
    }
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
    let deadline = Instant::now() + CONVERGE_WITHIN;
    loop {
        let mut waiting = Vec::new();
        for c in rust {
            let view = c.view();
            if !view.violations.is_empty() || view.failed {
                return Err(format!("{}: {}", c.name, view.describe()));
            }
            let m = view.mismatches(&truth, &c.prefixes, writer.keys());
            if !m.is_empty() {
                waiting.push((c.name.clone(), view, m));
            }
        }
        for c in ts.iter_mut() {
            let view = c.dump().await?.view;
            if !view.violations.is_empty() || view.failed {
                return Err(format!("{}: {}", c.name, view.describe()));
            }
            let m = view.mismatches(&truth, &c.prefixes, writer.keys());
            if !m.is_empty() {
                waiting.push((c.name.clone(), view, m));
            }
        }
        if waiting.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
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
            return Err(msg);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Nothing may have moved in the meantime: no writes happen now.
    let again = writer.truth().await?;
    if again != truth {
        return Err(format!(
            "the server's state changed with no writes: {truth:?} then {again:?}"
        ));
    }
    Ok(())
}

// ------------------------------------------------------------------ what is compared

/// What a cache holds for a key: its version and value (`None` for a secret).
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    version: u64,
    value: Option<Value>,
}

/// The last change event of a key.
#[derive(Debug, Clone, PartialEq)]
struct LastEvent {
    delete: bool,
    version: u64,
    /// `None` for deletes and secrets.
    value: Option<Value>,
}

/// One entry of the server's state (`Get` returns secrets' values too).
#[derive(Debug, Clone, PartialEq)]
struct TruthEntry {
    version: u64,
    value: Value,
    secret: bool,
}

type Truth = BTreeMap<String, TruthEntry>;

/// A client's cache, events and connection, in one shape for both languages.
struct ClientView {
    connected: bool,
    failed: bool,
    /// When the last message (change or progress) arrived.
    last_message: Option<SystemTime>,
    status: String,
    cache: BTreeMap<String, Seen>,
    last: BTreeMap<String, LastEvent>,
    violations: Vec<String>,
}

impl ClientView {
    /// Why this client does not (yet) hold the server's state; empty when it does.
    fn mismatches<'a>(
        &self,
        truth: &Truth,
        prefixes: &[String],
        written: impl Iterator<Item = &'a String>,
    ) -> Vec<String> {
        let mut out = Vec::new();
        if !self.connected {
            out.push("not connected".to_owned());
        }
        let expected: BTreeMap<&String, Seen> = truth
            .iter()
            .filter(|(k, _)| watched(prefixes, k))
            .map(|(k, t)| {
                let value = (!t.secret).then(|| t.value.clone());
                (
                    k,
                    Seen {
                        version: t.version,
                        value,
                    },
                )
            })
            .collect();
        let keys: BTreeSet<&String> = expected.keys().copied().chain(self.cache.keys()).collect();
        for k in keys {
            let (held, want) = (self.cache.get(k), expected.get(k));
            if held != want {
                out.push(format!("{k}: cache {held:?}, server {want:?}"));
            }
        }
        for (k, want) in &expected {
            let ok = self
                .last
                .get(*k)
                .is_some_and(|l| !l.delete && l.version == want.version && l.value == want.value);
            if !ok {
                out.push(format!(
                    "{k}: last change event {:?}, server {want:?}",
                    self.last.get(*k)
                ));
            }
        }
        for k in written.filter(|k| watched(prefixes, k) && !expected.contains_key(k)) {
            if let Some(l) = self.last.get(k)
                && !l.delete
            {
                out.push(format!(
                    "{k}: last change event {l:?}, but the key does not exist"
                ));
            }
        }
        out
    }

    fn describe(&self) -> String {
        if self.violations.is_empty() {
            format!("the watch stopped: {}", self.status)
        } else {
            format!(
                "inconsistent change events ({}):\n  {}",
                self.status,
                self.violations.join("\n  ")
            )
        }
    }
}

/// Checks each change against the ones before it for its key.
#[derive(Default)]
struct Recorder {
    last: BTreeMap<String, LastEvent>,
    violations: Vec<String>,
    changes: u64,
    ended: Option<String>,
}

impl Recorder {
    fn record(&mut self, c: &Change) {
        self.changes += 1;
        let before = self.last.get(&c.key);
        let live = before.filter(|l| !l.delete).map(|l| l.version);
        let delete = c.kind == ChangeKind::Delete;
        let mut problems = Vec::new();
        if c.previous_version != live {
            problems.push(format!(
                "previous_version {:?}, but the version last seen live is {live:?}",
                c.previous_version
            ));
        }
        if let Some(b) = before {
            if !delete && c.version <= b.version {
                problems.push(format!(
                    "a set at version {} after version {}",
                    c.version, b.version
                ));
            }
            if delete && c.version < b.version {
                problems.push(format!(
                    "a delete at version {} after version {}",
                    c.version, b.version
                ));
            }
        }
        // A stream coalesces a re-create and its delete into one delete, so only an
        // uncoalesced delete must follow a live version.
        if delete && live.is_none() && c.coalesced == 0 {
            problems.push("a delete of a key that was not live".into());
        }
        for p in problems {
            if self.violations.len() < 50 {
                self.violations
                    .push(format!("{} ({:?}): {p}", c.key, c.cause));
            }
        }
        let value = c.raw_value().map(parse_or_marker);
        self.last.insert(
            c.key.clone(),
            LastEvent {
                delete,
                version: c.version,
                value,
            },
        );
    }
}

fn parse_or_marker(raw: &str) -> Value {
    serde_json::from_str(raw)
        .unwrap_or_else(|e| json!({ "<not JSON>": raw, "error": e.to_string() }))
}

// ------------------------------------------------------------------ Rust clients

struct RustClient {
    name: String,
    prefixes: Vec<String>,
    client: Client,
    recorder: Arc<Mutex<Recorder>>,
    _task: AbortOnDrop,
}

impl RustClient {
    async fn start(
        name: String,
        url: &str,
        token_file: &Path,
        prefixes: Vec<String>,
    ) -> Result<RustClient, String> {
        let file = token_file.to_owned();
        let tokens = move || {
            let file = file.clone();
            async move {
                tokio::fs::read_to_string(&file)
                    .await
                    .map(|t| t.trim().to_owned())
            }
        };
        let client = Client::builder(url, TENANT, tokens)
            .prefixes(prefixes.clone())
            .backoff(fast_backoff())
            .idle_timeout(IDLE_TIMEOUT)
            .start()
            .await
            .map_err(|e| format!("{name}: {e}"))?;
        let recorder = Arc::new(Mutex::new(Recorder::default()));
        let mut changes = client.changes();
        let task = {
            let recorder = recorder.clone();
            tokio::spawn(async move {
                while let Some(item) = changes.next().await {
                    let mut r = recorder.lock().unwrap();
                    match item {
                        Ok(c) => r.record(&c),
                        Err(e) => r.ended = Some(e.to_string()),
                    }
                }
            })
        };
        Ok(RustClient {
            name,
            prefixes,
            client,
            recorder,
            _task: AbortOnDrop(task),
        })
    }

    fn view(&self) -> ClientView {
        let status = self.client.status();
        let cache = self
            .client
            .entries()
            .into_iter()
            .map(|e| {
                let value = if e.secret {
                    None
                } else {
                    Some(e.raw_value().map_or(Value::Null, parse_or_marker))
                };
                (
                    e.key.clone(),
                    Seen {
                        version: e.version,
                        value,
                    },
                )
            })
            .collect();
        let r = self.recorder.lock().unwrap();
        ClientView {
            connected: status.connected,
            failed: matches!(status.state, State::Failed | State::Closed) || r.ended.is_some(),
            last_message: status.last_message_at,
            status: format!(
                "state {:?}, revision {}, syncs {}, last error {:?}, change stream {:?}",
                status.state,
                status.revision,
                status.syncs,
                status.last_error.map(|e| e.to_string()),
                r.ended
            ),
            cache,
            last: r.last.clone(),
            violations: r.violations.clone(),
        }
    }
}

// ------------------------------------------------------------------ TypeScript clients

struct TsClient {
    name: String,
    prefixes: Vec<String>,
    child: Child,
    stdin: ChildStdin,
    stdout: tokio::io::Lines<BufReader<ChildStdout>>,
    next_id: u64,
    log: PathBuf,
}

struct TsDump {
    view: ClientView,
    counts: Value,
}

impl TsClient {
    async fn start(
        driver: &Driver,
        name: String,
        url: &str,
        token_file: &Path,
        prefixes: Vec<String>,
        log: &Path,
    ) -> Result<TsClient, String> {
        let stderr = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut cmd = Command::new(&driver.node);
        cmd.arg(&driver.script)
            .args(["--address", url, "--tenant", TENANT, "--token-file"])
            .arg(token_file)
            .args(["--idle-timeout-ms", &IDLE_TIMEOUT.as_millis().to_string()])
            .args(["--backoff-initial-ms", "50", "--backoff-max-ms", "500"]);
        for p in &prefixes {
            cmd.args(["--prefix", p]);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("{name}: cannot start {}: {e}", driver.node))?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
        let mut c = TsClient {
            name,
            prefixes,
            child,
            stdin,
            stdout,
            next_id: 0,
            log: log.to_owned(),
        };
        let first = c.read_line(Duration::from_secs(20)).await?;
        if first.get("type").and_then(Value::as_str) != Some("started") {
            return Err(format!("{}: unexpected first line {first}", c.name));
        }
        Ok(c)
    }

    async fn read_line(&mut self, within: Duration) -> Result<Value, String> {
        let line = tokio::time::timeout(within, self.stdout.next_line())
            .await
            .map_err(|_| {
                format!(
                    "{}: no answer within {within:?}{}",
                    self.name,
                    self.log_tail()
                )
            })?
            .map_err(|e| format!("{}: {e}", self.name))?
            .ok_or_else(|| format!("{}: the driver exited{}", self.name, self.log_tail()))?;
        serde_json::from_str(&line).map_err(|e| format!("{}: {e} in {line:?}", self.name))
    }

    fn log_tail(&self) -> String {
        format!(
            "\n--- {} ---\n{}",
            self.log.display(),
            tail(&std::fs::read_to_string(&self.log).unwrap_or_default(), 30)
        )
    }

    async fn request(&mut self, cmd: &str) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        let line = format!("{}\n", json!({ "id": id, "cmd": cmd }));
        self.stdin
            .write_all(line.as_bytes())
            .await
            .map_err(|e| format!("{}: {e}{}", self.name, self.log_tail()))?;
        self.stdin
            .flush()
            .await
            .map_err(|e| format!("{}: {e}", self.name))?;
        loop {
            let reply = self.read_line(Duration::from_secs(10)).await?;
            if reply.get("id").and_then(Value::as_u64) != Some(id) {
                continue;
            }
            if reply.get("type").and_then(Value::as_str) == Some("error") {
                return Err(format!("{}: {cmd}: {reply}", self.name));
            }
            return Ok(reply);
        }
    }

    async fn dump(&mut self) -> Result<TsDump, String> {
        let d = self.request("dump").await?;
        let bad = |what: &str| format!("{}: malformed dump ({what}): {d}", self.name);
        let status = d.get("status").ok_or_else(|| bad("status"))?;
        let mut cache = BTreeMap::new();
        for (k, e) in d["entries"].as_object().ok_or_else(|| bad("entries"))? {
            let version = e["version"].as_u64().ok_or_else(|| bad("version"))?;
            let value = if e["secret"] == json!(true) {
                None
            } else if let Some(err) = e.get("decodeError") {
                Some(json!({ "<not JSON>": err }))
            } else {
                // A value JSON cannot carry (undefined) shows as a marker, never as null.
                Some(e.get("value").cloned().unwrap_or(json!("<undefined>")))
            };
            cache.insert(k.clone(), Seen { version, value });
        }
        let mut last = BTreeMap::new();
        for (k, e) in d["last"].as_object().ok_or_else(|| bad("last"))? {
            let version = e["version"].as_u64().ok_or_else(|| bad("last version"))?;
            let delete = e["type"] == json!("delete");
            let value = if delete || e["secret"] == json!(true) {
                None
            } else {
                Some(e.get("value").cloned().unwrap_or(json!("<undefined>")))
            };
            last.insert(
                k.clone(),
                LastEvent {
                    delete,
                    version,
                    value,
                },
            );
        }
        let violations = d["violations"]
            .as_array()
            .ok_or_else(|| bad("violations"))?
            .iter()
            .map(|v| v.as_str().unwrap_or_default().to_owned())
            .collect();
        let state = status["state"].as_str().unwrap_or_default();
        Ok(TsDump {
            view: ClientView {
                connected: status["connected"] == json!(true),
                failed: matches!(state, "failed" | "closed"),
                last_message: status["lastMessageAt"]
                    .as_u64()
                    .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms)),
                status: status.to_string(),
                cache,
                last,
                violations,
            },
            counts: d["counts"].clone(),
        })
    }

    async fn close(mut self) -> Result<(), String> {
        self.request("close").await?;
        let exit = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .map_err(|_| format!("{}: did not exit after close", self.name))?
            .map_err(|e| e.to_string())?;
        if exit.success() {
            Ok(())
        } else {
            Err(format!(
                "{}: exited with {exit}{}",
                self.name,
                self.log_tail()
            ))
        }
    }
}

// ------------------------------------------------------------------ the writer

/// One key as the writer knows it from acknowledged writes.
#[derive(Debug, Clone, Default)]
struct Record {
    /// The last version written, a tombstone's included (0: never written).
    version: u64,
    /// The value and whether it is a secret; `None` when deleted or never written.
    live: Option<(Value, bool)>,
}

#[derive(Debug, Clone)]
enum Op {
    Put { value: Value, secret: bool },
    Delete,
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Delete => f.write_str("delete"),
            Op::Put { value, secret } => {
                let text = value.to_string();
                let short: String = text.chars().take(120).collect();
                let more = if short.len() < text.len() { "..." } else { "" };
                let kind = if *secret { "put (secret)" } else { "put" };
                write!(f, "{kind} {short}{more}")
            }
        }
    }
}

#[derive(Debug, Default)]
struct WriterStats {
    creates: u64,
    updates: u64,
    deletes: u64,
    secrets: u64,
    unchanged_values: u64,
    large_values: u64,
    /// Writes whose first attempt ended without an answer (server killed, ...).
    uncertain: u64,
    /// ... of which the first attempt had been applied (found by compare-and-set).
    applied_unanswered: u64,
    errors: BTreeMap<String, u64>,
}

struct Writer {
    server: watch::Receiver<SocketAddr>,
    rpc: Option<(SocketAddr, ConfigServiceClient<Channel>)>,
    header: MetadataValue<Ascii>,
    keys: Vec<String>,
    record: BTreeMap<String, Record>,
    seq: u64,
    stats: WriterStats,
}

/// Codes that leave a write's outcome unknown: it may or may not have been applied.
fn uncertain(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Unknown
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Internal
    )
}

impl Writer {
    fn new(server: watch::Receiver<SocketAddr>, token: &str, keys: &[String]) -> Writer {
        Writer {
            server,
            rpc: None,
            header: format!("Bearer {token}").parse().unwrap(),
            keys: keys.to_vec(),
            record: BTreeMap::new(),
            seq: 0,
            stats: WriterStats::default(),
        }
    }

    fn keys(&self) -> impl Iterator<Item = &String> {
        self.record.keys()
    }

    /// A client of the current server (writes go straight to it, not through the
    /// proxy).
    fn rpc(&mut self) -> ConfigServiceClient<Channel> {
        let addr = *self.server.borrow();
        if let Some((a, c)) = &self.rpc
            && *a == addr
        {
            return c.clone();
        }
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(1))
            .connect_lazy();
        let c = ConfigServiceClient::new(channel);
        self.rpc = Some((addr, c.clone()));
        c
    }

    fn request<T>(&self, body: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(body);
        r.metadata_mut()
            .insert("authorization", self.header.clone());
        r.set_timeout(Duration::from_secs(5));
        r
    }

    async fn round(
        &mut self,
        rng: &mut StdRng,
        writes: usize,
        progress: &watch::Sender<usize>,
    ) -> Result<(), String> {
        for n in 0..writes {
            let key = self.keys[rng.random_range(0..self.keys.len())].clone();
            let op = self.choose(rng, &key);
            self.write(&key, op).await?;
            progress.send_replace(n + 1);
            // Workload shape, not synchronization: writes come in bursts and trickles.
            let pause = rng.random_range(0..6u64);
            if pause > 0 {
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        }
        Ok(())
    }

    fn choose(&mut self, rng: &mut StdRng, key: &str) -> Op {
        self.seq += 1;
        let rec = self.record.get(key).cloned().unwrap_or_default();
        if let Some((value, secret)) = &rec.live {
            if rng.random_bool(0.25) {
                self.stats.deletes += 1;
                return Op::Delete;
            }
            self.stats.updates += 1;
            if rng.random_bool(0.05) {
                // The same value again: only the version changes.
                self.stats.unchanged_values += 1;
                return Op::Put {
                    value: value.clone(),
                    secret: *secret,
                };
            }
        } else {
            self.stats.creates += 1;
        }
        if key.starts_with("param_config_") {
            let secret = rng.random_bool(0.2);
            let value = if secret || rng.random_bool(0.6) {
                Value::String(random_text(rng, 1, 40, true))
            } else {
                let n = rng.random_range(1..5);
                Value::Array(
                    (0..n)
                        .map(|_| Value::String(random_text(rng, 1, 20, true)))
                        .collect(),
                )
            };
            if secret {
                self.stats.secrets += 1;
            }
            Op::Put { value, secret }
        } else {
            let mut value = json!({ "seq": self.seq, "data": random_json(rng, 3) });
            if rng.random_bool(0.03) {
                // Large values make initial states span several messages.
                self.stats.large_values += 1;
                let len = rng.random_range(20_000..60_000);
                value["blob"] = Value::String(random_text(rng, len, len + 1, false));
            }
            Op::Put {
                value,
                secret: false,
            }
        }
    }

    /// Writes with compare-and-set on the recorded version; retries a write whose
    /// outcome is unknown until the server answers, and tells from the answer
    /// whether the first attempt had been applied.
    async fn write(&mut self, key: &str, op: Op) -> Result<(), String> {
        let before = self.record.get(key).cloned().unwrap_or_default();
        let expected = match (&op, &before.live) {
            (_, Some(_)) => before.version,
            (Op::Put { .. }, None) => 0,
            (Op::Delete, None) => return Err(format!("test bug: delete of {key}, not live")),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut unanswered = false;
        loop {
            let mut rpc = self.rpc();
            let answer = match &op {
                Op::Put { value, secret } => {
                    let r = self.request(proto::PutRequest {
                        key: key.into(),
                        value: value.to_string(),
                        expected_version: Some(expected),
                        secret: *secret,
                        tenant: String::new(),
                    });
                    tokio::time::timeout(Duration::from_secs(6), rpc.put(r))
                        .await
                        .map(|r| r.map(|r| r.into_inner().entry))
                }
                Op::Delete => {
                    let r = self.request(proto::DeleteRequest {
                        key: key.into(),
                        expected_version: Some(expected),
                        tenant: String::new(),
                    });
                    tokio::time::timeout(Duration::from_secs(6), rpc.delete(r))
                        .await
                        .map(|r| r.map(|r| r.into_inner().entry))
                }
            };
            let status = match answer {
                Ok(Ok(Some(entry))) => {
                    let want = before.version + 1;
                    let deleted = matches!(op, Op::Delete);
                    if entry.version != want || entry.deleted != deleted {
                        return Err(format!(
                            "{key}: {op} on version {} was answered with version {} (deleted \
                             {}); versions must continue the key's sequence",
                            before.version, entry.version, entry.deleted
                        ));
                    }
                    self.commit(key, op, want);
                    return Ok(());
                }
                Ok(Ok(None)) => return Err(format!("{key}: a write answered without entry")),
                Ok(Err(status)) => status,
                Err(_) => Status::deadline_exceeded("no answer within 6 s"),
            };
            let code = status.code();
            if unanswered && matches!(code, Code::FailedPrecondition | Code::NotFound) {
                return self.resolve(key, op, &before, &status).await;
            }
            if !uncertain(code) {
                return Err(format!(
                    "{key}: {op} with expected version {expected} refused: {status:?}"
                ));
            }
            *self
                .stats
                .errors
                .entry(format!("{code:?}: {}", status.message()))
                .or_default() += 1;
            if !unanswered {
                self.stats.uncertain += 1;
            }
            if Instant::now() >= deadline {
                return Err(format!("{key}: no answer to {op} within 30 s: {status:?}"));
            }
            unanswered = true;
            // The server may be restarting: try again shortly.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A retry was refused by compare-and-set: the unanswered attempt must have been
    /// applied, exactly as sent.
    async fn resolve(
        &mut self,
        key: &str,
        op: Op,
        before: &Record,
        status: &Status,
    ) -> Result<(), String> {
        let current: Option<u64> = status
            .metadata()
            .get("configwatch-current-version")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let want = before.version + 1;
        let held = self.read(key).await?;
        let applied = match (&op, &held) {
            (Op::Put { value, secret }, Some(e)) => {
                current.is_none_or(|c| c == want)
                    && e.version == want
                    && e.value == *value
                    && e.secret == *secret
            }
            (Op::Delete, None) => current.is_none_or(|c| c == 0),
            _ => false,
        };
        if !applied {
            return Err(format!(
                "{key}: after an unanswered {op} on version {}, the retry was refused \
                 ({status:?}) but the server holds {held:?}: the write is neither applied nor \
                 refusable",
                before.version
            ));
        }
        self.stats.applied_unanswered += 1;
        self.commit(key, op, want);
        Ok(())
    }

    fn commit(&mut self, key: &str, op: Op, version: u64) {
        let rec = self.record.entry(key.to_owned()).or_default();
        rec.version = version;
        rec.live = match op {
            Op::Put { value, secret } => Some((value, secret)),
            Op::Delete => None,
        };
    }

    /// One key from the server, retried while the server is unreachable.
    async fn read(&mut self, key: &str) -> Result<Option<TruthEntry>, String> {
        let mut r = self
            .get(proto::GetRequest {
                keys: vec![key.to_owned()],
                prefixes: Vec::new(),
                tenant: String::new(),
                ..Default::default()
            })
            .await?;
        Ok(r.remove(key))
    }

    /// The whole tenant as the server holds it.
    async fn truth(&mut self) -> Result<Truth, String> {
        self.get(proto::GetRequest::default()).await
    }

    async fn get(&mut self, body: proto::GetRequest) -> Result<Truth, String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut rpc = self.rpc();
            let r = self.request(body.clone());
            let status = match tokio::time::timeout(Duration::from_secs(6), rpc.get(r)).await {
                Ok(Ok(r)) => {
                    let mut out = Truth::new();
                    // A tombstone, should one come, is a key that does not exist.
                    for e in r.into_inner().entries.into_iter().filter(|e| !e.deleted) {
                        let value = serde_json::from_str(&e.value).map_err(|err| {
                            format!("{}: the server's value {:?}: {err}", e.key, e.value)
                        })?;
                        out.insert(
                            e.key,
                            TruthEntry {
                                version: e.version,
                                value,
                                secret: e.secret,
                            },
                        );
                    }
                    return Ok(out);
                }
                Ok(Err(s)) => s,
                Err(_) => Status::deadline_exceeded("no answer within 6 s"),
            };
            if !uncertain(status.code()) || Instant::now() >= deadline {
                return Err(format!("Get: {status:?}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Where the server's state differs from the acknowledged writes.
    fn compare_record(&self, truth: &Truth) -> Vec<String> {
        let mut out = Vec::new();
        for (k, rec) in &self.record {
            match (&rec.live, truth.get(k)) {
                (Some((value, secret)), Some(t)) => {
                    if t.version != rec.version || t.value != *value || t.secret != *secret {
                        out.push(format!(
                            "{k}: written version {} {value} (secret {secret}), server {t:?}",
                            rec.version
                        ));
                    }
                }
                (Some((value, _)), None) => out.push(format!(
                    "{k}: version {} {value} was acknowledged, the server does not have it",
                    rec.version
                )),
                (None, Some(t)) => out.push(format!(
                    "{k}: deleted at version {}, the server has {t:?}",
                    rec.version
                )),
                (None, None) => {}
            }
        }
        for (k, t) in truth {
            if !self.record.contains_key(k) {
                out.push(format!("{k}: never written, the server has {t:?}"));
            }
        }
        out
    }
}

/// Random JSON that reads back the same in Rust and JavaScript: integers well
/// within 2^53, floats with a short exact form and a fraction, strings with escapes
/// and non-ASCII text.
fn random_json(rng: &mut StdRng, depth: u32) -> Value {
    let pick = if depth == 0 {
        rng.random_range(0..6)
    } else {
        rng.random_range(0..9)
    };
    match pick {
        0 => Value::Null,
        1 => Value::Bool(rng.random()),
        2 => json!(rng.random_range(-1_000_000i64..1_000_000)),
        3 => {
            let whole = rng.random_range(-1000i32..1000);
            let fraction = [0.25, 0.5, 0.75][rng.random_range(0..3)];
            json!(f64::from(whole) + fraction)
        }
        4 | 5 => Value::String(random_text(rng, 0, 24, false)),
        6 => Value::Array(
            (0..rng.random_range(0..4))
                .map(|_| random_json(rng, depth - 1))
                .collect(),
        ),
        _ => Value::Object(
            (0..rng.random_range(0..5))
                .map(|i| {
                    (
                        format!("{}{i}", random_text(rng, 1, 6, true)),
                        random_json(rng, depth - 1),
                    )
                })
                .collect(),
        ),
    }
}

fn random_text(rng: &mut StdRng, min: usize, max: usize, no_commas: bool) -> String {
    const ALPHABET: &[char] = &[
        'a', 'b', 'c', 'x', 'y', 'z', 'A', 'Q', '0', '7', ' ', '-', '_', '.', '/', ':', '"', '\\',
        '\n', '\t', '{', '}', 'é', 'ß', 'Ω', 'ж', '日', '本', '🙂', '🚀', ',',
    ];
    let len = rng.random_range(min..max.max(min + 1));
    let choices = if no_commas {
        &ALPHABET[..ALPHABET.len() - 1]
    } else {
        ALPHABET
    };
    (0..len)
        .map(|_| choices[rng.random_range(0..choices.len())])
        .collect()
}

// ------------------------------------------------------------------ chaos

#[derive(Debug, Clone, Copy)]
enum Disruption {
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
fn freeze(rng: &mut StdRng) -> Disruption {
    if rng.random_bool(0.5) {
        Disruption::Freeze
    } else {
        Disruption::Hang(Duration::from_millis(rng.random_range(200..1500)))
    }
}

#[derive(Debug)]
struct Planned {
    /// After this many writes were acknowledged (== writes: after the last one).
    after: usize,
    /// Then this much later, so that it often lands in the middle of a write.
    delay: Duration,
    chaos: Disruption,
}

/// Round `round`'s disruptions, at random points of its writes: one featured kind in
/// turn (so that every kind happens in any four rounds), and random others.
fn plan_round(rng: &mut StdRng, round: usize, writes: usize) -> Vec<Planned> {
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
struct ChaosStats {
    kills: u64,
    terms: u64,
    cuts: u64,
    resets: u64,
    freezes: u64,
    hangs: u64,
    /// The longest time from a freeze (the end of its blackhole) until every client
    /// heard from the server again.
    slowest_unfreeze: Duration,
}

struct Chaos {
    server: ServerProcess,
    proxy: Proxy,
    server_addr: watch::Sender<SocketAddr>,
    stats: ChaosStats,
}

impl Chaos {
    async fn round(
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

    async fn restart(&mut self, rng: &mut StdRng) -> Result<(), String> {
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

// ------------------------------------------------------------------ the server

/// The configwatch server, started on port 0 each time, on one data directory.
struct ServerProcess {
    data_dir: PathBuf,
    logs: PathBuf,
    child: Option<Child>,
    /// Kept open: the server may print more, and a closed pipe would fail it.
    stdout: Option<tokio::io::Lines<BufReader<ChildStdout>>>,
    starts: u32,
}

impl ServerProcess {
    fn new(data_dir: PathBuf, logs: PathBuf) -> ServerProcess {
        ServerProcess {
            data_dir,
            logs,
            child: None,
            stdout: None,
            starts: 0,
        }
    }

    fn log(&self) -> PathBuf {
        self.logs.join(format!("server-{}.log", self.starts))
    }

    fn log_tail(&self, lines: usize) -> String {
        format!(
            "{}:\n{}",
            self.log().display(),
            tail(
                &std::fs::read_to_string(self.log()).unwrap_or_default(),
                lines
            )
        )
    }

    async fn start(&mut self, history: usize) -> Result<SocketAddr, String> {
        self.starts += 1;
        let log = std::fs::File::create(self.log()).map_err(|e| e.to_string())?;
        let mut child = Command::new(bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&self.data_dir)
            .args(["--progress-interval", "500ms", "--shutdown-grace", "2s"])
            .args(["--history", &history.to_string()])
            .env("CONFIGWATCH_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin().display()))?;
        let mut lines = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .map_err(|_| {
                format!(
                    "the server did not listen within 20 s\n{}",
                    self.log_tail(30)
                )
            })?
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("the server exited before listening\n{}", self.log_tail(30)))?;
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| format!("unexpected first line {line:?}"))?;
        self.child = Some(child);
        self.stdout = Some(lines);
        Ok(addr)
    }

    /// SIGKILL, and wait until the process is gone.
    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
        self.stdout = None;
    }

    /// SIGTERM, and wait for a clean exit.
    async fn terminate(&mut self) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = child.id().ok_or("the server already exited")?.to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .map_err(|e| format!("kill -TERM: {e}"))?;
        if !sent.success() {
            return Err(format!("kill -TERM {pid}: {sent}"));
        }
        let exit = tokio::time::timeout(Duration::from_secs(20), child.wait())
            .await
            .map_err(|_| "the server did not exit within 20 s of SIGTERM".to_owned())?
            .map_err(|e| e.to_string())?;
        self.stdout = None;
        if exit.success() {
            Ok(())
        } else {
            Err(format!(
                "the server exited with {exit} on SIGTERM\n{}",
                self.log_tail(30)
            ))
        }
    }
}

/// Waits until every client has had a message from the server after `at` (plus a
/// margin for bytes already on their way), which over a frozen connection cannot
/// happen: the server sends progress every 500 ms on a live one.
async fn heard_from_after(
    at: SystemTime,
    rust: &[RustClient],
    ts: &mut [TsClient],
) -> Result<(), String> {
    let after = at + Duration::from_millis(250);
    // A client may have moved to a connection frozen at birth just before the hang
    // ended, and give up on that one too: twice the idle timeout, and some slack for a
    // loaded machine. (Without noticing, a client would wait for HTTP/2 keepalive,
    // 40 s, or forever.)
    let within = IDLE_TIMEOUT * 2 + Duration::from_secs(5);
    let deadline = Instant::now() + within;
    loop {
        let mut silent = Vec::new();
        for c in rust {
            let v = c.view();
            if v.last_message.is_none_or(|t| t < after) {
                silent.push(format!("{} ({})", c.name, v.status));
            }
        }
        for c in ts.iter_mut() {
            let v = c.dump().await?.view;
            if v.last_message.is_none_or(|t| t < after) {
                silent.push(format!("{} ({})", c.name, v.status));
            }
        }
        if silent.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "their connections frozen (half-open, or accepted then silent), these clients \
                 heard nothing from the server for {within:?}, though their idle timeout is \
                 {IDLE_TIMEOUT:?} and new connections work:\n  {}",
                silent.join("\n  ")
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn mint_token(data_dir: &Path, role: &str, ttl: &str) -> Result<String, String> {
    let out = Command::new(bin())
        .args(["token", "--tenant", TENANT, "--role", role, "--ttl", ttl])
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .await
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("configwatch token: {out:?}"));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Replaces the token file atomically (a reader never sees half a token).
async fn refresh_token(data_dir: &Path, file: &Path) -> Result<(), String> {
    let token = mint_token(data_dir, "reader", READER_TTL).await?;
    let tmp = file.with_extension("tmp");
    tokio::fs::write(&tmp, token)
        .await
        .map_err(|e| e.to_string())?;
    tokio::fs::rename(&tmp, file)
        .await
        .map_err(|e| e.to_string())
}

// ------------------------------------------------------------------ the proxy

/// What the proxy does to the connections it holds, by connection number: those
/// below `cut_below` are closed; those below `freeze_below`, and from
/// `blackhole_from` on, forward nothing.
#[derive(Debug, Clone, Copy, Default)]
struct Control {
    cut_below: u64,
    reset: bool,
    freeze_below: u64,
    blackhole_from: Option<u64>,
}

impl Control {
    fn frozen(&self, id: u64) -> bool {
        id < self.freeze_below || self.blackhole_from.is_some_and(|from| id >= from)
    }
}

/// A TCP proxy on 127.0.0.1 port 0 in front of the current server: the clients'
/// one address across restarts, and the test's way to break connections.
struct Proxy {
    addr: SocketAddr,
    upstream: watch::Sender<SocketAddr>,
    control: watch::Sender<Control>,
    opened: Arc<AtomicU64>,
    _accept: AbortOnDrop,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (upstream, upstream_rx) = watch::channel(upstream);
        let (control, control_rx) = watch::channel(Control::default());
        let opened = Arc::new(AtomicU64::new(0));
        let accept = {
            let opened = opened.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((socket, _)) = listener.accept().await else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    let id = opened.fetch_add(1, Ordering::SeqCst);
                    let to = *upstream_rx.borrow();
                    tokio::spawn(pipe(id, socket, to, control_rx.clone()));
                }
            })
        };
        Ok(Proxy {
            addr,
            upstream,
            control,
            opened,
            _accept: AbortOnDrop(accept),
        })
    }

    /// New connections go to `addr`.
    fn retarget(&self, addr: SocketAddr) {
        self.upstream.send_replace(addr);
    }

    fn opened(&self) -> u64 {
        self.opened.load(Ordering::SeqCst)
    }

    /// Closes every connection open now.
    fn cut(&self, reset: bool) {
        self.cut_below(self.opened(), reset);
    }

    fn cut_below(&self, below: u64, reset: bool) {
        self.control.send_modify(|c| {
            c.cut_below = c.cut_below.max(below);
            c.reset = reset;
        });
    }

    /// Freezes every connection open now and, with `blackhole`, every new one until
    /// [`end_blackhole`](Self::end_blackhole).
    fn freeze(&self, blackhole: bool) {
        let below = self.opened();
        self.control.send_modify(|c| {
            c.freeze_below = c.freeze_below.max(below);
            c.blackhole_from = blackhole.then_some(below);
        });
    }

    /// New connections work again (the frozen ones stay frozen); returns the first
    /// number not frozen.
    fn end_blackhole(&self) -> u64 {
        let below = self.opened();
        self.control.send_modify(|c| {
            c.freeze_below = c.freeze_below.max(below);
            c.blackhole_from = None;
        });
        below
    }
}

async fn pipe(
    id: u64,
    mut client: TcpStream,
    upstream: SocketAddr,
    mut control: watch::Receiver<Control>,
) {
    // A server that is down: the client sees its connection closed at once.
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let reset = {
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        let (up, down) = (control.clone(), control.clone());
        tokio::select! {
            c = control.wait_for(|c| c.cut_below > id) => c.map(|c| c.reset).unwrap_or(false),
            _ = forward(id, client_read, server_write, up) => false,
            _ = forward(id, server_read, client_write, down) => false,
        }
    };
    if reset {
        let _ = client.set_zero_linger();
        let _ = server.set_zero_linger();
    }
}

/// Copies until EOF or an error, holding still while the connection is frozen.
async fn forward(
    id: u64,
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    mut control: watch::Receiver<Control>,
) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        if control.wait_for(|c| !c.frozen(id)).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if control.wait_for(|c| !c.frozen(id)).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
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
