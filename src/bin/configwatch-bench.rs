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
//!
//! All load goes to 127.0.0.1; every loop is bounded in count and time.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use configwatch::auth::Role;
use configwatch::auth::local::LocalKey;
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

/// A server process with its temporary data directory.
struct Server {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
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

fn start_configwatch(bin: &Path) -> Result<(Server, LocalKey)> {
    use std::io::{BufRead, BufReader};
    let dir = temp_dir("configwatch")?;
    let mut child = Command::new(bin)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log",
            "warn",
            "--data-dir",
        ])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .ok_or_else(|| anyhow!("configwatch said {line:?}"))?
        .parse()?;
    let (key, _) = LocalKey::load_or_create(&dir)?;
    Ok((Server { child, addr, dir }, key))
}

async fn start_etcd(bin: &Path) -> Result<Server> {
    let dir = temp_dir("etcd")?;
    let client = free_port()?;
    let peer = free_port()?;
    let child = Command::new(bin)
        .args([
            "--name",
            "bench",
            "--listen-client-urls",
            &format!("http://127.0.0.1:{client}"),
            "--advertise-client-urls",
            &format!("http://127.0.0.1:{client}"),
            "--listen-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
            "--initial-cluster",
            &format!("bench=http://127.0.0.1:{peer}"),
            "--log-level",
            "error",
            "--data-dir",
        ])
        .arg(dir.join("data"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {} (apt-get install etcd-server)", bin.display()))?;
    let server = Server {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], client)),
        dir,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(ch) = channel(server.addr).await {
            let mut kv = etcd::kv_client::KvClient::new(ch);
            if kv
                .range(etcd::RangeRequest {
                    key: b"probe".to_vec(),
                    ..Default::default()
                })
                .await
                .is_ok()
            {
                return Ok(server);
            }
        }
        if Instant::now() > deadline {
            bail!("etcd did not answer on {}", server.addr);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
    rss_mib: f64,
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

async fn fanout_configwatch(bin: &Path, args: &FanoutArgs, plan: &Plan) -> Result<FanoutResult> {
    let (server, key) = start_configwatch(bin)?;
    let chans = channels(server.addr, args.connections).await?;
    let start = Instant::now();
    let counts: Arc<Vec<AtomicUsize>> =
        Arc::new((0..plan.changes).map(|_| AtomicUsize::new(0)).collect());
    let ready = Arc::new(AtomicUsize::new(0));
    let (tx, rx): (Deliveries, _) = mpsc::unbounded_channel();
    let mut readers = Vec::with_capacity(plan.watchers);
    let mut tokens = HashMap::new();
    for w in 0..plan.watchers {
        let t = plan.tenant_of_watcher(w);
        let token = match tokens.get(&t) {
            Some(tok) => Clone::clone(tok),
            None => {
                let tok = bearer(&key, &format!("t{t}"), Role::Reader)?;
                tokens.insert(t, tok.clone());
                tok
            }
        };
        let mut client = ConfigServiceClient::new(chans[w % chans.len()].clone());
        let (tx, counts, ready) = (tx.clone(), counts.clone(), ready.clone());
        readers.push(tokio::spawn(async move {
            let req = authed(
                cw::WatchRequest {
                    prefixes: vec!["tenant_config_".into()],
                    ..Default::default()
                },
                &token,
            );
            let Ok(resp) = client.watch(req).await else {
                return;
            };
            let mut stream = resp.into_inner();
            let mut seen = Vec::new();
            while let Ok(Some(msg)) = stream.message().await {
                if msg.initial_complete {
                    ready.fetch_add(1, Ordering::Release);
                }
                if msg.kind != Kind::Delta as i32 {
                    continue;
                }
                let now = now_us(start);
                for e in &msg.changes {
                    if let Some((c, sent)) = parse_stamp(&e.value) {
                        seen.push((c, now.saturating_sub(sent)));
                        if let Some(n) = counts.get(c as usize) {
                            n.fetch_add(1, Ordering::Release);
                        }
                    }
                }
                if seen.len() >= 64 {
                    let _ = tx.send(std::mem::take(&mut seen));
                }
            }
            let _ = tx.send(seen);
        }));
    }
    drop(tx);
    wait_for(&ready, plan.watchers, Duration::from_secs(120)).await?;
    let rss = server.rss_kib();
    let cpu_before = server.cpu();
    let writer_tokens: Vec<_> = (0..plan.tenants)
        .map(|t| bearer(&key, &format!("t{t}"), Role::Writer))
        .collect::<Result<_>>()?;
    let writer = ConfigServiceClient::new(channel(server.addr).await?);
    drive_changes(plan, &counts, args.timeout, |c, t| {
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
    drop(server);
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
        rss_mib: rss as f64 / 1024.0,
    })
}

/// The value a change carries: its index and when it was sent (µs since start).
fn stamp(change: usize, sent_us: u64) -> String {
    format!("[{change},{sent_us}]")
}

fn parse_stamp(value: &str) -> Option<(u32, u64)> {
    let inner = value.trim().strip_prefix('[')?.strip_suffix(']')?;
    let (c, t) = inner.split_once(',')?;
    Some((c.trim().parse().ok()?, t.trim().parse().ok()?))
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
) -> Result<FanoutResult> {
    let server = start_etcd(bin).await?;
    let chans = channels(server.addr, args.connections).await?;
    let start = Instant::now();
    let counts: Arc<Vec<AtomicUsize>> =
        Arc::new((0..plan.changes).map(|_| AtomicUsize::new(0)).collect());
    let ready = Arc::new(AtomicUsize::new(0));
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
        let (tx, counts, ready) = (tx.clone(), counts.clone(), ready.clone());
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
                    ready.fetch_add(1, Ordering::Release);
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
                    if let Some((c, sent)) = value.as_deref().and_then(parse_stamp) {
                        seen.push((c, now.saturating_sub(sent)));
                        if let Some(n) = counts.get(c as usize) {
                            n.fetch_add(1, Ordering::Release);
                        }
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
    wait_for(&ready, plan.watchers, Duration::from_secs(120)).await?;
    let rss = server.rss_kib();
    let cpu_before = server.cpu();
    let writer = etcd::kv_client::KvClient::new(channel(server.addr).await?);
    drive_changes(plan, &counts, args.timeout, |c, t| {
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
    drop(server);
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
    let mut results = vec![fanout_configwatch(&configwatch_bin(cli)?, args, &plan).await?];
    if cli.peer == Peer::Etcd {
        results.push(fanout_etcd(&cli.etcd_bin, args, &plan, EtcdMode::StreamPerWatcher).await?);
        results.push(fanout_etcd(&cli.etcd_bin, args, &plan, EtcdMode::Multiplexed).await?);
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
            "W1 N={} configwatch p99={:.2}ms etcd p99={:.2}ms configwatch last={:.2}ms etcd last={:.2}ms ratio={:.3}",
            plan.watchers,
            cw.delivery.p99,
            peer.delivery.p99,
            cw.last_watcher_median,
            peer.last_watcher_median,
            cw.delivery.p99 / peer.delivery.p99.max(f64::MIN_POSITIVE)
        ),
        None => println!(
            "W1 N={} configwatch p99={:.2}ms",
            plan.watchers, cw.delivery.p99
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
    let (server, key) = start_configwatch(bin)?;
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
    let (server, key) = start_configwatch(bin)?;
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

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match &cli.workload {
        Workload::Fanout(a) => run_fanout(&cli, a).await,
        Workload::Get(a) => run_get(&cli, a).await,
        Workload::Memory(a) => run_memory(&cli, a).await,
    }
}
