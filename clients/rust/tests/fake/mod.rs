//! The server side of the API, generated for tests only (`build.rs`), and a scripted
//! fake configwatch server on a real socket: for behaviour the real server does not
//! show on demand (a store identity that changes, an instance cut off from its
//! sources). Each suite scripts the Watch ([`WatchOnly`]; every other call is
//! UNIMPLEMENTED); this module generates the types and serves it on 127.0.0.1 port 0.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use tokio::net::TcpListener;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status};

/// The messages and the server side of the API.
#[allow(clippy::all, clippy::pedantic, missing_docs, dead_code)]
pub mod api {
    include!(concat!(env!("OUT_DIR"), "/test_server/configwatch.v1.rs"));
}

use api::config_service_server::{ConfigService, ConfigServiceServer};

/// The messages of a scripted Watch.
pub type Stream = ReceiverStream<Result<api::WatchResponse, Status>>;

/// A server whose Watch answers by the function given, and every other call
/// UNIMPLEMENTED.
pub struct WatchOnly<F>(pub F);

#[tonic::async_trait]
impl<F> ConfigService for WatchOnly<F>
where
    F: Fn(api::WatchRequest) -> Result<Stream, Status> + Send + Sync + 'static,
{
    async fn get(&self, _: Request<api::GetRequest>) -> Result<Response<api::GetResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    type WatchStream = Stream;

    async fn watch(&self, request: Request<api::WatchRequest>) -> Result<Response<Stream>, Status> {
        (self.0)(request.into_inner()).map(Response::new)
    }

    async fn put(&self, _: Request<api::PutRequest>) -> Result<Response<api::PutResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn delete(
        &self,
        _: Request<api::DeleteRequest>,
    ) -> Result<Response<api::DeleteResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn history(
        &self,
        _: Request<api::HistoryRequest>,
    ) -> Result<Response<api::HistoryResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

/// Serves `service` on 127.0.0.1 port 0 until the test ends; returns its URL.
pub async fn start(service: impl ConfigService) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ConfigServiceServer::new(service))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    url
}
