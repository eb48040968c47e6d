//! configwatch as a [`Peer`]: the server binary started with `serve` on a temporary
//! data directory, driven over gRPC with the client library's generated client.
//! Tokens come from the same binary (`configwatch token`, signed with the key the
//! server keeps in its data directory), one reader and one writer per tenant.
//!
//! Knows the API as a client does (proto, resume tokens, `known_digest`); nothing of
//! the server's code.

use std::collections::HashMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use configwatch_client::proto::config_service_client::ConfigServiceClient;
use configwatch_client::proto::watch_response::{InitialMode, Kind};
use configwatch_client::proto::{GetRequest, PutRequest, WatchRequest};
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;

use super::{Binaries, Event, Followed, MODES, Peer, PeerClient, Server, StartOptions, Unread};
use crate::process::{Launch, Process, free_ports, temp_dir};

/// The family of keys the workloads use.
const FAMILY: &str = "tenant_config_";
/// The trailer by which the server asks for the versions instead of a digest.
const RESUME_METADATA: &str = "configwatch-resume";
const RESUME_WITH_VERSIONS: &[u8] = b"known-versions";
/// How many `configwatch token` processes run at once.
const SIGNERS: usize = 8;

pub struct Configwatch {
    server: Server,
    /// The admin listener (metrics), when the binaries say to serve it.
    admin: Option<SocketAddr>,
    tokens: Arc<Tokens>,
}

/// Bearer headers per tenant.
struct Tokens {
    readers: Vec<AsciiMetadataValue>,
    writers: Vec<AsciiMetadataValue>,
}

impl Peer for Configwatch {
    type Client = Client;
    const NAME: &'static str = "configwatch";
    const READS: Option<&'static str> = None;
    const MULTIPLEXES: bool = false;

    async fn start(bins: &Binaries, opts: StartOptions) -> Result<Self> {
        let dir = temp_dir("configwatch")?;
        let [addr, admin] = free_ports()?;
        let admin = bins.configwatch_metrics.then_some(admin);
        let extra = match opts.quiet {
            true => vec!["--progress-interval".into(), "1h".into()],
            false => Vec::new(),
        };
        let server = serve(bins, addr, admin, extra, dir).await?;
        let dir = server.process.dir();
        let tokens = Arc::new(Tokens {
            readers: sign(&bins.configwatch, dir, "reader", opts.tenants)?,
            writers: sign(&bins.configwatch, dir, "writer", opts.tenants)?,
        });
        Ok(Configwatch {
            server,
            admin,
            tokens,
        })
    }

    async fn ready(&mut self) -> Result<()> {
        listening(&mut self.server).await
    }

    fn server(&self) -> &Server {
        &self.server
    }

    fn server_mut(&mut self) -> &mut Server {
        &mut self.server
    }

    fn client(&self, channel: Channel) -> Client {
        Client {
            rpc: ConfigServiceClient::new(channel),
            tokens: self.tokens.clone(),
        }
    }

    fn describe_modes(modes: &[usize; MODES]) -> String {
        format!(
            "full={} diff={} resumed={}",
            modes[InitialMode::Full as usize],
            modes[InitialMode::Diff as usize],
            modes[InitialMode::Resumed as usize]
        )
    }
}

impl Configwatch {
    /// The admin listener, where `/metrics` is served (with `--metrics`).
    pub fn admin(&self) -> Option<SocketAddr> {
        self.admin
    }
}

