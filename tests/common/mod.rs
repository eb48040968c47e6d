//! Test support that needs the library: a configwatch server on 127.0.0.1:0 in this
//! process, clients with tokens signed by its key, the binary's `serve` command, and
//! helpers to read Watch streams with deadlines instead of sleeps. What needs no
//! server internals (server processes, moto, polling) is in the
//! `configwatch-test-support` crate (tests/support).
// Each suite uses a part of this module (and of what it passes on).
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use configwatch::api::{Limits, WatchSettings};
use configwatch::auth::local::LocalKey;
use configwatch::auth::{Authenticator, ClaimRules, Role};
use configwatch::clock::Clock;
use configwatch::hub::{Hub, HubConfig};
use configwatch::model::Scope;
use configwatch::proto::config_service_client::ConfigServiceClient;
use configwatch::proto::{self, WatchResponse};
use configwatch::server::{App, ConnectionLimits, ServeError, serve};
use configwatch::store::Router;
use configwatch::store::embedded::EmbeddedStore;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::codec::Streaming;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub use configwatch_test_support::{PATIENCE, temp_dir};

/// The server binary, as this package's build made it.
pub const BIN: &str = env!("CARGO_BIN_EXE_configwatch");

#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

pub type Client = ConfigServiceClient<InterceptedService<Channel, Bearer>>;

/// Knobs for a test server.
#[derive(Clone)]
pub struct Options {
    pub history: usize,
    pub progress_interval: Duration,
    pub max_request_bytes: usize,
    pub limits: Limits,
    pub connections: ConnectionLimits,
    /// The server's wall clock (token expiry); the system clock by default.
    pub clock: Clock,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            history: configwatch::hub::DEFAULT_HISTORY,
            progress_interval: configwatch::api::DEFAULT_PROGRESS_INTERVAL,
            max_request_bytes: configwatch::server::DEFAULT_MAX_REQUEST_BYTES,
            limits: Limits::default(),
            connections: ConnectionLimits::default(),
            clock: Clock::system(),
        }
    }
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub hub: Arc<Hub>,
    pub data_dir: PathBuf,
    key: LocalKey,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServeError>>,
}

impl TestServer {
    pub async fn start(data_dir: &Path) -> TestServer {
        Self::start_with(data_dir, Options::default()).await
    }

    pub async fn start_with(data_dir: &Path, options: Options) -> TestServer {
        let store = EmbeddedStore::open(data_dir).expect("open store");
        Self::start_routed(data_dir, Router::single(Arc::new(store)), options).await
    }

    /// A server over any router (AWS backends, say); `data_dir` holds only its key.
    pub async fn start_routed(data_dir: &Path, router: Router, options: Options) -> TestServer {
        let (verify, _) = LocalKey::load_or_create(data_dir).expect("signing key");
        let auth =
            Authenticator::new(Arc::new(verify), ClaimRules::default()).with_clock(options.clock);
        Self::start_authed(data_dir, router, options, auth).await
    }

