//! The composition root of `configwatch serve`: opens the store, builds the hub,
//! the authenticator, the API settings and the server, starts the sources, and
//! serves until SIGINT or SIGTERM. The only code that knows every part.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::admin::{admin_started, open_admin, register_metrics};
use super::origin::{History, start_aws};
use super::{Failure, IdentityArgs, LogFormat, ServeArgs, open_key};
use crate::admin::Admin;
use crate::admin::sources::SourceMetrics;
use crate::api::{Limits, WatchEnds, WatchSettings};
use crate::auth::jwks::{JwksKeySource, JwksSettings};
use crate::auth::{Authenticator, ClaimRules};
use crate::hub::{Hub, HubConfig};
use crate::server::{App, ConnectionLimits, MaxConnectionAge, RpcMetrics, serve};
use crate::source::SourceCounters;
use crate::source::supervise::Supervisor;
use crate::store::Router;
use crate::store::embedded::{EmbeddedStore, OpenOptions};
use crate::store::history::Retention;

/// The issuer of a Cognito user pool, from its JWKS URL.
pub(super) fn cognito_issuer(jwks_url: &str) -> Option<String> {
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
    if *args.jwt_leeway > MAX_JWT_LEEWAY {
        return Err(Failure::usage(format!(
            "--jwt-leeway {} is over the maximum of {}",
            humantime::format_duration(*args.jwt_leeway),
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
        leeway: *args.jwt_leeway,
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
    settings.min_refetch = *args.jwks_min_refetch;
    let keys = JwksKeySource::start(settings, shutdown)
        .await
        .map_err(|e| Failure::usage(e.to_string()))?;
    Ok(Authenticator::new(keys, rules))
}

/// Opens the embedded store in `data_dir`, refusing a directory that lost its
/// database unless `new_store`, and reports what the check of every record found.
fn open_store(
    data_dir: &Path,
    new_store: bool,
    retention: Retention,
) -> Result<EmbeddedStore, Failure> {
    let options = OpenOptions {
        new_store,
        initialised_by: vec![data_dir.join(crate::auth::local::KEY_FILE)],
    };
    let store = EmbeddedStore::open_with(data_dir, &options)
        .map_err(|e| Failure::error(format!("cannot start: {e}")))?
        .with_retention(retention);
    let report = store.verify_report();
    if report.is_clean() {
        tracing::info!(
            store_id = store.id(),
            records = report.records,
            history_records = report.history_records,
            "store checked"
        );
    } else {
        // Named one by one in the log above; this line sums them up for operators.
        eprintln!(
            "configwatch: the store has {} damaged record(s) and {} damaged history record(s){}; their scopes (and those versions) answer DATA_LOSS until restored: {}",
            report.damaged.len(),
            report.damaged_history.len(),
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

pub(super) async fn run_serve(args: ServeArgs) -> Result<(), Failure> {
    init_logging(&args.log, args.log_format)?;
    let aws = args.check()?;
    let relay_settings = args.relay.settings(args.new_store)?;
    let connections = connection_limits(&args);
    // The root of every shutdown token: the server, each source task (and through
    // the server every Watch and background task) and the JWKS refresh take a
    // child of it, so cancelling it stops everything and a part can stop alone.
    let stop = CancellationToken::new();
    // The store first: the signing key beside a missing database shows that the
    // directory lost its data (the authenticator would create a key).
    let embedded = match (&aws, &relay_settings) {
        (None, None) => Some(open_store(
            &args.data_dir,
            args.new_store,
            args.keep.retention()?,
        )?),
        (None, Some(_)) => {
            super::relay::check_key(&args.data_dir, args.identity.jwks_url.is_some())?;
            None
        }
        (Some(_), _) => None,
    };
    let auth = authenticator(&args.identity, &args.data_dir, stop.child_token()).await?;
    // Metrics nobody can read cost nothing: without an admin listener the hub does
    // not time deliveries and no layer counts calls.
    let metrics_on = args.admin_addr()?.is_some();
    let hub_config = HubConfig {
        history_limit: args.history,
        track_delivery: metrics_on,
    };
    // On AWS both ports open before the server reaches AWS (it waits for the table
    // to answer, as long as it takes): calls wait in the listen queue until it
    // serves, and the admin listener answers /healthz (alive) and /readyz
    // (starting) meanwhile. The embedded store is open already: the ports open
    // once the server serves.
    let admin = Arc::new(Admin::default());
    let early = match aws {
        Some(_) => Some(open_ports(&args, &admin, &stop).await?),
        None => None,
    };
    let mut registry = Registry::default();
    let mut relay = None;
    let (router, hub, sources) = match (embedded, &aws, &relay_settings) {
        (Some(store), _, _) => {
            let router = Arc::new(Router::single(Arc::new(store)));
            let hub = Arc::new(Hub::new(router.clone(), hub_config));
            (router, hub, None)
        }
        (None, Some(settings), _) => {
            let counters = Arc::new(SourceCounters::default());
            let history = History {
                retention: args.keep.retention()?,
                instance: args.keep.instance()?,
            };
            let (router, hub, sources) = start_aws(
                settings,
                &args.aws,
                &history,
                hub_config,
                counters.clone(),
                stop.child_token(),
            )
            .await;
            registry.register_collector(Box::new(SourceMetrics {
                counters: Some(counters),
                state: sources.state(),
            }));
            // Sources failing past the grace: every watcher is told how stale it may be.
            tokio::spawn(crate::source::cutoff::follow(
                sources.state(),
                hub.clone(),
                stop.child_token(),
            ));
            (router, hub, Some(sources))
        }
        (None, None, Some(settings)) => {
            let sources = Supervisor::new(stop.child_token(), SOURCE_RESTART)
                .with_down_grace(*args.aws.source_down_grace);
            let (router, hub, sources, started) = super::relay::start_relay(
                settings,
                args.identity.jwks_url.as_deref(),
                hub_config,
                sources,
                stop.child_token(),
            )
            .await?;
            super::relay::register_relay(&mut registry, &started);
            registry.register_collector(Box::new(SourceMetrics {
                counters: None,
                state: sources.state(),
            }));
            relay = Some(started);
            (router, hub, Some(sources))
        }
        (None, None, None) => return Err(Failure::error("no store configured")),
    };
    // Views nobody uses leave memory (and reconciliation); the next use reloads them.
    tokio::spawn(crate::hub::sweep(
        hub.clone(),
        *args.view_idle,
        stop.child_token(),
    ));
    let auth = Arc::new(auth);
    let rpc_metrics = Arc::new(RpcMetrics::default());
    // A Watch stream counts its own call when it ends (the layer does not wrap it).
    let watch_ends = Arc::new(if metrics_on {
        WatchEnds::with_calls(rpc_metrics.clone())
    } else {
        WatchEnds::default()
    });
    register_metrics(&mut registry, &rpc_metrics, &auth, &hub, &watch_ends);
    let app = App {
        hub,
        router,
        forward: relay.as_ref().map(crate::relay::Relay::forward),
        auth,
        limits: Limits {
            max_prefixes: args.max_prefixes,
            page_entries: args.get_page_entries,
            max_page_entries: args.get_max_page_entries,
            page_bytes: args.get_page_bytes,
            initial_state_slots: args.initial_state_slots,
            reply_bytes: args.reply_bytes,
            reply_drain: *args.request_timeout,
            ..Limits::default()
        },
        watch: WatchSettings {
            progress_interval: *args.progress_interval,
            ends: watch_ends,
            ..WatchSettings::default()
        },
        max_request_bytes: args.max_request_bytes,
        grace: *args.shutdown_grace,
        connections,
        sources: sources.as_ref().map(Supervisor::state),
        // Without an admin listener nobody reads the call counts: no layer counts them.
        rpc_metrics: metrics_on.then_some(rpc_metrics),
        instance: Arc::from(args.keep.instance()?),
    };
    // Started before the ports open, where they open now: the first scrape or
    // readiness check already sees the server.
    admin_started(&admin, app.readiness(), registry);
    let (listener, addr) = match early {
        Some(ports) => ports,
        None => open_ports(&args, &admin, &stop).await?,
    };
    match (&aws, &relay) {
        (None, Some(relay)) => {
            tracing::info!(%addr, upstreams = ?relay.upstream_urls(), "configwatch relaying its upstreams")
        }
        (None, None) => {
            tracing::info!(%addr, data_dir = %args.data_dir.display(), "configwatch serving on the embedded store")
        }
        (Some(s), _) => {
            tracing::info!(%addr, table = %s.table, ssm_root = %s.ssm_root, "configwatch serving on DynamoDB and Parameter Store")
        }
    }
    // A signal stops the server first (it ends every Watch and drains), then the rest.
    let server = stop.child_token();
    let signalled = server.clone();
    let signals = tokio::spawn(async move {
        shutdown_signal().await;
        signalled.cancel();
    });
    let served = serve(listener, app, server.cancelled_owned()).await;
    signals.abort();
    stop.cancel();
    served.map_err(|e| Failure::error(e.to_string()))
}

/// Binds the gRPC listener and says its address (one line on stdout, for scripts
/// that start the server on port 0), then opens the admin listener on `admin`.
async fn open_ports(
    args: &ServeArgs,
    admin: &Arc<Admin>,
    stop: &CancellationToken,
) -> Result<(TcpListener, SocketAddr), Failure> {
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| Failure::error(format!("cannot listen on {}: {e}", args.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Failure::error(format!("cannot read the bound address: {e}")))?;
    announce(&format!("listening on {addr}"));
    open_admin(args, admin.clone(), stop.child_token()).await?;
    Ok((listener, addr))
}

/// Descriptors kept for everything but client connections (store files, AWS
/// clients, the listener, logs).
const RESERVED_FDS: u64 = 64;

/// Raises the soft open-file limit to the hard one, and lowers `--max-connections`
/// when the connections (and the sockets still in their handshake) would not fit
/// in it.
fn connection_limits(args: &ServeArgs) -> ConnectionLimits {
    let mut limits = ConnectionLimits {
        max_connections: args.max_connections,
        handshake_timeout: *args.handshake_timeout,
        max_streams_per_connection: args.max_streams_per_connection,
        request_timeout: *args.request_timeout,
        reply_bytes_per_connection: args.reply_bytes_per_connection,
        max_age: args.max_connection_age.map(|age| MaxConnectionAge {
            age: *age,
            grace: *args.max_connection_age_grace,
        }),
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
    limits
}

/// Delays before a source task that ended or panicked is started again.
pub(super) const SOURCE_RESTART: configwatch_client::Backoff = configwatch_client::Backoff {
    initial: Duration::from_secs(1),
    max: Duration::from_secs(60),
    multiplier: 2.0,
    jitter: 0.5,
};

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

pub(super) fn init_logging(filter: &str, format: LogFormat) -> Result<(), Failure> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .map_err(|e| Failure::usage(format!("--log '{filter}' is not a valid filter: {e}")))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        // The message and the event's fields at the top level of each object.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
    Ok(())
}

/// One line on stdout for scripts that start the server on port 0. A reader that
/// closed stdout after the line it wanted (a broken pipe) must not stop the server,
/// so a failed write is ignored rather than a panic as `println!` would be.
pub(super) fn announce(line: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::EXIT_USAGE;

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
