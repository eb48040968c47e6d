//! The command line's flags: the clap structs of every command, their value parsers,
//! and the checks that turn bad configuration into exit 64 before any port is bound.
//! Knows the settings types it fills (AWS, tokens) but starts nothing.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::Failure;
use crate::auth::{Role, TokenUse};
use crate::aws::AwsSettings;
use crate::{api, server};

mod history;
mod relay;
pub use history::{HistoryArgs, RetentionArgs, RollbackArgs};
pub use relay::{COGNITO_REFRESH_TOKEN_ENV, RelayArgs};

/// The server's log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line: timestamp, level, target, message and fields.
    Json,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "CONFIGWATCH_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Address of the admin HTTP listener (/healthz, /readyz, /metrics); empty for none.
    #[arg(long, env = "CONFIGWATCH_ADMIN_LISTEN", default_value = crate::admin::DEFAULT_ADMIN_LISTEN)]
    pub admin_listen: String,
    /// Directory for the embedded store and the signing key.
    #[arg(long, env = "CONFIGWATCH_DATA_DIR", default_value = "configwatch-data")]
    pub data_dir: PathBuf,
    /// Changes kept per tenant for resume by token.
    #[arg(long, env = "CONFIGWATCH_HISTORY", default_value_t = crate::hub::DEFAULT_HISTORY)]
    pub history: usize,
    /// Drop a tenant's view from memory (and from reconciliation) after this long
    /// with no Watch and no Get, Put or Delete; its next use loads it again. `0` or
    /// `off`: keep every view.
    #[arg(long, env = "CONFIGWATCH_VIEW_IDLE", default_value_t = crate::hub::DEFAULT_VIEW_IDLE.into(), value_parser = parse_view_idle)]
    pub view_idle: humantime::Duration,
    /// Mean idle time before a Watch gets a progress message (jittered ±25%).
    #[arg(long, env = "CONFIGWATCH_PROGRESS_INTERVAL", default_value_t = api::DEFAULT_PROGRESS_INTERVAL.into())]
    pub progress_interval: humantime::Duration,
    /// Largest request message accepted, in bytes.
    #[arg(long, env = "CONFIGWATCH_MAX_REQUEST_BYTES", default_value_t = server::DEFAULT_MAX_REQUEST_BYTES)]
    pub max_request_bytes: usize,
    /// Most prefixes in one Get or Watch.
    #[arg(long, env = "CONFIGWATCH_MAX_PREFIXES", default_value_t = api::DEFAULT_MAX_PREFIXES)]
    pub max_prefixes: usize,
    /// Entries in a Get reply when the request sets no limit.
    #[arg(long, env = "CONFIGWATCH_GET_PAGE_ENTRIES", default_value_t = api::DEFAULT_PAGE_ENTRIES)]
    pub get_page_entries: usize,
    /// Most entries in a Get reply, whatever the request's limit.
    #[arg(
        long,
        env = "CONFIGWATCH_GET_MAX_PAGE_ENTRIES",
        default_value_t = api::DEFAULT_MAX_PAGE_ENTRIES
    )]
    pub get_max_page_entries: usize,
    /// About the most key and value bytes in a Get reply (a single larger entry
    /// still goes alone).
    #[arg(long, env = "CONFIGWATCH_GET_PAGE_BYTES", default_value_t = api::DEFAULT_PAGE_BYTES)]
    pub get_page_bytes: usize,
    /// Watch initial states (full, or a diff against known_versions) computed at
    /// once; more wait their turn, and one tenant takes at most half of them.
    #[arg(long, env = "CONFIGWATCH_INITIAL_STATE_SLOTS", default_value_t = api::DEFAULT_INITIAL_STATE_SLOTS)]
    pub initial_state_slots: usize,
    /// Most client connections at once; more are closed at once. Lowered to fit
    /// the open-file limit.
    #[arg(long, env = "CONFIGWATCH_MAX_CONNECTIONS", default_value_t = server::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Time a new connection has to start HTTP/2 before it is closed.
    #[arg(long, env = "CONFIGWATCH_HANDSHAKE_TIMEOUT", default_value_t = server::DEFAULT_HANDSHAKE_TIMEOUT.into())]
    pub handshake_timeout: humantime::Duration,
    /// Most concurrent calls (HTTP/2 streams) on one connection.
    #[arg(
        long,
        env = "CONFIGWATCH_MAX_STREAMS_PER_CONNECTION",
        default_value_t = server::DEFAULT_MAX_STREAMS_PER_CONNECTION
    )]
    pub max_streams_per_connection: u32,
    /// Time a call has to send its request and be answered (for Watch, until its
    /// stream starts); also the time a client has to read a Get reply.
    #[arg(long, env = "CONFIGWATCH_REQUEST_TIMEOUT", default_value_t = api::DEFAULT_REQUEST_TIMEOUT.into())]
    pub request_timeout: humantime::Duration,
    /// Bytes of Get replies the server holds for clients that have not read them
    /// yet, in total; beyond it Gets wait, then fail with RESOURCE_EXHAUSTED.
    #[arg(long, env = "CONFIGWATCH_REPLY_BYTES", default_value_t = api::DEFAULT_REPLY_BYTES)]
    pub reply_bytes: usize,
    /// The same, per connection, Watch messages included; beyond it that
    /// connection's Gets wait and its Watches send nothing more until it reads.
    #[arg(long, env = "CONFIGWATCH_REPLY_BYTES_PER_CONNECTION", default_value_t = server::DEFAULT_REPLY_BYTES_PER_CONNECTION)]
    pub reply_bytes_per_connection: usize,
    /// Age after which a connection is asked to go away (HTTP/2 GOAWAY) and, after
    /// the grace, its Watch streams end with UNAVAILABLE so the client reconnects
    /// and resumes (±10% per connection). Off unless set: set it behind a load
    /// balancer so clients spread over new instances.
    #[arg(long, env = "CONFIGWATCH_MAX_CONNECTION_AGE")]
    pub max_connection_age: Option<humantime::Duration>,
    /// How long Watch streams stay on a connection past its maximum age.
    #[arg(long, env = "CONFIGWATCH_MAX_CONNECTION_AGE_GRACE", default_value_t = server::DEFAULT_MAX_CONNECTION_AGE_GRACE.into())]
    pub max_connection_age_grace: humantime::Duration,
    /// How long shutdown waits for in-flight calls.
    #[arg(long, env = "CONFIGWATCH_SHUTDOWN_GRACE", default_value_t = server::DEFAULT_SHUTDOWN_GRACE.into())]
    pub shutdown_grace: humantime::Duration,
    /// Log filter (tracing syntax), e.g. `info` or `configwatch=debug`.
    #[arg(long, env = "CONFIGWATCH_LOG", default_value = "info")]
    pub log: String,
    /// How log lines are written on stderr: `text` for people, `json` (one object
    /// per line) for a log pipeline.
    #[arg(long, env = "CONFIGWATCH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Start a new, empty store with a new identity when the data directory's
    /// database is missing, empty or of another store (start-up refuses without
    /// it). Does nothing to an intact store. Use once, deliberately.
    #[arg(long, env = "CONFIGWATCH_NEW_STORE")]
    pub new_store: bool,
    #[command(flatten)]
    pub identity: IdentityArgs,
    #[command(flatten)]
    pub aws: AwsArgs,
    #[command(flatten)]
    pub relay: RelayArgs,
    #[command(flatten)]
    pub keep: RetentionArgs,
}

