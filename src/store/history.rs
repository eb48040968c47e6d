//! A key's history, as every backend keeps it: each version of a key (within a
//! retention), who made it and why. The types here are what a write hands the
//! store ([`Audit`]) and what a history read returns ([`Version`], [`HistoryPage`]).
//!
//! Boundary: plain data and its limits. How a backend stores history (a redb
//! table, items in the key's DynamoDB partition, Parameter Store's own parameter
//! history) is the backend's; who may read it is the API's.

use std::time::Duration;

use crate::model::{Entry, Millis};

/// The most bytes a write's reason may have.
pub const MAX_REASON_BYTES: usize = 256;

/// Versions kept per key by default, the current one included.
pub const DEFAULT_MAX_VERSIONS: u32 = 100;

/// How long a version that is no longer current is kept by default.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(90 * 24 * 60 * 60);

/// The most versions one history read returns.
pub const MAX_PAGE_VERSIONS: usize = 1000;

/// Who made a write through configwatch, and why: kept with the version it makes.
/// Never the token itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Audit {
    /// The token's subject (`sub`).
    pub subject: String,
    /// The app client the token was issued to (Cognito: `aud` of an ID token,
    /// `client_id` of an access token), when the token names one.
    pub client_id: Option<String>,
    /// The instance that accepted the write.
    pub instance: String,
    /// The writer's reason, at most [`MAX_REASON_BYTES`].
    pub reason: Option<String>,
}

/// Where a version came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A write through configwatch, with its writer.
    Api(Audit),
    /// A change another tool made in the backend (the DynamoDB console, a script,
    /// Parameter Store), noticed by `instance` on a change feed or a re-read. Its
    /// writer is unknown to configwatch; `modified_by` is what the backend itself
    /// recorded, when it records one (Parameter Store's `LastModifiedUser`).
    External {
        instance: String,
        modified_by: Option<String>,
    },
}

/// One version of a key as history keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// The key's state at this version: its value (`None` for a delete, and for a
    /// secret unless the read asked for secret values), `secret`, `deleted`, and
    /// `updated_at`, when it was written. `revision` is 0: history knows no hub.
    pub entry: Entry,
    /// The version this one replaced (0: none, the key's first write).
    pub previous: u64,
    pub source: Source,
}

/// What a history read asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Only versions older than this one (the next page); `None`: from the newest.
    pub before: Option<u64>,
    /// At most this many versions (1 to [`MAX_PAGE_VERSIONS`]).
    pub limit: usize,
    /// Secret values included (a Get-style read by the key's own tenant); never for
    /// anything pushed to watchers.
    pub with_secret: bool,
    /// Stop once the values returned reach this many bytes (at least one version is
    /// returned): a page of large values stays within a reply's size.
    pub max_bytes: usize,
}

/// Versions of one key, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryPage {
    pub versions: Vec<Version>,
    /// Pass as [`HistoryQuery::before`] for the next page; `None` when this page
    /// reaches the oldest version kept.
    pub next_before: Option<u64>,
}

impl HistoryPage {
    /// Keeps the versions whose values fit in `max_bytes` (at least one); the next
    /// page then starts after the last one kept.
    pub fn cut_to(mut self, max_bytes: usize) -> HistoryPage {
        let mut bytes = 0usize;
        let keep = self
            .versions
            .iter()
            .position(|v| {
                let full = bytes >= max_bytes;
                bytes += value_bytes(v);
                full
            })
            .unwrap_or(self.versions.len());
        if keep < self.versions.len() {
            self.versions.truncate(keep.max(1));
            self.next_before = self.versions.last().map(|v| v.entry.version);
        }
        self
    }
}

/// What a version's value weighs in a reply.
pub fn value_bytes(v: &Version) -> usize {
    v.entry.value.as_deref().map_or(0, str::len)
}

/// How much history a backend keeps per key. The current version is always kept,
/// whatever its age.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Versions kept per key, the current one included (at least 1).
    pub max_versions: u32,
    /// Older versions are dropped once they have not been current for this long.
    pub max_age: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_versions: DEFAULT_MAX_VERSIONS,
            max_age: DEFAULT_MAX_AGE,
        }
    }
}

impl Retention {
    /// Whether a version that stopped being current at `superseded_at` has
    /// outlived the age limit at `now`.
    pub fn expired(&self, superseded_at: Millis, now: Millis) -> bool {
        let age = u64::try_from(now.saturating_sub(superseded_at)).unwrap_or(0);
        u128::from(age) > self.max_age.as_millis()
    }
}

/// Why a reason was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReasonError {
    #[error("the reason has {0} bytes; at most {MAX_REASON_BYTES} are kept")]
    TooLong(usize),
    #[error("the reason may not contain control characters (such as line breaks)")]
    Control,
}

/// Checks a write's reason: `None` for an empty one.
pub fn validate_reason(reason: &str) -> Result<Option<String>, ReasonError> {
    if reason.len() > MAX_REASON_BYTES {
        return Err(ReasonError::TooLong(reason.len()));
    }
    if reason.chars().any(char::is_control) {
        return Err(ReasonError::Control);
    }
    Ok((!reason.is_empty()).then(|| reason.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_is_kept_as_written_within_its_limits() {
        assert_eq!(validate_reason(""), Ok(None));
        assert_eq!(
            validate_reason("roll back the bad flag, see INC-42"),
            Ok(Some("roll back the bad flag, see INC-42".into()))
        );
        assert_eq!(
            validate_reason(&"x".repeat(MAX_REASON_BYTES + 1)),
            Err(ReasonError::TooLong(MAX_REASON_BYTES + 1))
        );
        assert_eq!(validate_reason("two\nlines"), Err(ReasonError::Control));
    }

    #[test]
    fn a_page_is_cut_after_the_version_that_reaches_the_bytes() {
        let v = |version: u64, len: usize| Version {
            entry: Entry::live("tenant_config_k", version, &"x".repeat(len), 0),
            previous: version - 1,
            source: Source::Api(Audit::default()),
        };
        let page = || HistoryPage {
            versions: vec![v(4, 10), v(3, 10), v(2, 10), v(1, 10)],
            next_before: None,
        };
        let cut = page().cut_to(15);
        assert_eq!(cut.versions.len(), 2);
        assert_eq!(cut.next_before, Some(3));
        // One version always goes, however large.
        let one = page().cut_to(0);
        assert_eq!((one.versions.len(), one.next_before), (1, Some(4)));
        // A page within the bytes is left as it is.
        assert_eq!(page().cut_to(40), page());
    }

    #[test]
    fn only_versions_superseded_longer_ago_than_the_age_limit_expire() {
        let r = Retention {
            max_versions: 10,
            max_age: Duration::from_secs(60),
        };
        assert!(!r.expired(1_000, 61_000));
        assert!(r.expired(1_000, 61_001));
        // A clock that went back never expires anything.
        assert!(!r.expired(61_000, 1_000));
    }
}
