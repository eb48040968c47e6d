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
//! SDK types end here and in [`crate::store::dynamodb`]. The hub sees only
//! [`Scope`] and [`Entry`].
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
//! resynced from the table ([`Hub::resync`]) and `stream_gaps` counts it.
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
//! Retry policy, per operation. Every call goes through the SDK's standard retry (3
//! attempts, exponential backoff with jitter). On top of that:
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
//! The task never ends on an error; it stops promptly when `shutdown` is cancelled.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{AttributeValue, StreamViewType};
use aws_sdk_dynamodbstreams::types as st;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{SourceContext, SourceCounters};
use crate::hub::Hub;
use crate::model::{Entry, Scope, now_millis};
use crate::store::StoreError;
use crate::store::dynamodb::{
    DynamoBackend, Failure, ItemError, ParsedItem, classify, item_active, item_version, parse_item,
    parse_item_keys, same_json,
};
use configwatch_client::{Backoff, Retry};

/// An item image from a stream record.
pub type Image = HashMap<String, AttributeValue>;

/// Most records one GetRecords returns (the API's limit).
const RECORDS_LIMIT: i32 = 1000;

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
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            poll_interval: Duration::from_secs(1),
            rediscover_interval: Duration::from_secs(60),
            iterator_max_age: Duration::from_secs(12 * 60),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// One shard as listed by DescribeStream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardInfo {
    pub id: String,
    pub parent: Option<String>,
    /// The shard has an ending sequence number: no new records will be added.
    pub closed: bool,
}

/// Where an iterator starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IteratorStart {
    TrimHorizon,
    Latest,
    AtSequence(String),
    AfterSequence(String),
}

/// What a record reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Insert,
    Modify,
    Remove,
}

/// One stream record, with the images converted to DynamoDB attribute values.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeRecord {
    pub sequence: String,
    pub kind: ChangeKind,
    pub keys: Image,
    pub new_image: Option<Image>,
    pub old_image: Option<Image>,
}

/// One GetRecords answer. `next` is `None` when the shard is closed and read to its
/// end.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordPage {
    pub records: Vec<ChangeRecord>,
    pub next: Option<String>,
}

/// How a stream operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error("the shard iterator expired")]
    ExpiredIterator,
    #[error("the records asked for are trimmed from the stream")]
    TrimmedData,
    #[error("throttled: {0}")]
    Throttled(String),
    /// The stream or shard does not exist (any more).
    #[error("not found: {0}")]
    Gone(String),
    #[error("{0}")]
    Other(String),
}

/// Why the table's stream cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetupError {
    #[error("table '{0}' has no stream: enable a NEW_AND_OLD_IMAGES stream on table {0}")]
    NoStream(String),
    #[error(
        "table '{table}' streams {view} records, which lack the items: enable a NEW_AND_OLD_IMAGES stream on table {table}"
    )]
    WrongView { table: String, view: String },
    #[error(
        "DynamoDB table '{0}' does not exist; create it (deploy/configwatch.cfn.json) or fix --table"
    )]
    NoTable(String),
    #[error("cannot describe DynamoDB table '{table}': {reason}")]
    Describe { table: String, reason: String },
}

impl SetupError {
    /// Whether trying again later may help (as opposed to a configuration to fix).
    pub fn is_transient(&self) -> bool {
        matches!(self, SetupError::Describe { .. })
    }
}

/// The stream operations the reader needs.
#[async_trait]
pub trait StreamApi: Send + Sync + 'static {
    /// Every shard of the stream, with its parent and whether it is closed.
    async fn shards(&self) -> Result<Vec<ShardInfo>, StreamError>;
    /// A new iterator on a shard.
    async fn iterator(&self, shard_id: &str, start: &IteratorStart) -> Result<String, StreamError>;
    /// The next records of an iterator.
    async fn records(&self, iterator: &str) -> Result<RecordPage, StreamError>;
}

/// The table write the reader needs: re-versioning an item that changed without a
/// version bump.
#[async_trait]
pub trait VersionWriter: Send + Sync + 'static {
    /// Sets the item's version to `to` if it still has version `seen` (`None`: no
    /// version attribute). `Ok(false)` when the condition refused.
    async fn bump_version(
        &self,
        scope: &Scope,
        key: &str,
        seen: Option<u64>,
        to: u64,
    ) -> Result<bool, StoreError>;
}

#[async_trait]
impl VersionWriter for DynamoBackend {
    async fn bump_version(
        &self,
        scope: &Scope,
        key: &str,
        seen: Option<u64>,
        to: u64,
    ) -> Result<bool, StoreError> {
        DynamoBackend::bump_version(self, scope, key, seen, to).await
    }
}

/// The ARN of the table's current stream (DescribeTable `LatestStreamArn`). Refuses a
/// table without an enabled stream or with one that carries no new images.
pub async fn stream_arn(
    dynamodb: &aws_sdk_dynamodb::Client,
    table: &str,
) -> Result<String, SetupError> {
    let out = dynamodb
        .describe_table()
        .table_name(table)
        .send()
        .await
        .map_err(|e| match classify(&e) {
            Failure::Missing => SetupError::NoTable(table.to_owned()),
            _ => SetupError::Describe {
                table: table.to_owned(),
                reason: DisplayErrorContext(&e).to_string(),
            },
        })?;
    let description = out.table();
    let spec = description.and_then(|t| t.stream_specification());
    let arn = description.and_then(|t| t.latest_stream_arn());
    match (spec, arn) {
        (Some(spec), Some(arn)) if spec.stream_enabled() => match spec.stream_view_type() {
            Some(StreamViewType::NewAndOldImages | StreamViewType::NewImage) | None => {
                Ok(arn.to_owned())
            }
            Some(other) => Err(SetupError::WrongView {
                table: table.to_owned(),
                view: other.as_str().to_owned(),
            }),
        },
        _ => Err(SetupError::NoStream(table.to_owned())),
    }
}

