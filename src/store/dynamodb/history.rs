//! Reading a key's history: its `AUDIT#` items newest first, paged by version,
//! without the ones past their expiry (DynamoDB's TTL deletes lazily, up to days
//! later), and the current config item always as the newest version.
//!
//! Boundary: reads only (`Query`, `GetItem`); items are read through
//! [`super::audit`] and [`super::item`].

use std::time::{SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::types::AttributeValue;

use super::DynamoBackend;
use super::audit::{expires_at, history_sort_key, parse_history_item};
use super::item::{PK, SK, parse_item, partition_key};
use crate::model::Scope;
use crate::store::StoreError;
use crate::store::history::{HistoryPage, HistoryQuery, MAX_PAGE_VERSIONS, Source, Version};

/// The instance a current version without a history item is marked with: no
/// instance recorded it (a table written before history was kept, or a change by
/// another tool not recorded yet).
pub const UNRECORDED_INSTANCE: &str = "";

impl DynamoBackend {
    pub(super) async fn read_history(
        &self,
        scope: &Scope,
        key: &str,
        query: &HistoryQuery,
    ) -> Result<HistoryPage, StoreError> {
        let limit = query.limit.clamp(1, MAX_PAGE_VERSIONS);
        let highest = match query.before {
            Some(0) => return Ok(HistoryPage::default()),
            Some(before) => before - 1,
            None => u64::MAX,
        };
        let current = match self.get_item(scope, key).await? {
            None => None,
            Some(item) => match parse_item(&item) {
                Ok(parsed) if parsed.entry.version <= highest => Some(parsed.entry),
                Ok(_) => None,
                Err(e) => {
                    return Err(StoreError::Internal(format!(
                        "item for '{key}' of '{scope}' cannot be read: {e}"
                    )));
                }
            },
        };
        let mut versions = self.recorded(scope, key, highest, limit + 1).await?;
        if let Some(current) = current
            && !versions.iter().any(|v| v.entry.version == current.version)
        {
            let previous = versions
                .iter()
                .map(|v| v.entry.version)
                .filter(|v| *v < current.version)
                .max()
                .unwrap_or(0);
            versions.push(Version {
                entry: current,
                previous,
                source: Source::External {
                    instance: UNRECORDED_INSTANCE.to_owned(),
                    modified_by: None,
                },
            });
            versions.sort_by_key(|v| std::cmp::Reverse(v.entry.version));
        }
        let more = versions.len() > limit;
        versions.truncate(limit);
        if !query.with_secret {
            for v in &mut versions {
                v.entry = v.entry.clone().without_secret();
            }
        }
        Ok(HistoryPage {
            next_before: more
                .then(|| versions.last().map(|v| v.entry.version))
                .flatten(),
            versions,
        })
    }

    /// Up to `want` recorded versions at or below `highest`, newest first, without
    /// expired ones.
    async fn recorded(
        &self,
        scope: &Scope,
        key: &str,
        highest: u64,
        want: usize,
    ) -> Result<Vec<Version>, StoreError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let query = self
            .client
            .query()
            .table_name(self.table.as_ref())
            .key_condition_expression("#pk = :pk AND #sk BETWEEN :low AND :high")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#sk", SK)
            .expression_attribute_values(":pk", AttributeValue::S(partition_key(scope)))
            .expression_attribute_values(":low", AttributeValue::S(history_sort_key(key, 0)?))
            .expression_attribute_values(
                ":high",
                AttributeValue::S(history_sort_key(key, highest)?),
            )
            .scan_index_forward(false)
            .limit(i32::try_from(want).unwrap_or(i32::MAX))
            .consistent_read(true);
        let mut out = Vec::new();
        self.query_each("Query (history)", query, |item| {
            if expires_at(item).ok().flatten().is_some_and(|at| at <= now) {
                return true;
            }
            match parse_history_item(item) {
                Ok((_, version)) => out.push(version),
                Err(e) => tracing::warn!(
                    table = %self.table,
                    %scope,
                    sk = ?item.get(SK),
                    error = %e,
                    "skipping a history item that cannot be read"
                ),
            }
            out.len() < want
        })
        .await?;
        Ok(out)
    }
}
