//! Identity: a bearer JWT, validated completely, becomes an [`Identity`].
//!
//! The tenant comes only from the token (claim `custom:tenantId` by default), never
//! from a request. Validation is split in two: a [`KeySource`] says which key and
//! which algorithms verify a token with a given header (the embedded signing key in
//! [`local`]; a JWKS URL later), and the [`Authenticator`] checks signature, expiry,
//! issuer and audience and maps claims to an identity.
//!
//! Where a role may come from depends on who signed the token ([`Signer`]): the
//! server's own key signs only what the operator asked `configwatch token` for, so
//! its role claim is taken as written; an identity provider such as Cognito signs
//! user attributes that users may be able to change themselves, so roles come from
//! its groups (`cognito:groups`), or from an attribute the operator declares
//! admin-only, and `relay` only ever from a group.
//!
//! Refusals never echo more than a few dozen characters of what the caller sent
//! ([`MAX_ECHO_CHARS`]), so a status message stays far below gRPC's metadata limits.
//!
//! A verified token is remembered in a bounded [`cache`] keyed by the SHA-256 of the
//! whole token, so a client reusing its token skips the signature check (about
//! 430k instructions for Ed25519) until the token expires by the same exp/nbf/leeway
//! rule; see that module for what it promises.

pub mod cache;
pub mod jwks;
pub mod local;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use serde_json::Value;

use crate::model::{IdError, Scope};
use cache::{Lookup, TokenCache, Verified};

/// What a caller may do. See the README's role matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Get and Watch, own tenant.
    Reader,
    /// Also Put and Delete, own tenant.
    Writer,
    /// Get and Watch of any tenant named in the request; no writes. For relay
    /// instances that serve their own clients from an upstream server.
    Relay,
    /// Everything within its own tenant.
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "reader" => Some(Role::Reader),
            "writer" => Some(Role::Writer),
            "relay" => Some(Role::Relay),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Writer => "writer",
            Role::Relay => "relay",
            Role::Admin => "admin",
        }
    }

    pub fn can_write(&self) -> bool {
        matches!(self, Role::Writer | Role::Admin)
    }

    /// Whether the caller may name a tenant other than its token's.
    pub fn crosses_tenants(&self) -> bool {
        matches!(self, Role::Relay)
    }

    /// Precedence when a role comes from several groups: the most capable wins.
    fn rank(&self) -> u8 {
        match self {
            Role::Reader => 0,
            Role::Relay => 1,
            Role::Writer => 2,
            Role::Admin => 3,
        }
    }
}

/// Which Cognito token kinds are accepted (`token_use` claim).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenUse {
    /// ID tokens (`token_use: id`); the audience is checked against `aud`.
    Id,
    /// Access tokens (`token_use: access`); the audience is checked against `client_id`.
    Access,
    /// Either. (A provider's token without `token_use` is refused; the server's
    /// own tokens never carry one and are not subject to this rule.)
    Any,
}

impl TokenUse {
    pub fn parse(s: &str) -> Option<TokenUse> {
        match s {
            "id" => Some(TokenUse::Id),
            "access" => Some(TokenUse::Access),
            "any" => Some(TokenUse::Any),
            _ => None,
        }
    }
}

/// Who signs the tokens a [`KeySource`] verifies, which decides how far their claims
/// are trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signer {
    /// This server's own signing key (`configwatch token`). Only whoever holds the
    /// key file can sign, and every claim is what the operator asked for: the role
    /// claim ([`local::ROLE_CLAIM`]) is taken as written, `relay` included. The
    /// issuer must be [`local::ISSUER`] (unless others are configured), and there is
    /// no `token_use`: these are not Cognito tokens.
    ThisServer,
    /// An identity provider (a JWKS URL; Amazon Cognito). Users may be able to write
    /// their own attributes, so a role comes only from `cognito:groups` or from the
    /// attribute the operator declared admin-only ([`ClaimRules::role_claim`]), and
    /// `relay` only from a group. `token_use` must be present and accepted.
    IdentityProvider,
}

/// The most characters of caller-supplied text (a key id, a claim value) a refusal
/// repeats; longer text is cut and ends with "...".
pub const MAX_ECHO_CHARS: usize = 64;

/// The most characters of a library's error text (which may quote the token) a
/// refusal repeats.
const MAX_DETAIL_CHARS: usize = 256;

/// The claim naming the tenant, unless configured.
pub const DEFAULT_TENANT_CLAIM: &str = "custom:tenantId";
/// The claim narrowing a token to one service, unless configured.
pub const DEFAULT_SERVICE_CLAIM: &str = "custom:service";

/// The clock skew allowed on `exp` and `nbf`, unless configured.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(5);

/// The most clock skew allowed on `exp` and `nbf`.
pub const MAX_LEEWAY: Duration = Duration::from_secs(3600);

/// The latest NumericDate accepted (9999-12-31T23:59:59Z): `exp`, `nbf` and `iat`
/// later than this are refused as malformed rather than turned into a time.
pub const MAX_NUMERIC_DATE: u64 = 253_402_300_799;

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

