//! One Watch stream: the initial state in chunks, then deltas as the hub hands them
//! over, progress when idle, and a final status on shutdown, token expiry or when
//! its connection reached its maximum age.
//!
//! The stream is polled by the connection's own task; it spawns nothing. It wakes on
//! a new change (the hub's waker), on its progress timer, on its deadline (the
//! earlier of its token's expiry and its connection's end) and on server shutdown.
//!
//! The delivery path is kept to what each message needs: shutdown and expiry are
//! checked by an atomic flag ([`Shutdown::has_begun`], no lock) and the clock, and
//! the timers and the shutdown future are polled (registering the task's waker)
//! only when the stream has nothing to send and the task's waker changed.
//! Its end is logged once, by [`EndLine`], which counts what was sent. The progress timer is not reset per message: it
//! remembers when the last message went out and, when it fires early, moves itself.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use futures_util::Stream;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;
use tonic::Status;

mod end;

use end::EndReason;
pub use end::{EndLine, WatchCalls, WatchEnds};

use super::frame::WatchFrame;
use super::{Shutdown, WatchSettings};
use crate::hub::{InitialMode, SharedEntry, Subscription, WatchHandle};
use crate::model::Millis;
use crate::proto::watch_response::{InitialMode as ProtoMode, Kind};

pub struct WatchStream {
    handle: WatchHandle,
    mode: ProtoMode,
    /// The initial state still to send; `None` once the complete marker went out.
    initial: Option<std::vec::IntoIter<Arc<SharedEntry>>>,
    initial_revision: u64,
    store_id: Arc<str>,
    max_entries: usize,
    max_bytes: usize,
    progress_interval: Duration,
    progress: Pin<Box<Sleep>>,
    /// When the last message went out: progress is due a jittered interval later.
    last_sent: Instant,
    /// The earlier of the token's expiry and the connection's end (maximum age
    /// plus grace), and which of them it is: one timer, one clock read per message.
    deadline: Option<(Pin<Box<Sleep>>, EndReason)>,
    /// Checked before every message (an atomic load).
    cancel: Shutdown,
    /// Polled only when idle, to be woken when shutdown begins.
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    /// The waker that the timers and the shutdown future were last polled with;
    /// while the task polls with the same one they need no new registration.
    registered: Option<Waker>,
    done: bool,
    /// The cut-off mark (see `hub::cutoff`) the last message carried: when the
    /// view's differs, a progress message tells the client at once.
    told_cut_off: Option<Millis>,
    /// What was sent and why the stream ended, logged when it is dropped.
    log: EndLine,
}

fn jittered(mean: Duration) -> Duration {
    mean.mul_f64(rand::random_range(0.75..1.25))
}

impl WatchStream {
    pub fn new(
        sub: Subscription,
        settings: &WatchSettings,
        expires_at: Option<SystemTime>,
        connection_ends_at: Option<Instant>,
        shutdown: &Shutdown,
        log: EndLine,
    ) -> Self {
        let mode = match sub.mode {
            InitialMode::Full => ProtoMode::Full,
            InitialMode::Diff => ProtoMode::Diff,
            InitialMode::Resumed => ProtoMode::Resumed,
        };
        let expiry = expires_at.map(|at| {
            let left = at
                .duration_since(settings.clock.now())
                .unwrap_or(Duration::ZERO);
            (Instant::now() + left, EndReason::TokenExpired)
        });
        let aged = connection_ends_at.map(|at| (at, EndReason::MaxConnectionAge));
        let deadline = match (expiry, aged) {
            (Some(e), Some(a)) => Some(if a.0 < e.0 { a } else { e }),
            (e, a) => e.or(a),
        }
        .map(|(at, reason)| (Box::pin(tokio::time::sleep_until(at)), reason));
        WatchStream {
            handle: sub.handle,
            mode,
            initial: Some(sub.initial.into_iter()),
            initial_revision: sub.revision,
            store_id: sub.store_id,
            max_entries: settings.max_batch_entries.max(1),
            max_bytes: settings.max_batch_bytes,
            progress_interval: settings.progress_interval,
            progress: Box::pin(tokio::time::sleep(jittered(settings.progress_interval))),
            last_sent: Instant::now(),
            deadline,
            cancel: shutdown.clone(),
            shutdown: Box::pin(shutdown.token().child_token().cancelled_owned()),
            registered: None,
            done: false,
            told_cut_off: None,
            log,
        }
    }

    /// The view's cut-off mark, to put on the next message (one atomic load).
    fn cut_off(&mut self) -> Option<Millis> {
        self.told_cut_off = self.handle.disconnected_since();
        self.told_cut_off
    }

    /// A message of `changes` changes goes out: progress is due an interval after it.
    fn sent(&mut self, changes: usize) {
        self.last_sent = Instant::now();
        self.log.sent(changes);
    }

    /// Sets the progress timer to `at` and registers the task with it.
    fn arm_progress(&mut self, at: Instant, cx: &mut Context<'_>) {
        self.progress.as_mut().reset(at);
        let _ = self.progress.as_mut().poll(cx);
    }

