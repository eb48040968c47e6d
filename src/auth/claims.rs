//! The claim rules: which claims carry the tenant, service and role, which issuers,
//! audiences and token kinds are accepted, and how NumericDate claims are read and
//! bounded. [`ClaimRules`] turns the claims of a token whose signature verified
//! into an [`Identity`] or a refusal.
//!
//! Knows nothing of keys or signatures (see [`super::authenticator`]).

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::error::clip;
use super::{AuthError, Identity, Role, Signer, TokenUse, local};
use crate::model::Scope;

/// The most clock skew allowed on `exp` and `nbf`.
pub const MAX_LEEWAY: Duration = Duration::from_secs(3600);

/// The latest NumericDate accepted (9999-12-31T23:59:59Z): `exp`, `nbf` and `iat`
/// later than this are refused as malformed rather than turned into a time.
pub const MAX_NUMERIC_DATE: u64 = 253_402_300_799;

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

/// The claim naming the tenant, unless configured.
pub const DEFAULT_TENANT_CLAIM: &str = "custom:tenantId";
/// The claim narrowing a token to one service, unless configured.
pub const DEFAULT_SERVICE_CLAIM: &str = "custom:service";

/// The clock skew allowed on `exp` and `nbf`, unless configured.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(5);

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

impl ClaimRules {
    /// `iss` must be one string, and one of the accepted issuers.
    pub(super) fn check_issuer(
        &self,
        claims: &HashMap<String, Value>,
        signer: Signer,
    ) -> Result<(), AuthError> {
        let Some(Value::String(iss)) = claims.get("iss") else {
            return Err(AuthError::IssuerMissing);
        };
        let trusted = if !self.issuers.is_empty() {
            self.issuers.iter().any(|want| want == iss)
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

    pub(super) fn check_kind_and_audience(
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
            Signer::IdentityProvider => match self.token_use {
                TokenUse::Id => token_use == Some("id"),
                TokenUse::Access => token_use == Some("access"),
                TokenUse::Any => matches!(token_use, Some("id") | Some("access")),
            },
        };
        if !accepted {
            return Err(AuthError::TokenUse {
                found: token_use.map_or_else(|| "(none)".to_owned(), clip),
                accepted: match (signer, self.token_use) {
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
        let ok = if self.audiences.is_empty() {
            presented.is_empty()
        } else {
            presented
                .iter()
                .any(|a| self.audiences.iter().any(|want| want == a))
        };
        if ok { Ok(()) } else { Err(AuthError::Audience) }
    }

    pub(super) fn identity(
        &self,
        claims: &HashMap<String, Value>,
        signer: Signer,
        exp: u64,
    ) -> Result<Identity, AuthError> {
        let role = self.role(claims, signer)?;
        let tenant = match claims.get(&self.tenant_claim) {
            Some(Value::String(t)) => Some(t.as_str()),
            None | Some(Value::Null) if role == Role::Relay => None,
            Some(_) => {
                return Err(AuthError::BadClaim {
                    claim: self.tenant_claim.clone(),
                    reason: "it must be a string".into(),
                });
            }
            None => return Err(AuthError::MissingTenant(self.tenant_claim.clone())),
        };
        let service = match claims.get(&self.service_claim) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.as_str()),
            Some(_) => {
                return Err(AuthError::BadClaim {
                    claim: self.service_claim.clone(),
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
            client_id: match signer {
                Signer::ThisServer => None,
                Signer::IdentityProvider => client_id(claims),
            },
            expires_at: Some(expiry_time(exp, self.leeway)),
        })
    }

    /// The role a token proves. From the server's own key: its role claim as
    /// written. From an identity provider: the declared admin-only role claim if the
    /// token has it (never `relay`), else the most capable group that names a role.
    /// Else reader.
    pub(super) fn role(
        &self,
        claims: &HashMap<String, Value>,
        signer: Signer,
    ) -> Result<Role, AuthError> {
        let claim = match signer {
            Signer::ThisServer => Some(local::ROLE_CLAIM),
            Signer::IdentityProvider => self.role_claim.as_deref(),
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
pub(super) fn date_claim(
    claims: &HashMap<String, Value>,
    name: &str,
) -> Result<Option<u64>, AuthError> {
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

/// The exp/nbf rule, the one `jsonwebtoken` 11's `validate` applies with
/// `validate_exp`, `validate_nbf`, `leeway` and no `reject_tokens_expiring_in_less_than`
/// (it is checked here instead, against the injected clock, because `jsonwebtoken`
/// reads the system clock itself): expired when `exp < now - leeway`, not yet valid
/// when `nbf > now + leeway`, checked in that order. A unit test compares it with
/// `jsonwebtoken` itself around both edges; the token cache replays it on every hit.
pub(crate) fn check_time(
    exp: u64,
    nbf: Option<u64>,
    now: u64,
    leeway: u64,
) -> Result<(), AuthError> {
    if exp < now.saturating_sub(leeway) {
        return Err(AuthError::Expired);
    }
    if nbf.is_some_and(|nbf| nbf > now.saturating_add(leeway)) {
        return Err(AuthError::NotYetValid);
    }
    Ok(())
}

/// `exp` and `nbf` as the time rule reads them, with `jsonwebtoken`'s refusals: an
/// `exp` it cannot read it calls missing (a required claim, checked while decoding),
/// an `nbf` it cannot read has the wrong type. Not yet bounded by
/// [`MAX_NUMERIC_DATE`]: the time rule comes first, as it did inside `jsonwebtoken`.
pub(super) fn time_claims(
    claims: &HashMap<String, Value>,
) -> Result<(u64, Option<u64>), AuthError> {
    let exp = claims
        .get("exp")
        .and_then(numeric_date)
        .ok_or_else(|| AuthError::malformed("the 'exp' claim is required"))?;
    let nbf = match claims.get("nbf") {
        None => None,
        Some(v) => Some(
            numeric_date(v)
                .ok_or_else(|| AuthError::malformed("the 'nbf' claim has the wrong type"))?,
        ),
    };
    Ok((exp, nbf))
}

/// When a token with this `exp` stops being accepted (exp plus the allowed clock
/// skew), the moment a Watch opened with it ends. Saturates instead of overflowing.
pub(super) fn expiry_time(exp: u64, leeway: Duration) -> SystemTime {
    let at = |secs: u64| UNIX_EPOCH.checked_add(Duration::from_secs(secs));
    at(exp.min(MAX_NUMERIC_DATE))
        .and_then(|t| t.checked_add(leeway))
        .or_else(|| at(MAX_NUMERIC_DATE))
        .unwrap_or(UNIX_EPOCH)
}

/// A NumericDate claim as `jsonwebtoken` reads it for validation: an unsigned
/// integer, or a finite non-negative number below 2^64, rounded. (Reading only
/// integers would give a token with `"exp": 1.8e9` a Watch that never expires.)
pub(super) fn numeric_date(v: &Value) -> Option<u64> {
    if let Some(n) = v.as_u64() {
        return Some(n);
    }
    let f = v.as_f64()?;
    (f.is_finite() && f >= 0.0 && f < u64::MAX as f64).then(|| f.round() as u64)
}

/// The app client an identity provider's token was issued to: `client_id` of an
/// access token, else `aud` (its first entry when it is a list).
fn client_id(claims: &HashMap<String, Value>) -> Option<String> {
    let claim = match claims.get("token_use") {
        Some(Value::String(u)) if u == "access" => "client_id",
        _ => "aud",
    };
    let id = match claims.get(claim)? {
        Value::String(a) => a.as_str(),
        Value::Array(items) => items.iter().find_map(Value::as_str)?,
        _ => return None,
    };
    (!id.is_empty()).then(|| clip(id))
}

#[cfg(test)]
mod tests;
