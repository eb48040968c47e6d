//! What deploy/ gives operators to watch configwatch with:
//! - the Prometheus alert rules in deploy/prometheus/: `promtool check rules` accepts
//!   them, `promtool test rules` shows each alert firing on series that should fire it
//!   and staying quiet on series that should not (tests/fixtures/alerts-test.yml);
//! - the Grafana dashboard in deploy/grafana/: well-formed, every query valid PromQL
//!   (checked by promtool as recording rules), and every metric the README documents
//!   shown on it;
//! - both read only metrics the server exports.
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
const DASHBOARD: &str = "deploy/grafana/configwatch-dashboard.json";

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

/// The metric families a text names: each `configwatch_*` word, without the suffix
/// the exposition format adds (`_total` to a counter, `_bucket`, `_sum` and `_count`
/// to a histogram).
fn metrics_named(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("configwatch_"))
        .map(|w| {
            let mut name = w;
            for suffix in ["_total", "_bucket", "_sum", "_count"] {
                name = name.strip_suffix(suffix).unwrap_or(name);
            }
            name.to_owned()
        })
        .collect()
}

/// Fails naming each metric `what` reads that the server does not register: its
/// family name appears as a string in src/ (without its unit, for a family
/// registered with one).
fn assert_exported(what: &str, used: &BTreeSet<String>) {
    assert!(!used.is_empty(), "{what} reads no configwatch metric");
    let mut source = String::new();
    collect(&root().join("src"), &mut source);
    let missing: Vec<&String> = used
        .iter()
        .filter(|name| {
            let bare = name.strip_suffix("_seconds").unwrap_or(name);
            !source.contains(&format!("\"{name}\"")) && !source.contains(&format!("\"{bare}\""))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "{what} reads metrics the server does not register: {missing:?}"
    );
}

#[test]
fn the_rules_read_only_metrics_the_server_exports() {
    let rules = std::fs::read_to_string(root().join(RULES)).unwrap();
    assert_exported(RULES, &metrics_named(&rules));
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

fn dashboard() -> serde_json::Value {
    let text = std::fs::read_to_string(root().join(DASHBOARD)).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{DASHBOARD} is not JSON: {e}"))
}

/// Every panel's queries, as (panel title, expression).
fn queries(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap_or_default().to_owned();
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push((title.clone(), target["expr"].as_str().unwrap().to_owned()));
        }
    }
    out
}

/// Panels have unique ids, a title, a place on the 24-column grid that no other
/// panel takes, and (except rows) a description and queries on the dashboard's
/// data source variable.
#[test]
fn the_dashboard_is_well_formed() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "configwatch");
    let panels = dashboard["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    let mut cells = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap();
        assert!(!title.is_empty());
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "panel id of {title} used twice"
        );
        let pos = &panel["gridPos"];
        let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| pos[k].as_u64().unwrap());
        assert!(x + w <= 24, "{title} is wider than the grid");
        for row in y..y + h {
            for col in x..x + w {
                assert!(cells.insert((row, col)), "{title} overlaps another panel");
            }
        }
        if panel["type"] == "row" {
            continue;
        }
        assert!(
            panel["description"].as_str().is_some_and(|d| !d.is_empty()),
            "{title} has no description"
        );
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title} has no query");
        for target in targets {
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{title}");
        }
    }
}

/// Every query parses as PromQL: promtool checks them as recording rules, with
/// Grafana's variables replaced by what Grafana would put there.
#[test]
fn the_dashboard_queries_are_valid_promql() {
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (title, expr)) in queries(&dashboard()).into_iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "5m")
            .replace("$instance", ".*");
        rules.push_str(&format!(
            "      # {title}\n      - record: configwatch:dashboard:query{i}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dashboard-rules.yml");
    std::fs::write(&path, rules).unwrap();
    if let Some(out) = promtool(&["check", "rules", path.to_str().unwrap()]) {
        assert_success("promtool check rules on the dashboard's queries", &out);
    }
}

#[test]
fn the_dashboard_reads_only_metrics_the_server_exports() {
    let exprs: String = queries(&dashboard())
        .into_iter()
        .map(|(_, expr)| expr + "\n")
        .collect();
    assert_exported(DASHBOARD, &metrics_named(&exprs));
}

/// Every metric in the README's metrics table is on the dashboard.
#[test]
fn the_dashboard_shows_every_documented_metric() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let documented: BTreeSet<String> = readme
        .lines()
        .filter(|line| line.starts_with("| `configwatch_"))
        .flat_map(|line| metrics_named(line.split('|').nth(1).unwrap()))
        .collect();
    assert!(
        documented.len() > 10,
        "the README's metrics table was not found"
    );
    let exprs: String = queries(&dashboard())
        .into_iter()
        .map(|(_, expr)| expr + "\n")
        .collect();
    let shown = metrics_named(&exprs);
    let missing: Vec<&String> = documented.difference(&shown).collect();
    assert!(
        missing.is_empty(),
        "{DASHBOARD} does not show these metrics the README documents: {missing:?}"
    );
}
