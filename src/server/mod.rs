//! Wires the parts into a running gRPC server on an already-bound listener.
//!
//! [`serve`] takes a listener and a shutdown future, so tests start it on
//! 127.0.0.1:0 and stop it without sleeping. Authentication is a tower layer that runs
//! before any ConfigService handler: a request without a valid token never reaches
//! one. Health (`grpc.health.v1`) and reflection answer without a token, as probes and
//! grpcurl expect.
//!
//! Connections come from the server's own accept loop ([`accept_loop`]), which
//! bounds what sockets can cost: at most `max_connections` at once (more are closed
//! at once, so the clients already connected stay served), a socket that has not sent
//! the HTTP/2 preface within the handshake timeout is closed, and when the process
//! runs out of file descriptors (or the kernel of buffers) accepting backs off and
//! says so once per episode, instead of spinning on the error.
//!
//! The parts: `accept` (the accept loop and the connections it hands on),
//! `auth_layer` (the token check before any handler), `rpc_metrics` (calls counted
//! by method and status), `health` (readiness, and what the health service reports), and here the wiring of them into one tonic server.

mod accept;
mod auth_layer;
mod health;
mod max_age;
mod refusal_log;
mod rpc_metrics;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::api::{ConfigApi, Limits, Shutdown, WatchSettings};
use crate::auth::Authenticator;
use crate::hub::Hub;
use crate::proto::config_service_server::ConfigServiceServer;
use crate::source::supervise::SourcesState;
use crate::store::Router;

pub use accept::{Conn, accept_loop};
use auth_layer::AuthLayer;
pub use health::Readiness;
use health::report_health;
pub use max_age::{DEFAULT_MAX_CONNECTION_AGE_GRACE, MaxConnectionAge};
use refusal_log::RefusalLog;
pub use rpc_metrics::RpcMetrics;
use rpc_metrics::RpcMetricsLayer;

/// The encoded descriptors of proto/, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/configwatch_descriptor.bin"));

/// Largest request message accepted, in bytes, unless configured.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 4 << 20;
/// Connections open at once, unless configured.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Time a new socket has to send the HTTP/2 preface, unless configured.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent calls per connection, unless configured.
pub const DEFAULT_MAX_STREAMS_PER_CONNECTION: u32 = 1_024;
/// Unread reply bytes per connection, unless configured.
pub const DEFAULT_REPLY_BYTES_PER_CONNECTION: usize = 8 << 20;
/// How long shutdown waits for in-flight calls, unless configured.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Idle time after which HTTP/2 pings a connection, and how long the answer may take.
const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything the server needs.
pub struct App {
    pub hub: Arc<Hub>,
    pub router: Arc<Router>,
    /// A relay's upstream, which writes and secret reads go to with the caller's
    /// token (see `api::forward`); `None` on an origin.
    pub forward: Option<Arc<dyn crate::api::Forward>>,
    pub auth: Arc<Authenticator>,
    pub limits: Limits,
    pub watch: WatchSettings,
    /// Largest request message accepted, in bytes.
    pub max_request_bytes: usize,
    /// How long shutdown waits for in-flight calls after ending every Watch.
    pub grace: Duration,
    pub connections: ConnectionLimits,
    /// The source tasks' state (see `source::supervise`), when there are sources:
    /// health reports NOT_SERVING while one is down.
    pub sources: Option<watch::Receiver<SourcesState>>,
    /// Where calls are counted (see `rpc_metrics`); `None` when nobody can read
    /// the counts (no admin listener): the layer that wraps every reply is then not
    /// installed at all.
    pub rpc_metrics: Option<Arc<RpcMetrics>>,
    /// The name this instance records with each write it accepts (history).
    pub instance: Arc<str>,
}

impl App {
    /// Readiness as gRPC health and the admin `/readyz` report it.
    pub fn readiness(&self) -> Readiness {
        Readiness::new(self.router.health(), self.sources.clone()).with_auth(self.auth.clone())
    }
}

/// What one socket may cost, and how many there may be.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Connections open at once (handshakes included); more are closed at once.
    pub max_connections: usize,
    /// Time a new socket has to send the HTTP/2 preface.
    pub handshake_timeout: Duration,
    /// Concurrent streams (calls) per connection, advertised to clients.
    pub max_streams_per_connection: u32,
    /// Time a call has to be read and answered (for Watch: until its stream starts).
    pub request_timeout: Duration,
    /// Bytes of Get replies and Watch messages a connection's client has not read
    /// yet; more Gets on it wait, and its Watches send nothing more.
    pub reply_bytes_per_connection: usize,
    /// When connections are asked to go away and their Watch streams end, so
    /// clients reconnect (and spread over new instances); `None`: never.
    pub max_age: Option<MaxConnectionAge>,
}

