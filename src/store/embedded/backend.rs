//! Reads and writes: the [`Backend`] on the embedded store. A scope's load is one
//! range of the `entries` table; a write is one transaction that checks the expected
//! version, records the new version in the `history` table (trimming the key's
//! history to the retention) and commits with fsync before it answers; a history
//! read is one read transaction over both tables.
//!
//! Boundary: every database call goes through [`EmbeddedStore::blocking`] (a blocking
//! thread, the failing state, panics caught).

use std::sync::Arc;

use async_trait::async_trait;
use redb::{ReadableDatabase, ReadableTable};

use super::history::{self, KeyRef};
use super::record::{decode, encode};
use super::recovery::db_err;
use super::{ENTRIES, EmbeddedStore, HISTORY, scope_parts};
use crate::model::{Entry, Scope, now_millis};
use crate::store::history::{Audit, HistoryPage, HistoryQuery};
use crate::store::{Backend, StoreError, StoreHealth, Write, check_expected, live_version};

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
        audit: &Audit,
    ) -> Result<Entry, StoreError> {
        let (tenant, service) = scope_parts(scope);
        let key = key.to_owned();
        let audit = audit.clone();
        let retention = self.retention;
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
                let mut versions = txn.open_table(HISTORY).map_err(db_err)?;
                let at = KeyRef {
                    tenant: &tenant,
                    service: &service,
                    key: &key,
                };
                history::record(
                    &mut versions,
                    at,
                    &entry,
                    value.as_deref(),
                    last_version,
                    &audit,
                    &retention,
                )?;
                entry
            };
            txn.commit().map_err(db_err)?;
            Ok(entry.without_secret())
        })
        .await
    }

    async fn history(
        &self,
        scope: &Scope,
        key: &str,
        query: &HistoryQuery,
    ) -> Result<HistoryPage, StoreError> {
        let (tenant, service) = scope_parts(scope);
        let key = key.to_owned();
        let query = *query;
        self.blocking(move |db, legacy| {
            let txn = db.begin_read().map_err(db_err)?;
            let entries = txn.open_table(ENTRIES).map_err(db_err)?;
            let id = (tenant.as_str(), service.as_str(), key.as_str());
            let current = match entries.get(id).map_err(db_err)? {
                Some(v) => Some(decode(
                    &tenant,
                    &service,
                    &key,
                    v.value(),
                    query.with_secret,
                    legacy,
                )?),
                None => None,
            };
            let versions = txn.open_table(HISTORY).map_err(db_err)?;
            let at = KeyRef {
                tenant: &tenant,
                service: &service,
                key: &key,
            };
            history::page(&versions, at, &query, current)
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
