//! The domain's data: who owns configuration (a [`Scope`]) and what one key holds
//! (an [`Entry`]). Nothing here knows about protobuf, gRPC or AWS.

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest accepted tenant or service id.
pub const MAX_ID_BYTES: usize = 128;

/// Whose configuration: a tenant, optionally narrowed to one service of it.
///
/// Built only from a validated token (see [`crate::auth`]), never from a request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope {
    tenant: Arc<str>,
    service: Option<Arc<str>>,
}

/// Why a tenant or service id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{what} id {id:?} is not valid: use 1 to {MAX_ID_BYTES} characters of letters, digits, '_', '-' and '.', not starting with '.'"
)]
pub struct IdError {
    pub what: &'static str,
    pub id: String,
}

/// An invalid id as an error quotes it: its first [`MAX_ID_BYTES`] bytes (at a
/// character boundary), so a refusal stays small whatever the caller sent.
fn quoted_id(id: &str) -> String {
    if id.len() <= MAX_ID_BYTES {
        return id.to_owned();
    }
    let mut end = MAX_ID_BYTES;
    while !id.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &id[..end], id.len())
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_BYTES
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

impl Scope {
    /// A tenant-wide scope. The id must be safe to embed in a DynamoDB partition key
    /// and a Parameter Store path, so it cannot contain `/`, `#`, `|` or spaces.
    pub fn tenant(tenant: &str) -> Result<Self, IdError> {
        Self::new(tenant, None)
    }

    pub fn new(tenant: &str, service: Option<&str>) -> Result<Self, IdError> {
        if !valid_id(tenant) {
            return Err(IdError {
                what: "tenant",
                id: quoted_id(tenant),
            });
        }
        let service = match service {
            None => None,
            Some(s) if valid_id(s) => Some(Arc::from(s)),
            Some(s) => {
                return Err(IdError {
                    what: "service",
                    id: quoted_id(s),
                });
            }
        };
        Ok(Scope {
            tenant: Arc::from(tenant),
            service,
        })
    }

    pub fn tenant_id(&self) -> &str {
        &self.tenant
    }

    pub fn service(&self) -> Option<&str> {
        self.service.as_deref()
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.service {
            None => write!(f, "{}", self.tenant),
            Some(s) => write!(f, "{}/{}", self.tenant, s),
        }
    }
}

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

pub fn now_millis() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

/// One key's state at one version: a value, or a tombstone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: Arc<str>,
    /// Grows with every write of the key, deletes included; 1 for the first write.
    pub version: u64,
    /// Compact JSON text. `None` for tombstones, and for secrets anywhere but the
    /// answer to a `Get` (secrets are never cached or pushed).
    pub value: Option<Arc<str>>,
    pub secret: bool,
    pub deleted: bool,
    pub updated_at: Millis,
    /// The tenant revision at which the hub applied this version; 0 until applied.
    pub revision: u64,
}

impl Entry {
    pub fn live(key: &str, version: u64, value: &str, updated_at: Millis) -> Self {
        Entry {
            key: Arc::from(key),
            version,
            value: Some(Arc::from(value)),
            secret: false,
            deleted: false,
            updated_at,
            revision: 0,
        }
    }

    pub fn tombstone(key: &str, version: u64, updated_at: Millis) -> Self {
        Entry {
            key: Arc::from(key),
            version,
            value: None,
            secret: false,
            deleted: true,
            updated_at,
            revision: 0,
        }
    }

    /// The same entry with a secret's value withheld.
    pub fn without_secret(mut self) -> Self {
        if self.secret {
            self.value = None;
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids_cannot_escape_their_partition_or_path() {
        assert!(Scope::tenant("acme-corp").is_ok());
        assert!(Scope::new("acme", Some("orders.v2")).is_ok());
        for bad in ["", "a/b", "TENANT#x", "a|SERVICE#b", "..", ".hidden", "a b"] {
            assert!(Scope::tenant(bad).is_err(), "{bad}");
        }
        assert!(Scope::new("acme", Some("x/y")).is_err());
        assert!(Scope::tenant(&"t".repeat(129)).is_err());
    }
    /// The request fuzz target's refusal-size check: a Get naming a 3,000-byte
    /// tenant was refused with a 3,110-byte message that quoted all of it (gRPC
    /// carries the message in metadata, limited to 8 KiB in all).
    #[test]
    fn refusals_quote_long_ids_shortened() {
        let long = "x".repeat(3000);
        let e = Scope::tenant(&long)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.len() < 400 && e.contains("(3000 bytes)"), "{e}");
        let e = Scope::new("acme", Some(&"é".repeat(1000)))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.len() < 400 && e.contains("service id"), "{e}");
        let e = Scope::tenant("a b")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains(r#""a b""#), "{e}");
    }
}
