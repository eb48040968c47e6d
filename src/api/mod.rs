//! The gRPC API: converts protobuf to domain calls and back, and validates requests.
//!
//! Every handler starts from the [`Identity`](crate::auth::Identity) the auth layer
//! attached to the request (`rights` turns it into the call's scope and a write's
//! audit); a tenant named in a request is only compared with it. Domain errors
//! become statuses in [`status`]. `history` is the History call.

pub mod budget;
pub mod codec;
mod commit;
mod conn;
pub mod fair;
pub mod forward;
pub mod frame;
mod history;
pub mod page;
mod rights;
pub mod status;
#[cfg(test)]
mod tests;
mod watch;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::clock::Clock;
use crate::hub::{Hub, Known, PageRequest, ResumeToken, StateDigest};
use crate::keys::{self, PrefixSet};
use crate::model::Entry;
use crate::proto;
use crate::proto::config_service_server::ConfigService;
use crate::store::{Router, Write};

pub use conn::ConnInfo;
pub use forward::{Bearer, Forward};
pub use history::DEFAULT_HISTORY_PAGE;
use rights::{audit_of, caller, require_writer};
pub use watch::{EndLine, WatchCalls, WatchEnds, WatchStream};

/// Prefixes in one Get or Watch, unless configured.
pub const DEFAULT_MAX_PREFIXES: usize = 64;
/// Entries in a Get page when the request sets no `limit`, unless configured.
pub const DEFAULT_PAGE_ENTRIES: usize = 1_000;
/// Most entries in a Get page, unless configured.
pub const DEFAULT_MAX_PAGE_ENTRIES: usize = 10_000;
/// About the most key and value bytes in a Get page, unless configured.
pub const DEFAULT_PAGE_BYTES: usize = 1 << 20;
/// Watch initial states computed at once, unless configured.
pub const DEFAULT_INITIAL_STATE_SLOTS: usize = 4;
/// Bytes of Get replies not yet handed to clients, server-wide, unless configured.
pub const DEFAULT_REPLY_BYTES: usize = 256 << 20;
/// Time a call has to be answered, and a client to read a Get reply, unless
/// configured.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Mean idle time before a Watch gets a progress message, unless configured.
pub const DEFAULT_PROGRESS_INTERVAL: Duration = Duration::from_secs(5);

/// Request limits. Each refusal names the limit.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Prefixes in one Get or Watch.
    pub max_prefixes: usize,
    /// Keys in one Get.
    pub max_keys: usize,
    /// Entries in one Watch's `known_versions`.
    pub max_known_versions: usize,
    /// Entries in a Get page when the request sets no `limit`.
    pub page_entries: usize,
    /// Most entries in a Get page, whatever the request's `limit`.
    pub max_page_entries: usize,
    /// About the most key and value bytes in a Get page (one larger entry still goes).
    pub page_bytes: usize,
    /// Watch initial states (full or diff) computed at once; the rest wait, and one
    /// tenant holds at most half of these.
    pub initial_state_slots: usize,
    /// Bytes of Get replies not yet handed to clients, server-wide.
    pub reply_bytes: usize,
    /// Time a client has to read a Get reply before it is dropped.
    pub reply_drain: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_prefixes: DEFAULT_MAX_PREFIXES,
            max_keys: 1_000,
            max_known_versions: 100_000,
            page_entries: DEFAULT_PAGE_ENTRIES,
            max_page_entries: DEFAULT_MAX_PAGE_ENTRIES,
            page_bytes: DEFAULT_PAGE_BYTES,
            initial_state_slots: DEFAULT_INITIAL_STATE_SLOTS,
            reply_bytes: DEFAULT_REPLY_BYTES,
            reply_drain: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// How Watch streams behave.