    /// The next chunk of the initial state; the last one carries the complete marker.
    fn next_initial(&mut self) -> Option<WatchFrame> {
        let iter = self.initial.as_mut()?;
        let mut changes = Vec::new();
        let mut bytes = 0usize;
        while changes.len() < self.max_entries && bytes < self.max_bytes {
            let Some(e) = iter.next() else { break };
            bytes += e.key.len() + e.value.as_deref().map_or(0, str::len);
            changes.push(e);
        }
        let complete = iter.len() == 0;
        let mut msg = WatchFrame {
            kind: Kind::Initial,
            initial_mode: self.mode,
            changes,
            initial_complete: complete,
            store_id: Some(self.store_id.clone()),
            disconnected_since: self.cut_off(),
            ..WatchFrame::default()
        };
        if complete {
            self.initial = None;
            msg.revision = self.initial_revision;
            msg.resume_token = self.handle.token_at(self.initial_revision);
        }
        Some(msg)
    }

    fn delta(&mut self, batch: Vec<Arc<SharedEntry>>) -> WatchFrame {
        let revision = batch.last().map_or(0, |e| e.revision);
        WatchFrame {
            kind: Kind::Delta,
            initial_mode: ProtoMode::Unspecified,
            changes: batch,
            initial_complete: false,
            revision,
            resume_token: self.handle.token_at(revision),
            store_id: None,
            disconnected_since: self.cut_off(),
        }
    }

    /// A progress message, when nothing is waiting to be taken.
    fn progress(&mut self) -> Option<WatchFrame> {
        let revision = self.handle.idle_revision()?;
        self.sent(0);
        Some(WatchFrame {
            kind: Kind::Progress,
            revision,
            resume_token: self.handle.token_at(revision),
            disconnected_since: self.cut_off(),
            ..WatchFrame::default()
        })
    }

    fn end(
        &mut self,
        reason: EndReason,
        status: Status,
    ) -> Poll<Option<Result<WatchFrame, Status>>> {
        self.done = true;
        self.log.ended(reason, status.code());
        Poll::Ready(Some(Err(status)))
    }
}

impl Stream for WatchStream {
    type Item = Result<WatchFrame, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        // An atomic flag and the clock: no lock, no registration on the delivery path.
        if this.cancel.has_begun() {
            return this.end(EndReason::Shutdown, shutting_down());
        }
        // By the clock, not the timer's state: a stream that never idles has never
        // registered its timer.
        if let Some((timer, reason)) = &this.deadline
            && timer.deadline() <= Instant::now()
        {
            let reason = *reason;
            return this.end(reason, reason_status(reason));
        }
        if let Some(msg) = this.next_initial() {
            this.sent(msg.changes.len());
            return Poll::Ready(Some(Ok(msg)));
        }
        if let Poll::Ready(batch) = this
            .handle
            .poll_changes(cx, this.max_entries, this.max_bytes)
        {
            this.sent(batch.len());
            return Poll::Ready(Some(Ok(this.delta(batch))));
        }
        // Nothing to send. The hub holds this task's waker now; make sure the
        // shutdown future and the timers do too.
        if !this
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            if this.shutdown.as_mut().poll(cx).is_ready() {
                return this.end(EndReason::Shutdown, shutting_down());
            }
            if let Some((timer, reason)) = this.deadline.as_mut()
                && timer.as_mut().poll(cx).is_ready()
            {
                let reason = *reason;
                return this.end(reason, reason_status(reason));
            }
            let _ = this.progress.as_mut().poll(cx);
            this.registered = Some(cx.waker().clone());
        }
        // The view was cut off from its sources, or is current again: say so now.
        if this.handle.disconnected_since() != this.told_cut_off
            && let Some(msg) = this.progress()
        {
            return Poll::Ready(Some(Ok(msg)));
        }
        if this.progress.is_elapsed() {
            let due = this.last_sent + jittered(this.progress_interval);
            let now = Instant::now();
            if due > now {
                // Messages went out since the timer was set: not idle yet.
                this.arm_progress(due, cx);
                return Poll::Pending;
            }
            this.arm_progress(now + jittered(this.progress_interval), cx);
            match this.progress() {
                Some(msg) => return Poll::Ready(Some(Ok(msg))),
                None => {
                    // A change arrived between the two looks: send it instead.
                    if let Poll::Ready(batch) =
                        this.handle
                            .poll_changes(cx, this.max_entries, this.max_bytes)
                    {
                        this.sent(batch.len());
                        return Poll::Ready(Some(Ok(this.delta(batch))));
                    }
                }
            }
        }
        Poll::Pending
    }
}

fn shutting_down() -> Status {
    Status::unavailable("server is shutting down; reconnect and resume with your last resume_token")
}

/// The status a Watch ends with when its deadline passes.
fn reason_status(reason: EndReason) -> Status {
    match reason {
        EndReason::MaxConnectionAge => Status::unavailable(
            "the connection reached its maximum age; reconnect and resume with your last resume_token",
        ),
        _ => token_expired(),
    }
}

fn token_expired() -> Status {
    Status::unauthenticated(
        "token expired; reconnect with a fresh token and resume with your last resume_token",
    )
}

#[cfg(test)]
mod tests;
