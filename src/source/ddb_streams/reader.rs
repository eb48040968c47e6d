//! The shard state machine: which shards exist, which may be read (parents before
//! children), their iterators (renewed before they expire, re-got after failures),
//! one round of reading ([`Reader::tick`]), and gaps that make the loaded scopes
//! resync from the table.
//!
//! Boundary: talks to the stream only through [`StreamApi`]; what a record does to
//! the hub is [`super::record`]'s.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use tokio::time::Instant;

use super::StreamSettings;
use super::api::{IteratorStart, RecordPage, ShardInfo, StreamApi, StreamError, VersionWriter};
use super::history::HistorySink;
use crate::hub::Hub;
use crate::source::{SourceContext, SourceCounters};

struct ShardState {
    parent: Option<String>,
    /// Where the next iterator starts: after the last record handled, or the first
    /// start when none was.
    position: IteratorStart,
    iterator: Option<(String, Instant)>,
    /// Read to its end.
    drained: bool,
    /// An iterator was got for it before: the next one is a renewal.
    had_iterator: bool,
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

pub(super) struct Reader<S, V> {
    pub(super) ctx: SourceContext,
    settings: StreamSettings,
    api: S,
    pub(super) versions: Arc<V>,
    pub(super) history: HistorySink,
    shards: BTreeMap<String, ShardState>,
    /// A listing has succeeded: shards found from now on are new.
    listed: bool,
    next_listing: Instant,
    gap_pending: bool,
    /// What failed last in this round, for the source's health.
    trouble: Option<String>,
}

impl<S: StreamApi, V: VersionWriter> Reader<S, V> {
    pub(super) fn new(
        ctx: SourceContext,
        settings: StreamSettings,
        api: S,
        versions: Arc<V>,
        history: HistorySink,
    ) -> Self {
        Reader {
            ctx,
            settings,
            api,
            versions,
            history,
            shards: BTreeMap::new(),
            listed: false,
            next_listing: Instant::now(),
            gap_pending: false,
            trouble: None,
        }
    }

    pub(super) fn hub(&self) -> &Hub {
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
    /// shard once, resync after a gap. Returns what failed, if anything did.
    pub(super) async fn tick(&mut self) -> Option<String> {
        self.trouble = None;
        let mut trouble = false;
        if !self.listed || Instant::now() >= self.next_listing {
            match self.api.shards().await {
                Ok(list) => {
                    self.merge(list);
                    self.next_listing = Instant::now() + self.settings.rediscover_interval;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cannot list the stream's shards; retrying");
                    self.trouble = Some(format!("DescribeStream failed: {e}"));
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
        SourceCounters::set(&self.ctx.counters.stream_shards, readable.len() as u64);
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
        let why = self.trouble.take();
        trouble.then(|| why.unwrap_or_else(|| "a stream round failed".to_owned()))
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
                    had_iterator: false,
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
                    if shard.had_iterator {
                        SourceCounters::add(&self.ctx.counters.stream_iterator_renewals, 1);
                    }
                    shard.had_iterator = true;
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
                tracing::debug!(shard = id, error = %e, "cannot get a shard iterator; retrying");
                self.trouble = Some(format!("GetShardIterator failed: {e}"));
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
                tracing::debug!(shard = id, error = %e, "GetRecords failed");
                self.trouble = Some(format!("GetRecords failed: {e}"));
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
                    self.trouble =
                        Some(format!("reloading a tenant after a stream gap failed: {e}"));
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
