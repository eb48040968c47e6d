//! The relay's own credential: the token its upstream Watches and key reads carry
//! (its clients' writes and secret reads carry their own tokens instead). Two
//! kinds, used alike by the feeds, the probe and the key reads:
//!
//! - a token in a file (`--upstream-token-file`), read again whenever the file
//!   changes (`file`);
//! - an ID token from Cognito, obtained with the relay's refresh token and
//!   refreshed before it expires (`cognito`).
//!
//! Boundary: the token and the header made of it; what the upstream says of it is
//! reported here (a refusal makes a Cognito token refresh at once). Never logged,
//! never in an error.

mod cognito;
mod file;

use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tonic::metadata::AsciiMetadataValue;

use crate::clock::Clock;
pub use cognito::{CognitoToken, ExchangeError, IdTokens, RefreshCounters};
pub use file::{TokenFile, WatchedFile};

/// Which file a token comes from, for the messages about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretFile {
    /// `--upstream-token-file`: the upstream token itself.
    UpstreamToken,
    /// `--upstream-cognito-refresh-token-file`: the refresh token exchanged for one.
    CognitoRefreshToken,
}

impl SecretFile {
    fn name(self) -> &'static str {
        match self {
            SecretFile::UpstreamToken => "upstream token file",
            SecretFile::CognitoRefreshToken => "Cognito refresh token file",
        }
    }

    fn fill(self) -> &'static str {
        match self {
            SecretFile::UpstreamToken => {
                "write a token with the relay role into it (configwatch token --role relay)"
            }
            SecretFile::CognitoRefreshToken => {
                "write the refresh token of a Cognito user in the group 'relay' into it"
            }
        }
    }
}

/// Why the credential cannot be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CredentialError {
    #[error("cannot read the {} {path}: {reason}", kind.name())]
    Unreadable {
        kind: SecretFile,
        path: PathBuf,
        reason: String,
    },
    #[error("the {} {path} holds no token: {}", kind.name(), kind.fill())]
    Empty { kind: SecretFile, path: PathBuf },
    #[error(
        "the {} {path} holds characters a token cannot have (a token is printable ASCII)",
        kind.name()
    )]
    NotAToken { kind: SecretFile, path: PathBuf },
    #[error("the Cognito refresh token in CONFIGWATCH_UPSTREAM_COGNITO_REFRESH_TOKEN is {0}")]
    BadRefreshToken(&'static str),
    /// No valid token from Cognito, and why.
    #[error("this relay has no valid upstream token: {0}")]
    NoToken(String),
}

/// Where the relay's refresh token comes from.
#[derive(Clone)]
pub enum RefreshTokenSource {
    /// The token itself (from the environment: how ECS injects a secret).
    Value(String),
    /// A file holding it, read again when it changes.
    File(PathBuf),
}

impl std::fmt::Debug for RefreshTokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RefreshTokenSource::Value(_) => f.write_str("Value(<redacted>)"),
            RefreshTokenSource::File(path) => f.debug_tuple("File").field(path).finish(),
        }
    }
}

/// How a relay obtains its upstream token from Cognito.
#[derive(Debug, Clone)]
pub struct CognitoSettings {
    /// The app client (no client secret, `ALLOW_REFRESH_TOKEN_AUTH`).
    pub client_id: String,
    pub refresh_token: RefreshTokenSource,
    /// The user pool's region; `None` until the composition root resolves it.
    pub region: Option<String>,
}

/// Where the relay's upstream token comes from.
#[derive(Debug, Clone)]
pub enum UpstreamCredential {
    TokenFile(PathBuf),
    Cognito(CognitoSettings),
}

/// The relay's upstream token, of either kind.
pub enum Credential {
    File(TokenFile),
    Cognito(Arc<CognitoToken>),
}

impl Credential {
    /// The token in a file, read now: a missing, empty or malformed file is an
    /// error at start.
    pub fn file(path: &std::path::Path) -> Result<Credential, CredentialError> {
        TokenFile::open(path).map(Credential::File)
    }

    /// An ID token obtained from `tokens` with the refresh token `settings` name,
    /// kept fresh by a task that runs until `stop`. The refresh token is read now
    /// (a file that is missing or empty is an error at start); Cognito is asked
    /// at once, in the background.
    pub fn cognito(
        settings: &CognitoSettings,
        tokens: Arc<dyn IdTokens>,
        clock: Clock,
        stop: CancellationToken,
    ) -> Result<Credential, CredentialError> {
        let refresh = match &settings.refresh_token {
            RefreshTokenSource::Value(value) => {
                let value = value.trim();
                if value.is_empty() {
                    return Err(CredentialError::BadRefreshToken("empty"));
                }
                if !value.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(CredentialError::BadRefreshToken(
                        "not a token (a token is printable ASCII)",
                    ));
                }
                cognito::RefreshToken::Value(value.to_owned())
            }
            RefreshTokenSource::File(path) => cognito::RefreshToken::File(WatchedFile::open(
                path,
                SecretFile::CognitoRefreshToken,
            )?),
        };
        Ok(Credential::Cognito(CognitoToken::start(
            refresh, tokens, clock, stop,
        )))
    }

    /// The `authorization` header to send upstream. A Cognito token waits for
    /// Cognito's first answer; an error says why there is no valid token.
    pub async fn header(&self) -> Result<AsciiMetadataValue, CredentialError> {
        match self {
            Credential::File(file) => file.header(),
            Credential::Cognito(cognito) => cognito.header().await,
        }
    }

    /// Returns once the credential is known: at once for a file, after Cognito's
    /// first answer (a token, or a failure) for a Cognito token.
    pub async fn known(&self) {
        if let Credential::Cognito(cognito) = self {
            cognito.first_answer().await;
        }
    }

    /// The upstream refused the token `sent` (or it expired under a stream): a
    /// Cognito token is refreshed at once (rate limited) unless a newer one is held
    /// already; a file is read again anyway once it changes.
    pub fn rejected(&self, sent: &AsciiMetadataValue) {
        if let Credential::Cognito(cognito) = self {
            cognito.rejected(sent);
        }
    }

    /// Why the credential itself is failing, for readiness: Cognito refuses the
    /// refresh token, or no valid token is held.
    pub fn problem(&self) -> Option<String> {
        match self {
            Credential::File(_) => None,
            Credential::Cognito(cognito) => cognito.problem(),
        }
    }

    /// What to check when the upstream refuses the token.
    pub fn what_to_check(&self) -> &'static str {
        match self {
            Credential::File(_) => {
                "check --upstream-token-file (a token with the relay role, signed for the upstream, not expired)"
            }
            Credential::Cognito(_) => {
                "check that the Cognito user of the refresh token is in the group 'relay' and that the upstream accepts the pool's ID tokens (--jwks-url, --issuer, --audience with this app client)"
            }
        }
    }

    /// The Cognito refreshes counted by result; `None` for a token file.
    pub fn refreshes(&self) -> Option<Arc<RefreshCounters>> {
        match self {
            Credential::File(_) => None,
            Credential::Cognito(cognito) => Some(cognito.counters()),
        }
    }
}
