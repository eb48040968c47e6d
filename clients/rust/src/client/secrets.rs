//! [`Client::read_secret`]: a value read from the server with `Get` on demand, for
//! secrets, which the cache never holds. Nothing read here is cached.

use super::shared::Shared;
use super::{Client, Versioned};
use crate::cache::decode;
use crate::error::Error;
use crate::proto;
use crate::wire;

impl Client {
    /// Reads a value from the server with `Get`, on demand: for secrets, which the
    /// cache never holds. Never cached. `Ok(None)` when the key does not exist. The
    /// value must be a JSON string (as secrets are). A refused token gets one fresh
    /// one, and a call its connection failed (closing, say after the server's GOAWAY)
    /// up to three more tries; the whole call is bounded by `call_timeout`.
    pub async fn read_secret(&self, key: &str) -> Result<Option<Versioned<String>>, Error> {
        if self.shared.shutdown.is_cancelled() {
            return Err(Error::Closed);
        }
        let timeout = self.shared.opts.call_timeout;
        let call = async {
            let (mut refreshed, mut repeated) = (false, 0);
            loop {
                match self.shared.get_once(key).await {
                    Err(e) if e.code() == Some(tonic::Code::Unauthenticated) && !refreshed => {
                        refreshed = true;
                    }
                    // The connection was closing (the server's GOAWAY at its maximum
                    // connection age, or a restart): a read, so safe to repeat, on a
                    // new connection, a few times.
                    Err(e) if connection_closed(&e) && repeated < CLOSED_RETRIES => {
                        repeated += 1;
                    }
                    other => return other,
                }
            }
        };
        let response = tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| Error::Timeout(format!("reading {key} took over {timeout:?}")))??;
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

/// Times a read is repeated after its connection went away under it.
const CLOSED_RETRIES: u32 = 3;

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
    async fn get_once(&self, key: &str) -> Result<proto::GetResponse, Error> {
        let header = self.auth_header().await?;
        let mut request = tonic::Request::new(proto::GetRequest {
            keys: vec![key.to_owned()],
            prefixes: Vec::new(),
            tenant: self.tenant.clone(),
            ..Default::default()
        });
        request.set_timeout(self.opts.call_timeout);
        request.metadata_mut().insert("authorization", header);
        Ok(self.rpc().get(request).await?.into_inner())
    }
}
