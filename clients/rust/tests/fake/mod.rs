//! The server side of the API, generated for tests only (`build.rs`), and a scripted
//! fake configwatch server on a real socket: for behaviour the real server does not
//! show on demand (a store identity that changes, an instance cut off from its
//! sources). Each suite scripts its own `ConfigService`; this module only generates
//! the types and serves one on 127.0.0.1 port 0.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

/// The messages and the server side of the API.
#[allow(clippy::all, clippy::pedantic, missing_docs, dead_code)]
pub mod api {
    include!(concat!(env!("OUT_DIR"), "/test_server/configwatch.v1.rs"));
}

use api::config_service_server::{ConfigService, ConfigServiceServer};

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