fn stream_error<E>(operation: &str, err: SdkError<E, HttpResponse>) -> StreamError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match err.code() {
        Some("ExpiredIteratorException") => return StreamError::ExpiredIterator,
        Some("TrimmedDataAccessException") => return StreamError::TrimmedData,
        _ => {}
    }
    let message = format!(
        "DynamoDB Streams {operation}: {}",
        DisplayErrorContext(&err)
    );
    match classify(&err) {
        Failure::Throttled => StreamError::Throttled(message),
        Failure::Missing => StreamError::Gone(message),
        Failure::Transient | Failure::Other => StreamError::Other(message),
    }
}

fn convert(value: &st::AttributeValue) -> AttributeValue {
    match value {
        st::AttributeValue::B(b) => AttributeValue::B(b.clone()),
        st::AttributeValue::Bool(b) => AttributeValue::Bool(*b),
        st::AttributeValue::Bs(set) => AttributeValue::Bs(set.clone()),
        st::AttributeValue::L(items) => AttributeValue::L(items.iter().map(convert).collect()),
        st::AttributeValue::M(map) => AttributeValue::M(convert_image(map)),
        st::AttributeValue::N(n) => AttributeValue::N(n.clone()),
        st::AttributeValue::Ns(set) => AttributeValue::Ns(set.clone()),
        st::AttributeValue::Null(b) => AttributeValue::Null(*b),
        st::AttributeValue::S(s) => AttributeValue::S(s.clone()),
        st::AttributeValue::Ss(set) => AttributeValue::Ss(set.clone()),
        // A type newer than this SDK: reads as null, so the item fails to parse only
        // where the value matters.
        _ => AttributeValue::Null(true),
    }
}

fn convert_image(image: &HashMap<String, st::AttributeValue>) -> Image {
    image.iter().map(|(k, v)| (k.clone(), convert(v))).collect()
}

/// A stream record as configwatch reads it; `None` when it lacks what every record
/// has (its data, event name or sequence number).
pub fn convert_record(record: &st::Record) -> Option<ChangeRecord> {
    let data = record.dynamodb()?;
    let kind = match record.event_name()? {
        st::OperationType::Insert => ChangeKind::Insert,
        st::OperationType::Modify => ChangeKind::Modify,
        st::OperationType::Remove => ChangeKind::Remove,
        _ => return None,
    };
    Some(ChangeRecord {
        sequence: data.sequence_number()?.to_owned(),
        kind,
        keys: data.keys().map(convert_image).unwrap_or_default(),
        new_image: data.new_image().map(convert_image),
        old_image: data.old_image().map(convert_image),
    })
}

/// What a REMOVE record asks of the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    /// A tombstone at this version.
    Tombstone {
        scope: Scope,
        key: String,
        version: u64,
    },
    /// A tombstone one above whatever is served: the record has no usable version.
    AboveServed { scope: Scope, key: String },
}

