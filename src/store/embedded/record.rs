//! Records: the format of one stored entry (flags, version, time, checksum, value),
//! its checksum bound to the tenant, service and key, and the check of every record,
//! history records included ([`VerifyReport`]).
//!
//! Boundary: bytes in and out; the only code that knows the record layout.

use std::sync::Arc;

use redb::{ReadableDatabase, ReadableTable};
use sha2::{Digest, Sha256};

use super::recovery::{DbError, db_err, guarded};
use super::{ENTRIES, HISTORY, Inner, history_record, lock};
use crate::model::{Entry, Millis};
use crate::store::StoreError;

pub(super) const RECORD_V1: u8 = 1;
const RECORD_V2: u8 = 2;
const FLAG_DELETED: u8 = 1;
const FLAG_SECRET: u8 = 2;
const HEADER_V1: usize = 18;
pub(super) const CHECKSUM: usize = 8;
const HEADER: usize = HEADER_V1 + CHECKSUM;

/// One record that failed its check at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedKey {
    pub tenant: String,
    pub service: String,
    pub key: String,
    pub reason: String,
}

/// What the start-up check of every record found.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// Records read.
    pub records: usize,
    /// Records that failed their check.
    pub damaged: Vec<DamagedKey>,
    /// History records read.
    pub history_records: usize,
    /// History records that failed their check (`reason` names the version): those
    /// versions are not served; the keys' current state is not affected.
    pub damaged_history: Vec<DamagedKey>,
    /// Set when the table itself could not be read to the end (a damaged page).
    pub unreadable: Option<String>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.damaged.is_empty() && self.damaged_history.is_empty() && self.unreadable.is_none()
    }
}

impl Inner {
    /// Checks every record.
    pub(super) fn verify(&self) -> VerifyReport {
        let mut report = VerifyReport::default();
        let Some(db) = lock(&self.state).db.clone() else {
            report.unreadable = Some("the database is being opened again".into());
            return report;
        };
        let legacy = self.legacy;
        let result = guarded(|| {
            let txn = db.begin_read().map_err(db_err)?;
            let table = txn.open_table(ENTRIES).map_err(db_err)?;
            for row in table.iter().map_err(db_err)? {
                let (k, v) = row.map_err(db_err)?;
                let (tenant, service, key) = k.value();
                report.records += 1;
                if let Err(e) = decode(tenant, service, key, v.value(), true, legacy) {
                    report.damaged.push(DamagedKey {
                        tenant: tenant.to_owned(),
                        service: service.to_owned(),
                        key: key.to_owned(),
                        reason: e.to_string(),
                    });
                }
            }
            let history = txn.open_table(HISTORY).map_err(db_err)?;
            for row in history.iter().map_err(db_err)? {
                let (k, v) = row.map_err(db_err)?;
                let (tenant, service, key, version) = k.value();
                report.history_records += 1;
                if let Err(e) = history_record::decode(tenant, service, key, v.value(), true) {
                    report.damaged_history.push(DamagedKey {
                        tenant: tenant.to_owned(),
                        service: service.to_owned(),
                        key: key.to_owned(),
                        reason: format!("version {version}: {e}"),
                    });
                }
            }
            Ok(())
        });
        if let Err(DbError::Io(why) | DbError::Damaged(why)) = result {
            report.unreadable = Some(why);
        } else if let Err(DbError::Store(e)) = result {
            report.unreadable = Some(e.to_string());
        }
        report
    }
}

pub(super) fn checksum(
    tenant: &str,
    service: &str,
    key: &str,
    head: &[u8],
    value: &[u8],
) -> [u8; CHECKSUM] {
    let mut h = Sha256::new();
    for part in [tenant, service, key] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    h.update(head);
    h.update(value);
    let digest = h.finalize();
    let mut out = [0u8; CHECKSUM];
    out.copy_from_slice(&digest[..CHECKSUM]);
    out
}

/// A record of `key` that failed its check: `what` names the record, `why` what
/// failed.
pub(super) fn damaged(what: &str, tenant: &str, service: &str, key: &str, why: &str) -> StoreError {
    let service = if service.is_empty() {
        String::new()
    } else {
        format!(", service '{service}'")
    };
    StoreError::Damaged(format!(
        "{what} of '{key}' (tenant '{tenant}'{service}) {why}; it is not served"
    ))
}

pub(super) fn encode(tenant: &str, service: &str, entry: &Entry, value: Option<&str>) -> Vec<u8> {
    let value = value.unwrap_or("");
    let mut out = Vec::with_capacity(HEADER + value.len());
    out.push(RECORD_V2);
    let mut flags = 0;
    if entry.deleted {
        flags |= FLAG_DELETED;
    }
    if entry.secret {
        flags |= FLAG_SECRET;
    }
    out.push(flags);
    out.extend_from_slice(&entry.version.to_le_bytes());
    out.extend_from_slice(&entry.updated_at.to_le_bytes());
    let sum = checksum(tenant, service, &entry.key, &out, value.as_bytes());
    out.extend_from_slice(&sum);
    out.extend_from_slice(value.as_bytes());
    out
}

