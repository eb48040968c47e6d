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

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tower::{Layer, Service};

use crate::api::budget::{ConnectionReplies, Metered, MeteredStream, ReplyHold, StreamBudget};
use crate::api::{ConfigApi, Limits, Shutdown, WatchSettings};
use crate::auth::Authenticator;
use crate::hub::Hub;
use crate::proto::config_service_server::ConfigServiceServer;
use crate::source::supervise::SourcesState;
use crate::store::{Router, StoreHealth};

/// The encoded descriptors of proto/, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/configwatch_descriptor.bin"));

/// The gRPC path prefix of the service that needs a token.
const PROTECTED: &str = "/configwatch.v1.";

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
/// Idle time after which TCP probes a peer that may have vanished without a FIN.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

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
    pub connections: ConnectionLimits,
    /// The source tasks' state (see `source::supervise`), when there are sources:
    /// health reports NOT_SERVING while one is down.
    pub sources: Option<watch::Receiver<SourcesState>>,
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

    // Storage and source health: the ConfigService answers NOT_SERVING while a
    // store cannot write (a full disk) or a source task is down, SERVING again once
    // all recover.
    report_health(
        health_reporter.clone(),
        app.router.health(),
        app.sources.clone(),
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
    let server = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(app.connections.max_streams_per_connection))
        .timeout(app.connections.request_timeout)
        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
        .layer(AuthLayer {
            auth: app.auth.clone(),
            starts: starts.handle(),
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

/// Keeps the health of the ConfigService current: SERVING while every store can
/// write and every source runs, NOT_SERVING otherwise, until `stop`.
fn report_health(
    reporter: tonic_health::server::HealthReporter,
    stores: Vec<watch::Receiver<StoreHealth>>,
    sources: Option<watch::Receiver<SourcesState>>,
    stop: CancellationToken,
) {
    if stores.is_empty() && sources.is_none() {
        return;
    }
    // Each receiver pings one task, which reads them all.
    let (ping, mut pinged) = mpsc::channel::<()>(1);
    for store in &stores {
        forward_changes(store.clone(), ping.clone(), stop.child_token());
    }
    if let Some(sources) = &sources {
        forward_changes(sources.clone(), ping.clone(), stop.child_token());
    }
    drop(ping);
    tokio::spawn(async move {
        loop {
            let ok = stores
                .iter()
                .all(|h| matches!(*h.borrow(), StoreHealth::Ok))
                && sources.as_ref().is_none_or(|s| s.borrow().all_running());
            if stop.is_cancelled() {
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
                pinged = pinged.recv() => if pinged.is_none() { return },
                () = stop.cancelled() => return,
            }
        }
    });
}

/// Pings `ping` each time `rx` changes, until `stop` or the sender is gone.
fn forward_changes<T: Send + Sync + 'static>(
    mut rx: watch::Receiver<T>,
    ping: mpsc::Sender<()>,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return },
                () = stop.cancelled() => return,
            }
            let _ = ping.try_send(());
        }
    });
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

/// The HTTP/2 client preface, which every gRPC connection starts with.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Time without a resource error after which an episode of them is over.
const EPISODE_QUIET: Duration = Duration::from_secs(10);

