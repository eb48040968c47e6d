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
//! refused. [`EmbeddedStore::open`] checks every record and reports the damaged ones.
//!
//! Tombstones are kept so a re-created key continues its version sequence.
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

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use sha2::{Digest, Sha256};

use super::identity::{self, MarkerError, StoreId};
use super::{Backend, StoreError, StoreHealth, Write, check_expected, live_version};
use crate::model::{Entry, Millis, Scope, now_millis};

const ENTRIES: TableDefinition<(&str, &str, &str), &[u8]> = TableDefinition::new("entries");
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
const RECORD_V1: u8 = 1;
const RECORD_V2: u8 = 2;
const FLAG_DELETED: u8 = 1;
const FLAG_SECRET: u8 = 2;
const HEADER_V1: usize = 18;
const CHECKSUM: usize = 8;
const HEADER: usize = HEADER_V1 + CHECKSUM;
/// How often a store that hit an I/O error tries to open the database again.
pub const RECOVERY_INTERVAL: Duration = Duration::from_secs(1);
/// At most this many damaged keys are named one by one in the start-up log.
const DAMAGED_LOGGED: usize = 100;

/// The file name of the database inside the data directory.
pub const DB_FILE: &str = "store.redb";

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot create data directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the store {path} is already open in another process; stop it or use another --data-dir"
    )]
    InUse { path: PathBuf },
    #[error("cannot open the store {path}: {source}")]
    Open { path: PathBuf, source: redb::Error },
    #[error("cannot open the store {path}: the file is damaged ({reason})")]
    Unreadable { path: PathBuf, reason: String },
    #[error(
        "cannot open the store {path}: {reason}; fix the cause (free disk space) and start again"
    )]
    Io { path: PathBuf, reason: String },
    #[error(
        "the store {path} has format {found}, this configwatch reads formats 1 and {FORMAT}; use a matching version"
    )]
    Format { path: PathBuf, found: u64 },
    #[error(transparent)]
    Marker(#[from] MarkerError),
    #[error(
        "the data directory {dir} was initialised ({evidence}) but its database {path} is {state}. \
         Refusing to start with an empty store: clients resuming from the lost data would be told \
         that every key was deleted. Restore {path} from a backup, or start a new, empty store on \
         purpose with --new-store (clients then see a new store identity and reload everything)"
    )]
    Lost {
        dir: PathBuf,
        path: PathBuf,
        /// "missing" or "empty".
        state: &'static str,
        /// What shows the directory was initialised.
        evidence: String,
    },
    #[error(
        "the database {path} has {found} but the data directory {dir} belongs to store {expected} \
         (file {marker}): the database was replaced. Put the right {db} back, or adopt this \
         database as a new store with --new-store (clients then see a new store identity and \
         reload everything)",
        db = DB_FILE,
        marker = identity::MARKER_FILE
    )]
    Replaced {
        dir: PathBuf,
        path: PathBuf,
        /// "store identity X" or "no store identity".
        found: String,
        expected: StoreId,
    },
}

/// How to open the store.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Accept a missing, empty or replaced database and give the store a new
    /// identity (`serve --new-store`).
    pub new_store: bool,
    /// Files whose presence shows that the directory was initialised by a
    /// configwatch from before store identities (the signing key): beside them, a
    /// missing database is a lost one.
    pub initialised_by: Vec<PathBuf>,
}

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
    /// Set when the table itself could not be read to the end (a damaged page).
    pub unreadable: Option<String>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.damaged.is_empty() && self.unreadable.is_none()
    }
}

/// The embedded, durable store.
pub struct EmbeddedStore {
    inner: Arc<Inner>,
    store_id: Arc<str>,
    report: VerifyReport,
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

/// A failure inside a database call, before it becomes a [`StoreError`].
enum DbError {
    /// An I/O error: the database must be opened again.
    Io(String),
    Damaged(String),
    Store(StoreError),
}

impl From<StoreError> for DbError {
    fn from(e: StoreError) -> Self {
        DbError::Store(e)
    }
}

fn describe_io(e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::StorageFull || e.raw_os_error() == Some(28) {
        format!("the disk is full ({e})")
    } else {
        format!("I/O error ({e})")
    }
}

/// Sorts a redb error: I/O (recoverable by opening again), damage, or other.
fn classify(e: impl Into<redb::Error>) -> DbError {
    match e.into() {
        redb::Error::Io(io) => DbError::Io(describe_io(&io)),
        redb::Error::PreviousIo => DbError::Io("an earlier write failed".into()),
        redb::Error::LockPoisoned(_) => DbError::Io("an earlier call failed inside redb".into()),
        redb::Error::Corrupted(why) => {
            DbError::Damaged(format!("the database file is damaged: {why}"))
        }
        other => DbError::Store(StoreError::Internal(other.to_string())),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown failure".into())
}

/// Runs `f`, turning a panic inside redb into [`DbError::Damaged`].
fn guarded<T>(f: impl FnOnce() -> Result<T, DbError>) -> Result<T, DbError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        Err(DbError::Damaged(format!(
            "the database file is damaged: reading it failed ({})",
            panic_text(payload.as_ref())
        )))
    })
}

