//! The `configwatch` command line: `serve`, `token`, and the client commands `get`,
//! `put`, `delete` and `watch`. Every flag can also be set by environment variable.
//!
//! Exit codes: 0 success; 1 an error from the server (printed as its gRPC status and
//! message) or a key not found; 64 bad usage or configuration, detected before any
//! port is bound.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::api::{Limits, WatchSettings};
use crate::auth::jwks::{JwksKeySource, JwksSettings};
use crate::auth::local::LocalKey;
use crate::auth::{Authenticator, ClaimRules, Role, TokenUse};
use crate::aws::AwsSettings;
use crate::hub::{Hub, HubConfig};
use crate::keys;
use crate::model::Scope;
use crate::proto;
use crate::proto::config_service_client::ConfigServiceClient;
use crate::server::{App, ConnectionLimits, serve};
use crate::source::{SourceContext, SourceCounters, ddb_streams, reconcile, sqs_events};
use crate::store::Router;
use crate::store::dynamodb::DynamoBackend;
use crate::store::embedded::{EmbeddedStore, OpenOptions};
use crate::store::ssm::SsmBackend;

/// Exit code for bad usage or configuration (EX_USAGE).
pub const EXIT_USAGE: i32 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "configwatch",
    version,
    about = "Multi-tenant configuration push server"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(Box<ServeArgs>),
    /// Print a token signed with the server's key (for local use and testing).
    Token(TokenArgs),
    /// Read keys (or prefixes) and print one JSON object per entry.
    Get(GetArgs),
    /// Write a JSON value.
    Put(PutArgs),
    /// Delete a key.
    Delete(DeleteArgs),
    /// Print one JSON object per line for every change under the prefixes.
    Watch(WatchArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "CONFIGWATCH_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Directory for the embedded store and the signing key.
    #[arg(long, env = "CONFIGWATCH_DATA_DIR", default_value = "configwatch-data")]
    pub data_dir: PathBuf,
    /// Changes kept per tenant for resume by token.
    #[arg(long, env = "CONFIGWATCH_HISTORY", default_value_t = 4096)]
    pub history: usize,
    /// Mean idle time before a Watch gets a progress message (jittered ±25%).
    #[arg(long, env = "CONFIGWATCH_PROGRESS_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub progress_interval: Duration,
    /// Largest request message accepted, in bytes.
    #[arg(long, env = "CONFIGWATCH_MAX_REQUEST_BYTES", default_value_t = 4 << 20)]
    pub max_request_bytes: usize,
    /// Most prefixes in one Get or Watch.
    #[arg(long, env = "CONFIGWATCH_MAX_PREFIXES", default_value_t = 64)]
    pub max_prefixes: usize,
    /// Entries in a Get reply when the request sets no limit.
    #[arg(long, env = "CONFIGWATCH_GET_PAGE_ENTRIES", default_value_t = 1_000)]
    pub get_page_entries: usize,
    /// Most entries in a Get reply, whatever the request's limit.
    #[arg(
        long,
        env = "CONFIGWATCH_GET_MAX_PAGE_ENTRIES",
        default_value_t = 10_000
    )]
    pub get_max_page_entries: usize,
    /// About the most key and value bytes in a Get reply (a single larger entry
    /// still goes alone).
    #[arg(long, env = "CONFIGWATCH_GET_PAGE_BYTES", default_value_t = 1 << 20)]
    pub get_page_bytes: usize,
    /// Watch initial states (full, or a diff against known_versions) computed at
    /// once; more wait their turn, and one tenant takes at most half of them.
    #[arg(long, env = "CONFIGWATCH_INITIAL_STATE_SLOTS", default_value_t = 4)]
    pub initial_state_slots: usize,
    /// Most client connections at once; more are closed at once. Lowered to fit
    /// the open-file limit.
    #[arg(long, env = "CONFIGWATCH_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Time a new connection has to start HTTP/2 before it is closed.
    #[arg(long, env = "CONFIGWATCH_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,
    /// Most concurrent calls (HTTP/2 streams) on one connection.
    #[arg(
        long,
        env = "CONFIGWATCH_MAX_STREAMS_PER_CONNECTION",
        default_value_t = 1_024
    )]
    pub max_streams_per_connection: u32,
    /// Time a call has to send its request and be answered (for Watch, until its
    /// stream starts); also the time a client has to read a Get reply.
    #[arg(long, env = "CONFIGWATCH_REQUEST_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// Bytes of Get replies the server holds for clients that have not read them
    /// yet, in total; beyond it Gets wait, then fail with RESOURCE_EXHAUSTED.
    #[arg(long, env = "CONFIGWATCH_REPLY_BYTES", default_value_t = 256 << 20)]
    pub reply_bytes: usize,
    /// The same, per connection, Watch messages included; beyond it that
    /// connection's Gets wait and its Watches send nothing more until it reads.
    #[arg(long, env = "CONFIGWATCH_REPLY_BYTES_PER_CONNECTION", default_value_t = 8 << 20)]
    pub reply_bytes_per_connection: usize,
    /// How long shutdown waits for in-flight calls.
    #[arg(long, env = "CONFIGWATCH_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
    /// Log filter (tracing syntax), e.g. `info` or `configwatch=debug`.
    #[arg(long, env = "CONFIGWATCH_LOG", default_value = "info")]
    pub log: String,
    /// Start a new, empty store with a new identity when the data directory's
    /// database is missing, empty or of another store (start-up refuses without
    /// it). Does nothing to an intact store. Use once, deliberately.
    #[arg(long, env = "CONFIGWATCH_NEW_STORE")]
    pub new_store: bool,
    #[command(flatten)]
    pub identity: IdentityArgs,
    #[command(flatten)]
    pub aws: AwsArgs,
}