/// Starts `configwatch serve` on `addr` with `extra` arguments, its admin listener
/// on `admin` (none: off, and so no metrics) and its data in `dir`, which the
/// process owns from now on; returns once it accepts calls.
pub async fn serve(
    bins: &Binaries,
    addr: SocketAddr,
    admin: Option<SocketAddr>,
    extra: Vec<OsString>,
    dir: PathBuf,
) -> Result<Server> {
    // An empty address turns the admin listener off.
    let admin = admin.map(|a| a.to_string()).unwrap_or_default();
    let mut args: Vec<OsString> = ["serve", "--listen", &addr.to_string()]
        .into_iter()
        .map(OsString::from)
        .collect();
    args.extend(["--admin-listen", &admin, "--log", "warn"].map(OsString::from));
    args.extend(extra);
    args.push("--data-dir".into());
    args.push(dir.clone().into());
    let launch = Launch {
        program: bins.configwatch.clone(),
        args,
        talks: true,
        missing_hint: "build it: cargo build --release -p configwatch",
    };
    let mut server = Server {
        process: Process::start(launch, dir)?,
        addr,
    };
    listening(&mut server).await?;
    Ok(server)
}

/// Returns once a started configwatch server (an origin or a relay) accepts calls
/// on its address: it prints `listening on ADDR` then.
pub async fn listening(server: &mut Server) -> Result<()> {
    use std::io::{BufRead, BufReader};
    let stdout = server.process.take_stdout()?;
    // A blocking read, off the runtime's workers (watchers keep running).
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    })
    .await??;
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("listening on ")
        .ok_or_else(|| anyhow!("configwatch said {line:?}"))?
        .parse()?;
    if addr != server.addr {
        bail!("configwatch listens on {addr}, not on {}", server.addr);
    }
    Ok(())
}

/// Signs a token with `role` for each of `tenants` tenants, a few at a time.
fn sign(
    bin: &Path,
    data_dir: &Path,
    role: &str,
    tenants: usize,
) -> Result<Vec<AsciiMetadataValue>> {
    let mut out = Vec::with_capacity(tenants);
    let all: Vec<usize> = (0..tenants).collect();
    for batch in all.chunks(SIGNERS) {
        let children = batch
            .iter()
            .map(|t| {
                Command::new(bin)
                    .arg("token")
                    .arg("--data-dir")
                    .arg(data_dir)
                    .args(["--tenant", &format!("t{t}"), "--role", role])
                    .args(["--ttl", "1h", "--subject", "bench"])
                    .stdout(Stdio::piped())
                    .spawn()
                    .with_context(|| format!("{} token", bin.display()))
            })
            .collect::<Result<Vec<_>>>()?;
        for child in children {
            let output = child.wait_with_output()?;
            if !output.status.success() {
                bail!("{} token: {}", bin.display(), output.status);
            }
            let token = String::from_utf8(output.stdout)?;
            out.push(format!("Bearer {}", token.trim()).parse()?);
        }
    }
    Ok(out)
}

/// One connection to configwatch, with every tenant's tokens.
#[derive(Clone)]
pub struct Client {
    rpc: ConfigServiceClient<Channel>,
    tokens: Arc<Tokens>,
}

/// What a client library keeps: its cache's versions and the last resume token.
#[derive(Default)]
pub struct Follow {
    known: HashMap<String, u64>,
    resume_token: String,
    /// The server asked for the versions instead of their digest.
    with_versions: bool,
}

impl Client {
    fn authed<T>(
        &self,
        msg: T,
        tokens: &[AsciiMetadataValue],
        tenant: usize,
    ) -> Result<tonic::Request<T>> {
        let token = tokens
            .get(tenant)
            .ok_or_else(|| anyhow!("no token for tenant {tenant}"))?;
        let mut req = tonic::Request::new(msg);
        req.metadata_mut().insert("authorization", token.clone());
        Ok(req)
    }

    fn watch_request(
        &self,
        tenant: usize,
        body: WatchRequest,
    ) -> Result<tonic::Request<WatchRequest>> {
        let body = WatchRequest {
            prefixes: vec![FAMILY.into()],
            ..body
        };
        self.authed(body, &self.tokens.readers, tenant)
    }
}

impl PeerClient for Client {
    type Follow = Follow;