/// Longest pause between accept attempts while the process is out of descriptors.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Accepts connections until `stop`, and hands each to the server once it has sent
/// the HTTP/2 preface.
///
/// - A socket that has not sent the preface within the handshake timeout is
///   closed. At most [`ConnectionLimits::max_handshakes`] sockets wait for theirs:
///   a new socket beyond that closes the one waiting longest, so a flood of silent
///   sockets cannot keep a client that speaks at once from getting in.
/// - Beyond `max_connections` established connections, a new one is closed as soon
///   as its preface arrives, so the clients already connected stay served.
/// - Accept errors that mean the process or the kernel is out of something
///   (descriptors, buffers, memory) pause accepting, with a backoff up to
///   [`MAX_ACCEPT_BACKOFF`], and are logged once per episode.
pub async fn accept_loop(
    listener: TcpListener,
    limits: ConnectionLimits,
    ready: mpsc::Sender<Conn>,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let max_handshakes = limits.max_handshakes();
    let mut handshaking: std::collections::VecDeque<CancellationToken> =
        std::collections::VecDeque::with_capacity(max_handshakes);
    let refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut backoff = configwatch_client::Retry::new(configwatch_client::Backoff::doubling(
        Duration::from_millis(5),
        MAX_ACCEPT_BACKOFF,
    ));
    // The current episode of resource errors: how many, and when the last was.
    let mut errors: u64 = 0;
    let mut last_error = tokio::time::Instant::now();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (socket, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) if is_exhaustion(&e) => {
                if errors == 0 {
                    tracing::warn!(
                        error = %e,
                        "cannot accept connections: out of resources (raise the open-file limit, or lower --max-connections); pausing accepts"
                    );
                }
                errors += 1;
                last_error = tokio::time::Instant::now();
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(backoff.failed()) => {}
                }
                continue;
            }
            // The peer went away before the accept (ECONNABORTED and the like).
            Err(e) => {
                tracing::debug!(error = %e, "accept failed");
                continue;
            }
        };
        // An episode ends after a quiet period: at the limit, accepts succeed and
        // fail in turn, and that is one episode, not one per error.
        if errors > 0 && last_error.elapsed() >= EPISODE_QUIET {
            tracing::info!(errors, "accepting connections again");
            errors = 0;
        }
        backoff.succeeded();
        // Without TCP_NODELAY, every message larger than a segment waits ~40 ms for
        // a delayed ACK. Keepalive finds peers that vanished without a FIN.
        let _ = socket.set_nodelay(true);
        let _ = socket2::SockRef::from(&socket)
            .set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE));
        // Tokens of finished handshakes stay in the queue until pushed out;
        // cancelling those does nothing. Every handshake still waiting is among the
        // last `max_handshakes` queued.
        if handshaking.len() == max_handshakes
            && let Some(oldest) = handshaking.pop_front()
        {
            oldest.cancel();
        }
        let evicted = stop.child_token();
        handshaking.push_back(evicted.clone());
        tokio::spawn(handshake(
            socket,
            peer,
            limits.clone(),
            slots.clone(),
            refused.clone(),
            ready.clone(),
            evicted,
        ));
    }
}

/// Waits for a socket's HTTP/2 preface and hands it to the server, or closes it.
async fn handshake(
    mut socket: TcpStream,
    peer: std::net::SocketAddr,
    limits: ConnectionLimits,
    slots: Arc<Semaphore>,
    refused: Arc<std::sync::atomic::AtomicU64>,
    ready: mpsc::Sender<Conn>,
    evicted: CancellationToken,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let timeout = limits.handshake_timeout;
    let mut got = [0u8; PREFACE.len()];
    let read = tokio::select! {
        () = evicted.cancelled() => return,
        read = tokio::time::timeout(timeout, socket.read_exact(&mut got)) => read,
    };
    match read {
        Ok(Ok(_)) if &got == PREFACE => {}
        Ok(Ok(_)) => {
            tracing::debug!(%peer, "closed: not an HTTP/2 connection");
            return;
        }
        Ok(Err(_)) => return,
        Err(_) => {
            tracing::debug!(%peer, ?timeout, "closed: no HTTP/2 preface in time");
            return;
        }
    }
    let Ok(slot) = slots.clone().try_acquire_owned() else {
        if refused.fetch_add(1, Relaxed) == 0 {
            tracing::warn!(
                max = limits.max_connections,
                %peer,
                "connection limit reached: closing new connections until some end (see --max-connections)"
            );
        }
        return;
    };
    // One line when refusing ends, once a tenth of the connections are free again.
    if slots.available_permits() > limits.max_connections / 10 {
        let was_refusing = refused.swap(0, Relaxed);
        if was_refusing > 0 {
            tracing::info!(refused = was_refusing, "below the connection limit again");
        }
    }
    let conn = Conn {
        socket,
        replay: 0,
        peer,
        replies: ConnectionReplies::new(limits.reply_bytes_per_connection),
        _slot: slot,
    };
    let _ = ready.send(conn).await;
}

/// Accept errors after which accepting again at once would fail the same way.
fn is_exhaustion(e: &std::io::Error) -> bool {
    // EMFILE 24, ENFILE 23, ENOBUFS 105, ENOMEM 12 on Linux.
    matches!(e.raw_os_error(), Some(24 | 23 | 105 | 12))
        || e.kind() == std::io::ErrorKind::OutOfMemory
}

/// An accepted connection that has sent the HTTP/2 preface. It hands the preface
/// (already read) to the server before the rest of the socket, and holds a slot of
/// the connection limit until the server drops it.
pub struct Conn {
    socket: TcpStream,
    /// Bytes of [`PREFACE`] already handed on.
    replay: usize,
    peer: std::net::SocketAddr,
    replies: ConnectionReplies,
    _slot: OwnedSemaphorePermit,
}