/// Where configuration is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    /// The embedded store in the data directory.
    Embedded,
    /// `tenant_config_*` in DynamoDB, `param_config_*` in SSM Parameter Store.
    Aws,
}

/// The AWS backend's settings (with `--backend aws`). Credentials and endpoints come
/// from the standard AWS sources (`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_DYNAMODB`, ...).
#[derive(Debug, Args)]
pub struct AwsArgs {
    /// Where configuration is kept: embedded or aws.
    #[arg(
        long,
        env = "CONFIGWATCH_BACKEND",
        value_enum,
        default_value = "embedded"
    )]
    pub backend: BackendKind,
    /// DynamoDB table of `tenant_config_*` (its stream must be enabled).
    #[arg(long, env = "CONFIGWATCH_TABLE")]
    pub table: Option<String>,
    /// SQS queue that the EventBridge rule fills with Parameter Store changes.
    /// Without it, parameters changed outside configwatch arrive only by
    /// reconciliation.
    #[arg(long, env = "CONFIGWATCH_QUEUE_URL")]
    pub queue_url: Option<String>,
    /// Parameter Store root: `param_config_<path>` of tenant T is `{root}/T/<path>`.
    #[arg(long, env = "CONFIGWATCH_SSM_ROOT", default_value = "/config-service")]
    pub ssm_root: String,
    /// AWS region (default: the SDK's, from AWS_REGION or the profile).
    #[arg(long, env = "CONFIGWATCH_REGION")]
    pub region: Option<String>,
    /// Mean time between re-reads of every loaded tenant (jittered ±20%).
    #[arg(long, env = "CONFIGWATCH_RECONCILE_INTERVAL", default_value = "5m", value_parser = humantime::parse_duration)]
    pub reconcile_interval: Duration,
    /// Time between GetRecords calls on each stream shard.
    #[arg(long, env = "CONFIGWATCH_STREAM_POLL_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub stream_poll_interval: Duration,
}

impl AwsArgs {
    /// The settings for `--backend aws`, checked; `None` for the embedded store.
    fn settings(&self) -> Result<Option<AwsSettings>, Failure> {
        if self.backend == BackendKind::Embedded {
            let stray = [
                ("--table", self.table.is_some()),
                ("--queue-url", self.queue_url.is_some()),
            ];
            if let Some((flag, _)) = stray.iter().find(|(_, set)| *set) {
                return Err(Failure::usage(format!(
                    "{flag} needs --backend aws (the embedded store is the default)"
                )));
            }
            return Ok(None);
        }
        let settings = AwsSettings {
            table: self.table.clone().unwrap_or_default(),
            queue_url: self.queue_url.clone().filter(|q| !q.trim().is_empty()),
            ssm_root: self.ssm_root.clone(),
            reconcile_interval: self.reconcile_interval,
        };
        settings
            .validate()
            .map_err(|e| Failure::usage(e.to_string()))?;
        if self.stream_poll_interval < Duration::from_millis(100) {
            return Err(Failure::usage(
                "--stream-poll-interval must be at least 100ms (each poll is a GetRecords call per shard)",
            ));
        }
        Ok(Some(settings))
    }
}

