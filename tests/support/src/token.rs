//! Tokens minted by the binary's own `configwatch token` command, signed with the
//! key in a data directory (the one a server started on that directory uses).
//!
//! Boundary: runs the command and reads its output; knows nothing of token formats.

use std::path::Path;

use tokio::process::Command;

/// `configwatch token --tenant TENANT --role ROLE --ttl TTL --data-dir DATA_DIR`.
pub async fn mint_token(
    bin: &Path,
    data_dir: &Path,
    tenant: &str,
    role: &str,
    ttl: &str,
) -> Result<String, String> {
    let out = Command::new(bin)
        .args(["token", "--tenant", tenant, "--role", role, "--ttl", ttl])
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .await
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    if !out.status.success() {
        return Err(format!("configwatch token: {out:?}"));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
