//! [`ClientBuilder`]: a client's settings with their defaults, their validation, and
//! the start: the snapshot loaded, the shared state built, the watch task spawned.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::connection::channel;
use super::shared::{Current, Data, Options, Shared, SnapshotConfig};
#[cfg(doc)]
use super::status::Status;
use super::status::{Live, SnapshotStatus, Source};
use super::{Client, HandleGuard};
use crate::backoff::Backoff;
use crate::changes::Queues;
use crate::error::Error;
use crate::guard::{MassRemoval, Policy};
use crate::servers::split_list;
use crate::snapshot::{self, SnapshotRead};
use crate::token::TokenSource;

/// Settings of a [`Client`]; see the methods for what each does.
pub struct ClientBuilder {
    servers: Vec<String>,
    random_start: bool,
    tenant: String,
    tokens: Arc<dyn TokenSource>,
    prefixes: Vec<String>,
    snapshot_path: Option<PathBuf>,
    snapshot_debounce: Duration,
    backoff: Backoff,
    stale_after: Duration,
    idle_timeout: Duration,
    call_timeout: Duration,
    ready_timeout: Duration,
    mass_removal: Policy,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("servers", &self.servers)
            .field("tenant", &self.tenant)
            .field("prefixes", &self.prefixes)
            .field("snapshot_path", &self.snapshot_path)
            .field("backoff", &self.backoff)
            .field("mass_removal", &self.mass_removal)
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// A client of `server` (`http://host:port`, `https://host:port`, or
    /// `host:port`) for `tenant`, with tokens from `tokens`. `server` may also list
    /// several servers separated by commas (`http://a:50051,http://b:50051`), as
    /// [`servers`](Self::servers) does.
    ///
    /// The tenant is sent in every request, so the server refuses a token of any
    /// other tenant (`PermissionDenied`), and is recorded in the snapshot.
    pub fn new(
        server: impl Into<String>,
        tenant: impl Into<String>,
        tokens: impl TokenSource,
    ) -> Self {
        ClientBuilder {
            servers: split_list(&server.into()),
            random_start: true,
            tenant: tenant.into(),
            tokens: Arc::new(tokens),
            prefixes: Vec::new(),
            snapshot_path: None,
            snapshot_debounce: Duration::from_millis(500),
            backoff: Backoff::default(),
            stale_after: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(30),
            call_timeout: Duration::from_secs(10),
            ready_timeout: Duration::from_secs(30),
            mass_removal: Policy::Hold,
        }
    }

    /// The servers to use, replacing the one given to [`new`](Self::new): instances
    /// that serve the same configuration (two origins, relays, or both). The watch
    /// uses one at a time and moves to the next in the list (round-robin) when the
    /// one it uses fails it: unreachable, the connection or stream broken, the server
    /// shutting down or ending the stream at its maximum connection age, or an answer
    /// the client cannot use. It tries the next at once, and waits by the
    /// [`backoff`](Self::backoff) only after every server failed in a row. On the new
    /// server it resumes from what the cache holds (the server sends the difference,
    /// never the whole state again). A refused token or permission is not a server's
    /// failure: it is handled on the same server as with one URL.
    /// [`Client::server`] and [`Status::server`] say which one is in use.
    pub fn servers<I, S>(mut self, servers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.servers = servers
            .into_iter()
            .map(|s| s.into().trim().to_owned())
            .collect();
        self
    }

    /// Whether the first attempt goes to a server drawn at random from the list
    /// (`true`, the default: many clients given one list spread over its servers
    /// from the start, instead of all piling onto the first) or to the first one
    /// (`false`: the list is an order of preference, say the nearest server first).
    /// Either way, later moves go round-robin from there.
    pub fn random_start(mut self, random: bool) -> Self {
        self.random_start = random;
        self
    }

    /// Key prefixes to watch (e.g. `tenant_config_`, `param_config_db/`), replacing
    /// any given before. Default: the whole tenant.
    pub fn prefixes<I, S>(mut self, prefixes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.prefixes = prefixes.into_iter().map(Into::into).collect();
        self
    }

