//! The servers a client may use and the order it tries them in: an ordered list of
//! URLs, gone through round-robin from a starting one. The watch moves to the next
//! URL when a server fails it, at once while some URL of the round is untried (the
//! first move after an established stream broke waits [`Backoff::spread`], at most
//! the first step), and waits by the [`Backoff`] only once every URL failed in a
//! row.
//!
//! Boundary: URLs as text, indexes, counts and delays; no I/O and nothing of gRPC.
//! Which failures are a server's (and so a reason to move on) is decided by
//! `error::next_step`; making the channel to a URL is `client/connection.rs`.

use std::time::Duration;

use crate::backoff::{Backoff, Retry};
use crate::error::Next;

/// The URLs of a server setting: one URL, or several separated by commas (as an
/// environment variable holds them); blanks around and between them are dropped.
pub(crate) fn split_list(servers: &str) -> Vec<String> {
    servers
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Where the watch is in the list, and how many servers failed it in a row.
#[derive(Debug, Clone)]
pub(crate) struct Rotation {
    len: usize,
    current: usize,
    /// Servers that failed since the last stream that reached its initial state, or
    /// since the last full round (which waited the backoff).
    failed_in_round: usize,
    /// Full rounds (and failures that are not a server's) in a row: the backoff's
    /// exponent.
    retry: Retry,
    /// Refused tokens in a row since the last stream that reached its initial state.
    auth_refusals: u32,
    /// The last stream reached its initial state: the next move waits the backoff's
    /// spread (see [`Backoff::spread`]) rather than nothing.
    broke: bool,
    policy: Backoff,
}

impl Rotation {
    /// A rotation over `len` servers (at least one) starting at `start`.
    pub fn new(len: usize, start: usize, backoff: Backoff) -> Rotation {
        let len = len.max(1);
        Rotation {
            len,
            current: start % len,
            failed_in_round: 0,
            retry: Retry::new(backoff),
            auth_refusals: 0,
            broke: false,
            policy: backoff,
        }
    }

    /// The index of the server to use now.
    pub fn current(&self) -> usize {
        self.current
    }

    /// A stream reached its initial state: this server works, and failures count
    /// from zero again.
    pub fn synced(&mut self) {
        self.failed_in_round = 0;
        self.auth_refusals = 0;
        self.retry.succeeded();
        self.broke = true;
    }

    /// What follows an attempt that ended by `step`: `None` to stop, else how long
    /// to wait before the next attempt, made on the server [`current`](Self::current)
    /// names then.
    pub fn after(&mut self, step: Next) -> Option<Duration> {
        let broke = std::mem::take(&mut self.broke);
        match step {
            Next::Fail => None,
            // Expired or refused: the token source is asked again, at once the first
            // time, with backoff when fresh tokens keep being refused. Every server
            // would refuse it alike: no reason to move.
            Next::RefreshToken => {
                self.auth_refusals = self.auth_refusals.saturating_add(1);
                Some(if self.auth_refusals == 1 {
                    Duration::ZERO
                } else {
                    self.stay()
                })
            }
            // The server cannot read the resume token: at once, with the versions.
            Next::DropResumeToken => Some(Duration::ZERO),
            // Every client of a server that died moves at the same instant: the
            // first move after an established stream broke is spread.
            Next::MoveOn => Some(match self.move_on() {
                Duration::ZERO if broke => self.policy.spread(),
                wait => wait,
            }),
            Next::Backoff => Some(self.stay()),
        }
    }

    /// The current server failed the watch (unreachable, a stream ended by a
    /// transport error or by the server going away): moves to the next one and
    /// returns how long to wait before trying it: nothing while a server of this
    /// round is untried, the backoff's next delay once every one failed in a row.
    fn move_on(&mut self) -> Duration {
        self.current = (self.current + 1) % self.len;
        self.failed_in_round += 1;
        if self.failed_in_round < self.len {
            return Duration::ZERO;
        }
        self.failed_in_round = 0;
        self.retry.failed()
    }

    /// A failure that would be the same on every server (the token source, a
    /// refused token): stays on this one, after the backoff's next delay.
    fn stay(&mut self) -> Duration {
        self.retry.failed()
    }
}

#[cfg(test)]
mod tests;
