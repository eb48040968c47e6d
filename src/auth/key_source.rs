//! Where verification keys come from: the [`KeySource`] trait that the embedded key
//! ([`super::local`]) and a JWKS URL ([`super::jwks`]) implement, and the
//! [`VerifyKey`] each hands out, and what a source that fetches its keys counts
//! ([`KeyFetches`]).

use std::sync::Arc;

use async_trait::async_trait;
use jsonwebtoken::{Algorithm, DecodingKey, Header};

use super::{AuthError, Signer};

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

    /// Whether keys are loaded (a source that fetches them may have none yet).
    fn has_keys(&self) -> bool {
        true
    }

    /// Fetches of the key set made so far, and how many of them failed (none for
    /// a source that fetches nothing).
    fn fetches(&self) -> KeyFetches {
        KeyFetches::default()
    }
}

/// Fetches of a key set so far, for operators.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KeyFetches {
    pub made: u64,
    pub failed: u64,
}
