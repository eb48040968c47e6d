//! Wires the parts into a running gRPC server on an already-bound listener.
//!
//! [`serve`] takes a listener and a shutdown future, so tests start it on
//! 127.0.0.1:0 and stop it without sleeping. Authentication is a tower layer that runs
//! before any ConfigService handler: a request without a valid token never reaches
//! one. Health (`grpc.health.v1`) and reflection answer without a token, as probes and
//! grpcurl expect.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tower::{Layer, Service};

use crate::api::{ConfigApi, Limits, Shutdown, WatchSettings};
use crate::auth::Authenticator;
use crate::hub::Hub;
use crate::proto::config_service_server::ConfigServiceServer;
use crate::store::{Router, StoreHealth};

/// The encoded descriptors of proto/, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/configwatch_descriptor.bin"));

/// The gRPC path prefix of the service that needs a token.
const PROTECTED: &str = "/configwatch.v1.";

/// Everything the server needs.
pub struct App {
    pub hub: Arc<Hub>,
    pub router: Arc<Router>,
    pub auth: Arc<Authenticator>,
    pub limits: Limits,
    pub watch: WatchSettings,
    /// Largest request message accepted, in bytes.
    pub max_request_bytes: usize,
    /// How long shutdown waits for in-flight calls after ending every Watch.
    pub grace: Duration,
}

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("gRPC transport failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// Serves until `shutdown` completes, then ends every Watch with UNAVAILABLE (a
/// status clients resume from) and waits up to the grace period for the rest.
pub async fn serve(
    listener: TcpListener,
    app: App,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let stop = Shutdown::new();
    let api = ConfigApi::new(
        app.hub.clone(),
        app.router.clone(),
        app.limits.clone(),
        app.watch.clone(),
        stop.clone(),
    );
    let config = ConfigServiceServer::new(api)
        .max_decoding_message_size(app.max_request_bytes)
        .max_encoding_message_size(usize::MAX);
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<ConfigServiceServer<ConfigApi>>()
        .await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    // Storage health: the ConfigService answers NOT_SERVING while a store cannot
    // write (a full disk), SERVING again once it recovers.
    for mut health in app.router.health() {
        let reporter = health_reporter.clone();
        let stopped = stop.token().clone();
        tokio::spawn(async move {
            loop {
                let ok = matches!(*health.borrow_and_update(), StoreHealth::Ok);
                if stopped.is_cancelled() {
                    return;
                }
                if ok {
                    reporter
                        .set_serving::<ConfigServiceServer<ConfigApi>>()
                        .await;
                } else {
                    reporter
                        .set_not_serving::<ConfigServiceServer<ConfigApi>>()
                        .await;
                }
                tokio::select! {
                    changed = health.changed() => if changed.is_err() { return },
                    () = stopped.cancelled() => return,
                }
            }
        });
    }

    let grace = app.grace;
    let stopping = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down: ending watches");
        health_reporter
            .set_not_serving::<ConfigServiceServer<ConfigApi>>()
            .await;
        stopping.begin();
    });

    // Options on accepted sockets must be set here: the builder's only apply to
    // listeners it binds itself. Without TCP_NODELAY, every message larger than a
    // segment waits ~40 ms for a delayed ACK.
    let incoming = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)));
    let server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .layer(AuthLayer {
            auth: app.auth.clone(),
        })
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(config)
        .serve_with_incoming_shutdown(incoming, stop.token().clone().cancelled_owned());

    let drained = async {
        stop.token().cancelled().await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        result = server => result?,
        () = drained => tracing::warn!(?grace, "grace period over; closing remaining connections"),
    }
    Ok(())
}

/// Authenticates ConfigService calls before any handler runs.
#[derive(Clone)]
struct AuthLayer {
    auth: Arc<Authenticator>,
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: self.auth.clone(),
        }
    }
}

#[derive(Clone)]
struct AuthService<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> Service<http::Request<B>> for AuthService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone that was driven to readiness serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if !request.uri().path().starts_with(PROTECTED) {
            return Box::pin(inner.call(request));
        }
        let auth = self.auth.clone();
        Box::pin(async move {
            match auth.authenticate(request.headers()).await {
                Ok(identity) => {
                    request.extensions_mut().insert(identity);
                    inner.call(request).await
                }
                Err(e) => {
                    tracing::debug!(error = %e, path = request.uri().path(), "refused");
                    Ok(tonic::Status::from(e).into_http())
                }
            }
        })
    }
}