/// Reads a REMOVE record: the key from its old image (or its keys), and the version
/// its tombstone takes.
pub fn removal(record: &ChangeRecord) -> Result<Removal, ItemError> {
    let image = record.old_image.as_ref().unwrap_or(&record.keys);
    let (scope, key) = parse_item_keys(image)?;
    let old = record
        .old_image
        .as_ref()
        .map(|old| Ok::<_, ItemError>((item_version(old)?, item_active(old)?)));
    Ok(match old {
        // An item already soft-deleted: its tombstone is at its own version.
        Some(Ok((Some(version), false))) => Removal::Tombstone {
            scope,
            key,
            version,
        },
        // A live item's tombstone goes one above it; an item already at the highest
        // version has no version left for one, so the record cannot be applied.
        Some(Ok((Some(version), true))) => Removal::Tombstone {
            scope,
            key,
            version: version
                .checked_add(1)
                .ok_or_else(|| ItemError::BadAttribute {
                    name: "version",
                    reason: format!("{version} leaves no version for its tombstone"),
                })?,
        },
        // No version to go by: one above whatever is served.
        _ => Removal::AboveServed { scope, key },
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// [`StreamApi`] on AWS DynamoDB Streams.
pub struct SdkStream {
    streams: aws_sdk_dynamodbstreams::Client,
    dynamodb: aws_sdk_dynamodb::Client,
    table: String,
    arn: Mutex<String>,
}

impl SdkStream {
    pub fn new(
        streams: aws_sdk_dynamodbstreams::Client,
        dynamodb: aws_sdk_dynamodb::Client,
        table: impl Into<String>,
        arn: impl Into<String>,
    ) -> Self {
        SdkStream {
            streams,
            dynamodb,
            table: table.into(),
            arn: Mutex::new(arn.into()),
        }
    }

    fn arn(&self) -> String {
        lock(&self.arn).clone()
    }

    async fn describe(&self, arn: &str) -> Result<Vec<ShardInfo>, StreamError> {
        let mut out = Vec::new();
        let mut start: Option<String> = None;
        loop {
            let page = self
                .streams
                .describe_stream()
                .stream_arn(arn)
                .set_exclusive_start_shard_id(start.take())
                .send()
                .await
                .map_err(|e| stream_error("DescribeStream", e))?;
            let Some(description) = page.stream_description() else {
                return Ok(out);
            };
            for shard in description.shards() {
                let Some(id) = shard.shard_id() else { continue };
                out.push(ShardInfo {
                    id: id.to_owned(),
                    parent: shard.parent_shard_id().map(str::to_owned),
                    closed: shard
                        .sequence_number_range()
                        .and_then(|r| r.ending_sequence_number())
                        .is_some(),
                });
            }
            match description.last_evaluated_shard_id() {
                Some(last) => start = Some(last.to_owned()),
                None => return Ok(out),
            }
        }
    }
}

#[async_trait]
impl StreamApi for SdkStream {
    async fn shards(&self) -> Result<Vec<ShardInfo>, StreamError> {
        let arn = self.arn();
        match self.describe(&arn).await {
            Err(StreamError::Gone(reason)) => {
                // The stream was disabled or replaced: follow the table's latest one.
                match stream_arn(&self.dynamodb, &self.table).await {
                    Ok(latest) if latest != arn => {
                        tracing::warn!(old = %arn, new = %latest, table = %self.table, "the table has a new stream; following it");
                        *lock(&self.arn) = latest.clone();
                        self.describe(&latest).await
                    }
                    Ok(_) => Err(StreamError::Gone(reason)),
                    Err(e) => Err(StreamError::Other(e.to_string())),
                }
            }
            other => other,
        }
    }

    async fn iterator(&self, shard_id: &str, start: &IteratorStart) -> Result<String, StreamError> {
        let (kind, sequence) = match start {
            IteratorStart::TrimHorizon => (st::ShardIteratorType::TrimHorizon, None),
            IteratorStart::Latest => (st::ShardIteratorType::Latest, None),
            IteratorStart::AtSequence(s) => (st::ShardIteratorType::AtSequenceNumber, Some(s)),
            IteratorStart::AfterSequence(s) => {
                (st::ShardIteratorType::AfterSequenceNumber, Some(s))
            }
        };
        let out = self
            .streams
            .get_shard_iterator()
            .stream_arn(self.arn())
            .shard_id(shard_id)
            .shard_iterator_type(kind)
            .set_sequence_number(sequence.cloned())
            .send()
            .await
            .map_err(|e| stream_error("GetShardIterator", e))?;
        out.shard_iterator
            .ok_or_else(|| StreamError::Other("GetShardIterator returned no iterator".into()))
    }

    async fn records(&self, iterator: &str) -> Result<RecordPage, StreamError> {
        let out = self
            .streams
            .get_records()
            .shard_iterator(iterator)
            .limit(RECORDS_LIMIT)
            .send()
            .await
            .map_err(|e| stream_error("GetRecords", e))?;
        let mut records = Vec::with_capacity(out.records().len());
        for record in out.records() {
            match convert_record(record) {
                Some(r) => records.push(r),
                None => tracing::warn!(
                    event_id = ?record.event_id(),
                    "skipping a stream record without a sequence number or known event name"
                ),
            }
        }
        Ok(RecordPage {
            records,
            next: out.next_shard_iterator,
        })
    }
}

/// Reads the table's stream into the hub until `shutdown`. Waits (retrying with
/// backoff, logging why) until the table's stream can be found.
pub async fn run(
    ctx: SourceContext,
    settings: StreamSettings,
    dynamodb: aws_sdk_dynamodb::Client,
    streams: aws_sdk_dynamodbstreams::Client,
    table: String,
    shutdown: CancellationToken,
) {
    let mut backoff = Retry::new(Backoff::doubling(
        settings.poll_interval,
        settings.max_backoff,
    ));
    let arn = loop {
        match stream_arn(&dynamodb, &table).await {
            Ok(arn) => break arn,
            Err(e) => tracing::error!(error = %e, "cannot read the table's stream yet; retrying"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff.failed()) => {}
        }
    };
    tracing::info!(%table, stream = %arn, "reading the DynamoDB stream");
    let api = SdkStream::new(streams, dynamodb.clone(), table.clone(), arn);
    let versions = DynamoBackend::new(dynamodb, table);
    run_with(ctx, settings, api, versions, shutdown).await;
}

/// The reader over any [`StreamApi`] and [`VersionWriter`] (the fake in tests).
pub async fn run_with<S: StreamApi, V: VersionWriter>(
    ctx: SourceContext,
    settings: StreamSettings,
    api: S,
    versions: V,
    shutdown: CancellationToken,
) {
    let mut backoff = Retry::new(Backoff::doubling(
        settings.poll_interval,
        settings.max_backoff,
    ));
    let poll = settings.poll_interval;
    let mut reader = Reader::new(ctx, settings, api, versions);
    loop {
        let trouble = tokio::select! {
            () = shutdown.cancelled() => break,
            trouble = reader.tick() => trouble,
        };
        let wait = if trouble {
            backoff.failed()
        } else {
            backoff.succeeded();
            poll
        };
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(wait) => {}
        }
    }
    tracing::debug!("DynamoDB stream reader stopped");
}

struct ShardState {
    parent: Option<String>,
    /// Where the next iterator starts: after the last record handled, or the first
    /// start when none was.
    position: IteratorStart,
    iterator: Option<(String, Instant)>,
    /// Read to its end.
    drained: bool,
}

impl ShardState {
    /// Whether a new iterator would start exactly after what was handled.
    fn knows_position(&self) -> bool {
        matches!(
            self.position,
            IteratorStart::AfterSequence(_) | IteratorStart::AtSequence(_)
        )
    }
}

struct Reader<S, V> {
    ctx: SourceContext,
    settings: StreamSettings,
    api: S,
    versions: V,
    shards: BTreeMap<String, ShardState>,
    /// A listing has succeeded: shards found from now on are new.
    listed: bool,
    next_listing: Instant,
    gap_pending: bool,
}

impl<S: StreamApi, V: VersionWriter> Reader<S, V> {
    fn new(ctx: SourceContext, settings: StreamSettings, api: S, versions: V) -> Self {
        Reader {
            ctx,
            settings,
            api,
            versions,
            shards: BTreeMap::new(),
            listed: false,
            next_listing: Instant::now(),
            gap_pending: false,
        }
    }

    fn hub(&self) -> &Hub {
        &self.ctx.hub
    }

    /// A gap that may hide changes: worth a warning.
    fn gap(&mut self, shard: &str, reason: &str) {
        tracing::warn!(
            shard,
            reason,
            "stream gap: the loaded tenants are reloaded from the table"
        );
        self.mark_gap();
    }

    /// The gap every start has (reading from LATEST): expected, so only noted.
    fn start_gap(&mut self, shard: &str, reason: &str) {
        tracing::info!(
            shard,
            reason,
            "stream start: the loaded tenants are reloaded from the table"
        );
        self.mark_gap();
    }

    fn mark_gap(&mut self) {
        if !self.gap_pending {
            self.gap_pending = true;
            SourceCounters::add(&self.ctx.counters.stream_gaps, 1);
        }
    }

    /// One round: list shards if due, get missing iterators, read every readable
    /// shard once, resync after a gap. Returns whether anything failed.
    async fn tick(&mut self) -> bool {
        let mut trouble = false;
        if !self.listed || Instant::now() >= self.next_listing {
            match self.api.shards().await {
                Ok(list) => {
                    self.merge(list);
                    self.next_listing = Instant::now() + self.settings.rediscover_interval;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list the stream's shards; retrying");
                    trouble = true;
                }
            }
        }
        let readable: Vec<String> = self
            .shards
            .iter()
            .filter(|(_, s)| self.is_readable(s))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &readable {
            trouble |= !self.ensure_iterator(id).await;
        }
        let jobs: Vec<(String, String)> = readable
            .iter()
            .filter_map(|id| {
                let it = self.shards.get(id)?.iterator.as_ref()?;
                Some((id.clone(), it.0.clone()))
            })
            .collect();
        let api = &self.api;
        let results = futures_util::future::join_all(jobs.into_iter().map(|(id, it)| async move {
            let result = api.records(&it).await;
            (id, result)
        }))
        .await;
        for (id, result) in results {
            trouble |= !self.handle_page(&id, result).await;
        }
        if self.gap_pending {
            trouble |= !self.resync().await;
        }
        trouble
    }

    fn is_readable(&self, shard: &ShardState) -> bool {
        !shard.drained
            && shard
                .parent
                .as_ref()
                .and_then(|p| self.shards.get(p))
                .is_none_or(|parent| parent.drained)
    }

    /// Takes a new shard listing in.
    fn merge(&mut self, list: Vec<ShardInfo>) {
        let first = !self.listed;
        let listed: HashSet<&str> = list.iter().map(|s| s.id.as_str()).collect();
        let vanished: Vec<String> = self
            .shards
            .iter()
            .filter(|(id, s)| !listed.contains(id.as_str()) && !s.drained)
            .map(|(id, _)| id.clone())
            .collect();
        self.shards.retain(|id, _| listed.contains(id.as_str()));
        for id in vanished {
            self.gap(&id, "a shard was trimmed before it was read to its end");
        }
        for info in list {
            if self.shards.contains_key(&info.id) {
                continue;
            }
            // First start: what is in the stream already is covered by the resync
            // of the first-start gap; read open shards from now on. Later: read a
            // new shard whole.
            let (position, drained) = if first {
                (IteratorStart::Latest, info.closed)
            } else {
                (IteratorStart::TrimHorizon, false)
            };
            tracing::debug!(shard = %info.id, parent = ?info.parent, ?position, drained, "new shard");
            self.shards.insert(
                info.id,
                ShardState {
                    parent: info.parent,
                    position,
                    iterator: None,
                    drained,
                },
            );
        }
        if first {
            self.listed = true;
            self.start_gap(
                "(all)",
                "first start: changes before it are not in the stream's view",
            );
        }
    }

    /// Gets an iterator for a shard if it has none or its iterator is old. Returns
    /// false on failure.
    async fn ensure_iterator(&mut self, id: &str) -> bool {
        let max_age = self.settings.iterator_max_age;
        let Some(shard) = self.shards.get_mut(id) else {
            return true;
        };
        match &shard.iterator {
            Some((_, at)) if at.elapsed() < max_age => return true,
            Some(_) => {
                shard.iterator = None;
                if !shard.knows_position() {
                    self.gap(id, "an iterator was replaced before any record was read");
                }
            }
            None => {}
        }
        let Some(shard) = self.shards.get(id) else {
            return true;
        };
        let start = shard.position.clone();
        match self.api.iterator(id, &start).await {
            Ok(iterator) => {
                if start == IteratorStart::Latest {
                    self.start_gap(id, "reading from LATEST");
                }
                if let Some(shard) = self.shards.get_mut(id) {
                    shard.iterator = Some((iterator, Instant::now()));
                }
                true
            }
            Err(StreamError::TrimmedData) => {
                self.gap(id, "the records after the last one read were trimmed");
                if let Some(shard) = self.shards.get_mut(id) {
                    shard.position = IteratorStart::TrimHorizon;
                }
                false
            }
            Err(e) => {
                if matches!(e, StreamError::Gone(_)) {
                    self.next_listing = Instant::now();
                }
                tracing::warn!(shard = id, error = %e, "cannot get a shard iterator; retrying");
                false
            }
        }
    }

    /// Handles one GetRecords answer. Returns false on failure.
    async fn handle_page(&mut self, id: &str, result: Result<RecordPage, StreamError>) -> bool {
        let page = match result {
            Ok(page) => page,
            Err(e) => {
                let knows = self.shards.get(id).is_some_and(|s| s.knows_position());
                let mut drop_iterator = true;
                match &e {
                    StreamError::ExpiredIterator => {
                        if !knows {
                            self.gap(id, "an iterator expired before any record was read");
                        }
                    }
                    StreamError::TrimmedData => {
                        self.gap(id, "records were trimmed before they were read");
                        if let Some(shard) = self.shards.get_mut(id) {
                            shard.position = IteratorStart::TrimHorizon;
                        }
                    }
                    StreamError::Throttled(_) => drop_iterator = false,
                    StreamError::Gone(_) => self.next_listing = Instant::now(),
                    StreamError::Other(_) => {}
                }
                tracing::warn!(shard = id, error = %e, "GetRecords failed");
                if drop_iterator && let Some(shard) = self.shards.get_mut(id) {
                    shard.iterator = None;
                }
                // An expired iterator is routine: not a reason to back off.
                return matches!(e, StreamError::ExpiredIterator);
            }
        };
        for record in &page.records {
            SourceCounters::add(&self.ctx.counters.stream_records_read, 1);
            let handled = self.handle_record(record).await;
            let Some(shard) = self.shards.get_mut(id) else {
                return true;
            };
            if handled {
                shard.position = IteratorStart::AfterSequence(record.sequence.clone());
            } else {
                // Read this record again next time.
                shard.position = IteratorStart::AtSequence(record.sequence.clone());
                shard.iterator = None;
                return false;
            }
        }
        let Some(shard) = self.shards.get_mut(id) else {
            return true;
        };
        match page.next {
            Some(next) => shard.iterator = Some((next, Instant::now())),
            None => {
                tracing::info!(shard = id, "shard read to its end");
                shard.iterator = None;
                shard.drained = true;
                // Its children may be listed by now.
                self.next_listing = Instant::now();
            }
        }
        true
    }

    /// Applies one record. Returns false when it must be read again later.
    async fn handle_record(&self, record: &ChangeRecord) -> bool {
        match record.kind {
            ChangeKind::Insert | ChangeKind::Modify => {
                let Some(image) = &record.new_image else {
                    tracing::warn!(
                        sequence = %record.sequence,
                        "skipping a record without a new image: the stream must be NEW_AND_OLD_IMAGES"
                    );
                    SourceCounters::add(&self.ctx.counters.stream_records_skipped, 1);
                    return true;
                };
                match parse_item(image) {
                    Ok(parsed) => self.apply_image(parsed).await,
                    Err(e) => {
                        tracing::warn!(
                            sequence = %record.sequence,
                            pk = ?image.get("pk"),
                            sk = ?image.get("sk"),
                            error = %e,
                            "skipping a stream record that is not valid configuration"
                        );
                        SourceCounters::add(&self.ctx.counters.stream_records_skipped, 1);
                        true
                    }
                }
            }
            ChangeKind::Remove => {
                self.apply_remove(record);
                true
            }
        }
    }

    fn apply_remove(&self, record: &ChangeRecord) {
        let applied = match removal(record) {
            Ok(Removal::Tombstone {
                scope,
                key,
                version,
            }) => self
                .hub()
                .apply(&scope, Entry::tombstone(&key, version, now_millis())),
            Ok(Removal::AboveServed { scope, key }) => self.hub().remove_if_live(&scope, &key),
            Err(e) => {
                tracing::warn!(sequence = %record.sequence, error = %e, "skipping a REMOVE record that names no configuration key");
                SourceCounters::add(&self.ctx.counters.stream_records_skipped, 1);
                return;
            }
        };
        if applied.is_some() {
            SourceCounters::add(&self.ctx.counters.stream_records_applied, 1);
        }
    }

    /// Applies a new image, or re-versions the item when it changed without a
    /// version bump. Returns false when the table was unavailable for that.
    async fn apply_image(&self, parsed: ParsedItem) -> bool {
        let ParsedItem {
            scope,
            entry,
            versioned,
        } = parsed;
        if self.hub().is_loaded(&scope) {
            let held = self.hub().held(&scope, &entry.key);
            if needs_new_version(held.as_deref().map(|h| h.entry()), &entry, versioned) {
                let to = held.as_ref().map_or(0, |h| h.version).max(entry.version) + 1;
                let seen = versioned.then_some(entry.version);
                return match self
                    .versions
                    .bump_version(&scope, &entry.key, seen, to)
                    .await
                {
                    Ok(true) => {
                        SourceCounters::add(&self.ctx.counters.stream_reversioned, 1);
                        tracing::info!(%scope, key = %entry.key, ?seen, to, "item changed without a version bump; re-versioned it");
                        true
                    }
                    Ok(false) => {
                        tracing::debug!(%scope, key = %entry.key, "item changed again or another server re-versioned it");
                        true
                    }
                    Err(StoreError::Unavailable(e)) => {
                        tracing::warn!(%scope, key = %entry.key, error = %e, "cannot re-version an item now; will read the record again");
                        false
                    }
                    Err(e) => {
                        tracing::warn!(%scope, key = %entry.key, error = %e, "cannot re-version an item; skipping the record");
                        true
                    }
                };
            }
        }
        if self.hub().apply(&scope, entry).is_some() {
            SourceCounters::add(&self.ctx.counters.stream_records_applied, 1);
        }
        true
    }

    /// Reloads every loaded scope after a gap. Returns false if one failed (the gap
    /// stays pending).
    async fn resync(&mut self) -> bool {
        let mut ok = true;
        for scope in self.hub().scopes() {
            match self.hub().resync(&scope).await {
                Ok(report) if report.applied > 0 => {
                    tracing::info!(%scope, applied = report.applied, "stream gap repaired from the table")
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(%scope, error = %e, "cannot reload a tenant after a stream gap; retrying");
                    ok = false;
                }
            }
        }
        if ok {
            self.gap_pending = false;
        }
        ok
    }
}

/// Whether a record shows a change that came without a version bump: different
/// content from what is held at a version not above it, or no version at all.
fn needs_new_version(held: Option<&Entry>, record: &Entry, versioned: bool) -> bool {
    match held {
        None => !versioned,
        Some(held) => (!versioned || record.version <= held.version) && !same_content(held, record),
    }
}

fn same_content(a: &Entry, b: &Entry) -> bool {
    if a.deleted || b.deleted {
        return a.deleted == b.deleted;
    }
    match (a.value.as_deref(), b.value.as_deref()) {
        (Some(x), Some(y)) => same_json(x, y),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::hub::{HubConfig, ScopeLoader, SharedEntry};
    use crate::source::SourceCounters;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// An in-memory stream: shards with records, scripted failures, and a log of
    /// what was asked and delivered.
    #[derive(Clone, Default)]
    struct Fake(Arc<Mutex<FakeState>>);

    #[derive(Default)]
    struct FakeState {
        shards: Vec<FakeShard>,
        iterators: HashMap<String, (String, usize)>,
        next_iterator: u64,
        next_sequence: u64,
        page_size: usize,
        /// Fail once when an iterator at (shard, index) is used.
        fail_at: HashMap<(String, usize), StreamError>,
        iterator_requests: Vec<(String, IteratorStart)>,
        delivered: Vec<(String, String)>,
    }

    struct FakeShard {
        id: String,
        parent: Option<String>,
        closed: bool,
        records: Vec<ChangeRecord>,
        /// Records before this index are trimmed.
        trimmed: usize,
    }

    impl FakeState {
        fn shard(&self, id: &str) -> Result<&FakeShard, StreamError> {
            self.shards
                .iter()
                .find(|s| s.id == id)
                .ok_or_else(|| StreamError::Gone(id.to_owned()))
        }

        fn shard_mut(&mut self, id: &str) -> &mut FakeShard {
            let at = self.shards.iter().position(|s| s.id == id).unwrap_or(0);
            &mut self.shards[at]
        }

        fn new_iterator(&mut self, shard: &str, index: usize) -> String {
            self.next_iterator += 1;
            let id = format!("it-{}", self.next_iterator);
            self.iterators.insert(id.clone(), (shard.to_owned(), index));
            id
        }
    }

    impl Fake {
        fn new(page_size: usize) -> Self {
            let fake = Fake::default();
            lock(&fake.0).page_size = page_size;
            fake
        }

        fn add_shard(&self, id: &str, parent: Option<&str>) {
            lock(&self.0).shards.push(FakeShard {
                id: id.into(),
                parent: parent.map(str::to_owned),
                closed: false,
                records: Vec::new(),
                trimmed: 0,
            });
        }

        /// Appends records (key name, version, value) to a shard; returns their
        /// sequence numbers.
        fn append(&self, shard: &str, changes: &[(&str, u64, &str)]) -> Vec<String> {
            let mut st = lock(&self.0);
            let mut out = Vec::new();
            for (name, version, value) in changes {
                st.next_sequence += 1;
                let sequence = format!("{:08}", st.next_sequence);
                out.push(sequence.clone());
                let record = put_record(&sequence, name, Some(*version), value);
                st.shard_mut(shard).records.push(record);
            }
            out
        }

        fn push(&self, shard: &str, record: ChangeRecord) {
            lock(&self.0).shard_mut(shard).records.push(record);
        }

        fn close(&self, shard: &str) {
            lock(&self.0).shard_mut(shard).closed = true;
        }

        fn trim(&self, shard: &str, before: usize) {
            lock(&self.0).shard_mut(shard).trimmed = before;
        }

        fn fail_at(&self, shard: &str, index: usize, error: StreamError) {
            lock(&self.0).fail_at.insert((shard.into(), index), error);
        }

        fn requests(&self) -> Vec<(String, IteratorStart)> {
            lock(&self.0).iterator_requests.clone()
        }

        fn delivered(&self) -> Vec<(String, String)> {
            lock(&self.0).delivered.clone()
        }
    }

    #[async_trait]
    impl StreamApi for Fake {
        async fn shards(&self) -> Result<Vec<ShardInfo>, StreamError> {
            Ok(lock(&self.0)
                .shards
                .iter()
                .map(|s| ShardInfo {
                    id: s.id.clone(),
                    parent: s.parent.clone(),
                    closed: s.closed,
                })
                .collect())
        }

        async fn iterator(
            &self,
            shard_id: &str,
            start: &IteratorStart,
        ) -> Result<String, StreamError> {
            let mut st = lock(&self.0);
            st.iterator_requests
                .push((shard_id.to_owned(), start.clone()));
            let shard = st.shard(shard_id)?;
            let find = |seq: &str| {
                shard
                    .records
                    .iter()
                    .position(|r| r.sequence == seq)
                    .ok_or(StreamError::TrimmedData)
            };
            let index = match start {
                IteratorStart::TrimHorizon => shard.trimmed,
                IteratorStart::Latest => shard.records.len(),
                IteratorStart::AtSequence(seq) => find(seq)?,
                IteratorStart::AfterSequence(seq) => find(seq)? + 1,
            };
            if index < shard.trimmed {
                return Err(StreamError::TrimmedData);
            }
            Ok(st.new_iterator(shard_id, index))
        }

        async fn records(&self, iterator: &str) -> Result<RecordPage, StreamError> {
            let mut st = lock(&self.0);
            let (shard_id, index) = st
                .iterators
                .get(iterator)
                .cloned()
                .ok_or_else(|| StreamError::Other("unknown iterator".into()))?;
            if let Some(e) = st.fail_at.remove(&(shard_id.clone(), index)) {
                return Err(e);
            }
            let page_size = st.page_size;
            let shard = st.shard(&shard_id)?;
            if index < shard.trimmed {
                return Err(StreamError::TrimmedData);
            }
            let end = (index + page_size).min(shard.records.len());
            let records: Vec<ChangeRecord> = shard.records[index..end].to_vec();
            let finished = shard.closed && end >= shard.records.len();
            for r in &records {
                st.delivered.push((shard_id.clone(), r.sequence.clone()));
            }
            let next = (!finished).then(|| st.new_iterator(&shard_id, end));
            Ok(RecordPage { records, next })
        }
    }

    /// A re-versioning asked for: key, version seen, new version.
    type Bump = (String, Option<u64>, u64);

    /// Records the re-versioning asked for.
    #[derive(Clone, Default)]
    struct Versions(Arc<Mutex<Vec<Bump>>>);

    #[async_trait]
    impl VersionWriter for Versions {
        async fn bump_version(
            &self,
            _scope: &Scope,
            key: &str,
            seen: Option<u64>,
            to: u64,
        ) -> Result<bool, StoreError> {
            lock(&self.0).push((key.to_owned(), seen, to));
            Ok(true)
        }
    }

    /// The table as a resync reads it.
    #[derive(Default)]
    struct Table(Mutex<Vec<Entry>>);

    #[async_trait]
    impl ScopeLoader for Table {
        async fn load_scope(&self, _scope: &Scope) -> Result<Vec<Entry>, StoreError> {
            Ok(lock(&self.0).clone())
        }
    }

    fn item(name: &str, version: Option<u64>, value: &str) -> Image {
        let mut image = Image::from([
            ("pk".to_owned(), AttributeValue::S("TENANT#acme".into())),
            ("sk".to_owned(), AttributeValue::S(format!("CONFIG#{name}"))),
            ("config".to_owned(), AttributeValue::S(value.into())),
        ]);
        if let Some(v) = version {
            image.insert("version".into(), AttributeValue::N(v.to_string()));
        }
        image
    }

    fn put_record(sequence: &str, name: &str, version: Option<u64>, value: &str) -> ChangeRecord {
        let image = item(name, version, value);
        ChangeRecord {
            sequence: sequence.into(),
            kind: ChangeKind::Modify,
            keys: image
                .iter()
                .filter(|(k, _)| *k == "pk" || *k == "sk")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            new_image: Some(image),
            old_image: None,
        }
    }

    fn settings() -> StreamSettings {
        StreamSettings {
            poll_interval: Duration::from_millis(100),
            rediscover_interval: Duration::from_millis(100),
            ..StreamSettings::default()
        }
    }

    struct Setup {
        hub: Arc<Hub>,
        counters: Arc<SourceCounters>,
        table: Arc<Table>,
        scope: Scope,
        shutdown: CancellationToken,
        versions: Versions,
        task: tokio::task::JoinHandle<()>,
    }

    async fn start(fake: &Fake) -> Result<Setup, Box<dyn std::error::Error>> {
        let table = Arc::new(Table::default());
        let hub = Arc::new(Hub::new(table.clone(), HubConfig::default()));
        let scope = Scope::tenant("acme")?;
        hub.view(&scope).await?;
        let counters = Arc::new(SourceCounters::default());
        let ctx = SourceContext {
            hub: hub.clone(),
            counters: counters.clone(),
        };
        let shutdown = CancellationToken::new();
        let versions = Versions::default();
        let task = tokio::spawn(run_with(
            ctx,
            settings(),
            fake.clone(),
            versions.clone(),
            shutdown.clone(),
        ));
        Ok(Setup {
            hub,
            counters,
            table,
            scope,
            shutdown,
            versions,
            task,
        })
    }

    impl Setup {
        fn held(&self, name: &str) -> Option<Arc<SharedEntry>> {
            self.hub.held(&self.scope, &format!("tenant_config_{name}"))
        }

        async fn stop(self) -> TestResult {
            self.shutdown.cancel();
            tokio::time::timeout(Duration::from_secs(1), self.task).await??;
            Ok(())
        }
    }

    /// Waits (in paused time) until `cond` holds.
    async fn until(what: &str, mut cond: impl FnMut() -> bool) -> TestResult {
        for _ in 0..2000 {
            if cond() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(format!("timed out waiting for {what}").into())
    }

    fn get(counter: &std::sync::atomic::AtomicU64) -> u64 {
        SourceCounters::get(counter)
    }

    #[tokio::test(start_paused = true)]
    async fn a_split_shard_is_read_parent_first() -> TestResult {
        let fake = Fake::new(2);
        fake.add_shard("p", None);
        let s = start(&fake).await?;
        until("the first start at LATEST", || {
            fake.requests() == [("p".into(), IteratorStart::Latest)]
        })
        .await?;
        // The parent gets records, then splits: it closes and two children appear
        // with records of their own, all before the reader has read the parent.
        let parent = fake.append(
            "p",
            &[
                ("k1", 1, "p1"),
                ("k2", 1, "p2"),
                ("k1", 2, "p3"),
                ("only_parent", 1, "p4"),
                ("k2", 2, "p5"),
            ],
        );
        fake.close("p");
        fake.add_shard("c1", Some("p"));
        fake.add_shard("c2", Some("p"));
        let c1 = fake.append(
            "c1",
            &[("k1", 3, "c1a"), ("c1", 1, "c1b"), ("c1", 2, "c1c")],
        );
        let c2 = fake.append("c2", &[("k2", 3, "c2a"), ("c2", 1, "c2b")]);
        until("every record", || fake.delivered().len() == 10).await?;
        until("the children's records applied", || {
            s.held("c1").is_some_and(|e| e.version == 2) && s.held("c2").is_some()
        })
        .await?;

        let delivered = fake.delivered();
        let (from_parent, from_children) = delivered.split_at(parent.len());
        assert!(
            from_parent.iter().all(|(shard, _)| shard == "p"),
            "{delivered:?}"
        );
        assert_eq!(
            from_parent
                .iter()
                .map(|(_, seq)| seq.clone())
                .collect::<Vec<_>>(),
            parent
        );
        for seqs in [&c1, &c2] {
            let got: Vec<_> = from_children
                .iter()
                .filter(|(_, seq)| seqs.contains(seq))
                .map(|(_, seq)| seq.clone())
                .collect();
            assert_eq!(&got, seqs, "each child in order");
        }
        // Children were read from their start, not from LATEST.
        assert!(
            fake.requests()
                .contains(&("c1".into(), IteratorStart::TrimHorizon))
        );
        // In the hub: every parent change applied before any child change.
        let parent_last = s
            .held("only_parent")
            .map(|e| e.revision)
            .unwrap_or(u64::MAX);
        for name in ["k1", "k2", "c1", "c2"] {
            let e = s.held(name).ok_or("missing key")?;
            assert!(e.revision > parent_last, "{name} applied after the parent");
        }
        assert_eq!(s.held("k1").map(|e| e.version), Some(3));
        assert_eq!(s.held("k2").map(|e| e.version), Some(3));
        assert_eq!(get(&s.counters.stream_records_read), 10);
        assert_eq!(get(&s.counters.stream_records_applied), 10);
        assert_eq!(get(&s.counters.stream_gaps), 1, "only the first start");
        s.stop().await
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_iterator_resumes_after_the_last_record_read() -> TestResult {
        let fake = Fake::new(2);
        fake.add_shard("s", None);
        let s = start(&fake).await?;
        until("the first start", || fake.requests().len() == 1).await?;
        let seqs = fake.append(
            "s",
            &[
                ("a", 1, "1"),
                ("b", 1, "1"),
                ("c", 1, "1"),
                ("d", 1, "1"),
                ("e", 1, "1"),
                ("f", 1, "1"),
            ],
        );
        // The iterator positioned after the 4th record has expired when used.
        fake.fail_at("s", 4, StreamError::ExpiredIterator);
        until("all keys", || s.held("f").is_some()).await?;

        assert_eq!(
            fake.requests(),
            [
                ("s".into(), IteratorStart::Latest),
                ("s".into(), IteratorStart::AfterSequence(seqs[3].clone())),
            ]
        );
        let delivered: Vec<String> = fake.delivered().into_iter().map(|(_, q)| q).collect();
        assert_eq!(delivered, seqs, "each record once, in order");
        for name in ["a", "b", "c", "d", "e", "f"] {
            assert!(s.held(name).is_some(), "{name}");
        }
        assert_eq!(get(&s.counters.stream_records_read), 6);
        assert_eq!(
            get(&s.counters.stream_gaps),
            1,
            "an expiry with a known position is no gap"
        );
        s.stop().await
    }

    #[tokio::test(start_paused = true)]
    async fn trimmed_data_is_a_gap_repaired_from_the_table() -> TestResult {
        let fake = Fake::new(10);
        fake.add_shard("s", None);
        let s = start(&fake).await?;
        until("the first start", || fake.requests().len() == 1).await?;
        fake.append("s", &[("a", 1, "1"), ("b", 1, "1")]);
        until("the first records", || s.held("b").is_some()).await?;
        assert_eq!(get(&s.counters.stream_gaps), 1);

        // Meanwhile the table got changes whose records are trimmed before the reader
        // gets to them; one more record stays.
        *lock(&s.table.0) = vec![
            Entry::live("tenant_config_a", 1, "1", 0),
            Entry::live("tenant_config_b", 1, "1", 0),
            Entry::live("tenant_config_lost", 1, "\"x\"", 0),
            Entry::live("tenant_config_trimmed", 1, "\"y\"", 0),
            Entry::live("tenant_config_kept", 1, "\"z\"", 0),
        ];
        let seqs = fake.append("s", &[("trimmed", 1, "y"), ("kept", 1, "z")]);
        fake.trim("s", 3);
        until("the lost change", || s.held("lost").is_some()).await?;
        until("the record after the trim point", || {
            fake.delivered().iter().any(|(_, seq)| *seq == seqs[1])
        })
        .await?;
        assert!(
            !fake.delivered().iter().any(|(_, seq)| *seq == seqs[0]),
            "the trimmed record cannot be read"
        );
        assert_eq!(get(&s.counters.stream_gaps), 2);
        assert!(
            s.held("trimmed").is_some(),
            "resync read what the stream lost"
        );
        assert!(
            fake.requests()
                .contains(&("s".into(), IteratorStart::TrimHorizon)),
            "{:?}",
            fake.requests()
        );
        s.stop().await
    }

    #[tokio::test(start_paused = true)]
    async fn changes_without_a_version_bump_are_re_versioned_and_bad_records_skipped() -> TestResult
    {
        let fake = Fake::new(10);
        fake.add_shard("s", None);
        let s = start(&fake).await?;
        until("the first start", || fake.requests().len() == 1).await?;
        fake.append("s", &[("a", 3, "v3"), ("b", 1, "b")]);
        until("a and b", || s.held("b").is_some()).await?;

        let mut bad = put_record("00000100", "x", Some(1), "1");
        if let Some(image) = bad.new_image.as_mut() {
            image.insert("sk".into(), AttributeValue::S("CONFIG#a b".into()));
        }
        fake.push("s", bad);
        // Same version, other content (the console); the same content again (an
        // identical put); no version at all.
        fake.push("s", put_record("00000101", "a", Some(3), "edited"));
        fake.push("s", put_record("00000102", "a", Some(3), "v3"));
        fake.push("s", put_record("00000103", "fresh", None, "1"));
        // A hard delete of a live item: a tombstone one version above.
        let mut remove = put_record("00000104", "b", Some(1), "b");
        remove.kind = ChangeKind::Remove;
        remove.old_image = remove.new_image.take();
        fake.push("s", remove);
        fake.append("s", &[("after", 1, "1")]);
        until("the record after them", || s.held("after").is_some()).await?;

        assert_eq!(
            lock(&s.versions.0).clone(),
            [
                ("tenant_config_a".to_owned(), Some(3), 4),
                ("tenant_config_fresh".to_owned(), None, 1),
            ]
        );
        assert_eq!(get(&s.counters.stream_reversioned), 2);
        assert_eq!(
            s.held("a").and_then(|e| e.value.clone()).as_deref(),
            Some("\"v3\""),
            "not applied until the re-versioned record arrives"
        );
        assert!(s.held("fresh").is_none());
        assert!(s.held("b").is_some_and(|e| e.deleted && e.version == 2));
        s.stop().await
    }

    /// A REMOVE of a live item at version u64::MAX overflowed computing its
    /// tombstone's version (a panic with overflow checks; wrapped to version 0, a
    /// delete every cache ignores, without). It is refused as a bad record.
    #[test]
    fn a_remove_at_the_highest_version_is_refused_not_overflowed() {
        let mut record = put_record("9", "a", Some(u64::MAX), "1");
        record.kind = ChangeKind::Remove;
        record.old_image = record.new_image.take();
        let refused = removal(&record);
        assert!(
            matches!(
                &refused,
                Err(ItemError::BadAttribute {
                    name: "version",
                    ..
                })
            ),
            "{refused:?}"
        );
        let mut record = put_record("10", "a", Some(7), "1");
        record.kind = ChangeKind::Remove;
        record.old_image = record.new_image.take();
        assert!(matches!(
            removal(&record),
            Ok(Removal::Tombstone { version: 8, .. })
        ));
    }

    #[test]
    fn a_new_version_is_needed_only_for_other_content_at_an_old_version() {
        let held = Entry::live("tenant_config_a", 2, "1", 0);
        let same = Entry::live("tenant_config_a", 2, "1.0", 0);
        let other = Entry::live("tenant_config_a", 2, "2", 0);
        assert!(!needs_new_version(Some(&held), &same, true));
        assert!(needs_new_version(Some(&held), &other, true));
        assert!(!needs_new_version(
            Some(&held),
            &Entry::live("tenant_config_a", 3, "2", 0),
            true
        ));
        assert!(needs_new_version(None, &other, false));
        assert!(!needs_new_version(None, &other, true));
        let tombstone = Entry::tombstone("tenant_config_a", 2, 0);
        assert!(needs_new_version(Some(&tombstone), &other, true));
    }
}
