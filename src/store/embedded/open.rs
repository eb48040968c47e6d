//! Opening the store: creating the data directory and the database, upgrading its
//! format, and the store identity, refusing a directory that lost or replaced its
//! database (see [`super::super::identity`]); then the check of every record.
//!
//! Boundary: runs once, before the store serves; everything after is the handle's.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use redb::{Database, ReadableTable};

use super::recovery::{DbError, db_err, guarded, panic_text};
use super::{
    DAMAGED_LOGGED, DB_FILE, ENTRIES, EmbeddedStore, FORMAT, FORMAT_KEY, HISTORY, Inner,
    LEGACY_KEY, META, META_TEXT, STORE_ID_KEY, State, VerifyReport,
};
use crate::store::StoreHealth;
use crate::store::history::Retention;
use crate::store::identity::{self, MarkerError, StoreId};

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

pub(super) fn create_db(path: &Path) -> Result<Database, OpenError> {
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
                txn.open_table(HISTORY).map_err(db_err)?;
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
            retention: Retention::default(),
        })
    }
}

fn log_report(path: &Path, report: &VerifyReport) {
    let lists = [
        (
            &report.damaged,
            "damaged record: this key is not served (its scope answers DATA_LOSS) until it is restored",
        ),
        (
            &report.damaged_history,
            "damaged history record: that version is not served (History answers DATA_LOSS when it reaches it); the key's current state is not affected",
        ),
    ];
    for (damaged, what) in lists {
        for d in damaged.iter().take(DAMAGED_LOGGED) {
            tracing::error!(
                tenant = %d.tenant,
                service = %d.service,
                key = %d.key,
                reason = %d.reason,
                "{what}"
            );
        }
        if damaged.len() > DAMAGED_LOGGED {
            tracing::error!(
                more = damaged.len() - DAMAGED_LOGGED,
                "more damaged records not listed"
            );
        }
    }
    if let Some(why) = &report.unreadable {
        tracing::error!(path = %path.display(), reason = %why, records_read = report.records, "the database could not be read to the end: some scopes will answer DATA_LOSS; restore it from a backup");
    }
    if !report.damaged.is_empty() {
        tracing::error!(path = %path.display(), damaged = report.damaged.len(), records = report.records, "the store has damaged records; restore the database from a backup");
    }
}
