//! The servers of the topology, one network namespace each: the origin (embedded
//! store) and relays. Each serves its clients on the namespace's end of a link of
//! its own; a relay also has a link towards its upstream (`uplink`), on whose host
//! end a lossy proxy forwards to the upstream's serving address. Taking a relay's
//! uplink down partitions it from its upstream while its own clients still reach it.
//!
//! Boundary: starts servers in their namespaces and their upstream proxies; knows
//! the `serve`
//! and `token` command lines, nothing of the clients.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;

use configwatch_test_support::{
    Link, Lossy, LossyProxy, Netns, Scrape, ServerProcess, mint_token, temp_dir,
};
use tempfile::TempDir;

/// How often an idle Watch gets a progress message (a client's idle timeout must
/// be longer).
pub const PROGRESS: &str = "1s";

/// One server in a namespace of its own.
pub struct Tier {
    pub name: String,
    pub server: ServerProcess,
    pub dir: TempDir,
    /// A relay's link towards its upstream.
    uplink: Option<Link>,
    /// The lossy proxy on the uplink's host end, to the upstream.
    upstream_proxy: Option<LossyProxy>,
    // Dropped last: the namespace outlives the processes and proxies in it.
    _ns: Netns,
}

impl Tier {
    /// The origin: `configwatch serve` on its embedded store.
    pub async fn origin(bin: &Path, logs: &Path) -> Tier {
        let ns = Netns::create();
        let serve = ns.link();
        let dir = temp_dir();
        let server = start(&ns, bin, &serve, dir.path(), &[], &logs.join("origin.log")).await;
        Tier {
            name: "origin".into(),
            server,
            dir,
            uplink: None,
            upstream_proxy: None,
            _ns: ns,
        }
    }

    /// A relay of `upstream`, reached through a proxy with the `lossy` path. It
    /// validates tokens with the origin's key (copied from `origin_dir`) and reaches
    /// its upstream with a relay credential minted there.
    pub async fn relay(
        bin: &Path,
        name: &str,
        upstream: &Tier,
        origin_dir: &Path,
        lossy: Lossy,
        logs: &Path,
    ) -> Tier {
        let ns = Netns::create();
        let serve = ns.link();
        let uplink = ns.link();
        let proxy = LossyProxy::start(uplink.host_addr(0), upstream.server.addr, lossy).await;
        let dir = temp_dir();
        std::fs::copy(
            origin_dir.join("signing-key.pem"),
            dir.path().join("signing-key.pem"),
        )
        .expect("the origin's signing key");
        let token_file = dir.path().join("upstream-token");
        std::fs::write(&token_file, relay_credential(bin, origin_dir).await)
            .expect("the relay's token file");
        let upstream_url = proxy.url();
        let token_file = token_file.to_string_lossy().into_owned();
        let args = [
            "--upstream",
            upstream_url.as_str(),
            "--upstream-token-file",
            token_file.as_str(),
        ];
        let log = logs.join(format!("{name}.log"));
        let server = start(&ns, bin, &serve, dir.path(), &args, &log).await;
        Tier {
            name: name.into(),
            server,
            dir,
            uplink: Some(uplink),
            upstream_proxy: Some(proxy),
            _ns: ns,
        }
    }

    /// The relay's link towards its upstream (panics for the origin).
    pub fn uplink(&self) -> &Link {
        self.uplink.as_ref().expect("a relay's uplink")
    }

    /// The proxy between the relay and its upstream (panics for the origin).
    pub fn upstream_proxy(&self) -> &LossyProxy {
        self.upstream_proxy
            .as_ref()
            .expect("a relay's upstream proxy")
    }

    /// The server's admin listener.
    pub fn admin(&self) -> SocketAddr {
        self.server.admin.expect("an admin listener")
    }

    /// One scrape of the server's metrics.
    pub async fn metrics(&self) -> Scrape {
        Scrape::take(self.admin()).await
    }
}

/// `configwatch token --role relay --data-dir ORIGIN_DIR`: a relay's credential.
async fn relay_credential(bin: &Path, origin_dir: &Path) -> String {
    let out = tokio::process::Command::new(bin)
        .args(["token", "--role", "relay", "--ttl", "1h", "--data-dir"])
        .arg(origin_dir)
        .output()
        .await
        .expect("configwatch token");
    assert!(
        out.status.success(),
        "configwatch token --role relay: {out:?}"
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A token for the test's tenant, signed with the origin's key in `origin_dir`.
pub async fn token(bin: &Path, origin_dir: &Path, role: &str) -> String {
    mint_token(bin, origin_dir, super::TENANT, role, "1h")
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// `configwatch serve` inside `ns`, listening (and its admin listener too) on the
/// namespace's end of `link`, progress every second, logging at `warn` into `log`.
async fn start(
    ns: &Netns,
    bin: &Path,
    link: &Link,
    dir: &Path,
    extra: &[&str],
    log: &Path,
) -> ServerProcess {
    let mut command = ns.command(bin);
    command
        .args(["serve", "--listen", &link.ns_addr(0).to_string()])
        .args(["--admin-listen", &link.ns_addr(0).to_string()])
        .args(["--progress-interval", PROGRESS, "--data-dir"])
        .arg(dir)
        .args(extra)
        .env("CONFIGWATCH_LOG", "warn")
        .stderr(Stdio::from(
            std::fs::File::create(log).expect("the server's log"),
        ));
    ServerProcess::start(command).await
}
