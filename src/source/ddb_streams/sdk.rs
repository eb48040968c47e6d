//! [`StreamApi`] on AWS: the DynamoDB Streams client (shard listing by pages,
//! iterators, records converted from the streams SDK's attribute values to
//! DynamoDB's), and finding the table's stream.
//!
//! Boundary: the only file of the reader that knows the SDK; it hands the reader
//! [`ShardInfo`], [`ChangeRecord`] and [`StreamError`].

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{AttributeValue, StreamViewType};
use aws_sdk_dynamodbstreams::types as st;

use super::api::{
    ChangeKind, ChangeRecord, Image, IteratorStart, RecordPage, ShardInfo, StreamApi, StreamError,
};
use crate::store::dynamodb::{Failure, classify};

/// Most records one GetRecords returns (the API's limit).
const RECORDS_LIMIT: i32 = 1000;

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
        created: data
            .approximate_creation_date_time()
            .and_then(|t| t.to_millis().ok()),
    })
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
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
