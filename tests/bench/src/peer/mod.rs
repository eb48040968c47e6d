//! The one abstraction every workload is written against: a [`Peer`] is a system
//! under test (its server process, started, stopped and measured) and a
//! [`PeerClient`] one connection to it (put, get, watch, follow with resume). Each
//! system maps the workloads' words to its own: a tenant's configuration is
//! `tenant_config_*` under the tenant's token in configwatch and the key prefix
//! `/t{tenant}/config/` in etcd.
//!
//! This module knows no system; `configwatch.rs` and `etcd.rs` know one each and
//! nothing of the workloads.

pub mod configwatch;
pub mod configwatch_relay;
pub mod etcd;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Result, bail};
use tonic::transport::{Channel, Endpoint};

use crate::process::Process;

/// The server binaries, as the command line names them, and how configwatch runs.
pub struct Binaries {
    pub configwatch: PathBuf,
    pub etcd: PathBuf,
    /// configwatch serves with its admin listener on (and so keeps its metrics);
    /// off by default, where the server keeps none.
    pub configwatch_metrics: bool,
}

/// A started server: its process and the address its clients use.
pub struct Server {
    pub process: Process,
    pub addr: SocketAddr,
}

/// How a workload wants the server started.
#[derive(Clone, Copy, Default)]
pub struct StartOptions {
    /// Tenants the workload uses, numbered from 0.
    pub tenants: usize,
    /// No periodic messages on idle watch streams (configwatch's progress), so the
    /// bytes on the wire are the workload's own.
    pub quiet: bool,
}

/// A system under test: its server process and how to reach it.
pub trait Peer: Sized + 'static {
    type Client: PeerClient;
    /// The system's name in tables and summary lines.
    const NAME: &'static str;
    /// Whether one watch stream can carry the watches of many tenants (etcd can).
    const MULTIPLEXES: bool;
    /// How reads are served, where the tables say it (etcd: "serializable").
    const READS: Option<&'static str>;

    /// Starts the server on 127.0.0.1 with a temporary data directory; returns when
    /// it answers.
    fn start(bins: &Binaries, opts: StartOptions) -> impl Future<Output = Result<Self>>;
    /// Waits until the (re)started server answers on [`Self::addr`].
    fn ready(&mut self) -> impl Future<Output = Result<()>>;
    fn server(&self) -> &Server;
    fn server_mut(&mut self) -> &mut Server;
    /// A client over `channel` (to the server, or to a relay in front of it).
    fn client(&self, channel: Channel) -> Self::Client;
    /// Names the counts of [`PeerClient::follow`]'s initial modes.
    fn describe_modes(modes: &[usize; MODES]) -> String;

    fn addr(&self) -> SocketAddr {
        self.server().addr
    }

    fn process(&self) -> &Process {
        &self.server().process
    }

    /// Stops the server with SIGTERM and starts it again on the same data directory
    /// and port; returns when it answers.
    fn restart(&mut self) -> impl Future<Output = Result<()>> {
        async {
            let process = &mut self.server_mut().process;
            process.terminate().await?;
            process.start_again()?;
            self.ready().await
        }
    }

    /// `n` clients, each on a connection of its own.
    fn clients(
        &self,
        addr: SocketAddr,
        n: usize,
        windows: Windows,
    ) -> impl Future<Output = Result<Vec<Self::Client>>> {
        async move {
            let mut out = Vec::with_capacity(n);
            for _ in 0..n {
                out.push(self.client(connect(addr, windows).await?));
            }
            Ok(out)
        }
    }
}

/// How many initial modes [`PeerClient::follow`] reports (configwatch's proto enum).
pub const MODES: usize = 4;

/// What a watch stream delivers to its reader.
pub enum Event<'a> {
    /// One watch of the stream is in place: configwatch's initial state is
    /// complete, etcd's watch is created.
    Ready,
    /// The values of the changes one message carries, in order.
    Values(&'a mut dyn Iterator<Item = &'a [u8]>),
}

/// How one [`PeerClient::follow`] attempt ended.
pub enum Followed {
    /// The server asked for another attempt at once (configwatch: the digest sent
    /// differs, send the versions).
    Again,
    /// The stream ended or could not start: wait the backoff, then try again.
    Ended,
}

/// One connection to a peer, cloned into the tasks that use it.
pub trait PeerClient: Clone + Send + Sync + 'static {
    /// What a watcher keeps between attempts to resume: its cache's versions and
    /// where it is (configwatch: the resume token; etcd: the revision).
    type Follow: Default + Send + 'static;

    /// Writes `value` to the key `name` of `tenant`'s configuration.
    fn put(
        &self,
        tenant: usize,
        name: &str,
        value: String,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Reads the key `name` of `tenant`'s configuration: whether it was found.
    fn get(&self, tenant: usize, name: &str) -> impl Future<Output = Result<bool>> + Send;

    /// Makes the server hold `tenant`'s state (configwatch loads a tenant on its
    /// first call; etcd holds everything already).
    fn load(&self, tenant: usize) -> impl Future<Output = Result<()>> + Send;

    /// One watch stream over the configuration of each of `tenants` (one tenant
    /// unless the peer [`Peer::MULTIPLEXES`]), read until it ends; `on` sees what it
    /// delivers.
    fn watch(
        &self,
        tenants: &[usize],
        on: impl FnMut(Event<'_>) + Send,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Opens a watch of `tenant`'s configuration and returns it unread: whoever holds
    /// it keeps the stream open.
    fn watch_unread(&self, tenant: usize) -> impl Future<Output = Result<Unread>> + Send;

    /// One attempt to watch `tenant`'s configuration as a client library resumes,
    /// from what `state` holds and keeping it current; `initial(mode)` is called
    /// when the initial state is complete, with how it came (see
    /// [`Peer::describe_modes`]).
    fn follow(
        &self,
        tenant: usize,
        state: &mut Self::Follow,
        initial: impl FnMut(usize) + Send,
    ) -> impl Future<Output = Followed> + Send;
}

/// An open watch stream nobody reads.
pub type Unread = Box<dyn Send>;

/// The HTTP/2 flow-control windows of a connection.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Windows {
    /// tonic's defaults (2 MiB): a reader is never held back.
    Large,
    /// The protocol's default of 64 KiB per stream and per connection, so a
    /// stream nobody reads fills after a few changes.
    Small,
}

pub async fn connect(addr: SocketAddr, windows: Windows) -> Result<Channel> {
    let mut endpoint = Endpoint::from_shared(format!("http://{addr}"))?.tcp_nodelay(true);
    if windows == Windows::Small {
        endpoint = endpoint
            .initial_stream_window_size(Some(65_535))
            .initial_connection_window_size(Some(65_535));
    }
    Ok(endpoint.connect().await?)
}

/// Fails unless a non-multiplexing peer was given exactly one tenant.
fn one_tenant(tenants: &[usize]) -> Result<usize> {
    match tenants {
        [t] => Ok(*t),
        _ => bail!("one watch stream carries one tenant here"),
    }
}
