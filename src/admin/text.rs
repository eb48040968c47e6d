//! The Prometheus text format (0.0.4) from prometheus-client's OpenMetrics text:
//! counters are described under their sample name (`..._total`), and the `# UNIT`
//! and `# EOF` lines, which that format lacks, go. Knows both formats' comment
//! lines, nothing of the metrics.

/// The content type of what [`prometheus_text`] returns.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `openmetrics` rewritten in the Prometheus text format.
pub fn prometheus_text(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let described = ["# HELP ", "# TYPE "].into_iter().find_map(|kind| {
            let rest = line.strip_prefix(kind)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(&name)
                .then(|| format!("{kind}{name}_total {tail}"))
        });
        match described {
            Some(line) => out.push_str(&line),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_described_by_their_sample_name() {
        let openmetrics = "# HELP a_calls Calls.\n# TYPE a_calls counter\na_calls_total 3\n\
            # HELP a_open Open.\n# TYPE a_open gauge\na_open 1\n\
            # HELP a_seconds Time.\n# TYPE a_seconds histogram\n# UNIT a_seconds seconds\n\
            a_seconds_count 0\n# EOF\n";
        assert_eq!(
            prometheus_text(openmetrics),
            "# HELP a_calls_total Calls.\n# TYPE a_calls_total counter\na_calls_total 3\n\
             # HELP a_open Open.\n# TYPE a_open gauge\na_open 1\n\
             # HELP a_seconds Time.\n# TYPE a_seconds histogram\na_seconds_count 0\n"
        );
    }
}
