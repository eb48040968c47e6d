//! An in-memory stream for the tests: shards with records, trimming, scripted
//! failures, and a log of the iterators asked for and the records delivered; a
//! [`VersionWriter`] that records the re-versionings asked for; a table for resyncs.
//!
//! Boundary: test-only; behaves as DynamoDB Streams is documented to (shard lineage,
//! expiry, trimming), which moto does not emulate.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;

use super::api::{
    ChangeKind, ChangeRecord, ExternalChange, HistoryWriter, Image, IteratorStart, RecordPage,
    ShardInfo, StreamApi, StreamError, VersionWriter,
};
use super::sdk::lock;
use crate::hub::ScopeLoader;
use crate::model::{Entry, Scope};
use crate::store::StoreError;

/// An in-memory stream: shards with records, scripted failures, and a log of
/// what was asked and delivered.
#[derive(Clone, Default)]
pub(super) struct Fake(Arc<Mutex<FakeState>>);

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
    pub(super) fn new(page_size: usize) -> Self {
        let fake = Fake::default();
        lock(&fake.0).page_size = page_size;
        fake
    }

    pub(super) fn add_shard(&self, id: &str, parent: Option<&str>) {
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
    pub(super) fn append(&self, shard: &str, changes: &[(&str, u64, &str)]) -> Vec<String> {
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

    pub(super) fn push(&self, shard: &str, record: ChangeRecord) {
        lock(&self.0).shard_mut(shard).records.push(record);
    }

    pub(super) fn close(&self, shard: &str) {
        lock(&self.0).shard_mut(shard).closed = true;
    }

    pub(super) fn trim(&self, shard: &str, before: usize) {
        lock(&self.0).shard_mut(shard).trimmed = before;
    }

    pub(super) fn fail_at(&self, shard: &str, index: usize, error: StreamError) {
        lock(&self.0).fail_at.insert((shard.into(), index), error);
    }

    pub(super) fn requests(&self) -> Vec<(String, IteratorStart)> {
        lock(&self.0).iterator_requests.clone()
    }

    pub(super) fn delivered(&self) -> Vec<(String, String)> {
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

    async fn iterator(&self, shard_id: &str, start: &IteratorStart) -> Result<String, StreamError> {
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

/// Records the re-versioning and the history records asked for.
#[derive(Clone, Default)]
pub(super) struct Versions(
    pub(super) Arc<Mutex<Vec<Bump>>>,
    pub(super) Arc<Mutex<Vec<(ExternalChange, String)>>>,
);

#[async_trait]
impl HistoryWriter for Versions {
    async fn record_external(
        &self,
        change: &ExternalChange,
        instance: &str,
    ) -> Result<bool, StoreError> {
        let mut recorded = lock(&self.1);
        if recorded.iter().any(|(c, _)| {
            c.scope == change.scope
                && c.entry.key == change.entry.key
                && c.entry.version == change.entry.version
        }) {
            return Ok(false);
        }
        recorded.push((change.clone(), instance.to_owned()));
        Ok(true)
    }
}

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
pub(super) struct Table(pub(super) Mutex<Vec<Entry>>);

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

pub(super) fn put_record(
    sequence: &str,
    name: &str,
    version: Option<u64>,
    value: &str,
) -> ChangeRecord {
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
        created: None,
    }
}
