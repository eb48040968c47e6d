//! The clients under test, each a process inside the clients' namespace: the Rust
//! library as `configwatch watch` (its stdout read into a cache here, its stderr
//! kept in a log) and the TypeScript library as the convergence driver
//! (`clients/typescript/dist/test/convergence-client.js`), asked for a dump of its
//! cache and counters over stdin.
//!
//! Boundary: starts, reads and stops client processes; knows their command lines
//! and output formats, not the topology they run in.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use configwatch_test_support::Netns;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use super::State;

/// What a client holds: key -> (version, value).
pub type Cache = BTreeMap<String, (u64, Value)>;

/// A client of either library, as the test compares them.
pub enum Client {
    Rust(Watcher),
    Ts(TsClient),
}

impl Client {
    pub fn name(&self) -> &str {
        match self {
            Client::Rust(w) => &w.name,
            Client::Ts(t) => &t.name,
        }
    }

    /// The cache as the client holds it now.
    pub async fn cache(&mut self) -> Result<Cache, String> {
        match self {
            Client::Rust(w) => Ok(w.cache()),
            Client::Ts(t) => Ok(t.dump().await?.cache),
        }
    }

    /// What the client reports of its server being cut off from its sources: since
    /// when, or `None` while the server is current. The Rust watcher says it on
    /// stderr (its last such line counts; the time to the second), the TypeScript
    /// client in its status.
    pub async fn cut_off_since(&mut self) -> Result<Option<SystemTime>, String> {
        match self {
            Client::Rust(w) => Ok(w.cut_off_since()),
            Client::Ts(t) => {
                let status = t.dump().await?.status;
                Ok(status["serverDisconnectedSince"]
                    .as_u64()
                    .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms)))
            }
        }
    }

    /// The tail of what the client logged, for a failure's message.
    pub fn log_tail(&self) -> String {
        let (name, log) = match self {
            Client::Rust(w) => (&w.name, &w.log),
            Client::Ts(t) => (&t.name, &t.log),
        };
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<_> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        format!("--- {name} ({}) ---\n{tail}", log.display())
    }
}

/// `configwatch watch PREFIX` inside a namespace: every line it prints is applied
/// to its cache as it comes.
pub struct Watcher {
    pub name: String,
    cache: Arc<Mutex<Cache>>,
    log: PathBuf,
    _child: Child,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Watcher {
    pub fn start(
        ns: &Netns,
        bin: &Path,
        name: &str,
        url: &str,
        token: &str,
        prefix: &str,
        log: PathBuf,
    ) -> Watcher {
        let stderr = std::fs::File::create(&log).expect("the watcher's log");
        let mut command = Command::from(ns.command(bin));
        command
            .args(["watch", prefix, "--server", url])
            .env("CONFIGWATCH_TOKEN", token)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true);
        let mut child = command.spawn().expect("start configwatch watch");
        let stdout = child.stdout.take().expect("the watcher's stdout");
        let cache = Arc::new(Mutex::new(Cache::new()));
        let filled = cache.clone();
        let reader = tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(change) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                let (Some(key), Some(version)) =
                    (change["key"].as_str(), change["version"].as_u64())
                else {
                    continue;
                };
                let mut cache = filled.lock().unwrap();
                if change["deleted"] == json!(true) {
                    cache.remove(key);
                } else {
                    cache.insert(key.to_owned(), (version, change["value"].clone()));
                }
            }
        });
        Watcher {
            name: name.to_owned(),
            cache,
            log,
            _child: child,
            reader,
        }
    }

    pub fn cache(&self) -> Cache {
        self.cache.lock().unwrap().clone()
    }

    /// Since when the command last said the server is cut off from its sources
    /// (`... is cut off from its sources since RFC3339: ...` on stderr), unless it
    /// said after that that the server is current again.
    fn cut_off_since(&self) -> Option<SystemTime> {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let last = log
            .lines()
            .rev()
            .find(|l| l.contains(CUT_OFF) || l.contains("is current with its sources again"))?;
        let (_, after) = last.split_once(CUT_OFF)?;
        // "2026-11-26T10:15:00Z: changes made since may be missing"
        let time = after.split_whitespace().next()?.trim_end_matches(':');
        humantime::parse_rfc3339(time).ok()
    }
}

/// What `configwatch watch` prints before the time a server is cut off since.
const CUT_OFF: &str = "is cut off from its sources since ";

/// Node.js and the built convergence driver of the TypeScript client.
pub struct TsDriver {
    pub node: String,
    pub script: PathBuf,
}

