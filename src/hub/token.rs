//! Resume tokens: a position in a scope's change order, valid for one filter (scope
//! and prefixes) on one server run, and checked so that text that is no token is
//! refused rather than taken for one that does not reach back.
//!
//! Boundary: the format and its check; whether a token can be replayed (the view's
//! history) is decided by `watch`.

use base64::Engine as _;

use super::Hub;
use crate::keys::PrefixSet;
use crate::model::Scope;

/// Why a resume token was refused outright (as opposed to not reaching back).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "resume_token is not a token this server issues; omit it (and send known_versions) to start over"
)]
pub struct BadToken;

/// A position in a scope's change order, valid for one filter on one server run.
///
/// Encoded as URL-safe base64 without padding of: a format byte, the fields as
/// big-endian words, and the first 8 bytes of SHA-256 over all that. The check
/// makes any text that is not a token this server (or another release of it)
/// issued, a token with one character changed among them, an error instead of a
/// silent full resend. A checked token of a format this release does not know
/// (a newer one) and a token of the first format (which had no check) are
/// well-formed but not resumable here: the caller falls back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumeToken {
    pub(super) epoch: u64,
    pub(super) revision: u64,
    pub(super) filter: u64,
}

/// The format this release writes.
const TOKEN_FORMAT: u8 = 2;
/// The first format: 25 bytes, no check. Never resumable any more.
const TOKEN_FORMAT_UNCHECKED: u8 = 1;
const TOKEN_BODY: usize = 25;
const TOKEN_CHECK: usize = 8;

fn token_check(body: &[u8]) -> [u8; TOKEN_CHECK] {
    use sha2::Digest as _;
    let hash = sha2::Sha256::digest(body);
    let mut check = [0u8; TOKEN_CHECK];
    check.copy_from_slice(&hash[..TOKEN_CHECK]);
    check
}

impl ResumeToken {
    pub fn encode(&self) -> String {
        let mut bytes = Vec::with_capacity(TOKEN_BODY + TOKEN_CHECK);
        bytes.push(TOKEN_FORMAT);
        bytes.extend_from_slice(&self.epoch.to_be_bytes());
        bytes.extend_from_slice(&self.revision.to_be_bytes());
        bytes.extend_from_slice(&self.filter.to_be_bytes());
        let check = token_check(&bytes);
        bytes.extend_from_slice(&check);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Reads a token. `Ok(None)` for a well-formed token that cannot resume here
    /// (another release's format), so the caller falls back. Text that is no token
    /// at all, or whose check fails, is an error.
    pub fn decode(text: &str) -> Result<Option<Self>, BadToken> {
        // Longer than any format: refuse before decoding.
        if text.len() > 256 {
            return Err(BadToken);
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| BadToken)?;
        if bytes.len() == TOKEN_BODY && bytes[0] == TOKEN_FORMAT_UNCHECKED {
            return Ok(None);
        }
        if bytes.len() <= TOKEN_CHECK {
            return Err(BadToken);
        }
        let (body, check) = bytes.split_at(bytes.len() - TOKEN_CHECK);
        if token_check(body) != check {
            return Err(BadToken);
        }
        match body[0] {
            TOKEN_FORMAT if body.len() == TOKEN_BODY => {}
            TOKEN_FORMAT | TOKEN_FORMAT_UNCHECKED | 0 => return Err(BadToken),
            _ => return Ok(None),
        }
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&body[i..i + 8]);
            u64::from_be_bytes(w)
        };
        Ok(Some(ResumeToken {
            epoch: word(1),
            revision: word(9),
            filter: word(17),
        }))
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }
}

/// FNV-1a over the scope and the prefixes: a token resumes only the same watch.
pub(super) fn filter_hash(scope: &Scope, prefixes: &PrefixSet) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    };
    feed(scope.tenant_id().as_bytes());
    feed(scope.service().unwrap_or("").as_bytes());
    for p in prefixes.as_slice() {
        feed(p.as_bytes());
    }
    h
}

impl Hub {
    pub(super) fn token(&self, scope: &Scope, prefixes: &PrefixSet, revision: u64) -> ResumeToken {
        ResumeToken {
            epoch: self.epoch,
            revision,
            filter: filter_hash(scope, prefixes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_of_another_format_fall_back_and_garbage_is_refused() {
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let checked = |body: &[u8]| {
            let mut bytes = body.to_vec();
            bytes.extend_from_slice(&token_check(body));
            b64(&bytes)
        };
        // A newer release's format, checked: not resumable here, fall back.
        assert_eq!(ResumeToken::decode(&checked(&[9u8; 30])), Ok(None));
        // The first format (no check): fall back.
        let mut first = [0u8; TOKEN_BODY];
        first[0] = TOKEN_FORMAT_UNCHECKED;
        assert_eq!(ResumeToken::decode(&b64(&first)), Ok(None));
        // Text that is no token.
        for garbage in [
            "not a token!",
            "",
            "AAAA",
            "test",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert_eq!(ResumeToken::decode(garbage), Err(BadToken), "{garbage:?}");
        }
        assert_eq!(ResumeToken::decode(&b64(&[TOKEN_FORMAT; 5])), Err(BadToken));
        assert_eq!(ResumeToken::decode(&"A".repeat(10_000)), Err(BadToken));
        // This format, checked, but the wrong length.
        assert_eq!(
            ResumeToken::decode(&checked(&[TOKEN_FORMAT; 30])),
            Err(BadToken)
        );
    }

    #[test]
    fn a_token_with_any_one_character_changed_is_refused() {
        let token = ResumeToken {
            epoch: 0x0123_4567_89ab_cdef,
            revision: 42,
            filter: 7,
        };
        let text = token.encode();
        assert_eq!(ResumeToken::decode(&text), Ok(Some(token)));
        let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        for i in 0..text.len() {
            for c in alphabet.chars() {
                let mut changed: Vec<char> = text.chars().collect();
                if changed[i] == c {
                    continue;
                }
                changed[i] = c;
                let changed: String = changed.into_iter().collect();
                // The last character carries spare bits that base64 decoders may
                // ignore; any change that decodes to other bytes must be refused.
                match ResumeToken::decode(&changed) {
                    Ok(Some(t)) if t == token => {}
                    Ok(other) => panic!("{changed} (position {i}) decoded as {other:?}"),
                    Err(BadToken) => {}
                }
            }
        }
    }
}