/// How tokens are validated. Without `--jwks-url`, the server's own signing key in
/// the data directory verifies them (`configwatch token` signs with it).
#[derive(Debug, Args)]
pub struct IdentityArgs {
    /// JWKS URL of the identity provider, e.g.
    /// https://cognito-idp.REGION.amazonaws.com/POOL/.well-known/jwks.json
    #[arg(long, env = "CONFIGWATCH_JWKS_URL")]
    pub jwks_url: Option<String>,
    /// Accepted token issuer (`iss`); repeatable. Derived from a Cognito JWKS URL
    /// when not given; required for other providers.
    #[arg(long = "issuer", env = "CONFIGWATCH_ISSUER", value_delimiter = ',')]
    pub issuers: Vec<String>,
    /// Accepted audience: an app client id, checked against `aud` of ID tokens and
    /// `client_id` of access tokens; repeatable. Required with --jwks-url.
    #[arg(long = "audience", env = "CONFIGWATCH_AUDIENCE", value_delimiter = ',')]
    pub audiences: Vec<String>,
    /// Which tokens are accepted: id, access or any.
    #[arg(long, env = "CONFIGWATCH_TOKEN_USE", default_value = "any", value_parser = parse_token_use)]
    pub token_use: TokenUse,
    /// Token algorithms accepted with --jwks-url (asymmetric only).
    #[arg(long, env = "CONFIGWATCH_JWT_ALGORITHMS", value_delimiter = ',', default_value = "RS256", value_parser = parse_algorithm)]
    pub jwt_algorithms: Vec<jsonwebtoken::Algorithm>,
    /// Clock skew allowed on a token's exp and nbf.
    #[arg(long, env = "CONFIGWATCH_JWT_LEEWAY", default_value = "5s", value_parser = humantime::parse_duration)]
    pub jwt_leeway: Duration,
    /// Least time between JWKS fetches caused by unknown key ids.
    #[arg(long, env = "CONFIGWATCH_JWKS_MIN_REFETCH", default_value = "30s", value_parser = humantime::parse_duration)]
    pub jwks_min_refetch: Duration,
    /// Claim naming the tenant.
    #[arg(
        long,
        env = "CONFIGWATCH_TENANT_CLAIM",
        default_value = "custom:tenantId"
    )]
    pub tenant_claim: String,
    /// With --jwks-url: a claim naming the role that only administrators can set,
    /// read before `cognito:groups` (e.g. custom:role, once the app client may not
    /// write it). It can never grant relay. Empty (default): roles from groups only.
    #[arg(long, env = "CONFIGWATCH_ROLE_CLAIM", default_value = "")]
    pub role_claim: String,
    /// Claim narrowing a token to one service of its tenant.
    #[arg(
        long,
        env = "CONFIGWATCH_SERVICE_CLAIM",
        default_value = "custom:service"
    )]
    pub service_claim: String,
}

fn parse_token_use(s: &str) -> Result<TokenUse, String> {
    TokenUse::parse(s).ok_or_else(|| format!("'{s}' is not a token use; use id, access or any"))
}

fn parse_algorithm(s: &str) -> Result<jsonwebtoken::Algorithm, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a JWT algorithm (RS256, ES256, EdDSA, ...)"))
}

/// The issuer of a Cognito user pool, from its JWKS URL.
fn cognito_issuer(jwks_url: &str) -> Option<String> {
    let base = jwks_url.strip_suffix("/.well-known/jwks.json")?;
    let host = base.strip_prefix("https://")?.split('/').next()?;
    (host.starts_with("cognito-idp.") && host.ends_with(".amazonaws.com")).then(|| base.to_owned())
}

/// The most clock skew --jwt-leeway may allow.
const MAX_JWT_LEEWAY: Duration = crate::auth::MAX_LEEWAY;

