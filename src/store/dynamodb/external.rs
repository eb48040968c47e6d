//! Recording a change another tool made (seen on the table's stream) as a history
//! item marked `external`, with the instance that saw it.
//!
//! Boundary: one conditional `PutItem` (the history item, only if no one recorded
//! that version yet: two origins seeing the same record write it once, and a write
//! through configwatch, whose transaction wrote it already, is never overwritten),
//! then the expiry of the version it superseded. Which records to record, and the
//! best effort around it, are the stream reader's.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;

use super::DynamoBackend;
use super::audit::{EXPIRES_AT, Recorded, history_item, history_key};
use super::item::{PK, partition_key, time_text};
use super::transact::expiry;
use crate::model::{Entry, Scope};
use crate::store::StoreError;
use crate::store::history::Source;

/// A version another tool made, as the stream showed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalChange {
    pub scope: Scope,
    /// The new state: a live entry, or a tombstone for a delete.
    pub entry: Entry,
    /// The version it replaced (the old image's; 0: none).
    pub previous: u64,
}

/// The table write the stream reader needs to keep history of other tools'
/// changes. The reader's tests fake it.
#[async_trait]
pub trait HistoryWriter: Send + Sync + 'static {
    /// Records `change` as seen by `instance`. `Ok(false)` when its version is
    /// recorded already.
    async fn record_external(
        &self,
        change: &ExternalChange,
        instance: &str,
    ) -> Result<bool, StoreError>;
}

#[async_trait]
impl HistoryWriter for DynamoBackend {
    async fn record_external(
        &self,
        change: &ExternalChange,
        instance: &str,
    ) -> Result<bool, StoreError> {
        let key = change.entry.key.as_ref();
        let recorded = Recorded::of_entry(
            &change.entry,
            change.previous,
            time_text(change.entry.updated_at),
        )
        .map_err(|e| StoreError::Internal(format!("the change to '{key}' cannot be kept: {e}")))?;
        let pk = AttributeValue::S(partition_key(&change.scope));
        let source = Source::External {
            instance: instance.to_owned(),
            modified_by: None,
        };
        let put = self
            .client
            .put_item()
            .table_name(self.table.as_ref())
            .set_item(Some(history_item(&pk, key, &recorded, &source)?))
            .condition_expression("attribute_not_exists(#pk)")
            .expression_attribute_names("#pk", PK)
            .send()
            .await;
        match put {
            Ok(_) => {}
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                return Ok(false);
            }
            Err(e) => return Err(self.error("PutItem (history)", e)),
        }
        if change.previous > 0 {
            self.expire_superseded(&change.scope, key, &pk, change.previous)
                .await?;
        }
        Ok(true)
    }
}

impl DynamoBackend {
    /// Sets the expiry of a superseded version's history item, if it has one and
    /// its expiry is not set yet.
    async fn expire_superseded(
        &self,
        scope: &Scope,
        key: &str,
        pk: &AttributeValue,
        version: u64,
    ) -> Result<(), StoreError> {
        let update = self
            .client
            .update_item()
            .table_name(self.table.as_ref())
            .set_key(Some(history_key(pk, key, version)?))
            .update_expression("SET #exp = :exp")
            .condition_expression("attribute_exists(#pk) AND attribute_not_exists(#exp)")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#exp", EXPIRES_AT)
            .expression_attribute_values(
                ":exp",
                AttributeValue::N(expiry(self.retention.max_age).to_string()),
            )
            .send()
            .await;
        match update {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                tracing::debug!(%scope, key, version, "the superseded version has no history item, or its expiry is set");
                Ok(())
            }
            Err(e) => Err(self.error("UpdateItem (history expiry)", e)),
        }
    }
}
