//! [`Client::read_secret`]: a value read from the server with `Get` on demand, for
//! secrets, which the cache never holds. Nothing read here is cached. It starts on
//! the server the watch uses and moves on through the client's list when one cannot
//! be reached, as the watch does, without moving the watch.

use std::fmt::Write as _;

use tonic::transport::Channel;

use super::connection::rpc_on;
use super::shared::Shared;
use super::{Client, Versioned};
use crate::cache::decode;
use crate::error::Error;
use crate::proto;
use crate::wire;

impl Client {
    /// Reads a value from the server with `Get`, on demand: for secrets, which the
    /// cache never holds. Never cached. `Ok(None)` when the key does not exist. The
    /// value must be a JSON string (as secrets are).
    ///
    /// It asks the server the watch uses. When that one cannot be reached or its
    /// connection fails the call (`UNAVAILABLE`, a connection closing, say after the
    /// server's GOAWAY), it asks the next server of the client's list, and so on,
    /// four calls at most (going round the list again when it is shorter, so with
    /// one server that is three more tries); when every one failed, the error names each server tried and why.
    /// A refused token gets one fresh one. The whole call is bounded by
    /// `call_timeout`.
    pub async fn read_secret(&self, key: &str) -> Result<Option<Versioned<String>>, Error> {
        if self.shared.shutdown.is_cancelled() {
            return Err(Error::Closed);
        }
        let timeout = self.shared.opts.call_timeout;
        let mut tried = Tried::default();
        let call = self.shared.get_anywhere(key, &mut tried);
        let response = match tokio::time::timeout(timeout, call).await {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(Error::Timeout(format!(
                    "reading {key} took over {timeout:?}{}",
                    tried.describe()
                )));
            }
        };
        let Some(e) = response.entries.into_iter().find(|e| e.key == key) else {
            return Ok(None);
        };
        let e = wire::entry(e);
        Ok(Some(Versioned {
            value: decode(key, &e.value)?,
            version: e.version,
            revision: e.revision,
            updated_at: e.updated_at,
        }))
    }
}

/// Calls a read makes at most, over the servers of the list in turn: a read is safe
/// to repeat, and with one server a connection closing under the call (a GOAWAY at
/// the server's maximum connection age) is over by the next try.
const READ_ATTEMPTS: usize = 4;

/// The servers a read asked, and how each failed it.
#[derive(Default)]
struct Tried(Vec<(String, Error)>);

impl Tried {
    /// ` (tried: URL: error; ...)`, or nothing before the first answer.
    fn describe(&self) -> String {
        let mut out = String::new();
        for (i, (server, error)) in self.0.iter().enumerate() {
            let sep = if i == 0 { " (tried: " } else { "; " };
            let _ = write!(out, "{sep}{server}: {error}");
        }
        if !out.is_empty() {
            out.push(')');
        }
        out
    }

    /// The error of a read every server failed: the last one's code, and each
    /// server's answer.
    fn into_error(self) -> Error {
        let code = self
            .0
            .last()
            .and_then(|(_, e)| e.code())
            .unwrap_or(tonic::Code::Unavailable);
        Error::Status {
            code,
            message: format!("no server could be read{}", self.describe()),
        }
    }
}

/// Whether a call failed because its connection went away rather than by the
/// server's answer: UNAVAILABLE, a call handed back unsent (CANCELLED), or the HTTP/2
/// connection closing under it (tonic reports the transport's error, such as a GOAWAY
/// that refused the stream, as INTERNAL or UNKNOWN with an "h2 protocol error").
fn connection_closed(e: &Error) -> bool {
    match e.code() {
        Some(tonic::Code::Unavailable | tonic::Code::Cancelled) => true,
        Some(tonic::Code::Internal | tonic::Code::Unknown) => {
            e.to_string().contains("h2 protocol error")
        }
        _ => false,
    }
}

impl Shared {
    /// `Get` of `key` on the server in use, then on the next ones while a server's
    /// connection fails the call; records each failure in `tried`.
    async fn get_anywhere(
        &self,
        key: &str,
        tried: &mut Tried,
    ) -> Result<proto::GetResponse, Error> {
        let start = self.current_index();
        let count = self.servers.len().max(1);
        for attempt in 0..READ_ATTEMPTS.max(count) {
            let index = (start + attempt) % count;
            let (server, channel) = self.channel_to(index)?;
            match self.get_refreshing(key, channel).await {
                Err(e) if connection_closed(&e) => tried.0.push((server, e)),
                other => return other,
            }
        }
        Err(std::mem::take(tried).into_error())
    }

    /// `Get` on `channel`; a refused token gets one fresh one.
    async fn get_refreshing(
        &self,
        key: &str,
        channel: Channel,
    ) -> Result<proto::GetResponse, Error> {
        match self.get_once(key, channel.clone()).await {
            Err(e) if e.code() == Some(tonic::Code::Unauthenticated) => {
                self.get_once(key, channel).await
            }
            other => other,
        }
    }

    async fn get_once(&self, key: &str, channel: Channel) -> Result<proto::GetResponse, Error> {
        let header = self.auth_header().await?;
        let mut request = tonic::Request::new(proto::GetRequest {
            keys: vec![key.to_owned()],
            prefixes: Vec::new(),
            tenant: self.tenant.clone(),
            ..Default::default()
        });
        request.set_timeout(self.opts.call_timeout);
        request.metadata_mut().insert("authorization", header);
        Ok(rpc_on(channel).get(request).await?.into_inner())
    }
}
