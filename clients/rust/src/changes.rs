//! The stream of changes. Each stream has its own queue holding at most one change
//! per key: a newer change for a key replaces the waiting one (counting it in
//! [`Change::coalesced`]) and moves to the back. A reader that falls behind costs at
//! most one change per key and always gets the newest state of each key: never a
//! skipped key, never an unbounded queue.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};

use futures_core::Stream;

use crate::cache::Change;
use crate::error::Error;

#[derive(Debug, Default)]
struct QueueState {
    /// Waiting changes by arrival order (a sequence number).
    order: BTreeMap<u64, Change>,
    /// key -> its sequence number in `order`.
    by_key: HashMap<String, u64>,
    next_seq: u64,
    ended: bool,
    /// Yielded once after what is waiting, then the stream ends.
    failure: Option<Error>,
    waker: Option<Waker>,
}

#[derive(Debug)]
pub(crate) struct Queue {
    prefix: Option<String>,
    state: Mutex<QueueState>,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // Nothing in this module panics while holding the lock; if a caller's code did,
        // the queue's state is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a change (if it matches the stream's prefix), coalescing per key.
    pub fn push(&self, change: &Change) {
        if let Some(p) = &self.prefix
            && !change.key.starts_with(p.as_str())
        {
            return;
        }
        let waker = {
            let mut s = self.lock();
            if s.ended {
                return;
            }
            let mut change = change.clone();
            if let Some(old_seq) = s.by_key.remove(&change.key)
                && let Some(old) = s.order.remove(&old_seq)
            {
                change.coalesced = old.coalesced + 1;
                change.previous_version = old.previous_version;
            }
            let seq = s.next_seq;
            s.next_seq += 1;
            s.by_key.insert(change.key.clone(), seq);
            s.order.insert(seq, change);
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Ends the stream once what is waiting has been read; with an error, yields it
    /// last.
    pub fn end(&self, failure: Option<Error>) {
        let waker = {
            let mut s = self.lock();
            if s.ended {
                return;
            }
            s.ended = true;
            s.failure = failure;
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Option<Result<Change, Error>>> {
        let mut s = self.lock();
        if let Some((_, change)) = s.order.pop_first() {
            s.by_key.remove(&change.key);
            return Poll::Ready(Some(Ok(change)));
        }
        if s.ended {
            return Poll::Ready(s.failure.take().map(Err));
        }
        match &mut s.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    fn waiting(&self) -> usize {
        self.lock().order.len()
    }
}

/// The set of open change streams of a client.
#[derive(Debug, Default)]
pub(crate) struct Queues {
    list: Mutex<Vec<Weak<Queue>>>,
    /// Set when the client stopped: new streams end at once (with the error).
    ended: Mutex<Option<Option<Error>>>,
}

impl Queues {
    pub fn open(&self, prefix: Option<String>) -> ChangeStream {
        let queue = Arc::new(Queue {
            prefix,
            state: Mutex::new(QueueState::default()),
        });
        // `ended` is held while the queue is added, so `end_all` cannot slip between
        // the check and the push (lock order: `ended`, then `list`).
        let ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
        match &*ended {
            Some(failure) => queue.end(failure.clone()),
            None => self
                .list
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Arc::downgrade(&queue)),
        }
        drop(ended);
        ChangeStream { queue }
    }

    /// Hands the changes to every open stream (and forgets dropped ones).
    pub fn deliver(&self, changes: &[Change]) {
        let live: Vec<Arc<Queue>> = {
            let mut list = self.list.lock().unwrap_or_else(|p| p.into_inner());
            list.retain(|w| w.strong_count() > 0);
            list.iter().filter_map(Weak::upgrade).collect()
        };
        for q in live {
            for c in changes {
                q.push(c);
            }
        }
    }

    /// Ends every stream, and every stream opened from now on.
    pub fn end_all(&self, failure: Option<Error>) {
        let list = {
            let mut ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
            *ended = Some(failure.clone());
            std::mem::take(&mut *self.list.lock().unwrap_or_else(|p| p.into_inner()))
        };
        for q in list.iter().filter_map(Weak::upgrade) {
            q.end(failure.clone());
        }
    }
}

/// Changes to the cache from the moment the stream was opened, each delivered after
/// the whole server message that carried it was applied (so reads made while handling
/// a change see a consistent cache).
///
/// A reader that falls behind gets the newest change of each key, with
/// [`Change::coalesced`] saying how many it replaced; memory stays bounded by the
/// number of keys. The stream ends (`None`) when the client is closed or every
/// [`Client`](crate::Client) handle is dropped; when the watch stops on an error the
/// application must fix (e.g. `PermissionDenied`), it yields that error once, then
/// ends.
///
/// Implements [`futures_core::Stream`]; [`ChangeStream::next`] needs no extension
/// trait.
#[derive(Debug)]
pub struct ChangeStream {
    queue: Arc<Queue>,
}

impl ChangeStream {
    /// The next change; `None` once the client is closed.
    pub async fn next(&mut self) -> Option<Result<Change, Error>> {
        std::future::poll_fn(|cx| self.queue.poll_next(cx)).await
    }

    /// Changes waiting to be read.
    pub fn waiting(&self) -> usize {
        self.queue.waiting()
    }
}

impl Stream for ChangeStream {
    type Item = Result<Change, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.queue.poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{Cause, ChangeKind};

    fn change(key: &str, version: u64) -> Change {
        Change {
            key: key.into(),
            kind: ChangeKind::Set,
            version,
            previous_version: version.checked_sub(1).filter(|v| *v > 0),
            secret: false,
            revision: version,
            cause: Cause::Delta,
            coalesced: 0,
            raw: Some(Arc::from(version.to_string())),
        }
    }

    fn drain(s: &mut ChangeStream) -> Vec<Result<Change, Error>> {
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut out = Vec::new();
        while let Poll::Ready(Some(item)) = Pin::new(&mut *s).poll_next(&mut cx) {
            out.push(item);
        }
        out
    }

    #[test]
    fn a_slow_reader_gets_the_newest_change_per_key() {
        let queues = Queues::default();
        let mut s = queues.open(None);
        let mut only_b = queues.open(Some("b".into()));
        for v in 1..=5 {
            queues.deliver(&[change("a", v)]);
        }
        queues.deliver(&[change("b", 1)]);
        queues.deliver(&[change("a", 6)]);
        assert_eq!(s.waiting(), 2);
        let got: Vec<(String, u64, u64, Option<u64>)> = drain(&mut s)
            .into_iter()
            .filter_map(Result::ok)
            .map(|c| (c.key, c.version, c.coalesced, c.previous_version))
            .collect();
        // b arrived before a's last change, which moved a to the back; a's
        // previous_version is the one before the first coalesced change.
        assert_eq!(got, [("b".into(), 1, 0, None), ("a".into(), 6, 5, None)]);
        assert_eq!(drain(&mut only_b).len(), 1);
    }

    #[test]
    fn a_failure_is_yielded_once_after_what_waits_then_the_stream_ends() {
        let queues = Queues::default();
        let mut s = queues.open(None);
        queues.deliver(&[change("a", 1)]);
        queues.end_all(Some(Error::Closed));
        let got = drain(&mut s);
        assert_eq!(got.len(), 2);
        assert!(matches!(got[1], Err(Error::Closed)));
        // A stream opened after the end ends at once, with the same error.
        let mut late = queues.open(None);
        assert_eq!(drain(&mut late).len(), 1);
    }

    #[test]
    fn dropped_streams_are_forgotten() {
        let queues = Queues::default();
        let s = queues.open(None);
        drop(s);
        queues.deliver(&[change("a", 1)]);
        assert!(queues.list.lock().map(|l| l.is_empty()).unwrap_or(false));
    }
}