/// Who is calling, as proven by the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The token's tenant (and service). `None` only for a relay token without a
    /// tenant claim: it names the tenant in each request.
    pub scope: Option<Scope>,
    pub role: Role,
    /// The token's `sub`, for logs.
    pub subject: String,
    /// When the token stops being accepted (exp plus the allowed clock skew); a
    /// watch ends then.
    pub expires_at: Option<SystemTime>,
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

/// A key that verifies tokens, and the algorithms allowed with it.
pub struct VerifyKey {
    pub key: DecodingKey,
    pub algorithms: Vec<Algorithm>,
}

/// Where verification keys come from.
#[async_trait]
pub trait KeySource: Send + Sync + 'static {
    /// The key for a token with this header.
    async fn key_for(&self, header: &Header) -> Result<Arc<VerifyKey>, AuthError>;

    /// Who signs the tokens these keys verify. An identity provider unless a source
    /// says otherwise: the cautious answer.
    fn signer(&self) -> Signer {
        Signer::IdentityProvider
    }
}

/// Which claims carry what, and what else a token must satisfy.
#[derive(Debug, Clone)]
pub struct ClaimRules {
    pub tenant_claim: String,
    /// With an identity provider: a claim naming the role that only administrators
    /// can set (for Cognito, a custom attribute the app client may not write). It is
    /// read before `cognito:groups` and may not say `relay`. `None` (the default):
    /// roles come from groups only. Tokens of the server's own key always carry
    /// their role in [`local::ROLE_CLAIM`].
    pub role_claim: Option<String>,
    pub service_claim: String,
    /// Accepted issuers. Every token must carry `iss` as one string; empty accepts
    /// any issuer from an identity provider, and only [`local::ISSUER`] from the
    /// server's own key.
    pub issuers: Vec<String>,
    /// Accepted audiences (app client ids): `aud` of ID tokens, `client_id` of
    /// access tokens. Empty requires the token to carry neither.
    pub audiences: Vec<String>,
    /// Accepted token kinds from an identity provider (the server's own tokens have
    /// none).
    pub token_use: TokenUse,
    /// Clock skew allowed on exp and nbf.
    pub leeway: Duration,
}

impl Default for ClaimRules {
    fn default() -> Self {
        ClaimRules {
            tenant_claim: DEFAULT_TENANT_CLAIM.into(),
            role_claim: None,
            service_claim: DEFAULT_SERVICE_CLAIM.into(),
            issuers: Vec::new(),
            audiences: Vec::new(),
            token_use: TokenUse::Any,
            leeway: DEFAULT_LEEWAY,
        }
    }
}

/// Turns bearer tokens into identities.
pub struct Authenticator {
    keys: Arc<dyn KeySource>,
    rules: ClaimRules,
    cache: TokenCache,
}

impl Authenticator {
    /// With a cache of [`cache::DEFAULT_CAPACITY`] verified tokens.
    pub fn new(keys: Arc<dyn KeySource>, rules: ClaimRules) -> Self {
        Self::with_cache_capacity(keys, rules, cache::DEFAULT_CAPACITY)
    }

    /// With a cache of at most `capacity` verified tokens (0: every call verifies).
    /// A leeway over [`MAX_LEEWAY`] is cut to it (the command line refuses one).
    pub fn with_cache_capacity(
        keys: Arc<dyn KeySource>,
        mut rules: ClaimRules,
        capacity: usize,
    ) -> Self {
        // jsonwebtoken subtracts the leeway from the clock unchecked.
        rules.leeway = rules.leeway.min(MAX_LEEWAY);
        Authenticator {
            keys,
            rules,
            cache: TokenCache::new(capacity),
        }
    }

    /// Verified tokens cached now (for operators and tests).
    pub fn cached_tokens(&self) -> usize {
        self.cache.len()
    }

