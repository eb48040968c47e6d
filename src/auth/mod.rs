//! Identity: a bearer JWT, validated completely, becomes an [`Identity`].
//!
//! The tenant comes only from the token (claim `custom:tenantId` by default), never
//! from a request. Validation is split in two: a [`KeySource`] says which key and
//! which algorithms verify a token with a given header (the embedded signing key in
//! [`local`]; a JWKS URL in [`jwks`]), and the [`Authenticator`] checks signature,
//! expiry, issuer and audience and maps claims to an identity. Expiry is read
//! against an injected [`Clock`](crate::clock::Clock), never the system clock
//! directly, so tests move it with tokio's paused time.
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
//!
//! The files: `identity` (roles and the identity a token proves), `error` (why a
//! token is refused, and how much input a refusal may repeat), `key_source` (the
//! trait the keys come through), `claims` (the claim rules: issuer, audience, kind,
//! tenant and role, NumericDate bounds), `authenticator` (header to identity, in
//! order), [`cache`], [`refusals`] (refused tokens counted by reason), and the key
//! sources [`local`] and [`jwks`].

mod authenticator;
pub mod cache;
mod claims;
mod error;
mod identity;
pub mod jwks;
mod key_source;
pub mod local;
pub mod refusals;
#[cfg(test)]
mod testing;

pub use authenticator::Authenticator;
pub use claims::{
    ClaimRules, DEFAULT_LEEWAY, DEFAULT_SERVICE_CLAIM, DEFAULT_TENANT_CLAIM, MAX_LEEWAY,
    MAX_NUMERIC_DATE,
};
pub use error::{AuthError, MAX_ECHO_CHARS};
pub use identity::{Identity, Role, Signer, TokenUse};
pub use key_source::{KeyFetches, KeySource, VerifyKey};
