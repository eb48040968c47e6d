//! The relay's upstream token from Cognito: the relay holds the refresh token of a
//! Cognito user in the group `relay` and exchanges it ([`IdTokens`]: `InitiateAuth`
//! with `REFRESH_TOKEN_AUTH`, which needs no AWS credentials) for an ID token, the
//! token it sends upstream. One task keeps it fresh: it refreshes at
//! [`REFRESH_SHARE`] of the token's lifetime (read from its `exp`) and at least
//! [`REFRESH_MARGIN`] before it expires, one exchange at a time. A failed exchange
//! keeps the current token while it is valid and is retried with the project's
//! backoff; an upstream that refuses the token, or a refresh token file that
//! changed, makes it refresh at once (no more often than [`MIN_REFRESH_GAP`]).
//!
//! Boundary: the exchange's schedule and outcome. It knows neither the AWS SDK
//! (behind [`IdTokens`]) nor the upstream; it never logs a token, and removes the
//! refresh token from any message Cognito sends back.

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine as _;
use configwatch_client::{Backoff, Retry};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::metadata::AsciiMetadataValue;

use super::CredentialError;
use super::file::{WatchedFile, bearer};
use crate::clock::Clock;

/// The share of a token's lifetime after which it is refreshed.
pub const REFRESH_SHARE: f64 = 0.8;
/// A token is refreshed at least this long before it expires.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// The least time between two exchanges (a refused token asks for one at once).
pub const MIN_REFRESH_GAP: Duration = Duration::from_secs(10);
/// The first retry of a failed exchange (the SDK has retried it already).
pub const RETRY_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between retries of a failing exchange.
pub const RETRY_MAX: Duration = Duration::from_secs(60);
/// How often the refresh token file is checked for a new token.
const FILE_CHECK: Duration = Duration::from_secs(1);
/// The longest an exchange may take, the SDK's retries included, before it counts
/// as failed (and is retried): a Cognito that never answers must not leave the
/// relay waiting past its token's expiry.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why an exchange gave no ID token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExchangeError {
    /// Cognito refuses the refresh token (revoked, expired, another app client's,
    /// a user gone): only a new refresh token or configuration repairs it.
    #[error("{0}")]
    Refused(String),
    /// Cognito could not be reached or failed: a later attempt may succeed.
    #[error("{0}")]
    Failed(String),
}

/// Exchanges a refresh token for a new ID token (Cognito's `InitiateAuth` with
/// `REFRESH_TOKEN_AUTH`, or a test's fake).
#[async_trait]
pub trait IdTokens: Send + Sync {
    async fn exchange(&self, refresh_token: &str) -> Result<String, ExchangeError>;
}

/// The refresh token, as configured.
pub(super) enum RefreshToken {
    Value(String),
    File(WatchedFile),
}

impl RefreshToken {
    fn current(&self) -> String {
        match self {
            RefreshToken::Value(value) => value.clone(),
            RefreshToken::File(file) => file.current(),
        }
    }

    fn changed(&self) -> bool {
        match self {
            RefreshToken::Value(_) => false,
            RefreshToken::File(file) => file.changed(),
        }
    }
}

/// Exchanges counted by result, for `/metrics`.
#[derive(Debug, Default)]
pub struct RefreshCounters {
    pub ok: AtomicU64,
    pub refused: AtomicU64,
    pub failed: AtomicU64,
}

impl RefreshCounters {
    /// The exchanges by result label.
    pub fn by_result(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("ok", self.ok.load(Ordering::Relaxed)),
            ("refused", self.refused.load(Ordering::Relaxed)),
            ("failed", self.failed.load(Ordering::Relaxed)),
        ]
    }
}

/// The ID token held, and until when it is valid.
#[derive(Clone)]
struct Held {
    header: AsciiMetadataValue,
    expires: SystemTime,
}

/// What the task last learned.
#[derive(Clone, Default)]
struct State {
    token: Option<Held>,
    /// Why the last exchange failed, until one succeeds.
    failure: Option<ExchangeError>,
    /// Exchanges finished (the first answer is awaited by `header`).
    answers: u64,
}

