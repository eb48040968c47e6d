//! A counter family read at each scrape: a name, one label, and a function giving
//! each label value with its count. How the exporter shows the counts a part keeps
//! in plain atomics (refusals by reason, initial syncs by mode, restarts by source);
//! knows nothing of what they count.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;

/// Reads the label values and their counts.
type Read = Box<dyn Fn() -> Vec<(&'static str, u64)> + Send + Sync>;

/// A counter family `name{label="..."}`, read from `read` at each scrape.
pub struct CounterFamily {
    pub name: &'static str,
    pub help: &'static str,
    pub label: &'static str,
    pub read: Read,
}

impl std::fmt::Debug for CounterFamily {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CounterFamily")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Collector for CounterFamily {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        encode_counters(
            &mut encoder,
            self.name,
            self.help,
            self.label,
            (self.read)(),
        )
    }
}

/// Writes a counter family: `values` as `name{label="value"} count`.
pub fn encode_counters(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    label: &str,
    values: Vec<(&str, u64)>,
) -> Result<(), std::fmt::Error> {
    let kind = ConstCounter::new(0u64).metric_type();
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for (value, count) in values {
        ConstCounter::new(count).encode(family.encode_family(&[(label, value)])?)?;
    }
    Ok(())
}
