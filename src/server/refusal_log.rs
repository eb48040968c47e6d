//! Refused tokens in the log, rate-limited per server: at most a few lines per
//! interval, then one line counting the rest when the interval ends, so a flood of
//! bad tokens cannot flood the log.
//!
//! Writes an `AuthError`'s message (bounded where it quotes input, never the token)
//! and the call's path; knows tokio time and nothing else of the request.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::auth::AuthError;

/// Refusals logged one line each per interval; the rest are counted.
pub const DEFAULT_REFUSAL_LINES: u32 = 10;
/// The interval the limit applies to.
pub const DEFAULT_REFUSAL_INTERVAL: Duration = Duration::from_secs(10);

/// What to do with one refusal.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Write its line.
    Log,
    /// Count it; `first` when it is the first one counted in this interval (the
    /// summary at the interval's end is due).
    Count { first: bool },
}

/// The counting, on tokio time.
#[derive(Debug)]
struct Window {
    limit: u32,
    interval: Duration,
    /// When the current interval began; `None` before the first refusal.
    start: Option<Instant>,
    logged: u32,
    counted: u64,
}

impl Window {
    /// A refusal at `now`; a summary of the interval that ended before it, if any
    /// refusal went unlogged there and its summary was not written yet.
    fn refused(&mut self, now: Instant) -> (Verdict, Option<u64>) {
        let mut summary = None;
        let ended = self.start.is_none_or(|s| now >= s + self.interval);
        if ended {
            summary = self.start.and_then(|s| self.summary(s));
            self.start = Some(now);
            self.logged = 0;
        }
        if self.logged < self.limit {
            self.logged += 1;
            (Verdict::Log, summary)
        } else {
            self.counted += 1;
            (
                Verdict::Count {
                    first: self.counted == 1,
                },
                summary,
            )
        }
    }

    /// The refusals counted, not logged, in the interval that began at `start`,
    /// taken once.
    fn summary(&mut self, start: Instant) -> Option<u64> {
        if self.start != Some(start) || self.counted == 0 {
            return None;
        }
        Some(std::mem::take(&mut self.counted))
    }
}

/// Logs refused tokens at info, at most `limit` lines per interval, and one
/// summary line per interval for the rest.
pub(super) struct RefusalLog {
    window: Arc<Mutex<Window>>,
    /// The parent of the summary timers' tokens.
    stop: CancellationToken,
}

impl RefusalLog {
    pub fn new(limit: u32, interval: Duration, stop: CancellationToken) -> Self {
        RefusalLog {
            window: Arc::new(Mutex::new(Window {
                limit,
                interval,
                start: None,
                logged: 0,
                counted: 0,
            })),
            stop,
        }
    }

    /// A call to `path` was refused with `error`.
    pub fn refused(&self, error: &AuthError, path: &str) {
        let (verdict, summary, start, interval) = {
            let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
            let (verdict, summary) = w.refused(Instant::now());
            (verdict, summary, w.start, w.interval)
        };
        if let Some(n) = summary {
            write_summary(n, interval);
        }
        match verdict {
            Verdict::Log => tracing::info!(reason = %error, path, "token refused"),
            Verdict::Count { first: false } => {}
            Verdict::Count { first: true } => {
                // The interval's summary is written when it ends, even if no
                // refusal follows.
                let Some(start) = start else { return };
                let (window, stop) = (self.window.clone(), self.stop.child_token());
                tokio::spawn(async move {
                    tokio::select! {
                        () = stop.cancelled() => {}
                        () = tokio::time::sleep_until(start + interval) => {
                            let n = window.lock().unwrap_or_else(|p| p.into_inner()).summary(start);
                            if let Some(n) = n {
                                write_summary(n, interval);
                            }
                        }
                    }
                });
            }
        }
    }
}

fn write_summary(n: u64, interval: Duration) {
    tracing::info!(
        refusals = n,
        "{n} more refusals in the last {}",
        humantime::format_duration(interval)
    );
}

#[cfg(test)]
mod tests;
