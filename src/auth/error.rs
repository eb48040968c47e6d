//! Why a token is refused: [`AuthError`], with messages that say what to fix, and
//! the bounds on how much of a caller's input a refusal may repeat.
//!
//! Also the translation of `jsonwebtoken`'s errors into ours; nothing here decides
//! whether a token is good.

use crate::model::IdError;

/// The most characters of caller-supplied text (a key id, a claim value) a refusal
/// repeats; longer text is cut and ends with "...".
pub const MAX_ECHO_CHARS: usize = 64;

/// The most characters of a library's error text (which may quote the token) a
/// refusal repeats.
const MAX_DETAIL_CHARS: usize = 256;

/// At most `max` characters of `s`, then "..." if anything was cut.
fn clip_to(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_owned(),
        Some((end, _)) => format!("{}...", &s[..end]),
    }
}

/// Caller-supplied text as a refusal may repeat it.
pub(crate) fn clip(s: &str) -> String {
    clip_to(s, MAX_ECHO_CHARS)
}

/// Why a token was refused. Messages say what to fix and never echo the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "missing 'authorization' metadata: send 'authorization: Bearer <token>' (`configwatch token` prints one)"
    )]
    Missing,
    #[error("'authorization' metadata must be 'Bearer <token>'")]
    NotBearer,
    #[error("token is malformed: {0}")]
    Malformed(String),
    #[error("token has expired; get a fresh token and reconnect")]
    Expired,
    #[error("token is not valid yet (nbf is in the future)")]
    NotYetValid,
    #[error("token signature does not verify against this server's keys")]
    BadSignature,
    #[error("token algorithm {found} is not accepted; accepted: {accepted}")]
    Algorithm { found: String, accepted: String },
    #[error("token issuer (iss) is not the one this server trusts")]
    Issuer,
    #[error(
        "token has no issuer (iss), or it is not a single string; it must be one this server trusts"
    )]
    IssuerMissing,
    #[error(
        "token header lists critical extensions (crit) and this server implements none; sign the token without 'crit'"
    )]
    CriticalExtension,
    #[error("token audience (aud) is not one this server accepts")]
    Audience,
    #[error("token key id (kid) {0:?} is not one of this server's keys")]
    UnknownKey(Option<String>),
    #[error("token has no '{0}' claim naming its tenant")]
    MissingTenant(String),
    #[error("token claim '{claim}' is invalid: {reason}")]
    BadClaim { claim: String, reason: String },
    #[error("token role '{0}' is not one of reader, writer, relay, admin")]
    UnknownRole(String),
    #[error(
        "role 'relay' is never taken from the user attribute '{0}': add the user to the group 'relay' instead"
    )]
    RelayFromAttribute(String),
    #[error(
        "token kind (token_use) '{found}' is not accepted; this server takes {accepted} tokens"
    )]
    TokenUse { found: String, accepted: String },
    #[error("token keys are unavailable: {0}")]
    KeysUnavailable(String),
}

impl From<IdError> for AuthError {
    fn from(e: IdError) -> Self {
        let clipped = IdError {
            what: e.what,
            id: clip(&e.id),
        };
        AuthError::BadClaim {
            claim: e.what.to_owned(),
            reason: clipped.to_string(),
        }
    }
}

impl AuthError {
    /// A token that cannot be parsed, with the parser's words (which may quote the
    /// token), bounded.
    pub(crate) fn malformed(detail: impl std::fmt::Display) -> Self {
        AuthError::Malformed(clip_to(&detail.to_string(), MAX_DETAIL_CHARS))
    }

    /// A key id that names none of the keys, bounded.
    pub(crate) fn unknown_key(kid: Option<&str>) -> Self {
        AuthError::UnknownKey(kid.map(clip))
    }

    /// Key fetch trouble, bounded.
    pub(crate) fn keys_unavailable(detail: impl std::fmt::Display) -> Self {
        AuthError::KeysUnavailable(clip_to(&detail.to_string(), MAX_DETAIL_CHARS))
    }
}