    /// Reads `authorization: Bearer <token>` from request metadata and validates it.
    pub async fn authenticate(&self, headers: &http::HeaderMap) -> Result<Identity, AuthError> {
        let value = headers
            .get(http::header::AUTHORIZATION)
            .ok_or(AuthError::Missing)?;
        let value = value.to_str().map_err(|_| AuthError::NotBearer)?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::NotBearer)?;
        self.verify(token).await
    }

    /// Validates a token: signature, algorithm, exp, nbf, iss, aud, then claims. A
    /// token that verified before (byte for byte, with a key still in the key set)
    /// is only checked against the clock, by the same rule.
    pub async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let digest = cache::digest(token);
        let leeway = self.rules.leeway.as_secs();
        if let Some(now) = cache::now_secs() {
            match self.cache.lookup(&digest, now, leeway) {
                Lookup::Hit(identity) => return Ok(identity),
                Lookup::Refused(e) => return Err(e),
                Lookup::Miss => {}
            }
        }
        let verified = self.verify_uncached(token).await?;
        let identity = verified.identity.clone();
        self.cache.insert(digest, verified);
        Ok(identity)
    }

    /// The full verification, and what the cache needs to replay its time rule.
    async fn verify_uncached(&self, token: &str) -> Result<Verified, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| unreadable(&e))?;
        // RFC 7515 4.1.11: extensions named in `crit` must be understood, and this
        // server implements none.
        if header.crit.is_some() {
            return Err(AuthError::CriticalExtension);
        }
        let key = self.keys.key_for(&header).await?;
        if !key.algorithms.contains(&header.alg) {
            return Err(AuthError::Algorithm {
                found: format!("{:?}", header.alg),
                accepted: key
                    .algorithms
                    .iter()
                    .map(|a| format!("{a:?}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        let signer = self.keys.signer();
        let mut validation = Validation::new(header.alg);
        validation.algorithms = key.algorithms.clone();
        // The cache replays exactly this exp/nbf rule (cache::check_time).
        validation.leeway = self.rules.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        // The issuer is checked below (jsonwebtoken ignores an `iss` it cannot
        // parse, and accepts an array), and so is the audience: ID tokens carry it
        // in `aud`, access tokens in `client_id`.
        validation.validate_aud = false;
        let data = jsonwebtoken::decode::<HashMap<String, Value>>(token, &key.key, &validation)
            .map_err(map_jwt_error)?;
        let claims = &data.claims;
        self.check_issuer(claims, signer)?;
        let exp = date_claim(claims, "exp")?
            .ok_or_else(|| AuthError::malformed("the 'exp' claim is required"))?;
        let nbf = date_claim(claims, "nbf")?;
        date_claim(claims, "iat")?;
        self.check_kind_and_audience(claims, signer)?;
        let identity = self.identity(claims, signer, exp)?;
        Ok(Verified {
            identity,
            exp,
            nbf,
            key: Arc::downgrade(&key),
        })
    }

    /// `iss` must be one string, and one of the accepted issuers.
    fn check_issuer(
        &self,
        claims: &HashMap<String, Value>,
        signer: Signer,
    ) -> Result<(), AuthError> {
        let Some(Value::String(iss)) = claims.get("iss") else {
            return Err(AuthError::IssuerMissing);
        };
        let trusted = if !self.rules.issuers.is_empty() {
            self.rules.issuers.iter().any(|want| want == iss)
        } else {
            match signer {
                Signer::ThisServer => iss == local::ISSUER,
                Signer::IdentityProvider => true,
            }
        };
        if trusted {
            Ok(())
        } else {
            Err(AuthError::Issuer)
        }
    }

    fn check_kind_and_audience(
        &self,
        claims: &HashMap<String, Value>,
        signer: Signer,
    ) -> Result<(), AuthError> {
        let token_use = match claims.get("token_use") {
            None => None,
            Some(Value::String(u)) => Some(u.as_str()),
            Some(_) => {
                return Err(AuthError::BadClaim {
                    claim: "token_use".into(),
                    reason: "it must be a string".into(),
                });
            }
        };
        let accepted = match signer {
            // `configwatch token` never sets it; a token that does was not made there.
            Signer::ThisServer => token_use.is_none(),
            // Cognito always sets it: without it, a token is neither of its kinds.
            Signer::IdentityProvider => match self.rules.token_use {
                TokenUse::Id => token_use == Some("id"),
                TokenUse::Access => token_use == Some("access"),
                TokenUse::Any => matches!(token_use, Some("id") | Some("access")),
            },
        };
        if !accepted {
            return Err(AuthError::TokenUse {
                found: token_use.map_or_else(|| "(none)".to_owned(), clip),
                accepted: match (signer, self.rules.token_use) {
                    (Signer::ThisServer, _) => "untyped (no token_use)".into(),
                    (_, TokenUse::Id) => "ID".into(),
                    (_, TokenUse::Access) => "access".into(),
                    (_, TokenUse::Any) => "ID or access".into(),
                },
            });
        }
        let audience_claim = if token_use == Some("access") {
            "client_id"
        } else {
            "aud"
        };
        let presented: Vec<&str> = match claims.get(audience_claim) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(a)) => vec![a.as_str()],
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
            Some(_) => return Err(AuthError::Audience),
        };
        let ok = if self.rules.audiences.is_empty() {
            presented.is_empty()
        } else {
            presented
                .iter()
                .any(|a| self.rules.audiences.iter().any(|want| want == a))
        };
        if ok { Ok(()) } else { Err(AuthError::Audience) }
    }

    fn identity(
        &self,
        claims: &HashMap<String, Value>,
        signer: Signer,
        exp: u64,
    ) -> Result<Identity, AuthError> {
        let rules = &self.rules;
        let role = self.role(claims, signer)?;
        let tenant = match claims.get(&rules.tenant_claim) {
            Some(Value::String(t)) => Some(t.as_str()),
            None | Some(Value::Null) if role == Role::Relay => None,
            Some(_) => {
                return Err(AuthError::BadClaim {
                    claim: rules.tenant_claim.clone(),
                    reason: "it must be a string".into(),
                });
            }
            None => return Err(AuthError::MissingTenant(rules.tenant_claim.clone())),
        };
        let service = match claims.get(&rules.service_claim) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.as_str()),
            Some(_) => {
                return Err(AuthError::BadClaim {
                    claim: rules.service_claim.clone(),
                    reason: "it must be a string".into(),
                });
            }
        };
        let scope = match tenant {
            Some(t) => Some(Scope::new(t, service)?),
            None => None,
        };
        Ok(Identity {
            scope,
            role,
            subject: claims
                .get("sub")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            expires_at: Some(expiry_time(exp, rules.leeway)),
        })
    }
}

