//! The servers of the topology, one network namespace each: the origin (embedded
//! store), serving its clients on the namespace's end of a link of its own.
//!
//! Boundary: starts servers in their namespaces; knows the `serve`
//! and `token` command lines, nothing of the clients.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;

use configwatch_test_support::{Link, Netns, Scrape, ServerProcess, mint_token, temp_dir};
use tempfile::TempDir;

/// How often an idle Watch gets a progress message (a client's idle timeout must
/// be longer).
pub const PROGRESS: &str = "1s";

/// One server in a namespace of its own.
pub struct Tier {
    pub name: String,
    pub server: ServerProcess,
    pub dir: TempDir,
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
            _ns: ns,
        }
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
