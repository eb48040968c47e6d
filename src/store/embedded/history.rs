//! The `history` table: every kept version of every key, written in the same
//! transaction as the entry it records, read a page at a time newest first, and
//! trimmed to the [`Retention`] on each write of the key.
//!
//! Layout: key `(tenant, service or "", config key, version)`, value a history record
//! (`history_record`). The entry in `entries` stays the key's current state; this
//! table only answers history reads.
//!
//! Boundary: works inside a transaction it is handed (the write's own, or a read);
//! knows nothing of who may read history.

use redb::{ReadableTable, Table};

use super::history_record::{decode, encode};
use super::recovery::{DbError, db_err};
use crate::model::{Entry, Millis};
use crate::store::history::{
    Audit, HistoryPage, HistoryQuery, Retention, Source, Version, value_bytes,
};

/// Where `written at` sits in a history record (see `history_record`).
const WRITTEN_AT: std::ops::Range<usize> = 10..18;

type Id<'a> = (&'a str, &'a str, &'a str, u64);

/// A key of the history table, its tenant, service and key.
#[derive(Clone, Copy)]
pub(super) struct KeyRef<'a> {
    pub tenant: &'a str,
    pub service: &'a str,
    pub key: &'a str,
}

impl<'a> KeyRef<'a> {
    fn at(&self, version: u64) -> Id<'a> {
        (self.tenant, self.service, self.key, version)
    }
}

/// Records `entry` (whose value as written is `value`), which replaced `previous`,
/// then drops what the retention no longer keeps of this key. Runs inside the
/// write's transaction: the version and its history commit together or not at all.
pub(super) fn record(
    table: &mut Table<Id<'static>, &'static [u8]>,
    at: KeyRef<'_>,
    entry: &Entry,
    value: Option<&str>,
    previous: u64,
    audit: &Audit,
    retention: &Retention,
) -> Result<(), DbError> {
    let version = Version {
        entry: entry.clone(),
        previous,
        source: Source::Api(audit.clone()),
    };
    let bytes = encode(at.tenant, at.service, &version, value);
    table
        .insert(at.at(entry.version), bytes.as_slice())
        .map_err(db_err)?;
    let mut kept: Vec<(u64, Millis)> = Vec::new();
    for row in table.range(at.at(0)..=at.at(u64::MAX)).map_err(db_err)? {
        let (k, v) = row.map_err(db_err)?;
        // Only the time is needed to choose; a damaged record is dropped by age
        // or count like any other, and never read here for its contents.
        let written_at = v
            .value()
            .get(WRITTEN_AT)
            .and_then(|w| w.try_into().ok())
            .map_or(0, Millis::from_le_bytes);
        kept.push((k.value().3, written_at));
    }
    for version in expired(&kept, retention, entry.updated_at) {
        table.remove(at.at(version)).map_err(db_err)?;
    }
    Ok(())
}

/// The versions of `kept` (oldest first, the last one current) that `retention`
/// drops at `now`: beyond the count, or superseded (by the next version's write)
/// longer ago than the age. Never the current one.
pub(super) fn expired(kept: &[(u64, Millis)], retention: &Retention, now: Millis) -> Vec<u64> {
    let max = usize::try_from(retention.max_versions.max(1)).unwrap_or(usize::MAX);
    let over = kept.len().saturating_sub(max);
    kept.windows(2)
        .enumerate()
        .filter(|(i, pair)| *i < over || retention.expired(pair[1].1, now))
        .map(|(_, pair)| pair[0].0)
        .collect()
}

/// A page of `at`'s versions, newest first. `current` is the key's entry as the
/// `entries` table holds it: a key written before history was kept has no record
/// of its current version, which is then given from the entry (writer unknown).
pub(super) fn page(
    table: &impl ReadableTable<Id<'static>, &'static [u8]>,
    at: KeyRef<'_>,
    query: &HistoryQuery,
    current: Option<Entry>,
) -> Result<HistoryPage, DbError> {
    let before = query.before.unwrap_or(u64::MAX);
    let limit = query.limit.max(1);
    let mut versions = Vec::with_capacity(limit.min(64));
    let mut more = false;
    let mut bytes = 0usize;
    let rows = table.range(at.at(0)..at.at(before)).map_err(db_err)?;
    let mut newest_recorded = None;
    for row in rows.rev() {
        let (k, v) = row.map_err(db_err)?;
        newest_recorded.get_or_insert(k.value().3);
        if versions.len() == limit || bytes >= query.max_bytes {
            more = true;
            break;
        }
        let version = decode(at.tenant, at.service, at.key, v.value(), query.with_secret)?;
        bytes += value_bytes(&version);
        versions.push(version);
    }
    if let Some(entry) = current
        .filter(|e| e.version < before && newest_recorded.is_none_or(|newest| newest < e.version))
    {
        versions.insert(
            0,
            Version {
                entry,
                previous: 0,
                source: Source::Api(Audit::default()),
            },
        );
        if versions.len() > limit {
            versions.pop();
            more = true;
        }
    }
    let next_before = if more {
        versions.last().map(|v| v.entry.version)
    } else {
        None
    };
    Ok(HistoryPage {
        versions,
        next_before,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn retention(max_versions: u32, max_age_ms: u64) -> Retention {
        Retention {
            max_versions,
            max_age: Duration::from_millis(max_age_ms),
        }
    }

    #[test]
    fn the_count_drops_the_oldest_and_never_the_current() {
        let kept: Vec<(u64, Millis)> = (1..=5).map(|v| (v, 100 * v as Millis)).collect();
        assert_eq!(expired(&kept, &retention(3, 1_000_000), 600), vec![1, 2]);
        assert_eq!(
            expired(&kept, &retention(5, 1_000_000), 600),
            Vec::<u64>::new()
        );
        // At least the current version is kept, whatever the setting.
        assert_eq!(
            expired(&kept, &retention(0, 1_000_000), 600),
            vec![1, 2, 3, 4]
        );
    }

    #[test]
    fn the_age_counts_from_when_a_version_was_replaced() {
        // Version 1 was replaced at 1_000, version 2 at 9_000; 3 is current.
        let kept = [(1, 0), (2, 1_000), (3, 9_000)];
        assert_eq!(expired(&kept, &retention(100, 5_000), 10_000), vec![1]);
        // A current version older than the age stays.
        assert_eq!(expired(&kept, &retention(100, 5_000), 100_000), vec![1, 2]);
        assert_eq!(
            expired(&[(3, 0)], &retention(100, 1), 100_000),
            Vec::<u64>::new()
        );
    }
}
