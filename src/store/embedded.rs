//! The embedded store: every key family of every scope in one redb database file.
//!
//! redb commits are durable when `commit` returns (fsync; copy-on-write B-trees, so a
//! crash at any moment leaves the last committed state). A write is acknowledged only
//! after its commit, so `kill -9` loses nothing that was acknowledged.
//!
//! Layout: table `entries`, key `(tenant, service or "", config key)`, value a record:
//!
//! | bytes | field |
//! |---|---|
//! | 0 | record format, 1 |
//! | 1 | flags: bit 0 deleted, bit 1 secret |
//! | 2..10 | version, u64 little endian |
//! | 10..18 | updated_at, Unix milliseconds, i64 little endian |
//! | 18.. | value, compact JSON text (empty for a tombstone) |
//!
//! Tombstones are kept so a re-created key continues its version sequence.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Backend, StoreError, Write, check_expected, live_version};
use crate::model::{Entry, Millis, Scope, now_millis};

const ENTRIES: TableDefinition<(&str, &str, &str), &[u8]> = TableDefinition::new("entries");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const FORMAT_KEY: &str = "format";
const FORMAT: u64 = 1;
const RECORD_FORMAT: u8 = 1;
const FLAG_DELETED: u8 = 1;
const FLAG_SECRET: u8 = 2;
const HEADER: usize = 18;

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
    #[error(
        "the store {path} has format {found}, this configwatch reads format {FORMAT}; use a matching version"
    )]
    Format { path: PathBuf, found: u64 },
}

/// The embedded, durable store.
pub struct EmbeddedStore {
    db: Arc<Database>,
}

fn internal(e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(e.to_string())
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, OpenError> {
        std::fs::create_dir_all(data_dir).map_err(|source| OpenError::CreateDir {
            path: data_dir.to_owned(),
            source,
        })?;
        let path = data_dir.join(DB_FILE);
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => OpenError::InUse { path: path.clone() },
            other => OpenError::Open {
                path: path.clone(),
                source: other.into(),
            },
        })?;
        let open_err = |e: redb::Error| OpenError::Open {
            path: path.clone(),
            source: e,
        };
        let txn = db.begin_write().map_err(|e| open_err(e.into()))?;
        let found = {
            let mut meta = txn.open_table(META).map_err(|e| open_err(e.into()))?;
            let found = meta
                .get(FORMAT_KEY)
                .map_err(|e| open_err(e.into()))?
                .map(|v| v.value());
            if found.is_none() {
                meta.insert(FORMAT_KEY, FORMAT)
                    .map_err(|e| open_err(e.into()))?;
            }
            txn.open_table(ENTRIES).map_err(|e| open_err(e.into()))?;
            found
        };
        txn.commit().map_err(|e| open_err(e.into()))?;
        if let Some(found) = found.filter(|f| *f != FORMAT) {
            return Err(OpenError::Format { path, found });
        }
        Ok(EmbeddedStore { db: Arc::new(db) })
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(internal)?
    }
}

fn encode(entry: &Entry, value: Option<&str>) -> Vec<u8> {
    let value = value.unwrap_or("");
    let mut out = Vec::with_capacity(HEADER + value.len());
    out.push(RECORD_FORMAT);
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
    out.extend_from_slice(value.as_bytes());
    out
}

/// Decodes a record. Secret values are withheld unless `with_secret`.
fn decode(key: &str, bytes: &[u8], with_secret: bool) -> Result<Entry, StoreError> {
    if bytes.len() < HEADER || bytes[0] != RECORD_FORMAT {
        return Err(StoreError::Internal(format!(
            "record for '{key}' is corrupt or of an unknown format"
        )));
    }
    let flags = bytes[1];
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[2..10]);
    let version = u64::from_le_bytes(word);
    word.copy_from_slice(&bytes[10..18]);
    let updated_at = Millis::from_le_bytes(word);
    let deleted = flags & FLAG_DELETED != 0;
    let secret = flags & FLAG_SECRET != 0;
    let value = if deleted || (secret && !with_secret) {
        None
    } else {
        let text = std::str::from_utf8(&bytes[HEADER..])
            .map_err(|_| StoreError::Internal(format!("value of '{key}' is not UTF-8")))?;
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
        wire: Default::default(),
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

    async fn load(&self, scope: &Scope, prefix: &str) -> Result<Vec<Entry>, StoreError> {
        let (tenant, service) = scope_parts(scope);
        let prefix = prefix.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(internal)?;
            let table = txn.open_table(ENTRIES).map_err(internal)?;
            let start = (tenant.as_str(), service.as_str(), prefix.as_str());
            let mut out = Vec::new();
            for row in table.range(start..).map_err(internal)? {
                let (k, v) = row.map_err(internal)?;
                let (t, s, key) = k.value();
                if t != tenant || s != service || !key.starts_with(prefix.as_str()) {
                    break;
                }
                out.push(decode(key, v.value(), false)?);
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
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(internal)?;
            let entry = {
                let mut table = txn.open_table(ENTRIES).map_err(internal)?;
                let id = (tenant.as_str(), service.as_str(), key.as_str());
                let current = match table.get(id).map_err(internal)? {
                    Some(v) => Some(decode(&key, v.value(), false)?),
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
                            return Err(StoreError::NotFound(key));
                        }
                        (Entry::tombstone(&key, last_version + 1, now), None)
                    }
                };
                table
                    .insert(id, encode(&entry, value.as_deref()).as_slice())
                    .map_err(internal)?;
                entry
            };
            txn.commit().map_err(internal)?;
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
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(internal)?;
            let table = txn.open_table(ENTRIES).map_err(internal)?;
            let id = (tenant.as_str(), service.as_str(), key.as_str());
            match table.get(id).map_err(internal)? {
                Some(v) => Ok(Some(decode(&key, v.value(), with_secret)?)),
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
}