/// Builds the authenticator the flags describe.
async fn authenticator(
    args: &IdentityArgs,
    data_dir: &Path,
    shutdown: CancellationToken,
) -> Result<Authenticator, Failure> {
    if args.jwt_leeway > MAX_JWT_LEEWAY {
        return Err(Failure::usage(format!(
            "--jwt-leeway {} is over the maximum of {}",
            humantime::format_duration(args.jwt_leeway),
            humantime::format_duration(MAX_JWT_LEEWAY)
        )));
    }
    let role_claim = Some(args.role_claim.trim())
        .filter(|c| !c.is_empty())
        .map(str::to_owned);
    if role_claim.is_some() && args.jwks_url.is_none() {
        tracing::warn!(
            "--role-claim applies to identity provider tokens (--jwks-url) only; the server's own tokens carry their role in {}",
            crate::auth::local::ROLE_CLAIM
        );
    }
    let mut rules = ClaimRules {
        tenant_claim: args.tenant_claim.clone(),
        role_claim,
        service_claim: args.service_claim.clone(),
        issuers: args.issuers.clone(),
        audiences: args.audiences.clone(),
        token_use: args.token_use,
        leeway: args.jwt_leeway,
    };
    let Some(url) = &args.jwks_url else {
        let key = open_key(data_dir)?;
        if rules.issuers.is_empty() {
            rules.issuers = vec![crate::auth::local::ISSUER.to_owned()];
        }
        return Ok(Authenticator::new(Arc::new(key), rules));
    };
    if rules.audiences.is_empty() {
        return Err(Failure::usage(
            "--jwks-url needs --audience (the app client ids whose tokens are accepted)",
        ));
    }
    if rules.issuers.is_empty() {
        rules.issuers = vec![cognito_issuer(url).ok_or_else(|| {
            Failure::usage("--jwks-url is not a Cognito URL: give the token issuer with --issuer")
        })?];
    }
    let mut settings = JwksSettings::new(url.clone());
    settings.algorithms = args.jwt_algorithms.clone();
    settings.min_refetch = args.jwks_min_refetch;
    let keys = JwksKeySource::start(settings, shutdown)
        .await
        .map_err(|e| Failure::usage(e.to_string()))?;
    Ok(Authenticator::new(keys, rules))
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The server's data directory (its signing key is created there if missing).
    #[arg(long, env = "CONFIGWATCH_DATA_DIR", default_value = "configwatch-data")]
    pub data_dir: PathBuf,
    /// The tenant the token is for.
    #[arg(long, env = "CONFIGWATCH_TENANT")]
    pub tenant: String,
    /// Narrow the token to one service of the tenant.
    #[arg(long, env = "CONFIGWATCH_SERVICE")]
    pub service: Option<String>,
    /// reader (Get, Watch), writer (also Put, Delete), relay (Get, Watch of any
    /// tenant named in the request) or admin.
    #[arg(long, env = "CONFIGWATCH_ROLE", default_value = "reader", value_parser = parse_role)]
    pub role: Role,
    /// How long the token is valid, e.g. 30m, 1h, 7d.
    #[arg(long, env = "CONFIGWATCH_TTL", default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// The token's subject (sub), shown in server logs.
    #[arg(long, env = "CONFIGWATCH_SUBJECT", default_value = "configwatch-cli")]
    pub subject: String,
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s).ok_or_else(|| format!("'{s}' is not a role; use reader, writer, relay or admin"))
}

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Server URL.
    #[arg(
        long,
        env = "CONFIGWATCH_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    pub server: String,
    /// Bearer token (see `configwatch token`).
    #[arg(long, env = "CONFIGWATCH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// Keys to read.
    pub keys: Vec<String>,
    /// Also read every key under this prefix (repeatable; the variable takes a
    /// comma-separated list).
    #[arg(long = "prefix", env = "CONFIGWATCH_PREFIX", value_delimiter = ',')]
    pub prefixes: Vec<String>,
    /// Entries asked for per page (0: the server's default). Every page is read;
    /// the entries are printed once all pages read the same state.
    #[arg(long, env = "CONFIGWATCH_PAGE_SIZE", default_value_t = 0)]
    pub page_size: u32,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct PutArgs {
    pub key: String,
    /// The value as JSON text, e.g. '{"enabled":true}' or '"text"'.
    pub value: String,
    /// Write only if the key is at this version (0: only if it does not exist).
    #[arg(long, env = "CONFIGWATCH_EXPECT_VERSION")]
    pub expect_version: Option<u64>,
    /// Store as a secret (param_config_ keys only).
    #[arg(long, env = "CONFIGWATCH_SECRET")]
    pub secret: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    pub key: String,
    /// Delete only if the key is at this version.
    #[arg(long, env = "CONFIGWATCH_EXPECT_VERSION")]
    pub expect_version: Option<u64>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Prefixes to watch; none watches the whole tenant.
    pub prefixes: Vec<String>,
    /// Start after this resume token instead of from the full state.
    #[arg(long, env = "CONFIGWATCH_RESUME_TOKEN")]
    pub resume_token: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// A command's failure: what to print and the exit code.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub code: i32,
}

impl Failure {
    fn usage(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            code: EXIT_USAGE,
        }
    }

    fn error(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            code: 1,
        }
    }
}

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Self {
        Failure::error(format!("{:?}: {}", s.code(), s.message()))
    }
}

/// Runs a parsed command.
pub async fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Serve(args) => run_serve(*args).await,
        Command::Token(args) => run_token(args),
        Command::Get(args) => run_get(args).await,
        Command::Put(args) => run_put(args).await,
        Command::Delete(args) => run_delete(args).await,
        Command::Watch(args) => run_watch(args).await,
    }
}

fn open_key(data_dir: &Path) -> Result<LocalKey, Failure> {
    let (key, created) =
        LocalKey::load_or_create(data_dir).map_err(|e| Failure::usage(e.to_string()))?;
    if created {
        tracing::info!(path = %data_dir.display(), "created a new signing key");
    }
    Ok(key)
}

