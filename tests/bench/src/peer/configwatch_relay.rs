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

use super::configwatch::serve;
use super::{Binaries, Server};
use crate::process::{free_ports, temp_dir};

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
        let [addr, admin] = free_ports()?;
        let mut extra: Vec<OsString> = vec!["--upstream".into()];
        extra.push(format!("http://{upstream}").into());
        extra.push("--upstream-token-file".into());
        extra.push(token_file.into());
        let server = serve(bins, addr, Some(admin), extra, dir).await?;
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
