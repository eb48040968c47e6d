//! Reads made on demand, outside the watch ([`Client::read_secret`](super::Client::read_secret),
//! [`Client::history`](super::Client::history)): each starts on the server the watch
//! uses and moves on through the client's list while a server's connection fails the
//! call, without moving the watch; a refused token gets one fresh one.
//!
//! Boundary: the calls' failover and their errors; what is read is the caller's.

use std::fmt::Write as _;
use std::future::Future;

use tonic::transport::Channel;

use super::connection::rpc_on;
use super::shared::Shared;
use crate::error::Error;
use crate::proto::config_service_client::ConfigServiceClient;

/// Calls a read makes at most, over the servers of the list in turn: a read is safe
/// to repeat, and with one server a connection closing under the call (a GOAWAY at
/// the server's maximum connection age) is over by the next try.
const READ_ATTEMPTS: usize = 4;

/// The servers a read asked, and how each failed it.
#[derive(Default)]
pub(super) struct Tried(Vec<(String, Error)>);

impl Tried {
    /// ` (tried: URL: error; ...)`, or nothing before the first answer.
    pub(super) fn describe(&self) -> String {
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
    /// A read on the server in use, then on the next ones while a server's
    /// connection fails the call (each failure recorded in `tried`); a refused token
    /// gets one fresh one. `call` makes the call on a server's client with a request
    /// that carries the token and the call timeout (its message left to fill).
    pub(super) async fn read_anywhere<T, F, Fut>(
        &self,
        tried: &mut Tried,
        call: F,
    ) -> Result<T, Error>
    where
        F: Fn(ConfigServiceClient<Channel>, tonic::Request<()>) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let start = self.current_index();
        let count = self.servers.len().max(1);
        for attempt in 0..READ_ATTEMPTS.max(count) {
            let index = (start + attempt) % count;
            let (server, channel) = self.channel_to(index)?;
            let once = || async {
                let mut request = tonic::Request::new(());
                request.set_timeout(self.opts.call_timeout);
                request
                    .metadata_mut()
                    .insert("authorization", self.auth_header().await?);
                call(rpc_on(channel.clone()), request).await
            };
            let result = match once().await {
                Err(e) if e.code() == Some(tonic::Code::Unauthenticated) => once().await,
                other => other,
            };
            match result {
                Err(e) if connection_closed(&e) => tried.0.push((server, e)),
                other => return other,
            }
        }
        Err(std::mem::take(tried).into_error())
    }
}
