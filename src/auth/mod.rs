//! Identity: a bearer JWT, validated completely, becomes an [`Identity`].
//!
//! The tenant comes only from the token (claim `custom:tenantId` by default), never
//! from a request. Validation is split in two: a [`KeySource`] says which key and
//! which algorithms verify a token with a given header (the embedded signing key in
//! [`local`]; a JWKS URL later), and the [`Authenticator`] checks signature, expiry,
//! issuer and audience and maps claims to an identity.
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
    /// Either, and tokens without `token_use` (those `configwatch token` signs).
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
        "token kind (token_use) '{found}' is not accepted; this server takes {accepted} tokens"
    )]
    TokenUse { found: String, accepted: String },
    #[error("token keys are unavailable: {0}")]
    KeysUnavailable(String),
}

impl From<IdError> for AuthError {
    fn from(e: IdError) -> Self {
        AuthError::BadClaim {
            claim: e.what.to_owned(),
            reason: e.to_string(),
        }
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
}

/// Which claims carry what, and what else a token must satisfy.
#[derive(Debug, Clone)]
pub struct ClaimRules {
    pub tenant_claim: String,
    pub role_claim: String,
    pub service_claim: String,
    /// Accepted issuers; empty accepts any.
    pub issuers: Vec<String>,
    /// Accepted audiences (app client ids): `aud` of ID tokens, `client_id` of
    /// access tokens. Empty requires the token to carry neither.
    pub audiences: Vec<String>,
    /// Accepted token kinds.
    pub token_use: TokenUse,
    /// Clock skew allowed on exp and nbf.
    pub leeway: Duration,
}

impl Default for ClaimRules {
    fn default() -> Self {
        ClaimRules {
            tenant_claim: "custom:tenantId".into(),
            role_claim: "custom:role".into(),
            service_claim: "custom:service".into(),
            issuers: Vec::new(),
            audiences: Vec::new(),
            token_use: TokenUse::Any,
            leeway: Duration::from_secs(5),
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
    pub fn with_cache_capacity(
        keys: Arc<dyn KeySource>,
        rules: ClaimRules,
        capacity: usize,
    ) -> Self {
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
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Malformed(e.to_string()))?;
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
        let mut validation = Validation::new(header.alg);
        validation.algorithms = key.algorithms.clone();
        // The cache replays exactly this exp/nbf rule (cache::check_time).
        validation.leeway = self.rules.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        if !self.rules.issuers.is_empty() {
            validation.set_issuer(&self.rules.issuers);
        }
        // The audience is checked below: ID tokens carry it in `aud`, access tokens
        // in `client_id`.
        validation.validate_aud = false;
        let data = jsonwebtoken::decode::<HashMap<String, Value>>(token, &key.key, &validation)
            .map_err(map_jwt_error)?;
        self.check_kind_and_audience(&data.claims)?;
        let identity = self.identity(&data.claims)?;
        // exp is required and was parsed by the same rule just now.
        let exp = data
            .claims
            .get("exp")
            .and_then(numeric_date)
            .ok_or_else(|| AuthError::Malformed("the 'exp' claim is required".into()))?;
        Ok(Verified {
            identity,
            exp,
            nbf: data.claims.get("nbf").and_then(numeric_date),
            key: Arc::downgrade(&key),
        })
    }

    fn check_kind_and_audience(&self, claims: &HashMap<String, Value>) -> Result<(), AuthError> {
        let token_use = claims.get("token_use").and_then(Value::as_str);
        let accepted = match self.rules.token_use {
            TokenUse::Id => token_use == Some("id"),
            TokenUse::Access => token_use == Some("access"),
            TokenUse::Any => matches!(token_use, None | Some("id") | Some("access")),
        };
        if !accepted {
            return Err(AuthError::TokenUse {
                found: token_use.unwrap_or("(none)").to_owned(),
                accepted: match self.rules.token_use {
                    TokenUse::Id => "ID".into(),
                    TokenUse::Access => "access".into(),
                    TokenUse::Any => "ID or access".into(),
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

    fn identity(&self, claims: &HashMap<String, Value>) -> Result<Identity, AuthError> {
        let rules = &self.rules;
        let role = self.role(claims)?;
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
        // The same moment a unary call starts refusing the token: exp plus leeway.
        // An exp beyond what the clock can hold is refused, not added up to a panic.
        let expires_at = match claims.get("exp").and_then(numeric_date) {
            None => None,
            Some(s) => Some(
                UNIX_EPOCH
                    .checked_add(Duration::from_secs(s))
                    .and_then(|t| t.checked_add(rules.leeway))
                    .ok_or_else(|| AuthError::BadClaim {
                        claim: "exp".into(),
                        reason: "it is too far in the future".into(),
                    })?,
            ),
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
            expires_at,
        })
    }
}

impl Authenticator {
    /// The role: the role claim if present, else the most capable Cognito group that
    /// names a role, else reader.
    fn role(&self, claims: &HashMap<String, Value>) -> Result<Role, AuthError> {
        let claim = &self.rules.role_claim;
        match claims.get(claim) {
            Some(Value::String(r)) => {
                return Role::parse(r).ok_or_else(|| AuthError::UnknownRole(r.clone()));
            }
            None | Some(Value::Null) => {}
            Some(_) => {
                return Err(AuthError::BadClaim {
                    claim: claim.clone(),
                    reason: "it must be a string".into(),
                });
            }
        }
        let from_groups = claims
            .get("cognito:groups")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|g| g.as_str().and_then(Role::parse))
            .max_by_key(Role::rank);
        Ok(from_groups.unwrap_or(Role::Reader))
    }
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
        K::MissingRequiredClaim(c) => AuthError::Malformed(format!("the '{c}' claim is required")),
        _ => AuthError::Malformed(e.to_string()),
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
    }

    impl TestKeys {
        fn new() -> Result<Arc<Self>, Box<dyn std::error::Error>> {
            let signing = SigningKey::from_bytes(&[7u8; 32]);
            let der = signing.to_pkcs8_der()?;
            Ok(Arc::new(TestKeys {
                encoding: EncodingKey::from_ed_der(der.as_bytes()),
                key: RwLock::new(Some(Arc::new(VerifyKey {
                    key: DecodingKey::from_ed_der(&signing.verifying_key().to_bytes()),
                    algorithms: vec![Algorithm::EdDSA],
                }))),
                calls: AtomicUsize::new(0),
            }))
        }

        fn sign(&self, claims: &Value) -> Result<String, jsonwebtoken::errors::Error> {
            jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), claims, &self.encoding)
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
    }

    fn now() -> u64 {
        cache::now_secs().unwrap_or(0)
    }

    fn claims(exp: u64) -> Value {
        json!({"sub": "user-1", "exp": exp, "custom:tenantId": "acme", "custom:role": "writer"})
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
        let token = keys.sign(&json!({"exp": exp as f64 + 0.4, "custom:tenantId": "acme"}))?;
        let id = auth.verify(&token).await?;
        assert_eq!(
            id.expires_at,
            Some(UNIX_EPOCH + Duration::from_secs(exp + 5))
        );
        Ok(())
    }
    /// Found by the token fuzz target: a correctly signed token whose exp is near
    /// u64::MAX panicked the auth path ("overflow when adding duration to
    /// `SystemTime`"). It is refused, UNAUTHENTICATED, every time (cached or not).
    #[tokio::test]
    async fn an_exp_beyond_the_clock_is_refused_not_a_panic() -> TestResult {
        let keys = TestKeys::new()?;
        let auth = auth(&keys, 5, 4);
        for exp in [u64::MAX, 1 << 63, i64::MAX as u64] {
            let token = keys.sign(&claims(exp))?;
            for _ in 0..2 {
                let refused = auth.verify(&token).await;
                assert!(
                    matches!(&refused, Err(AuthError::BadClaim { claim, .. }) if claim == "exp"),
                    "exp {exp}: {refused:?}"
                );
                let status = tonic::Status::from(refused.err().ok_or("accepted")?);
                assert_eq!(status.code(), tonic::Code::Unauthenticated);
            }
        }
        Ok(())
    }
}
