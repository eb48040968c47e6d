//! The DynamoDB backend for `tenant_config_*`: one item per key, written with
//! compare-and-set on its `version` attribute.
//!
//! Job: load a scope's items, write Put/Delete with compare-and-set together with
//! the key's history item (one `TransactWriteItems`), read one item, read a key's
//! history, and (for [`crate::source::ddb_streams`]) turn any item or stream image
//! into an [`Entry`] and record other tools' changes in history. Boundary: AWS SDK types stay in this module and the stream source;
//! the hub and the API see only [`Scope`], [`Entry`] and [`StoreError`].
//!
//! Parts: [`item`] the item encoding (shared with the stream reader), `audit` the
//! history item encoding (`AUDIT#{name}#{version:020}` in the key's partition),
//! `error` how a call failed, `write` the re-versioning, `transact` the writes with
//! their history and retention, `history` the history reads, `external` the
//! recording of other tools' changes; this file the client, loads (`Query` by
//! pages, `CONFIG#` items only) and reads.
//!
//! History. A write reads the item (its version) and the key's history items
//! (versions only), then writes in one transaction: the config item, conditional on
//! the version read; its history item, conditional on not existing; the expiry
//! (`expiresAt`, for DynamoDB's TTL) of the version it supersedes; and deletes of
//! the versions past [`Retention::max_versions`]. The current version never
//! expires. Changes by other tools are recorded from the stream, best effort.
//!
//!
//! Retry policy, per operation. Every call goes through the SDK's standard retry
//! (the client's configuration, set once in [`crate::aws::retry_config`]: exponential
//! backoff with jitter, on throttling, 5xx, timeouts and connection failures); what
//! is still failing then is
//! [`StoreError::Unavailable`], and the caller (the API client, the stream reader)
//! decides when to try again.
//! - `Query` (load) and `GetItem` (read, conflict reports): idempotent reads, the
//!   standard retry fits.
//! - `TransactWriteItems` for Put/Delete: the SDK gives each call an idempotency
//!   token (`ClientRequestToken`), so a retried attempt whose predecessor landed
//!   does not apply twice. The item's version is read first and checked against
//!   `expected` (a conflict is reported with the version read); a transaction
//!   cancelled by a condition (the item or its history changed since the read) is
//!   read and tried again, up to [`WRITE_ATTEMPTS`] times.
//! - `DeleteItem` of versions past the count limit that did not fit in the
//!   transaction: once, best effort, logged and counted; the next write tries again.
//! - `UpdateItem` that re-versions an item ([`VersionWriter::bump_version`]):
//!   conditional on the version seen, so a retry or a second server doing the same is
//!   refused by the condition and harmless.

mod audit;
mod error;
mod external;
mod history;
pub mod item;
mod transact;
mod write;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder;
use aws_sdk_dynamodb::types::AttributeValue;

pub use audit::{is_history_item, is_history_sort_key};
pub(crate) use error::{Failure, classify};
pub use external::{ExternalChange, HistoryWriter};
pub use history::UNRECORDED_INSTANCE;
pub use item::{
    Item, ItemError, MAX_NESTING, ParsedItem, attr_to_json, item_active, item_audited,
    item_version, json_to_attr, parse_item, parse_item_keys,
};
use item::{PK, SK, SK_PREFIX, item_key, partition_key};
pub use transact::MAX_TRANSACTION_ITEMS;
pub use write::VersionWriter;

use super::history::{Audit, HistoryPage, HistoryQuery, Retention};
use super::{Backend, StoreError, Write, check_expected};
use crate::json::{self, Json};
use crate::keys::TENANT_CONFIG;
use crate::model::{Entry, Scope};

/// Tries of a conditional write whose conflict vanished on re-read.
pub const WRITE_ATTEMPTS: usize = 3;

/// What the backend counts of its history upkeep.
#[derive(Debug, Default)]
pub struct HistoryCounters {
    /// Deletes of versions past the count limit that failed after their write's
    /// transaction (tried again by the next write).
    prune_failures: AtomicU64,
}

impl HistoryCounters {
    fn add_prune_failure(&self) {
        self.prune_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn prune_failures(&self) -> u64 {
        self.prune_failures.load(Ordering::Relaxed)
    }
}

/// The `tenant_config_*` backend on one DynamoDB table.
pub struct DynamoBackend {
    client: aws_sdk_dynamodb::Client,
    table: Arc<str>,
    retention: Retention,
    counters: Arc<HistoryCounters>,
}

impl DynamoBackend {
    /// The backend on `table`, keeping history by the default [`Retention`].
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        DynamoBackend {
            client,
            table: Arc::from(table.into()),
            retention: Retention::default(),
            counters: Arc::default(),
        }
    }

    /// Keeps history by `retention` instead.
    pub fn with_retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    pub fn retention(&self) -> Retention {
        self.retention
    }

