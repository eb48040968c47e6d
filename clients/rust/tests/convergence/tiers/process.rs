//! The three tiers' processes: the origin on the embedded store, relay 1 with the
//! origin as its upstream, relay 2 with relay 1 as its. Each process sits behind a
//! proxy for its clients, and a relay's upstream connection goes through a proxy of
//! its own, so that either link can be cut or frozen alone; a restart (on a new
//! port) points every proxy at the new process, so that every URL handed out stays
//! valid.
//!
//! Boundary: processes, their flags and data directories, proxies, the relays'
//! upstream metrics; nothing of the clients or the writes.

use super::*;

use configwatch_test_support::{Scrape, http_get};

pub(crate) const TIERS: usize = 3;

/// The tiers' names, by depth.
pub(crate) const NAMES: [&str; TIERS] = ["origin", "relay-1", "relay-2"];

/// The file in a data directory holding the key tokens are signed with; a relay
/// checks its clients' tokens with a copy of its upstream's.
const SIGNING_KEY: &str = "signing-key.pem";

/// One tier: its process, the proxy its clients use and, for a relay, the proxy its
/// upstream connection goes through (to the tier above).
pub(crate) struct Tier {
    pub(crate) depth: usize,
    pub(crate) server: Server,
    /// In front of the process, for its clients (and the tier below's uplink goes
    /// through its own proxy, not this one).
    pub(crate) front: Proxy,
    /// A relay's `--upstream`: a proxy in front of the tier above.
    pub(crate) uplink: Option<Proxy>,
    /// The process's own address now (the writer calls it directly).
    pub(crate) addr: watch::Sender<SocketAddr>,
}

impl Tier {
    pub(crate) fn name(&self) -> &'static str {
        NAMES[self.depth]
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.front.addr)
    }

    /// `configwatch_relay_upstream_syncs_total` of this relay process by mode
    /// (full, diff, resumed); `None` for the origin.
    pub(crate) async fn upstream_syncs(&self) -> Option<[u64; 3]> {
        let admin = self.server.process.as_ref()?.admin?;
        let scrape = Scrape::take(admin).await;
        let of = |mode: &str| {
            scrape.value(&format!(
                "configwatch_relay_upstream_syncs_total{{mode=\"{mode}\"}}"
            )) as u64
        };
        Some([of("full"), of("diff"), of("resumed")])
    }
}

impl Tier {
    /// Whether the relay says it is ready (`/readyz`), with its answer; `None` for
    /// the origin (no admin listener here).
    pub(crate) async fn ready(&self) -> Option<(bool, String)> {
        let admin = self.server.process.as_ref()?.admin?;
        let answer = http_get(admin, "/readyz").await;
        Some((
            answer.status == 200,
            format!("{} {}", answer.status, answer.body),
        ))
    }

    /// Whether this relay process's first upstream Watch failed before it had a
    /// state (its upstream was down as it started), by its log. The load waiting for
    /// it failed then, and the state that came later was taken by no load: the next
    /// load started the upstream Watch again, with a full state again (see the
    /// relay's `feed_for`).
    pub(crate) fn first_upstream_watch_failed(&self) -> bool {
        let log = std::fs::read_to_string(self.server.log()).unwrap_or_default();
        log.lines()
            .find(|l| l.contains("configwatch::relay::feed:"))
            .is_some_and(|l| l.contains("upstream watch failed"))
    }
}

/// The three tiers, and the relays' credential.
pub(crate) struct Tiers {
    pub(crate) tiers: Vec<Tier>,
    /// The file holding the relays' token (role relay).
    pub(crate) credential: PathBuf,
}

