//! The [`Authenticator`]: a bearer token in, an [`Identity`] or an [`AuthError`] out.
//! It reads the header, asks the [`KeySource`] for the key, has `jsonwebtoken`
//! check the signature, then applies the [`ClaimRules`]; verified tokens are
//! remembered in the [`cache`](super::cache).

use std::collections::HashMap;
use std::sync::Arc;

use jsonwebtoken::Validation;
use serde_json::Value;

use super::cache::{self, Lookup, TokenCache, Verified};
use super::claims::{check_time, date_claim, time_claims};
use super::error::{map_jwt_error, unreadable};
use super::refusals::Refusals;
use super::{AuthError, ClaimRules, Identity, KeyFetches, KeySource, MAX_LEEWAY};
use crate::clock::Clock;

/// Turns bearer tokens into identities.
pub struct Authenticator {
    keys: Arc<dyn KeySource>,
    rules: ClaimRules,
    cache: TokenCache,
    /// Wall time for exp and nbf, in full verifications and cache hits alike.
    clock: Clock,
    /// Refused tokens by reason, counted by whoever refuses the call.
    refusals: Refusals,
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
        // More skew than this is a misconfiguration, not a clock (and jsonwebtoken,
        // whose rule ours is, subtracted the leeway from the clock unchecked).
        rules.leeway = rules.leeway.min(MAX_LEEWAY);
        Authenticator {
            keys,
            rules,
            cache: TokenCache::new(capacity),
            clock: Clock::system(),
            refusals: Refusals::default(),
        }
    }

    /// Reads wall time from `clock` instead of the system clock (for tests).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Whether the verification keys are loaded (a JWKS may not be fetched yet).
    pub fn has_keys(&self) -> bool {
        self.keys.has_keys()
    }

    /// Refused tokens by reason.
    pub fn refusals(&self) -> &Refusals {
        &self.refusals
    }

    /// Token cache lookups so far: (answered from the cache, verified in full).
    pub fn token_cache_lookups(&self) -> (u64, u64) {
        self.cache.lookups()
    }

    /// Fetches of the key set so far (a JWKS; none for the embedded key).
    pub fn key_fetches(&self) -> KeyFetches {
        self.keys.fetches()
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
    /// is only checked against the clock, by the same rule. Time is the
    /// authenticator's [`Clock`], never the system's directly.
    pub async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let digest = cache::digest(token);
        let leeway = self.rules.leeway.as_secs();
        if let Some(now) = self.clock.unix_secs() {
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
        // exp and nbf are checked below against our clock (jsonwebtoken reads the
        // system clock); it still requires `exp`.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.set_required_spec_claims(&["exp"]);
        // The issuer is checked below (jsonwebtoken ignores an `iss` it cannot
        // parse, and accepts an array), and so is the audience: ID tokens carry it
        // in `aud`, access tokens in `client_id`.
        validation.validate_aud = false;
        let data = jsonwebtoken::decode::<HashMap<String, Value>>(token, &key.key, &validation)
            .map_err(map_jwt_error)?;
        let claims = &data.claims;
        // The rule jsonwebtoken would apply, at the same point; the cache replays it
        // (claims::check_time).
        let (exp, nbf) = time_claims(claims)?;
        let now = self.clock.unix_secs().unwrap_or(0);
        check_time(exp, nbf, now, self.rules.leeway.as_secs())?;
        self.rules.check_issuer(claims, signer)?;
        let exp = date_claim(claims, "exp")?
            .ok_or_else(|| AuthError::malformed("the 'exp' claim is required"))?;
        let nbf = date_claim(claims, "nbf")?;
        date_claim(claims, "iat")?;
        self.rules.check_kind_and_audience(claims, signer)?;
        let identity = self.rules.identity(claims, signer, exp)?;
        Ok(Verified {
            identity,
            exp,
            nbf,
            key: Arc::downgrade(&key),
        })
    }
}

#[cfg(test)]
mod tests;
