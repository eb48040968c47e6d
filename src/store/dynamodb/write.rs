//! Conditional writes on the table: Put and Delete as one `UpdateItem` with
//! compare-and-set on `version`, and the re-versioning of an item that changed
//! without a version bump.
//!
//! Boundary: builds the requests and reads their answers; the retry on a vanished
//! conflict is the backend's ([`super`]).

use async_trait::async_trait;
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};

use super::DynamoBackend;
use super::item::{
    CONFIG, CREATED_AT, IS_ACTIVE, Item, PK, UPDATED_AT, VERSION, item_key, now_text,
};
use crate::model::Scope;
use crate::store::StoreError;

/// The table write the stream reader needs: re-versioning an item that changed
/// without a version bump. The reader's tests fake it.
#[async_trait]
pub trait VersionWriter: Send + Sync + 'static {
    /// Sets the item's version to `to` if it still has version `seen` (`None`: no
    /// version attribute). `Ok(false)` when the condition refused: the item changed
    /// or another server did it first.
    async fn bump_version(
        &self,
        scope: &Scope,
        key: &str,
        seen: Option<u64>,
        to: u64,
    ) -> Result<bool, StoreError>;
}

/// Whether an `UpdateItem` failed only because its condition refused it.
fn refused(err: &SdkError<UpdateItemError, HttpResponse>) -> bool {
    err.as_service_error()
        .is_some_and(|s| s.is_conditional_check_failed_exception())
}

#[async_trait]
impl VersionWriter for DynamoBackend {
    async fn bump_version(
        &self,
        scope: &Scope,
        key: &str,
        seen: Option<u64>,
        to: u64,
    ) -> Result<bool, StoreError> {
        let mut request = self
            .update(scope, key)?
            .update_expression("SET #version = :to")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#version", VERSION)
            .expression_attribute_values(":to", AttributeValue::N(to.to_string()));
        request = match seen {
            Some(seen) => request
                .condition_expression("attribute_exists(#pk) AND #version = :seen")
                .expression_attribute_values(":seen", AttributeValue::N(seen.to_string())),
            None => request
                .condition_expression("attribute_exists(#pk) AND attribute_not_exists(#version)"),
        };
        match request.send().await {
            Ok(_) => Ok(true),
            Err(e) if refused(&e) => Ok(false),
            Err(e) => Err(self.error("UpdateItem (version)", e)),
        }
    }
}

impl DynamoBackend {
    /// An `UpdateItem` of the item holding `key` of `scope`.
    fn update(&self, scope: &Scope, key: &str) -> Result<UpdateItemFluentBuilder, StoreError> {
        Ok(self
            .client
            .update_item()
            .table_name(self.table.as_ref())
            .set_key(Some(item_key(scope, key)?)))
    }

    /// One conditional write attempt. `Ok(None)`: the condition refused it.
    pub(super) async fn try_write(
        &self,
        scope: &Scope,
        key: &str,
        config: Option<&AttributeValue>,
        expected: Option<u64>,
    ) -> Result<Option<Item>, StoreError> {
        let mut request = self
            .update(scope, key)?
            .expression_attribute_names("#version", VERSION)
            .expression_attribute_names("#active", IS_ACTIVE)
            .expression_attribute_names("#updated", UPDATED_AT)
            .expression_attribute_values(":now", AttributeValue::S(now_text()))
            .expression_attribute_values(":zero", AttributeValue::N("0".into()))
            .expression_attribute_values(":one", AttributeValue::N("1".into()))
            .return_values(ReturnValue::AllNew);
        let live = "(attribute_not_exists(#active) OR #active = :true)";
        let at_version = |n: u64| {
            if n == 0 {
                "(attribute_not_exists(#version) OR #version = :zero)"
            } else {
                "#version = :expected"
            }
        };
        let condition = match config {
            Some(config) => {
                request = request
                    .update_expression(
                        "SET #config = :config, #active = :true, #updated = :now, \
                         #created = if_not_exists(#created, :now), \
                         #version = if_not_exists(#version, :zero) + :one",
                    )
                    .expression_attribute_names("#config", CONFIG)
                    .expression_attribute_names("#created", CREATED_AT)
                    .expression_attribute_values(":config", config.clone())
                    .expression_attribute_values(":true", AttributeValue::Bool(true));
                match expected {
                    None => None,
                    // Absent, soft-deleted, or live without a version.
                    Some(0) => {
                        request = request
                            .expression_attribute_values(":false", AttributeValue::Bool(false));
                        Some(format!("{} OR #active = :false", at_version(0)))
                    }
                    Some(n) => Some(format!("{} AND {live}", at_version(n))),
                }
            }
            None => {
                request = request
                    .update_expression(
                        "SET #active = :false, #updated = :now, \
                         #version = if_not_exists(#version, :zero) + :one",
                    )
                    .expression_attribute_names("#pk", PK)
                    .expression_attribute_values(":true", AttributeValue::Bool(true))
                    .expression_attribute_values(":false", AttributeValue::Bool(false));
                Some(match expected {
                    None => format!("attribute_exists(#pk) AND {live}"),
                    Some(n) => format!("attribute_exists(#pk) AND {live} AND {}", at_version(n)),
                })
            }
        };
        if let Some(n) = expected.filter(|n| *n > 0) {
            request =
                request.expression_attribute_values(":expected", AttributeValue::N(n.to_string()));
        }
        if let Some(condition) = condition {
            request = request.condition_expression(condition);
        }
        match request.send().await {
            Ok(out) => Ok(Some(out.attributes.unwrap_or_default())),
            Err(e) if refused(&e) => Ok(None),
            Err(e) => Err(self.error("UpdateItem", e)),
        }
    }
}
