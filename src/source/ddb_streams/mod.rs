//! DynamoDB Streams ingestion: changes to the tenant table, whoever made them, reach
//! the hub.
//!
//! Job: follow every shard of the table's stream (NEW_AND_OLD_IMAGES), parents before
//! children, and apply each record to the hub by item version: INSERT/MODIFY as the
//! new image (`isActive` false is a tombstone), REMOVE (a hard delete by another
//! tool) as a tombstone one version above the old image. The hub ignores anything
//! not newer, so duplicates and re-reads are harmless. A record that names no valid
//! tenant or key is logged and skipped.
//!
//! Boundary: the stream operations sit behind [`StreamApi`] ([`SdkStream`] on AWS, an
//! in-memory fake in the tests) and the one table write behind [`VersionWriter`];
//! SDK types end in this folder and in [`crate::store::dynamodb`]. The hub sees only
//! [`Scope`](crate::model::Scope) and [`Entry`](crate::model::Entry).
//!
//! Parts: `api` the [`StreamApi`] and [`VersionWriter`] traits with the records and
//! errors they carry; `sdk` their AWS implementation ([`SdkStream`], [`stream_arn`]);
//! `reader` the shard state machine (listing, iterators, gaps, one round of reads);
//! `record` what one record does to the hub (reversioning, removals); `history` the
//! recording of other tools' changes; `fake` the
//! in-memory stream the tests run the reader on; this file [`run`] and [`run_with`].
//!
//! Shards. Each listed shard is tracked. A child is read only once its parent has
//! been read to its end (GetRecords returned no next iterator), or once the parent is
//! no longer listed (trimmed). On a first start the open shards are read from LATEST
//! and closed ones are not read; every shard found later is read from TRIM_HORIZON.
//! Iterators are replaced after [`StreamSettings::iterator_max_age`] (before the
//! 15-minute expiry) and after ExpiredIteratorException, at AFTER_SEQUENCE_NUMBER of
//! the last record handled.
//!
//! Gaps. A first start (and any LATEST iterator), TrimmedDataAccessException, an
//! iterator replaced before any record was handled, and a shard that vanished before
//! it was read to its end, may each hide changes: the loaded scopes are then
//! resynced from the table ([`Hub::resync`](crate::hub::Hub::resync)) and `stream_gaps` counts it.
//!
//! History. Every record of a history item (`AUDIT#` sort key) is passed over:
//! it is never configuration, never skipped-as-bad, drift or a gap. A change
//! another tool made (a versioned item whose `auditedVersion` is not its `version`,
//! or a REMOVE of a live item) is applied to the hub first and then offered to
//! `history`, which records it in the table as `external` with
//! [`StreamSettings::instance`], best effort (see `history`).
//!
//! Tools that do not bump `version` (the console): a record for a loaded scope whose
//! content differs from what the hub holds, at a version not above the held one (or
//! with none), makes the reader rewrite the item's version to one above the held one,
//! on the condition that the item still has the version seen. The rewrite comes back
//! through the stream as an ordinary newer version; a second server doing the same
//! loses on the condition.
//!
//! Budget: DynamoDB Streams allows at most two simultaneous readers per shard. This
//! task is one reader per shard per process, and at most two origin instances run it
//! against one table (see the design's "Scaling past one machine"); every other
//! instance is a relay.
//!
//! Retry policy, per operation. Every call goes through the SDK's standard retry (set
//! once in [`crate::aws::retry_config`]: exponential backoff with jitter); no call
//! is wrapped in a retry loop of its own. What still fails waits for the reader's next
//! round, which backs off by [`configwatch_client::Retry`] while rounds fail:
//! - DescribeStream (every [`StreamSettings::rediscover_interval`], and at once when a
//!   shard ends): on failure the shard list is kept and the next tick tries again,
//!   with backoff. ResourceNotFound makes it look up the table's latest stream again.
//! - GetShardIterator: retried every tick from the remembered position, with backoff.
//! - GetRecords (each readable shard once per [`StreamSettings::poll_interval`], all
//!   shards concurrently): throttling keeps the iterator and backs off; expiry
//!   re-gets the iterator; trimmed data is a gap and restarts at TRIM_HORIZON; any
//!   other error drops the iterator and re-gets it from the last handled record.
//! - UpdateItem re-versioning: if the table is unavailable, the record is read again
//!   (AT_SEQUENCE_NUMBER) next tick; a refused condition is final.
//! - Resync after a gap: a scope that fails to load keeps the gap pending, retried
//!   next tick.
//!
//! Each round's outcome goes to the source's [`SourceHealth`] (readiness waits for the
//! first successful round); it logs the first failure and the recovery, and the failed
//! calls themselves are logged at debug level.
//!
//! The task never ends on an error; it stops promptly when `shutdown` is cancelled.

