//! Storage backends and the router that picks one by key prefix.
//!
//! A [`Backend`] is a strategy: it loads a scope's entries, writes with
//! compare-and-set on the key's version, and reads single keys (secrets on demand). The [`Router`]
//! holds one entry per key family (the tagged storage pattern): adding a backend is one
//! more `(family, backend)` pair. The hub never calls a backend for writes; the API
//! does, then hands the resulting entry to the hub.
//!
//! Backends, each a folder whose `mod.rs` names its parts: [`embedded`] the redb
//! store (records, recovery from I/O errors), [`dynamodb`] the table (item encoding
//! shared with the stream reader, conditional writes), [`ssm`] Parameter Store;
//! [`identity`] the store identity; [`history`] what a write records of its writer
//! and what a history read returns. Each keeps its SDK or database types inside it.

pub mod dynamodb;
pub mod embedded;
pub mod history;
pub mod identity;
pub mod ssm;

use std::sync::Arc;

use async_trait::async_trait;

use crate::keys::{self, KeyError, KeyFamily};
use crate::model::{Entry, Scope};
use history::{Audit, HistoryPage, HistoryQuery};

/// What a backend reports when an operation fails.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Compare-and-set failed. `current` is 0 when the key does not exist.
    #[error(
        "version conflict on '{key}': expected version {expected}, current version is {current}"
    )]
    Conflict {
        key: String,
        expected: u64,
        current: u64,
    },
    #[error("key '{0}' does not exist")]
    NotFound(String),
    /// The backend cannot be reached or refused for a passing reason; try again.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A bug or corrupt data: not the caller's fault, not fixed by retrying.
    #[error("storage error: {0}")]
    Internal(String),
    /// A stored record failed its check (checksum, format): it is never served,
    /// and never taken for a deletion.
    #[error("stored data is damaged: {0}")]
    Damaged(String),
    /// The backend keeps no history of its keys.
    #[error("the {0} backend keeps no history of its keys")]
    NoHistory(&'static str),
}

/// Whether a backend can currently do its work, for the health service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreHealth {
    Ok,
    /// Writes fail (and why); the store recovers by itself.
    Failing(String),
}

/// The compare-and-set rule every backend applies: with `expected` set, the key's
/// live version (0 when it is missing or deleted) must equal it. Returns the live
/// version.
pub fn check_expected(
    key: &str,
    expected: Option<u64>,
    live_version: u64,
) -> Result<u64, StoreError> {
    match expected {
        Some(expected) if expected != live_version => Err(StoreError::Conflict {
            key: key.to_owned(),
            expected,
            current: live_version,
        }),
        _ => Ok(live_version),
    }
}

/// The version a key's current state counts as for [`check_expected`].
pub fn live_version(current: Option<&Entry>) -> u64 {
    current.filter(|e| !e.deleted).map_or(0, |e| e.version)
}

/// A write to apply: a new value, or a delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Put { value: String, secret: bool },
    Delete,
}

/// One storage backend (embedded store, DynamoDB, Parameter Store).
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// A short name for logs and errors.
    fn name(&self) -> &'static str;

    /// Every entry of `scope` whose key starts with `prefix`, tombstones included.
    /// Secret entries come without their value.
    async fn load(&self, scope: &Scope, prefix: &str) -> Result<Vec<Entry>, StoreError>;

    /// Applies a write. With `expected` set, it succeeds only when the key's current
    /// version equals it (0: the key must not exist or be deleted). Returns the new
    /// entry (secret values withheld) with its new version. A backend that keeps
    /// history records the new version with `audit`, as one change with the write.
    async fn write(
        &self,
        scope: &Scope,
        key: &str,
        write: Write,
        expected: Option<u64>,
        audit: &Audit,
    ) -> Result<Entry, StoreError>;

    /// The versions of one key, newest first, within the backend's retention (the
    /// current version always among them). A key never written gives an empty page.
    async fn history(
        &self,
        scope: &Scope,
        key: &str,
        query: &HistoryQuery,
    ) -> Result<HistoryPage, StoreError> {
        let _ = (scope, key, query);
        Err(StoreError::NoHistory(self.name()))
    }

    /// Reads one key's current state from the source of truth: the entry, a
    /// tombstone, or `None` if the backend has no record of it. A secret's value is
    /// included only when `with_secret` (for `Get`, on demand; never for the hub).
    async fn read(
        &self,
        scope: &Scope,
        key: &str,
        with_secret: bool,
    ) -> Result<Option<Entry>, StoreError>;

    /// The identity of the store behind this backend, when it keeps one itself.
    fn store_id(&self) -> Option<Arc<str>> {
        None
    }

    /// Follows the backend's health, when it reports one.
    fn health(&self) -> Option<tokio::sync::watch::Receiver<StoreHealth>> {
        None
    }
}

/// Picks the backend for a key by its family prefix.
#[derive(Clone)]
pub struct Router {
    routes: Vec<(&'static KeyFamily, Arc<dyn Backend>)>,
    /// The identity of the store the routes make up together (see
    /// [`identity`]); empty when unknown.
    store_id: Arc<str>,
}

impl Router {
    /// A router sending every key family to one backend; the store's identity is
    /// the backend's.
    pub fn single(backend: Arc<dyn Backend>) -> Self {
        Router {
            store_id: backend.store_id().unwrap_or_else(|| Arc::from("")),
            routes: keys::FAMILIES
                .iter()
                .map(|f| (*f, backend.clone()))
                .collect(),
        }
    }

    /// A router from explicit `(family, backend)` pairs.
    pub fn new(routes: Vec<(&'static KeyFamily, Arc<dyn Backend>)>) -> Self {
        Router {
            routes,
            store_id: Arc::from(""),
        }
    }

    /// Names the store these routes make up (on AWS, derived from the table).
    pub fn with_store_id(mut self, id: &str) -> Self {
        self.store_id = Arc::from(id);
        self
    }

    /// The store's identity; empty when unknown.
    pub fn store_id(&self) -> &Arc<str> {
        &self.store_id
    }

    /// The health of every backend that reports one (each backend once).
    pub fn health(&self) -> Vec<tokio::sync::watch::Receiver<StoreHealth>> {
        let mut seen: Vec<&Arc<dyn Backend>> = Vec::new();
        let mut out = Vec::new();
        for (_, backend) in &self.routes {
            if seen.iter().any(|b| Arc::ptr_eq(b, backend)) {
                continue;
            }
            seen.push(backend);
            out.extend(backend.health());
        }
        out
    }

    /// Validates `key` and returns its family and backend.
    pub fn route(&self, key: &str) -> Result<(&'static KeyFamily, &Arc<dyn Backend>), KeyError> {
        let family = keys::validate_key(key)?;
        self.routes
            .iter()
            .find(|(f, _)| f.prefix == family.prefix)
            .map(|(f, b)| (*f, b))
            .ok_or_else(|| KeyError::UnknownPrefix {
                key: key.to_owned(),
                accepted: self
                    .routes
                    .iter()
                    .map(|(f, _)| format!("'{}'", f.prefix))
                    .collect::<Vec<_>>()
                    .join(" or "),
            })
    }

    /// Loads a scope's whole configuration from every backend.
    pub async fn load_scope(&self, scope: &Scope) -> Result<Vec<Entry>, StoreError> {
        let mut all = Vec::new();
        for (family, backend) in &self.routes {
            all.extend(backend.load(scope, family.prefix).await?);
        }
        Ok(all)
    }
}
