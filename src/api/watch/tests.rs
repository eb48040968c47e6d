//! The Watch stream's timers on paused tokio time: a stream ends at its token's
//! expiry as the injected clock reads it, or at its connection's end when that is
//! earlier, and an idle stream gets progress at the
//! jittered interval, counted from the last message it sent.

use std::error::Error;
use std::time::{Duration, UNIX_EPOCH};

use async_trait::async_trait;
use futures_util::StreamExt as _;
use tokio::time::timeout;
use tonic::Code;

use super::*;
use crate::clock::Clock;
use crate::hub::{Hub, HubConfig, Known, ScopeLoader};
use crate::keys::PrefixSet;
use crate::model::{Entry, Scope};
use crate::store::StoreError;

type TestResult = Result<(), Box<dyn Error>>;

/// A store with nothing in it.
struct Empty;

#[async_trait]
impl ScopeLoader for Empty {
    async fn load_scope(&self, _: &Scope) -> Result<Vec<Entry>, StoreError> {
        Ok(Vec::new())
    }
}

/// A hub over an empty tenant `acme`, and a Watch of `prefixes` there.
async fn start(
    prefixes: &[&str],
    settings: &WatchSettings,
    expires_at: Option<SystemTime>,
) -> Result<(Arc<Hub>, Scope, WatchStream), Box<dyn Error>> {
    start_on(prefixes, settings, expires_at, None).await
}

/// The same, on a connection whose Watch streams end at `connection_ends_at`.
async fn start_on(
    prefixes: &[&str],
    settings: &WatchSettings,
    expires_at: Option<SystemTime>,
    connection_ends_at: Option<Instant>,
) -> Result<(Arc<Hub>, Scope, WatchStream), Box<dyn Error>> {
    let hub = Arc::new(Hub::new(Arc::new(Empty), HubConfig::default()));
    let scope = Scope::tenant("acme")?;
    let prefixes = PrefixSet::new(prefixes.iter().map(|p| p.to_string()));
    let sub = hub
        .subscribe(&scope, prefixes, None, &Known::Nothing)
        .await?;
    let log = EndLine::new(scope.clone(), 1, None);
    let stream = WatchStream::new(
        sub,
        settings,
        expires_at,
        connection_ends_at,
        &Shutdown::new(),
        log,
    );
    Ok((hub, scope, stream))
}

async fn next(w: &mut WatchStream) -> Result<WatchFrame, Box<dyn Error>> {
    Ok(w.next().await.ok_or("the stream ended")??)
}

/// A wall time in 2027: later than any real clock these tests run on, so a stream
/// that read the system clock instead would not end when these tests expect.
fn start_time() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

/// Settings on a test clock at [`start_time`], with progress an hour away.
fn quiet_settings() -> WatchSettings {
    WatchSettings {
        clock: Clock::starting_at(start_time()),
        progress_interval: Duration::from_secs(3600),
        ..WatchSettings::default()
    }
}

#[tokio::test(start_paused = true)]
async fn a_watch_ends_with_unavailable_when_its_connection_reaches_its_maximum_age() -> TestResult {
    let settings = quiet_settings();
    // The connection ends before the token expires: the connection's end wins.
    let expires_at = start_time() + Duration::from_secs(60);
    let ends_at = Instant::now() + Duration::from_secs(20);
    let (_hub, _scope, mut w) = start_on(&[], &settings, Some(expires_at), Some(ends_at)).await?;
    let began = Instant::now();
    assert!(next(&mut w).await?.initial_complete);
    assert!(timeout(Duration::from_secs(19), w.next()).await.is_err());
    let status = w.next().await.ok_or("a status")?.err().ok_or("an error")?;
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("maximum age") && status.message().contains("resume"),
        "{status:?}"
    );
    assert_eq!(began.elapsed(), Duration::from_secs(20));
    assert_eq!(
        w.log.state(),
        (1, 0, Some((EndReason::MaxConnectionAge, Code::Unavailable)))
    );

    // A token that expires first still ends the stream as expired.
    let ends_at = Instant::now() + Duration::from_secs(60);
    let expires_at = start_time() + Duration::from_secs(30);
    let (_hub, _scope, mut w) = start_on(&[], &settings, Some(expires_at), Some(ends_at)).await?;
    assert!(next(&mut w).await?.initial_complete);
    let status = w.next().await.ok_or("a status")?.err();
    assert_eq!(status.map(|s| s.code()), Some(Code::Unauthenticated));
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_watch_ends_at_its_token_expiry_by_the_injected_clock() -> TestResult {
    let settings = quiet_settings();
    let expires_at = start_time() + Duration::from_secs(30);
    let (_hub, _scope, mut w) = start(&[], &settings, Some(expires_at)).await?;
    let began = Instant::now();
    assert!(next(&mut w).await?.initial_complete);
    assert!(
        timeout(Duration::from_secs(29), w.next()).await.is_err(),
        "nothing ends the stream before its token expires"
    );
    let status = w
        .next()
        .await
        .ok_or("a status")?
        .err()
        .ok_or("an error status")?;
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("token expired"), "{status:?}");
    assert_eq!(began.elapsed(), Duration::from_secs(30));
    assert!(w.next().await.is_none(), "and nothing follows");
    // Its end line will say why, after the one (empty) initial message.
    assert_eq!(
        w.log.state(),
        (1, 0, Some((EndReason::TokenExpired, Code::Unauthenticated)))
    );

    // A token that expired before the Watch started ends it before anything is sent.
    let expired = start_time() + Duration::from_secs(29);
    let (_hub, _scope, mut w) = start(&[], &settings, Some(expired)).await?;
    let status = w.next().await.ok_or("a status")?.err();
    assert_eq!(status.map(|s| s.code()), Some(Code::Unauthenticated));
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn an_idle_watch_gets_progress_at_the_interval_after_its_last_message() -> TestResult {
    let interval = Duration::from_secs(4);
    let (earliest, latest) = (interval.mul_f64(0.75), interval.mul_f64(1.25));
    let settings = WatchSettings {
        progress_interval: interval,
        ..WatchSettings::default()
    };
    let (hub, scope, mut w) = start(&["tenant_config_a"], &settings, None).await?;
    assert!(next(&mut w).await?.initial_complete);
    // A change outside the prefix advances the revision progress reports.
    hub.apply(&scope, Entry::live("tenant_config_b", 1, "1", 0));
    for _ in 0..3 {
        let last = Instant::now();
        assert!(
            timeout(earliest - Duration::from_millis(1), w.next())
                .await
                .is_err(),
            "no progress before three quarters of the interval"
        );
        let msg = next(&mut w).await?;
        let waited = last.elapsed();
        assert_eq!(msg.kind, Kind::Progress);
        assert!(msg.changes.is_empty());
        assert_eq!(msg.revision, 1);
        assert!(!msg.resume_token.is_empty());
        assert!(earliest <= waited && waited <= latest, "{waited:?}");
    }
    // A delta is a message: the next progress is due an interval after it.
    tokio::time::advance(interval / 2).await;
    hub.apply(&scope, Entry::live("tenant_config_a", 1, "1", 0));
    let delta = next(&mut w).await?;
    assert_eq!(delta.kind, Kind::Delta);
    assert_eq!(delta.revision, 2);
    let sent = Instant::now();
    let msg = next(&mut w).await?;
    let waited = sent.elapsed();
    assert_eq!(msg.kind, Kind::Progress);
    assert_eq!(msg.revision, 2);
    assert!(earliest <= waited && waited <= latest, "{waited:?}");
    // Counted for the end line: the initial message, three progress, one delta of
    // one change and one progress; nothing ended it yet.
    assert_eq!(w.log.state(), (6, 1, None));
    Ok(())
}

