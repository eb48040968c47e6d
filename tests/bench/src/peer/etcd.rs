//! etcd as a [`Peer`]: one member (`etcd` on the PATH, Debian's etcd-server) on
//! 127.0.0.1 with a temporary data directory, driven over its v3 gRPC API (the
//! subset in tests/bench/proto). A tenant's configuration is the key prefix
//! `/t{tenant}/config/`; reads are serializable; one watch stream may carry the
//! watches of many tenants.
//!
//! Knows etcd's API; nothing of configwatch or of the workloads.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Channel;

use super::{
    Binaries, Event, Followed, MODES, Peer, PeerClient, Server, StartOptions, Unread, Windows,
    connect,
};
use crate::process::{Launch, Process, free_ports, temp_dir};

mod api {
    #![allow(clippy::all)]
    tonic::include_proto!("etcdserverpb");
}

use api::kv_client::KvClient;
use api::watch_client::WatchClient;
use api::watch_request::RequestUnion;
use api::{PutRequest, RangeRequest, WatchCreateRequest, WatchRequest};

/// [`PeerClient::follow`]'s modes: no cache, a range read then a watch from there.
const MODE_RANGE_AND_WATCH: usize = 1;
/// A watch from the revision after the one the cache is current through.
const MODE_WATCH_FROM_REVISION: usize = 2;

pub struct Etcd {
    server: Server,
}

impl Peer for Etcd {
    type Client = Client;
    const NAME: &'static str = "etcd";
    const READS: Option<&'static str> = Some("serializable");
    const MULTIPLEXES: bool = true;

    /// etcd sends nothing on an idle watch unless asked (`progress_notify`): it is
    /// always quiet.
    async fn start(bins: &Binaries, _opts: StartOptions) -> Result<Self> {
        let dir = temp_dir("etcd")?;
        let [client, peer] = free_ports()?.map(|a| a.port());
        let mut args: Vec<OsString> = [
            "--name".to_string(),
            "bench".into(),
            "--listen-client-urls".into(),
            format!("http://127.0.0.1:{client}"),
            "--advertise-client-urls".into(),
            format!("http://127.0.0.1:{client}"),
            "--listen-peer-urls".into(),
            format!("http://127.0.0.1:{peer}"),
            "--initial-advertise-peer-urls".into(),
            format!("http://127.0.0.1:{peer}"),
            "--initial-cluster".into(),
            format!("bench=http://127.0.0.1:{peer}"),
            "--log-level".into(),
            "error".into(),
            "--data-dir".into(),
        ]
        .into_iter()
        .map(OsString::from)
        .collect();
        args.push(dir.join("data").into());
        let launch = Launch {
            program: bins.etcd.clone(),
            args,
            talks: false,
            missing_hint: "apt-get install etcd-server",
        };
        let mut etcd = Etcd {
            server: Server {
                process: Process::start(launch, dir)?,
                addr: SocketAddr::from(([127, 0, 0, 1], client)),
            },
        };
        etcd.ready().await?;
        Ok(etcd)
    }

    /// etcd is ready when it answers a range read.
    async fn ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(ch) = connect(self.server.addr, Windows::Large).await {
                let probe = RangeRequest {
                    key: b"probe".to_vec(),
                    ..Default::default()
                };
                if KvClient::new(ch).range(probe).await.is_ok() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("etcd did not answer on {}", self.server.addr);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn server(&self) -> &Server {
        &self.server
    }

    fn server_mut(&mut self) -> &mut Server {
        &mut self.server
    }

    fn client(&self, channel: Channel) -> Client {
        Client {
            kv: KvClient::new(channel.clone()),
            watch: WatchClient::new(channel),
        }
    }

    fn describe_modes(modes: &[usize; MODES]) -> String {
        format!(
            "range+watch={} watch-from-rev={}",
            modes[MODE_RANGE_AND_WATCH], modes[MODE_WATCH_FROM_REVISION]
        )
    }
}

/// One connection to etcd.
#[derive(Clone)]
pub struct Client {
    kv: KvClient<Channel>,
    watch: WatchClient<Channel>,
}

/// The revision a watcher's cache is current through (0: no cache).
#[derive(Default)]
pub struct Follow {
    revision: i64,
}

fn prefix(tenant: usize) -> Vec<u8> {
    format!("/t{tenant}/config/").into_bytes()
}

fn key(tenant: usize, name: &str) -> Vec<u8> {
    let mut key = prefix(tenant);
    key.extend_from_slice(name.as_bytes());
    key
}

/// The end of a prefix's range: the prefix with its last byte incremented.
fn range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

/// A request creating a watch of `tenant`'s prefix from `start_revision` (0: now).
fn create(tenant: usize, start_revision: i64) -> WatchRequest {
    let prefix = prefix(tenant);
    WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            range_end: range_end(&prefix),
            key: prefix,
            start_revision,
            ..Default::default()
        })),
    }
}

