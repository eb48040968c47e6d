//! Writes and secret reads sent upstream with the caller's own token (the API's
//! [`Forward`]): the upstream decides with the caller's rights, and its answer,
//! refusals included, reaches the caller as it was given.
//!
//! History is a read: relays keep none, and the upstream answers it as the caller.
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
use tonic::transport::Channel;

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
        on_each_upstream(&self.0, |mut client| {
            let request = call(request.clone(), &caller.0);
            async move { client.history(request).await }
        })
        .await
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
    let request = proto::GetRequest {
        keys: vec![key.to_owned()],
        tenant: scope.tenant_id().to_owned(),
        service: scope.service().unwrap_or("").to_owned(),
        ..Default::default()
    };
    let reply = on_each_upstream(inner, |mut client| {
        let request = call(request.clone(), authorization);
        async move { client.get(request).await }
    })
    .await?;
    Ok(reply
        .entries
        .into_iter()
        .find(|e| e.key == key)
        .map(from_proto))
}

/// A read made on each upstream in turn, from the preferred one, while they cannot
/// be reached; the first answer (or refusal) that is not UNAVAILABLE.
async fn on_each_upstream<T, F, Fut>(inner: &Inner, mut read: F) -> Result<T, Status>
where
    F: FnMut(ConfigServiceClient<Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
{
    let first = inner.upstreams.preferred();
    let mut last = None;
    for step in 0..inner.upstreams.len() {
        let at = (first + step) % inner.upstreams.len();
        match read(ConfigServiceClient::new(inner.upstreams.channel(at))).await {
            Ok(reply) => return Ok(reply.into_inner()),
            Err(status) if status.code() == tonic::Code::Unavailable => {
                last = Some(upstream_status(inner, at, status));
            }
            Err(status) => return Err(status),
        }
    }
    Err(last.unwrap_or_else(|| Status::unavailable("this relay has no upstream; retry")))
}