    /// A server with its own token validation (a JWKS, say). `token()` still signs
    /// with the local key in `data_dir`.
    pub async fn start_authed(
        data_dir: &Path,
        router: Router,
        options: Options,
        auth: Authenticator,
    ) -> TestServer {
        let (key, _) = LocalKey::load_or_create(data_dir).expect("signing key");
        let router = Arc::new(router);
        let hub = Arc::new(Hub::new(
            router.clone(),
            HubConfig {
                history_limit: options.history,
                ..HubConfig::default()
            },
        ));
        let app = App {
            hub: hub.clone(),
            router,
            forward: None,
            auth: Arc::new(auth),
            limits: options.limits.clone(),
            watch: WatchSettings {
                progress_interval: options.progress_interval,
                clock: options.clock,
                ..WatchSettings::default()
            },
            max_request_bytes: options.max_request_bytes,
            grace: Duration::from_secs(2),
            connections: options.connections.clone(),
            instance: Arc::from("cw-test"),
            sources: None,
            rpc_metrics: Default::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, app, async move {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            hub,
            data_dir: data_dir.to_owned(),
            key,
            stop: Some(stop),
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn token(&self, tenant: &str, role: Role) -> String {
        let scope = Scope::tenant(tenant).expect("tenant");
        self.key
            .issue(&scope, role, Duration::from_secs(3600), "test")
            .expect("token")
    }

    pub async fn client(&self, tenant: &str, role: Role) -> Client {
        connect(self.addr, Some(&self.token(tenant, role))).await
    }

    /// Graceful stop: watches end, the store is closed when this returns.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let TestServer { hub, task, .. } = self;
        drop(hub);
        task.await.expect("server task").expect("server result");
    }
}

pub async fn connect(addr: SocketAddr, token: Option<&str>) -> Client {
    try_connect(addr, token).await.expect("connect")
}

/// Connects, or says why not (for clients that must outlive a server).
pub async fn try_connect(
    addr: SocketAddr,
    token: Option<&str>,
) -> Result<Client, tonic::transport::Error> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("url")
        .connect()
        .await?;
    let bearer = Bearer(token.map(|t| format!("Bearer {t}").parse().expect("header")));
    Ok(
        ConfigServiceClient::with_interceptor(channel, bearer)
            .max_decoding_message_size(usize::MAX),
    )
}

/// A client on a connection whose HTTP/2 windows are small (64 KiB): what it does
/// not read stays in the server.
pub async fn small_window_client(addr: SocketAddr, token: &str) -> Client {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("url")
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .expect("connect");
    let bearer = Bearer(Some(format!("Bearer {token}").parse().expect("header")));
    ConfigServiceClient::with_interceptor(channel, bearer).max_decoding_message_size(usize::MAX)
}

pub async fn put(client: &mut Client, key: &str, value: &str) -> proto::Entry {
    put_request(
        client,
        proto::PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        },
    )
    .await
}

/// A Put as given (a reason, a secret); the entry written.
pub async fn put_request(client: &mut Client, request: proto::PutRequest) -> proto::Entry {
    let key = request.key.clone();
    client
        .put(request)
        .await
        .unwrap_or_else(|s| panic!("put {key}: {s:?}"))
        .into_inner()
        .entry
        .expect("entry")
}

