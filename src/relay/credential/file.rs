//! A secret kept in a file and read again whenever the file changes, so it can be
//! rotated without a restart (a mounted secret, a sidecar that renews it): the
//! relay's upstream token itself ([`TokenFile`]), or the Cognito refresh token the
//! relay exchanges for one (see `cognito`).
//!
//! Boundary: the file, its text and the header made of it. The text is never
//! logged and never in an error.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use tonic::metadata::AsciiMetadataValue;

use super::{CredentialError, SecretFile};

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
    text: String,
    stamp: Stamp,
}

/// A token in a file: its last good text, read again when the file changes.
pub struct WatchedFile {
    path: PathBuf,
    kind: SecretFile,
    held: Mutex<Held>,
}

impl WatchedFile {
    /// Reads the file: a missing, empty or malformed file is an error at start.
    pub fn open(path: &Path, kind: SecretFile) -> Result<WatchedFile, CredentialError> {
        let (text, stamp) = read(path, kind)?;
        Ok(WatchedFile {
            path: path.to_owned(),
            kind,
            held: Mutex::new(Held { text, stamp }),
        })
    }

    /// The token: the file is read again when it changed since the last read (a
    /// `stat` per call otherwise). While a changed file cannot be read (it is being
    /// replaced, say), the last token read is kept and the problem logged.
    pub fn current(&self) -> String {
        let mut held = self
            .held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if self.changed_from(held.stamp) {
            match read(&self.path, self.kind) {
                Ok((text, stamp)) => {
                    if text != held.text {
                        tracing::info!(path = %self.path.display(), "the {} changed; using the new token", self.kind.name());
                    }
                    *held = Held { text, stamp };
                }
                Err(e) => {
                    tracing::warn!(error = %e, "keeping the last token read from the {}", self.kind.name());
                }
            }
        }
        held.text.clone()
    }

    /// Whether the file changed since it was last read.
    pub fn changed(&self) -> bool {
        let stamp = self
            .held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .stamp;
        self.changed_from(stamp)
    }

    fn changed_from(&self, stamp: Stamp) -> bool {
        std::fs::metadata(&self.path)
            .map(|meta| Stamp::of(&meta) != stamp)
            .unwrap_or(true)
    }
}

/// The relay's upstream token, from its file (`--upstream-token-file`).
pub struct TokenFile(WatchedFile);

impl TokenFile {
    pub fn open(path: &Path) -> Result<TokenFile, CredentialError> {
        WatchedFile::open(path, SecretFile::UpstreamToken).map(TokenFile)
    }

    /// The `authorization` header to send, of the file's current token.
    pub fn header(&self) -> Result<AsciiMetadataValue, CredentialError> {
        bearer(&self.0.current()).ok_or_else(|| CredentialError::NotAToken {
            kind: SecretFile::UpstreamToken,
            path: self.0.path.clone(),
        })
    }
}

/// `Bearer <token>` as a header value; `None` for text no header can carry.
pub(super) fn bearer(token: &str) -> Option<AsciiMetadataValue> {
    format!("Bearer {token}").parse().ok()
}

fn read(path: &Path, kind: SecretFile) -> Result<(String, Stamp), CredentialError> {
    let unreadable = |e: std::io::Error| CredentialError::Unreadable {
        kind,
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let not_a_token = || CredentialError::NotAToken {
        kind,
        path: path.to_owned(),
    };
    let meta = std::fs::metadata(path).map_err(unreadable)?;
    // A token is a few KiB at most: a larger file is not one.
    if meta.len() > 64 << 10 {
        return Err(not_a_token());
    }
    let text = std::fs::read_to_string(path).map_err(unreadable)?;
    let token = text.trim();
    if token.is_empty() {
        return Err(CredentialError::Empty {
            kind,
            path: path.to_owned(),
        });
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(not_a_token());
    }
    Ok((token.to_owned(), Stamp::of(&meta)))
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
            TokenFile::open(&path),
            Err(CredentialError::Unreadable { .. })
        ));
        std::fs::write(&path, "  \n")?;
        let empty = TokenFile::open(&path).err().map(|e| e.to_string());
        assert!(empty.is_some_and(|e| e.contains("--role relay")));
        std::fs::write(&path, "first\n")?;
        let credential = TokenFile::open(&path)?;
        assert_eq!(credential.header()?, "Bearer first");
        // Rotated the way a mounted secret is: a new file renamed over the old.
        let next = dir.path().join("token.new");
        std::fs::write(&next, "second")?;
        std::fs::rename(&next, &path)?;
        assert_eq!(credential.header()?, "Bearer second");
        // Gone for a moment (being replaced): the last token stays in use.
        std::fs::remove_file(&path)?;
        assert_eq!(credential.header()?, "Bearer second");
        std::fs::write(&path, "bad\u{7}token")?;
        assert_eq!(credential.header()?, "Bearer second");
        std::fs::write(&path, "third")?;
        assert_eq!(credential.header()?, "Bearer third");
        Ok(())
    }

    #[test]
    fn a_refresh_token_file_says_what_it_is_when_it_is_wrong()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("refresh");
        std::fs::write(&path, "\n")?;
        let empty = WatchedFile::open(&path, SecretFile::CognitoRefreshToken)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(empty.contains("Cognito refresh token file"), "{empty}");
        std::fs::write(&path, "abc\n")?;
        let file = WatchedFile::open(&path, SecretFile::CognitoRefreshToken)?;
        assert!(!file.changed());
        assert_eq!(file.current(), "abc");
        std::fs::write(&path, "abcd")?;
        assert!(file.changed());
        assert_eq!(file.current(), "abcd");
        assert!(!file.changed());
        Ok(())
    }
}