/// A view cut off from its sources (a relay's lost upstream) is said at once, on
/// every message while it lasts, and its end is said at once too.
#[tokio::test(start_paused = true)]
async fn a_watch_is_told_at_once_when_its_view_is_cut_off_and_when_it_is_current_again()
-> TestResult {
    let settings = quiet_settings();
    let (hub, scope, mut w) = start(&[], &settings, None).await?;
    let first = next(&mut w).await?;
    assert!(first.initial_complete && first.disconnected_since.is_none());
    let since = 1_800_000_000_123;
    assert!(hub.set_disconnected(&scope, Some(since)));
    assert!(!hub.set_disconnected(&scope, Some(since)), "unchanged");
    let began = Instant::now();
    let told = next(&mut w).await?;
    assert_eq!(
        began.elapsed(),
        Duration::ZERO,
        "at once, not at the next progress"
    );
    assert_eq!(told.kind, Kind::Progress);
    assert_eq!(told.disconnected_since, Some(since));
    // Every message says so while it lasts; nothing more is sent for it.
    hub.apply(&scope, Entry::live("tenant_config_a", 1, "1", 0));
    let delta = next(&mut w).await?;
    assert_eq!(delta.kind, Kind::Delta);
    assert_eq!(delta.disconnected_since, Some(since));
    assert!(timeout(Duration::from_secs(60), w.next()).await.is_err());
    assert_eq!(hub.disconnected_since(&scope), Some(since));
    hub.set_disconnected(&scope, None);
    let current = next(&mut w).await?;
    assert_eq!(current.kind, Kind::Progress);
    assert_eq!(current.disconnected_since, None);
    assert_eq!(current.revision, 1);
    Ok(())
}

#[tokio::test]
async fn a_watch_dropped_while_waiting_for_its_reply_budget_says_so() -> TestResult {
    let waiting = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let log = EndLine::new(Scope::tenant("acme")?, 1, Some(waiting.clone()));
    assert_eq!(log.reason(), (EndReason::ClientGone, None));
    waiting.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(log.reason(), (EndReason::ClientGoneUnread, None));
    Ok(())
}

#[tokio::test]
async fn an_ended_watch_is_counted_once_under_its_reason() -> TestResult {
    let ends = Arc::new(WatchEnds::default());
    let waiting = Arc::new(std::sync::atomic::AtomicBool::new(true));
    drop(EndLine::new(Scope::tenant("acme")?, 1, Some(waiting)).counted_in(ends.clone()));
    let mut expired = EndLine::new(Scope::tenant("acme")?, 1, None).counted_in(ends.clone());
    expired.ended(EndReason::TokenExpired, tonic::Code::Unauthenticated);
    drop(expired);
    drop(EndLine::new(Scope::tenant("acme")?, 1, None));
    let counts = ends.snapshot();
    assert_eq!(counts.len(), 5, "{counts:?}");
    assert!(counts.contains(&("client_gone_unread", 1)), "{counts:?}");
    assert!(counts.contains(&("token_expired", 1)), "{counts:?}");
    assert_eq!(counts.iter().map(|(_, n)| n).sum::<u64>(), 2, "{counts:?}");
    Ok(())
}
