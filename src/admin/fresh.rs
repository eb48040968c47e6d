//! The freshness metrics, read at each scrape from the hub's [`Freshness`]: the
//! delay histograms by source (to applied, to delivered), the delays clamped for
//! clock skew, the age of the newest record each event source has seen and the time
//! since its last successful read.
//! Reads them; counts nothing itself.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

use crate::hub::{ChangeSource, DelaySnapshot, Freshness, Hub};

/// The sources that read records with a timestamp of their own: the newest one's
/// age shows a silent source while nothing changes.
const EVENT_SOURCES: [ChangeSource; 2] =
    [ChangeSource::DynamodbStream, ChangeSource::ParameterEvents];

/// Exports the hub's freshness figures.
pub struct FreshnessMetrics {
    pub hub: Arc<Hub>,
}

impl std::fmt::Debug for FreshnessMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FreshnessMetrics").finish_non_exhaustive()
    }
}

impl FreshnessMetrics {
    fn fresh(&self) -> &Freshness {
        self.hub.freshness()
    }
}

/// Writes a histogram family `name_seconds{source=...}` with one series per source.
fn encode_delays(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    read: impl Fn(ChangeSource) -> DelaySnapshot,
) -> Result<(), std::fmt::Error> {
    let mut family =
        encoder.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
    for source in ChangeSource::ALL {
        let delays = read(source);
        family
            .encode_family(&[("source", source.label())])?
            .encode_histogram::<NoLabelSet>(
                delays.sum_seconds,
                delays.count,
                &delays.buckets,
                None,
            )?;
    }
    Ok(())
}

/// Writes a gauge family `name_seconds{source=...}`: one series per event source
/// for which `read` has a value.
fn encode_ages(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    read: impl Fn(ChangeSource) -> Option<f64>,
) -> Result<(), std::fmt::Error> {
    let mut family =
        encoder.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Gauge)?;
    for source in EVENT_SOURCES {
        if let Some(age) = read(source) {
            ConstGauge::new(age).encode(family.encode_family(&[("source", source.label())])?)?;
        }
    }
    Ok(())
}

impl Collector for FreshnessMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        encode_delays(
            &mut encoder,
            "configwatch_change_applied_delay",
            "Time from a change's source timestamp to its being applied in the hub, by source.",
            |s| self.fresh().applied(s),
        )?;
        encode_delays(
            &mut encoder,
            "configwatch_change_delivered_delay",
            "Time from a change's source timestamp to the last watcher it was handed to \
             having taken it (or something newer of the same key), by source.",
            |s| self.fresh().delivered(s),
        )?;
        let skew = ConstCounter::new(self.fresh().clock_skew());
        skew.encode(encoder.encode_descriptor(
            "configwatch_change_clock_skew",
            "Delays counted as 0 because the source timestamp was after this host's clock.",
            None,
            skew.metric_type(),
        )?)?;
        encode_ages(
            &mut encoder,
            "configwatch_source_newest_record_age",
            "Time since the source timestamp of the newest record a source has seen.",
            |s| self.fresh().newest_record_age(s),
        )
    }
}