impl Tiers {
    /// Starts the origin, then each relay on the one above, data and logs under
    /// `dir`.
    pub(crate) async fn start(dir: &Path) -> Result<Tiers, String> {
        let credential = dir.join("relay.token");
        let mut tiers: Vec<Tier> = Vec::new();
        for (depth, name) in NAMES.iter().enumerate() {
            let home = dir.join(name);
            let data_dir = home.join("data");
            std::fs::create_dir_all(&data_dir).map_err(|e| format!("{name}: {e}"))?;
            let mut server = Server::new(data_dir.clone(), home);
            let uplink = match tiers.last() {
                None => None,
                Some(above) => {
                    // The origin made the key at its first start.
                    let origin = &tiers[0].server.data_dir;
                    std::fs::copy(origin.join(SIGNING_KEY), data_dir.join(SIGNING_KEY))
                        .map_err(|e| format!("{name}: copying the signing key: {e}"))?;
                    let to = *above.addr.borrow();
                    Some(Proxy::start(to).await.map_err(|e| format!("{name}: {e}"))?)
                }
            };
            if depth == 1 {
                write_relay_token(&tiers[0].server.data_dir, &credential).await?;
            }
            let flags = relay_flags(uplink.as_ref(), &credential);
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            let addr = server.start_with(4096, &flags).await?;
            let front = Proxy::start(addr)
                .await
                .map_err(|e| format!("{name}: {e}"))?;
            tiers.push(Tier {
                depth,
                server,
                front,
                uplink,
                addr: watch::channel(addr).0,
            });
        }
        Ok(Tiers { tiers, credential })
    }

    /// Each tier's process address, for the writer.
    pub(crate) fn addresses(&self) -> Vec<watch::Receiver<SocketAddr>> {
        self.tiers.iter().map(|t| t.addr.subscribe()).collect()
    }

    /// Starts tier `depth` again on its data directory (a new port), with a history
    /// of `history` changes, and points its clients' proxy and the uplink of the
    /// tier below at it.
    pub(crate) async fn restart(&mut self, depth: usize, history: usize) -> Result<(), String> {
        let flags = relay_flags(self.tiers[depth].uplink.as_ref(), &self.credential);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let tier = &mut self.tiers[depth];
        let addr = tier.server.start_with(history, &flags).await?;
        tier.front.retarget(addr);
        tier.addr.send_replace(addr);
        if let Some(below) = self.tiers.get(depth + 1)
            && let Some(uplink) = &below.uplink
        {
            uplink.retarget(addr);
        }
        Ok(())
    }

    /// The last lines of every tier's current log.
    pub(crate) fn log_tails(&self, lines: usize) -> String {
        self.tiers
            .iter()
            .map(|t| format!("--- {} ---\n{}", t.name(), t.server.log_tail(lines)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub(crate) async fn kill_all(&mut self) {
        for tier in self.tiers.iter_mut().rev() {
            tier.server.kill().await;
        }
    }
}

/// A relay's flags for an `uplink` (none without one: the origin).
fn relay_flags(uplink: Option<&Proxy>, credential: &Path) -> Vec<String> {
    match uplink {
        None => Vec::new(),
        Some(uplink) => vec![
            "--upstream".into(),
            format!("http://{}", uplink.addr),
            "--upstream-token-file".into(),
            credential.display().to_string(),
            "--admin-listen".into(),
            "127.0.0.1:0".into(),
            // What its upstream Watches do, in the log a failure shows.
            "--log".into(),
            "info,configwatch::relay=debug".into(),
        ],
    }
}

/// A relay credential signed with the origin's key, written into `file`.
async fn write_relay_token(origin_data: &Path, file: &Path) -> Result<(), String> {
    let out = Command::new(server_bin())
        .args(["token", "--role", "relay", "--ttl", "24h", "--data-dir"])
        .arg(origin_data)
        .output()
        .await
        .map_err(|e| format!("configwatch token --role relay: {e}"))?;
    if !out.status.success() {
        return Err(format!("configwatch token --role relay: {out:?}"));
    }
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    std::fs::write(file, token).map_err(|e| format!("{}: {e}", file.display()))
}
