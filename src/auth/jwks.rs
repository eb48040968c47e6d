//! Verification keys from a JWKS URL (Amazon Cognito:
//! `https://cognito-idp.{region}.amazonaws.com/{pool}/.well-known/jwks.json`).
//!
//! Keys are fetched at start and cached by `kid`. A token with an unknown `kid` makes
//! the source fetch the set again (key rotation), but at most once per
//! `min_refetch`, with one fetch in flight at a time: a flood of made-up kids costs
//! the identity provider one request per interval. The set is also refreshed in the
//! background every `refresh`, so removed keys stop verifying. When a fetch fails
//! the cached keys keep serving; only with no keys at all are calls refused
//! (UNAVAILABLE).
//!
//! Only asymmetric algorithms are accepted (RS256 by default). `none` cannot be
//! expressed as a key here, and HMAC algorithms are refused at configuration: with a
//! public key set, an HMAC "secret" would be public.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Header};
use tokio_util::sync::CancellationToken;

use super::{AuthError, KeyFetches, KeySource, VerifyKey};

/// The largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1 << 20;

/// How keys are fetched and which algorithms they may verify.
#[derive(Debug, Clone)]
pub struct JwksSettings {
    pub url: String,
    /// Allowed token algorithms; asymmetric only.
    pub algorithms: Vec<Algorithm>,
    /// Least time between two fetches caused by unknown kids.
    pub min_refetch: Duration,
    /// Time between background refreshes.
    pub refresh: Duration,
    /// Limit on one fetch.
    pub timeout: Duration,
}

/// Least time between fetches caused by unknown key ids, unless configured.
pub const DEFAULT_MIN_REFETCH: Duration = Duration::from_secs(30);

impl JwksSettings {
    pub fn new(url: impl Into<String>) -> Self {
        JwksSettings {
            url: url.into(),
            algorithms: vec![Algorithm::RS256],
            min_refetch: DEFAULT_MIN_REFETCH,
            refresh: Duration::from_secs(900),
            timeout: Duration::from_secs(5),
        }
    }
}

/// Why the JWKS configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksConfigError {
    #[error("--jwks-url '{0}' must be an http:// or https:// URL")]
    BadUrl(String),
    #[error("algorithm {0:?} is not allowed with a JWKS: only RS*, PS*, ES* and EdDSA")]
    Symmetric(Algorithm),
    #[error("no token algorithms allowed")]
    NoAlgorithms,
}

/// Why one fetch failed.
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("request failed: {0}")]
    Request(String),
    #[error("answered HTTP {0}")]
    Status(http::StatusCode),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("body unreadable or over {MAX_JWKS_BYTES} bytes: {0}")]
    Body(String),
    #[error("not a JWK set: {0}")]
    Json(#[from] serde_json::Error),
}

type HttpClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

struct FetchState {
    last_attempt: Option<Instant>,
    last_error: Option<String>,
}

/// A key source backed by a JWKS URL.
pub struct JwksKeySource {
    settings: JwksSettings,
    client: HttpClient,
    keys: RwLock<Arc<HashMap<String, Arc<VerifyKey>>>>,
    fetch: tokio::sync::Mutex<FetchState>,
    fetches: AtomicU64,
    fetch_failures: AtomicU64,
}

