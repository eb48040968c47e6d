//! The one place where domain errors become gRPC statuses.

use tonic::{Code, Status};

use crate::api::page::PageTokenError;
use crate::auth::AuthError;
use crate::hub::{BadToken, PageError, SubscribeError};
use crate::keys::{KeyError, ValueError};
use crate::model::IdError;
use crate::store::StoreError;

/// Metadata key carrying the current version on a compare-and-set conflict.
pub const CURRENT_VERSION_METADATA: &str = "configwatch-current-version";

/// Metadata key on a Watch refused because its `known_digest` differs from the
/// server's state; the value [`RESUME_WITH_VERSIONS`] tells the client to reconnect
/// at once with `known_versions`.
pub const RESUME_METADATA: &str = "configwatch-resume";
pub const RESUME_WITH_VERSIONS: &str = "known-versions";

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
            StoreError::Damaged(_) => Status::data_loss(e.to_string()),
            StoreError::NoHistory(_) => Status::unimplemented(e.to_string()),
        }
    }
}

impl From<PageTokenError> for Status {
    fn from(e: PageTokenError) -> Self {
        match e {
            PageTokenError::OtherRun => Status::failed_precondition(e.to_string()),
            PageTokenError::Malformed | PageTokenError::OtherRequest => {
                Status::invalid_argument(e.to_string())
            }
        }
    }
}

impl From<PageError> for Status {
    fn from(e: PageError) -> Self {
        match e {
            PageError::Store(e) => e.into(),
            PageError::Changed(_) => Status::aborted(e.to_string()),
        }
    }
}

impl From<SubscribeError> for Status {
    fn from(e: SubscribeError) -> Self {
        match e {
            SubscribeError::Store(e) => e.into(),
            SubscribeError::DigestDiffers => {
                let mut s = Status::aborted(
                    "known_digest differs from the server's state: something changed while you were away; \
                     reconnect at once with known_versions (or with neither for the full state)",
                );
                s.metadata_mut().insert(
                    RESUME_METADATA,
                    tonic::metadata::MetadataValue::from_static(RESUME_WITH_VERSIONS),
                );
                s
            }
        }
    }
}

impl From<AuthError> for Status {
    fn from(e: AuthError) -> Self {
        let code = match e {
            AuthError::UnknownRole(_) | AuthError::RelayFromAttribute(_) => Code::PermissionDenied,
            AuthError::KeysUnavailable(_) => Code::Unavailable,
            _ => Code::Unauthenticated,
        };
        Status::new(code, e.to_string())
    }
}
