//! The DynamoDB backend for `tenant_config_*`: one item per key, written with
//! compare-and-set on its `version` attribute.
//!
//! Job: load a scope's items, write Put/Delete as conditional `UpdateItem`s, read one
//! item, and (for [`crate::source::ddb_streams`]) turn any item or stream image into
//! an [`Entry`]. Boundary: AWS SDK types stay in this module and the stream source;
//! the hub and the API see only [`Scope`], [`Entry`] and [`StoreError`].
//!
//! Parts: [`item`] the item encoding (shared with the stream reader), `error` how a
//! call failed, `write` the conditional writes; this file the client, loads (`Query`
//! by pages) and reads.
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
//! - `UpdateItem` for Put/Delete: a retried attempt whose predecessor did land is
//!   seen as a version conflict (with a condition; the error names the version the
//!   first attempt produced) or as one extra version (without one). Both are safe for
//!   compare-and-set clients, so the standard retry is kept. A conflict found by the
//!   condition is re-read and reported; if the re-read shows no conflict (the item
//!   changed in between) the write is tried again, up to [`WRITE_ATTEMPTS`] times.
//! - `UpdateItem` that re-versions an item ([`VersionWriter::bump_version`]):
//!   conditional on the version seen, so a retry or a second server doing the same is
//!   refused by the condition and harmless.

mod error;
pub mod item;
mod write;

use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;

pub(crate) use error::{Failure, classify};
pub use item::{
    Item, ItemError, MAX_NESTING, ParsedItem, attr_to_json, item_active, item_version,
    json_to_attr, parse_item, parse_item_keys,
};
use item::{PK, SK, SK_PREFIX, item_key, partition_key};
pub use write::VersionWriter;

use super::history::Audit;
use super::{Backend, StoreError, Write, check_expected, live_version};
use crate::json::{self, Json};
use crate::keys::TENANT_CONFIG;
use crate::model::{Entry, Scope};

/// Tries of a conditional write whose conflict vanished on re-read.
pub const WRITE_ATTEMPTS: usize = 3;

/// The `tenant_config_*` backend on one DynamoDB table.
pub struct DynamoBackend {
    client: aws_sdk_dynamodb::Client,
    table: Arc<str>,
}

impl DynamoBackend {
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        DynamoBackend {
            client,
            table: Arc::from(table.into()),
        }
    }

    pub fn table(&self) -> &str {
        &self.table
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
        let pk = partition_key(scope);
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(self.table.as_ref())
                .key_condition_expression("#pk = :pk AND begins_with(#sk, :sk)")
                .expression_attribute_names("#pk", PK)
                .expression_attribute_names("#sk", SK)
                .expression_attribute_values(":pk", AttributeValue::S(pk.clone()))
                .expression_attribute_values(
                    ":sk",
                    AttributeValue::S(format!("{SK_PREFIX}{name_prefix}")),
                )
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| self.error("Query", e))?;
            for item in page.items() {
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
            }
            match page.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => return Ok(out),
            }
        }
    }

    async fn write(
        &self,
        scope: &Scope,
        key: &str,
        write: Write,
        expected: Option<u64>,
        _audit: &Audit,
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
            if let Some(item) = self
                .try_write(scope, key, config.as_ref(), expected)
                .await?
            {
                return to_entry(scope, key, &item);
            }
            // The condition refused: find out why from the item as it is now.
            let current = match self.get_item(scope, key).await? {
                None => None,
                Some(item) => Some(to_entry(scope, key, &item)?),
            };
            check_expected(key, expected, live_version(current.as_ref()))?;
            if config.is_none() && current.as_ref().is_none_or(|e| e.deleted) {
                return Err(StoreError::NotFound(key.to_owned()));
            }
            // The item changed between the write and the read: try again.
        }
        Err(StoreError::Unavailable(format!(
            "'{key}' on table '{}' kept changing during {WRITE_ATTEMPTS} conditional writes; try again",
            self.table
        )))
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