impl Authenticator {
    /// The role a token proves. From the server's own key: its role claim as
    /// written. From an identity provider: the declared admin-only role claim if the
    /// token has it (never `relay`), else the most capable group that names a role.
    /// Else reader.
    fn role(&self, claims: &HashMap<String, Value>, signer: Signer) -> Result<Role, AuthError> {
        let claim = match signer {
            Signer::ThisServer => Some(local::ROLE_CLAIM),
            Signer::IdentityProvider => self.rules.role_claim.as_deref(),
        };
        if let Some(claim) = claim {
            match claims.get(claim) {
                Some(Value::String(r)) => {
                    let role = Role::parse(r).ok_or_else(|| AuthError::UnknownRole(clip(r)))?;
                    if role == Role::Relay && signer == Signer::IdentityProvider {
                        return Err(AuthError::RelayFromAttribute(claim.to_owned()));
                    }
                    return Ok(role);
                }
                None | Some(Value::Null) => {}
                Some(_) => {
                    return Err(AuthError::BadClaim {
                        claim: claim.to_owned(),
                        reason: "it must be a string".into(),
                    });
                }
            }
        }
        let from_groups = match signer {
            Signer::ThisServer => None,
            Signer::IdentityProvider => claims
                .get("cognito:groups")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|g| g.as_str().and_then(Role::parse))
                .max_by_key(Role::rank),
        };
        Ok(from_groups.unwrap_or(Role::Reader))
    }
}

/// A NumericDate claim (`exp`, `nbf`, `iat`): absent, or a date no later than
/// [`MAX_NUMERIC_DATE`]. Anything else is refused, so no later arithmetic on it can
/// overflow.
fn date_claim(claims: &HashMap<String, Value>, name: &str) -> Result<Option<u64>, AuthError> {
    let Some(v) = claims.get(name) else {
        return Ok(None);
    };
    match numeric_date(v) {
        Some(secs) if secs <= MAX_NUMERIC_DATE => Ok(Some(secs)),
        Some(_) => Err(AuthError::BadClaim {
            claim: name.to_owned(),
            reason: "it is later than the year 9999".into(),
        }),
        None => Err(AuthError::BadClaim {
            claim: name.to_owned(),
            reason: "it must be a number of seconds since 1970".into(),
        }),
    }
}

/// When a token with this `exp` stops being accepted (exp plus the allowed clock
/// skew), the moment a Watch opened with it ends. Saturates instead of overflowing.
fn expiry_time(exp: u64, leeway: Duration) -> SystemTime {
    let at = |secs: u64| UNIX_EPOCH.checked_add(Duration::from_secs(secs));
    at(exp.min(MAX_NUMERIC_DATE))
        .and_then(|t| t.checked_add(leeway))
        .or_else(|| at(MAX_NUMERIC_DATE))
        .unwrap_or(UNIX_EPOCH)
}

/// A NumericDate claim as `jsonwebtoken` reads it for validation: an unsigned
/// integer, or a finite non-negative number below 2^64, rounded. (Reading only
/// integers would give a token with `"exp": 1.8e9` a Watch that never expires.)
fn numeric_date(v: &Value) -> Option<u64> {
    if let Some(n) = v.as_u64() {
        return Some(n);
    }
    let f = v.as_f64()?;
    (f.is_finite() && f >= 0.0 && f < u64::MAX as f64).then(|| f.round() as u64)
}

