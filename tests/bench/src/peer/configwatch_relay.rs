//! A configwatch relay (`serve --upstream`) started in front of a configwatch
//! server: an origin or another relay. It gets the origin's signing key (so the
//! clients' tokens the origin signed are valid on it) and a relay credential the
//! origin signed, and serves its admin listener on a port of its own.
//!
//! Knows how to start and reach a relay process; nothing of the workloads.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::configwatch::listening;
use super::{Binaries, Server};
use crate::process::{Launch, Process, free_port, temp_dir};

/// The file of the origin's data directory that signs every token.
const KEY_FILE: &str = "signing-key.pem";

/// A running relay: its process, its gRPC address and its admin listener.
pub struct Relay {
    pub server: Server,
    pub admin: SocketAddr,
}

impl Relay {
    /// Starts a relay whose upstream is `upstream`; `origin_dir` is the data
    /// directory of the tree's origin (its key signs the relay's credential and every
    /// client's token). Returns when the relay accepts calls.
    pub async fn start(bins: &Binaries, upstream: SocketAddr, origin_dir: &Path) -> Result<Relay> {
        let dir = temp_dir("relay")?;
        std::fs::copy(origin_dir.join(KEY_FILE), dir.join(KEY_FILE))
            .with_context(|| format!("copying {KEY_FILE} from the origin"))?;
        let token_file = dir.join("upstream-token");
        std::fs::write(&token_file, relay_token(&bins.configwatch, origin_dir)?)?;
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let mut args: Vec<OsString> = vec!["serve".into(), "--upstream".into()];
        args.push(format!("http://{upstream}").into());
        args.push("--upstream-token-file".into());
        args.push(token_file.into());
        args.extend(["--listen".into(), addr.to_string().into()]);
        args.extend(["--admin-listen".into(), admin.to_string().into()]);
        args.extend(["--log".into(), "warn".into()]);
        args.push("--data-dir".into());
        args.push(dir.clone().into());
        let launch = Launch {
            program: bins.configwatch.clone(),
            args,
            talks: true,
            missing_hint: "build it: cargo build --release -p configwatch",
        };
        let mut server = Server {
            process: Process::start(launch, dir)?,
            addr,
        };
        listening(&mut server).await?;
        Ok(Relay { server, admin })
    }
}

/// A relay credential signed with the key in `origin_dir`.
fn relay_token(bin: &Path, origin_dir: &Path) -> Result<String> {
    let output = Command::new(bin)
        .arg("token")
        .arg("--data-dir")
        .arg(origin_dir)
        .args(["--role", "relay", "--ttl", "2h", "--subject", "bench-relay"])
        .output()
        .with_context(|| format!("{} token --role relay", bin.display()))?;
    if !output.status.success() {
        bail!("{} token --role relay: {}", bin.display(), output.status);
    }
    Ok(String::from_utf8(output.stdout)?.trim().to_string())
}