mod api;
#[cfg(test)]
mod fake;
mod history;
mod reader;
mod record;
mod sdk;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use api::{
    ChangeKind, ChangeRecord, ExternalChange, HistoryWriter, Image, IteratorStart, RecordPage,
    ShardInfo, StreamApi, StreamError, VersionWriter,
};
pub use history::HISTORY_QUEUE;
pub use record::{Removal, removal};
pub use sdk::{SdkStream, SetupError, convert_record, stream_arn};

use super::SourceContext;
use super::health::SourceHealth;
use crate::store::dynamodb::DynamoBackend;
use crate::store::history::Retention;
use configwatch_client::{Backoff, Retry};
use history::{HistorySink, record_changes};
use reader::Reader;

/// Time between GetRecords calls on each shard, unless configured.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Tuning of the stream reader.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// Time between GetRecords calls on each shard.
    pub poll_interval: Duration,
    /// Time between shard listings (a shard that ends triggers one at once).
    pub rediscover_interval: Duration,
    /// Age at which an iterator is replaced; AWS expires them after 15 minutes.
    pub iterator_max_age: Duration,
    /// Longest wait between tries after errors or throttling.
    pub max_backoff: Duration,
    /// The name this server records in history as the instance that saw another
    /// tool's change.
    pub instance: String,
    /// The table's history retention (the expiry set on a version superseded by
    /// another tool's change).
    pub retention: Retention,
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            poll_interval: DEFAULT_POLL_INTERVAL,
            rediscover_interval: Duration::from_secs(60),
            iterator_max_age: Duration::from_secs(12 * 60),
            max_backoff: Duration::from_secs(30),
            instance: default_instance(),
            retention: Retention::default(),
        }
    }
}

/// This machine's host name, or "unknown".
pub fn default_instance() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Reads the table's stream into the hub until `shutdown`. Waits (retrying with
/// backoff, logging why) until the table's stream can be found. Reports to
/// `health` each round: a success once the stream is found and every readable shard
/// was read, a failure (with the last error) otherwise.
pub async fn run(
    ctx: SourceContext,
    settings: StreamSettings,
    dynamodb: aws_sdk_dynamodb::Client,
    streams: aws_sdk_dynamodbstreams::Client,
    table: String,
    health: SourceHealth,
    shutdown: CancellationToken,
) {
    let mut backoff = Retry::new(Backoff::doubling(
        settings.poll_interval,
        settings.max_backoff,
    ));
    let arn = loop {
        match stream_arn(&dynamodb, &table).await {
            Ok(arn) => break arn,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the table's stream yet; retrying");
                health.failing(format!("cannot find the table's stream: {e}"));
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff.failed()) => {}
        }
    };
    tracing::info!(%table, stream = %arn, "reading the DynamoDB stream");
    let api = SdkStream::new(streams, dynamodb.clone(), table.clone(), arn);
    let versions = DynamoBackend::new(dynamodb, table).with_retention(settings.retention);
    run_with(ctx, settings, api, versions, health, shutdown).await;
}

/// The reader over any [`StreamApi`] and table writer (the fakes in tests).
pub async fn run_with<S: StreamApi, V: VersionWriter + HistoryWriter>(
    ctx: SourceContext,
    settings: StreamSettings,
    api: S,
    versions: V,
    health: SourceHealth,
    shutdown: CancellationToken,
) {
    let mut backoff = Retry::new(Backoff::doubling(
        settings.poll_interval,
        settings.max_backoff,
    ));
    let poll = settings.poll_interval;
    let versions = Arc::new(versions);
    let (sink, changes) = HistorySink::new(ctx.counters.clone());
    let recorder = tokio::spawn(record_changes(
        changes,
        versions.clone(),
        settings.instance.clone(),
        ctx.counters.clone(),
        shutdown.child_token(),
    ));
    let mut reader = Reader::new(ctx, settings, api, versions, sink);
    loop {
        let trouble = tokio::select! {
            () = shutdown.cancelled() => break,
            trouble = reader.tick() => trouble,
        };
        let wait = match trouble {
            Some(why) => {
                health.failing(why);
                backoff.failed()
            }
            None => {
                health.succeeded();
                backoff.succeeded();
                poll
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(wait) => {}
        }
    }
    drop(reader);
    if let Err(e) = recorder.await {
        tracing::warn!(error = %e, "the history recorder of the DynamoDB stream ended abnormally");
    }
    tracing::debug!("DynamoDB stream reader stopped");
}
