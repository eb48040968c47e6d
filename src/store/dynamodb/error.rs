//! How a DynamoDB or DynamoDB Streams call failed: [`classify`] sorts any SDK failure
//! (throttled, passing, missing, other), and the backend turns it into a
//! [`StoreError`] naming the operation and table.
//!
//! Boundary: SDK errors in, [`Failure`] and [`StoreError`] out.

use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use super::DynamoBackend;
use crate::store::StoreError;

/// How an AWS call failed, whatever the operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Throttled: slow down and try again.
    Throttled,
    /// 5xx, timeouts, connection failures: try again.
    Transient,
    /// The table, stream or shard does not exist.
    Missing,
    /// Anything else: a bug, a permission, a bad request.
    Other,
}

const THROTTLING_CODES: [&str; 5] = [
    "ThrottlingException",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "LimitExceededException",
    "TooManyRequestsException",
];

pub(crate) fn classify<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> Failure {
    match err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => Failure::Transient,
        SdkError::ConstructionFailure(_) => Failure::Other,
        _ => {
            let code = err.code().unwrap_or("");
            let status = err.raw_response().map(|r| r.status().as_u16());
            if THROTTLING_CODES.contains(&code) {
                Failure::Throttled
            } else if code == "ResourceNotFoundException" {
                Failure::Missing
            } else if code == "InternalServerError" || status.is_some_and(|s| s >= 500) {
                Failure::Transient
            } else {
                Failure::Other
            }
        }
    }
}

impl DynamoBackend {
    pub(super) fn error<E>(&self, operation: &str, err: SdkError<E, HttpResponse>) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let table = &self.table;
        let detail = DisplayErrorContext(&err);
        match classify(&err) {
            Failure::Throttled | Failure::Transient => StoreError::Unavailable(format!(
                "DynamoDB {operation} on table '{table}' failed: {detail}"
            )),
            Failure::Missing => StoreError::Unavailable(format!(
                "DynamoDB table '{table}' does not exist ({operation}); create it (deploy/configwatch.cfn.json) or fix --table"
            )),
            Failure::Other => StoreError::Internal(format!(
                "DynamoDB {operation} on table '{table}' failed: {detail}"
            )),
        }
    }
}
