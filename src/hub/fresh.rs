//! Freshness: how long a change took from the moment it was made at its source to
//! being applied in the hub, and to the last watcher it was handed to having taken
//! it; and, for each event source, the newest source timestamp it has seen and when
//! it last read its source successfully.
//!
//! A change carries its [`Origin`] (which source, and when the source says it was
//! made) beside it in its [`SharedEntry`]. Two delay histograms by source:
//!
//! - *applied*: observed once when the hub applies the change (a duplicate or an
//!   older version is not applied, so not observed);
//! - *delivered*: observed once per change, when no watcher it was fanned out to
//!   still holds it pending and at least one of them took it. A copy replaced by a
//!   newer change of the same key (coalescing) or dropped with its watcher was not
//!   delivered: it only stops being waited for. A change every copy of which was
//!   replaced or dropped, or that matched no watcher, is not observed at all.
//!
//! Counting the copies costs one atomic read-modify-write per delivery, on a word
//! inside the shared entry ([`SharedEntry::holders`]): its low 32 bits count the
//! copies still pending, its high 32 bits the watchers that took one. A take adds
//! `TAKER - 1` (one more taker, one copy fewer) in a single `fetch_add`; only the
//! operation that leaves no copy observes the histogram. While the fan-out runs it
//! holds [`HANDING`] copies of its own, so a watcher taking the change before the
//! fan-out has finished can never see the count reach zero early; the fan-out then
//! swaps them for the number of watchers it actually handed the change to.
//!
//! Source clocks are not this host's: a source timestamp after now (clock skew)
//! counts as a delay of 0 and is counted in [`Freshness::clock_skew`].
//!
//! Boundary: plain atomics, counted by `apply` and `watch` and read by the exporter
//! at each scrape; knows nothing of the exporter, of AWS or of the wire. Source
//! timestamps are wall time, so wall time (not the tokio clock) is read here.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::shared::SharedEntry;
use crate::model::Millis;

/// Where a change came from, as the `source` label of the freshness metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeSource {
    /// A write through configwatch, timed from its commit.
    Api,
    /// A DynamoDB stream record, timed from its ApproximateCreationDateTime.
    DynamodbStream,
    /// A Parameter Store change event, timed from the EventBridge event's time.
    ParameterEvents,
    /// Found by re-reading a scope (reconciliation, or after a gap in a stream),
    /// timed from the entry's `updated_at`.
    Reconcile,
    /// Brought by a relay's upstream Watch, timed from the entry's `updated_at`
    /// (the time the write was made, wherever it was made).
    Upstream,
}

impl ChangeSource {
    pub const ALL: [ChangeSource; 5] = [
        ChangeSource::Api,
        ChangeSource::DynamodbStream,
        ChangeSource::ParameterEvents,
        ChangeSource::Reconcile,
        ChangeSource::Upstream,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ChangeSource::Api => "api",
            ChangeSource::DynamodbStream => "dynamodb-stream",
            ChangeSource::ParameterEvents => "sqs-events",
            ChangeSource::Reconcile => "reconcile",
            ChangeSource::Upstream => "upstream",
        }
    }
}

/// Where and when a change was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub source: ChangeSource,
    /// Microseconds since the Unix epoch, by the source's clock.
    pub at_micros: i64,
}

impl Origin {
    /// A change made now (a write that has just committed).
    pub fn now(source: ChangeSource) -> Origin {
        Origin {
            source,
            at_micros: now_micros(),
        }
    }

    /// A change made at `at` (ms since the epoch); `None` when the time is unknown
    /// (0 or before the epoch).
    pub fn at_millis(source: ChangeSource, at: Millis) -> Option<Origin> {
        (at > 0).then(|| Origin {
            source,
            at_micros: at.saturating_mul(1000),
        })
    }

    /// A change made at `at`; `None` before the epoch.
    pub fn at(source: ChangeSource, at: SystemTime) -> Option<Origin> {
        let micros = at.duration_since(UNIX_EPOCH).ok()?.as_micros();
        Some(Origin {
            source,
            at_micros: i64::try_from(micros).ok()?,
        })
    }
}

/// Seconds from the time in `at` (µs since the epoch) to now; `None` if unset.
fn age(at: &AtomicI64) -> Option<f64> {
    let at = at.load(Ordering::Relaxed);
    (at != NONE_SEEN).then(|| now_micros().saturating_sub(at) as f64 / 1e6)
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// Upper bounds (seconds) of the delay histograms' buckets: 1 ms to 5 minutes.
pub const DELAY_BUCKETS: [f64; 17] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
];