impl ServeArgs {
    /// The admin listener's address, `None` when `--admin-listen` is empty.
    pub fn admin_addr(&self) -> Result<Option<SocketAddr>, Failure> {
        let value = self.admin_listen.trim();
        if value.is_empty() {
            return Ok(None);
        }
        value.parse().map(Some).map_err(|_| {
            Failure::usage(format!(
                "--admin-listen '{value}' is not an address such as 127.0.0.1:9090 (empty turns it off)"
            ))
        })
    }

    /// Checks the flags before anything starts (a refusal names the flag: exit 64);
    /// returns the AWS settings for `--backend aws`, `None` for the embedded store.
    pub fn check(&self) -> Result<Option<AwsSettings>, Failure> {
        self.admin_addr()?;
        self.keep.retention()?;
        self.keep.instance()?;
        if self.history == 0 {
            return Err(Failure::usage("--history must be at least 1"));
        }
        if !self.view_idle.is_zero() && *self.view_idle < Duration::from_secs(1) {
            return Err(Failure::usage(
                "--view-idle must be at least 1s, or 0 (off) to keep every view",
            ));
        }
        if *self.progress_interval < Duration::from_millis(100) {
            return Err(Failure::usage("--progress-interval must be at least 100ms"));
        }
        if self.max_request_bytes < 64 * 1024 {
            return Err(Failure::usage(
                "--max-request-bytes must be at least 65536 (values alone may be 400,000 bytes)",
            ));
        }
        if self.max_prefixes == 0 {
            return Err(Failure::usage("--max-prefixes must be at least 1"));
        }
        let positive = [
            ("--get-page-entries", self.get_page_entries),
            ("--get-max-page-entries", self.get_max_page_entries),
            ("--initial-state-slots", self.initial_state_slots),
            ("--max-connections", self.max_connections),
            (
                "--max-streams-per-connection",
                self.max_streams_per_connection as usize,
            ),
        ];
        if let Some((flag, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(Failure::usage(format!("{flag} must be at least 1")));
        }
        if self.get_page_entries > self.get_max_page_entries {
            return Err(Failure::usage(format!(
                "--get-page-entries ({}) must not be above --get-max-page-entries ({})",
                self.get_page_entries, self.get_max_page_entries
            )));
        }
        if self.get_page_bytes < 64 * 1024 || self.get_page_bytes > 3 << 20 {
            return Err(Failure::usage(
                "--get-page-bytes must be between 65536 and 3145728, so a page fits a client's default 4 MiB message limit",
            ));
        }
        if *self.handshake_timeout < Duration::from_millis(100) {
            return Err(Failure::usage("--handshake-timeout must be at least 100ms"));
        }
        if self.reply_bytes_per_connection < self.get_page_bytes
            || self.reply_bytes < self.reply_bytes_per_connection
        {
            return Err(Failure::usage(
                "--reply-bytes-per-connection must be at least --get-page-bytes, and --reply-bytes at least --reply-bytes-per-connection",
            ));
        }
        if *self.request_timeout < Duration::from_secs(1) {
            return Err(Failure::usage("--request-timeout must be at least 1s"));
        }
        if self
            .max_connection_age
            .is_some_and(|age| *age < Duration::from_secs(1))
        {
            return Err(Failure::usage(
                "--max-connection-age must be at least 1s (leave it unset for no maximum)",
            ));
        }
        // Said before the AWS flags are checked: a relay reads no store at all.
        if self.aws.backend == BackendKind::Aws
            && self.relay.upstreams.iter().any(|u| !u.trim().is_empty())
        {
            return Err(Failure::usage(
                "--upstream makes a relay, which reads no store: leave out --backend aws (or --upstream)",
            ));
        }
        let aws = self.aws.settings()?;
        if self.new_store && aws.is_some() {
            return Err(Failure::usage(
                "--new-store is for the embedded store; on AWS a recreated table has a new identity by itself",
            ));
        }
        Ok(aws)
    }
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
    #[arg(long, env = "CONFIGWATCH_STREAM_POLL_INTERVAL", default_value_t = crate::source::ddb_streams::DEFAULT_POLL_INTERVAL.into())]
    pub stream_poll_interval: humantime::Duration,
    /// How long a source (the stream reader, the queue reader) may fail, or its
    /// task be down, before `/readyz` and gRPC health say not ready.
    #[arg(long, env = "CONFIGWATCH_SOURCE_DOWN_GRACE", default_value_t = crate::source::health::DEFAULT_DOWN_GRACE.into())]
    pub source_down_grace: humantime::Duration,
}

impl AwsArgs {
    /// The settings for `--backend aws`, checked; `None` for the embedded store.
    pub fn settings(&self) -> Result<Option<AwsSettings>, Failure> {
        if *self.source_down_grace > MAX_SOURCE_DOWN_GRACE {
            return Err(Failure::usage(format!(
                "--source-down-grace must be at most {} (a longer one hides an outage from the load balancer)",
                humantime::format_duration(MAX_SOURCE_DOWN_GRACE)
            )));
        }
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
        if *self.stream_poll_interval < Duration::from_millis(100) {
            return Err(Failure::usage(
                "--stream-poll-interval must be at least 100ms (each poll is a GetRecords call per shard)",
            ));
        }
        Ok(Some(settings))
    }
}

/// The longest `--source-down-grace`.
const MAX_SOURCE_DOWN_GRACE: Duration = Duration::from_secs(3600);

/// How tokens are validated. Without `--jwks-url`, the server's own signing key in
/// the data directory verifies them (`configwatch token` signs with it).
#[derive(Debug, Args)]
pub struct IdentityArgs {
    /// JWKS URL of the identity provider, e.g.
    /// `https://cognito-idp.REGION.amazonaws.com/POOL/.well-known/jwks.json`
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
    #[arg(long, env = "CONFIGWATCH_JWT_LEEWAY", default_value_t = crate::auth::DEFAULT_LEEWAY.into())]
    pub jwt_leeway: humantime::Duration,
    /// Least time between JWKS fetches caused by unknown key ids.
    #[arg(long, env = "CONFIGWATCH_JWKS_MIN_REFETCH", default_value_t = crate::auth::jwks::DEFAULT_MIN_REFETCH.into())]
    pub jwks_min_refetch: humantime::Duration,
    /// Claim naming the tenant.
    #[arg(
        long,
        env = "CONFIGWATCH_TENANT_CLAIM",
        default_value = crate::auth::DEFAULT_TENANT_CLAIM
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
        default_value = crate::auth::DEFAULT_SERVICE_CLAIM
    )]
    pub service_claim: String,
}

