//! What the stream reader needs from the outside, as traits and plain records: the
//! stream operations ([`StreamApi`]: shards, iterators, records) with the records and
//! errors they carry, and the table writes ([`VersionWriter`] and [`HistoryWriter`],
//! which the store defines and implements; re-exported here).
//!
//! Boundary: no SDK calls here; [`super::sdk`] implements these on AWS and
//! `super::fake` in memory for the tests.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;

pub use crate::store::dynamodb::{ExternalChange, HistoryWriter, VersionWriter};

/// An item image from a stream record.
pub type Image = HashMap<String, AttributeValue>;

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
    /// ApproximateCreationDateTime (ms since the epoch; AWS gives whole seconds).
    pub created: Option<crate::model::Millis>,
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
