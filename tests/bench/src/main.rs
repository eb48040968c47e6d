//! configwatch-bench: drives the same workloads against configwatch and against etcd,
//! in the same run, and prints a table and one summary line with the ratio.
//!
//! Both servers are started by the benchmark itself on 127.0.0.1 with temporary data
//! directories: configwatch from the binary beside this one, etcd from `etcd` on the
//! PATH (Debian's etcd-server). Workloads:
//!
//! - `fanout` (W1): N watchers over M connections, one prefix each, spread over
//!   tenants; a writer makes K changes, one at a time; latency from the write being
//!   sent to each watcher receiving it. etcd runs with one watch stream per watcher
//!   and with all watches of a connection multiplexed on one stream.
//! - `get` (W2): C concurrent clients reading existing keys (etcd: serializable
//!   range reads).
//! - `memory` (W3): server RSS per idle watch stream.
//! - `reconnect` (W4): N watchers hold a cache; the server is restarted (SIGTERM,
//!   same data directory and port) and they resume as a client library does
//!   (configwatch: resume token and known versions; etcd: a watch from the next
//!   revision), then once more with a full resend (configwatch: neither; etcd: a
//!   range read and a watch). Time from the SIGTERM until all have converged, and
//!   the bytes on the wire, counted by a TCP relay in front of the server.
//! - `slow` (W5): 10% of the watchers never read (their windows fill); the others'
//!   latency and the server's RSS, against the same run without them.
//!
//! All load goes to 127.0.0.1; every loop is bounded in count and time.

use std::collections::HashMap;
use std::ffi::OsString;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use configwatch::api::status::{RESUME_METADATA, RESUME_WITH_VERSIONS};
use configwatch::auth::Role;
use configwatch::auth::local::LocalKey;
use configwatch::hub::StateDigest;
use configwatch::model::Scope;
use configwatch::proto::config_service_client::ConfigServiceClient;
use configwatch::proto::{self as cw, watch_response::Kind};
use tokio::sync::mpsc;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

mod etcd {
    #![allow(clippy::all)]
    tonic::include_proto!("etcdserverpb");
}