/// When to refresh a token that is valid for `lifetime` from now: at
/// [`REFRESH_SHARE`] of it, and at least [`REFRESH_MARGIN`] before it expires, but
/// not sooner than [`MIN_REFRESH_GAP`].
pub fn refresh_after(lifetime: Duration) -> Duration {
    lifetime
        .mul_f64(REFRESH_SHARE)
        .min(lifetime.saturating_sub(REFRESH_MARGIN))
        .max(MIN_REFRESH_GAP)
}

/// The `exp` of a JWT, unverified: the upstream verifies the token; the relay only
/// needs to know when to replace it.
fn expiry_of(token: &str) -> Option<SystemTime> {
    #[derive(serde::Deserialize)]
    struct Exp {
        exp: u64,
    }
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let exp: Exp = serde_json::from_slice(&bytes).ok()?;
    UNIX_EPOCH.checked_add(Duration::from_secs(exp.exp))
}

/// The relay's ID token from Cognito, kept fresh by its task.
pub struct CognitoToken {
    state: watch::Sender<State>,
    wake: Notify,
    counters: Arc<RefreshCounters>,
    clock: Clock,
}

impl CognitoToken {
    /// Starts the task that obtains the token and keeps it fresh, until `stop`.
    pub(super) fn start(
        refresh: RefreshToken,
        tokens: Arc<dyn IdTokens>,
        clock: Clock,
        stop: CancellationToken,
    ) -> Arc<CognitoToken> {
        let token = Arc::new(CognitoToken {
            state: watch::Sender::new(State::default()),
            wake: Notify::new(),
            counters: Arc::default(),
            clock,
        });
        tokio::spawn(run(token.clone(), refresh, tokens, stop));
        token
    }

    pub fn counters(&self) -> Arc<RefreshCounters> {
        self.counters.clone()
    }

    /// Waits for Cognito's first answer (a token, or why not); `None` if the relay
    /// stops first.
    pub async fn first_answer(&self) -> Option<()> {
        let mut answers = self.state.subscribe();
        answers.wait_for(|s| s.answers > 0).await.ok().map(drop)
    }

    /// The header of the valid token held, after Cognito's first answer.
    pub async fn header(&self) -> Result<AsciiMetadataValue, CredentialError> {
        if self.first_answer().await.is_none() {
            return Err(CredentialError::NoToken("the relay is stopping".to_owned()));
        }
        let state = self.state.borrow().clone();
        match (&state.token, &state.failure) {
            (Some(held), _) if held.expires > self.clock.now() => Ok(held.header.clone()),
            (_, Some(failure)) => Err(CredentialError::NoToken(describe(failure))),
            _ => {
                self.refresh_soon();
                Err(CredentialError::NoToken(
                    "the ID token from Cognito expired before it was refreshed; refreshing it"
                        .to_owned(),
                ))
            }
        }
    }

    /// Asks the task to refresh now (it waits out [`MIN_REFRESH_GAP`] since the last
    /// exchange).
    fn refresh_soon(&self) {
        self.wake.notify_one();
    }

    /// The upstream refused the token `sent`: refreshed soon, unless the token held
    /// now is another (refreshed since it was sent).
    pub fn rejected(&self, sent: &AsciiMetadataValue) {
        let held = self.state.borrow().token.as_ref().map(|t| t.header.clone());
        if held.is_none_or(|held| held == *sent) {
            self.refresh_soon();
        }
    }

    /// Why the credential fails: Cognito refuses the refresh token (the token held
    /// may still be valid, but cannot be renewed), or the exchanges fail and no
    /// valid token is left.
    pub fn problem(&self) -> Option<String> {
        let state = self.state.borrow();
        let failure = state.failure.as_ref()?;
        let valid = state
            .token
            .as_ref()
            .is_some_and(|held| held.expires > self.clock.now());
        match failure {
            ExchangeError::Refused(_) => Some(describe(failure)),
            ExchangeError::Failed(_) if !valid => Some(describe(failure)),
            ExchangeError::Failed(_) => None,
        }
    }
}

/// An exchange's failure as the log and readiness say it.
fn describe(failure: &ExchangeError) -> String {
    match failure {
        ExchangeError::Refused(why) => format!(
            "Cognito refuses the relay's refresh token ({why}): give the relay a new refresh token (CONFIGWATCH_UPSTREAM_COGNITO_REFRESH_TOKEN or --upstream-cognito-refresh-token-file) and check --upstream-cognito-client-id"
        ),
        ExchangeError::Failed(why) => {
            format!("no ID token from Cognito ({why}); retrying")
        }
    }
}