/// A histogram of delays kept in plain atomics.
#[derive(Debug, Default)]
pub struct DelayHistogram {
    /// Observations per bucket (not cumulative); the last is above every bound.
    counts: [AtomicU64; DELAY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

/// What a [`DelayHistogram`] holds, read at once.
#[derive(Debug, Clone, PartialEq)]
pub struct DelaySnapshot {
    pub count: u64,
    pub sum_seconds: f64,
    /// Upper bound (the last is `f64::INFINITY`) and observations in that bucket
    /// only (not cumulative).
    pub buckets: Vec<(f64, u64)>,
}

impl DelayHistogram {
    fn observe(&self, micros: u64) {
        let seconds = micros as f64 / 1e6;
        let i = DELAY_BUCKETS.partition_point(|bound| *bound < seconds);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> DelaySnapshot {
        let buckets: Vec<(f64, u64)> = DELAY_BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(&self.counts)
            .map(|(bound, n)| (bound, n.load(Ordering::Relaxed)))
            .collect();
        DelaySnapshot {
            count: buckets.iter().map(|(_, n)| n).sum(),
            sum_seconds: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
            buckets,
        }
    }
}

/// Copies the fan-out holds while it runs (see the module documentation).
pub(super) const HANDING: u64 = 1 << 31;
/// The copies still pending: the low half of [`SharedEntry::holders`].
const COPIES: u64 = (1 << 32) - 1;
/// One watcher that took the change: the high half counts them.
const TAKER: u64 = 1 << 32;

/// No source timestamp seen yet.
const NONE_SEEN: i64 = i64::MIN;

/// The hub's freshness figures.
#[derive(Debug)]
pub struct Freshness {
    applied: [DelayHistogram; ChangeSource::ALL.len()],
    delivered: [DelayHistogram; ChangeSource::ALL.len()],
    clock_skew: AtomicU64,
    /// The newest source timestamp seen (µs since the epoch), by source.
    newest: [AtomicI64; ChangeSource::ALL.len()],
}

impl Default for Freshness {
    fn default() -> Self {
        Freshness {
            applied: Default::default(),
            delivered: Default::default(),
            clock_skew: AtomicU64::new(0),
            newest: std::array::from_fn(|_| AtomicI64::new(NONE_SEEN)),
        }
    }
}

impl Freshness {
    /// Delays from source to applied in the hub.
    pub fn applied(&self, source: ChangeSource) -> DelaySnapshot {
        self.applied[source as usize].snapshot()
    }

    /// Delays from source to the last watcher that was handed the change.
    pub fn delivered(&self, source: ChangeSource) -> DelaySnapshot {
        self.delivered[source as usize].snapshot()
    }

    /// Delays counted as 0 because the source timestamp was after this host's now.
    pub fn clock_skew(&self) -> u64 {
        self.clock_skew.load(Ordering::Relaxed)
    }

    /// A source has read a record made at `origin` (applied or not: a duplicate,
    /// or one for a scope nobody holds, still shows the source is current).
    pub fn saw(&self, origin: Origin) {
        self.newest[origin.source as usize].fetch_max(origin.at_micros, Ordering::Relaxed);
    }

    /// Seconds from the newest source timestamp `source` has seen to now; `None`
    /// until it has seen one. Negative under clock skew.
    pub fn newest_record_age(&self, source: ChangeSource) -> Option<f64> {
        age(&self.newest[source as usize])
    }

    /// The delay from `origin` to now, clamped to 0 (and counted) under skew.
    fn delay_micros(&self, origin: Origin) -> u64 {
        let delay = now_micros().saturating_sub(origin.at_micros);
        u64::try_from(delay).unwrap_or_else(|_| {
            self.clock_skew.fetch_add(1, Ordering::Relaxed);
            0
        })
    }

    /// The hub has applied a change made at `origin`.
    pub(super) fn observe_applied(&self, origin: Origin) {
        let delay = self.delay_micros(origin);
        self.applied[origin.source as usize].observe(delay);
    }

    /// The fan-out has handed `entry` to `watchers` pending sets: it gives up its
    /// own [`HANDING`] copies for theirs.
    pub(super) fn handed_out(&self, entry: &SharedEntry, watchers: u32) {
        let less = HANDING - u64::from(watchers);
        let after = entry.holders.fetch_sub(less, Ordering::Relaxed) - less;
        self.settle(entry, after);
    }

    /// A watcher took its copy of `entry`. The one atomic operation per delivery.
    #[inline]
    pub(super) fn taken(&self, entry: &SharedEntry) {
        let before = entry.holders.fetch_add(TAKER - 1, Ordering::Relaxed);
        if before & COPIES == 1 {
            self.settle(entry, before + TAKER - 1);
        }
    }

    /// A watcher's copy of `entry` went without being taken: replaced by a newer
    /// change of the same key, or dropped with its watcher.
    pub(super) fn left(&self, entry: &SharedEntry) {
        let before = entry.holders.fetch_sub(1, Ordering::Relaxed);
        if before & COPIES == 1 {
            self.settle(entry, before - 1);
        }
    }

    /// Observes the delivered delay when no copy is left and some watcher took one.
    #[inline]
    fn settle(&self, entry: &SharedEntry, holders: u64) {
        if holders & COPIES == 0
            && holders >= TAKER
            && let Some(origin) = entry.origin
        {
            let delay = self.delay_micros(origin);
            self.delivered[origin.source as usize].observe(delay);
        }
    }
}

#[cfg(test)]
mod tests;