impl Client {
    /// Opens a watch stream with `creates` sent; the sender keeps the request
    /// stream open for as long as it is held.
    async fn open(
        &self,
        creates: impl IntoIterator<Item = WatchRequest>,
    ) -> Result<(
        tonic::Streaming<api::WatchResponse>,
        mpsc::UnboundedSender<WatchRequest>,
    )> {
        let (req_tx, req_rx) = mpsc::unbounded_channel();
        for c in creates {
            let _ = req_tx.send(c);
        }
        let requests = UnboundedReceiverStream::new(req_rx);
        let stream = self.watch.clone().watch(requests).await?.into_inner();
        Ok((stream, req_tx))
    }
}

impl PeerClient for Client {
    type Follow = Follow;

    async fn put(&self, tenant: usize, name: &str, value: String) -> Result<()> {
        let req = PutRequest {
            key: key(tenant, name),
            value: value.into_bytes(),
            ..Default::default()
        };
        self.kv.clone().put(req).await?;
        Ok(())
    }

    async fn get(&self, tenant: usize, name: &str) -> Result<bool> {
        let req = RangeRequest {
            key: key(tenant, name),
            serializable: true,
            ..Default::default()
        };
        let resp = self.kv.clone().range(req).await?;
        Ok(!resp.get_ref().kvs.is_empty())
    }

    async fn load(&self, _tenant: usize) -> Result<()> {
        Ok(())
    }

    async fn watch(&self, tenants: &[usize], mut on: impl FnMut(Event<'_>) + Send) -> Result<()> {
        let (mut stream, _requests) = self.open(tenants.iter().map(|t| create(*t, 0))).await?;
        while let Ok(Some(msg)) = stream.message().await {
            if msg.created {
                on(Event::Ready);
            }
            if msg.events.is_empty() {
                continue;
            }
            on(Event::Values(&mut msg.events.iter().filter_map(|ev| {
                ev.kv.as_ref().map(|kv| kv.value.as_slice())
            })));
        }
        Ok(())
    }

    async fn watch_unread(&self, tenant: usize) -> Result<Unread> {
        Ok(Box::new(self.open([create(tenant, 0)]).await?))
    }

    /// As an etcd client keeps a cache: without one, a range read of the prefix and
    /// a watch from its revision; with one, a watch from the next revision.
    async fn follow(
        &self,
        tenant: usize,
        state: &mut Follow,
        mut initial: impl FnMut(usize) + Send,
    ) -> Followed {
        let mut mode = MODE_WATCH_FROM_REVISION;
        if state.revision == 0 {
            mode = MODE_RANGE_AND_WATCH;
            let prefix = prefix(tenant);
            let req = RangeRequest {
                range_end: range_end(&prefix),
                key: prefix,
                ..Default::default()
            };
            match self.kv.clone().range(req).await {
                Ok(r) => state.revision = r.get_ref().header.as_ref().map_or(0, |h| h.revision),
                Err(_) => return Followed::Ended,
            }
        }
        let Ok((mut stream, _requests)) = self.open([create(tenant, state.revision + 1)]).await
        else {
            return Followed::Ended;
        };
        while let Ok(Some(msg)) = stream.message().await {
            for ev in &msg.events {
                if let Some(kv) = &ev.kv {
                    state.revision = state.revision.max(kv.mod_revision);
                }
            }
            if msg.created {
                initial(mode);
            }
        }
        Followed::Ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_range_ends_after_its_last_key() {
        assert_eq!(prefix(7), b"/t7/config/");
        assert_eq!(range_end(&prefix(7)), b"/t7/config0");
        assert_eq!(key(7, "flag"), b"/t7/config/flag");
    }
}