/// Opens the embedded store in `data_dir`, refusing a directory that lost its
/// database unless `new_store`, and reports what the check of every record found.
fn open_store(data_dir: &Path, new_store: bool) -> Result<EmbeddedStore, Failure> {
    let options = OpenOptions {
        new_store,
        initialised_by: vec![data_dir.join(crate::auth::local::KEY_FILE)],
    };
    let store = EmbeddedStore::open_with(data_dir, &options)
        .map_err(|e| Failure::error(format!("cannot start: {e}")))?;
    let report = store.verify_report();
    if report.is_clean() {
        tracing::info!(
            store_id = store.id(),
            records = report.records,
            "store checked"
        );
    } else {
        // Named one by one in the log above; this line sums them up for operators.
        eprintln!(
            "configwatch: the store has {} damaged record(s){}; their scopes answer DATA_LOSS until restored: {}",
            report.damaged.len(),
            if report.unreadable.is_some() {
                " and could not be read to the end"
            } else {
                ""
            },
            report
                .damaged
                .iter()
                .take(20)
                .map(|d| format!(
                    "{}/{}{}",
                    d.tenant,
                    if d.service.is_empty() {
                        String::new()
                    } else {
                        format!("{}/", d.service)
                    },
                    d.key
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(store)
}

async fn run_serve(args: ServeArgs) -> Result<(), Failure> {
    init_logging(&args.log)?;
    if args.history == 0 {
        return Err(Failure::usage("--history must be at least 1"));
    }
    if args.progress_interval < Duration::from_millis(100) {
        return Err(Failure::usage("--progress-interval must be at least 100ms"));
    }
    if args.max_request_bytes < 64 * 1024 {
        return Err(Failure::usage(
            "--max-request-bytes must be at least 65536 (values alone may be 400,000 bytes)",
        ));
    }
    if args.max_prefixes == 0 {
        return Err(Failure::usage("--max-prefixes must be at least 1"));
    }
    let connections = connection_limits(&args)?;
    let aws = args.aws.settings()?;
    if args.new_store && aws.is_some() {
        return Err(Failure::usage(
            "--new-store is for the embedded store; on AWS a recreated table has a new identity by itself",
        ));
    }
    let stop = CancellationToken::new();
    // The store first: the signing key beside a missing database shows that the
    // directory lost its data (the authenticator would create a key).
    let embedded = match &aws {
        None => Some(open_store(&args.data_dir, args.new_store)?),
        Some(_) => None,
    };
    let auth = authenticator(&args.identity, &args.data_dir, stop.clone()).await?;
    let hub_config = HubConfig {
        history_limit: args.history,
    };
    let (router, hub) = match (embedded, &aws) {
        (Some(store), _) => {
            let router = Arc::new(Router::single(Arc::new(store)));
            let hub = Arc::new(Hub::new(router.clone(), hub_config));
            (router, hub)
        }
        (None, Some(settings)) => start_aws(settings, &args.aws, hub_config, stop.clone()).await,
        (None, None) => return Err(Failure::error("no store configured")),
    };
    let app = App {
        hub,
        router,
        auth: Arc::new(auth),
        limits: Limits {
            max_prefixes: args.max_prefixes,
            page_entries: args.get_page_entries,
            max_page_entries: args.get_max_page_entries,
            page_bytes: args.get_page_bytes,
            initial_state_slots: args.initial_state_slots,
            reply_bytes: args.reply_bytes,
            reply_drain: args.request_timeout,
            ..Limits::default()
        },
        watch: WatchSettings {
            progress_interval: args.progress_interval,
            ..WatchSettings::default()
        },
        max_request_bytes: args.max_request_bytes,
        grace: args.shutdown_grace,
        connections,
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| Failure::error(format!("cannot listen on {}: {e}", args.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Failure::error(format!("cannot read the bound address: {e}")))?;
    // One line on stdout, for scripts that start the server on port 0.
    println!("listening on {addr}");
    match &aws {
        None => {
            tracing::info!(%addr, data_dir = %args.data_dir.display(), "configwatch serving on the embedded store")
        }
        Some(s) => {
            tracing::info!(%addr, table = %s.table, ssm_root = %s.ssm_root, "configwatch serving on DynamoDB and Parameter Store")
        }
    }
    let served = serve(listener, app, shutdown_signal()).await;
    stop.cancel();
    served.map_err(|e| Failure::error(e.to_string()))
}

/// Builds the AWS backends and starts the sources that bring outside changes in: the
/// table's stream, the Parameter Store event queue (when given) and reconciliation.
/// They run until `stop`.
/// Descriptors kept for everything but client connections (store files, AWS
/// clients, the listener, logs).
const RESERVED_FDS: u64 = 64;

/// Checks the limit flags, raises the soft open-file limit to the hard one, and
/// lowers `--max-connections` when the connections (and the sockets still in
/// their handshake) would not fit in it.
fn connection_limits(args: &ServeArgs) -> Result<ConnectionLimits, Failure> {
    let positive = [
        ("--get-page-entries", args.get_page_entries),
        ("--get-max-page-entries", args.get_max_page_entries),
        ("--initial-state-slots", args.initial_state_slots),
        ("--max-connections", args.max_connections),
        (
            "--max-streams-per-connection",
            args.max_streams_per_connection as usize,
        ),
    ];
    if let Some((flag, _)) = positive.iter().find(|(_, v)| *v == 0) {
        return Err(Failure::usage(format!("{flag} must be at least 1")));
    }
    if args.get_page_entries > args.get_max_page_entries {
        return Err(Failure::usage(format!(
            "--get-page-entries ({}) must not be above --get-max-page-entries ({})",
            args.get_page_entries, args.get_max_page_entries
        )));
    }
    if args.get_page_bytes < 64 * 1024 || args.get_page_bytes > 3 << 20 {
        return Err(Failure::usage(
            "--get-page-bytes must be between 65536 and 3145728, so a page fits a client's default 4 MiB message limit",
        ));
    }
    if args.handshake_timeout < Duration::from_millis(100) {
        return Err(Failure::usage("--handshake-timeout must be at least 100ms"));
    }
    if args.reply_bytes_per_connection < args.get_page_bytes
        || args.reply_bytes < args.reply_bytes_per_connection
    {
        return Err(Failure::usage(
            "--reply-bytes-per-connection must be at least --get-page-bytes, and --reply-bytes at least --reply-bytes-per-connection",
        ));
    }
    if args.request_timeout < Duration::from_secs(1) {
        return Err(Failure::usage("--request-timeout must be at least 1s"));
    }
    let mut limits = ConnectionLimits {
        max_connections: args.max_connections,
        handshake_timeout: args.handshake_timeout,
        max_streams_per_connection: args.max_streams_per_connection,
        request_timeout: args.request_timeout,
        reply_bytes_per_connection: args.reply_bytes_per_connection,
    };
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(files) => {
            tracing::info!(open_files = files, "open-file limit");
            let room = files.saturating_sub(RESERVED_FDS);
            let wanted = (limits.max_connections + limits.max_handshakes()) as u64;
            if wanted > room {
                // Connections and handshakes must both fit: handshakes take an
                // eighth of the connections (at least 16).
                let fit = (room.saturating_sub(16) * 8 / 9).max(1);
                limits.max_connections = usize::try_from(fit).unwrap_or(1);
                tracing::warn!(
                    open_files = files,
                    max_connections = limits.max_connections,
                    "--max-connections lowered to fit the open-file limit"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read or raise the open-file limit"),
    }
    Ok(limits)
}

async fn start_aws(
    settings: &AwsSettings,
    args: &AwsArgs,
    hub_config: HubConfig,
    stop: CancellationToken,
) -> (Arc<Router>, Arc<Hub>) {
    let sdk = crate::aws::sdk_config(args.region.clone()).await;
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
    // The identity comes from the table: wait for it as the stream reader would.
    let mut backoff = configwatch_client::Retry::new(configwatch_client::Backoff::doubling(
        Duration::from_millis(500),
        Duration::from_secs(30),
    ));
    let store_id = loop {
        match crate::store::identity::aws_store_id(&dynamodb, &settings.table, &settings.ssm_root)
            .await
        {
            Ok(id) => break id,
            Err(e) => tracing::error!(error = %e, "cannot derive the store identity yet; retrying"),
        }
        tokio::time::sleep(backoff.failed()).await;
    };
    tracing::info!(%store_id, "store identity derived from the table and the Parameter Store root");
    let ssm = Arc::new(SsmBackend::new(
        aws_sdk_ssm::Client::new(&sdk),
        settings.ssm_root.clone(),
    ));
    let router = Arc::new(
        Router::new(vec![
            (
                &keys::TENANT_CONFIG,
                Arc::new(DynamoBackend::new(dynamodb.clone(), settings.table.clone())),
            ),
            (&keys::PARAM_CONFIG, ssm.clone()),
        ])
        .with_store_id(store_id.as_str()),
    );
    let hub = Arc::new(Hub::new(router.clone(), hub_config));
    let ctx = SourceContext {
        hub: hub.clone(),
        counters: Arc::new(SourceCounters::default()),
    };
    let streams = ddb_streams::StreamSettings {
        poll_interval: args.stream_poll_interval,
        ..ddb_streams::StreamSettings::default()
    };
    tokio::spawn(ddb_streams::run(
        ctx.clone(),
        streams,
        dynamodb,
        aws_sdk_dynamodbstreams::Client::new(&sdk),
        settings.table.clone(),
        stop.clone(),
    ));
    match &settings.queue_url {
        Some(queue_url) => {
            tokio::spawn(sqs_events::run(
                ctx.clone(),
                aws_sdk_sqs::Client::new(&sdk),
                queue_url.clone(),
                ssm,
                sqs_events::SqsSettings::default(),
                stop.clone(),
            ));
        }
        None => tracing::warn!(
            "no --queue-url: Parameter Store changes made outside configwatch arrive only by reconciliation"
        ),
    }
    tokio::spawn(reconcile::run(ctx, settings.reconcile_interval, stop));
    (router, hub)
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

fn init_logging(filter: &str) -> Result<(), Failure> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .map_err(|e| Failure::usage(format!("--log '{filter}' is not a valid filter: {e}")))?;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    Ok(())
}

fn run_token(args: TokenArgs) -> Result<(), Failure> {
    let scope = Scope::new(&args.tenant, args.service.as_deref())
        .map_err(|e| Failure::usage(e.to_string()))?;
    let fresh = !args.data_dir.join(crate::auth::local::KEY_FILE).exists()
        && !args.data_dir.join(crate::store::embedded::DB_FILE).exists();
    let key = open_key(&args.data_dir)?;
    if fresh {
        // A new data directory: create its store with the key, so that a later
        // `serve` does not take the key for the remains of a lost database.
        EmbeddedStore::open(&args.data_dir)
            .map_err(|e| Failure::error(format!("cannot create the store: {e}")))?;
    }
    let token = key
        .issue(&scope, args.role, args.ttl, &args.subject)
        .map_err(|e| Failure::error(format!("cannot sign the token: {e}")))?;
    println!("{token}");
    Ok(())
}

/// Adds the bearer token to every call.
type AuthInterceptor =
    Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>;
type Client = ConfigServiceClient<InterceptedService<Channel, AuthInterceptor>>;

async fn connect(args: &ClientArgs) -> Result<Client, Failure> {
    let token = args.token.as_deref().filter(|t| !t.is_empty()).ok_or_else(|| {
        Failure::usage(
            "no token: pass --token or set CONFIGWATCH_TOKEN (`configwatch token --tenant T` prints one)",
        )
    })?;
    let header: MetadataValue<_> = format!("Bearer {token}")
        .parse()
        .map_err(|_| Failure::usage("the token contains characters not allowed in a header"))?;
    let endpoint = Endpoint::from_shared(args.server.clone())
        .map_err(|e| Failure::usage(format!("--server '{}' is not a URL: {e}", args.server)))?
        .connect_timeout(Duration::from_secs(5));
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| Failure::error(format!("cannot connect to {}: {e}", args.server)))?;
    let interceptor: AuthInterceptor = Box::new(move |mut req: tonic::Request<()>| {
        req.metadata_mut().insert("authorization", header.clone());
        Ok(req)
    });
    Ok(ConfigServiceClient::with_interceptor(channel, interceptor)
        .max_decoding_message_size(usize::MAX))
}

/// A value as JSON for output: the parsed value, or the raw text if it is not JSON.
/// A value's JSON text as it goes into a printed line: verbatim (every digit of every
/// number as the server holds it), or as a JSON string if it is not JSON.
fn json_value(text: &str) -> String {
    match serde_json::from_str::<&serde_json::value::RawValue>(text) {
        Ok(raw) => raw.get().to_owned(),
        Err(_) => Value::String(text.to_owned()).to_string(),
    }
}

/// The line printed for an entry: key, version, then value, deleted or secret. The
/// value is copied as the server sent it, never through a float.
pub fn entry_json(e: &proto::Entry) -> String {
    let mut out = format!(
        "{{\"key\":{},\"version\":{}",
        Value::String(e.key.clone()),
        e.version
    );
    if e.deleted {
        out.push_str(",\"deleted\":true");
    } else if e.secret && e.value.is_empty() {
        out.push_str(",\"secret\":true");
    } else {
        out.push_str(",\"value\":");
        out.push_str(&json_value(&e.value));
        if e.secret {
            out.push_str(",\"secret\":true");
        }
    }
    out.push('}');
    out
}

/// Times a paged Get starts again when the tenant changes while it pages.
const GET_ATTEMPTS: usize = 5;

async fn run_get(args: GetArgs) -> Result<(), Failure> {
    let mut client = connect(&args.client).await?;
    let mut attempt = 0;
    let (entries, missing) = loop {
        attempt += 1;
        match get_all_pages(&mut client, &args).await {
            Ok(done) => break done,
            Err(s) if s.code() == tonic::Code::Aborted && attempt < GET_ATTEMPTS => {
                // The tenant changed between two pages: read it again from the start.
                continue;
            }
            Err(s) => return Err(s.into()),
        }
    };
    for e in &entries {
        println!("{}", entry_json(e));
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Failure::error(format!("not found: {}", missing.join(", "))))
    }
}

/// Every page of a Get, all of the first page's revision.
async fn get_all_pages(
    client: &mut Client,
    args: &GetArgs,
) -> Result<(Vec<proto::Entry>, Vec<String>), tonic::Status> {
    let mut entries = Vec::new();
    let mut missing = Vec::new();
    let mut page_token = String::new();
    loop {
        let resp = client
            .get(proto::GetRequest {
                keys: args.keys.clone(),
                prefixes: args.prefixes.clone(),
                tenant: String::new(),
                limit: args.page_size,
                page_token,
            })
            .await?
            .into_inner();
        entries.extend(resp.entries);
        missing.extend(resp.missing_keys);
        if resp.next_page_token.is_empty() {
            return Ok((entries, missing));
        }
        page_token = resp.next_page_token;
    }
}

async fn run_put(args: PutArgs) -> Result<(), Failure> {
    let mut client = connect(&args.client).await?;
    let resp = client
        .put(proto::PutRequest {
            key: args.key,
            value: args.value,
            expected_version: args.expect_version,
            secret: args.secret,
            tenant: String::new(),
        })
        .await?
        .into_inner();
    if let Some(e) = resp.entry {
        println!("{}", json!({ "key": e.key, "version": e.version }));
    }
    Ok(())
}

async fn run_delete(args: DeleteArgs) -> Result<(), Failure> {
    let mut client = connect(&args.client).await?;
    let resp = client
        .delete(proto::DeleteRequest {
            key: args.key,
            expected_version: args.expect_version,
            tenant: String::new(),
        })
        .await?
        .into_inner();
    if let Some(e) = resp.entry {
        println!(
            "{}",
            json!({ "key": e.key, "version": e.version, "deleted": true })
        );
    }
    Ok(())
}

/// Watches and prints changes. When the server goes away (UNAVAILABLE, or the
/// connection drops) it reconnects with backoff and resumes, so a server restart
/// costs no lines; any other error ends the command.
async fn run_watch(args: WatchArgs) -> Result<(), Failure> {
    let mut resume = args.resume_token.clone().unwrap_or_default();
    let mut known: HashMap<String, u64> = HashMap::new();
    let mut backoff = Duration::from_millis(200);
    loop {
        let outcome = watch_once(&args, &mut resume, &mut known, &mut backoff).await;
        match outcome {
            Ok(()) => return Ok(()),
            Err(Retry::No(f)) => return Err(f),
            Err(Retry::After(why)) => {
                eprintln!("watch interrupted ({why}); reconnecting in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

enum Retry {
    No(Failure),
    After(String),
}

async fn watch_once(
    args: &WatchArgs,
    resume: &mut String,
    known: &mut HashMap<String, u64>,
    backoff: &mut Duration,
) -> Result<(), Retry> {
    let mut client = match connect(&args.client).await {
        Ok(c) => c,
        Err(f) if f.code == 1 => return Err(Retry::After(f.message)),
        Err(f) => return Err(Retry::No(f)),
    };
    let request = proto::WatchRequest {
        prefixes: args.prefixes.clone(),
        tenant: String::new(),
        resume_token: resume.clone(),
        known_versions: known.clone(),
        known_digest: Vec::new(),
        known_store_id: String::new(),
    };
    let retry_or_fail = |s: tonic::Status| match s.code() {
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled => {
            Retry::After(format!("{:?}: {}", s.code(), s.message()))
        }
        _ => Retry::No(s.into()),
    };
    let mut stream = client
        .watch(request)
        .await
        .map_err(retry_or_fail)?
        .into_inner();
    loop {
        match stream.message().await {
            Ok(Some(msg)) => {
                *backoff = Duration::from_millis(200);
                for c in &msg.changes {
                    if c.deleted {
                        known.remove(&c.key);
                    } else {
                        known.insert(c.key.clone(), c.version);
                    }
                    println!("{}", entry_json(c));
                }
                if !msg.resume_token.is_empty() {
                    *resume = msg.resume_token;
                }
            }
            Ok(None) => return Ok(()),
            Err(s) => return Err(retry_or_fail(s)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Parser)]
    struct IdentityOnly {
        #[command(flatten)]
        identity: IdentityArgs,
    }

    fn identity_args(args: &[&str]) -> Result<IdentityArgs, clap::Error> {
        let argv = std::iter::once("configwatch").chain(args.iter().copied());
        IdentityOnly::try_parse_from(argv).map(|p| p.identity)
    }

    #[tokio::test]
    async fn a_leeway_over_an_hour_is_a_usage_error_and_roles_need_no_claim_by_default()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let args = identity_args(&["--jwt-leeway", "2h"])?;
        assert!(args.role_claim.is_empty(), "no role claim unless declared");
        match authenticator(&args, dir.path(), CancellationToken::new()).await {
            Err(f) => {
                assert_eq!(f.code, EXIT_USAGE);
                assert!(f.message.contains("--jwt-leeway"), "{}", f.message);
            }
            Ok(_) => panic!("a 2h leeway was accepted"),
        }
        let args = identity_args(&["--jwt-leeway", "1h"])?;
        authenticator(&args, dir.path(), CancellationToken::new())
            .await
            .map_err(|f| f.message)?;
        Ok(())
    }

    #[test]
    fn issuer_is_derived_only_for_cognito() {
        assert_eq!(
            cognito_issuer(
                "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_abc/.well-known/jwks.json"
            )
            .as_deref(),
            Some("https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_abc")
        );
        assert_eq!(
            cognito_issuer("https://idp.example.com/.well-known/jwks.json"),
            None
        );
        assert_eq!(
            cognito_issuer("http://cognito-idp.x.amazonaws.com/p/.well-known/jwks.json"),
            None
        );
    }
}
