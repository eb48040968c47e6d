//! A write through configwatch as one `TransactWriteItems`: the config item
//! (conditional on the version read before), its new history item (conditional on
//! not existing), the expiry of the version it supersedes, and the count retention
//! (older history items deleted). Either all of it lands or none of it.
//!
//! Boundary: plans and builds the transaction from what was read (the item's
//! version, the key's history items); the read-check-retry loop is the backend's
//! ([`super`]). [`plan`] is pure, so the retention arithmetic is tested without a
//! table.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::types::{AttributeValue, Delete, Put, TransactWriteItem, Update};

use super::DynamoBackend;
use super::audit::{EXPIRES_AT, Recorded, history_item, history_key, history_prefix};
use super::item::{
    AUDITED, CONFIG, CREATED_AT, IS_ACTIVE, PK, SK, UPDATED_AT, VERSION, item_key, now_text,
    partition_key,
};
use crate::model::{Entry, Scope};
use crate::store::StoreError;
use crate::store::history::{Audit, Source};

/// The most actions one `TransactWriteItems` may hold.
pub const MAX_TRANSACTION_ITEMS: usize = 100;

/// One history item of a key as a write sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Kept {
    pub version: u64,
    /// It has an `expiresAt` (it was superseded and its expiry set).
    pub expires: bool,
}

/// What one write does to a key's history besides adding its own version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// The new version: one above both the item's and every recorded one.
    pub version: u64,
    /// Kept versions that get their expiry now (the one superseded, and any older
    /// one whose expiry was never set).
    pub expire: Vec<u64>,
    /// Versions past the count limit, deleted in the transaction.
    pub prune: Vec<u64>,
    /// Versions past the count limit that do not fit in the transaction: deleted
    /// after it, best effort.
    pub prune_later: Vec<u64>,
}

/// Plans a write on an item at version `seen` (0: none) whose history holds `kept`
/// (newest first), keeping `max_versions` versions with the new one. `None` when
/// no version is left above the highest.
pub(crate) fn plan(seen: u64, kept: &[Kept], max_versions: u32) -> Option<Plan> {
    let highest = kept.iter().map(|k| k.version).max().unwrap_or(0);
    let version = seen.max(highest).checked_add(1)?;
    let keep = usize::try_from(max_versions.max(1) - 1).unwrap_or(usize::MAX);
    let (stay, past) = kept.split_at(keep.min(kept.len()));
    // The config item and the new history item take two actions.
    let room = MAX_TRANSACTION_ITEMS - 2;
    let mut expire: Vec<u64> = stay
        .iter()
        .filter(|k| !k.expires)
        .map(|k| k.version)
        .collect();
    expire.truncate(room);
    let mut prune: Vec<u64> = past.iter().map(|k| k.version).collect();
    let prune_later = prune.split_off(prune.len().min(room - expire.len()));
    Some(Plan {
        version,
        expire,
        prune,
        prune_later,
    })
}

/// Epoch seconds at which a version superseded now expires.
pub(crate) fn expiry(max_age: Duration) -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .saturating_add(max_age)
        .as_secs()
}