impl ConnectionLimits {
    /// Sockets that may wait for their HTTP/2 preface at once: an eighth of the
    /// connection limit, between 16 and 1,024.
    pub fn max_handshakes(&self) -> usize {
        (self.max_connections / 8).clamp(16, 1_024)
    }
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_streams_per_connection: DEFAULT_MAX_STREAMS_PER_CONNECTION,
            request_timeout: crate::api::DEFAULT_REQUEST_TIMEOUT,
            reply_bytes_per_connection: DEFAULT_REPLY_BYTES_PER_CONNECTION,
            max_age: None,
        }
    }
}

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("gRPC transport failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("cannot start the threads that start watches: {0}")]
    Runtime(std::io::Error),
}

/// Serves until `shutdown` completes, then ends every Watch with UNAVAILABLE (a
/// status clients resume from) and waits up to the grace period for the rest.
///
/// The server's own tasks (the accept loop and each handshake, the health
/// reporters, every Watch stream) take child tokens of one token, cancelled when
/// `shutdown` completes.
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
    )
    .forwarding(app.forward.clone())
    .instance(app.instance.clone());
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

    // Storage and source health: the ConfigService answers NOT_SERVING while a
    // store cannot write (a full disk) or a source task is down, SERVING again once
    // all recover.
    report_health(
        health_reporter.clone(),
        app.readiness(),
        stop.token().child_token(),
    );

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

    // Watch calls are decoded (up to --max-request-bytes of known_versions) and get
    // their initial state on threads of their own, so that work, whatever its
    // size, never holds up the threads that serve every other call.
    let threads = std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1));
    let starts = StartThreads(Some(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("configwatch-watch-start")
            .enable_all()
            .build()
            .map_err(ServeError::Runtime)?,
    ));
    let (ready, incoming) = mpsc::channel(64);
    tokio::spawn(accept_loop(
        listener,
        app.connections.clone(),
        ready,
        stop.token().child_token(),
    ));
    let incoming = tokio_stream::wrappers::ReceiverStream::new(incoming);
    let mut builder = tonic::transport::Server::builder();
    if let Some(max) = app.connections.max_age {
        // GOAWAY: no new calls on the connection; calls in flight finish, and its
        // Watch streams end by themselves at the connection's end (see `accept`).
        builder = builder.max_connection_age(max.goaway_after());
    }
    let server = builder
        .max_concurrent_streams(Some(app.connections.max_streams_per_connection))
        .timeout(app.connections.request_timeout)
        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
        .layer(tower::util::option_layer(
            app.rpc_metrics
                .clone()
                .map(|metrics| RpcMetricsLayer { metrics }),
        ))
        .layer(AuthLayer {
            auth: app.auth.clone(),
            starts: starts.handle(),
            refusals: Arc::new(RefusalLog::new(
                refusal_log::DEFAULT_REFUSAL_LINES,
                refusal_log::DEFAULT_REFUSAL_INTERVAL,
                stop.token().child_token(),
            )),
        })
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(config)
        .serve_with_incoming_shutdown(
            futures_util::StreamExt::map(incoming, Ok::<_, std::io::Error>),
            stop.token().clone().cancelled_owned(),
        );

    let drained = async {
        stop.token().cancelled().await;
        tokio::time::sleep(grace).await;
    };
    let result = tokio::select! {
        result = server => result,
        () = drained => {
            tracing::warn!(?grace, "grace period over; closing remaining connections");
            Ok(())
        }
    };
    drop(starts);
    Ok(result?)
}

/// The threads Watch calls start on. Stopped without waiting when dropped (also
/// when the serve future itself is dropped, inside the caller's runtime).
struct StartThreads(Option<tokio::runtime::Runtime>);

impl StartThreads {
    fn handle(&self) -> tokio::runtime::Handle {
        match &self.0 {
            Some(rt) => rt.handle().clone(),
            None => tokio::runtime::Handle::current(),
        }
    }
}

impl Drop for StartThreads {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}