pub(super) fn map_jwt_error(e: jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => AuthError::Expired,
        K::ImmatureSignature => AuthError::NotYetValid,
        K::InvalidSignature => AuthError::BadSignature,
        K::InvalidIssuer => AuthError::Issuer,
        K::InvalidAudience => AuthError::Audience,
        K::InvalidAlgorithm => AuthError::Algorithm {
            found: "of the token".into(),
            accepted: "the key's own algorithm".into(),
        },
        K::MissingRequiredClaim(c) => {
            // jsonwebtoken also says so of an `exp` it cannot read as a date.
            AuthError::malformed(format_args!(
                "the '{}' claim is required, as a number of seconds since 1970",
                clip(c)
            ))
        }
        _ => unreadable(&e),
    }
}

/// A token `jsonwebtoken` cannot read, in its words minus any quote of the token
/// (serde's messages repeat the offending value, whatever its length).
pub(super) fn unreadable(e: &jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::Json(j) => AuthError::malformed(format_args!(
            "its header or claims are not the JSON a JWT needs ({:?} error at column {})",
            j.classify(),
            j.column()
        )),
        K::InvalidClaimFormat(c) => {
            AuthError::malformed(format_args!("the '{}' claim has the wrong type", clip(c)))
        }
        _ => AuthError::malformed(e),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use jsonwebtoken::{Algorithm, Header};
    use serde_json::json;

    use super::*;
    use crate::auth::testing::*;
    use crate::auth::{Authenticator, ClaimRules, Signer, local};

    /// it, so the message stays far below gRPC's metadata limits.
    #[tokio::test]
    async fn refusals_never_echo_long_input() -> TestResult {
        let long = "k".repeat(10_000);
        let dir = tempfile::tempdir()?;
        let (key, _) = local::LocalKey::load_or_create(dir.path())?;
        let key = Arc::new(key);
        let own = Authenticator::new(key.clone(), ClaimRules::default());
        let keys = TestKeys::new()?;
        let test_auth = auth(&keys, 5, 100);
        let provider = TestKeys::signed_by(Signer::IdentityProvider)?;
        let provider_auth = provider_auth(&provider, provider_rules());

        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(long.clone());
        let by_kid = keys.sign_with(&header, &claims(now() + 600))?;
        let e = own.verify(&by_kid).await.err();
        assert!(matches!(e, Some(AuthError::UnknownKey(_))), "{e:?}");

        let mut errors = vec![e];
        let b64 =
            |s: &str| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, s);
        let forged_header = format!(
            "{}.{}.sig",
            b64(&format!(r#"{{"alg":"{long}"}}"#)),
            b64("{}")
        );
        errors.push(own.verify(&forged_header).await.err());
        errors.push(own.verify(&long).await.err());
        errors.push(own.verify(&format!("{long}.{long}.{long}")).await.err());
        for (field, value) in [
            ("custom:role", json!(long)),
            ("custom:tenantId", json!(long)),
            ("custom:service", json!(long)),
            ("exp", json!(long)),
            ("iat", json!(long)),
            ("aud", json!(long)),
        ] {
            let mut c = claims(now() + 600);
            c[field] = value;
            errors.push(test_auth.verify(&keys.sign(&c)?).await.err());
        }
        let mut c = provider_claims(now() + 600);
        c["token_use"] = json!(long);
        errors.push(provider_auth.verify(&provider.sign(&c)?).await.err());
        for e in errors {
            let e = e.ok_or("every one of these is refused")?;
            let text = e.to_string();
            assert!(text.len() < 600, "{} bytes: {text}", text.len());
            assert!(!text.contains(&"k".repeat(MAX_ECHO_CHARS + 1)), "{text}");
        }
        Ok(())
    }

    #[test]
    fn clipping_respects_characters() {
        assert_eq!(clip("short"), "short");
        let exact = "é".repeat(MAX_ECHO_CHARS);
        assert_eq!(clip(&exact), exact);
        let long = "é".repeat(MAX_ECHO_CHARS + 1);
        assert_eq!(clip(&long), format!("{exact}..."));
    }
}