#[derive(Parser)]
#[command(
    name = "configwatch-bench",
    about = "configwatch against etcd, same workloads, same run"
)]
struct Cli {
    #[command(subcommand)]
    workload: Workload,
    /// The peer to measure beside configwatch.
    #[arg(long, global = true, default_value = "etcd")]
    peer: Peer,
    /// The configwatch binary (default: the one beside this binary).
    #[arg(long, global = true)]
    configwatch_bin: Option<PathBuf>,
    /// The etcd binary.
    #[arg(long, global = true, default_value = "etcd")]
    etcd_bin: PathBuf,
    /// A shell command run just before W1's measured changes with arguments
    /// `start PID` and just after them with `stop PID` (PID: the server's), for
    /// profiling exactly the fan-out, e.g. `callgrind_control -i on "$2"`.
    #[arg(long, global = true)]
    around_changes: Option<String>,
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

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Peer {
    Etcd,
    None,
}

#[derive(Subcommand)]
enum Workload {
    /// W1: fan-out latency.
    Fanout(FanoutArgs),
    /// W2: Get throughput.
    Get(GetArgs),
    /// W3: memory per idle watch stream.
    Memory(MemoryArgs),
    /// W4: reconnect storm after a server restart.
    Reconnect(ReconnectArgs),
    /// W5: slow consumers beside reading ones.
    Slow(SlowArgs),
}

#[derive(Args, Clone)]
struct FanoutArgs {
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    #[arg(long, default_value_t = 100)]
    connections: usize,
    /// Tenants the watchers spread over (default: one per 100 watchers).
    #[arg(long)]
    tenants: Option<usize>,
    /// Changes the writer makes, one at a time.
    #[arg(long, default_value_t = 20)]
    changes: usize,
    /// Longest wait for one change to reach all its watchers.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

#[derive(Args, Clone)]
struct GetArgs {
    #[arg(long, default_value_t = 64)]
    clients: usize,
    #[arg(long, default_value_t = 8)]
    connections: usize,
    #[arg(long, default_value_t = 1000)]
    keys: usize,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
}

#[derive(Args, Clone)]
struct MemoryArgs {
    #[arg(long, default_value_t = 10_000)]
    watchers: usize,
    #[arg(long, default_value_t = 100)]
    connections: usize,
}

// ---------------------------------------------------------------- processes

/// What a [`Server`] runs, so it can be restarted the same way.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ServerKind {
    Configwatch,
    Etcd,
}

/// A server process with its temporary data directory.
struct Server {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
    kind: ServerKind,
    program: PathBuf,
    args: Vec<OsString>,
}

impl Server {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()));
        status
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0)
    }

    /// CPU time used so far (user + system).
    fn cpu(&self) -> Duration {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // Fields after the command name, which is in parentheses.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        // utime and stime are fields 14 and 15 of /proc/PID/stat (1-based).
        let total = ticks(11) + ticks(12);
        Duration::from_millis(total * 1000 / clock_ticks())
    }

    fn spawn(kind: ServerKind, program: &Path, args: &[OsString]) -> Result<Child> {
        let stdout = match kind {
            ServerKind::Configwatch => Stdio::piped(),
            ServerKind::Etcd => Stdio::null(),
        };
        let stderr = match kind {
            ServerKind::Configwatch => Stdio::inherit(),
            ServerKind::Etcd => Stdio::null(),
        };
        Command::new(program)
            .args(args)
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| match kind {
                ServerKind::Configwatch => format!("starting {}", program.display()),
                ServerKind::Etcd => format!(
                    "starting {} (apt-get install etcd-server)",
                    program.display()
                ),
            })
    }

    /// Waits until the server answers: configwatch prints its address, etcd
    /// answers a range read. Returns the address configwatch printed.
    async fn wait_ready(&mut self) -> Result<SocketAddr> {
        match self.kind {
            ServerKind::Configwatch => {
                use std::io::{BufRead, BufReader};
                let stdout = self
                    .child
                    .stdout
                    .take()
                    .ok_or_else(|| anyhow!("no stdout"))?;
                // A blocking read, off the runtime's workers (watchers keep running).
                let line = tokio::task::spawn_blocking(move || {
                    let mut line = String::new();
                    BufReader::new(stdout).read_line(&mut line).map(|_| line)
                })
                .await??;
                let addr = line
                    .trim()
                    .strip_prefix("listening on ")
                    .ok_or_else(|| anyhow!("configwatch said {line:?}"))?
                    .parse()?;
                Ok(addr)
            }
            ServerKind::Etcd => {
                let deadline = Instant::now() + Duration::from_secs(20);
                loop {
                    if let Ok(ch) = channel(self.addr).await {
                        let mut kv = etcd::kv_client::KvClient::new(ch);
                        if kv
                            .range(etcd::RangeRequest {
                                key: b"probe".to_vec(),
                                ..Default::default()
                            })
                            .await
                            .is_ok()
                        {
                            return Ok(self.addr);
                        }
                    }
                    if Instant::now() > deadline {
                        bail!("etcd did not answer on {}", self.addr);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    /// Stops the server with SIGTERM (as a deploy does) and waits for it to exit.
    async fn terminate(&mut self) -> Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -TERM {} failed", self.pid());
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// Starts the stopped server again: same program, arguments, data directory
    /// and address. Returns when it answers.
    async fn start_again(&mut self) -> Result<()> {
        self.child = Server::spawn(self.kind, &self.program, &self.args)?;
        let addr = self.wait_ready().await?;
        if addr != self.addr {
            bail!("restarted on {addr}, not on {}", self.addr);
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

fn temp_dir(name: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "configwatch-bench-{name}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn configwatch_bin(cli: &Cli) -> Result<PathBuf> {
    if let Some(p) = &cli.configwatch_bin {
        return Ok(p.clone());
    }
    let me = std::env::current_exe()?;
    Ok(me.with_file_name("configwatch"))
}

async fn start_configwatch(bin: &Path) -> Result<(Server, LocalKey)> {
    start_configwatch_on(bin, "127.0.0.1:0".parse()?, &[]).await
}

/// Starts configwatch listening on `listen` (port 0: any), with extra `serve` flags.
async fn start_configwatch_on(
    bin: &Path,
    listen: SocketAddr,
    extra: &[&str],
) -> Result<(Server, LocalKey)> {
    let dir = temp_dir("configwatch")?;
    let mut args: Vec<OsString> = ["serve", "--listen", &listen.to_string(), "--log", "warn"]
        .iter()
        .chain(extra)
        .map(OsString::from)
        .collect();
    args.push("--data-dir".into());
    args.push(dir.clone().into());
    let child = Server::spawn(ServerKind::Configwatch, bin, &args)?;
    let mut server = Server {
        child,
        addr: listen,
        dir,
        kind: ServerKind::Configwatch,
        program: bin.to_path_buf(),
        args,
    };
    server.addr = server.wait_ready().await?;
    let (key, _) = LocalKey::load_or_create(&server.dir)?;
    Ok((server, key))
}

async fn start_etcd(bin: &Path) -> Result<Server> {
    let dir = temp_dir("etcd")?;
    let client = free_port()?;
    let peer = free_port()?;
    let mut args: Vec<OsString> = [
        "--name".to_string(),
        "bench".into(),
        "--listen-client-urls".into(),
        format!("http://127.0.0.1:{client}"),
        "--advertise-client-urls".into(),
        format!("http://127.0.0.1:{client}"),
        "--listen-peer-urls".into(),
        format!("http://127.0.0.1:{peer}"),
        "--initial-advertise-peer-urls".into(),
        format!("http://127.0.0.1:{peer}"),
        "--initial-cluster".into(),
        format!("bench=http://127.0.0.1:{peer}"),
        "--log-level".into(),
        "error".into(),
        "--data-dir".into(),
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    args.push(dir.join("data").into());
    let child = Server::spawn(ServerKind::Etcd, bin, &args)?;
    let mut server = Server {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], client)),
        dir,
        kind: ServerKind::Etcd,
        program: bin.to_path_buf(),
        args,
    };
    server.wait_ready().await?;
    Ok(server)
}

async fn channel(addr: SocketAddr) -> Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await?)
}

async fn channels(addr: SocketAddr, n: usize) -> Result<Vec<Channel>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(channel(addr).await?);
    }
    Ok(out)
}

fn bearer(
    key: &LocalKey,
    tenant: &str,
    role: Role,
) -> Result<MetadataValue<tonic::metadata::Ascii>> {
    let token = key.issue(
        &Scope::tenant(tenant)?,
        role,
        Duration::from_secs(3600),
        "bench",
    )?;
    Ok(format!("Bearer {token}").parse()?)
}

fn authed<T>(msg: T, token: &MetadataValue<tonic::metadata::Ascii>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert("authorization", token.clone());
    req
}

// ---------------------------------------------------------------- statistics

fn now_us(start: Instant) -> u64 {
    start.elapsed().as_micros() as u64
}

#[derive(Debug, Clone, Copy, Default)]
struct Summary {
    p50: f64,
    p99: f64,
    max: f64,
}

/// Percentiles of microsecond samples, in milliseconds.
fn summarize(samples: &mut [u64]) -> Summary {
    if samples.is_empty() {
        return Summary::default();
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
    Summary {
        p50: at(0.50),
        p99: at(0.99),
        max: at(1.0),
    }
}

fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

// ---------------------------------------------------------------- W1 fan-out

/// The outcome of one fan-out run.
struct FanoutResult {
    system: String,
    delivery: Summary,
    /// Median over changes of the time until the last watcher had it (ms).
    last_watcher_median: f64,
    last_watcher_max: f64,
    deliveries: u64,
    missing: u64,
    cpu_per_delivery_us: f64,
    /// Server RSS with every watcher connected, after the fill, and at the end.
    rss_mib: f64,
    rss_fill_mib: f64,
    rss_end_mib: f64,
}

/// What every watcher task reports: (change index, latency in µs).
type Deliveries = mpsc::UnboundedSender<Vec<(u32, u64)>>;

struct Plan {
    watchers: usize,
    tenants: usize,
    changes: usize,
}

impl Plan {
    fn tenant_of_watcher(&self, w: usize) -> usize {
        w % self.tenants
    }
    fn tenant_of_change(&self, c: usize) -> usize {
        c % self.tenants
    }
    fn watchers_of_tenant(&self, t: usize) -> usize {
        self.watchers / self.tenants + usize::from(t < self.watchers % self.tenants)
    }
}

async fn collect(
    mut rx: mpsc::UnboundedReceiver<Vec<(u32, u64)>>,
    plan: &Plan,
) -> (Vec<u64>, Vec<f64>, u64) {
    let mut all = Vec::new();
    let mut last = vec![0u64; plan.changes];
    while let Some(batch) = rx.recv().await {
        for (c, lat) in batch {
            all.push(lat);
            let slot = &mut last[c as usize];
            *slot = (*slot).max(lat);
        }
    }
    let expected: u64 = (0..plan.changes)
        .map(|c| plan.watchers_of_tenant(plan.tenant_of_change(c)) as u64)
        .sum();
    let missing = expected.saturating_sub(all.len() as u64);
    (
        all,
        last.iter().map(|v| *v as f64 / 1000.0).collect(),
        missing,
    )
}

/// Runs the writer loop: change c goes to its tenant, and the next one waits until
/// every watcher of that tenant has it (or the timeout).
async fn drive_changes<F, Fut>(
    plan: &Plan,
    counts: &[AtomicUsize],
    timeout: Duration,
    mut write: F,
) -> Result<()>
where
    F: FnMut(usize, usize) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    for (c, delivered) in counts.iter().enumerate().take(plan.changes) {
        let t = plan.tenant_of_change(c);
        write(c, t).await?;
        let want = plan.watchers_of_tenant(t);
        let deadline = Instant::now() + timeout;
        while delivered.load(Ordering::Acquire) < want && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    Ok(())
}

/// W5's additions to a fan-out run: watchers that never read (on connections of
/// their own, with the HTTP/2 default windows of 64 KiB, so they fill), and large
/// changes written to every tenant before the measured ones, which fill them.
#[derive(Clone, Copy, Default)]
struct SlowSpec {
    watchers: usize,
    connections: usize,
    /// Changes per tenant before the measured ones (distinct keys).
    fill_changes: usize,
    fill_bytes: usize,
}

/// Change indexes from here on are fill changes, not measured.
const FILL_BASE: usize = 1 << 30;

/// The counters of one fan-out run, shared by its watcher tasks.
struct Tally {
    start: Instant,
    /// Per measured change: watchers that have it.
    counts: Vec<AtomicUsize>,
    /// Fill changes received by the reading watchers.
    fill: AtomicUsize,
    ready: AtomicUsize,
}

impl Tally {
    fn new(changes: usize) -> Arc<Tally> {
        Arc::new(Tally {
            start: Instant::now(),
            counts: (0..changes).map(|_| AtomicUsize::new(0)).collect(),
            fill: AtomicUsize::new(0),
            ready: AtomicUsize::new(0),
        })
    }

    /// Records a received value: a measured change's latency goes to `seen`.
    fn record(&self, value: &str, now: u64, seen: &mut Vec<(u32, u64)>) {
        let Some((c, sent)) = parse_stamp(value) else {
            return;
        };
        if c as usize >= FILL_BASE {
            self.fill.fetch_add(1, Ordering::Release);
            return;
        }
        seen.push((c, now.saturating_sub(sent)));
        if let Some(n) = self.counts.get(c as usize) {
            n.fetch_add(1, Ordering::Release);
        }
    }
}

/// Connections for watchers that never read: the HTTP/2 default windows (64 KiB
/// per stream and per connection), so a few changes fill them.
async fn slow_channels(addr: SocketAddr, n: usize) -> Result<Vec<Channel>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(
            Endpoint::from_shared(format!("http://{addr}"))?
                .tcp_nodelay(true)
                .initial_stream_window_size(Some(65_535))
                .initial_connection_window_size(Some(65_535))
                .connect()
                .await?,
        );
    }
    Ok(out)
}

