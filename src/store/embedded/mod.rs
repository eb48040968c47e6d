//! The embedded store: every key family of every scope in one redb database file.
//!
//! redb commits are durable when `commit` returns (fsync; copy-on-write B-trees, so a
//! crash at any moment leaves the last committed state). A write is acknowledged only
//! after its commit, so `kill -9` loses nothing that was acknowledged.
//!
//! Layout: table `entries`, key `(tenant, service or "", config key)`, value a record
//! of format 2:
//!
//! | bytes | field |
//! |---|---|
//! | 0 | record format, 2 |
//! | 1 | flags: bit 0 deleted, bit 1 secret |
//! | 2..10 | version, u64 little endian |
//! | 10..18 | updated_at, Unix milliseconds, i64 little endian |
//! | 18..26 | checksum: the first 8 bytes of SHA-256 over the tenant, service and key (each as a u64 big-endian length and its bytes), bytes 0..18 and the value |
//! | 26.. | value, compact JSON text (empty for a tombstone) |
//!
//! Format 1 (written before checksums) is the same without bytes 18..26. A store made
//! by an older configwatch (database format 1) is read as it is: its format-1 records
//! are accepted when their value is JSON, and each becomes format 2 when next written.
//! A store created with format 2 accepts no format-1 record. Every read verifies the
//! checksum; a record that fails is [`StoreError::Damaged`], never served and never
//! taken for a deletion: a scope load that meets one fails (the scope's Get and Watch
//! answer DATA_LOSS, and clients keep what they hold) and a write to that key is
//! refused. [`EmbeddedStore::open`] checks every record (history records included)
//! and reports the damaged ones.
//!
//! Tombstones are kept so a re-created key continues its version sequence.
//!
//! History: table `history`, key `(tenant, service or "", config key, version)`,
//! one record per kept version (`history_record`), written in the same transaction
//! as the entry, so no version exists without its history record. Each write of a
//! key trims that key's history to the store's [`Retention`] (the current version is
//! always kept). A damaged history record fails the history read that meets it.
//!
//! Identity (see [`super::identity`]): table `meta_text` holds the store's identity,
//! and the marker file beside the database repeats it. [`EmbeddedStore::open_with`]
//! refuses to start when an initialised data directory lost its database.
//!
//! I/O errors (a full disk): redb refuses every later write once one failed, until
//! the database is opened again. The store then answers UNAVAILABLE at once, reports
//! [`StoreHealth::Failing`] (one warning in the log), and a background task opens the
//! database again every second and checks it can commit; once it can, writes work
//! again with no restart. Scopes already loaded keep being served by the hub meanwhile.
//!
//! redb checks many of its own invariants with debug assertions (panics) on pages it
//! reads; every call into it runs under `catch_unwind`, so a damaged page becomes a
//! [`StoreError::Damaged`] answer instead of a panic.
//!
//! Parts: `open` opens or creates the database and checks its identity (refusing a
//! lost or replaced one); `record` the record format, its checksum and the check of
//! every record; `recovery` how a redb failure is sorted (I/O, damage) and the
//! reopening after an I/O error; `backend` the reads and writes of the [`Backend`](super::Backend);
//! `history` the history table and its retention, `history_record` its record format;
//! this file the schema and the store's handle.

mod backend;
mod history;
mod history_record;
#[cfg(test)]
mod history_tests;
mod open;
mod record;
mod recovery;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use redb::{Database, TableDefinition};

pub use open::{OpenError, OpenOptions};
pub use record::{DamagedKey, VerifyReport};
use recovery::DbError;

use super::history::Retention;
use super::{StoreError, StoreHealth};
use crate::model::Scope;

const ENTRIES: TableDefinition<(&str, &str, &str), &[u8]> = TableDefinition::new("entries");
const HISTORY: TableDefinition<(&str, &str, &str, u64), &[u8]> = TableDefinition::new("history");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const META_TEXT: TableDefinition<&str, &str> = TableDefinition::new("meta_text");
const FORMAT_KEY: &str = "format";
/// Set when the store was created by a configwatch that wrote format-1 records.
const LEGACY_KEY: &str = "legacy_records";
/// Counts recovery probes (a write that proves the disk takes writes again).
const PROBE_KEY: &str = "probe";
const STORE_ID_KEY: &str = "store_id";
/// The database format; format 1 is read too (and becomes 2 on open).
const FORMAT: u64 = 2;
/// How often a store that hit an I/O error tries to open the database again.
pub const RECOVERY_INTERVAL: Duration = Duration::from_secs(1);
/// At most this many damaged keys are named one by one in the start-up log.
const DAMAGED_LOGGED: usize = 100;

/// The file name of the database inside the data directory.
pub const DB_FILE: &str = "store.redb";

/// The embedded, durable store.
pub struct EmbeddedStore {
    inner: Arc<Inner>,
    store_id: Arc<str>,
    report: VerifyReport,
    retention: Retention,
}

struct Inner {
    path: PathBuf,
    state: Mutex<State>,
    health: tokio::sync::watch::Sender<StoreHealth>,
    /// Whether format-1 records may exist.
    legacy: bool,
}

struct State {
    /// `None` while being opened again.
    db: Option<Arc<Database>>,
    /// Why writes fail, while they do.
    failing: Option<String>,
}

impl EmbeddedStore {
    /// The store's identity.
    pub fn id(&self) -> &str {
        &self.store_id
    }

    /// Keeps `retention` of each key's history (applied on each write of the key).
    pub fn with_retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// What the check of every record at open found.
    pub fn verify_report(&self) -> &VerifyReport {
        &self.report
    }

    /// Checks every record now (the same check as at open).
    pub async fn verify(&self) -> VerifyReport {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.verify())
            .await
            .unwrap_or_else(|e| VerifyReport {
                unreadable: Some(e.to_string()),
                ..VerifyReport::default()
            })
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database, bool) -> Result<T, DbError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.run(f))
            .await
            .map_err(|e| StoreError::Internal(e.to_string()))?
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn scope_parts(scope: &Scope) -> (String, String) {
    (
        scope.tenant_id().to_owned(),
        scope.service().unwrap_or("").to_owned(),
    )
}
