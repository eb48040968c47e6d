//! Network namespaces for tests that need real links: each [`Netns`] is a namespace
//! of its own (loopback up), joined to the host namespace by one or more veth pairs
//! ([`Link`]), each pair on a /30 subnet of its own (the host end `.1`, the
//! namespace's end `.2`). A test runs processes inside with [`Netns::command`]
//! (`ip netns exec`), and partitions a namespace by taking one of its links down.
//!
//! Why no bridge and no routes between namespaces: a namespace reaches only the host
//! addresses at the ends of its own links, never another namespace directly. Traffic
//! from one namespace to another goes through a process in the host namespace (a
//! [`crate::lossy::LossyProxy`] listening on the host end of a link), which is where
//! a test adds delay and loss anyway (this kernel has no `netem`). So the host needs
//! no IP forwarding, no firewall rule and no sysctl change, and a namespace with two
//! links (one towards its upstream, one towards its clients) can lose one while the
//! other stays up.
//!
//! Names are `cwns-PID-N` for namespaces and `cwhPID-N` / `cwnPID-N` for the two
//! ends of a veth pair (PID: this test process; N: a counter), so concurrent runs
//! never collide, and everything is removed when the [`Netns`] is dropped, on a
//! panic too. A run killed before it could clean up is swept by the next run: names
//! of a process that no longer exists are removed.
//!
//! Boundary: drives `ip` (iproute2) as root; knows nothing of what runs inside.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

/// The prefix of every namespace this module makes.
const NS_PREFIX: &str = "cwns-";
/// The prefixes of the host and namespace ends of every veth pair it makes.
const HOST_END: &str = "cwh";
const NS_END: &str = "cwn";

/// Links per process (each takes a /30 of the process's /24).
const LINKS_PER_RUN: u32 = 64;

/// Namespaces and links made by this process so far.
static NAMESPACES: AtomicU32 = AtomicU32::new(0);
static LINKS: AtomicU32 = AtomicU32::new(0);

/// A network namespace with its links to the host; removed (with its links) when
/// dropped.
pub struct Netns {
    name: String,
    links: Mutex<Vec<Link>>,
}

/// One veth pair between the host namespace and a [`Netns`]: `host` is the host
/// end's address, `ns` the namespace end's. Cheap to clone; the pair lives as long
/// as its namespace.
#[derive(Debug, Clone)]
pub struct Link {
    pub host: Ipv4Addr,
    pub ns: Ipv4Addr,
    host_dev: String,
}