#[derive(Debug, Clone)]
pub struct WatchSettings {
    /// Mean idle time before a progress message (each stream jitters it by ±25%).
    pub progress_interval: Duration,
    /// Most entries in one message.
    pub max_batch_entries: usize,
    /// About the most value bytes in one message (a single larger entry still goes).
    pub max_batch_bytes: usize,
    /// Wall time, against which a stream's token expiry is read.
    pub clock: Clock,
    /// Where ended streams are counted by reason (clones share the counts).
    pub ends: Arc<WatchEnds>,
}

impl Default for WatchSettings {
    fn default() -> Self {
        WatchSettings {
            progress_interval: DEFAULT_PROGRESS_INTERVAL,
            max_batch_entries: 1_000,
            max_batch_bytes: 1 << 20,
            clock: Clock::system(),
            ends: Arc::default(),
        }
    }
}

/// Server shutdown, as every Watch stream sees it: a flag checked before each
/// message, and a token whose future wakes the streams that are idle.
///
/// The flag exists because the token's `is_cancelled` takes a mutex that all
/// streams share (3.8% of the server's samples at 10k watchers); the flag is one
/// atomic load. No wake-up is lost: [`Shutdown::begin`] sets the flag before it
/// cancels the token, an idle stream has registered with the token's future, and
/// the stream looks at the flag (or the future) each time it is polled.
#[derive(Clone, Default)]
pub struct Shutdown {
    begun: Arc<AtomicBool>,
    token: CancellationToken,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts shutdown: every Watch ends with UNAVAILABLE.
    pub fn begin(&self) {
        self.begun.store(true, Ordering::Release);
        self.token.cancel();
    }

    /// Whether shutdown has begun: one atomic load, no lock.
    pub fn has_begun(&self) -> bool {
        self.begun.load(Ordering::Acquire)
    }

    /// The token, cancelled when shutdown begins, for futures that wait for it.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }
}

/// The `configwatch.v1.ConfigService` implementation.
pub struct ConfigApi {
    hub: Arc<Hub>,
    router: Arc<Router>,
    limits: Limits,
    watch: WatchSettings,
    shutdown: Shutdown,
    pages: page::PageTokens,
    initial_states: fair::FairPool,
    replies: budget::ReplyBudget,
    /// A relay's upstream, which writes and secret reads go to with the caller's
    /// token; `None` on an origin, which writes through `router`.
    forward: Option<Arc<dyn Forward>>,
    /// The name recorded with each write this instance accepts.
    instance: Arc<str>,
    /// The runtime serving the calls: a Watch (started on threads of its own, see
    /// `server`) loads a tenant's view here, so the sources' connections live here.
    main: tokio::runtime::Handle,
}

impl ConfigApi {
    /// Must be called on the runtime that serves the calls.
    pub fn new(
        hub: Arc<Hub>,
        router: Arc<Router>,
        limits: Limits,
        watch: WatchSettings,
        shutdown: Shutdown,
    ) -> Self {
        let initial_states = fair::FairPool::new(limits.initial_state_slots);
        let replies = budget::ReplyBudget::new(limits.reply_bytes, limits.reply_drain);
        ConfigApi {
            hub,
            router,
            limits,
            watch,
            shutdown,
            pages: page::PageTokens::new(),
            initial_states,
            replies,
            forward: None,
            instance: Arc::from("configwatch"),
            main: tokio::runtime::Handle::current(),
        }
    }

    /// A relay's API: writes and secret reads go to `forward` with the caller's
    /// token, and keys are checked here only for their form (the upstream routes
    /// them).
    pub fn forwarding(mut self, forward: Option<Arc<dyn Forward>>) -> Self {
        self.forward = forward;
        self
    }

    /// Names this instance in the history of the writes it accepts.
    pub fn instance(mut self, name: Arc<str>) -> Self {
        self.instance = name;
        self
    }

    /// Checks a key's form, and on an origin that a backend holds its family.
    fn family(&self, key: &str) -> Result<&'static keys::KeyFamily, Status> {
        match &self.forward {
            Some(_) => Ok(keys::validate_key(key)?),
            None => Ok(self.router.route(key)?.0),
        }
    }
}