fn map_jwt_error(e: jsonwebtoken::errors::Error) -> AuthError {
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
fn unreadable(e: &jsonwebtoken::errors::Error) -> AuthError {
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
    use super::*;
    use std::sync::RwLock;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use ed25519_dalek::SigningKey;
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    use jsonwebtoken::EncodingKey;
    use serde_json::json;

    /// A key source with one Ed25519 key that counts its uses and can drop its key.
    struct TestKeys {
        encoding: EncodingKey,
        key: RwLock<Option<Arc<VerifyKey>>>,
        calls: AtomicUsize,
        signer: Signer,
    }

    impl TestKeys {
        /// Keys of this server's own kind.
        fn new() -> Result<Arc<Self>, Box<dyn std::error::Error>> {
            Self::signed_by(Signer::ThisServer)
        }

        fn signed_by(signer: Signer) -> Result<Arc<Self>, Box<dyn std::error::Error>> {
            let signing = SigningKey::from_bytes(&[7u8; 32]);
            let der = signing.to_pkcs8_der()?;
            Ok(Arc::new(TestKeys {
                encoding: EncodingKey::from_ed_der(der.as_bytes()),
                key: RwLock::new(Some(Arc::new(VerifyKey {
                    key: DecodingKey::from_ed_der(&signing.verifying_key().to_bytes()),
                    algorithms: vec![Algorithm::EdDSA],
                }))),
                calls: AtomicUsize::new(0),
                signer,
            }))
        }

        fn sign(&self, claims: &Value) -> Result<String, jsonwebtoken::errors::Error> {
            self.sign_with(&Header::new(Algorithm::EdDSA), claims)
        }

        fn sign_with(
            &self,
            header: &Header,
            claims: &Value,
        ) -> Result<String, jsonwebtoken::errors::Error> {
            jsonwebtoken::encode(header, claims, &self.encoding)
        }

        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }

        fn drop_key(&self) {
            *self.key.write().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }

    #[async_trait]
    impl KeySource for TestKeys {
        async fn key_for(&self, _: &Header) -> Result<Arc<VerifyKey>, AuthError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.key
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .ok_or(AuthError::UnknownKey(None))
        }

        fn signer(&self) -> Signer {
            self.signer
        }
    }

    fn now() -> u64 {
        cache::now_secs().unwrap_or(0)
    }

    fn claims(exp: u64) -> Value {
        json!({"iss": "configwatch", "sub": "user-1", "exp": exp, "custom:tenantId": "acme", "custom:role": "writer"})
    }

    fn auth(keys: &Arc<TestKeys>, leeway: u64, capacity: usize) -> Authenticator {
        let rules = ClaimRules {
            leeway: Duration::from_secs(leeway),
            ..ClaimRules::default()
        };
        Authenticator::with_cache_capacity(keys.clone(), rules, capacity)
    }

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// The cache's time rule is jsonwebtoken's: around both edges, a full
    /// verification and `check_time` agree to the second.
    #[tokio::test]
    async fn the_cached_time_rule_matches_a_full_verification_at_the_edges() -> TestResult {
        let keys = TestKeys::new()?;
        let uncached = auth(&keys, 5, 0);
        for d in -8i64..=8 {
            loop {
                let now = now();
                let exp = now.saturating_add_signed(d);
                let by_exp = uncached.verify(&keys.sign(&claims(exp))?).await.map(|_| ());
                let nbf = now.saturating_add_signed(d);
                let mut c = claims(now + 3600);
                c["nbf"] = json!(nbf);
                let by_nbf = uncached.verify(&keys.sign(&c)?).await.map(|_| ());
                if cache::now_secs() != Some(now) {
                    continue; // the second changed meanwhile: measure again
                }
                assert_eq!(by_exp, cache::check_time(exp, None, now, 5), "exp now{d:+}");
                assert_eq!(
                    by_nbf,
                    cache::check_time(now + 3600, Some(nbf), now, 5),
                    "nbf now{d:+}"
                );
                break;
            }
        }
        Ok(())
    }

    #[tokio::test]
    async fn a_cached_token_skips_the_key_and_signature_check() -> TestResult {
        let keys = TestKeys::new()?;
        let auth = auth(&keys, 5, 100);
        let token = keys.sign(&claims(now() + 600))?;
        let first = auth.verify(&token).await?;
        let second = auth.verify(&token).await?;
        assert_eq!(first, second);
        assert_eq!(keys.calls(), 1, "the second call was served by the cache");
        assert_eq!(auth.cached_tokens(), 1);
        Ok(())
    }

    #[tokio::test]
    async fn a_cached_token_is_refused_once_expired() -> TestResult {
        let keys = TestKeys::new()?;
        // No leeway, so the test waits two seconds, not seven (two, not one, so a
        // slow first verification cannot see the token expire already).
        let auth = auth(&keys, 0, 100);
        let exp = now() + 2;
        let token = keys.sign(&claims(exp))?;
        auth.verify(&token).await?;
        assert_eq!(auth.cached_tokens(), 1);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while now() <= exp && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(auth.verify(&token).await, Err(AuthError::Expired));
        assert_eq!(keys.calls(), 1, "refused by the cached entry's exp");
        assert_eq!(auth.cached_tokens(), 0, "and the entry is gone");
        // A full verification says the same.
        assert_eq!(auth.verify(&token).await, Err(AuthError::Expired));
        Ok(())
    }

    #[tokio::test]
    async fn a_cached_token_is_refused_before_nbf_and_after_exp_by_the_cache() -> TestResult {
        let keys = TestKeys::new()?;
        let auth = auth(&keys, 5, 100);
        let now = now();
        let mut c = claims(now + 600);
        c["nbf"] = json!(now);
        let token = keys.sign(&c)?;
        auth.verify(&token).await?;
        let digest = cache::digest(&token);
        // At the edges: valid from nbf - leeway through exp + leeway.
        assert!(matches!(
            auth.cache.lookup(&digest, now - 5, 5),
            Lookup::Hit(_)
        ));
        assert!(matches!(
            auth.cache.lookup(&digest, now + 605, 5),
            Lookup::Hit(_)
        ));
        // A clock stepped back: not yet valid.
        assert!(matches!(
            auth.cache.lookup(&digest, now - 6, 5),
            Lookup::Refused(AuthError::NotYetValid)
        ));
        auth.verify(&token).await?;
        // Past exp + leeway: expired.
        assert!(matches!(
            auth.cache.lookup(&digest, now + 606, 5),
            Lookup::Refused(AuthError::Expired)
        ));
        Ok(())
    }

    #[tokio::test]
    async fn a_tampered_token_is_verified_in_full_and_refused() -> TestResult {
        let keys = TestKeys::new()?;
        let auth = auth(&keys, 5, 100);
        let token = keys.sign(&claims(now() + 600))?;
        auth.verify(&token).await?;
        let parts: Vec<&str> = token.split('.').collect();
        let mut forged = claims(now() + 600);
        forged["custom:tenantId"] = json!("other-tenant");
        let payload = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            forged.to_string(),
        );
        let tampered = format!("{}.{payload}.{}", parts[0], parts[2]);
        assert_eq!(auth.verify(&tampered).await, Err(AuthError::BadSignature));
        // One character of the signature changed.
        let mut sig = parts[2].to_owned();
        let last = if sig.ends_with('A') { "B" } else { "A" };
        sig.replace_range(sig.len() - 1.., last);
        let resigned = format!("{}.{}.{sig}", parts[0], parts[1]);
        assert!(auth.verify(&resigned).await.is_err());
        assert_eq!(keys.calls(), 3, "both went through the full check");
        assert_eq!(auth.cached_tokens(), 1, "refusals are not cached");
        Ok(())
    }

    #[tokio::test]
    async fn failures_are_not_cached() -> TestResult {
        let keys = TestKeys::new()?;
        let auth = auth(&keys, 5, 100);
        let expired = keys.sign(&claims(now() - 600))?;
        for _ in 0..3 {
            assert_eq!(auth.verify(&expired).await, Err(AuthError::Expired));
        }
        assert_eq!(keys.calls(), 3);
        assert_eq!(auth.cached_tokens(), 0);
        Ok(())
    }

    #[tokio::test]
    async fn a_cached_token_stops_working_when_its_key_is_dropped() -> TestResult {
        let keys = TestKeys::new()?;
        let auth = auth(&keys, 5, 100);
        let token = keys.sign(&claims(now() + 600))?;
        auth.verify(&token).await?;
        keys.drop_key();
        assert_eq!(
            auth.verify(&token).await,
            Err(AuthError::UnknownKey(None)),
            "the cached entry died with its key"
        );
        assert_eq!(keys.calls(), 2);
        Ok(())
    }

    #[tokio::test]
    async fn a_flood_of_distinct_valid_tokens_stays_within_the_bound() -> TestResult {
        let keys = TestKeys::new()?;
        let auth = auth(&keys, 5, 64);
        let busy = keys.sign(&claims(now() + 600))?;
        for i in 0..400 {
            let mut c = claims(now() + 600);
            c["sub"] = json!(format!("flood-{i}"));
            auth.verify(&keys.sign(&c)?).await?;
            auth.verify(&busy).await?;
            assert!(auth.cached_tokens() <= 64, "{}", auth.cached_tokens());
        }
        // 400 flood tokens and the busy one, each verified in full once.
        assert_eq!(keys.calls(), 401);
        Ok(())
    }

    #[tokio::test]
    async fn a_fractional_exp_still_ends_watches() -> TestResult {
        let keys = TestKeys::new()?;
        let auth = auth(&keys, 5, 100);
        let exp = now() + 600;
        let token = keys.sign(
            &json!({"iss": "configwatch", "exp": exp as f64 + 0.4, "custom:tenantId": "acme"}),
        )?;
        let id = auth.verify(&token).await?;
        assert_eq!(
            id.expires_at,
            Some(UNIX_EPOCH + Duration::from_secs(exp + 5))
        );
        Ok(())
    }
    /// Claims of a Cognito-style ID token: an identity provider's, with `token_use`.
    fn provider_claims(exp: u64) -> Value {
        json!({
            "iss": "https://idp.test", "sub": "user-1", "token_use": "id", "exp": exp,
            "custom:tenantId": "acme",
        })
    }

    fn provider_auth(keys: &Arc<TestKeys>, rules: ClaimRules) -> Authenticator {
        Authenticator::with_cache_capacity(keys.clone(), rules, 100)
    }

    fn provider_rules() -> ClaimRules {
        ClaimRules {
            issuers: vec!["https://idp.test".into()],
            ..ClaimRules::default()
        }
    }

    fn bad_claim(e: &Result<Identity, AuthError>, name: &str) -> bool {
        matches!(e, Err(AuthError::BadClaim { claim, .. }) if claim == name)
    }

    /// exp, nbf and iat far in the future (up to and past 2^63 and 2^64 seconds) are
    /// refused, not turned into a time that overflows.
    #[tokio::test]
    async fn dates_past_the_year_9999_are_refused_without_a_panic() -> TestResult {
        let keys = TestKeys::new()?;
        let auth = auth(&keys, 5, 100);
        for huge in [
            json!(MAX_NUMERIC_DATE + 1),
            json!(i64::MAX as u64 - 5),
            json!(i64::MAX as u64),
            json!(i64::MAX as u64 + 1),
            json!(u64::MAX),
            json!(1.8e19),
            json!(1e300),
        ] {
            let c = claims(0);
            let mut by_exp = c.clone();
            by_exp["exp"] = huge.clone();
            let r = auth.verify(&keys.sign(&by_exp)?).await;
            // 1e300 is over u64: jsonwebtoken itself calls it malformed.
            assert!(
                bad_claim(&r, "exp") || matches!(r, Err(AuthError::Malformed(_))),
                "exp {huge}: {r:?}"
            );
            let mut by_iat = claims(now() + 600);
            by_iat["iat"] = huge.clone();
            let r = auth.verify(&keys.sign(&by_iat)?).await;
            assert!(bad_claim(&r, "iat"), "iat {huge}: {r:?}");
            let mut by_nbf = claims(now() + 600);
            by_nbf["nbf"] = huge.clone();
            let r = auth.verify(&keys.sign(&by_nbf)?).await;
            assert!(
                matches!(r, Err(AuthError::NotYetValid | AuthError::Malformed(_))),
                "nbf {huge}: {r:?}"
            );
        }
        // The last second of 9999 is a date like any other, and a Watch can end then.
        let id = auth.verify(&keys.sign(&claims(MAX_NUMERIC_DATE))?).await?;
        assert_eq!(
            id.expires_at,
            Some(UNIX_EPOCH + Duration::from_secs(MAX_NUMERIC_DATE + 5))
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_huge_leeway_is_cut_to_the_maximum() -> TestResult {
        let keys = TestKeys::new()?;
        let rules = ClaimRules {
            leeway: Duration::MAX,
            ..ClaimRules::default()
        };
        let auth = Authenticator::new(keys.clone(), rules);
        let exp = now() + 600;
        let id = auth.verify(&keys.sign(&claims(exp))?).await?;
        assert_eq!(
            id.expires_at,
            Some(UNIX_EPOCH + Duration::from_secs(exp) + MAX_LEEWAY)
        );
        assert_eq!(
            auth.verify(&keys.sign(&claims(now() - 7200))?).await,
            Err(AuthError::Expired)
        );
        Ok(())
    }

    #[test]
    fn the_expiry_time_saturates() {
        let latest = UNIX_EPOCH + Duration::from_secs(MAX_NUMERIC_DATE);
        assert_eq!(expiry_time(u64::MAX, Duration::ZERO), latest);
        assert_eq!(
            expiry_time(u64::MAX, Duration::MAX),
            latest,
            "an overflow saturates"
        );
        assert_eq!(
            expiry_time(100, Duration::from_secs(5)),
            UNIX_EPOCH + Duration::from_secs(105)
        );
    }

    #[tokio::test]
    async fn an_issuer_that_is_missing_or_not_one_string_is_refused() -> TestResult {
        for signer in [Signer::ThisServer, Signer::IdentityProvider] {
            let keys = TestKeys::signed_by(signer)?;
            let (auth, good) = match signer {
                Signer::ThisServer => (auth(&keys, 5, 100), claims(now() + 600)),
                Signer::IdentityProvider => (
                    provider_auth(&keys, provider_rules()),
                    provider_claims(now() + 600),
                ),
            };
            auth.verify(&keys.sign(&good)?).await?;
            let iss = good["iss"].clone();
            for (bad, want) in [
                (None, AuthError::IssuerMissing),
                (Some(json!([iss])), AuthError::IssuerMissing),
                (
                    Some(json!([iss, "https://evil.test"])),
                    AuthError::IssuerMissing,
                ),
                (Some(json!(42)), AuthError::IssuerMissing),
                (Some(json!(null)), AuthError::IssuerMissing),
                (Some(json!({"iss": iss})), AuthError::IssuerMissing),
                (Some(json!("https://evil.test")), AuthError::Issuer),
            ] {
                let mut c = good.clone();
                match &bad {
                    None => {
                        c.as_object_mut().map(|m| m.remove("iss"));
                    }
                    Some(v) => c["iss"] = v.clone(),
                }
                assert_eq!(
                    auth.verify(&keys.sign(&c)?).await,
                    Err(want),
                    "{signer:?} iss {bad:?}"
                );
            }
        }
        // With no issuer configured, the server's own key still requires its own.
        let keys = TestKeys::new()?;
        let auth = auth(&keys, 5, 100);
        let mut c = claims(now() + 600);
        c["iss"] = json!("https://idp.test");
        assert_eq!(auth.verify(&keys.sign(&c)?).await, Err(AuthError::Issuer));
        Ok(())
    }

    #[tokio::test]
    async fn a_crit_header_is_refused() -> TestResult {
        let keys = TestKeys::new()?;
        let auth = auth(&keys, 5, 100);
        for crit in [vec!["exp".to_owned()], vec!["b64".to_owned()], vec![]] {
            let mut header = Header::new(Algorithm::EdDSA);
            header.crit = Some(crit.clone());
            let token = keys.sign_with(&header, &claims(now() + 600))?;
            assert_eq!(
                auth.verify(&token).await,
                Err(AuthError::CriticalExtension),
                "{crit:?}"
            );
        }
        Ok(())
    }

    #[tokio::test]
    async fn a_provider_token_without_token_use_is_refused_and_own_tokens_have_none() -> TestResult
    {
        let keys = TestKeys::signed_by(Signer::IdentityProvider)?;
        for token_use in [TokenUse::Any, TokenUse::Id, TokenUse::Access] {
            let rules = ClaimRules {
                token_use,
                ..provider_rules()
            };
            let auth = provider_auth(&keys, rules);
            for bad in [None, Some(json!("refresh")), Some(json!(7))] {
                let mut c = provider_claims(now() + 600);
                match &bad {
                    None => {
                        c.as_object_mut().map(|m| m.remove("token_use"));
                    }
                    Some(v) => c["token_use"] = v.clone(),
                }
                let r = auth.verify(&keys.sign(&c)?).await;
                assert!(
                    matches!(
                        r,
                        Err(AuthError::TokenUse { .. } | AuthError::BadClaim { .. })
                    ),
                    "{token_use:?} {bad:?}: {r:?}"
                );
            }
        }
        let any = provider_auth(&keys, provider_rules());
        any.verify(&keys.sign(&provider_claims(now() + 600))?)
            .await?;

        // The server's own tokens carry none, whatever --token-use says; one that
        // carries one was not made by `configwatch token`.
        let own = TestKeys::new()?;
        let rules = ClaimRules {
            token_use: TokenUse::Id,
            ..ClaimRules::default()
        };
        let auth = Authenticator::new(own.clone(), rules);
        auth.verify(&own.sign(&claims(now() + 600))?).await?;
        let mut typed = claims(now() + 600);
        typed["token_use"] = json!("id");
        assert!(matches!(
            auth.verify(&own.sign(&typed)?).await,
            Err(AuthError::TokenUse { .. })
        ));
        Ok(())
    }

    #[tokio::test]
    async fn provider_roles_come_from_groups_or_the_declared_claim_and_never_relay_from_a_claim()
    -> TestResult {
        let keys = TestKeys::signed_by(Signer::IdentityProvider)?;
        let role_of = |auth: Authenticator, extra: Value| {
            let keys = keys.clone();
            async move {
                let mut c = provider_claims(now() + 600);
                if let (Some(m), Some(e)) = (c.as_object_mut(), extra.as_object()) {
                    m.extend(e.clone());
                }
                auth.verify(&keys.sign(&c)?)
                    .await
                    .map(|id| id.role)
                    .map_err(|e| -> Box<dyn std::error::Error> { Box::new(e) })
            }
        };
        let default = || provider_auth(&keys, provider_rules());
        let declared = || {
            provider_auth(
                &keys,
                ClaimRules {
                    role_claim: Some("custom:role".into()),
                    ..provider_rules()
                },
            )
        };
        // By default an attribute is not a role, whatever it says.
        for r in ["relay", "admin", "writer"] {
            assert_eq!(
                role_of(default(), json!({"custom:role": r})).await?,
                Role::Reader
            );
        }
        assert_eq!(
            role_of(default(), json!({"cognito:groups": ["staff", "relay"]})).await?,
            Role::Relay
        );
        assert_eq!(
            role_of(default(), json!({"cognito:groups": ["relay", "writer"]})).await?,
            Role::Writer
        );
        // A declared admin-only claim gives roles, except relay, and wins over groups.
        assert_eq!(
            role_of(declared(), json!({"custom:role": "writer"})).await?,
            Role::Writer
        );
        assert_eq!(
            role_of(
                declared(),
                json!({"custom:role": "reader", "cognito:groups": ["admin"]})
            )
            .await?,
            Role::Reader
        );
        assert_eq!(
            role_of(declared(), json!({"cognito:groups": ["relay"]})).await?,
            Role::Relay
        );
        let mut c = provider_claims(now() + 600);
        c["custom:role"] = json!("relay");
        c["cognito:groups"] = json!(["relay"]);
        assert_eq!(
            declared().verify(&keys.sign(&c)?).await,
            Err(AuthError::RelayFromAttribute("custom:role".into()))
        );
        // The server's own tokens: the role claim as written, relay included.
        let own = TestKeys::new()?;
        let auth = auth(&own, 5, 100);
        let mut relay = claims(now() + 600);
        relay["custom:role"] = json!("relay");
        assert_eq!(auth.verify(&own.sign(&relay)?).await?.role, Role::Relay);
        Ok(())
    }

    /// Whatever a caller sends, a refusal repeats at most a few dozen characters of
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

    /// The path a fuzzer drives: no input makes it panic.
    #[tokio::test]
    async fn arbitrary_input_is_refused_without_a_panic() -> TestResult {
        let dir = tempfile::tempdir()?;
        let (key, _) = local::LocalKey::load_or_create(dir.path())?;
        let auth = Authenticator::new(Arc::new(key), ClaimRules::default());
        let b64 =
            |s: &str| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, s);
        let inputs = [
            String::new(),
            ".".into(),
            "..".into(),
            "...".into(),
            "a.b.c".into(),
            "\u{0}.\u{ffff}.é".into(),
            format!("{}.{}.", b64(r#"{"alg":"EdDSA"}"#), b64("{}")),
            format!("{}.{}.x", b64(r#"{"alg":"EdDSA","crit":7}"#), b64("[]")),
            format!("{}.{}.x", b64(r#"{"alg":"none"}"#), b64(r#"{"exp":1e400}"#)),
            format!("{}.{}.x", b64("null"), b64("null")),
            format!("{}.{}.x", b64(r#"{"alg":"EdDSA","kid":null}"#), b64("")),
        ];
        for input in inputs {
            assert!(auth.verify(&input).await.is_err(), "{input:?}");
        }
        Ok(())
    }
}
