//! Failures inside redb, and recovery from I/O errors: a redb error is sorted into
//! I/O (the database must be opened again), damage or other; a panic inside redb
//! becomes damage; every call runs through [`Inner::run`], which answers
//! UNAVAILABLE at once while the store is failing, and a background task opens the
//! database again every [`RECOVERY_INTERVAL`] until a probe commit succeeds.
//!
//! Boundary: owns the failing state and the store's health; knows nothing of records.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Weak};

use redb::{Database, ReadableTable};

use super::open::create_db;
use super::{Inner, META, PROBE_KEY, RECOVERY_INTERVAL, lock};
use crate::store::{StoreError, StoreHealth};

/// A failure inside a database call, before it becomes a [`StoreError`].
pub(super) enum DbError {
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

pub(super) fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown failure".into())
}

/// Runs `f`, turning a panic inside redb into [`DbError::Damaged`].
pub(super) fn guarded<T>(f: impl FnOnce() -> Result<T, DbError>) -> Result<T, DbError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        Err(DbError::Damaged(format!(
            "the database file is damaged: reading it failed ({})",
            panic_text(payload.as_ref())
        )))
    })
}
pub(super) fn db_err(e: impl Into<redb::Error>) -> DbError {
    classify(e)
}
impl Inner {
    /// Runs one database call: at once UNAVAILABLE while the store is failing;
    /// an I/O error starts the failing state (and its recovery).
    pub(super) fn run<T>(
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