    async fn put(&self, tenant: usize, name: &str, value: String) -> Result<()> {
        let req = self.authed(
            PutRequest {
                key: format!("{FAMILY}{name}"),
                value,
                ..Default::default()
            },
            &self.tokens.writers,
            tenant,
        )?;
        self.rpc.clone().put(req).await?;
        Ok(())
    }

    /// Reads with the writer's token, the one the keys were written with.
    async fn get(&self, tenant: usize, name: &str) -> Result<bool> {
        let req = self.authed(
            GetRequest {
                keys: vec![format!("{FAMILY}{name}")],
                ..Default::default()
            },
            &self.tokens.writers,
            tenant,
        )?;
        let resp = self.rpc.clone().get(req).await?;
        Ok(!resp.get_ref().entries.is_empty())
    }

    async fn load(&self, tenant: usize) -> Result<()> {
        let req = self.authed(GetRequest::default(), &self.tokens.readers, tenant)?;
        self.rpc.clone().get(req).await?;
        Ok(())
    }

    async fn watch(&self, tenants: &[usize], mut on: impl FnMut(Event<'_>) + Send) -> Result<()> {
        let req = self.watch_request(super::one_tenant(tenants)?, WatchRequest::default())?;
        let mut stream = self.rpc.clone().watch(req).await?.into_inner();
        while let Ok(Some(msg)) = stream.message().await {
            if msg.initial_complete {
                on(Event::Ready);
            }
            if msg.kind != Kind::Delta as i32 {
                continue;
            }
            on(Event::Values(
                &mut msg.changes.iter().map(|e| e.value.as_bytes()),
            ));
        }
        Ok(())
    }

    async fn watch_unread(&self, tenant: usize) -> Result<Unread> {
        let req = self.watch_request(tenant, WatchRequest::default())?;
        Ok(Box::new(self.rpc.clone().watch(req).await?))
    }

    /// Like the client libraries: with a resume token, a digest of the versions
    /// held; the versions themselves without one, or when the server asks for them.
    async fn follow(
        &self,
        tenant: usize,
        state: &mut Follow,
        mut initial: impl FnMut(usize) + Send,
    ) -> Followed {
        let digest = !state.with_versions && !state.resume_token.is_empty();
        let body = WatchRequest {
            resume_token: state.resume_token.clone(),
            known_versions: if digest {
                HashMap::new()
            } else {
                state.known.clone()
            },
            known_digest: if digest {
                configwatch_client::known_digest(state.known.iter().map(|(k, v)| (k.as_str(), *v)))
                    .to_vec()
            } else {
                Vec::new()
            },
            ..Default::default()
        };
        let Ok(req) = self.watch_request(tenant, body) else {
            return Followed::Ended;
        };
        let mut stream = match self.rpc.clone().watch(req).await {
            Err(status) if asks_for_versions(&status) => {
                state.with_versions = true;
                return Followed::Again;
            }
            Err(_) => return Followed::Ended,
            Ok(resp) => resp.into_inner(),
        };
        let mut first = true;
        while let Ok(Some(msg)) = stream.message().await {
            if first && msg.initial_mode == InitialMode::Full as i32 {
                state.known.clear();
            }
            first = false;
            for e in msg.changes {
                if e.deleted {
                    state.known.remove(&e.key);
                } else {
                    state.known.insert(e.key, e.version);
                }
            }
            if !msg.resume_token.is_empty() {
                state.resume_token = msg.resume_token;
            }
            if msg.initial_complete {
                state.with_versions = false;
                initial(msg.initial_mode as usize);
            }
        }
        Followed::Ended
    }
}

/// The server's answer to a `known_digest` that differs from its state.
fn asks_for_versions(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Aborted
        && status
            .metadata()
            .get(RESUME_METADATA)
            .is_some_and(|v| v.as_bytes() == RESUME_WITH_VERSIONS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_named_by_the_proto() {
        assert_eq!(
            Configwatch::describe_modes(&[0, 1, 2, 3]),
            "full=1 diff=2 resumed=3"
        );
    }
}