/// Replaces the refresh token wherever a message repeats it.
fn without(failure: ExchangeError, secret: &str) -> ExchangeError {
    let clean = |s: String| s.replace(secret, "<refresh token>");
    match failure {
        ExchangeError::Refused(s) => ExchangeError::Refused(clean(s)),
        ExchangeError::Failed(s) => ExchangeError::Failed(clean(s)),
    }
}

/// One exchange: the ID token's header and expiry, or why not.
async fn exchange(
    tokens: &dyn IdTokens,
    refresh: &RefreshToken,
    clock: &Clock,
) -> Result<(Held, Duration), ExchangeError> {
    let secret = refresh.current();
    let id_token = tokio::time::timeout(EXCHANGE_TIMEOUT, tokens.exchange(&secret))
        .await
        .map_err(|_| {
            ExchangeError::Failed(format!(
                "no answer within {}",
                humantime::format_duration(EXCHANGE_TIMEOUT)
            ))
        })?
        .map_err(|e| without(e, &secret))?;
    let unusable =
        |why: &str| ExchangeError::Failed(format!("the ID token Cognito returned {why}"));
    let expires = expiry_of(&id_token).ok_or_else(|| unusable("has no readable exp"))?;
    let lifetime = expires
        .duration_since(clock.now())
        .map_err(|_| unusable("has expired already (check this host's clock)"))?;
    let header = bearer(&id_token).ok_or_else(|| unusable("is not a token"))?;
    Ok((Held { header, expires }, lifetime))
}

/// Keeps the token fresh until `stop`.
async fn run(
    token: Arc<CognitoToken>,
    refresh: RefreshToken,
    tokens: Arc<dyn IdTokens>,
    stop: CancellationToken,
) {
    let mut retry = Retry::new(Backoff::doubling(RETRY_FIRST, RETRY_MAX));
    loop {
        let started = Instant::now();
        let outcome = tokio::select! {
            () = stop.cancelled() => return,
            outcome = exchange(&*tokens, &refresh, &token.clock) => outcome,
        };
        let wait = match outcome {
            Ok((held, lifetime)) => {
                token.counters.ok.fetch_add(1, Ordering::Relaxed);
                retry.succeeded();
                let next = refresh_after(lifetime);
                let recovered = token.state.borrow().failure.is_some();
                let first = token.state.borrow().answers == 0;
                if first || recovered {
                    tracing::info!(valid_for = %humantime::format_duration(secs(lifetime)), "upstream token obtained from Cognito");
                } else {
                    tracing::debug!(valid_for = %humantime::format_duration(secs(lifetime)), "upstream token refreshed from Cognito");
                }
                token.state.send_modify(|s| {
                    s.token = Some(held);
                    s.failure = None;
                    s.answers += 1;
                });
                next
            }
            Err(failure) => {
                let counter = match failure {
                    ExchangeError::Refused(_) => &token.counters.refused,
                    ExchangeError::Failed(_) => &token.counters.failed,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                let delay = retry.failed();
                // Said once per distinct failure; its repetitions are debug lines.
                let repeated = token.state.borrow().failure.as_ref() == Some(&failure);
                let reason = describe(&failure);
                match (&failure, repeated) {
                    (_, true) => tracing::debug!(%reason, "the Cognito refresh failed again"),
                    (ExchangeError::Refused(_), false) => {
                        tracing::error!(%reason, "cannot refresh the upstream token")
                    }
                    (ExchangeError::Failed(_), false) => {
                        tracing::warn!(%reason, "cannot refresh the upstream token; keeping the current one while it is valid")
                    }
                }
                token.state.send_modify(|s| {
                    s.failure = Some(failure);
                    s.answers += 1;
                });
                delay
            }
        };
        let earliest = started + MIN_REFRESH_GAP;
        let mut deadline = Instant::now() + wait;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep_until(deadline) => break,
                () = token.wake.notified() => deadline = deadline.min(earliest),
                () = tokio::time::sleep(FILE_CHECK), if matches!(refresh, RefreshToken::File(_)) => {
                    if refresh.changed() {
                        deadline = deadline.min(earliest);
                    }
                }
            }
        }
    }
}

/// A duration in whole seconds, for log lines.
fn secs(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}
