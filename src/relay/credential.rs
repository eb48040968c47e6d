//! The relay's own credential: a token in a file, read again whenever the file
//! changes, so it can be rotated without a restart (a mounted secret, a sidecar
//! that renews it). It is what the relay's upstream Watches and key reads carry;
//! its clients' writes and secret reads carry their own tokens instead.
//!
//! Boundary: the file and the header made of it. Never logged, never in an error.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use tonic::metadata::AsciiMetadataValue;

/// Why the credential cannot be read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CredentialError {
    #[error("cannot read the upstream token file {path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error(
        "the upstream token file {path} holds no token: write a token with the relay role into it (configwatch token --role relay)"
    )]
    Empty { path: PathBuf },
    #[error(
        "the upstream token file {path} holds characters a token cannot have (a token is printable ASCII)"
    )]
    NotAToken { path: PathBuf },
}

/// What identifies one version of the file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    #[cfg(unix)]
    inode: u64,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        #[cfg(unix)]
        use std::os::unix::fs::MetadataExt as _;
        Stamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            #[cfg(unix)]
            inode: meta.ino(),
        }
    }
}

struct Held {
    header: AsciiMetadataValue,
    stamp: Stamp,
}

/// The relay's token, from its file.
pub struct Credential {
    path: PathBuf,
    held: Mutex<Held>,
}

impl Credential {
    /// Reads the file: a missing, empty or malformed file is an error at start.
    pub fn open(path: &Path) -> Result<Credential, CredentialError> {
        let (header, stamp) = read(path)?;
        Ok(Credential {
            path: path.to_owned(),
            held: Mutex::new(Held { header, stamp }),
        })
    }

    /// The `authorization` header to send: the file is read again when it changed
    /// since the last read (a `stat` per call otherwise). While a changed file
    /// cannot be read (it is being replaced, say), the last token read is kept and
    /// the problem logged.
    pub fn header(&self) -> AsciiMetadataValue {
        let mut held = self
            .held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let changed = std::fs::metadata(&self.path)
            .map(|meta| Stamp::of(&meta) != held.stamp)
            .unwrap_or(true);
        if changed {
            match read(&self.path) {
                Ok((header, stamp)) => {
                    if header != held.header {
                        tracing::info!(path = %self.path.display(), "upstream token file changed; using the new token");
                    }
                    *held = Held { header, stamp };
                }
                Err(e) => {
                    tracing::warn!(error = %e, "keeping the last upstream token read");
                }
            }
        }
        held.header.clone()
    }
}

fn read(path: &Path) -> Result<(AsciiMetadataValue, Stamp), CredentialError> {
    let unreadable = |e: std::io::Error| CredentialError::Unreadable {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let meta = std::fs::metadata(path).map_err(unreadable)?;
    // A token is a few KiB at most: a larger file is not one.
    if meta.len() > 64 << 10 {
        return Err(CredentialError::NotAToken {
            path: path.to_owned(),
        });
    }
    let text = std::fs::read_to_string(path).map_err(unreadable)?;
    let token = text.trim();
    if token.is_empty() {
        return Err(CredentialError::Empty {
            path: path.to_owned(),
        });
    }
    let header = format!("Bearer {token}")
        .parse::<AsciiMetadataValue>()
        .map_err(|_| CredentialError::NotAToken {
            path: path.to_owned(),
        })?;
    Ok((header, Stamp::of(&meta)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_read_again_when_the_file_changes_and_kept_while_it_is_unreadable()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("token");
        assert!(matches!(
            Credential::open(&path),
            Err(CredentialError::Unreadable { .. })
        ));
        std::fs::write(&path, "  \n")?;
        let empty = Credential::open(&path).err().map(|e| e.to_string());
        assert!(empty.is_some_and(|e| e.contains("--role relay")));
        std::fs::write(&path, "first\n")?;
        let credential = Credential::open(&path)?;
        assert_eq!(credential.header(), "Bearer first");
        // Rotated the way a mounted secret is: a new file renamed over the old.
        let next = dir.path().join("token.new");
        std::fs::write(&next, "second")?;
        std::fs::rename(&next, &path)?;
        assert_eq!(credential.header(), "Bearer second");
        // Gone for a moment (being replaced): the last token stays in use.
        std::fs::remove_file(&path)?;
        assert_eq!(credential.header(), "Bearer second");
        std::fs::write(&path, "bad\u{7}token")?;
        assert_eq!(credential.header(), "Bearer second");
        std::fs::write(&path, "third")?;
        assert_eq!(credential.header(), "Bearer third");
        Ok(())
    }
}
