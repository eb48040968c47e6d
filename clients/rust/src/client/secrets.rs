//! [`Client::read_secret`]: a value read from the server with `Get` on demand, for
//! secrets, which the cache never holds. Nothing read here is cached. It starts on
//! the server the watch uses and moves on through the client's list when one cannot
//! be reached, as the watch does, without moving the watch (see `reads`).

use super::reads::Tried;
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
        let tenant = self.shared.tenant.clone();
        let call = self.shared.read_anywhere(&mut tried, |mut rpc, request| {
            let request = request.map(|()| proto::GetRequest {
                keys: vec![key.to_owned()],
                tenant: tenant.clone(),
                ..Default::default()
            });
            async move { Ok(rpc.get(request).await?.into_inner()) }
        });
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