    /// Keeps an on-disk snapshot of the cache at `path`, and starts from it.
    pub fn snapshot_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.snapshot_path = Some(path.into());
        self
    }

    /// Coalesces snapshot writes over this window. Default 500 ms.
    pub fn snapshot_debounce(mut self, debounce: Duration) -> Self {
        self.snapshot_debounce = debounce;
        self
    }

    /// Reconnection backoff. Default: 250 ms doubling to 30 s, half of it random.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// [`Status::stale`] turns true when nothing arrived for this long while
    /// connected. Keep it above the server's progress interval (5 s). Default 15 s.
    pub fn stale_after(mut self, d: Duration) -> Self {
        self.stale_after = d;
        self
    }

    /// Reconnects when nothing (not even progress) arrived for this long: a half-open
    /// connection. Keep it well above the server's progress interval. Default 30 s.
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = d;
        self
    }

    /// Deadline of [`Client::read_secret`], token included. Default 10 s.
    pub fn call_timeout(mut self, d: Duration) -> Self {
        self.call_timeout = d;
        self
    }

    /// Whether an initial state that would remove every entry the cache holds is
    /// applied (`true`) or held back (`false`, the default). A server whose store lost
    /// its data, or was recreated, sends such a state to a client that resumes; held
    /// back, the cache keeps serving what it holds, [`Status::stale`] is true,
    /// [`Status::held_back`] and [`Status::last_error`] ([`Error::MassRemoval`]) say
    /// why with the counts, and the watch retries with backoff until the server sends
    /// a state that keeps at least one entry. Deltas are never held back.
    pub fn allow_mass_removal(mut self, allow: bool) -> Self {
        self.mass_removal = if allow { Policy::Apply } else { Policy::Hold };
        self
    }

    /// Asks `decide` each time the server sends an initial state that would remove
    /// every entry held (see [`allow_mass_removal`](Self::allow_mass_removal)): `true`
    /// applies it, `false` holds it back until the next attempt (with backoff), when
    /// `decide` is asked again. Runs on the watch task: return quickly. A `decide`
    /// that panics holds the state back.
    pub fn on_mass_removal(
        mut self,
        decide: impl Fn(&MassRemoval) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.mass_removal = Policy::Ask(Arc::new(decide));
        self
    }

    /// How long [`connect`](Self::connect) waits. Default 30 s.
    pub fn ready_timeout(mut self, d: Duration) -> Self {
        self.ready_timeout = d;
        self
    }

    /// Starts the client and waits until the cache is current from the server; or,
    /// when a snapshot was loaded and the server cannot be reached, returns at the
    /// first failed attempt with the snapshot's content ([`Status::source`] is
    /// [`Source::Snapshot`], [`Status::stale`] true) while the watch keeps trying.
    ///
    /// Fails with the error that stopped the watch (e.g. `PermissionDenied` for a
    /// token of another tenant, `InvalidArgument` for a bad prefix), or with
    /// [`Error::Timeout`] after `ready_timeout` (the last error in the message).
    pub async fn connect(self) -> Result<Client, Error> {
        let ready_timeout = self.ready_timeout;
        let servers = self.servers.join(", ");
        let client = self.start().await?;
        let waited = tokio::time::timeout(
            ready_timeout,
            client.shared.wait_for(|l| {
                if l.ever_synced || (l.source == Source::Snapshot && l.failed_attempts > 0) {
                    Some(Ok(()))
                } else {
                    l.stopped()
                }
            }),
        )
        .await;
        match waited {
            Ok(Ok(())) => Ok(client),
            Ok(Err(e)) => Err(e),
            Err(_) => {
                let last = client
                    .shared
                    .live()
                    .last_error
                    .as_ref()
                    .map_or_else(|| "no error".to_owned(), ToString::to_string);
                Err(Error::Timeout(format!(
                    "no initial state from {servers} within {ready_timeout:?} (last error: {last})"
                )))
            }
        }
    }

    /// Starts the client without waiting for the server: loads the snapshot (if
    /// configured and this tenant's) and starts the background watch. Must be called
    /// within a tokio runtime. Fails only on invalid settings.
    pub async fn start(self) -> Result<Client, Error> {
        let invalid = |m: String| Err(Error::InvalidConfig(m));
        if self.tenant.trim().is_empty() {
            return invalid("the tenant must not be empty".into());
        }
        if self.prefixes.iter().any(String::is_empty) {
            return invalid(
                "prefixes must not be empty strings (no prefix means the whole tenant)".into(),
            );
        }
        self.backoff.validate().map_err(Error::InvalidConfig)?;
        for (name, d) in [
            ("idle_timeout", self.idle_timeout),
            ("call_timeout", self.call_timeout),
        ] {
            if d.is_zero() {
                return invalid(format!("{name} must be above zero"));
            }
        }
        if self.servers.is_empty() {
            return invalid("no server URL given".into());
        }
        // Every URL is checked now, so that moving to one later cannot fail.
        let mut channels = self
            .servers
            .iter()
            .map(|url| channel(url))
            .collect::<Result<Vec<_>, _>>()?;
        let start = if self.random_start {
            rand::random_range(0..self.servers.len())
        } else {
            0
        };
        let channel = channels.swap_remove(start);
        let prefixes = snapshot::normalize_prefixes(&self.prefixes);

        let mut data = Data::default();
        let mut live = Live::connecting();
        let snapshot = match self.snapshot_path {
            None => None,
            Some(path) => {
                let mut status = SnapshotStatus {
                    path: path.clone(),
                    loaded: false,
                    saved_at: None,
                    ignored: None,
                    write_error: None,
                };
                let (tenant, want, file) = (self.tenant.clone(), prefixes.clone(), path.clone());
                let read =
                    tokio::task::spawn_blocking(move || snapshot::read(&file, &tenant, &want))
                        .await
                        .unwrap_or_else(|e| SnapshotRead::Ignored(format!("cannot read it: {e}")));
                match read {
                    SnapshotRead::Loaded(s) => {
                        data.cache.load(s.entries);
                        data.revision = s.revision;
                        data.resume_token = s.resume_token;
                        data.store_id = s.store_id;
                        live.source = Source::Snapshot;
                        status.loaded = true;
                        status.saved_at = Some(s.saved_at);
                    }
                    SnapshotRead::Absent => {}
                    SnapshotRead::Ignored(why) => {
                        tracing::warn!(path = %path.display(), "snapshot ignored: {why}");
                        status.ignored = Some(why);
                    }
                }
                live.snapshot = Some(status);
                Some(SnapshotConfig {
                    path,
                    debounce: self.snapshot_debounce,
                })
            }
        };

        let shutdown = CancellationToken::new();
        let shared = Arc::new(Shared {
            servers: self.servers,
            tenant: self.tenant,
            prefixes,
            tokens: self.tokens,
            current: Mutex::new(Current {
                index: start,
                channel,
            }),
            opts: Options {
                backoff: self.backoff,
                stale_after: self.stale_after,
                idle_timeout: self.idle_timeout,
                call_timeout: self.call_timeout,
                mass_removal: self.mass_removal,
            },
            data: RwLock::new(data),
            live: Mutex::new(live),
            generation: watch::Sender::new(0),
            status_changed: watch::Sender::new(()),
            queues: Queues::default(),
            snapshot,
            snapshot_seq: AtomicU64::new(0),
            snapshot_notify: Notify::new(),
            shutdown: shutdown.clone(),
            done: watch::Sender::new(false),
        });
        tokio::spawn(crate::watch::run(shared.clone()));
        Ok(Client {
            shared,
            _handle: Arc::new(HandleGuard(shutdown)),
        })
    }
}
