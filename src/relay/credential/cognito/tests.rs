//! The refresh schedule on paused time, against a fake Cognito that issues tokens
//! of a chosen lifetime, refuses, or fails.

use std::sync::Mutex;

use super::*;
use crate::relay::credential::{Credential, RefreshTokenSource};

/// What the fake answers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Answer {
    Issue,
    Refuse,
    Fail,
    Never,
}

struct FakeCognito {
    clock: Clock,
    lifetime: Duration,
    answer: Mutex<Answer>,
    /// The refresh tokens presented, in order.
    seen: Mutex<Vec<String>>,
}

impl FakeCognito {
    fn new(clock: Clock, lifetime: Duration) -> Arc<FakeCognito> {
        Arc::new(FakeCognito {
            clock,
            lifetime,
            answer: Mutex::new(Answer::Issue),
            seen: Mutex::new(Vec::new()),
        })
    }

    fn answer(&self, answer: Answer) {
        *self.answer.lock().unwrap_or_else(|p| p.into_inner()) = answer;
    }

    fn calls(&self) -> usize {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn last_seen(&self) -> Option<String> {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last()
            .cloned()
    }
}

#[async_trait]
impl IdTokens for FakeCognito {
    async fn exchange(&self, refresh_token: &str) -> Result<String, ExchangeError> {
        let n = {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            seen.push(refresh_token.to_owned());
            seen.len()
        };
        let answer = *self.answer.lock().unwrap_or_else(|p| p.into_inner());
        match answer {
            Answer::Never => std::future::pending().await,
            Answer::Refuse => Err(ExchangeError::Refused(format!(
                "NotAuthorizedException: Invalid Refresh Token {refresh_token}"
            ))),
            Answer::Fail => Err(ExchangeError::Failed("connection refused".to_owned())),
            Answer::Issue => {
                let exp = self.clock.unix_secs().unwrap_or(0) + self.lifetime.as_secs();
                let b64 = |s: String| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
                Ok(format!(
                    "{}.{}.sig",
                    b64(r#"{"alg":"RS256"}"#.to_owned()),
                    b64(format!(r#"{{"exp":{exp},"n":{n}}}"#))
                ))
            }
        }
    }
}

const START: Duration = Duration::from_secs(1_800_000_000);

/// A fake Cognito issuing tokens valid for `lifetime`, on a clock that follows
/// tokio's (paused) time.
fn cognito_issuing(lifetime: Duration) -> Arc<FakeCognito> {
    FakeCognito::new(Clock::starting_at(UNIX_EPOCH + START), lifetime)
}

fn start(fake: &Arc<FakeCognito>, refresh: RefreshTokenSource) -> (Credential, CancellationToken) {
    let stop = CancellationToken::new();
    let settings = super::super::CognitoSettings {
        client_id: "client".to_owned(),
        refresh_token: refresh,
        region: Some("us-east-1".to_owned()),
    };
    let credential = Credential::cognito(&settings, fake.clone(), fake.clock, stop.clone());
    match credential {
        Ok(credential) => (credential, stop),
        Err(e) => panic!("{e}"),
    }
}

fn value(token: &str) -> RefreshTokenSource {
    RefreshTokenSource::Value(token.to_owned())
}

#[test]
fn a_token_is_refreshed_at_four_fifths_of_its_life_and_at_least_a_minute_before_it_expires() {
    let m = |minutes: u64| Duration::from_secs(60 * minutes);
    assert_eq!(refresh_after(m(60)), m(48));
    assert_eq!(refresh_after(m(5)), m(4));
    assert_eq!(refresh_after(m(2)), m(1));
    assert_eq!(
        refresh_after(Duration::from_secs(90)),
        Duration::from_secs(30)
    );
    // Never in a loop, whatever Cognito issues.
    assert_eq!(refresh_after(Duration::from_secs(30)), MIN_REFRESH_GAP);
    assert_eq!(refresh_after(Duration::ZERO), MIN_REFRESH_GAP);
}

#[test]
fn the_expiry_is_read_from_the_token() {
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let token = format!("{}.{}.x", b64("{}"), b64(r#"{"exp":1800000300,"sub":"r"}"#));
    assert_eq!(
        expiry_of(&token),
        Some(UNIX_EPOCH + Duration::from_secs(1_800_000_300))
    );
    assert_eq!(expiry_of("opaque"), None);
    assert_eq!(expiry_of(&format!("a.{}.c", b64(r#"{"sub":"r"}"#))), None);
}

#[tokio::test(start_paused = true)]
async fn the_relay_keeps_a_valid_token_across_many_lifetimes_with_one_exchange_each()
-> Result<(), CredentialError> {
    let fake = cognito_issuing(Duration::from_secs(300));
    let (credential, stop) = start(&fake, value("rt-1"));
    let first = credential.header().await?;
    assert_eq!(fake.calls(), 1);
    // Just before four fifths of its life: still the first token.
    tokio::time::sleep(Duration::from_secs(239)).await;
    assert_eq!(credential.header().await?, first);
    assert_eq!(fake.calls(), 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(fake.calls(), 2);
    let second = credential.header().await?;
    assert_ne!(second, first);
    // An hour: a token every four minutes, each valid when used.
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_secs(60)).await;
        credential.header().await?;
        assert_eq!(credential.problem(), None);
    }
    assert_eq!(fake.calls(), 2 + 15);
    assert_eq!(fake.last_seen().as_deref(), Some("rt-1"));
    let counters = credential.refreshes().map(|c| c.by_result());
    assert_eq!(
        counters,
        Some(vec![("ok", 17), ("refused", 0), ("failed", 0)])
    );
    stop.cancel();
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_failing_cognito_leaves_the_token_in_use_until_it_expires_then_says_why()
-> Result<(), CredentialError> {
    let fake = cognito_issuing(Duration::from_secs(300));
    let (credential, stop) = start(&fake, value("rt-1"));
    let first = credential.header().await?;
    fake.answer(Answer::Fail);
    // The refresh at 4 minutes fails: retried with backoff, the token still used.
    tokio::time::sleep(Duration::from_secs(270)).await;
    let retries = fake.calls();
    assert!(retries >= 3, "retried with backoff: {retries} exchanges");
    assert_eq!(credential.header().await?, first);
    assert_eq!(credential.problem(), None, "valid for another 30 s");
    // Expired: no token, and readiness says why.
    tokio::time::sleep(Duration::from_secs(31)).await;
    let err = credential.header().await.err().map(|e| e.to_string());
    assert!(
        err.as_deref()
            .is_some_and(|e| e.contains("no ID token from Cognito (connection refused)")),
        "{err:?}"
    );
    assert!(credential.problem().is_some_and(|p| p.contains("Cognito")));
    // Cognito back: a token at the next retry (at most RETRY_MAX away).
    fake.answer(Answer::Issue);
    tokio::time::sleep(RETRY_MAX).await;
    assert_ne!(credential.header().await?, first);
    assert_eq!(credential.problem(), None);
    let failed = credential
        .refreshes()
        .map(|c| c.failed.load(Ordering::Relaxed));
    assert!(failed.is_some_and(|n| n >= 3), "{failed:?}");
    stop.cancel();
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_cognito_that_never_answers_is_given_up_on_and_asked_again() {
    let fake = cognito_issuing(Duration::from_secs(300));
    fake.answer(Answer::Never);
    let (credential, stop) = start(&fake, value("rt-1"));
    // Readiness waits for the first answer, which never comes: 30 s, then a failure.
    let waited = tokio::time::timeout(Duration::from_secs(29), credential.known()).await;
    assert!(waited.is_err(), "no answer yet");
    credential.known().await;
    assert!(
        credential
            .problem()
            .is_some_and(|p| p.contains("no answer within 30s"))
    );
    let err = credential.header().await.err().map(|e| e.to_string());
    assert!(
        err.as_deref()
            .is_some_and(|e| e.contains("no answer within 30s")),
        "{err:?}"
    );
    fake.answer(Answer::Issue);
    tokio::time::sleep(RETRY_FIRST).await;
    assert_eq!(fake.calls(), 2);
    assert!(credential.header().await.is_ok());
    stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_refused_refresh_token_is_a_problem_at_once_and_never_repeated_in_a_message() {
    let fake = cognito_issuing(Duration::from_secs(300));
    fake.answer(Answer::Refuse);
    let (credential, stop) = start(&fake, value("rt-secret-value"));
    let err = credential.header().await.err().map(|e| e.to_string());
    let err = err.unwrap_or_default();
    assert!(
        err.contains("Cognito refuses the relay's refresh token"),
        "{err}"
    );
    assert!(err.contains("NotAuthorizedException"), "{err}");
    assert!(!err.contains("rt-secret-value"), "{err}");
    let problem = credential.problem().unwrap_or_default();
    assert!(problem.contains("Cognito refuses"), "{problem}");
    assert!(!problem.contains("rt-secret-value"), "{problem}");
    stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_token_the_upstream_refuses_is_refreshed_at_once_but_not_more_often_than_the_gap()
-> Result<(), CredentialError> {
    let fake = cognito_issuing(Duration::from_secs(3600));
    let (credential, stop) = start(&fake, value("rt-1"));
    let first = credential.header().await?;
    tokio::time::sleep(Duration::from_secs(60)).await;
    credential.rejected(&first);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(fake.calls(), 2, "refreshed at once");
    // The old token refused again (a stream that used it ended): a newer one is
    // held, nothing to do.
    credential.rejected(&first);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(fake.calls(), 2);
    // The new one refused at once, twice: the next exchange waits out the gap.
    let second = credential.header().await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    credential.rejected(&second);
    credential.rejected(&second);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        fake.calls(),
        3,
        "refreshed at once: the last exchange was a minute ago"
    );
    let third = credential.header().await?;
    credential.rejected(&third);
    tokio::time::sleep(MIN_REFRESH_GAP - Duration::from_secs(1)).await;
    assert_eq!(fake.calls(), 3);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(fake.calls(), 4);
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(fake.calls(), 4, "then back on its schedule");
    stop.cancel();
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_new_refresh_token_in_the_file_is_used_at_once() -> Result<(), Box<dyn std::error::Error>>
{
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("refresh-token");
    std::fs::write(&path, "rt-old\n")?;
    let fake = cognito_issuing(Duration::from_secs(3600));
    fake.answer(Answer::Refuse);
    let (credential, stop) = start(&fake, RefreshTokenSource::File(path.clone()));
    assert!(credential.header().await.is_err());
    assert_eq!(fake.last_seen().as_deref(), Some("rt-old"));
    fake.answer(Answer::Issue);
    std::fs::write(&path, "rt-new\n")?;
    tokio::time::sleep(MIN_REFRESH_GAP + FILE_CHECK * 2).await;
    assert_eq!(fake.last_seen().as_deref(), Some("rt-new"));
    credential.header().await?;
    assert_eq!(credential.problem(), None);
    stop.cancel();
    Ok(())
}
