//! The re-versioning of an item that changed without a version bump: one
//! `UpdateItem` conditional on the version seen.
//!
//! Boundary: builds the request and reads its answer; Put and Delete (with their
//! history) are [`super::transact`]'s.

use async_trait::async_trait;
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder;
use aws_sdk_dynamodb::types::AttributeValue;

use super::DynamoBackend;
use super::item::{PK, VERSION, item_key};
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
}
