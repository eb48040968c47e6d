//! Store identity: a short name for one store's lifetime.
//!
//! A store gets a random identity when it is created, and keeps it while its data
//! lives. Clients receive it (`GetResponse.store_id`, `WatchResponse.store_id`) and
//! send back the one they hold (`WatchRequest.known_store_id`): versions a client
//! holds from another store mean nothing here, so a Watch naming another identity
//! gets the full state, and a client can tell "the store was recreated" from "every
//! key was deleted".
//!
//! The embedded store keeps its identity twice: inside the database and in a marker
//! file beside it ([`MARKER_FILE`]). The marker is what lets start-up tell a new data
//! directory from an initialised one whose database is gone, empty or replaced.
//!
//! On AWS the identity is derived from the DynamoDB table's own identity (its
//! `TableId`, or its ARN and creation time where the API gives no id) and the
//! Parameter Store root, so a table that is deleted and created again under the same
//! name gives a new identity.

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The file in the data directory that names the store the directory holds.
pub const MARKER_FILE: &str = "store-id";

/// Crockford's base32 alphabet (no I, L, O, U): case-insensitive and unambiguous
/// when read aloud or copied by hand.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Characters in an identity: 128 bits in base32.
pub const LEN: usize = 26;

/// One store's identity: 128 bits, written as 26 base32 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StoreId(String);

impl StoreId {
    /// A new random identity.
    pub fn random() -> Self {
        Self::from_bits(rand::random())
    }

    /// An identity derived from `parts` (for stores whose identity lives elsewhere,
    /// such as a DynamoDB table's): the same parts always give the same identity.
    pub fn derived(parts: &[&str]) -> Self {
        let mut h = Sha256::new();
        h.update(b"configwatch store id\0");
        for p in parts {
            h.update((p.len() as u64).to_be_bytes());
            h.update(p.as_bytes());
        }
        let digest = h.finalize();
        let mut bits = [0u8; 16];
        bits.copy_from_slice(&digest[..16]);
        Self::from_bits(u128::from_be_bytes(bits))
    }

    fn from_bits(bits: u128) -> Self {
        // 26 characters of 5 bits hold 130: the first character carries 3 bits.
        let text = (0..LEN)
            .rev()
            .map(|i| ALPHABET[((bits >> (i * 5)) & 31) as usize] as char)
            .collect();
        StoreId(text)
    }

    /// Reads an identity as written by [`StoreId::as_str`]; `None` if it is not one.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let ok = text.len() == LEN
            && text.bytes().all(|b| ALPHABET.contains(&b))
            && text.as_bytes()[0] <= b'7';
        ok.then(|| StoreId(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StoreId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why the marker file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum MarkerError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} does not hold a store identity (26 characters of base32); restore it, or delete it to let the database's own identity be used"
    )]
    Invalid { path: PathBuf },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The identity named by the marker in `dir`, or `None` when there is no marker.
pub fn read_marker(dir: &Path) -> Result<Option<StoreId>, MarkerError> {
    let path = dir.join(MARKER_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => StoreId::parse(&text)
            .map(Some)
            .ok_or(MarkerError::Invalid { path }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(MarkerError::Read { path, source }),
    }
}

/// Writes the marker in `dir` so that a crash at any moment leaves either the old
/// marker or the new one, complete: a temporary file, fsynced, renamed over the
/// marker, then the directory fsynced.
pub fn write_marker(dir: &Path, id: &StoreId) -> Result<(), MarkerError> {
    let path = dir.join(MARKER_FILE);
    let tmp = dir.join(format!("{MARKER_FILE}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(format!("{id}\n").as_bytes())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|source| MarkerError::Write {
        path: path.clone(),
        source,
    })
}

/// The identity of the AWS store: the table's identity and the Parameter Store
/// root. Reads the table's description (`TableId` where the API gives it, else its
/// ARN and creation time), so a recreated table gives a new identity.
pub async fn aws_store_id(
    dynamodb: &aws_sdk_dynamodb::Client,
    table: &str,
    ssm_root: &str,
) -> Result<StoreId, String> {
    let out = dynamodb
        .describe_table()
        .table_name(table)
        .send()
        .await
        .map_err(|e| {
            format!(
                "cannot describe the table '{table}' to derive the store identity: {}",
                aws_smithy_types::error::display::DisplayErrorContext(&e)
            )
        })?;
    let description = out
        .table()
        .ok_or_else(|| format!("DescribeTable of '{table}' returned no description"))?;
    let table_identity = match description.table_id() {
        Some(id) => format!("id:{id}"),
        None => {
            let created = description
                .creation_date_time()
                .map(|t| format!("{}.{:09}", t.secs(), t.subsec_nanos()))
                .ok_or_else(|| {
                    format!("DescribeTable of '{table}' gave neither TableId nor CreationDateTime")
                })?;
            format!("arn:{}@{created}", description.table_arn().unwrap_or(table))
        }
    };
    Ok(StoreId::derived(&["aws", &table_identity, ssm_root]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_are_26_base32_characters_and_parse_back() {
        for id in [
            StoreId::random(),
            StoreId::from_bits(0),
            StoreId::from_bits(u128::MAX),
        ] {
            assert_eq!(id.as_str().len(), LEN);
            assert_eq!(StoreId::parse(id.as_str()), Some(id.clone()));
            assert_eq!(StoreId::parse(&format!("{id}\n")), Some(id));
        }
        assert_ne!(StoreId::random(), StoreId::random());
        assert_eq!(StoreId::parse(""), None);
        assert_eq!(StoreId::parse("not an id"), None);
        assert_eq!(StoreId::parse(&"Z".repeat(LEN)), None, "above 128 bits");
        assert_eq!(StoreId::parse(&"0".repeat(LEN + 1)), None);
    }

    #[test]
    fn derived_identities_follow_every_part() {
        let a = StoreId::derived(&["aws", "id:1", "/config-service"]);
        assert_eq!(a, StoreId::derived(&["aws", "id:1", "/config-service"]));
        assert_ne!(a, StoreId::derived(&["aws", "id:2", "/config-service"]));
        assert_ne!(a, StoreId::derived(&["aws", "id:1", "/other"]));
        // Parts are length-prefixed: moving a boundary changes the identity.
        assert_ne!(
            StoreId::derived(&["ab", "c"]),
            StoreId::derived(&["a", "bc"])
        );
    }

    #[test]
    fn the_marker_is_written_whole_and_read_back() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        assert_eq!(read_marker(dir.path())?, None);
        let id = StoreId::random();
        write_marker(dir.path(), &id)?;
        assert_eq!(read_marker(dir.path())?, Some(id.clone()));
        let other = StoreId::random();
        write_marker(dir.path(), &other)?;
        assert_eq!(read_marker(dir.path())?, Some(other));
        assert!(!dir.path().join(format!("{MARKER_FILE}.tmp")).exists());
        std::fs::write(dir.path().join(MARKER_FILE), "garbage")?;
        assert!(matches!(
            read_marker(dir.path()),
            Err(MarkerError::Invalid { .. })
        ));
        Ok(())
    }
}