/// Validates a Get's or Watch's prefixes against the limits.
pub fn check_prefixes(prefixes: &[String], limits: &Limits) -> Result<(), Status> {
    if prefixes.len() > limits.max_prefixes {
        return Err(Status::invalid_argument(format!(
            "{} prefixes given; the limit is {}",
            prefixes.len(),
            limits.max_prefixes
        )));
    }
    for p in prefixes {
        keys::validate_prefix(p)?;
    }
    Ok(())
}

/// Bytes an entry adds to a Get reply beyond its key and value (version, time,
/// revision, flags and field tags), rounded up.
const ENTRY_OVERHEAD: usize = 64;
/// Bytes of a Get reply beyond its entries (revision, tokens, store id).
pub(super) const REPLY_OVERHEAD: usize = 512;

pub(crate) fn to_proto(e: &Entry) -> proto::Entry {
    proto::Entry {
        key: e.key.to_string(),
        version: e.version,
        value: e.value.as_deref().unwrap_or("").to_owned(),
        updated_at: Some(frame::timestamp(e.updated_at)),
        secret: e.secret,
        deleted: e.deleted,
        revision: e.revision,
    }
}

#[tonic::async_trait]
impl ConfigService for ConfigApi {
    async fn get(
        &self,
        request: Request<proto::GetRequest>,
    ) -> Result<Response<proto::GetResponse>, Status> {
        let (id, scope) = caller(
            &request,
            &request.get_ref().tenant,
            &request.get_ref().service,
        )?;
        // A relay reads secrets' values with its own clients' tokens, never with
        // its own: its credential, on every relay machine, must not open every
        // tenant's secrets.
        let secret_values = id.role != crate::auth::Role::Relay;
        let bearer = self
            .forward
            .as_ref()
            .map(|_| Bearer::of(request.metadata()))
            .transpose()?;
        let connection = request
            .extensions()
            .get::<ConnInfo>()
            .map(|c| c.replies.clone());
        let req = request.into_inner();
        if req.keys.len() > self.limits.max_keys {
            return Err(Status::invalid_argument(format!(
                "{} keys given; the limit is {}",
                req.keys.len(),
                self.limits.max_keys
            )));
        }
        for key in &req.keys {
            self.family(key)?;
        }
        check_prefixes(&req.prefixes, &self.limits)?;
        let request_hash = page::request_hash(&scope, &req.keys, &req.prefixes);
        let cont = if req.page_token.is_empty() {
            None
        } else {
            Some(self.pages.decode(&req.page_token, request_hash)?)
        };
        let max_entries = match req.limit {
            0 => self.limits.page_entries,
            n => (n as usize).min(self.limits.max_page_entries),
        };
        // The page is chosen first: shared entries of the view, so it holds
        // pointers, not copies. Its reply is built only once its bytes are
        // reserved, so a call waiting for its turn holds no reply yet, and a
        // one-key Get reserves what one key needs, not a whole page.
        let page = self
            .hub
            .snapshot_page(
                &scope,
                PageRequest {
                    keys: &req.keys,
                    prefixes: &req.prefixes,
                    after: cont.as_ref().map(|c| c.after.as_str()),
                    at: cont.as_ref().map(|c| c.revision),
                    max_entries,
                    max_bytes: self.limits.page_bytes,
                },
            )
            .await?;
        let estimate: usize = page
            .entries
            .iter()
            .map(|e| {
                let value = if e.secret {
                    keys::PARAM_CONFIG.max_value_bytes
                } else {
                    e.value.as_deref().map_or(0, str::len)
                };
                e.key.len() + value + ENTRY_OVERHEAD
            })
            .sum::<usize>()
            + req.keys.iter().map(|k| k.len() + 8).sum::<usize>()
            + REPLY_OVERHEAD;
        let hold = self.replies.reserve(estimate, connection.as_ref()).await?;
        let mut entries = Vec::with_capacity(page.entries.len());
        for e in &page.entries {
            if !e.secret || !secret_values {
                entries.push(to_proto(e));
                continue;
            }
            // Secrets are never cached: read on demand, for this scope only (on a
            // relay, upstream as the caller).
            let read = match (&self.forward, &bearer) {
                (Some(upstream), Some(bearer)) => upstream.read(bearer, &scope, &e.key).await?,
                _ => {
                    let (_, backend) = self.router.route(&e.key)?;
                    backend.read(&scope, &e.key, true).await?
                }
            };
            match read {
                Some(mut read) if !read.deleted => {
                    read.revision = e.revision;
                    entries.push(to_proto(&read));
                }
                _ => {}
            }
        }
        // Requested keys this page covers (after the previous page's end, up to
        // its own) that it does not hold.
        let found: BTreeSet<&str> = entries.iter().map(|e| e.key.as_str()).collect();
        let after = cont.as_ref().map(|c| c.after.as_str());
        let upto = page.cursor.as_deref();
        let missing_keys = req
            .keys
            .iter()
            .filter(|k| {
                after.is_none_or(|a| k.as_str() > a)
                    && upto.is_none_or(|u| k.as_str() <= u)
                    && !found.contains(k.as_str())
            })
            .cloned()
            .collect();
        let next_page_token = page
            .cursor
            .as_deref()
            .map(|c| self.pages.encode(request_hash, page.revision, c))
            .unwrap_or_default();
        let reply = proto::GetResponse {
            entries,
            missing_keys,
            revision: page.revision,
            resume_token: page.resume_token,
            next_page_token,
            store_id: self.hub.store_id().to_string(),
            disconnected_since: self.hub.disconnected_since(&scope).map(frame::timestamp),
        };
        // Held until the client has taken the reply (see `budget`).
        hold.shrink_to(prost::Message::encoded_len(&reply));
        let mut response = Response::new(reply);
        response.extensions_mut().insert(hold);
        Ok(response)
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<proto::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let (id, scope) = caller(
            &request,
            &request.get_ref().tenant,
            &request.get_ref().service,
        )?;
        // Its messages count against the connection's budget of unread replies.
        let conn = request.extensions().get::<ConnInfo>();
        let budget =
            conn.map(|c| budget::StreamBudget::new(&c.replies, self.watch.max_batch_bytes));
        let connection_ends_at = conn.and_then(|c| c.ends_at);
        let req = request.into_inner();
        check_prefixes(&req.prefixes, &self.limits)?;
        if req.known_versions.len() > self.limits.max_known_versions {
            return Err(Status::invalid_argument(format!(
                "known_versions has {} entries; the limit is {}",
                req.known_versions.len(),
                self.limits.max_known_versions
            )));
        }
        let resume = if req.resume_token.is_empty() {
            None
        } else {
            ResumeToken::decode(&req.resume_token)?
        };
        // A first load reads the sources (DynamoDB, Parameter Store, or a
        // relay's upstream, which names the store): on the main
        // runtime, so the connections it opens are driven there, not on the
        // threads that decode large Watch requests.
        let load = self.main.spawn({
            let (hub, scope) = (self.hub.clone(), scope.clone());
            async move { hub.view(&scope).await.map(|_| ()) }
        });
        load.await
            .map_err(|_| Status::internal("loading the tenant failed; retry"))??;
        // What the caller holds comes from another store: its versions and token
        // mean nothing here, so it gets the full state (and the new identity).
        // (A server that knows no identity of its own compares nothing.)
        let own = self.hub.store_id();
        let other_store =
            !req.known_store_id.is_empty() && !own.is_empty() && *req.known_store_id != *own;
        let resume = resume.filter(|_| !other_store);
        let known = if other_store {
            Known::Nothing
        } else if !req.known_versions.is_empty() {
            Known::Versions(req.known_versions)
        } else if req.known_digest.is_empty() {
            Known::Nothing
        } else {
            Known::Digest(StateDigest::from_bytes(&req.known_digest).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "known_digest is {} bytes; it must be {} (the digest of the versions you hold, see the API docs), or empty",
                    req.known_digest.len(),
                    StateDigest::LEN
                ))
            })?)
        };
        let sent = match &known {
            _ if other_store => "another store's state",
            Known::Nothing => "nothing",
            Known::Versions(_) => "versions",
            Known::Digest(_) => "digest",
        };
        // The initial state's cost grows with the tenant and with known_versions:
        // computed a few at a time, fairly between tenants.
        let slot = self
            .initial_states
            .acquire(scope.tenant_id())
            .await
            .ok_or_else(|| Status::unavailable("the server is shutting down"))?;
        let prefixes = req.prefixes.len();
        let sub = self
            .hub
            .subscribe(&scope, PrefixSet::new(req.prefixes), resume, &known)
            .await?;
        drop(slot);
        // From here the stream runs: its end is logged and counted (a refusal
        // above is an error reply, counted with every call's).
        let waiting = budget.as_ref().map(budget::StreamBudget::waiting);
        let log =
            EndLine::new(scope.clone(), prefixes, waiting).counted_in(self.watch.ends.clone());
        tracing::debug!(%scope, subject = %id.subject, mode = ?sub.mode, known = sent, "watch started");
        let mut response = Response::new(WatchStream::new(
            sub,
            &self.watch,
            id.expires_at,
            connection_ends_at,
            &self.shutdown,
            log,
        ));
        if let Some(budget) = budget {
            response.extensions_mut().insert(budget);
        }
        Ok(response)
    }

    async fn put(
        &self,
        request: Request<proto::PutRequest>,
    ) -> Result<Response<proto::PutResponse>, Status> {
        let (id, scope) = caller(&request, &request.get_ref().tenant, "")?;
        require_writer(&id)?;
        let family = self.family(&request.get_ref().key)?;
        let value = {
            let req = request.get_ref();
            keys::validate_value(family, &req.key, &req.value, req.secret)?
        };
        // The view is loaded before the write, so the answer carries the revision at
        // which the write was applied (a first Put to a tenant nobody has read yet).
        // Held until the write is applied: the view is not dropped as idle meanwhile.
        let view = self.hub.view(&scope).await?;
        let entry = match &self.forward {
            Some(upstream) => {
                let bearer = Bearer::of(request.metadata())?;
                let entry = upstream.put(&bearer, request.into_inner()).await?;
                commit::apply(&self.hub, &scope, entry)
            }
            None => {
                let req = request.into_inner();
                let audit = audit_of(&id, &self.instance, &req.reason)?;
                let write = Write::Put {
                    value,
                    secret: req.secret,
                };
                self.commit(view, scope, req.key, write, req.expected_version, audit)
                    .await?
            }
        };
        Ok(Response::new(proto::PutResponse {
            entry: Some(to_proto(&entry)),
        }))
    }

    async fn delete(
        &self,
        request: Request<proto::DeleteRequest>,
    ) -> Result<Response<proto::DeleteResponse>, Status> {
        let (id, scope) = caller(&request, &request.get_ref().tenant, "")?;
        require_writer(&id)?;
        self.family(&request.get_ref().key)?;
        let view = self.hub.view(&scope).await?;
        let entry = match &self.forward {
            Some(upstream) => {
                let bearer = Bearer::of(request.metadata())?;
                let entry = upstream.delete(&bearer, request.into_inner()).await?;
                commit::apply(&self.hub, &scope, entry)
            }
            None => {
                let req = request.into_inner();
                let audit = audit_of(&id, &self.instance, &req.reason)?;
                self.commit(
                    view,
                    scope,
                    req.key,
                    Write::Delete,
                    req.expected_version,
                    audit,
                )
                .await?
            }
        };
        Ok(Response::new(proto::DeleteResponse {
            entry: Some(to_proto(&entry)),
        }))
    }

    async fn history(
        &self,
        request: Request<proto::HistoryRequest>,
    ) -> Result<Response<proto::HistoryResponse>, Status> {
        self.history_call(request).await
    }
}