/// A duration, or `off` (the same as `0`).
fn parse_view_idle(s: &str) -> Result<humantime::Duration, String> {
    if s.trim().eq_ignore_ascii_case("off") {
        return Ok(Duration::ZERO.into());
    }
    s.parse::<humantime::Duration>().map_err(|e| e.to_string())
}

fn parse_token_use(s: &str) -> Result<TokenUse, String> {
    TokenUse::parse(s).ok_or_else(|| format!("'{s}' is not a token use; use id, access or any"))
}

fn parse_algorithm(s: &str) -> Result<jsonwebtoken::Algorithm, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a JWT algorithm (RS256, ES256, EdDSA, ...)"))
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The server's data directory (its signing key is created there if missing).
    #[arg(long, env = "CONFIGWATCH_DATA_DIR", default_value = "configwatch-data")]
    pub data_dir: PathBuf,
    /// The tenant the token is for. Optional for the relay role only (a relay
    /// names the tenant in each request).
    #[arg(long, env = "CONFIGWATCH_TENANT")]
    pub tenant: Option<String>,
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
    /// Server URL: `http://`, or `https://` (verified with the platform's root certificates).
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
    /// Why, kept in the key's history (at most 256 bytes).
    #[arg(long, env = "CONFIGWATCH_REASON", default_value = "")]
    pub reason: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    pub key: String,
    /// Delete only if the key is at this version.
    #[arg(long, env = "CONFIGWATCH_EXPECT_VERSION")]
    pub expect_version: Option<u64>,
    /// Why, kept in the key's history (at most 256 bytes).
    #[arg(long, env = "CONFIGWATCH_REASON", default_value = "")]
    pub reason: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Prefixes to watch; none watches the whole tenant.
    pub prefixes: Vec<String>,
    /// The token's tenant (default: read from the token's `custom:tenantId` claim).
    #[arg(long, env = "CONFIGWATCH_TENANT")]
    pub tenant: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct HealthArgs {
    /// The server's admin listener; an unspecified host (0.0.0.0, [::]) is reached
    /// on loopback, so the server's own `--admin-listen` value works here.
    #[arg(long, env = "CONFIGWATCH_ADMIN_LISTEN", default_value = crate::admin::DEFAULT_ADMIN_LISTEN)]
    pub admin: String,
    /// Check readiness (/readyz) instead of liveness (/healthz).
    #[arg(long, env = "CONFIGWATCH_HEALTH_READY")]
    pub ready: bool,
    /// How long the check may take in all.
    #[arg(long, env = "CONFIGWATCH_HEALTH_TIMEOUT", default_value_t = super::health::DEFAULT_TIMEOUT.into())]
    pub timeout: humantime::Duration,
}
