//! The Prometheus alert rules in deploy/prometheus/: `promtool check rules` accepts
//! them, `promtool test rules` shows each alert firing on series that should fire it
//! and staying quiet on series that should not (tests/fixtures/alerts-test.yml), and
//! every metric a rule reads is one the server exports.
//!
//! promtool comes with Debian's `prometheus` package (`.ci/run` installs it); without
//! it the promtool checks say SKIPPED and why.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const RULES: &str = "deploy/prometheus/configwatch-alerts.yml";
const RULE_TESTS: &str = "tests/fixtures/alerts-test.yml";

/// Runs `promtool ARGS` in the repository root; `None` when promtool is missing.
fn promtool(args: &[&str]) -> Option<std::process::Output> {
    match Command::new("promtool")
        .args(args)
        .current_dir(root())
        .output()
    {
        Ok(out) => Some(out),
        Err(e) => {
            eprintln!(
                "SKIPPED promtool {}: promtool is not available ({e}); install Debian's prometheus package",
                args.join(" ")
            );
            None
        }
    }
}

fn assert_success(what: &str, out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{what}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_alert_rules_are_valid() {
    if let Some(out) = promtool(&["check", "rules", RULES]) {
        assert_success("promtool check rules", &out);
    }
}

#[test]
fn each_alert_fires_when_it_should_and_only_then() {
    if let Some(out) = promtool(&["test", "rules", RULE_TESTS]) {
        assert_success("promtool test rules", &out);
    }
}

/// Every `configwatch_*` metric a rule reads is registered by the server (its name,
/// without the `_total` a counter gets on the wire, appears as a string in src/).
#[test]
fn the_rules_read_only_metrics_the_server_exports() {
    let rules = std::fs::read_to_string(root().join(RULES)).unwrap();
    let used: BTreeSet<String> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("configwatch_"))
        .map(|w| w.trim_end_matches("_total").to_owned())
        .collect();
    assert!(!used.is_empty());
    let mut source = String::new();
    collect(&root().join("src"), &mut source);
    for name in used {
        assert!(
            source.contains(&format!("\"{name}\"")),
            "{RULES} reads {name}, which the server does not register"
        );
    }
}

fn collect(dir: &Path, out: &mut String) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push_str(&std::fs::read_to_string(&path).unwrap());
        }
    }
}
