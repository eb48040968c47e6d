//! The sources' metrics, read at each scrape: the counters the source tasks keep
//! (`source::SourceCounters`) and the supervisor's per-source state (up, restarts,
//! the age of the last success).
//! Reads them; counts nothing itself.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use tokio::sync::watch;
use tokio::time::Instant;

use super::family::encode_counters;
use crate::source::SourceCounters;
use crate::source::supervise::{SourceStatus, SourcesState};

/// Exports the source counters and the supervisor's state.
#[derive(Debug)]
pub struct SourceMetrics {
    /// The AWS sources' counters; `None` on a relay, whose one source (its
    /// upstream) has only the supervisor's state.
    pub counters: Option<Arc<SourceCounters>>,
    pub state: watch::Receiver<SourcesState>,
}

/// Each counter's metric name (without `_total`, which the encoder adds) and help.
fn counters(c: &SourceCounters) -> [(&'static str, &'static str, &AtomicU64); 14] {
    [
        (
            "configwatch_stream_records_read",
            "DynamoDB stream records read.",
            &c.stream_records_read,
        ),
        (
            "configwatch_stream_records_applied",
            "DynamoDB stream records applied to the hub (newer than what it held).",
            &c.stream_records_applied,
        ),
        (
            "configwatch_stream_records_skipped",
            "DynamoDB stream records skipped as not configuration.",
            &c.stream_records_skipped,
        ),
        (
            "configwatch_stream_gaps",
            "DynamoDB stream gaps that made the loaded tenants reload.",
            &c.stream_gaps,
        ),
        (
            "configwatch_stream_reversioned",
            "Items rewritten with a higher version (a change arrived without one).",
            &c.stream_reversioned,
        ),
        (
            "configwatch_stream_history_recorded",
            "Versions other tools made (seen on the DynamoDB stream) recorded in the keys' history.",
            &c.stream_history_recorded,
        ),
        (
            "configwatch_stream_history_failed",
            "Versions other tools made that could not be recorded in history (applied all the same).",
            &c.stream_history_failed,
        ),
        (
            "configwatch_stream_iterator_renewals",
            "DynamoDB shard iterators got again for a shard already read (renewed by age, or after one expired or failed).",
            &c.stream_iterator_renewals,
        ),
        (
            "configwatch_sqs_messages_received",
            "SQS messages received from the Parameter Store event queue (redeliveries included).",
            &c.sqs_messages_received,
        ),
        (
            "configwatch_sqs_messages_applied",
            "SQS messages handled and deleted.",
            &c.sqs_messages_applied,
        ),
        (
            "configwatch_sqs_messages_malformed",
            "SQS messages that could not be parsed (left to the redrive policy).",
            &c.sqs_messages_malformed,
        ),
        (
            "configwatch_sqs_messages_outside_root",
            "SQS messages naming a parameter outside the root (left to the redrive policy).",
            &c.sqs_messages_outside_root,
        ),
        (
            "configwatch_reconcile_runs",
            "Reconciliation passes completed.",
            &c.reconcile_runs,
        ),
        (
            "configwatch_reconcile_drift",
            "Changes reconciliation found and applied (drift).",
            &c.reconcile_drift,
        ),
    ]
}

impl Collector for SourceMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(aws) = &self.counters {
            for (name, help, counter) in counters(aws) {
                let metric = ConstCounter::new(SourceCounters::get(counter));
                metric.encode(encoder.encode_descriptor(
                    name,
                    help,
                    None,
                    metric.metric_type(),
                )?)?;
            }
            let shards = SourceCounters::get(&aws.stream_shards);
            let shards = ConstGauge::new(i64::try_from(shards).unwrap_or(i64::MAX));
            shards.encode(encoder.encode_descriptor(
                "configwatch_stream_shards",
                "DynamoDB stream shards being read now (0 until the first listing).",
                None,
                shards.metric_type(),
            )?)?;
        }
        let state = self.state.borrow().clone();
        let up = ConstGauge::<i64>::new(0);
        let mut family = encoder.encode_descriptor(
            "configwatch_source_up",
            "1 while the source task runs, 0 while it is down and waiting to restart.",
            None,
            up.metric_type(),
        )?;
        for source in &state.sources {
            let value = i64::from(source.status == SourceStatus::Running);
            ConstGauge::new(value).encode(family.encode_family(&[("source", source.name)])?)?;
        }
        let restarts = state.sources.iter().map(|s| (s.name, s.restarts)).collect();
        encode_counters(
            &mut encoder,
            "configwatch_source_restarts",
            "Times the supervisor started the source task again after it ended or panicked.",
            "source",
            restarts,
        )?;
        encode_last_success_age(&mut encoder, &state)
    }
}

/// `configwatch_source_last_success_age_seconds{source}`: seconds since each source's
/// last successful round, for the sources that have had one.
fn encode_last_success_age(
    encoder: &mut DescriptorEncoder,
    state: &SourcesState,
) -> Result<(), std::fmt::Error> {
    let now = Instant::now();
    let kind = ConstGauge::<f64>::new(0.0).metric_type();
    let mut family = encoder.encode_descriptor(
        "configwatch_source_last_success_age_seconds",
        "Seconds since the source's last successful round (a stream poll over every shard, a queue receive, a reconciliation pass); absent before the first.",
        None,
        kind,
    )?;
    for source in &state.sources {
        if let Some(at) = source.progress.last_success {
            let age = now.saturating_duration_since(at).as_secs_f64();
            ConstGauge::new(age).encode(family.encode_family(&[("source", source.name)])?)?;
        }
    }
    Ok(())
}
