//! Test support for the auth modules: a key source with one Ed25519 key that counts
//! its uses and can drop its key, and claims and authenticators of both signers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde_json::{Value, json};

use super::{AuthError, Authenticator, ClaimRules, Identity, KeySource, Signer, VerifyKey};
use crate::clock::Clock;

/// A key source with one Ed25519 key that counts its uses and can drop its key.
pub(crate) struct TestKeys {
    encoding: EncodingKey,
    key: RwLock<Option<Arc<VerifyKey>>>,
    calls: AtomicUsize,
    signer: Signer,
}

impl TestKeys {
    /// Keys of this server's own kind.
    pub(crate) fn new() -> Result<Arc<Self>, Box<dyn std::error::Error>> {
        Self::signed_by(Signer::ThisServer)
    }

    pub(crate) fn signed_by(signer: Signer) -> Result<Arc<Self>, Box<dyn std::error::Error>> {
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

    pub(crate) fn sign(&self, claims: &Value) -> Result<String, jsonwebtoken::errors::Error> {
        self.sign_with(&Header::new(Algorithm::EdDSA), claims)
    }

    pub(crate) fn sign_with(
        &self,
        header: &Header,
        claims: &Value,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        jsonwebtoken::encode(header, claims, &self.encoding)
    }

    pub(crate) fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub(crate) fn drop_key(&self) {
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

pub(crate) fn now() -> u64 {
    Clock::system().unix_secs().unwrap_or(0)
}

pub(crate) fn claims(exp: u64) -> Value {
    json!({"iss": "configwatch", "sub": "user-1", "exp": exp, "custom:tenantId": "acme", "custom:role": "writer"})
}

pub(crate) fn auth(keys: &Arc<TestKeys>, leeway: u64, capacity: usize) -> Authenticator {
    let rules = ClaimRules {
        leeway: Duration::from_secs(leeway),
        ..ClaimRules::default()
    };
    Authenticator::with_cache_capacity(keys.clone(), rules, capacity)
}

pub(crate) type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Claims of a Cognito-style ID token: an identity provider's, with `token_use`.
pub(crate) fn provider_claims(exp: u64) -> Value {
    json!({
        "iss": "https://idp.test", "sub": "user-1", "token_use": "id", "exp": exp,
        "custom:tenantId": "acme",
    })
}

pub(crate) fn provider_auth(keys: &Arc<TestKeys>, rules: ClaimRules) -> Authenticator {
    Authenticator::with_cache_capacity(keys.clone(), rules, 100)
}

pub(crate) fn provider_rules() -> ClaimRules {
    ClaimRules {
        issuers: vec!["https://idp.test".into()],
        ..ClaimRules::default()
    }
}

pub(crate) fn bad_claim(e: &Result<Identity, AuthError>, name: &str) -> bool {
    matches!(e, Err(AuthError::BadClaim { claim, .. }) if claim == name)
}