impl TsDriver {
    /// The driver, or why it cannot run (not built, or no Node.js): the suite fails
    /// then, as the convergence test does (tests/run builds it first).
    pub fn find() -> Result<TsDriver, String> {
        let package = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/typescript");
        let script = package.join("dist/test/convergence-client.js");
        if !script.is_file() {
            return Err(format!(
                "{} is missing: run `npm ci && npm run build` in clients/typescript \
                 (tests/run does it)",
                script.display()
            ));
        }
        let node = std::env::var("CONFIGWATCH_NODE").unwrap_or_else(|_| "node".into());
        match std::process::Command::new(&node).arg("--version").output() {
            Ok(out) if out.status.success() => Ok(TsDriver { node, script }),
            _ => Err(format!(
                "cannot run `{node}`: Node.js runs the TypeScript clients (or set CONFIGWATCH_NODE)"
            )),
        }
    }
}

/// A dump of the TypeScript client.
pub struct TsDump {
    pub cache: Cache,
    /// Initial states received, by mode (`full`, `diff`, `resumed`).
    pub syncs: BTreeMap<String, u64>,
    /// The client's status object, as the driver printed it.
    pub status: Value,
}

/// The TypeScript client as a driver process inside a namespace.
pub struct TsClient {
    pub name: String,
    log: PathBuf,
    _child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    next_id: u64,
}

impl TsClient {
    /// Starts the driver with `idle` as the client's idle timeout and waits until it
    /// says it started.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        ns: &Netns,
        driver: &TsDriver,
        name: &str,
        url: &str,
        token_file: &Path,
        prefix: &str,
        idle: Duration,
        log: PathBuf,
    ) -> TsClient {
        let stderr = std::fs::File::create(&log).expect("the driver's log");
        let mut command = Command::from(ns.command(&driver.node));
        command
            .arg(&driver.script)
            .args(["--address", url, "--tenant", super::TENANT, "--token-file"])
            .arg(token_file)
            .args(["--prefix", prefix])
            .args(["--idle-timeout-ms", &idle.as_millis().to_string()])
            .args(["--backoff-initial-ms", "100", "--backoff-max-ms", "1000"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true);
        let mut child = command.spawn().expect("start the TypeScript driver");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut client = TsClient {
            name: name.to_owned(),
            log,
            _child: child,
            stdin,
            stdout,
            next_id: 0,
        };
        let first = client.line(Duration::from_secs(30)).await;
        assert_eq!(first["type"], json!("started"), "{name}: {first}");
        client
    }

    async fn line(&mut self, within: Duration) -> Value {
        let line = tokio::time::timeout(within, self.stdout.next_line())
            .await
            .unwrap_or_else(|_| panic!("{}: no answer within {within:?}", self.name))
            .unwrap_or_else(|e| panic!("{}: {e}", self.name))
            .unwrap_or_else(|| panic!("{}: the driver exited", self.name));
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{}: {e} in {line:?}", self.name))
    }

    /// The client's cache, counters and status.
    pub async fn dump(&mut self) -> Result<TsDump, String> {
        self.next_id += 1;
        let id = self.next_id;
        let request = format!("{}\n", json!({ "id": id, "cmd": "dump" }));
        self.stdin
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("{}: {e}", self.name))?;
        let reply = loop {
            let reply = self.line(Duration::from_secs(10)).await;
            if reply["id"] == json!(id) {
                break reply;
            }
        };
        let mut cache = Cache::new();
        for (key, entry) in reply["entries"].as_object().into_iter().flatten() {
            let version = entry["version"].as_u64().unwrap_or_default();
            cache.insert(key.clone(), (version, entry["value"].clone()));
        }
        let syncs = reply["counts"]["syncs"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(mode, n)| (mode.clone(), n.as_u64().unwrap_or_default()))
            .collect();
        let violations = &reply["violations"];
        if violations.as_array().is_some_and(|v| !v.is_empty()) {
            return Err(format!("{}: changes out of order: {violations}", self.name));
        }
        Ok(TsDump {
            cache,
            syncs,
            status: reply["status"].clone(),
        })
    }
}

/// Whether `cache` holds exactly `state`; the difference otherwise.
pub fn difference(cache: &Cache, state: &State) -> Option<String> {
    if cache == state {
        return None;
    }
    let mut out = Vec::new();
    for (key, held) in cache {
        match state.get(key) {
            Some(want) if want == held => {}
            Some((v, _)) => out.push(format!("{key}: holds v{}, origin v{v}", held.0)),
            None => out.push(format!("{key}: holds v{}, origin has none", held.0)),
        }
    }
    for (key, (v, _)) in state {
        if !cache.contains_key(key) {
            out.push(format!("{key}: missing (origin v{v})"));
        }
    }
    Some(out.join("; "))
}