fn create_db(path: &Path) -> Result<Database, OpenError> {
    let created = catch_unwind(AssertUnwindSafe(|| Database::create(path)));
    match created {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => Err(OpenError::InUse {
            path: path.to_owned(),
        }),
        Ok(Err(other)) => Err(OpenError::Open {
            path: path.to_owned(),
            source: other.into(),
        }),
        Err(payload) => Err(OpenError::Unreadable {
            path: path.to_owned(),
            reason: panic_text(payload.as_ref()),
        }),
    }
}

/// What the data directory holds before the database is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileState {
    Missing,
    Empty,
    Present,
}

fn file_state(path: &Path) -> FileState {
    match std::fs::metadata(path) {
        Ok(m) if m.len() == 0 => FileState::Empty,
        Ok(_) => FileState::Present,
        Err(_) => FileState::Missing,
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `data_dir`, refusing a directory that lost
    /// its database (see [`EmbeddedStore::open_with`]).
    pub fn open(data_dir: &Path) -> Result<Self, OpenError> {
        Self::open_with(data_dir, &OpenOptions::default())
    }

    /// Opens (or creates) the store in `data_dir`.
    ///
    /// A directory with the identity marker, or with one of
    /// `options.initialised_by`, was initialised: if its database is missing or
    /// empty, or names another store, this fails (unless `options.new_store`),
    /// saying what happened and how to start fresh. A database from before
    /// identities adopts a new one. Every record is then checked
    /// ([`EmbeddedStore::verify_report`]).
    pub fn open_with(data_dir: &Path, options: &OpenOptions) -> Result<Self, OpenError> {
        std::fs::create_dir_all(data_dir).map_err(|source| OpenError::CreateDir {
            path: data_dir.to_owned(),
            source,
        })?;
        let path = data_dir.join(DB_FILE);
        let marker = identity::read_marker(data_dir)?;
        let before = file_state(&path);
        if before != FileState::Present && !options.new_store {
            let evidence = match &marker {
                Some(id) => Some(format!(
                    "its file {} names store {id}",
                    identity::MARKER_FILE
                )),
                None => options
                    .initialised_by
                    .iter()
                    .find(|f| f.exists())
                    .map(|f| format!("{} exists", f.display())),
            };
            if let Some(evidence) = evidence {
                return Err(OpenError::Lost {
                    dir: data_dir.to_owned(),
                    path,
                    state: if before == FileState::Missing {
                        "missing"
                    } else {
                        "empty"
                    },
                    evidence,
                });
            }
        }
        let db = create_db(&path)?;
        let unreadable = |reason: String| OpenError::Unreadable {
            path: path.clone(),
            reason,
        };
        let open_err = |e: DbError| match e {
            DbError::Io(reason) => OpenError::Io {
                path: path.clone(),
                reason,
            },
            DbError::Damaged(why) => unreadable(why),
            DbError::Store(e) => unreadable(e.to_string()),
        };
        // Identity and format, in one transaction.
        let (found_format, legacy, held_id) = guarded(|| {
            let txn = db.begin_write().map_err(db_err)?;
            let out = {
                let mut meta = txn.open_table(META).map_err(db_err)?;
                let found = meta.get(FORMAT_KEY).map_err(db_err)?.map(|v| v.value());
                let mut legacy = meta.get(LEGACY_KEY).map_err(db_err)?.is_some();
                if found == Some(1) && !legacy {
                    meta.insert(LEGACY_KEY, 1).map_err(db_err)?;
                    legacy = true;
                }
                if found.is_none() || found == Some(1) {
                    meta.insert(FORMAT_KEY, FORMAT).map_err(db_err)?;
                }
                let text = txn.open_table(META_TEXT).map_err(db_err)?;
                let held = text
                    .get(STORE_ID_KEY)
                    .map_err(db_err)?
                    .map(|v| v.value().to_owned());
                txn.open_table(ENTRIES).map_err(db_err)?;
                (found, legacy, held)
            };
            // Commit only when nothing is refused below: a replaced database
            // stays as it was found.
            let replaced = matches!((&marker, &out.2), (Some(m), h) if h.as_deref() != Some(m.as_str()))
                && before == FileState::Present;
            if replaced && !options.new_store {
                txn.abort().map_err(db_err)?;
            } else {
                txn.commit().map_err(db_err)?;
            }
            Ok(out)
        })
        .map_err(open_err)?;
        if let Some(found) = found_format.filter(|f| *f != FORMAT && *f != 1) {
            return Err(OpenError::Format { path, found });
        }
        let held_id = held_id.as_deref().and_then(StoreId::parse);
        let store_id = match (&marker, held_id) {
            (Some(m), Some(h)) if *m == h => h,
            (None, Some(h)) => {
                tracing::warn!(store_id = %h, "the store identity marker was missing; written again from the database");
                identity::write_marker(data_dir, &h)?;
                h
            }
            (Some(m), found) if before == FileState::Present && !options.new_store => {
                return Err(OpenError::Replaced {
                    dir: data_dir.to_owned(),
                    path,
                    found: match found {
                        Some(f) => format!("store identity {f}"),
                        None => "no store identity".into(),
                    },
                    expected: m.clone(),
                });
            }
            (marker, _) => {
                // A new store, a store from before identities, or one started
                // afresh on purpose: a new identity, first in the database, then
                // in the marker (a crash between the two rewrites the marker from
                // the database on the next start).
                let id = StoreId::random();
                guarded(|| {
                    let txn = db.begin_write().map_err(db_err)?;
                    txn.open_table(META_TEXT)
                        .map_err(db_err)?
                        .insert(STORE_ID_KEY, id.as_str())
                        .map_err(db_err)?;
                    txn.commit().map_err(db_err)?;
                    Ok(())
                })
                .map_err(open_err)?;
                identity::write_marker(data_dir, &id)?;
                match (marker, before) {
                    (Some(old), _) => {
                        tracing::warn!(old = %old, new = %id, "started a new store on purpose (--new-store); clients will see a new store identity and reload")
                    }
                    (None, FileState::Present) => {
                        tracing::info!(store_id = %id, "the store had no identity; adopted a new one")
                    }
                    (None, _) => tracing::info!(store_id = %id, "created a new store"),
                }
                id
            }
        };
        let (health, _) = tokio::sync::watch::channel(StoreHealth::Ok);
        let inner = Arc::new(Inner {
            path,
            state: Mutex::new(State {
                db: Some(Arc::new(db)),
                failing: None,
            }),
            health,
            legacy,
        });
        let report = inner.verify();
        log_report(&inner.path, &report);
        Ok(EmbeddedStore {
            inner,
            store_id: Arc::from(store_id.as_str()),
            report,
        })
    }

    /// The store's identity.
    pub fn id(&self) -> &str {
        &self.store_id
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

fn db_err(e: impl Into<redb::Error>) -> DbError {
    classify(e)
}

fn log_report(path: &Path, report: &VerifyReport) {
    for d in report.damaged.iter().take(DAMAGED_LOGGED) {
        tracing::error!(
            tenant = %d.tenant,
            service = %d.service,
            key = %d.key,
            reason = %d.reason,
            "damaged record: this key is not served (its scope answers DATA_LOSS) until it is restored"
        );
    }
    if report.damaged.len() > DAMAGED_LOGGED {
        tracing::error!(
            more = report.damaged.len() - DAMAGED_LOGGED,
            "more damaged records not listed"
        );
    }
    if let Some(why) = &report.unreadable {
        tracing::error!(path = %path.display(), reason = %why, records_read = report.records, "the database could not be read to the end: some scopes will answer DATA_LOSS; restore it from a backup");
    }
    if !report.damaged.is_empty() {
        tracing::error!(path = %path.display(), damaged = report.damaged.len(), records = report.records, "the store has damaged records; restore the database from a backup");
    }
}

impl Inner {
    /// Runs one database call: at once UNAVAILABLE while the store is failing;
    /// an I/O error starts the failing state (and its recovery).
    fn run<T>(
        self: &Arc<Self>,
        f: impl FnOnce(&Database, bool) -> Result<T, DbError>,
    ) -> Result<T, StoreError> {
        let db = {
            let st = lock(&self.state);
            match (&st.failing, &st.db) {
                (None, Some(db)) => db.clone(),
                (failing, _) => {
                    return Err(unavailable(failing.as_deref().unwrap_or("reopening")));
                }
            }
        };
        let result = guarded(|| f(&db, self.legacy));
        drop(db);
        match result {
            Ok(v) => Ok(v),
            Err(DbError::Io(why)) => {
                self.fail(&why);
                Err(unavailable(&why))
            }
            Err(DbError::Damaged(why)) => Err(StoreError::Damaged(why)),
            Err(DbError::Store(e)) => Err(e),
        }
    }

    /// Enters the failing state (once: one warning) and starts recovery.
    fn fail(self: &Arc<Self>, why: &str) {
        let mut st = lock(&self.state);
        if st.failing.is_some() {
            return;
        }
        st.failing = Some(why.to_owned());
        drop(st);
        tracing::warn!(path = %self.path.display(), reason = %why, "the store cannot write: writes answer UNAVAILABLE and health says NOT_SERVING until it recovers by itself (loaded scopes are still served)");
        self.health
            .send_replace(StoreHealth::Failing(why.to_owned()));
        let weak = Arc::downgrade(self);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(recover(weak));
            }
            Err(_) => tracing::error!("no runtime to recover the store on; restart to recover"),
        }
    }

    /// Opens the database again and proves it can commit. True when recovered.
    fn try_recover(&self) -> bool {
        let mut st = lock(&self.state);
        if st.failing.is_none() {
            return true;
        }
        if let Some(db) = st.db.take() {
            match Arc::try_unwrap(db) {
                Ok(db) => drop(db),
                Err(shared) => {
                    // A call still uses it; try again later.
                    st.db = Some(shared);
                    return false;
                }
            }
        }
        let db = match create_db(&self.path) {
            Ok(db) => db,
            Err(e) => {
                tracing::debug!(error = %e, "the store cannot be opened again yet");
                return false;
            }
        };
        let probe = guarded(|| {
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut meta = txn.open_table(META).map_err(db_err)?;
                let n = meta
                    .get(PROBE_KEY)
                    .map_err(db_err)?
                    .map_or(0, |v| v.value());
                meta.insert(PROBE_KEY, n.wrapping_add(1)).map_err(db_err)?;
            }
            txn.commit().map_err(db_err)?;
            Ok(())
        });
        if probe.is_err() {
            // Dropped here: the next attempt opens it again.
            return false;
        }
        st.db = Some(Arc::new(db));
        let was = st.failing.take();
        drop(st);
        tracing::warn!(path = %self.path.display(), was = was.as_deref().unwrap_or(""), "the store writes again; recovered");
        self.health.send_replace(StoreHealth::Ok);
        true
    }

    /// Checks every record.
    fn verify(&self) -> VerifyReport {
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

async fn recover(store: Weak<Inner>) {
    loop {
        tokio::time::sleep(RECOVERY_INTERVAL).await;
        let Some(inner) = store.upgrade() else { return };
        let done = tokio::task::spawn_blocking(move || inner.try_recover()).await;
        if matches!(done, Ok(true)) {
            return;
        }
    }
}

fn unavailable(why: &str) -> StoreError {
    StoreError::Unavailable(format!(
        "the embedded store cannot write: {why}; it recovers by itself once the cause is gone (free disk space); retry"
    ))
}

fn checksum(tenant: &str, service: &str, key: &str, head: &[u8], value: &[u8]) -> [u8; CHECKSUM] {
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

fn encode(tenant: &str, service: &str, entry: &Entry, value: Option<&str>) -> Vec<u8> {
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
fn decode(
    tenant: &str,
    service: &str,
    key: &str,
    bytes: &[u8],
    with_secret: bool,
    legacy: bool,
) -> Result<Entry, StoreError> {
    let damaged = |why: &str| {
        StoreError::Damaged(format!(
            "the record of '{key}' (tenant '{tenant}'{}) {why}; it is not served",
            if service.is_empty() {
                String::new()
            } else {
                format!(", service '{service}'")
            }
        ))
    };
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

fn scope_parts(scope: &Scope) -> (String, String) {
    (
        scope.tenant_id().to_owned(),
        scope.service().unwrap_or("").to_owned(),
    )
}

#[async_trait]
impl Backend for EmbeddedStore {
    fn name(&self) -> &'static str {
        "embedded"
    }

    fn store_id(&self) -> Option<Arc<str>> {
        Some(self.store_id.clone())
    }

    fn health(&self) -> Option<tokio::sync::watch::Receiver<StoreHealth>> {
        Some(self.inner.health.subscribe())
    }

    async fn load(&self, scope: &Scope, prefix: &str) -> Result<Vec<Entry>, StoreError> {
        let (tenant, service) = scope_parts(scope);
        let prefix = prefix.to_owned();
        self.blocking(move |db, legacy| {
            let txn = db.begin_read().map_err(db_err)?;
            let table = txn.open_table(ENTRIES).map_err(db_err)?;
            let start = (tenant.as_str(), service.as_str(), prefix.as_str());
            let mut out = Vec::new();
            for row in table.range(start..).map_err(db_err)? {
                let (k, v) = row.map_err(db_err)?;
                let (t, s, key) = k.value();
                if t != tenant || s != service || !key.starts_with(prefix.as_str()) {
                    break;
                }
                // One damaged record fails the whole load: serving the scope
                // without it would tell watchers the key was deleted.
                out.push(decode(t, s, key, v.value(), false, legacy)?);
            }
            Ok(out)
        })
        .await
    }

    async fn write(
        &self,
        scope: &Scope,
        key: &str,
        write: Write,
        expected: Option<u64>,
    ) -> Result<Entry, StoreError> {
        let (tenant, service) = scope_parts(scope);
        let key = key.to_owned();
        self.blocking(move |db, legacy| {
            let txn = db.begin_write().map_err(db_err)?;
            let entry = {
                let mut table = txn.open_table(ENTRIES).map_err(db_err)?;
                let id = (tenant.as_str(), service.as_str(), key.as_str());
                let current = match table.get(id).map_err(db_err)? {
                    Some(v) => Some(decode(&tenant, &service, &key, v.value(), false, legacy)?),
                    None => None,
                };
                let last_version = current.as_ref().map_or(0, |e| e.version);
                let live_version = check_expected(&key, expected, live_version(current.as_ref()))?;
                let now = now_millis();
                let (entry, value) = match write {
                    Write::Put { value, secret } => {
                        let mut e = Entry::live(&key, last_version + 1, &value, now);
                        e.secret = secret;
                        (e, Some(value))
                    }
                    Write::Delete => {
                        if live_version == 0 {
                            return Err(StoreError::NotFound(key).into());
                        }
                        (Entry::tombstone(&key, last_version + 1, now), None)
                    }
                };
                table
                    .insert(
                        id,
                        encode(&tenant, &service, &entry, value.as_deref()).as_slice(),
                    )
                    .map_err(db_err)?;
                entry
            };
            txn.commit().map_err(db_err)?;
            Ok(entry.without_secret())
        })
        .await
    }

    async fn read(
        &self,
        scope: &Scope,
        key: &str,
        with_secret: bool,
    ) -> Result<Option<Entry>, StoreError> {
        let (tenant, service) = scope_parts(scope);
        let key = key.to_owned();
        self.blocking(move |db, legacy| {
            let txn = db.begin_read().map_err(db_err)?;
            let table = txn.open_table(ENTRIES).map_err(db_err)?;
            let id = (tenant.as_str(), service.as_str(), key.as_str());
            match table.get(id).map_err(db_err)? {
                Some(v) => Ok(Some(decode(
                    &tenant,
                    &service,
                    &key,
                    v.value(),
                    with_secret,
                    legacy,
                )?)),
                None => Ok(None),
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(v: &str) -> Write {
        Write::Put {
            value: v.to_owned(),
            secret: false,
        }
    }

    #[tokio::test]
    async fn versions_grow_through_deletes_and_survive_reopen()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let a = Scope::tenant("a")?;
        let b = Scope::tenant("b")?;
        {
            let store = EmbeddedStore::open(dir.path())?;
            let e1 = store.write(&a, "tenant_config_x", put("1"), None).await?;
            assert_eq!(e1.version, 1);
            let e2 = store
                .write(&a, "tenant_config_x", put("2"), Some(1))
                .await?;
            assert_eq!(e2.version, 2);
            let conflict = store.write(&a, "tenant_config_x", put("3"), Some(1)).await;
            assert_eq!(
                conflict,
                Err(StoreError::Conflict {
                    key: "tenant_config_x".into(),
                    expected: 1,
                    current: 2
                })
            );
            let gone = store
                .write(&a, "tenant_config_x", Write::Delete, None)
                .await?;
            assert!(gone.deleted && gone.version == 3);
            assert_eq!(
                store
                    .write(&a, "tenant_config_x", Write::Delete, None)
                    .await,
                Err(StoreError::NotFound("tenant_config_x".into()))
            );
            // A deleted key counts as absent for compare-and-set, and keeps counting up.
            let again = store
                .write(&a, "tenant_config_x", put("4"), Some(0))
                .await?;
            assert_eq!(again.version, 4);
            store
                .write(&b, "tenant_config_x", put("\"b\""), None)
                .await?;
        }
        let store = EmbeddedStore::open(dir.path())?;
        let loaded = store.load(&a, "").await?;
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].version, 4);
        assert_eq!(loaded[0].value.as_deref(), Some("4"));
        let other = store.load(&b, "tenant_config_").await?;
        assert_eq!(other[0].value.as_deref(), Some("\"b\""));
        assert!(store.load(&a, "param_config_").await?.is_empty());
        Ok(())
    }

    #[tokio::test]
    async fn secrets_are_withheld_except_on_demand() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = EmbeddedStore::open(dir.path())?;
        let s = Scope::tenant("a")?;
        let w = Write::Put {
            value: "\"hunter2\"".into(),
            secret: true,
        };
        let e = store.write(&s, "param_config_db/password", w, None).await?;
        assert!(e.secret && e.value.is_none());
        assert!(store.load(&s, "").await?[0].value.is_none());
        let read = store.read(&s, "param_config_db/password", true).await?;
        assert_eq!(read.and_then(|e| e.value).as_deref(), Some("\"hunter2\""));
        let withheld = store.read(&s, "param_config_db/password", false).await?;
        assert!(withheld.is_some_and(|e| e.secret && e.value.is_none()));
        assert_eq!(store.read(&s, "param_config_never", true).await?, None);
        Ok(())
    }

    #[test]
    fn a_second_process_gets_a_clear_error() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let _first = EmbeddedStore::open(dir.path())?;
        match EmbeddedStore::open(dir.path()) {
            Err(OpenError::InUse { .. }) => Ok(()),
            Err(other) => Err(format!("unexpected error: {other}").into()),
            Ok(_) => Err("opened twice".into()),
        }
    }

    #[test]
    fn records_are_checked_and_bound_to_their_key() {
        let e = Entry::live("tenant_config_a", 7, "{\"n\":1}", 1_700_000_000_000);
        let bytes = encode("t", "", &e, e.value.as_deref());
        let back = decode("t", "", "tenant_config_a", &bytes, false, false);
        assert_eq!(back.map(|b| (b.version, b.value)), Ok((7, e.value.clone())));
        // Every single-bit flip anywhere in the record is caught.
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut bad = bytes.clone();
                bad[i] ^= 1 << bit;
                let got = decode("t", "", "tenant_config_a", &bad, false, true);
                assert!(
                    matches!(got, Err(StoreError::Damaged(_))),
                    "byte {i} bit {bit}: {got:?}"
                );
            }
        }
        // The same bytes under another key, tenant or service fail too.
        for (t, s, k) in [
            ("t", "", "tenant_config_b"),
            ("u", "", "tenant_config_a"),
            ("t", "svc", "tenant_config_a"),
        ] {
            assert!(matches!(
                decode(t, s, k, &bytes, false, false),
                Err(StoreError::Damaged(_))
            ));
        }
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

    #[tokio::test]
    async fn a_data_directory_that_lost_its_database_is_refused()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let s = Scope::tenant("a")?;
        let first_id = {
            let store = EmbeddedStore::open(dir.path())?;
            store.write(&s, "tenant_config_x", put("1"), None).await?;
            store.id().to_owned()
        };
        assert_eq!(
            identity::read_marker(dir.path())?.map(|m| m.to_string()),
            Some(first_id.clone())
        );
        // Reopening keeps the identity.
        assert_eq!(EmbeddedStore::open(dir.path())?.id(), first_id);
        let db_path = dir.path().join(DB_FILE);
        let saved = std::fs::read(&db_path)?;

        for (damage, state) in [("delete", "missing"), ("truncate", "empty")] {
            if damage == "delete" {
                std::fs::remove_file(&db_path)?;
            } else {
                std::fs::write(&db_path, b"")?;
            }
            match EmbeddedStore::open(dir.path()) {
                Err(e @ OpenError::Lost { .. }) => {
                    let text = e.to_string();
                    assert!(text.contains(state), "{text}");
                    assert!(text.contains("--new-store"), "{text}");
                    assert!(text.contains(&first_id), "{text}");
                }
                Err(other) => return Err(format!("unexpected error: {other}").into()),
                Ok(_) => return Err(format!("opened a {state} database").into()),
            }
            std::fs::write(&db_path, &saved)?;
        }

        // A database of another store in its place.
        let other = tempfile::tempdir()?;
        drop(EmbeddedStore::open(other.path())?);
        std::fs::copy(other.path().join(DB_FILE), &db_path)?;
        match EmbeddedStore::open(dir.path()) {
            Err(e @ OpenError::Replaced { .. }) => {
                assert!(e.to_string().contains("replaced"), "{e}")
            }
            Err(other) => return Err(format!("unexpected error: {other}").into()),
            Ok(_) => return Err("opened a replaced database".into()),
        }

        // Starting afresh on purpose gives a new identity.
        std::fs::remove_file(&db_path)?;
        let opts = OpenOptions {
            new_store: true,
            ..OpenOptions::default()
        };
        let fresh = EmbeddedStore::open_with(dir.path(), &opts)?;
        assert_ne!(fresh.id(), first_id);
        assert!(fresh.load(&s, "").await?.is_empty());
        drop(fresh);
        // ... which is then kept: the flag does nothing to an intact store.
        let id = identity::read_marker(dir.path())?.map(|m| m.to_string());
        assert_eq!(
            EmbeddedStore::open_with(dir.path(), &opts)?.id(),
            id.as_deref().unwrap_or("")
        );
        Ok(())
    }

    #[test]
    fn a_signing_key_without_a_database_is_a_lost_database()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let key = dir.path().join("signing-key.pem");
        std::fs::write(&key, "key")?;
        let opts = OpenOptions {
            new_store: false,
            initialised_by: vec![key],
        };
        match EmbeddedStore::open_with(dir.path(), &opts) {
            Err(e @ OpenError::Lost { .. }) => {
                assert!(e.to_string().contains("signing-key.pem exists"), "{e}")
            }
            Err(other) => return Err(format!("unexpected error: {other}").into()),
            Ok(_) => return Err("opened".into()),
        }
        Ok(())
    }

    #[tokio::test]
    async fn a_store_from_before_identities_adopts_one_and_keeps_its_records()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join(DB_FILE);
        // A database as configwatch wrote it before: format 1, no identity.
        {
            let db = Database::create(&path)?;
            let txn = db.begin_write()?;
            {
                txn.open_table(META)?.insert(FORMAT_KEY, 1)?;
                let mut v1 = vec![RECORD_V1, 0];
                v1.extend_from_slice(&2u64.to_le_bytes());
                v1.extend_from_slice(&5i64.to_le_bytes());
                v1.extend_from_slice(b"\"old\"");
                txn.open_table(ENTRIES)?
                    .insert(("a", "", "tenant_config_x"), v1.as_slice())?;
            }
            txn.commit()?;
        }
        std::fs::write(dir.path().join("signing-key.pem"), "key")?;
        let opts = OpenOptions {
            new_store: false,
            initialised_by: vec![dir.path().join("signing-key.pem")],
        };
        let store = EmbeddedStore::open_with(dir.path(), &opts)?;
        assert!(store.verify_report().is_clean());
        let id = store.id().to_owned();
        let s = Scope::tenant("a")?;
        let loaded = store.load(&s, "").await?;
        assert_eq!(loaded[0].value.as_deref(), Some("\"old\""));
        // Written again, it continues its versions in format 2.
        let e = store
            .write(&s, "tenant_config_x", put("\"new\""), Some(2))
            .await?;
        assert_eq!(e.version, 3);
        drop(store);
        let store = EmbeddedStore::open_with(dir.path(), &opts)?;
        assert_eq!(store.id(), id);
        assert_eq!(
            store.load(&s, "").await?[0].value.as_deref(),
            Some("\"new\"")
        );
        Ok(())
    }
}
