//! Keeping history of other tools' changes: the reader offers each change it
//! applies that no history item records yet ([`HistorySink::offer`], never
//! waiting), and one task per reader records them in the table
//! ([`record_changes`]) as `external`, with this instance's name.
//!
//! History of external changes is best effort: a change is applied to the hub
//! whether or not it can be recorded; a record that fails, or that finds the queue
//! full, is logged and counted (`stream_history_failed`) and not tried again.
//!
//! Boundary: the table write is behind [`HistoryWriter`]; which records to offer
//! is [`super::record`]'s.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::api::{ExternalChange, HistoryWriter};
use crate::source::SourceCounters;

/// Changes waiting to be recorded, at most.
pub const HISTORY_QUEUE: usize = 1024;

/// Where the reader offers the changes to record.
pub(super) struct HistorySink {
    queue: mpsc::Sender<ExternalChange>,
    counters: Arc<SourceCounters>,
}

impl HistorySink {
    pub(super) fn new(counters: Arc<SourceCounters>) -> (Self, mpsc::Receiver<ExternalChange>) {
        let (queue, changes) = mpsc::channel(HISTORY_QUEUE);
        (HistorySink { queue, counters }, changes)
    }

    /// Queues a change to record; a full queue drops it (counted).
    pub(super) fn offer(&self, change: ExternalChange) {
        if let Err(e) = self.queue.try_send(change) {
            let change = match &e {
                mpsc::error::TrySendError::Full(c) | mpsc::error::TrySendError::Closed(c) => c,
            };
            SourceCounters::add(&self.counters.stream_history_failed, 1);
            tracing::warn!(scope = %change.scope, key = %change.entry.key, version = change.entry.version, "too many changes waiting to be kept in history; this one is not recorded");
        }
    }
}

/// Records queued changes as seen by `instance` until `shutdown` (or until the
/// reader is gone).
pub(super) async fn record_changes<H: HistoryWriter>(
    mut changes: mpsc::Receiver<ExternalChange>,
    writer: Arc<H>,
    instance: String,
    counters: Arc<SourceCounters>,
    shutdown: CancellationToken,
) {
    loop {
        let change = tokio::select! {
            () = shutdown.cancelled() => return,
            change = changes.recv() => match change {
                Some(change) => change,
                None => return,
            },
        };
        let recorded = tokio::select! {
            () = shutdown.cancelled() => return,
            recorded = writer.record_external(&change, &instance) => recorded,
        };
        let (scope, key, version) = (&change.scope, &change.entry.key, change.entry.version);
        match recorded {
            Ok(true) => {
                SourceCounters::add(&counters.stream_history_recorded, 1);
                tracing::debug!(%scope, %key, version, "kept another tool's change in history");
            }
            Ok(false) => tracing::debug!(%scope, %key, version, "the change is in history already"),
            Err(e) => {
                SourceCounters::add(&counters.stream_history_failed, 1);
                tracing::warn!(%scope, %key, version, error = %e, "cannot keep another tool's change in history; it is applied all the same");
            }
        }
    }
}
