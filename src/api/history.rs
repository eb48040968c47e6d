//! The History call: one key's kept versions, newest first, a page at a time, or one
//! version. Rights are Get's: the caller's own tenant and service, any role; a
//! secret's value only to a caller that Get would give it to (never a relay's own
//! token). On a relay the call goes upstream with the caller's token: relays keep
//! no history.
//!
//! Boundary: proto to [`HistoryQuery`] and [`HistoryPage`] to proto; the versions
//! themselves are the store's.

use tonic::{Request, Response, Status};

use super::{Bearer, ConfigApi, caller, frame};
use crate::auth::Role;
use crate::proto;
use crate::store::history::{HistoryQuery, MAX_PAGE_VERSIONS, Source, Version};

/// Versions in a History reply when the request sets no `page_size`.
pub const DEFAULT_HISTORY_PAGE: usize = 100;

/// A page token: the version the next page starts below. Opaque to clients.
fn decode_token(token: &str) -> Result<Option<u64>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    token
        .strip_prefix('v')
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|v| *v > 0)
        .map(Some)
        .ok_or_else(|| {
            Status::invalid_argument(
                "page_token is not one a History reply gave; leave it empty for the first page",
            )
        })
}

fn encode_token(before: Option<u64>) -> String {
    before.map(|v| format!("v{v}")).unwrap_or_default()
}

/// A kept version as the API shows it.
pub(crate) fn version_to_proto(v: &Version) -> proto::KeyVersion {
    let e = &v.entry;
    let mut out = proto::KeyVersion {
        version: e.version,
        value: e.value.as_deref().unwrap_or("").to_owned(),
        deleted: e.deleted,
        secret: e.secret,
        written_at: (e.updated_at > 0).then(|| frame::timestamp(e.updated_at)),
        previous_version: v.previous,
        ..Default::default()
    };
    match &v.source {
        Source::Api(audit) => {
            out.source = "api".into();
            out.subject = audit.subject.clone();
            out.client_id = audit.client_id.clone().unwrap_or_default();
            out.instance = audit.instance.clone();
            out.reason = audit.reason.clone().unwrap_or_default();
        }
        Source::External {
            instance,
            modified_by,
        } => {
            out.source = "external".into();
            out.instance = instance.clone();
            out.modified_by = modified_by.clone().unwrap_or_default();
        }
    }
    out
}

impl ConfigApi {
    pub(super) async fn history_call(
        &self,
        request: Request<proto::HistoryRequest>,
    ) -> Result<Response<proto::HistoryResponse>, Status> {
        let (id, scope) = caller(
            &request,
            &request.get_ref().tenant,
            &request.get_ref().service,
        )?;
        self.family(&request.get_ref().key)?;
        if let Some(upstream) = &self.forward {
            let bearer = Bearer::of(request.metadata())?;
            let mut req = request.into_inner();
            req.tenant = scope.tenant_id().to_owned();
            req.service = scope.service().unwrap_or("").to_owned();
            return Ok(Response::new(upstream.history(&bearer, req).await?));
        }
        let connection = request
            .extensions()
            .get::<super::ConnInfo>()
            .map(|c| c.replies.clone());
        let req = request.into_inner();
        // As Get: a relay's own token never opens a secret's value.
        let with_secret = id.role != Role::Relay;
        let query = match req.version {
            0 => HistoryQuery {
                before: decode_token(&req.page_token)?,
                limit: match req.page_size {
                    0 => DEFAULT_HISTORY_PAGE,
                    n => usize::try_from(n).unwrap_or(MAX_PAGE_VERSIONS),
                }
                .min(MAX_PAGE_VERSIONS),
                with_secret,
                max_bytes: self.limits.page_bytes,
            },
            n => HistoryQuery {
                before: Some(n.saturating_add(1)),
                limit: 1,
                with_secret,
                max_bytes: self.limits.page_bytes,
            },
        };
        let (family, backend) = self.router.route(&req.key)?;
        // As a Get's: the reply counts against the budget of replies clients have
        // not read, reserved before it is read (a page's bytes and the one value
        // that may cross them), then cut to what it is.
        let hold = self
            .replies
            .reserve(
                self.limits.page_bytes + family.max_value_bytes + super::REPLY_OVERHEAD,
                connection.as_ref(),
            )
            .await?;
        // A page of large values stays within a Get page's bytes, whatever the
        // backend read (it stops there itself where it can).
        let page = backend
            .history(&scope, &req.key, &query)
            .await?
            .cut_to(self.limits.page_bytes);
        let reply = if req.version != 0 {
            match page.versions.first() {
                Some(v) if v.entry.version == req.version => proto::HistoryResponse {
                    versions: vec![version_to_proto(v)],
                    next_page_token: String::new(),
                },
                _ => {
                    return Err(Status::not_found(format!(
                        "version {} of '{}' is not kept (it was never written, or is older than the store's retention)",
                        req.version, req.key
                    )));
                }
            }
        } else {
            proto::HistoryResponse {
                versions: page.versions.iter().map(version_to_proto).collect(),
                next_page_token: encode_token(page.next_before),
            }
        };
        hold.shrink_to(prost::Message::encoded_len(&reply));
        let mut response = Response::new(reply);
        response.extensions_mut().insert(hold);
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_carry_the_next_version_and_refuse_others() {
        assert_eq!(decode_token(&encode_token(Some(42))).ok(), Some(Some(42)));
        assert_eq!(encode_token(None), "");
        assert_eq!(decode_token("").ok(), Some(None));
        for bad in ["42", "v", "v0", "vx", "v-1"] {
            assert!(decode_token(bad).is_err(), "{bad}");
        }
    }
}
