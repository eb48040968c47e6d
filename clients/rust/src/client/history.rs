//! [`Client::history`]: the versions of one key the server keeps, newest first, with
//! who wrote each and why, read with `History` on demand (never cached), every page
//! up to a limit.
//!
//! Boundary: the History call and its reply as [`KeyVersion`]s; the failover is
//! `reads`'.

use std::time::SystemTime;

use super::Client;
use super::reads::Tried;
use crate::error::Error;
use crate::proto;
use crate::wire;

/// The most versions one History page holds (the server's limit).
const PAGE: usize = 1000;

/// One version of a key as the server's history keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyVersion {
    pub version: u64,
    /// The value's JSON text; `None` for a delete, and for a secret whose value the
    /// token may not read.
    pub value: Option<String>,
    pub deleted: bool,
    pub secret: bool,
    pub written_at: Option<SystemTime>,
    /// The version this one replaced; 0 for the key's first write.
    pub previous_version: u64,
    /// `api` (written through configwatch) or `external` (by another tool).
    pub source: String,
    /// The writer's token subject.
    pub subject: String,
    /// The app client the writer's token was issued to; empty when none.
    pub client_id: String,
    /// The configwatch instance that accepted the write (or noticed the change).
    pub instance: String,
    pub reason: String,
    /// Who the store itself says made an external change; empty when unknown.
    pub modified_by: String,
}

impl From<proto::KeyVersion> for KeyVersion {
    fn from(v: proto::KeyVersion) -> Self {
        KeyVersion {
            value: (!v.deleted && !v.value.is_empty()).then_some(v.value),
            written_at: wire::time(v.written_at),
            version: v.version,
            deleted: v.deleted,
            secret: v.secret,
            previous_version: v.previous_version,
            source: v.source,
            subject: v.subject,
            client_id: v.client_id,
            instance: v.instance,
            reason: v.reason,
            modified_by: v.modified_by,
        }
    }
}

impl Client {
    /// The versions of `key` the server keeps, newest first, at most `limit`: read
    /// from the server on demand, page by page (a key never written has none). Each
    /// page is read as [`Client::read_secret`] reads, on the next server of the list
    /// when one cannot be reached, within `call_timeout`.
    pub async fn history(&self, key: &str, limit: usize) -> Result<Vec<KeyVersion>, Error> {
        if self.shared.shutdown.is_cancelled() {
            return Err(Error::Closed);
        }
        let tenant = self.shared.tenant.clone();
        let mut out = Vec::new();
        let mut page_token = String::new();
        while out.len() < limit {
            let page_size = u32::try_from((limit - out.len()).min(PAGE)).unwrap_or(1000);
            let mut tried = Tried::default();
            let page = self
                .shared
                .read_anywhere(&mut tried, |mut rpc, request| {
                    let request = request.map(|()| proto::HistoryRequest {
                        tenant: tenant.clone(),
                        key: key.to_owned(),
                        page_size,
                        page_token: page_token.clone(),
                        ..Default::default()
                    });
                    async move { Ok(rpc.history(request).await?.into_inner()) }
                })
                .await?;
            out.extend(page.versions.into_iter().map(KeyVersion::from));
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        out.truncate(limit);
        Ok(out)
    }
}
