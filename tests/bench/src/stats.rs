//! Statistics over samples: latency percentiles and medians, and the run's clock.
//! Pure functions; knows nothing of servers or workloads.

use std::time::Instant;

/// Microseconds since `start`: the clock every latency sample is taken by.
pub fn now_us(start: Instant) -> u64 {
    start.elapsed().as_micros() as u64
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// Percentiles of microsecond samples, in milliseconds.
pub fn summarize(samples: &mut [u64]) -> Summary {
    if samples.is_empty() {
        return Summary::default();
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
    Summary {
        p50: at(0.50),
        p99: at(0.99),
        max: at(1.0),
    }
}

pub fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// `a / b`, with `b` kept above zero: the ratio in every summary line.
pub fn ratio(a: f64, b: f64) -> f64 {
    a / b.max(f64::MIN_POSITIVE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_median() {
        let mut samples: Vec<u64> = (1..=100).map(|v| v * 1000).collect();
        let s = summarize(&mut samples);
        assert_eq!((s.p50, s.p99, s.max), (51.0, 99.0, 100.0));
        assert_eq!(summarize(&mut []).max, 0.0);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut []), 0.0);
        assert_eq!(ratio(1.0, 0.0), 1.0 / f64::MIN_POSITIVE);
    }
}
