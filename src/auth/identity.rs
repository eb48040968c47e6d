//! Who a caller is and what it may do: the [`Role`] matrix, the [`Identity`] a
//! validated token proves, and the two facts about a token that decide how far its
//! claims are trusted ([`Signer`]) and which Cognito kinds are accepted ([`TokenUse`]).
//!
//! Pure data: this file knows nothing of tokens' encoding, keys or the clock.

use std::time::SystemTime;

use crate::model::Scope;

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
    pub(super) fn rank(&self) -> u8 {
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

/// Who signs the tokens a [`KeySource`](super::KeySource) verifies, which decides how far their claims
/// are trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signer {
    /// This server's own signing key (`configwatch token`). Only whoever holds the
    /// key file can sign, and every claim is what the operator asked for: the role
    /// claim ([`super::local::ROLE_CLAIM`]) is taken as written, `relay` included. The
    /// issuer must be [`super::local::ISSUER`] (unless others are configured), and there is
    /// no `token_use`: these are not Cognito tokens.
    ThisServer,
    /// An identity provider (a JWKS URL; Amazon Cognito). Users may be able to write
    /// their own attributes, so a role comes only from `cognito:groups` or from the
    /// attribute the operator declared admin-only ([`super::ClaimRules::role_claim`]), and
    /// `relay` only from a group. `token_use` must be present and accepted.
    IdentityProvider,
}

/// Who is calling, as proven by the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The token's tenant (and service). `None` only for a relay token without a
    /// tenant claim: it names the tenant in each request.
    pub scope: Option<Scope>,
    pub role: Role,
    /// The token's `sub`, for logs and a write's history.
    pub subject: String,
    /// The app client the token was issued to, for a write's history: `aud` of an
    /// identity provider's ID token, `client_id` of its access token (the first,
    /// when `aud` lists several). `None` for the server's own tokens.
    pub client_id: Option<String>,
    /// When the token stops being accepted (exp plus the allowed clock skew); a
    /// watch ends then.
    pub expires_at: Option<SystemTime>,
}
