//! The one line a Watch leaves in the log when it ends: whose it was, what it
//! watched, how long it lasted, what it was sent and why it ended.
//!
//! The stream owns one [`EndLine`] and tells it of each message (two integer
//! additions, nothing else on the delivery path) and of the status it ends with.
//! The line is written when the stream is dropped, the only moment that also sees
//! a client that went away, and counted then in [`WatchEnds`] by its reason (a
//! fixed set of five), and as a call by its status through [`WatchCalls`]. Knows
//! the scope and a gRPC code; nothing of the hub or of the metrics exporter.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::time::Instant;

use crate::model::Scope;

/// Why a Watch ended, as its end line says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EndReason {
    /// The client closed the stream or its connection (nothing ended it here).
    ClientGone,
    /// The same, while the Watch waited for room in its connection's reply budget:
    /// the client had stopped reading.
    ClientGoneUnread,
    /// The server began shutting down.
    Shutdown,
    /// The caller's token expired.
    TokenExpired,
    /// The connection reached its maximum age (and grace): the client reconnects.
    MaxConnectionAge,
}

impl EndReason {
    /// Every reason, in the order [`WatchEnds`] counts them.
    const ALL: [EndReason; 5] = [
        EndReason::ClientGone,
        EndReason::ClientGoneUnread,
        EndReason::Shutdown,
        EndReason::TokenExpired,
        EndReason::MaxConnectionAge,
    ];

    /// The reason as a metric label: short and fixed.
    fn label(self) -> &'static str {
        match self {
            EndReason::ClientGone => "client_gone",
            EndReason::ClientGoneUnread => "client_gone_unread",
            EndReason::Shutdown => "shutdown",
            EndReason::TokenExpired => "token_expired",
            EndReason::MaxConnectionAge => "max_connection_age",
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            EndReason::ClientGone => "client went away",
            EndReason::ClientGoneUnread => "client went away without reading (reply budget full)",
            EndReason::Shutdown => "shutdown",
            EndReason::TokenExpired => "token expired",
            EndReason::MaxConnectionAge => "connection reached its maximum age",
        }
    }
}

/// Where the server counts Watch calls (by the status they end with, and the
/// streams open), told by each stream itself: a stream knows how it ended, so no
/// layer has to wrap its reply body (which would cost every message of every
/// Watch a call through one more boxed body).
pub trait WatchCalls: Send + Sync + 'static {
    /// A Watch stream started.
    fn opened(&self);
    /// A Watch stream ended with a status of `code` (CANCELLED when the client
    /// went away).
    fn ended(&self, code: tonic::Code);
}

/// Watch streams ended so far, by reason; and where their calls are counted.
#[derive(Default)]
pub struct WatchEnds {
    counts: [AtomicU64; EndReason::ALL.len()],
    calls: Option<Arc<dyn WatchCalls>>,
}

impl std::fmt::Debug for WatchEnds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchEnds")
            .field("counts", &self.counts)
            .finish_non_exhaustive()
    }
}

impl WatchEnds {
    /// Also tells `calls` of every Watch stream that starts and ends.
    pub fn with_calls(calls: Arc<dyn WatchCalls>) -> Self {
        WatchEnds {
            counts: Default::default(),
            calls: Some(calls),
        }
    }

    fn count(&self, reason: EndReason, code: tonic::Code) {
        self.counts[reason as usize].fetch_add(1, Ordering::Relaxed);
        if let Some(calls) = &self.calls {
            calls.ended(code);
        }
    }

    /// Each reason's label with its count.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        EndReason::ALL
            .iter()
            .map(|r| (r.label(), self.counts[*r as usize].load(Ordering::Relaxed)))
            .collect()
    }
}

/// What a Watch has done so far; logs it at info once, on drop.
pub struct EndLine {
    scope: Scope,
    prefixes: usize,
    started: Instant,
    messages: u64,
    changes: u64,
    /// The status the stream ended with, if it ended one.
    ended: Option<(EndReason, tonic::Code)>,
    /// Set while the Watch waits for its connection's reply budget.
    waiting: Option<Arc<AtomicBool>>,
    /// Where the ending is counted, if anywhere.
    ends: Option<Arc<WatchEnds>>,
}

impl EndLine {
    /// A Watch of `prefixes` prefixes in `scope`, starting now, whose messages wait
    /// on a reply budget while `waiting` is set.
    pub fn new(scope: Scope, prefixes: usize, waiting: Option<Arc<AtomicBool>>) -> Self {
        EndLine {
            scope,
            prefixes,
            started: Instant::now(),
            messages: 0,
            changes: 0,
            ended: None,
            waiting,
            ends: None,
        }
    }

    /// Counts the stream as open in `ends` now, and its ending when it ends, as
    /// well as logging it. For a stream that has started: a Watch refused before
    /// is counted by the server's call metrics as any refused call.
    pub fn counted_in(mut self, ends: Arc<WatchEnds>) -> Self {
        if let Some(calls) = &ends.calls {
            calls.opened();
        }
        self.ends = Some(ends);
        self
    }

    /// A message carrying `changes` changes went out.
    #[inline]
    pub(crate) fn sent(&mut self, changes: usize) {
        self.messages += 1;
        self.changes += changes as u64;
    }

    /// The stream ends with a status of `code`, for `reason`.
    pub(crate) fn ended(&mut self, reason: EndReason, code: tonic::Code) {
        self.ended = Some((reason, code));
    }

    /// Messages and changes sent so far, and the ending recorded.
    #[cfg(test)]
    pub(crate) fn state(&self) -> (u64, u64, Option<(EndReason, tonic::Code)>) {
        (self.messages, self.changes, self.ended)
    }

    /// Why it ended: the status it ended with, else the client went away.
    pub(crate) fn reason(&self) -> (EndReason, Option<tonic::Code>) {
        match self.ended {
            Some((reason, code)) => (reason, Some(code)),
            None if self
                .waiting
                .as_ref()
                .is_some_and(|w| w.load(Ordering::Relaxed)) =>
            {
                (EndReason::ClientGoneUnread, None)
            }
            None => (EndReason::ClientGone, None),
        }
    }
}

impl Drop for EndLine {
    fn drop(&mut self) {
        let (reason, code) = self.reason();
        if let Some(ends) = &self.ends {
            ends.count(reason, code.unwrap_or(tonic::Code::Cancelled));
        }
        tracing::info!(
            tenant = self.scope.tenant_id(),
            service = self.scope.service(),
            prefixes = self.prefixes,
            duration_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            messages = self.messages,
            changes = self.changes,
            reason = reason.as_str(),
            code = code.map(tracing::field::debug),
            "watch ended"
        );
    }
}