/// A Get of exact keys.
pub async fn get_keys(client: &mut Client, keys: &[&str]) -> proto::GetResponse {
    client
        .get(proto::GetRequest {
            keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| panic!("get {keys:?}: {s:?}"))
        .into_inner()
}

pub async fn delete(client: &mut Client, key: &str) -> proto::Entry {
    client
        .delete(proto::DeleteRequest {
            key: key.into(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| panic!("delete {key}: {s:?}"))
        .into_inner()
        .entry
        .expect("entry")
}

pub async fn watch(client: &mut Client, request: proto::WatchRequest) -> Streaming<WatchResponse> {
    client
        .watch(request)
        .await
        .unwrap_or_else(|s| panic!("watch: {s:?}"))
        .into_inner()
}

pub fn watch_prefixes(prefixes: &[&str]) -> proto::WatchRequest {
    proto::WatchRequest {
        prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
        ..Default::default()
    }
}

/// The next message, within PATIENCE.
pub async fn next(stream: &mut Streaming<WatchResponse>) -> WatchResponse {
    tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("a watch message in time")
        .expect("stream ok")
        .expect("stream open")
}

/// Reads the initial state up to and including the complete marker.
pub async fn initial(stream: &mut Streaming<WatchResponse>) -> (Vec<proto::Entry>, WatchResponse) {
    let mut entries = Vec::new();
    loop {
        let msg = next(stream).await;
        assert_eq!(
            msg.kind,
            proto::watch_response::Kind::Initial as i32,
            "{msg:?}"
        );
        entries.extend(msg.changes.iter().cloned());
        if msg.initial_complete {
            return (entries, msg);
        }
    }
}

/// Reads delta messages until `count` changes arrived; progress messages are skipped.
pub async fn changes(stream: &mut Streaming<WatchResponse>, count: usize) -> Vec<proto::Entry> {
    let mut out = Vec::new();
    while out.len() < count {
        let msg = next(stream).await;
        if msg.kind == proto::watch_response::Kind::Delta as i32 {
            out.extend(msg.changes);
        }
    }
    assert_eq!(out.len(), count, "more changes than expected: {out:?}");
    out
}

/// (key, version, deleted) of each change, for compact assertions.
pub fn summary(entries: &[proto::Entry]) -> Vec<(String, u64, bool)> {
    entries
        .iter()
        .map(|e| (e.key.clone(), e.version, e.deleted))
        .collect()
}

/// Applies watch changes to a key -> (version, value) cache, as a client would.
pub fn apply(cache: &mut HashMap<String, (u64, String)>, changes: &[proto::Entry]) {
    for c in changes {
        let newer = cache.get(&c.key).is_none_or(|(v, _)| c.version > *v);
        if !newer {
            continue;
        }
        if c.deleted {
            cache.remove(&c.key);
        } else {
            cache.insert(c.key.clone(), (c.version, c.value.clone()));
        }
    }
}

/// `configwatch serve` on 127.0.0.1 port 0 with `dir`, logging at `warn`, with
/// `extra` arguments.
pub fn serve_command(dir: &Path, extra: &[&str]) -> std::process::Command {
    let mut command = configwatch_test_support::serve_command(Path::new(BIN), dir, 0);
    command.args(extra);
    command
}

/// A token for `tenant` signed with the key in `dir` (the one a server started on
/// `dir` uses), valid for 10 minutes.
pub fn token(dir: &Path, tenant: &str, role: Role) -> String {
    let (key, _) = LocalKey::load_or_create(dir).unwrap();
    key.issue(
        &Scope::tenant(tenant).unwrap(),
        role,
        Duration::from_secs(600),
        "test",
    )
    .unwrap()
}

/// The flags of a test server on AWS whose changes must come by their sources: an
/// admin listener on a free port, a fast stream poll, and no reconciliation pass
/// during the test (its re-reads would also bring changes, and count).
pub const OBSERVED_SOURCES: [&str; 6] = [
    "--admin-listen",
    "127.0.0.1:0",
    "--stream-poll-interval",
    "100ms",
    "--reconcile-interval",
    "1h",
];

/// `configwatch serve --backend aws` on 127.0.0.1 port 0 with `dir`, against `moto`
/// and the template's resources `res` (table, queue, Parameter Store root), with
/// `extra` arguments.
pub fn aws_serve_command(
    dir: &Path,
    moto: &configwatch_test_support::moto::Moto,
    res: &configwatch_test_support::moto::Resources,
    extra: &[&str],
) -> std::process::Command {
    use configwatch_test_support::moto::{REGION, ROOT};
    let mut command = serve_command(dir, &["--backend", "aws"]);
    command
        .args(["--table", &res.table, "--queue-url", &res.queue_url])
        .args(["--ssm-root", ROOT, "--region", REGION])
        .args(extra)
        .env("AWS_ENDPOINT_URL", &moto.endpoint)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    command
}

/// A Get with a token that is not one: refused with UNAUTHENTICATED.
pub async fn refused_get(addr: SocketAddr) {
    let mut refused = connect(addr, Some("not-a-token")).await;
    let status = refused
        .get(proto::GetRequest::default())
        .await
        .expect_err("a malformed token is refused");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
}

/// Waits until gRPC health says `want` of the ConfigService on `addr`.
pub async fn wait_for_health(
    addr: SocketAddr,
    want: tonic_health::pb::health_check_response::ServingStatus,
) {
    configwatch_test_support::eventually(
        PATIENCE,
        || format!("gRPC health to become {want:?}"),
        || async move {
            let channel = Channel::from_shared(format!("http://{addr}"))
                .ok()?
                .connect()
                .await
                .ok()?;
            let status = tonic_health::pb::health_client::HealthClient::new(channel)
                .check(tonic_health::pb::HealthCheckRequest {
                    service: "configwatch.v1.ConfigService".into(),
                })
                .await
                .ok()?
                .into_inner()
                .status;
            (status == want as i32).then_some(())
        },
    )
    .await;
}
