//! Identity: a bearer JWT, validated completely, becomes an [`Identity`].
//!
//! The tenant comes only from the token (claim `custom:tenantId` by default), never
//! from a request. Validation is split in two: a [`KeySource`] says which key and
//! which algorithms verify a token with a given header (the embedded signing key in
//! [`local`]; a JWKS URL later), and the [`Authenticator`] checks signature, expiry,
//! issuer and audience and maps claims to an identity.

pub mod local;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use serde_json::Value;

use crate::model::{IdError, Scope};

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Get and Watch.
    Reader,
    /// Also Put and Delete.
    Writer,
    /// Everything.
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "reader" => Some(Role::Reader),
            "writer" => Some(Role::Writer),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Writer => "writer",
            Role::Admin => "admin",
        }
    }

    pub fn can_write(&self) -> bool {
        *self >= Role::Writer
    }
}

/// Who is calling, as proven by the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub scope: Scope,
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
    #[error("token role '{0}' is not one of reader, writer, admin")]
    UnknownRole(String),
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
    /// Accepted audiences; empty requires the token to carry none.
    pub audiences: Vec<String>,
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
        if self.rules.audiences.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&self.rules.audiences);
        }
        let data = jsonwebtoken::decode::<HashMap<String, Value>>(token, &key.key, &validation)
            .map_err(map_jwt_error)?;
        if self.rules.audiences.is_empty() && data.claims.contains_key("aud") {
            return Err(AuthError::Audience);
        }
        self.identity(&data.claims)
    }

    fn identity(&self, claims: &HashMap<String, Value>) -> Result<Identity, AuthError> {
        let rules = &self.rules;
        let tenant = match claims.get(&rules.tenant_claim) {
            Some(Value::String(t)) => t.as_str(),
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
        let role = match claims.get(&rules.role_claim) {
            None | Some(Value::Null) => Role::Reader,
            Some(Value::String(r)) => {
                Role::parse(r).ok_or_else(|| AuthError::UnknownRole(r.clone()))?
            }
            Some(_) => {
                return Err(AuthError::BadClaim {
                    claim: rules.role_claim.clone(),
                    reason: "it must be a string".into(),
                });
            }
        };
        // The same moment a unary call starts refusing the token: exp plus leeway.
        let expires_at = claims
            .get("exp")
            .and_then(Value::as_u64)
            .map(|s| UNIX_EPOCH + Duration::from_secs(s) + rules.leeway);
        Ok(Identity {
            scope: Scope::new(tenant, service)?,
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
