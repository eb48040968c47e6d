//! Reading the admin listener's `/metrics` as a test does: one scrape as its text
//! and each series with its value, the change of a series between two scrapes, the
//! sum over a family's labels, and `promtool check metrics` on the text.
//!
//! Boundary: knows the Prometheus text format and the promtool command line; what
//! the series mean is the suites' business.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use crate::http_get;

/// One scrape of `/metrics`.
#[derive(Debug, Clone)]
pub struct Scrape {
    /// The text as served.
    pub text: String,
    /// Each series (name and labels as written) with its value.
    pub series: HashMap<String, f64>,
}

impl Scrape {
    /// Scrapes `/metrics` on the admin listener at `admin`, once the server has
    /// started (on AWS the admin listener answers while the server still waits for
    /// the table, with no metrics yet).
    pub async fn take(admin: SocketAddr) -> Scrape {
        let answer = crate::eventually(
            crate::PATIENCE,
            || "the server to start and serve its metrics".into(),
            || async {
                let answer = http_get(admin, "/metrics").await;
                (!answer.body.starts_with("no metrics yet")).then_some(answer)
            },
        )
        .await;
        assert_eq!(answer.status, 200, "{answer:?}");
        let series = answer
            .body
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                let (name, value) = l.rsplit_once(' ').expect("a series and its value");
                let value = value
                    .parse()
                    .unwrap_or_else(|_| panic!("a number in {l:?}"));
                (name.to_owned(), value)
            })
            .collect();
        Scrape {
            text: answer.body,
            series,
        }
    }

    /// The value of `series` (0 when absent).
    pub fn value(&self, series: &str) -> f64 {
        self.series.get(series).copied().unwrap_or(0.0)
    }

    /// How much `series` moved since `before`.
    pub fn delta(&self, before: &Scrape, series: &str) -> f64 {
        self.value(series) - before.value(series)
    }

    /// Asserts that each series is exported and moved since `before` by exactly
    /// its amount.
    pub fn assert_moved(&self, before: &Scrape, expected: &[(&str, f64)]) {
        for (series, moved) in expected {
            assert!(
                self.series.contains_key(*series),
                "{series} is not exported\n{}",
                self.text
            );
            let delta = self.delta(before, series);
            assert_eq!(delta, *moved, "{series}\n{}", self.text);
        }
    }

    /// Asserts that the series of each family, summed over their labels, moved
    /// since `before` by exactly its amount (so no label moved but those expected).
    pub fn assert_families_moved(&self, before: &Scrape, expected: &[(&str, f64)]) {
        for (family, moved) in expected {
            let delta = self.family_delta(before, family);
            assert_eq!(delta, *moved, "{family}\n{}", self.text);
        }
    }

    /// How much every series of `family` (its name, any labels) moved since
    /// `before`, summed.
    pub fn family_delta(&self, before: &Scrape, family: &str) -> f64 {
        self.series
            .keys()
            .filter(|s| *s == family || s.starts_with(&format!("{family}{{")))
            .map(|s| self.delta(before, s))
            .sum()
    }
}

/// `promtool check metrics` on `text`; skipped (with a line saying so) when
/// promtool is not installed.
pub fn promtool_check(text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        eprintln!("SKIPPED promtool check: promtool is not installed (Debian package prometheus)");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
