//! Sources: background tasks that bring changes made outside this server into the hub.
//!
//! - [`ddb_streams`]: DynamoDB Streams of the tenant table.
//! - [`sqs_events`]: EventBridge "Parameter Store Change" events from an SQS queue.
//! - [`reconcile`]: a periodic re-read of every loaded scope, which repairs whatever
//!   an event-based source missed.
//!
//! Every source hands the hub whole entries with their versions (`Hub::apply`), so
//! duplicates, re-reads and reordering are harmless; where a source cannot know what
//! it missed, it asks the hub to resync the affected scopes. Each task stops when
//! the shutdown token is cancelled.

pub mod cutoff;
pub mod ddb_streams;
pub mod health;
pub mod reconcile;
pub mod sqs_events;
pub mod supervise;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::hub::Hub;

/// What the sources have done, for logs, tests and metrics.
#[derive(Debug, Default)]
pub struct SourceCounters {
    /// DynamoDB stream records applied to the hub (newer than what it held).
    pub stream_records_applied: AtomicU64,
    /// DynamoDB stream records read (applied or not).
    pub stream_records_read: AtomicU64,
    /// DynamoDB stream records skipped as not configuration (no new image, an item
    /// that names no valid tenant and key, or with attributes of the wrong types).
    pub stream_records_skipped: AtomicU64,
    /// Stream gaps (first start, trimmed data, lost iterators) that made the loaded
    /// tenants reload from the table.
    pub stream_gaps: AtomicU64,
    /// Items rewritten with a higher version because a change arrived without one
    /// (a tool that did not bump `version`).
    pub stream_reversioned: AtomicU64,
    /// Versions other tools made (seen on the stream) recorded in the keys' history.
    pub stream_history_recorded: AtomicU64,
    /// Versions other tools made that could not be recorded in history (the
    /// change itself is applied all the same).
    pub stream_history_failed: AtomicU64,
    /// Shard iterators got again for a shard already read (renewed before they
    /// expire, or after one expired or failed).
    pub stream_iterator_renewals: AtomicU64,
    /// Stream shards being read now (a gauge, set each round).
    pub stream_shards: AtomicU64,
    /// SQS messages received (each receive of a message, redeliveries included).
    pub sqs_messages_received: AtomicU64,
    /// SQS messages handled and deleted.
    pub sqs_messages_applied: AtomicU64,
    /// SQS messages that could not be parsed (left to the redrive policy).
    pub sqs_messages_malformed: AtomicU64,
    /// SQS messages naming a parameter outside the root (left to the redrive policy).
    pub sqs_messages_outside_root: AtomicU64,
    /// Reconciliation passes completed.
    pub reconcile_runs: AtomicU64,
    /// Changes reconciliation found and applied (drift).
    pub reconcile_drift: AtomicU64,
}

impl SourceCounters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Sets a gauge kept among the counters.
    pub fn set(gauge: &AtomicU64, n: u64) {
        gauge.store(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// What every source task needs.
#[derive(Clone)]
pub struct SourceContext {
    pub hub: Arc<Hub>,
    pub counters: Arc<SourceCounters>,
}