/// Waits until the reading watchers have every fill change.
async fn wait_fill(tally: &Tally, want: usize, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    while tally.fill.load(Ordering::Acquire) < want {
        if Instant::now() > deadline {
            bail!(
                "fill: only {} of {want} deliveries within {limit:?}",
                tally.fill.load(Ordering::Acquire)
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

async fn fanout_configwatch(
    bin: &Path,
    args: &FanoutArgs,
    plan: &Plan,
    slow: SlowSpec,
    around: Option<&str>,
) -> Result<FanoutResult> {
    let (server, key) = start_configwatch(bin).await?;
    let chans = channels(server.addr, args.connections).await?;
    let tally = Tally::new(plan.changes);
    let start = tally.start;
    let (tx, rx): (Deliveries, _) = mpsc::unbounded_channel();
    let mut readers = Vec::with_capacity(plan.watchers);
    let mut tokens = HashMap::new();
    let mut token_of = |t: usize| -> Result<MetadataValue<tonic::metadata::Ascii>> {
        if let Some(tok) = tokens.get(&t) {
            return Ok(Clone::clone(tok));
        }
        let tok = bearer(&key, &format!("t{t}"), Role::Reader)?;
        tokens.insert(t, tok.clone());
        Ok(tok)
    };
    let watch_req = |token: &MetadataValue<tonic::metadata::Ascii>| {
        authed(
            cw::WatchRequest {
                prefixes: vec!["tenant_config_".into()],
                ..Default::default()
            },
            token,
        )
    };
    for w in 0..plan.watchers {
        let req = watch_req(&token_of(plan.tenant_of_watcher(w))?);
        let mut client = ConfigServiceClient::new(chans[w % chans.len()].clone());
        let (tx, tally) = (tx.clone(), tally.clone());
        readers.push(tokio::spawn(async move {
            let Ok(resp) = client.watch(req).await else {
                return;
            };
            let mut stream = resp.into_inner();
            let mut seen = Vec::new();
            while let Ok(Some(msg)) = stream.message().await {
                if msg.initial_complete {
                    tally.ready.fetch_add(1, Ordering::Release);
                }
                if msg.kind != Kind::Delta as i32 {
                    continue;
                }
                let now = now_us(start);
                for e in &msg.changes {
                    tally.record(&e.value, now, &mut seen);
                }
                if seen.len() >= 64 {
                    let _ = tx.send(std::mem::take(&mut seen));
                }
            }
            let _ = tx.send(seen);
        }));
    }
    drop(tx);
    wait_for(&tally.ready, plan.watchers, Duration::from_secs(120)).await?;
    // Watchers that never read, on connections of their own.
    let slow_ready = Arc::new(AtomicUsize::new(0));
    let mut holders = Vec::with_capacity(slow.watchers);
    if slow.watchers > 0 {
        let slow_chans = slow_channels(server.addr, slow.connections.max(1)).await?;
        for s in 0..slow.watchers {
            let req = watch_req(&token_of(s % plan.tenants)?);
            let mut client = ConfigServiceClient::new(slow_chans[s % slow_chans.len()].clone());
            let slow_ready = slow_ready.clone();
            holders.push(tokio::spawn(async move {
                let Ok(resp) = client.watch(req).await else {
                    return;
                };
                slow_ready.fetch_add(1, Ordering::Release);
                // Never read; hold the stream until the run ends (the task is aborted).
                std::future::pending::<()>().await;
                drop(resp);
            }));
        }
        wait_for(&slow_ready, slow.watchers, Duration::from_secs(120)).await?;
    }
    let writer_tokens: Vec<_> = (0..plan.tenants)
        .map(|t| bearer(&key, &format!("t{t}"), Role::Writer))
        .collect::<Result<_>>()?;
    let writer = ConfigServiceClient::new(channel(server.addr).await?);
    let rss_ready = server.rss_kib();
    if slow.fill_changes > 0 {
        for token in &writer_tokens {
            for i in 0..slow.fill_changes {
                writer
                    .clone()
                    .put(authed(
                        cw::PutRequest {
                            key: format!("tenant_config_fill{i}"),
                            value: padded_stamp(FILL_BASE + i, now_us(start), slow.fill_bytes),
                            ..Default::default()
                        },
                        token,
                    ))
                    .await?;
            }
        }
        wait_fill(&tally, plan.watchers * slow.fill_changes, args.timeout * 4).await?;
    }
    let rss_fill = server.rss_kib();
    hook(around, "start", server.pid())?;
    let cpu_before = server.cpu();
    drive_changes(plan, &tally.counts, args.timeout, |c, t| {
        let req = authed(
            cw::PutRequest {
                key: "tenant_config_flag".into(),
                value: stamp(c, now_us(start)),
                ..Default::default()
            },
            &writer_tokens[t],
        );
        let mut writer = writer.clone();
        async move {
            writer.put(req).await?;
            Ok(())
        }
    })
    .await?;
    let cpu = server.cpu().saturating_sub(cpu_before);
    hook(around, "stop", server.pid())?;
    let rss_end = server.rss_kib();
    drop(server);
    for h in holders {
        h.abort();
    }
    for r in readers {
        let _ = r.await;
    }
    let (mut all, mut last, missing) = collect(rx, plan).await;
    let deliveries = all.len() as u64;
    Ok(FanoutResult {
        system: "configwatch".into(),
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

/// The value a change carries: its index and when it was sent (µs since start).
fn stamp(change: usize, sent_us: u64) -> String {
    format!("[{change},{sent_us}]")
}

/// A stamp padded with a string to about `bytes` (still a JSON array).
fn padded_stamp(change: usize, sent_us: u64, bytes: usize) -> String {
    let pad = bytes.saturating_sub(32);
    format!("[{change},{sent_us},\"{}\"]", "x".repeat(pad))
}

fn parse_stamp(value: &str) -> Option<(u32, u64)> {
    let inner = value.trim().strip_prefix('[')?.strip_suffix(']')?;
    let mut fields = inner.splitn(3, ',');
    let c = fields.next()?.trim().parse().ok()?;
    let t = fields.next()?.trim().parse().ok()?;
    Some((c, t))
}

async fn wait_for(counter: &AtomicUsize, want: usize, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    while counter.load(Ordering::Acquire) < want {
        if Instant::now() > deadline {
            bail!(
                "only {} of {want} watchers became ready within {limit:?}",
                counter.load(Ordering::Acquire)
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

fn etcd_prefix(t: usize) -> Vec<u8> {
    format!("/t{t}/config/").into_bytes()
}

fn range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum EtcdMode {
    /// One Watch RPC per watcher.
    StreamPerWatcher,
    /// One Watch RPC per connection, carrying all its watchers.
    Multiplexed,
}

async fn fanout_etcd(
    bin: &Path,
    args: &FanoutArgs,
    plan: &Plan,
    mode: EtcdMode,
    slow: SlowSpec,
) -> Result<FanoutResult> {
    let server = start_etcd(bin).await?;
    let chans = channels(server.addr, args.connections).await?;
    let tally = Tally::new(plan.changes);
    let start = tally.start;
    let (tx, rx): (Deliveries, _) = mpsc::unbounded_channel();
    let mut readers = Vec::new();
    // Group watchers into streams: one each, or one per connection.
    let mut streams: Vec<(usize, Vec<usize>)> = Vec::new();
    match mode {
        EtcdMode::StreamPerWatcher => {
            for w in 0..plan.watchers {
                streams.push((w % chans.len(), vec![w]));
            }
        }
        EtcdMode::Multiplexed => {
            let mut per: Vec<Vec<usize>> = vec![Vec::new(); chans.len()];
            for w in 0..plan.watchers {
                per[w % chans.len()].push(w);
            }
            for (c, ws) in per.into_iter().enumerate() {
                if !ws.is_empty() {
                    streams.push((c, ws));
                }
            }
        }
    }
    for (conn, watchers) in streams {
        let mut client = etcd::watch_client::WatchClient::new(chans[conn].clone());
        let creates: Vec<etcd::WatchRequest> = watchers
            .iter()
            .map(|w| {
                let prefix = etcd_prefix(plan.tenant_of_watcher(*w));
                etcd::WatchRequest {
                    request_union: Some(etcd::watch_request::RequestUnion::CreateRequest(
                        etcd::WatchCreateRequest {
                            range_end: range_end(&prefix),
                            key: prefix,
                            ..Default::default()
                        },
                    )),
                }
            })
            .collect();
        let (tx, tally) = (tx.clone(), tally.clone());
        readers.push(tokio::spawn(async move {
            // Keep the request stream open for the life of the watch.
            let (req_tx, req_rx) = mpsc::unbounded_channel();
            for c in creates {
                let _ = req_tx.send(c);
            }
            let requests = tokio_stream::wrappers::UnboundedReceiverStream::new(req_rx);
            let Ok(resp) = client.watch(requests).await else {
                return;
            };
            let mut stream = resp.into_inner();
            let mut seen = Vec::new();
            while let Ok(Some(msg)) = stream.message().await {
                if msg.created {
                    tally.ready.fetch_add(1, Ordering::Release);
                }
                if msg.events.is_empty() {
                    continue;
                }
                let now = now_us(start);
                for ev in &msg.events {
                    let value = ev
                        .kv
                        .as_ref()
                        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
                    if let Some(value) = value {
                        tally.record(&value, now, &mut seen);
                    }
                }
                if seen.len() >= 64 {
                    let _ = tx.send(std::mem::take(&mut seen));
                }
            }
            drop(req_tx);
            let _ = tx.send(seen);
        }));
    }
    drop(tx);
    wait_for(&tally.ready, plan.watchers, Duration::from_secs(120)).await?;
    // Watchers that never read, one stream each, on connections of their own.
    let slow_ready = Arc::new(AtomicUsize::new(0));
    let mut holders = Vec::with_capacity(slow.watchers);
    if slow.watchers > 0 {
        let slow_chans = slow_channels(server.addr, slow.connections.max(1)).await?;
        for s in 0..slow.watchers {
            let prefix = etcd_prefix(s % plan.tenants);
            let create = etcd::WatchRequest {
                request_union: Some(etcd::watch_request::RequestUnion::CreateRequest(
                    etcd::WatchCreateRequest {
                        range_end: range_end(&prefix),
                        key: prefix,
                        ..Default::default()
                    },
                )),
            };
            let mut client =
                etcd::watch_client::WatchClient::new(slow_chans[s % slow_chans.len()].clone());
            let slow_ready = slow_ready.clone();
            holders.push(tokio::spawn(async move {
                let (req_tx, req_rx) = mpsc::unbounded_channel();
                let _ = req_tx.send(create);
                let requests = tokio_stream::wrappers::UnboundedReceiverStream::new(req_rx);
                let Ok(resp) = client.watch(requests).await else {
                    return;
                };
                slow_ready.fetch_add(1, Ordering::Release);
                // Never read; hold the stream until the run ends (the task is aborted).
                std::future::pending::<()>().await;
                drop((resp, req_tx));
            }));
        }
        wait_for(&slow_ready, slow.watchers, Duration::from_secs(120)).await?;
    }
    let rss = server.rss_kib();
    let writer = etcd::kv_client::KvClient::new(channel(server.addr).await?);
    if slow.fill_changes > 0 {
        for t in 0..plan.tenants {
            for i in 0..slow.fill_changes {
                let mut key = etcd_prefix(t);
                key.extend_from_slice(format!("fill{i}").as_bytes());
                writer
                    .clone()
                    .put(etcd::PutRequest {
                        key,
                        value: padded_stamp(FILL_BASE + i, now_us(start), slow.fill_bytes)
                            .into_bytes(),
                        ..Default::default()
                    })
                    .await?;
            }
        }
        wait_fill(&tally, plan.watchers * slow.fill_changes, args.timeout * 4).await?;
    }
    let rss_fill = server.rss_kib();
    let cpu_before = server.cpu();
    drive_changes(plan, &tally.counts, args.timeout, |c, t| {
        let mut writer = writer.clone();
        let mut key = etcd_prefix(t);
        key.extend_from_slice(b"flag");
        let value = stamp(c, now_us(start)).into_bytes();
        async move {
            writer
                .put(etcd::PutRequest {
                    key,
                    value,
                    ..Default::default()
                })
                .await?;
            Ok(())
        }
    })
    .await?;
    let cpu = server.cpu().saturating_sub(cpu_before);
    let rss_end = server.rss_kib();
    drop(server);
    for h in holders {
        h.abort();
    }
    for r in readers {
        let _ = r.await;
    }
    let (mut all, mut last, missing) = collect(rx, plan).await;
    let deliveries = all.len() as u64;
    let name = match mode {
        EtcdMode::StreamPerWatcher => "etcd (stream per watcher)",
        EtcdMode::Multiplexed => "etcd (multiplexed)",
    };
    Ok(FanoutResult {
        system: name.into(),
        delivery: summarize(&mut all),
        last_watcher_median: median(&mut last.clone()),
        last_watcher_max: last.iter_mut().fold(0.0, |a, b| a.max(*b)),
        deliveries,
        missing,
        cpu_per_delivery_us: cpu.as_secs_f64() * 1e6 / deliveries.max(1) as f64,
        rss_mib: rss as f64 / 1024.0,
        rss_fill_mib: rss_fill as f64 / 1024.0,
        rss_end_mib: rss_end as f64 / 1024.0,
    })
}

async fn run_fanout(cli: &Cli, args: &FanoutArgs) -> Result<()> {
    let plan = Plan {
        watchers: args.watchers,
        tenants: args
            .tenants
            .unwrap_or((args.watchers / 100).max(1))
            .clamp(1, args.watchers.max(1)),
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
    let none = SlowSpec::default();
    let mut results = vec![
        fanout_configwatch(
            &configwatch_bin(cli)?,
            args,
            &plan,
            none,
            cli.around_changes.as_deref(),
        )
        .await?,
    ];
    if cli.peer == Peer::Etcd {
        results
            .push(fanout_etcd(&cli.etcd_bin, args, &plan, EtcdMode::StreamPerWatcher, none).await?);
        results.push(fanout_etcd(&cli.etcd_bin, args, &plan, EtcdMode::Multiplexed, none).await?);
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
            cw.delivery.p99 / peer.delivery.p99.max(f64::MIN_POSITIVE)
        ),
        None => println!(
            "W1 N={} configwatch p50={:.2}ms p99={:.2}ms cpu/delivery={:.1}us",
            plan.watchers, cw.delivery.p50, cw.delivery.p99, cw.cpu_per_delivery_us
        ),
    }
    Ok(())
}

// ---------------------------------------------------------------- W2 get

struct GetResult {
    system: &'static str,
    ops_per_sec: f64,
    latency: Summary,
}

async fn get_configwatch(bin: &Path, args: &GetArgs) -> Result<GetResult> {
    let (server, key) = start_configwatch(bin).await?;
    let tenants = 10usize;
    let writer_tokens: Vec<_> = (0..tenants)
        .map(|t| bearer(&key, &format!("t{t}"), Role::Writer))
        .collect::<Result<_>>()?;
    let mut writer = ConfigServiceClient::new(channel(server.addr).await?);
    for k in 0..args.keys {
        writer
            .put(authed(
                cw::PutRequest {
                    key: format!("tenant_config_k{k}"),
                    value: format!("{{\"k\":{k},\"payload\":\"{}\"}}", "x".repeat(200)),
                    ..Default::default()
                },
                &writer_tokens[k % tenants],
            ))
            .await?;
    }
    let chans = channels(server.addr, args.connections).await?;
    let keys = args.keys;
    let result = closed_loop(args, move |i, n| {
        let mut client = ConfigServiceClient::new(chans[i % chans.len()].clone());
        let k = n % keys;
        let token = writer_tokens[k % tenants].clone();
        async move {
            let resp = client
                .get(authed(
                    cw::GetRequest {
                        keys: vec![format!("tenant_config_k{k}")],
                        ..Default::default()
                    },
                    &token,
                ))
                .await?;
            if resp.get_ref().entries.is_empty() {
                bail!("key tenant_config_k{k} missing");
            }
            Ok(())
        }
    })
    .await?;
    drop(server);
    Ok(GetResult {
        system: "configwatch",
        ..result
    })
}

async fn get_etcd(bin: &Path, args: &GetArgs) -> Result<GetResult> {
    let server = start_etcd(bin).await?;
    let mut kv = etcd::kv_client::KvClient::new(channel(server.addr).await?);
    for k in 0..args.keys {
        kv.put(etcd::PutRequest {
            key: format!("/t{}/config/k{k}", k % 10).into_bytes(),
            value: format!("{{\"k\":{k},\"payload\":\"{}\"}}", "x".repeat(200)).into_bytes(),
            ..Default::default()
        })
        .await?;
    }
    let chans = channels(server.addr, args.connections).await?;
    let keys = args.keys;
    let result = closed_loop(args, move |i, n| {
        let mut kv = etcd::kv_client::KvClient::new(chans[i % chans.len()].clone());
        let k = n % keys;
        async move {
            let resp = kv
                .range(etcd::RangeRequest {
                    key: format!("/t{}/config/k{k}", k % 10).into_bytes(),
                    serializable: true,
                    ..Default::default()
                })
                .await?;
            if resp.get_ref().kvs.is_empty() {
                bail!("etcd key {k} missing");
            }
            Ok(())
        }
    })
    .await?;
    drop(server);
    Ok(GetResult {
        system: "etcd (serializable)",
        ..result
    })
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
        system: "",
        ops_per_sec: ops,
        latency: summarize(&mut all),
    })
}

/// Workers step through keys by a prime, so they spread over all of them.
const STRIDE: usize = 7919;

async fn run_get(cli: &Cli, args: &GetArgs) -> Result<()> {
    println!(
        "W2 get: {} clients over {} connections, {} keys, {:?}",
        args.clients, args.connections, args.keys, args.duration
    );
    let mut results = vec![get_configwatch(&configwatch_bin(cli)?, args).await?];
    if cli.peer == Peer::Etcd {
        results.push(get_etcd(&cli.etcd_bin, args).await?);
    }
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
            results[0].ops_per_sec / peer.ops_per_sec.max(f64::MIN_POSITIVE)
        ),
        None => println!("W2 configwatch ops/s={:.0}", results[0].ops_per_sec),
    }
    Ok(())
}

// ---------------------------------------------------------------- W3 memory

async fn memory_configwatch(bin: &Path, args: &MemoryArgs) -> Result<(f64, f64)> {
    let (server, key) = start_configwatch(bin).await?;
    let chans = channels(server.addr, args.connections).await?;
    let token = bearer(&key, "t0", Role::Reader)?;
    // Load the tenant first so the baseline includes its view.
    let mut first = ConfigServiceClient::new(chans[0].clone());
    first.get(authed(cw::GetRequest::default(), &token)).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = server.rss_kib();
    let ready = Arc::new(AtomicUsize::new(0));
    let mut holders = Vec::new();
    for w in 0..args.watchers {
        let mut client = ConfigServiceClient::new(chans[w % chans.len()].clone());
        let (token, ready) = (token.clone(), ready.clone());
        holders.push(tokio::spawn(async move {
            let req = authed(cw::WatchRequest::default(), &token);
            let Ok(resp) = client.watch(req).await else {
                return;
            };
            let mut stream = resp.into_inner();
            while let Ok(Some(msg)) = stream.message().await {
                if msg.initial_complete {
                    ready.fetch_add(1, Ordering::Release);
                }
            }
        }));
    }
    wait_for(&ready, args.watchers, Duration::from_secs(120)).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = server.rss_kib();
    drop(server);
    for h in holders {
        h.abort();
    }
    let per = (after.saturating_sub(before)) as f64 * 1024.0 / args.watchers as f64;
    Ok((per, after as f64 / 1024.0))
}

async fn memory_etcd(bin: &Path, args: &MemoryArgs) -> Result<(f64, f64)> {
    let server = start_etcd(bin).await?;
    let chans = channels(server.addr, args.connections).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = server.rss_kib();
    let ready = Arc::new(AtomicUsize::new(0));
    let mut holders = Vec::new();
    for w in 0..args.watchers {
        let mut client = etcd::watch_client::WatchClient::new(chans[w % chans.len()].clone());
        let ready = ready.clone();
        holders.push(tokio::spawn(async move {
            let prefix = etcd_prefix(0);
            let (req_tx, req_rx) = mpsc::unbounded_channel();
            let _ = req_tx.send(etcd::WatchRequest {
                request_union: Some(etcd::watch_request::RequestUnion::CreateRequest(
                    etcd::WatchCreateRequest {
                        range_end: range_end(&prefix),
                        key: prefix,
                        ..Default::default()
                    },
                )),
            });
            let requests = tokio_stream::wrappers::UnboundedReceiverStream::new(req_rx);
            let Ok(resp) = client.watch(requests).await else {
                return;
            };
            let mut stream = resp.into_inner();
            while let Ok(Some(msg)) = stream.message().await {
                if msg.created {
                    ready.fetch_add(1, Ordering::Release);
                }
            }
            drop(req_tx);
        }));
    }
    wait_for(&ready, args.watchers, Duration::from_secs(120)).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = server.rss_kib();
    drop(server);
    for h in holders {
        h.abort();
    }
    let per = (after.saturating_sub(before)) as f64 * 1024.0 / args.watchers as f64;
    Ok((per, after as f64 / 1024.0))
}

async fn run_memory(cli: &Cli, args: &MemoryArgs) -> Result<()> {
    println!(
        "W3 memory: {} idle watch streams over {} connections",
        args.watchers, args.connections
    );
    let (cw_per, cw_rss) = memory_configwatch(&configwatch_bin(cli)?, args).await?;
    println!("{:<28} {:>14} {:>12}", "system", "bytes/stream", "RSS MiB");
    println!("{:<28} {:>14.0} {:>12.1}", "configwatch", cw_per, cw_rss);
    if cli.peer == Peer::Etcd {
        let (e_per, e_rss) = memory_etcd(&cli.etcd_bin, args).await?;
        println!(
            "{:<28} {:>14.0} {:>12.1}",
            "etcd (stream per watcher)", e_per, e_rss
        );
        println!(
            "W3 N={} configwatch bytes/stream={cw_per:.0} etcd bytes/stream={e_per:.0} ratio={:.3}",
            args.watchers,
            cw_per / e_per.max(f64::MIN_POSITIVE)
        );
    } else {
        println!(
            "W3 N={} configwatch bytes/stream={cw_per:.0}",
            args.watchers
        );
    }
    Ok(())
}

// ---------------------------------------------------------------- byte-counting relay

/// A TCP relay in front of a server that counts the bytes it carries each way
/// (everything on the wire above TCP: HTTP/2 frames, headers, gRPC messages).
/// When either side closes, the relay closes the other.
struct Relay {
    addr: SocketAddr,
    /// Server to client.
    down: Arc<AtomicU64>,
    /// Client to server.
    up: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Result<Relay> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let down = Arc::new(AtomicU64::new(0));
        let up = Arc::new(AtomicU64::new(0));
        let (d, u) = (down.clone(), up.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                };
                let (down, up) = (d.clone(), u.clone());
                tokio::spawn(async move {
                    // The server is down: close the client's connection at once.
                    let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::select! {
                        _ = pump(sr, cw, &down) => {}
                        _ = pump(cr, sw, &up) => {}
                    }
                });
            }
        });
        Ok(Relay {
            addr,
            down,
            up,
            task,
        })
    }

    /// (server to client, client to server) so far.
    fn bytes(&self) -> (u64, u64) {
        (
            self.down.load(Ordering::Acquire),
            self.up.load(Ordering::Acquire),
        )
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pump(
    from: tokio::net::tcp::OwnedReadHalf,
    to: tokio::net::tcp::OwnedWriteHalf,
    count: &AtomicU64,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if from.readable().await.is_err() {
            return;
        }
        let n = match from.try_read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return,
        };
        count.fetch_add(n as u64, Ordering::AcqRel);
        let mut off = 0;
        while off < n {
            if to.writable().await.is_err() {
                return;
            }
            match to.try_write(&buf[off..n]) {
                Ok(w) => off += w,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    }
}

// ---------------------------------------------------------------- W4 reconnect storm

#[derive(Args, Clone)]
struct ReconnectArgs {
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
    forget: std::sync::atomic::AtomicBool,
    converged: Vec<AtomicUsize>,
    last_us: Vec<AtomicU64>,
    /// Per phase, by initial mode (configwatch: the proto's enum value).
    modes: Vec<[AtomicUsize; 4]>,
    attempts: AtomicU64,
}

impl Storm {
    fn new() -> Arc<Storm> {
        Arc::new(Storm {
            start: Instant::now(),
            phase: AtomicUsize::new(PHASE_FIRST),
            forget: std::sync::atomic::AtomicBool::new(false),
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
        self.modes[phase][mode.min(3)].fetch_add(1, Ordering::AcqRel);
        self.converged[phase].fetch_add(1, Ordering::AcqRel);
    }
}

/// The client library's reconnect backoff: 250 ms doubling to 30 s, each delay
/// drawn from its upper half (clients/rust/src/backoff.rs).
fn backoff(attempt: u32) -> Duration {
    let secs = (0.25 * 2f64.powi(attempt.min(16) as i32)).min(30.0);
    Duration::from_secs_f64(secs * (1.0 - 0.5 * rand::random::<f64>()))
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
    modes: [usize; 4],
}

struct StormResult {
    system: &'static str,
    first: PhaseResult,
    resume: PhaseResult,
    full: PhaseResult,
    /// What the state under one watch's prefix weighs as values (bytes).
    state_bytes: usize,
}

/// Runs the three phases against a server behind `relay`: the first connect, a
/// restart with resume, a restart with full resend. `storm` is shared with the
/// watchers, which the caller started.
async fn storm_phases(
    server: &mut Server,
    relay: &Relay,
    storm: &Storm,
    watchers: usize,
    timeout: Duration,
) -> Result<[PhaseResult; PHASES]> {
    let mut out = [PhaseResult::default(); PHASES];
    let wait_all = |phase: usize| async move {
        let deadline = Instant::now() + timeout;
        while storm.converged[phase].load(Ordering::Acquire) < watchers {
            if Instant::now() > deadline {
                bail!(
                    "phase {phase}: only {} of {watchers} watchers converged within {timeout:?}",
                    storm.converged[phase].load(Ordering::Acquire)
                );
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(())
    };
    wait_all(PHASE_FIRST).await?;
    let (down, up) = relay.bytes();
    out[PHASE_FIRST].down_bytes = down;
    out[PHASE_FIRST].up_bytes = up;
    out[PHASE_FIRST].converged = watchers;
    for phase in [PHASE_RESUME, PHASE_FULL] {
        // Let the streams settle, then restart.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        storm
            .forget
            .store(phase == PHASE_FULL, std::sync::atomic::Ordering::Release);
        storm.phase.store(phase, Ordering::Release);
        let (down0, up0) = relay.bytes();
        let t_kill = now_us(storm.start);
        server.terminate().await?;
        server.start_again().await?;
        let t_ready = now_us(storm.start);
        wait_all(phase).await?;
        let (down1, up1) = relay.bytes();
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

async fn reconnect_configwatch(bin: &Path, args: &ReconnectArgs) -> Result<StormResult> {
    let tenants = args
        .tenants
        .unwrap_or((args.watchers / 100).max(1))
        .clamp(1, args.watchers.max(1));
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    // No progress messages during the run: the bytes counted are the restart's.
    let (mut server, key) =
        start_configwatch_on(bin, listen, &["--progress-interval", "1h"]).await?;
    {
        let mut writer = ConfigServiceClient::new(channel(server.addr).await?);
        for t in 0..tenants {
            let token = bearer(&key, &format!("t{t}"), Role::Writer)?;
            for k in 0..args.keys {
                writer
                    .put(authed(
                        cw::PutRequest {
                            key: format!("tenant_config_service{k}"),
                            value: storm_value(t, k, args.value_bytes),
                            ..Default::default()
                        },
                        &token,
                    ))
                    .await?;
            }
        }
    }
    let relay = Relay::start(server.addr).await?;
    let chans = channels(relay.addr, args.connections).await?;
    let storm = Storm::new();
    let mut tasks = Vec::with_capacity(args.watchers);
    let mut tokens = HashMap::new();
    for w in 0..args.watchers {
        let t = w % tenants;
        let token = match tokens.get(&t) {
            Some(tok) => Clone::clone(tok),
            None => {
                let tok = bearer(&key, &format!("t{t}"), Role::Reader)?;
                tokens.insert(t, tok.clone());
                tok
            }
        };
        let mut client = ConfigServiceClient::new(chans[w % chans.len()].clone());
        let storm = storm.clone();
        tasks.push(tokio::spawn(async move {
            // What a client library keeps: its cache's versions and the last token.
            // Like the libraries, it sends a digest of the versions when it has a
            // token, and the versions themselves when the server asks for them.
            let mut known: HashMap<String, u64> = HashMap::new();
            let mut resume_token = String::new();
            let mut with_versions = false;
            let mut attempt = 0u32;
            let mut done_phase = None;
            loop {
                if storm.forget.load(std::sync::atomic::Ordering::Acquire) {
                    known.clear();
                    resume_token.clear();
                }
                let digest = !with_versions && !resume_token.is_empty();
                let req = authed(
                    cw::WatchRequest {
                        prefixes: vec!["tenant_config_".into()],
                        resume_token: resume_token.clone(),
                        known_versions: if digest {
                            HashMap::new()
                        } else {
                            known.clone()
                        },
                        known_digest: if digest {
                            StateDigest::of(known.iter().map(|(k, v)| (k.as_str(), *v)))
                                .0
                                .to_vec()
                        } else {
                            Vec::new()
                        },
                        ..Default::default()
                    },
                    &token,
                );
                match client.watch(req).await {
                    Err(status)
                        if status.code() == tonic::Code::Aborted
                            && status.metadata().get(RESUME_METADATA).is_some_and(|v| {
                                v.as_bytes() == RESUME_WITH_VERSIONS.as_bytes()
                            }) =>
                    {
                        storm.attempts.fetch_add(1, Ordering::Relaxed);
                        with_versions = true;
                        continue;
                    }
                    Err(_) => {}
                    Ok(resp) => {
                        let mut stream = resp.into_inner();
                        let mut first = true;
                        while let Ok(Some(msg)) = stream.message().await {
                            if first
                                && msg.initial_mode == cw::watch_response::InitialMode::Full as i32
                            {
                                known.clear();
                            }
                            first = false;
                            for e in msg.changes {
                                if e.deleted {
                                    known.remove(&e.key);
                                } else {
                                    known.insert(e.key, e.version);
                                }
                            }
                            if !msg.resume_token.is_empty() {
                                resume_token = msg.resume_token;
                            }
                            if msg.initial_complete {
                                attempt = 0;
                                with_versions = false;
                                storm.converged(&mut done_phase, msg.initial_mode as usize);
                            }
                        }
                    }
                }
                storm.attempts.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
            }
        }));
    }
    let phases = storm_phases(&mut server, &relay, &storm, args.watchers, args.timeout).await;
    for t in tasks {
        t.abort();
    }
    let [first, resume, full] = phases?;
    Ok(StormResult {
        system: "configwatch",
        first,
        resume,
        full,
        state_bytes: args.keys * args.value_bytes,
    })
}

async fn reconnect_etcd(bin: &Path, args: &ReconnectArgs) -> Result<StormResult> {
    let tenants = args
        .tenants
        .unwrap_or((args.watchers / 100).max(1))
        .clamp(1, args.watchers.max(1));
    let mut server = start_etcd(bin).await?;
    {
        let mut kv = etcd::kv_client::KvClient::new(channel(server.addr).await?);
        for t in 0..tenants {
            for k in 0..args.keys {
                let mut key = etcd_prefix(t);
                key.extend_from_slice(format!("service{k}").as_bytes());
                kv.put(etcd::PutRequest {
                    key,
                    value: storm_value(t, k, args.value_bytes).into_bytes(),
                    ..Default::default()
                })
                .await?;
            }
        }
    }
    let relay = Relay::start(server.addr).await?;
    let chans = channels(relay.addr, args.connections).await?;
    let storm = Storm::new();
    let mut tasks = Vec::with_capacity(args.watchers);
    for w in 0..args.watchers {
        let prefix = etcd_prefix(w % tenants);
        let ch = chans[w % chans.len()].clone();
        let storm = storm.clone();
        tasks.push(tokio::spawn(async move {
            let mut kv = etcd::kv_client::KvClient::new(ch.clone());
            let mut watch = etcd::watch_client::WatchClient::new(ch);
            // The revision this watcher's cache is current through (0: no cache).
            let mut revision = 0i64;
            let mut attempt = 0u32;
            let mut done_phase = None;
            loop {
                if storm.forget.load(std::sync::atomic::Ordering::Acquire) {
                    revision = 0;
                }
                let mut resumed = 2; // DIFF-like: only what changed since `revision`
                if revision == 0 {
                    // No cache: read the whole prefix, then watch from there.
                    resumed = 1;
                    match kv
                        .range(etcd::RangeRequest {
                            key: prefix.clone(),
                            range_end: range_end(&prefix),
                            ..Default::default()
                        })
                        .await
                    {
                        Ok(r) => revision = r.get_ref().header.as_ref().map_or(0, |h| h.revision),
                        Err(_) => {
                            storm.attempts.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(backoff(attempt)).await;
                            attempt += 1;
                            continue;
                        }
                    }
                }
                let (req_tx, req_rx) = mpsc::unbounded_channel();
                let _ = req_tx.send(etcd::WatchRequest {
                    request_union: Some(etcd::watch_request::RequestUnion::CreateRequest(
                        etcd::WatchCreateRequest {
                            key: prefix.clone(),
                            range_end: range_end(&prefix),
                            start_revision: revision + 1,
                            ..Default::default()
                        },
                    )),
                });
                let requests = tokio_stream::wrappers::UnboundedReceiverStream::new(req_rx);
                if let Ok(resp) = watch.watch(requests).await {
                    let mut stream = resp.into_inner();
                    while let Ok(Some(msg)) = stream.message().await {
                        for ev in &msg.events {
                            if let Some(kv) = &ev.kv {
                                revision = revision.max(kv.mod_revision);
                            }
                        }
                        if msg.created {
                            attempt = 0;
                            storm.converged(&mut done_phase, resumed);
                        }
                    }
                }
                drop(req_tx);
                storm.attempts.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
            }
        }));
    }
    let phases = storm_phases(&mut server, &relay, &storm, args.watchers, args.timeout).await;
    for t in tasks {
        t.abort();
    }
    let [first, resume, full] = phases?;
    Ok(StormResult {
        system: "etcd",
        first,
        resume,
        full,
        state_bytes: args.keys * args.value_bytes,
    })
}

async fn run_reconnect(cli: &Cli, args: &ReconnectArgs) -> Result<()> {
    let tenants = args
        .tenants
        .unwrap_or((args.watchers / 100).max(1))
        .clamp(1, args.watchers.max(1));
    println!(
        "W4 reconnect storm: {} watchers over {} connections, {} tenants, {} keys x {} B per tenant; \
         server restarted with SIGTERM on the same data dir and port; bytes counted by a TCP relay \
         (HTTP/2 on the wire, both directions)",
        args.watchers, args.connections, tenants, args.keys, args.value_bytes
    );
    let mut results = vec![reconnect_configwatch(&configwatch_bin(cli)?, args).await?];
    if cli.peer == Peer::Etcd {
        results.push(reconnect_etcd(&cli.etcd_bin, args).await?);
    }
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
            let modes = if r.system == "configwatch" {
                format!(
                    "full={} diff={} resumed={}",
                    p.modes[1], p.modes[2], p.modes[3]
                )
            } else {
                format!("range+watch={} watch-from-rev={}", p.modes[1], p.modes[2])
            };
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
            cw.resume.converge_ms / e.resume.converge_ms.max(f64::MIN_POSITIVE)
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

// ---------------------------------------------------------------- W5 slow consumers

#[derive(Args, Clone)]
struct SlowArgs {
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

async fn run_slow(cli: &Cli, args: &SlowArgs) -> Result<()> {
    let slow_n = args.watchers * args.slow_percent / 100;
    let fast_n = args.watchers - slow_n;
    let plan = Plan {
        watchers: fast_n,
        tenants: args
            .tenants
            .unwrap_or((args.watchers / 100).max(1))
            .clamp(1, fast_n.max(1)),
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
    let bin = configwatch_bin(cli)?;
    let systems: &[&str] = if cli.peer == Peer::Etcd {
        &["configwatch", "etcd"]
    } else {
        &["configwatch"]
    };
    // [system][with slow] -> per-round results
    let mut runs: Vec<[Vec<FanoutResult>; 2]> = (0..systems.len())
        .map(|_| [Vec::new(), Vec::new()])
        .collect();
    for round in 0..args.rounds {
        for (si, system) in systems.iter().enumerate() {
            for (wi, slow) in [0, slow_n].into_iter().enumerate() {
                let r = if *system == "configwatch" {
                    fanout_configwatch(&bin, &fanout, &plan, spec(slow), None).await?
                } else {
                    fanout_etcd(
                        &cli.etcd_bin,
                        &fanout,
                        &plan,
                        EtcdMode::StreamPerWatcher,
                        spec(slow),
                    )
                    .await?
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
            100.0 * (p99s / p99n.max(f64::MIN_POSITIVE) - 1.0),
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
            100.0 * (cs / cn.max(f64::MIN_POSITIVE) - 1.0),
            100.0 * (es / en.max(f64::MIN_POSITIVE) - 1.0),
            cs / es.max(f64::MIN_POSITIVE)
        ),
        None => println!(
            "W5 N={} slow={slow_n} configwatch p99 none={cn:.2}ms slow={cs:.2}ms ({:+.1}%) RSS none={crn:.1}MiB slow={crs:.1}MiB",
            args.watchers,
            100.0 * (cs / cn.max(f64::MIN_POSITIVE) - 1.0)
        ),
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match &cli.workload {
        Workload::Fanout(a) => run_fanout(&cli, a).await,
        Workload::Get(a) => run_get(&cli, a).await,
        Workload::Memory(a) => run_memory(&cli, a).await,
        Workload::Reconnect(a) => run_reconnect(&cli, a).await,
        Workload::Slow(a) => run_slow(&cli, a).await,
    }
}
