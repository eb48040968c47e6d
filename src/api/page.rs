//! Page tokens of a paged `Get`.
//!
//! A token names where the next page starts (the last key considered), the
//! revision of the first page (every page serves that state, or the call is refused)
//! and the request it belongs to (tenant, service, keys, prefixes). It is signed with
//! a key made at start, so text a client made up or altered is refused, and a token
//! from another server run is recognised as such (the revision it names means
//! nothing here) and answered with "start again".

use base64::Engine as _;
use sha2::{Digest as _, Sha256};

use crate::keys::PrefixSet;
use crate::model::Scope;

const FORMAT: u8 = 1;
const MAC_LEN: usize = 16;
/// format, instance, revision, request.
const HEAD_LEN: usize = 1 + 8 + 8 + 8;

/// Why a page token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageTokenError {
    #[error(
        "page_token is not a token this server issued; pass the next_page_token of the previous page unchanged, or omit it to start again"
    )]
    Malformed,
    #[error(
        "page_token belongs to a request with other keys, prefixes or tenant; repeat the first page's request with it, or omit it to start again"
    )]
    OtherRequest,
    #[error(
        "page_token is from another server run (a restart, or another instance); start again without page_token"
    )]
    OtherRun,
}

/// Where a paged Get continues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Continue {
    pub revision: u64,
    pub after: String,
}

/// Issues and checks page tokens for one server run.
pub struct PageTokens {
    instance: u64,
    key: [u8; 32],
}

impl Default for PageTokens {
    fn default() -> Self {
        Self::new()
    }
}

impl PageTokens {
    pub fn new() -> Self {
        PageTokens {
            instance: rand::random(),
            key: rand::random(),
        }
    }

    fn mac(&self, body: &[u8]) -> [u8; MAC_LEN] {
        let mut h = Sha256::new();
        h.update(self.key);
        h.update(body);
        let sum = h.finalize();
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&sum[..MAC_LEN]);
        out
    }

    pub fn encode(&self, request: u64, revision: u64, after: &str) -> String {
        let mut bytes = Vec::with_capacity(HEAD_LEN + after.len() + MAC_LEN);
        bytes.push(FORMAT);
        bytes.extend_from_slice(&self.instance.to_be_bytes());
        bytes.extend_from_slice(&revision.to_be_bytes());
        bytes.extend_from_slice(&request.to_be_bytes());
        bytes.extend_from_slice(after.as_bytes());
        let mac = self.mac(&bytes);
        bytes.extend_from_slice(&mac);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Reads a token given with a request whose [`request_hash`] is `request`.
    pub fn decode(&self, text: &str, request: u64) -> Result<Continue, PageTokenError> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| PageTokenError::Malformed)?;
        if bytes.len() < HEAD_LEN + MAC_LEN || bytes[0] != FORMAT {
            return Err(PageTokenError::Malformed);
        }
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[i..i + 8]);
            u64::from_be_bytes(w)
        };
        if word(1) != self.instance {
            return Err(PageTokenError::OtherRun);
        }
        let (body, mac) = bytes.split_at(bytes.len() - MAC_LEN);
        if self.mac(body) != mac {
            return Err(PageTokenError::Malformed);
        }
        if word(17) != request {
            return Err(PageTokenError::OtherRequest);
        }
        let after =
            String::from_utf8(body[HEAD_LEN..].to_vec()).map_err(|_| PageTokenError::Malformed)?;
        Ok(Continue {
            revision: word(9),
            after,
        })
    }
}

/// What a page token is bound to: the scope, the keys (as a set) and the prefixes
/// (normalized).
pub fn request_hash(scope: &Scope, keys: &[String], prefixes: &[String]) -> u64 {
    let mut h = Sha256::new();
    let mut feed = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    feed(scope.tenant_id().as_bytes());
    feed(scope.service().unwrap_or("").as_bytes());
    let mut sorted: Vec<&str> = keys.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    sorted.dedup();
    feed(b"keys");
    for k in sorted {
        feed(k.as_bytes());
    }
    feed(b"prefixes");
    if !prefixes.is_empty() {
        for p in PrefixSet::new(prefixes.iter().cloned()).as_slice() {
            feed(p.as_bytes());
        }
    }
    let sum = h.finalize();
    let mut w = [0u8; 8];
    w.copy_from_slice(&sum[..8]);
    u64::from_be_bytes(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_refuse_tampering_other_requests_and_other_runs() {
        let tokens = PageTokens::new();
        let scope = Scope::tenant("acme").map_err(|e| e.to_string());
        let Ok(scope) = scope else {
            panic!("scope");
        };
        let req = request_hash(&scope, &[], &["tenant_config_".into()]);
        let text = tokens.encode(req, 42, "tenant_config_b");
        assert_eq!(
            tokens.decode(&text, req),
            Ok(Continue {
                revision: 42,
                after: "tenant_config_b".into()
            })
        );
        // One character changed anywhere.
        let mut chars: Vec<char> = text.chars().collect();
        let last = chars.len() - 5;
        chars[last] = if chars[last] == 'A' { 'B' } else { 'A' };
        let tampered: String = chars.into_iter().collect();
        assert_eq!(
            tokens.decode(&tampered, req),
            Err(PageTokenError::Malformed)
        );
        assert_eq!(
            tokens.decode("not a token", req),
            Err(PageTokenError::Malformed)
        );
        assert_eq!(tokens.decode("", req), Err(PageTokenError::Malformed));
        let other = request_hash(&scope, &[], &["param_config_".into()]);
        assert_eq!(
            tokens.decode(&text, other),
            Err(PageTokenError::OtherRequest)
        );
        let Ok(other_tenant) = Scope::tenant("globex") else {
            panic!("scope");
        };
        let other = request_hash(&other_tenant, &[], &["tenant_config_".into()]);
        assert_eq!(
            tokens.decode(&text, other),
            Err(PageTokenError::OtherRequest)
        );
        assert_eq!(
            PageTokens::new().decode(&text, req),
            Err(PageTokenError::OtherRun)
        );
        // Keys are a set; prefixes are normalized.
        assert_eq!(
            request_hash(&scope, &["b".into(), "a".into(), "a".into()], &[]),
            request_hash(&scope, &["a".into(), "b".into()], &[])
        );
    }
}
