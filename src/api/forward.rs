//! What a relay does not answer from its own view: writes, and secrets' values. It
//! sends them upstream with the caller's own token, so the upstream decides with the
//! caller's rights, never with the relay's (the relay role cannot write, and a
//! secret is never cached anywhere).
//!
//! Boundary: the call's shape as the API hands it over. How the upstream is reached
//! (connections, failover, the relay's credential) is `relay`'s business.

use async_trait::async_trait;
use tonic::Status;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};

use crate::model::{Entry, Scope};
use crate::proto;

/// The caller's `authorization` header, as it came: handed upstream untouched.
#[derive(Clone)]
pub struct Bearer(pub AsciiMetadataValue);

impl Bearer {
    /// The request's `authorization` header; the auth layer has checked it already.
    pub fn of(metadata: &MetadataMap) -> Result<Bearer, Status> {
        metadata
            .get("authorization")
            .cloned()
            .map(Bearer)
            .ok_or_else(|| Status::unauthenticated("request was not authenticated"))
    }
}

impl std::fmt::Debug for Bearer {
    // Never printed: it is a credential.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bearer(..)")
    }
}

/// The upstream of a relay, as the API calls it.
#[async_trait]
pub trait Forward: Send + Sync + 'static {
    /// Sends a Put upstream as the caller; the entry as written.
    async fn put(&self, caller: &Bearer, request: proto::PutRequest) -> Result<Entry, Status>;

    /// Sends a Delete upstream as the caller; the tombstone.
    async fn delete(&self, caller: &Bearer, request: proto::DeleteRequest)
    -> Result<Entry, Status>;

    /// Sends a History call upstream as the caller (relays keep no history); the
    /// reply as the upstream gave it.
    async fn history(
        &self,
        caller: &Bearer,
        request: proto::HistoryRequest,
    ) -> Result<proto::HistoryResponse, Status>;

    /// Reads one key of `scope` upstream as the caller, a secret's value included;
    /// `None` when it does not exist there.
    async fn read(
        &self,
        caller: &Bearer,
        scope: &Scope,
        key: &str,
    ) -> Result<Option<Entry>, Status>;
}
