//! The connection to the server: a server URL made into a lazy tonic channel
//! (scheme, TLS, connect timeout, HTTP/2 keepalives), the gRPC client on it, which
//! server of the list is in use (moving to another, or renewing the connection after
//! a silent stream, makes a new channel), and the `authorization` header from the
//! token source. Knows nothing of the cache or the watch protocol, nor when to move
//! (`servers.rs` and the watch decide).

use std::fmt;
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use super::shared::{Current, Shared};
use crate::error::Error;
use crate::proto::config_service_client::ConfigServiceClient;

/// Largest message accepted from the server (the initial state comes in chunks).
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// TCP connect timeout of each attempt.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// A channel to `server` (`http://`, `https://` or a bare `host:port`); lazy: it
/// connects at the first call, so this does no I/O.
pub(super) fn channel(server: &str) -> Result<Channel, Error> {
    let server = server.trim();
    let url = if server.contains("://") {
        server.to_owned()
    } else {
        format!("http://{server}")
    };
    let bad = |e: &dyn fmt::Display| Error::InvalidConfig(format!("server URL {url:?}: {e}"));
    let mut endpoint = Endpoint::from_shared(url.clone()).map_err(|e| bad(&e))?;
    if url.starts_with("https://") {
        #[cfg(feature = "tls")]
        {
            endpoint = endpoint
                .tls_config(tonic::transport::ClientTlsConfig::new().with_native_roots())
                .map_err(|e| bad(&e))?;
        }
        #[cfg(not(feature = "tls"))]
        {
            return Err(bad(&"https needs the crate's `tls` feature"));
        }
    } else if !url.starts_with("http://") {
        return Err(bad(&"the scheme must be http or https"));
    }
    endpoint = endpoint
        .connect_timeout(DIAL_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    Ok(endpoint.connect_lazy())
}

/// The gRPC client on `channel`.
pub(super) fn rpc_on(channel: Channel) -> ConfigServiceClient<Channel> {
    ConfigServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES)
}

impl Shared {
    /// `authorization` metadata with a token from the source.
    pub async fn auth_header(&self) -> Result<MetadataValue<Ascii>, Error> {
        let token = self
            .tokens
            .token()
            .await
            .map_err(|e| Error::TokenSource(Arc::from(e)))?;
        let token = token.trim();
        if token.is_empty() {
            return Err(Error::token_source(
                "the token source returned an empty token",
            ));
        }
        format!("Bearer {token}").parse().map_err(|_| {
            Error::token_source("the token has characters not allowed in an HTTP header")
        })
    }

    fn current(&self) -> MutexGuard<'_, Current> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn rpc(&self) -> ConfigServiceClient<Channel> {
        rpc_on(self.current().channel.clone())
    }

    /// The URL of server `index` and a channel to it: the watch's own for the server
    /// in use, a new one (lazy, made at the first call) for another.
    pub fn channel_to(&self, index: usize) -> Result<(String, Channel), Error> {
        let url = self.servers.get(index).cloned().unwrap_or_default();
        {
            let current = self.current();
            if current.index == index {
                return Ok((url, current.channel.clone()));
            }
        }
        let channel = channel(&url)?;
        Ok((url, channel))
    }

    /// The index of the server in use.
    pub fn current_index(&self) -> usize {
        self.current().index
    }

    /// The URL of the server in use.
    pub fn server(&self) -> &str {
        let index = self.current().index;
        self.servers.get(index).map_or("", String::as_str)
    }

    /// Uses server `index` from now on, on a new connection made at the next call.
    /// Also for the same server after a stream went silent: its connection may be
    /// half-open (a dead peer, a NAT that forgot the flow), and a new call on it
    /// would hang the same way until HTTP/2 keepalive gives up on it, 40 s later.
    pub fn use_server(&self, index: usize) {
        let Some(url) = self.servers.get(index) else {
            return;
        };
        match channel(url) {
            Ok(fresh) => {
                let mut current = self.current();
                if current.index != index {
                    tracing::debug!(tenant = %self.tenant, server = %url, "moving to the next server");
                }
                *current = Current {
                    index,
                    channel: fresh,
                };
            }
            // Cannot happen: every URL made a channel when the client started.
            Err(e) => tracing::warn!("cannot make a new channel: {e}"),
        }
    }

    /// A new connection to the server in use, made at the next call.
    pub fn renew_channel(&self) {
        self.use_server(self.current_index());
    }
}