    /// What the backend counts of its history upkeep, for the metrics.
    pub fn history_counters(&self) -> Arc<HistoryCounters> {
        self.counters.clone()
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// Runs `query` page by page, handing each item to `each` until it returns
    /// false or the pages end.
    async fn query_each(
        &self,
        operation: &str,
        query: QueryFluentBuilder,
        mut each: impl FnMut(&Item) -> bool + Send,
    ) -> Result<(), StoreError> {
        let mut start: Option<Item> = None;
        loop {
            let page = query
                .clone()
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| self.error(operation, e))?;
            for item in page.items() {
                if !each(item) {
                    return Ok(());
                }
            }
            match page.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => return Ok(()),
            }
        }
    }

    async fn get_item(&self, scope: &Scope, key: &str) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(self.table.as_ref())
            .set_key(Some(item_key(scope, key)?))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.error("GetItem", e))?;
        Ok(out.item)
    }
}

fn to_entry(scope: &Scope, key: &str, item: &Item) -> Result<Entry, StoreError> {
    let parsed = parse_item(item).map_err(|e| {
        StoreError::Internal(format!("item for '{key}' of '{scope}' cannot be read: {e}"))
    })?;
    Ok(parsed.entry)
}

#[async_trait]
impl Backend for DynamoBackend {
    fn name(&self) -> &'static str {
        "dynamodb"
    }

    async fn load(&self, scope: &Scope, prefix: &str) -> Result<Vec<Entry>, StoreError> {
        let name_prefix = if TENANT_CONFIG.prefix.starts_with(prefix) {
            ""
        } else if let Some(rest) = prefix.strip_prefix(TENANT_CONFIG.prefix) {
            rest
        } else {
            return Ok(Vec::new());
        };
        let query = self
            .client
            .query()
            .table_name(self.table.as_ref())
            .key_condition_expression("#pk = :pk AND begins_with(#sk, :sk)")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#sk", SK)
            .expression_attribute_values(":pk", AttributeValue::S(partition_key(scope)))
            .expression_attribute_values(
                ":sk",
                AttributeValue::S(format!("{SK_PREFIX}{name_prefix}")),
            )
            .consistent_read(true);
        let mut out = Vec::new();
        self.query_each("Query", query, |item| {
            match parse_item(item) {
                Ok(parsed) => out.push(parsed.entry),
                Err(e) => tracing::warn!(
                    table = %self.table,
                    %scope,
                    sk = ?item.get(SK),
                    error = %e,
                    "skipping an item that is not valid configuration"
                ),
            }
            true
        })
        .await?;
        Ok(out)
    }

    async fn write(
        &self,
        scope: &Scope,
        key: &str,
        write: Write,
        expected: Option<u64>,
        audit: &Audit,
    ) -> Result<Entry, StoreError> {
        let config = match &write {
            Write::Put { secret: true, .. } => {
                return Err(StoreError::Internal(format!(
                    "'{key}' cannot hold a secret: {}* keys have none",
                    TENANT_CONFIG.prefix
                )));
            }
            Write::Put { value, .. } => {
                let json = Json::parse(value, json::MAX_DEPTH).map_err(|e| {
                    StoreError::Internal(format!("value for '{key}' is not JSON: {e}"))
                })?;
                Some(json_to_attr(&json))
            }
            Write::Delete => None,
        };
        for _ in 0..WRITE_ATTEMPTS {
            let (seen, live) = match self.get_item(scope, key).await? {
                None => (None, false),
                Some(item) => {
                    let unreadable = |e: ItemError| {
                        StoreError::Internal(format!(
                            "item for '{key}' of '{scope}' cannot be read: {e}"
                        ))
                    };
                    (
                        item_version(&item).map_err(unreadable)?,
                        item_active(&item).map_err(unreadable)?,
                    )
                }
            };
            let live_version = if live { seen.unwrap_or(0) } else { 0 };
            check_expected(key, expected, live_version)?;
            if config.is_none() && !live {
                return Err(StoreError::NotFound(key.to_owned()));
            }
            let kept = self.history_kept(scope, key).await?;
            let plan = transact::plan(seen.unwrap_or(0), &kept, self.retention.max_versions)
                .ok_or_else(|| {
                    StoreError::Internal(format!("'{key}' has no version left above its highest"))
                })?;
            if let Some(entry) = self
                .transact(scope, key, config.as_ref(), seen, &plan, audit)
                .await?
            {
                return Ok(entry);
            }
            // The item or its history changed between the reads and the write.
        }
        Err(StoreError::Unavailable(format!(
            "'{key}' on table '{}' kept changing during {WRITE_ATTEMPTS} conditional writes; try again",
            self.table
        )))
    }

    async fn history(
        &self,
        scope: &Scope,
        key: &str,
        query: &HistoryQuery,
    ) -> Result<HistoryPage, StoreError> {
        self.read_history(scope, key, query).await
    }

    async fn read(
        &self,
        scope: &Scope,
        key: &str,
        _with_secret: bool,
    ) -> Result<Option<Entry>, StoreError> {
        match self.get_item(scope, key).await? {
            None => Ok(None),
            Some(item) => to_entry(scope, key, &item).map(Some),
        }
    }
}
