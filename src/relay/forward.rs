//! Writes and secret reads sent upstream with the caller's own token (the API's
//! [`Forward`]): the upstream decides with the caller's rights, and its answer,
//! refusals included, reaches the caller as it was given.
//!
//! A write goes to the preferred upstream only: a write whose answer was lost may
//! have been applied, and sending it again elsewhere could apply it twice (or fail
//! a compare-and-set that had succeeded). The caller retries, as with any
//! UNAVAILABLE. A read is tried on every upstream in turn.
//!
//! Boundary: one unary call per request; the connections are `upstreams`.

use async_trait::async_trait;
use tonic::Status;
use tonic::metadata::AsciiMetadataValue;

use super::{Inner, from_proto};
use crate::api::{Bearer, Forward};
use crate::model::{Entry, Scope};
use crate::proto;
use crate::proto::config_service_client::ConfigServiceClient;

pub(super) struct Forwarder(pub(super) std::sync::Arc<Inner>);

/// A request carrying `authorization`.
fn call<T>(message: T, authorization: &AsciiMetadataValue) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", authorization.clone());
    request
}

/// The upstream's refusal as it was; UNAVAILABLE (it could not be reached, or could
/// not serve) names the upstream.
fn upstream_status(inner: &Inner, at: usize, status: Status) -> Status {
    if status.code() == tonic::Code::Unavailable {
        return Status::unavailable(format!(
            "this relay's upstream {} is unavailable: {}; retry",
            inner.upstreams.url(at),
            status.message()
        ));
    }
    status
}

fn entry_of(entry: Option<proto::Entry>) -> Result<Entry, Status> {
    entry
        .map(from_proto)
        .ok_or_else(|| Status::internal("the upstream answered without the entry; retry"))
}

#[async_trait]
impl Forward for Forwarder {
    async fn put(&self, caller: &Bearer, request: proto::PutRequest) -> Result<Entry, Status> {
        let at = self.0.upstreams.preferred();
        let mut client = ConfigServiceClient::new(self.0.upstreams.channel(at));
        let reply = client
            .put(call(request, &caller.0))
            .await
            .map_err(|s| upstream_status(&self.0, at, s))?;
        entry_of(reply.into_inner().entry)
    }

    async fn delete(
        &self,
        caller: &Bearer,
        request: proto::DeleteRequest,
    ) -> Result<Entry, Status> {
        let at = self.0.upstreams.preferred();
        let mut client = ConfigServiceClient::new(self.0.upstreams.channel(at));
        let reply = client
            .delete(call(request, &caller.0))
            .await
            .map_err(|s| upstream_status(&self.0, at, s))?;
        entry_of(reply.into_inner().entry)
    }

    async fn history(
        &self,
        caller: &Bearer,
        request: proto::HistoryRequest,
    ) -> Result<proto::HistoryResponse, Status> {
        let first = self.0.upstreams.preferred();
        let mut last = None;
        for step in 0..self.0.upstreams.len() {
            let at = (first + step) % self.0.upstreams.len();
            let mut client = ConfigServiceClient::new(self.0.upstreams.channel(at));
            match client.history(call(request.clone(), &caller.0)).await {
                Ok(reply) => return Ok(reply.into_inner()),
                Err(status) if status.code() == tonic::Code::Unavailable => {
                    last = Some(upstream_status(&self.0, at, status));
                }
                Err(status) => return Err(status),
            }
        }
        Err(last.unwrap_or_else(|| Status::unavailable("this relay has no upstream; retry")))
    }

    async fn read(
        &self,
        caller: &Bearer,
        scope: &Scope,
        key: &str,
    ) -> Result<Option<Entry>, Status> {
        read_upstream(&self.0, &caller.0, scope, key).await
    }
}

/// Reads one key of `scope` upstream with `authorization`, on each upstream in
/// turn while they cannot be reached. `None` when the key does not exist there.
pub(super) async fn read_upstream(
    inner: &Inner,
    authorization: &AsciiMetadataValue,
    scope: &Scope,
    key: &str,
) -> Result<Option<Entry>, Status> {
    let first = inner.upstreams.preferred();
    let mut last = None;
    for step in 0..inner.upstreams.len() {
        let at = (first + step) % inner.upstreams.len();
        let mut client = ConfigServiceClient::new(inner.upstreams.channel(at));
        let request = proto::GetRequest {
            keys: vec![key.to_owned()],
            tenant: scope.tenant_id().to_owned(),
            service: scope.service().unwrap_or("").to_owned(),
            ..Default::default()
        };
        match client.get(call(request, authorization)).await {
            Ok(reply) => {
                let reply = reply.into_inner();
                return Ok(reply
                    .entries
                    .into_iter()
                    .find(|e| e.key == key)
                    .map(from_proto));
            }
            Err(status) if status.code() == tonic::Code::Unavailable => {
                last = Some(upstream_status(inner, at, status));
            }
            Err(status) => return Err(status),
        }
    }
    Err(last.unwrap_or_else(|| Status::unavailable("this relay has no upstream; retry")))
}
