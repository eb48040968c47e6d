//! The one place where domain errors become gRPC statuses.

use tonic::{Code, Status};

use crate::auth::AuthError;
use crate::hub::BadToken;
use crate::keys::{KeyError, ValueError};
use crate::model::IdError;
use crate::store::StoreError;

/// Metadata key carrying the current version on a compare-and-set conflict.
pub const CURRENT_VERSION_METADATA: &str = "configwatch-current-version";

impl From<KeyError> for Status {
    fn from(e: KeyError) -> Self {
        Status::invalid_argument(e.to_string())
    }
}

impl From<ValueError> for Status {
    fn from(e: ValueError) -> Self {
        Status::invalid_argument(e.to_string())
    }
}

impl From<BadToken> for Status {
    fn from(e: BadToken) -> Self {
        Status::invalid_argument(e.to_string())
    }
}

impl From<IdError> for Status {
    fn from(e: IdError) -> Self {
        Status::invalid_argument(e.to_string())
    }
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Self {
        match &e {
            StoreError::Conflict { current, .. } => {
                let mut s = Status::failed_precondition(e.to_string());
                if let Ok(v) = current.to_string().parse() {
                    s.metadata_mut().insert(CURRENT_VERSION_METADATA, v);
                }
                s
            }
            StoreError::NotFound(_) => Status::not_found(e.to_string()),
            StoreError::Unavailable(_) => Status::unavailable(e.to_string()),
            StoreError::Internal(_) => {
                tracing::error!(error = %e, "storage error");
                Status::internal(e.to_string())
            }
        }
    }
}

impl From<AuthError> for Status {
    fn from(e: AuthError) -> Self {
        let code = match e {
            AuthError::UnknownRole(_) => Code::PermissionDenied,
            AuthError::KeysUnavailable(_) => Code::Unavailable,
            _ => Code::Unauthenticated,
        };
        Status::new(code, e.to_string())
    }
}
