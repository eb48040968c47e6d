//! The admin listener's connection slots. At most a fixed number of connections are
//! open at once; when a new one arrives and every slot is taken, the oldest open
//! connection is closed to make room. A scrape or a probe takes milliseconds, so the
//! oldest connection is almost always one that is stuck or idle (a client that
//! connected and sent nothing): clients that hold connections open cannot keep a
//! health probe out for longer than it takes to connect.
//!
//! Boundary: hands out cancellation tokens; knows nothing of HTTP.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio_util::sync::CancellationToken;

/// The open connections, oldest first.
pub(super) struct Slots {
    max: usize,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    next_id: u64,
    connections: VecDeque<(u64, CancellationToken)>,
}

/// One connection's slot: its token is cancelled when the connection must close
/// (shutdown, or a newer connection needed the room); dropping it frees the slot.
pub(super) struct Slot {
    id: u64,
    pub token: CancellationToken,
    slots: Arc<Slots>,
}

impl Slots {
    pub fn new(max: usize) -> Arc<Slots> {
        Arc::new(Slots {
            max: max.max(1),
            open: Mutex::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Open> {
        // Every critical section leaves the queue consistent before anything can
        // panic.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for a new connection, under `parent` (the listener's shutdown); when
    /// all are taken, the oldest connection is told to close.
    pub fn take(self: &Arc<Self>, parent: &CancellationToken) -> Slot {
        let token = parent.child_token();
        let mut open = self.lock();
        if open.connections.len() >= self.max
            && let Some((_, oldest)) = open.connections.pop_front()
        {
            tracing::debug!("admin listener full: closing its oldest connection");
            oldest.cancel();
        }
        open.next_id += 1;
        let id = open.next_id;
        open.connections.push_back((id, token.clone()));
        Slot {
            id,
            token,
            slots: self.clone(),
        }
    }

    /// Connections open now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().connections.len()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.lock();
        if let Some(i) = open.connections.iter().position(|(id, _)| *id == self.id) {
            open.connections.remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_connection_beyond_the_limit_closes_the_oldest() {
        let stop = CancellationToken::new();
        let slots = Slots::new(2);
        let first = slots.take(&stop);
        let second = slots.take(&stop);
        assert!(!first.token.is_cancelled());
        let third = slots.take(&stop);
        assert!(first.token.is_cancelled(), "the oldest makes room");
        assert!(!second.token.is_cancelled() && !third.token.is_cancelled());
        assert_eq!(slots.len(), 2);
        drop(first);
        assert_eq!(slots.len(), 2, "a closed slot was already given up");
        drop(second);
        assert_eq!(slots.len(), 1);
        let fourth = slots.take(&stop);
        assert!(!third.token.is_cancelled() && !fourth.token.is_cancelled());
        stop.cancel();
        assert!(third.token.is_cancelled() && fourth.token.is_cancelled());
    }
}