/// Decodes and checks a record. Secret values are withheld unless `with_secret`.
/// `legacy`: format-1 records (no checksum) may exist in this store.
pub(super) fn decode(
    tenant: &str,
    service: &str,
    key: &str,
    bytes: &[u8],
    with_secret: bool,
    legacy: bool,
) -> Result<Entry, StoreError> {
    let damaged = |why: &str| damaged("the record", tenant, service, key, why);
    let value_at = match bytes.first() {
        Some(&RECORD_V2) if bytes.len() >= HEADER => {
            let sum = checksum(tenant, service, key, &bytes[..HEADER_V1], &bytes[HEADER..]);
            if sum[..] != bytes[HEADER_V1..HEADER] {
                return Err(damaged("fails its checksum"));
            }
            HEADER
        }
        Some(&RECORD_V1) if legacy && bytes.len() >= HEADER_V1 => HEADER_V1,
        _ => return Err(damaged("is of an unknown format")),
    };
    let flags = bytes[1];
    if flags & !(FLAG_DELETED | FLAG_SECRET) != 0 {
        return Err(damaged("has unknown flags"));
    }
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[2..10]);
    let version = u64::from_le_bytes(word);
    word.copy_from_slice(&bytes[10..18]);
    let updated_at = Millis::from_le_bytes(word);
    let deleted = flags & FLAG_DELETED != 0;
    let secret = flags & FLAG_SECRET != 0;
    let text = std::str::from_utf8(&bytes[value_at..]).map_err(|_| damaged("is not UTF-8"))?;
    if value_at == HEADER_V1 {
        // No checksum: at least the value must be what was written, JSON (or
        // nothing for a tombstone).
        let ok = if deleted {
            text.is_empty()
        } else {
            serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
        };
        if !ok || version == 0 {
            return Err(damaged("is not a valid format-1 record"));
        }
    }
    let value = if deleted || (secret && !with_secret) {
        None
    } else {
        Some(Arc::from(text))
    };
    Ok(Entry {
        key: Arc::from(key),
        version,
        value,
        secret,
        deleted,
        updated_at,
        revision: 0,
    })
}

/// Asserts that every single-bit flip of `bytes` makes `decode` find damage.
#[cfg(test)]
pub(super) fn every_flip_is_damaged<T: std::fmt::Debug>(
    bytes: &[u8],
    decode: impl Fn(&[u8]) -> Result<T, StoreError>,
) {
    for i in 0..bytes.len() {
        for bit in 0..8 {
            let mut bad = bytes.to_vec();
            bad[i] ^= 1 << bit;
            let got = decode(&bad);
            assert!(
                matches!(got, Err(StoreError::Damaged(_))),
                "byte {i} bit {bit}: {got:?}"
            );
        }
    }
}

/// Asserts that a record of tenant `t`, key `tenant_config_a` read as another
/// key's, tenant's or service's is damaged.
#[cfg(test)]
pub(super) fn others_are_damaged<T: std::fmt::Debug>(
    decode: impl Fn(&str, &str, &str) -> Result<T, StoreError>,
) {
    for (t, s, k) in [
        ("t", "", "tenant_config_b"),
        ("u", "", "tenant_config_a"),
        ("t", "svc", "tenant_config_a"),
    ] {
        let got = decode(t, s, k);
        assert!(
            matches!(got, Err(StoreError::Damaged(_))),
            "{t}/{s}/{k}: {got:?}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_checked_and_bound_to_their_key() {
        let e = Entry::live("tenant_config_a", 7, "{\"n\":1}", 1_700_000_000_000);
        let bytes = encode("t", "", &e, e.value.as_deref());
        let back = decode("t", "", "tenant_config_a", &bytes, false, false);
        assert_eq!(back.map(|b| (b.version, b.value)), Ok((7, e.value.clone())));
        // Every single-bit flip anywhere in the record is caught.
        every_flip_is_damaged(&bytes, |bad| {
            decode("t", "", "tenant_config_a", bad, false, true)
        });
        // The same bytes under another key, tenant or service fail too.
        others_are_damaged(|t, s, k| decode(t, s, k, &bytes, false, false));
        assert!(matches!(
            decode("t", "", "k", &[], false, true),
            Err(StoreError::Damaged(_))
        ));
    }

    #[test]
    fn format_1_records_are_read_only_in_stores_that_had_them() {
        let mut v1 = vec![RECORD_V1, 0];
        v1.extend_from_slice(&3u64.to_le_bytes());
        v1.extend_from_slice(&5i64.to_le_bytes());
        v1.extend_from_slice(b"{\"a\":1}");
        let got = decode("t", "", "tenant_config_a", &v1, false, true);
        assert_eq!(got.map(|e| e.version), Ok(3));
        assert!(matches!(
            decode("t", "", "tenant_config_a", &v1, false, false),
            Err(StoreError::Damaged(_))
        ));
        // Without a checksum, a value that is no longer JSON is caught.
        let mut torn = v1.clone();
        torn.truncate(v1.len() - 1);
        assert!(matches!(
            decode("t", "", "tenant_config_a", &torn, false, true),
            Err(StoreError::Damaged(_))
        ));
    }
}