/// What a call knows of its connection (in the request's extensions).
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub tcp: TcpConnectInfo,
    /// The connection's share of the budget of unread reply bytes.
    pub replies: ConnectionReplies,
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        ConnInfo {
            tcp: TcpConnectInfo {
                local_addr: self.socket.local_addr().ok(),
                remote_addr: Some(self.peer),
            },
            replies: self.replies.clone(),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.replay < PREFACE.len() {
            let rest = &PREFACE[self.replay..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            self.replay += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.socket).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.socket).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.socket).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.socket).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.socket).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.socket.is_write_vectored()
    }
}

/// Authenticates ConfigService calls before any handler runs.
#[derive(Clone)]
struct AuthLayer {
    auth: Arc<Authenticator>,
    starts: tokio::runtime::Handle,
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: self.auth.clone(),
            starts: self.starts.clone(),
        }
    }
}

#[derive(Clone)]
struct AuthService<S> {
    inner: S,
    auth: Arc<Authenticator>,
    starts: tokio::runtime::Handle,
}

/// The gRPC path of Watch.
const WATCH: &str = "/configwatch.v1.ConfigService/Watch";

/// Aborts a spawned task when the call that waits for it is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> Service<http::Request<B>> for AuthService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
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
        let starts = self.starts.clone();
        Box::pin(async move {
            match auth.authenticate(request.headers()).await {
                Ok(identity) if request.uri().path() == WATCH => {
                    request.extensions_mut().insert(identity);
                    let mut task = AbortOnDrop(starts.spawn(inner.call(request)));
                    match (&mut task.0).await {
                        // Its messages count against the connection's budget.
                        Ok(Ok(mut response)) => {
                            if let Some(budget) = response.extensions_mut().remove::<StreamBudget>()
                            {
                                response = response.map(|body| {
                                    tonic::body::Body::new(MeteredStream::new(body, budget))
                                });
                            }
                            Ok(response)
                        }
                        Ok(Err(e)) => Err(e),
                        Err(e) => {
                            tracing::error!(error = %e, "a Watch call failed to start");
                            Ok(
                                tonic::Status::internal("the Watch call failed to start; retry")
                                    .into_http(),
                            )
                        }
                    }
                }
                Ok(identity) => {
                    request.extensions_mut().insert(identity);
                    let mut response = inner.call(request).await?;
                    // A Get reply holds its budget until handed on (api::budget).
                    if let Some(hold) = response.extensions_mut().remove::<ReplyHold>() {
                        response =
                            response.map(|body| tonic::body::Body::new(Metered::new(body, hold)));
                    }
                    Ok(response)
                }
                Err(e) => {
                    tracing::debug!(error = %e, path = request.uri().path(), "refused");
                    Ok(tonic::Status::from(e).into_http())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_server::Health;
    use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
    use tonic_health::server::{HealthReporter, HealthService};

    use super::*;
    use crate::source::supervise::{SourceState, SourceStatus};

    async fn status(health: &HealthService) -> i32 {
        let request = tonic::Request::new(HealthCheckRequest {
            service: "configwatch.v1.ConfigService".into(),
        });
        health
            .check(request)
            .await
            .map(|r| r.into_inner())
            .unwrap_or(HealthCheckResponse { status: -1 })
            .status
    }

    fn sources(status: SourceStatus) -> SourcesState {
        SourcesState {
            sources: vec![SourceState {
                name: "stream",
                status,
                restarts: 0,
            }],
        }
    }

    /// Waits (on paused time) until the health service answers `want`.
    async fn until(health: &HealthService, want: ServingStatus) {
        for _ in 0..100 {
            if status(health).await == want as i32 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("health never became {want:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn health_is_not_serving_while_a_source_is_down() {
        let reporter = HealthReporter::new();
        let health = HealthService::from_health_reporter(reporter.clone());
        let (state, rx) = watch::channel(sources(SourceStatus::Running));
        let stop = CancellationToken::new();
        report_health(reporter, Vec::new(), Some(rx), stop.clone());
        until(&health, ServingStatus::Serving).await;
        state.send_replace(sources(SourceStatus::Down));
        until(&health, ServingStatus::NotServing).await;
        state.send_replace(sources(SourceStatus::Running));
        until(&health, ServingStatus::Serving).await;
        stop.cancel();
    }
}