/// Runs `ip ARGS`; the error says what failed and what `ip` said.
fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip`: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The effective user id, from /proc (no libc here).
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

impl Netns {
    /// Whether this machine lets a test make namespaces: root, `ip` present, and a
    /// namespace with a veth link can be made and removed. The error is one line
    /// saying why not, for a suite to print when it skips. Checked once per process.
    pub fn available() -> Result<(), String> {
        static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
        CHECKED
            .get_or_init(|| {
                if effective_uid() != Some(0) {
                    return Err("not running as root (network namespaces need root)".into());
                }
                ip(&["-V"]).map_err(|e| format!("iproute2 is not usable: {e}"))?;
                let probe =
                    Netns::try_new().map_err(|e| format!("cannot make a namespace: {e}"))?;
                probe
                    .try_link()
                    .map_err(|e| format!("cannot make a veth link: {e}"))?;
                Ok(())
            })
            .clone()
    }

    /// A new namespace with its loopback up; panics when it cannot be made (check
    /// [`Netns::available`] first).
    pub fn create() -> Netns {
        Netns::try_new().unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_new() -> Result<Netns, String> {
        sweep_dead_runs();
        let name = format!(
            "{NS_PREFIX}{}-{}",
            std::process::id(),
            NAMESPACES.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name])?;
        let ns = Netns {
            name,
            links: Mutex::new(Vec::new()),
        };
        ip(&["-n", &ns.name, "link", "set", "dev", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (for `ip -n NAME`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A new veth pair from the host to this namespace, up, with its /30 addresses;
    /// panics when it cannot be made.
    pub fn link(&self) -> Link {
        self.try_link().unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_link(&self) -> Result<Link, String> {
        let n = LINKS.fetch_add(1, Ordering::Relaxed);
        let (host, ns) = subnet(std::process::id(), n)?;
        let pid = std::process::id();
        let host_dev = format!("{HOST_END}{pid}-{n}");
        let ns_dev = format!("{NS_END}{pid}-{n}");
        ip(&[
            "link", "add", &host_dev, "type", "veth", "peer", "name", &ns_dev, "netns", &self.name,
        ])?;
        let link = Link {
            host,
            ns,
            host_dev: host_dev.clone(),
        };
        // Owned from here: removed with the namespace even if a step below fails.
        self.links
            .lock()
            .map_err(|_| "the link list is poisoned")?
            .push(link.clone());
        ip(&["addr", "add", &format!("{host}/30"), "dev", &host_dev])?;
        ip(&["link", "set", "dev", &host_dev, "up"])?;
        let n = &self.name;
        ip(&["-n", n, "addr", "add", &format!("{ns}/30"), "dev", &ns_dev])?;
        ip(&["-n", n, "link", "set", "dev", &ns_dev, "up"])?;
        Ok(link)
    }

    /// `ip netns exec NAME PROGRAM`: a command that runs `program` inside this
    /// namespace (add its arguments, environment and stdio as usual).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // The host ends first: a process still alive inside would otherwise keep
        // the namespace, and with it the pair, after `netns del`.
        let links = match self.links.get_mut() {
            Ok(links) => std::mem::take(links),
            Err(poisoned) => std::mem::take(poisoned.into_inner()),
        };
        for link in links {
            let _ = ip(&["link", "del", "dev", &link.host_dev]);
        }
        let _ = ip(&["netns", "del", &self.name]);
    }
}

impl Link {
    /// The namespace end's address with `port`.
    pub fn ns_addr(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.ns, port))
    }

    /// The host end's address with `port` (0: any free port, for a listener).
    pub fn host_addr(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.host, port))
    }

    /// Takes the link down (its host end; the namespace's end loses its carrier):
    /// packets either way are dropped, connections over it stall, new ones time
    /// out. Nothing is reset: a partition, not a peer that went away.
    pub fn down(&self) {
        ip(&["link", "set", "dev", &self.host_dev, "down"]).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Brings the link up again; its addresses and routes come back with it.
    pub fn up(&self) {
        ip(&["link", "set", "dev", &self.host_dev, "up"]).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// The host and namespace addresses of link `n` of process `pid`: a /30 in the
/// process's own /24 of 10.64.0.0/12 (`pid` modulo 4096 picks it), refused when the
/// host already has a route into it (another run, or the machine's own network).
fn subnet(pid: u32, n: u32) -> Result<(Ipv4Addr, Ipv4Addr), String> {
    if n >= LINKS_PER_RUN {
        return Err(format!(
            "more than {LINKS_PER_RUN} links in one test process"
        ));
    }
    let block = pid % 4096;
    let base = Ipv4Addr::new(
        10,
        64 + (block / 256) as u8,
        (block % 256) as u8,
        (n * 4) as u8,
    );
    let routes = ip(&[
        "-4",
        "route",
        "show",
        "table",
        "all",
        "to",
        "match",
        &format!("{base}/30"),
    ])?;
    let taken = routes
        .lines()
        .find(|r| !r.starts_with("default") && !r.trim().is_empty());
    if let Some(route) = taken {
        return Err(format!(
            "{base}/30 is already routed on this host ({route})"
        ));
    }
    let o = base.octets();
    Ok((
        Ipv4Addr::new(o[0], o[1], o[2], o[3] + 1),
        Ipv4Addr::new(o[0], o[1], o[2], o[3] + 2),
    ))
}

/// Removes the namespaces and links of test processes that no longer exist (a run
/// killed before its drops ran). Names of live processes are left alone. Once per
/// process.
fn sweep_dead_runs() {
    static SWEPT: OnceLock<()> = OnceLock::new();
    SWEPT.get_or_init(|| {
        let dead = |pid: &str| {
            pid.parse::<u32>().is_ok_and(|p| {
                p != std::process::id() && !std::path::Path::new(&format!("/proc/{p}")).exists()
            })
        };
        if let Ok(list) = ip(&["netns", "list"]) {
            for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
                let pid = name
                    .strip_prefix(NS_PREFIX)
                    .and_then(|r| r.split('-').next());
                if pid.is_some_and(dead) {
                    let _ = ip(&["netns", "del", name]);
                }
            }
        }
        if let Ok(list) = ip(&["-o", "link", "show"]) {
            for line in list.lines() {
                // "7: cwh123-4@if6: <...>"
                let Some(dev) = line.split(": ").nth(1) else {
                    continue;
                };
                let dev = dev.split('@').next().unwrap_or(dev);
                let pid = dev.strip_prefix(HOST_END).and_then(|r| r.split('-').next());
                if pid.is_some_and(dead) {
                    let _ = ip(&["link", "del", "dev", dev]);
                }
            }
        }
    });
}