fn is_asymmetric(alg: Algorithm) -> bool {
    !matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

impl JwksKeySource {
    /// Builds the source and makes the first fetch. A failed first fetch is logged,
    /// not fatal: the background refresh and unknown kids try again.
    pub async fn start(
        settings: JwksSettings,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, JwksConfigError> {
        if !(settings.url.starts_with("https://") || settings.url.starts_with("http://"))
            || settings.url.parse::<http::Uri>().is_err()
        {
            return Err(JwksConfigError::BadUrl(settings.url.clone()));
        }
        if settings.algorithms.is_empty() {
            return Err(JwksConfigError::NoAlgorithms);
        }
        if let Some(alg) = settings.algorithms.iter().find(|a| !is_asymmetric(**a)) {
            return Err(JwksConfigError::Symmetric(*alg));
        }
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|_| JwksConfigError::BadUrl(settings.url.clone()))?
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new()).build(connector);
        let source = Arc::new(JwksKeySource {
            settings,
            client,
            keys: RwLock::new(Arc::new(HashMap::new())),
            fetch: tokio::sync::Mutex::new(FetchState {
                last_attempt: None,
                last_error: None,
            }),
            fetches: AtomicU64::new(0),
            fetch_failures: AtomicU64::new(0),
        });
        source.refetch(true).await;
        let background = source.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(background.settings.refresh) => {}
                }
                background.refetch(true).await;
            }
        });
        Ok(source)
    }

    /// How many fetches were made (for operators and tests).
    pub fn fetch_count(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// How many keys are cached.
    pub fn key_count(&self) -> usize {
        self.snapshot().len()
    }

    fn snapshot(&self) -> Arc<HashMap<String, Arc<VerifyKey>>> {
        self.keys
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Fetches the set unless one was fetched within `min_refetch` (`forced` skips
    /// that check). Concurrent callers wait for the one fetch in flight.
    async fn refetch(&self, forced: bool) {
        let mut state = self.fetch.lock().await;
        if !forced
            && state
                .last_attempt
                .is_some_and(|t| t.elapsed() < self.settings.min_refetch)
        {
            return;
        }
        state.last_attempt = Some(Instant::now());
        self.fetches.fetch_add(1, Ordering::Relaxed);
        match self.fetch_once().await {
            Ok(keys) => {
                tracing::info!(url = %self.settings.url, keys = keys.len(), "fetched JWKS");
                *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
                state.last_error = None;
            }
            Err(e) => {
                self.fetch_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(url = %self.settings.url, error = %e, "JWKS fetch failed; keeping the cached keys");
                state.last_error = Some(e.to_string());
            }
        }
    }

    async fn fetch_once(&self) -> Result<HashMap<String, Arc<VerifyKey>>, FetchError> {
        let request = http::Request::get(&self.settings.url)
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| FetchError::Request(e.to_string()))?;
        let response = tokio::time::timeout(self.settings.timeout, self.client.request(request))
            .await
            .map_err(|_| FetchError::Timeout(self.settings.timeout))?
            .map_err(|e| FetchError::Request(e.to_string()))?;
        if !response.status().is_success() {
            return Err(FetchError::Status(response.status()));
        }
        let body = tokio::time::timeout(
            self.settings.timeout,
            Limited::new(response.into_body(), MAX_JWKS_BYTES).collect(),
        )
        .await
        .map_err(|_| FetchError::Timeout(self.settings.timeout))?
        .map_err(|e| FetchError::Body(e.to_string()))?
        .to_bytes();
        let set: JwkSet = serde_json::from_slice(&body)?;
        Ok(self.keys_of(&set))
    }

    /// The usable keys of a set: with a kid, asymmetric, and an algorithm allowed here.
    fn keys_of(&self, set: &JwkSet) -> HashMap<String, Arc<VerifyKey>> {
        let mut out = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            let family: &[Algorithm] = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => &[
                    Algorithm::RS256,
                    Algorithm::RS384,
                    Algorithm::RS512,
                    Algorithm::PS256,
                    Algorithm::PS384,
                    Algorithm::PS512,
                ],
                AlgorithmParameters::EllipticCurve(_) => &[Algorithm::ES256, Algorithm::ES384],
                AlgorithmParameters::OctetKeyPair(_) => &[Algorithm::EdDSA],
                // Symmetric (oct) keys, and kinds this version does not know.
                _ => continue,
            };
            let declared = jwk.common.key_algorithm.and_then(|ka| {
                serde_json::to_value(ka)
                    .ok()
                    .and_then(|v| v.as_str().and_then(|s| Algorithm::from_str(s).ok()))
            });
            let algorithms: Vec<Algorithm> = self
                .settings
                .algorithms
                .iter()
                .copied()
                .filter(|a| family.contains(a) && declared.is_none_or(|d| d == *a))
                .collect();
            if algorithms.is_empty() {
                continue;
            }
            match DecodingKey::from_jwk(jwk) {
                Ok(key) => {
                    out.insert(kid, Arc::new(VerifyKey { key, algorithms }));
                }
                Err(e) => tracing::warn!(kid, error = %e, "skipping an unusable JWK"),
            }
        }
        out
    }
}

#[async_trait]
impl KeySource for JwksKeySource {
    fn has_keys(&self) -> bool {
        self.key_count() > 0
    }

    fn fetches(&self) -> KeyFetches {
        KeyFetches {
            made: self.fetch_count(),
            failed: self.fetch_failures.load(Ordering::Relaxed),
        }
    }

    async fn key_for(&self, header: &Header) -> Result<Arc<VerifyKey>, AuthError> {
        if !self.settings.algorithms.contains(&header.alg) {
            return Err(AuthError::Algorithm {
                found: format!("{:?}", header.alg),
                accepted: self
                    .settings
                    .algorithms
                    .iter()
                    .map(|a| format!("{a:?}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        let kid = header
            .kid
            .as_deref()
            .ok_or_else(|| AuthError::malformed("the header has no key id (kid)"))?;
        if let Some(key) = self.snapshot().get(kid) {
            return Ok(key.clone());
        }
        // Perhaps the keys rotated: fetch again, at most once per min_refetch.
        self.refetch(false).await;
        let keys = self.snapshot();
        if let Some(key) = keys.get(kid) {
            return Ok(key.clone());
        }
        if keys.is_empty() {
            let reason = self
                .fetch
                .lock()
                .await
                .last_error
                .clone()
                .unwrap_or_else(|| "the key set is empty".into());
            return Err(AuthError::keys_unavailable(reason));
        }
        Err(AuthError::unknown_key(Some(kid)))
    }
}
