//! The server's own signing key: an Ed25519 key pair kept in the data directory as
//! `signing-key.pem` (PKCS#8, mode 0600), created on first start. It signs the tokens
//! `configwatch token` prints and verifies them when no JWKS URL is configured.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, spki::der::pem::LineEnding};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde_json::json;

use super::{AuthError, KeySource, Role, Signer, VerifyKey};
use crate::clock::Clock;
use crate::model::Scope;

/// The key file's name inside the data directory.
pub const KEY_FILE: &str = "signing-key.pem";
/// The `iss` of tokens this key signs.
pub const ISSUER: &str = "configwatch";
/// The claim carrying the role in tokens this key signs. Trusted as written, `relay`
/// included, because only the holder of the key file can sign: see
/// [`super::Signer::ThisServer`].
pub const ROLE_CLAIM: &str = "custom:role";

/// Why the signing key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read or write the signing key {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the signing key {path} is not a PKCS#8 Ed25519 private key: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// The embedded signing key.
pub struct LocalKey {
    kid: String,
    encoding: EncodingKey,
    verify: Arc<VerifyKey>,
    /// Wall time for `iat` and `exp`.
    clock: Clock,
}

impl LocalKey {
    /// Loads the key from `data_dir`, creating it (and the directory) if missing.
    /// Returns the key and whether it was created now.
    pub fn load_or_create(data_dir: &Path) -> Result<(Self, bool), KeyFileError> {
        let path = data_dir.join(KEY_FILE);
        let io = |source| KeyFileError::Io {
            path: path.clone(),
            source,
        };
        let (signing, created) = match std::fs::read_to_string(&path) {
            Ok(pem) => {
                let key = SigningKey::from_pkcs8_pem(&pem).map_err(|e| KeyFileError::Invalid {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                (key, false)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(data_dir).map_err(io)?;
                let key = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
                write_new(&path, &key).map_err(io)?;
                // Another process may have created it first: use whatever won.
                return Self::load_or_create(data_dir).map(|(k, _)| (k, true));
            }
            Err(e) => return Err(io(e)),
        };
        Ok((Self::from_signing_key(&signing, &path)?, created))
    }

    fn from_signing_key(signing: &SigningKey, path: &Path) -> Result<Self, KeyFileError> {
        let der = signing.to_pkcs8_der().map_err(|e| KeyFileError::Invalid {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let public = signing.verifying_key().to_bytes();
        let kid = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&public[..12]);
        Ok(LocalKey {
            kid,
            encoding: EncodingKey::from_ed_der(der.as_bytes()),
            verify: Arc::new(VerifyKey {
                key: DecodingKey::from_ed_der(&public),
                algorithms: vec![Algorithm::EdDSA],
            }),
            clock: Clock::system(),
        })
    }

    /// Signs with `iat` and `exp` read from `clock` instead of the system clock.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The key id stamped into tokens' headers.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Signs a token for `scope` with `role`, valid for `ttl`.
    pub fn issue(
        &self,
        scope: &Scope,
        role: Role,
        ttl: Duration,
        subject: &str,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        self.sign(Some(scope), role, ttl, subject)
    }

    /// A token that names no tenant: only the relay role can use one (it names the
    /// tenant in each request).
    pub fn issue_relay(
        &self,
        ttl: Duration,
        subject: &str,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        self.sign(None, Role::Relay, ttl, subject)
    }

    fn sign(
        &self,
        scope: Option<&Scope>,
        role: Role,
        ttl: Duration,
        subject: &str,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let now = self.clock.unix_secs().unwrap_or(0);
        let mut claims = json!({
            "iss": ISSUER,
            "sub": subject,
            "iat": now,
            "exp": now.saturating_add(ttl.as_secs()).min(super::MAX_NUMERIC_DATE),
            ROLE_CLAIM: role.as_str(),
        });
        if let (Some(scope), Some(map)) = (scope, claims.as_object_mut()) {
            map.insert("custom:tenantId".into(), json!(scope.tenant_id()));
            if let Some(service) = scope.service() {
                map.insert("custom:service".into(), json!(service));
            }
        }
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.encoding)
    }
}

/// Writes the key to a new file with mode 0600, atomically, never replacing one.
fn write_new(path: &Path, key: &SigningKey) -> std::io::Result<()> {
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{KEY_FILE}.{}.tmp", std::process::id()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut file = opts.open(&tmp)?;
    file.write_all(pem.as_bytes())?;
    file.sync_all()?;
    drop(file);
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

#[async_trait]
impl KeySource for LocalKey {
    async fn key_for(&self, header: &Header) -> Result<Arc<VerifyKey>, AuthError> {
        match &header.kid {
            Some(kid) if *kid != self.kid => Err(AuthError::unknown_key(Some(kid))),
            _ => Ok(self.verify.clone()),
        }
    }

    fn signer(&self) -> Signer {
        Signer::ThisServer
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::auth::{Authenticator, ClaimRules};

    #[tokio::test]
    async fn issues_tokens_it_accepts_and_keeps_its_key() -> Result<(), Box<dyn std::error::Error>>
    {
        let dir = tempfile::tempdir()?;
        let (key, created) = LocalKey::load_or_create(dir.path())?;
        assert!(created);
        let (again, created) = LocalKey::load_or_create(dir.path())?;
        assert!(!created);
        assert_eq!(key.kid(), again.kid());
        let scope = Scope::tenant("acme")?;
        let token = key.issue(&scope, Role::Writer, Duration::from_secs(60), "me")?;
        let auth = Authenticator::new(Arc::new(again), ClaimRules::default());
        let id = auth.verify(&token).await?;
        assert_eq!(id.scope.as_ref(), Some(&scope));
        assert_eq!(id.role, Role::Writer);

        let other_dir = tempfile::tempdir()?;
        let (other, _) = LocalKey::load_or_create(other_dir.path())?;
        let foreign = other.issue(&scope, Role::Admin, Duration::from_secs(60), "x")?;
        assert!(matches!(
            auth.verify(&foreign).await,
            Err(AuthError::UnknownKey(_))
        ));
        Ok(())
    }

    /// `iat` and `exp` come from the key's clock.
    #[tokio::test(start_paused = true)]
    async fn a_key_on_a_clock_signs_with_its_time() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let start = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let clock = Clock::starting_at(start);
        let (key, _) = LocalKey::load_or_create(dir.path())?;
        let key = Arc::new(key.with_clock(clock));
        let scope = Scope::tenant("acme")?;
        tokio::time::advance(Duration::from_secs(10)).await;
        let token = key.issue(&scope, Role::Reader, Duration::from_secs(60), "me")?;
        let rules = ClaimRules {
            leeway: Duration::ZERO,
            ..ClaimRules::default()
        };
        let auth = Authenticator::new(key.clone(), rules).with_clock(clock);
        let id = auth.verify(&token).await?;
        assert_eq!(id.expires_at, Some(start + Duration::from_secs(70)));
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(auth.verify(&token).await, Err(AuthError::Expired));
        Ok(())
    }
}
