//! Identity: a bearer JWT, validated completely, becomes an [`Identity`].
//!
//! The tenant comes only from the token (claim `custom:tenantId` by default), never
//! from a request. Validation is split in two: a [`KeySource`] says which key and
//! which algorithms verify a token with a given header (the embedded signing key in
//! [`local`]; a JWKS URL later), and the [`Authenticator`] checks signature, expiry,
//! issuer and audience and maps claims to an identity.

pub mod jwks;
pub mod local;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use serde_json::Value;

use crate::model::{IdError, Scope};

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
}

impl Authenticator {
    pub fn new(keys: Arc<dyn KeySource>, rules: ClaimRules) -> Self {
        Authenticator { keys, rules }
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

    /// Validates a token: signature, algorithm, exp, nbf, iss, aud, then claims.
    pub async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
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
        self.identity(&data.claims)
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
        let expires_at = claims
            .get("exp")
            .and_then(Value::as_u64)
            .map(|s| UNIX_EPOCH + Duration::from_secs(s) + rules.leeway);
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
