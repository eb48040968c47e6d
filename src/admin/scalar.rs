//! One unlabelled counter or gauge read at each scrape from a function: how the
//! exporter shows a count a part keeps in a plain atomic (the hub's, the token
//! cache's) or a value it computes on demand (views in memory, the largest
//! backlog). Knows nothing of what is counted.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Whether the value only grows (a counter: the encoder adds `_total`) or is a
/// level now (a gauge).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// Reads the value.
type Read = Box<dyn Fn() -> u64 + Send + Sync>;

/// A metric `name` with no labels, read from `read` at each scrape.
pub struct Scalar {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub read: Read,
}

impl Scalar {
    /// A counter read from `read`.
    pub fn counter(
        name: &'static str,
        help: &'static str,
        read: impl Fn() -> u64 + Send + Sync + 'static,
    ) -> Box<Self> {
        Self::boxed(name, help, Kind::Counter, Box::new(read))
    }

    /// A gauge read from `read`.
    pub fn gauge(
        name: &'static str,
        help: &'static str,
        read: impl Fn() -> u64 + Send + Sync + 'static,
    ) -> Box<Self> {
        Self::boxed(name, help, Kind::Gauge, Box::new(read))
    }

    fn boxed(name: &'static str, help: &'static str, kind: Kind, read: Read) -> Box<Self> {
        Box::new(Scalar {
            name,
            help,
            kind,
            read,
        })
    }
}

impl std::fmt::Debug for Scalar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scalar")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl Collector for Scalar {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let value = (self.read)();
        let (name, help) = (self.name, self.help);
        match self.kind {
            Kind::Counter => {
                let metric = ConstCounter::new(value);
                metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
            }
            Kind::Gauge => {
                let metric = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
                metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
            }
        }
    }
}