fn names(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn built<T, E: std::fmt::Display>(result: Result<T, E>) -> Result<T, StoreError> {
    result.map_err(|e| StoreError::Internal(format!("cannot build a DynamoDB transaction: {e}")))
}

impl DynamoBackend {
    /// The key's history items, newest first (version and whether their expiry is
    /// set; nothing else is read).
    pub(super) async fn history_kept(
        &self,
        scope: &Scope,
        key: &str,
    ) -> Result<Vec<Kept>, StoreError> {
        let pk = partition_key(scope);
        let prefix = history_prefix(key)?;
        let query = self
            .client
            .query()
            .table_name(self.table.as_ref())
            .key_condition_expression("#pk = :pk AND begins_with(#sk, :prefix)")
            .projection_expression("#sk, #version, #exp")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#sk", SK)
            .expression_attribute_names("#version", VERSION)
            .expression_attribute_names("#exp", EXPIRES_AT)
            .expression_attribute_values(":pk", AttributeValue::S(pk))
            .expression_attribute_values(":prefix", AttributeValue::S(prefix))
            .scan_index_forward(false)
            .consistent_read(true);
        let mut kept = Vec::new();
        self.query_each("Query (history)", query, |item| {
            let version = match item.get(VERSION) {
                Some(AttributeValue::N(v)) => v.trim().parse().ok(),
                _ => None,
            };
            if let Some(version) = version {
                kept.push(Kept {
                    version,
                    expires: item.contains_key(EXPIRES_AT),
                });
            }
            true
        })
        .await?;
        Ok(kept)
    }

    /// One transactional write attempt on an item read at version `seen` (`None`:
    /// no version attribute, or no item). `Ok(None)`: a condition refused it (the
    /// item or its history changed since they were read).
    pub(super) async fn transact(
        &self,
        scope: &Scope,
        key: &str,
        config: Option<&AttributeValue>,
        seen: Option<u64>,
        plan: &Plan,
        audit: &Audit,
    ) -> Result<Option<Entry>, StoreError> {
        let now = now_text();
        let pk = AttributeValue::S(partition_key(scope));
        let version = AttributeValue::N(plan.version.to_string());
        let mut values = HashMap::from([
            (":now".to_owned(), AttributeValue::S(now.clone())),
            (":new".to_owned(), version),
        ]);
        let mut names = names(&[
            ("#version", VERSION),
            ("#active", IS_ACTIVE),
            ("#updated", UPDATED_AT),
            ("#audited", AUDITED),
        ]);
        let update = match config {
            Some(config) => {
                names.insert("#config".into(), CONFIG.into());
                names.insert("#created".into(), CREATED_AT.into());
                values.insert(":config".into(), config.clone());
                values.insert(":true".into(), AttributeValue::Bool(true));
                "SET #config = :config, #active = :true, #updated = :now, \
                 #created = if_not_exists(#created, :now), #version = :new, #audited = :new"
            }
            None => {
                values.insert(":false".into(), AttributeValue::Bool(false));
                "SET #active = :false, #updated = :now, #version = :new, #audited = :new"
            }
        };
        let condition = match seen {
            Some(seen) => {
                values.insert(":seen".into(), AttributeValue::N(seen.to_string()));
                "#version = :seen"
            }
            None => "attribute_not_exists(#version)",
        };
        let config_item = built(
            Update::builder()
                .table_name(self.table.as_ref())
                .set_key(Some(item_key(scope, key)?))
                .update_expression(update)
                .condition_expression(condition)
                .set_expression_attribute_names(Some(names))
                .set_expression_attribute_values(Some(values))
                .build(),
        )?;
        let recorded = Recorded {
            version: plan.version,
            previous: seen.unwrap_or(0),
            config: config.cloned(),
            written_at: now,
        };
        let history = history_item(&pk, key, &recorded, &Source::Api(audit.clone()))?;
        let new_history = built(
            Put::builder()
                .table_name(self.table.as_ref())
                .set_item(Some(history.clone()))
                .condition_expression("attribute_not_exists(#pk)")
                .expression_attribute_names("#pk", PK)
                .build(),
        )?;
        let mut actions = vec![
            TransactWriteItem::builder().update(config_item).build(),
            TransactWriteItem::builder().put(new_history).build(),
        ];
        let expires = AttributeValue::N(expiry(self.retention.max_age).to_string());
        for old in &plan.expire {
            let update = built(
                Update::builder()
                    .table_name(self.table.as_ref())
                    .set_key(Some(history_key(&pk, key, *old)?))
                    .update_expression("SET #exp = :exp")
                    .condition_expression("attribute_exists(#pk)")
                    .expression_attribute_names("#exp", EXPIRES_AT)
                    .expression_attribute_names("#pk", PK)
                    .expression_attribute_values(":exp", expires.clone())
                    .build(),
            )?;
            actions.push(TransactWriteItem::builder().update(update).build());
        }
        for old in &plan.prune {
            let delete = built(
                Delete::builder()
                    .table_name(self.table.as_ref())
                    .set_key(Some(history_key(&pk, key, *old)?))
                    .build(),
            )?;
            actions.push(TransactWriteItem::builder().delete(delete).build());
        }
        match self
            .client
            .transact_write_items()
            .set_transact_items(Some(actions))
            .send()
            .await
        {
            Ok(_) => {}
            Err(e) if cancelled_by_a_condition(&e) => return Ok(None),
            Err(e) => return Err(self.error("TransactWriteItems", e)),
        }
        self.prune_later(scope, key, &pk, &plan.prune_later).await;
        let (_, version) = super::audit::parse_history_item(&history).map_err(|e| {
            StoreError::Internal(format!(
                "the version written for '{key}' cannot be read: {e}"
            ))
        })?;
        Ok(Some(version.entry))
    }

    /// Deletes history items that did not fit in the transaction: best effort,
    /// logged and counted; the next write tries again.
    async fn prune_later(&self, scope: &Scope, key: &str, pk: &AttributeValue, versions: &[u64]) {
        for old in versions {
            let Ok(item_key) = history_key(pk, key, *old) else {
                continue;
            };
            let deleted = self
                .client
                .delete_item()
                .table_name(self.table.as_ref())
                .set_key(Some(item_key))
                .send()
                .await;
            if let Err(e) = deleted {
                let e = self.error("DeleteItem (history)", e);
                self.counters.add_prune_failure();
                tracing::warn!(%scope, key, version = old, error = %e, "cannot delete a version past the history's count limit; the next write tries again");
            }
        }
    }
}

/// Whether a transaction was cancelled because a condition refused, or because
/// another transaction held one of its items: both are resolved by reading again.
fn cancelled_by_a_condition<R>(
    err: &aws_sdk_dynamodb::error::SdkError<
        aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError,
        R,
    >,
) -> bool {
    use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
    match err.as_service_error() {
        Some(TransactWriteItemsError::TransactionCanceledException(e)) => {
            e.cancellation_reasons().iter().any(|r| {
                matches!(
                    r.code(),
                    Some("ConditionalCheckFailed" | "TransactionConflict")
                )
            })
        }
        Some(TransactWriteItemsError::TransactionInProgressException(_)) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(versions: &[(u64, bool)]) -> Vec<Kept> {
        versions
            .iter()
            .map(|&(version, expires)| Kept { version, expires })
            .collect()
    }

    #[test]
    fn a_first_write_is_version_one_with_nothing_else_to_do() {
        let p = plan(0, &[], 100).unwrap_or_else(|| unreachable!());
        assert_eq!(p.version, 1);
        assert!(p.expire.is_empty() && p.prune.is_empty() && p.prune_later.is_empty());
    }

    #[test]
    fn the_superseded_version_expires_and_versions_past_the_count_go() {
        // Current 5 (not expiring), 4 and 3 already expiring, 2 and 1 past a limit of 3.
        let history = kept(&[(5, false), (4, true), (3, true), (2, true), (1, true)]);
        let p = plan(5, &history, 3).unwrap_or_else(|| unreachable!());
        assert_eq!(p.version, 6);
        assert_eq!(p.expire, vec![5]);
        assert_eq!(p.prune, vec![3, 2, 1]);
        // A limit of one keeps only the new version.
        let p = plan(5, &history, 1).unwrap_or_else(|| unreachable!());
        assert!(p.expire.is_empty());
        assert_eq!(p.prune, vec![5, 4, 3, 2, 1]);
    }

    #[test]
    fn a_version_never_repeats_one_history_holds() {
        // The item was removed by another tool and written again at version 1.
        let p = plan(1, &kept(&[(7, true)]), 100).unwrap_or_else(|| unreachable!());
        assert_eq!(p.version, 8);
        assert!(plan(u64::MAX, &[], 100).is_none());
    }

    #[test]
    fn deletes_past_the_transaction_limit_wait_for_after_it() {
        let history: Vec<Kept> = (1..=250)
            .rev()
            .map(|v| Kept {
                version: v,
                expires: v != 250,
            })
            .collect();
        let p = plan(250, &history, 10).unwrap_or_else(|| unreachable!());
        assert_eq!(p.expire, vec![250]);
        assert_eq!(2 + p.expire.len() + p.prune.len(), MAX_TRANSACTION_ITEMS);
        assert_eq!(p.prune.len() + p.prune_later.len(), 241);
        assert_eq!(p.prune.first(), Some(&241));
        assert_eq!(p.prune_later.last(), Some(&1));
    }
}
