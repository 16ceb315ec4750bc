//! The monitoring files under `deploy/` against the metrics txpipe exports
//! at `GET /metrics`: the Grafana dashboard (`deploy/grafana/txpipe.json`)
//! and the Prometheus alerting rules (`deploy/prometheus/alerts.yml`).
//!
//! A query naming a metric that does not exist is not an error anywhere: a
//! panel stays empty and an alert never fires. So every metric name in the
//! dashboard's and the rules' expressions must be one of [`KNOWN`] (keep it
//! in step with the exporter), and every metric there must be on the
//! dashboard.
//!
//! `promtool` (Debian package `prometheus`) then checks the syntax: `check
//! rules` on the alerting rules and on the dashboard's expressions (written
//! as recording rules, Grafana's variables replaced by plain values), and
//! `test rules` runs `deploy/prometheus/alerts_test.yml`, which shows each
//! alert firing on a faulty series and silent on a healthy one. Without
//! `promtool` on PATH these checks are skipped with a note, or fail under
//! `CI=true`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::support;

/// Every metric `GET /metrics` exposes, as named in the exposition:
/// counters with `_total`, histograms by their base name (see
/// [`HISTOGRAMS`]).
const KNOWN: &[&str] = &[
    // Counters.
    "txpipe_rows_chunked_total",
    "txpipe_chunks_written_total",
    "txpipe_chunks_listed_total",
    "txpipe_chunks_committed_total",
    "txpipe_chunks_rejected_total",
    "txpipe_objects_ignored_total",
    "txpipe_rows_processed_total",
    "txpipe_bad_rows_total",
    "txpipe_detections_total",
    "txpipe_detection_files_written_total",
    "txpipe_commits_total",
    "txpipe_actor_restarts_total",
    "txpipe_retries_total",
    "process_cpu_seconds_total",
    // Histograms.
    "txpipe_commit_duration_seconds",
    "txpipe_chunk_latency_seconds",
    "txpipe_object_store_call_duration_seconds",
    "txpipe_database_call_duration_seconds",
    // Gauges.
    "txpipe_chunk_written_seq",
    "txpipe_chunk_committed_seq",
    "txpipe_lag_chunks",
    "txpipe_chunks_in_flight",
    "txpipe_mailbox_messages",
    "txpipe_mailbox_capacity",
    "txpipe_pair_state_pairs",
    "txpipe_lookup_pairs",
    "txpipe_key_groups_held",
    "txpipe_key_groups_catching_up",
    "txpipe_last_commit_timestamp_seconds",
    "txpipe_ready",
    "txpipe_healthy",
    "process_resident_memory_bytes",
    "process_start_time_seconds",
];

/// The histograms of [`KNOWN`]: exposed only as `_bucket`, `_sum` and
/// `_count` series.
const HISTOGRAMS: &[&str] = &[
    "txpipe_commit_duration_seconds",
    "txpipe_chunk_latency_seconds",
    "txpipe_object_store_call_duration_seconds",
    "txpipe_database_call_duration_seconds",
];

/// Grafana's variables in the dashboard's expressions and what stands for
/// them when promtool checks the expressions.
const GRAFANA_VARIABLES: &[(&str, &str)] = &[
    ("${__rate_interval}", "1m"),
    ("$__rate_interval", "1m"),
    ("${__interval}", "1m"),
    ("$__interval", "1m"),
    ("${__range}", "1h"),
    ("$__range", "1h"),
    ("${instance:regex}", ".*"),
    ("${instance}", ".*"),
    ("$instance", ".*"),
];

/// [`KNOWN`] is what the exporter really exposes: every metric family of
/// a run's registry (`# TYPE` lines), no more, no less. A labelled family
/// shows once it has a series, so the run here has one of each.
#[test]
fn known_metrics_are_the_exported_ones() {
    use txpipe::metrics::{Backend, Metrics};
    let metrics = Metrics::new();
    let _mailbox = metrics.mailbox("reader", 32);
    metrics.restarted("reader", "panic: boom", 1);
    for backend in [Backend::Database, Backend::ObjectStore] {
        metrics.retried(backend, "an operation");
        metrics.store_call(backend, "an operation", std::time::Duration::from_millis(1));
    }
    let exposition = metrics.exposition();
    let mut exported: Vec<(&str, &str)> = exposition
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .collect();
    exported.sort();
    let mut names: Vec<&str> = exported.iter().map(|(name, _)| *name).collect();
    names.dedup();
    let mut known: Vec<&str> = KNOWN.to_vec();
    known.sort();
    assert_eq!(names, known, "exported families vs KNOWN");
    for (name, kind) in exported {
        assert_eq!(
            kind == "histogram",
            HISTOGRAMS.contains(&name),
            "{name} is a {kind}"
        );
    }
}

fn path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(path(relative)).unwrap_or_else(|e| panic!("reading {relative}: {e}"))
}

fn dashboard() -> Value {
    serde_json::from_str(&read("deploy/grafana/txpipe.json"))
        .expect("deploy/grafana/txpipe.json is not valid JSON")
}

/// Every `expr` of the dashboard (panel targets, at any depth), with the
/// title of the panel it belongs to.
fn dashboard_exprs(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(value: &Value, title: &str, out: &mut Vec<(String, String)>) {
        match value {
            Value::Object(object) => {
                let title = object.get("title").and_then(Value::as_str).unwrap_or(title);
                for (key, inner) in object {
                    match (key.as_str(), inner) {
                        ("expr", Value::String(expr)) => {
                            out.push((title.to_string(), expr.clone()))
                        }
                        _ => walk(inner, title, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|item| walk(item, title, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dashboard, "(dashboard)", &mut out);
    out
}

/// The `expr:` of every rule of a Prometheus rules file, read line by line:
/// `expr: <one line>` or a block scalar (`expr: |` and the lines indented
/// deeper than the key).
fn rule_exprs(rules: &str) -> Vec<String> {
    let lines: Vec<&str> = rules.lines().collect();
    let mut exprs = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        i += 1;
        let Some(rest) = trimmed
            .strip_prefix("- ")
            .unwrap_or(trimmed)
            .strip_prefix("expr:")
        else {
            continue;
        };
        let rest = rest.trim();
        if rest.starts_with('|') || rest.starts_with('>') {
            let mut body = String::new();
            while i < lines.len() {
                let next = lines[i].trim_start();
                if !next.is_empty() && lines[i].len() - next.len() <= indent {
                    break;
                }
                body.push_str(next);
                body.push('\n');
                i += 1;
            }
            exprs.push(body);
        } else {
            exprs.push(rest.trim_matches(|c| c == '"' || c == '\'').to_string());
        }
    }
    exprs
}

/// The metric names an expression mentions: identifiers starting with
/// `txpipe_` or `process_`.
fn metric_names(expr: &str) -> Vec<&str> {
    let is_ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let bytes = expr.as_bytes();
    let mut names = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let starts = (i == 0 || !is_ident(bytes[i - 1]))
            && (bytes[i..].starts_with(b"txpipe_") || bytes[i..].starts_with(b"process_"));
        if starts {
            let end = (i..bytes.len())
                .find(|&j| !is_ident(bytes[j]))
                .unwrap_or(bytes.len());
            names.push(&expr[i..end]);
            i = end;
        } else {
            i += 1;
        }
    }
    names
}

/// The metric of [`KNOWN`] a series name belongs to, if any: the name
/// itself, or a histogram's `_bucket`, `_sum` or `_count` series.
fn known_metric(name: &str) -> Option<&'static str> {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && let Some(histogram) = HISTOGRAMS.iter().find(|h| **h == base)
        {
            return Some(*histogram);
        }
    }
    KNOWN
        .iter()
        .find(|known| **known == name && !HISTOGRAMS.contains(*known))
        .copied()
}

/// The expressions (with where they are) that name an unknown metric.
fn unknown_names<'a>(exprs: impl IntoIterator<Item = (String, &'a str)>) -> Vec<String> {
    let mut unknown = Vec::new();
    for (place, expr) in exprs {
        for name in metric_names(expr) {
            if known_metric(name).is_none() {
                unknown.push(format!("{name} in {place}: {expr}"));
            }
        }
    }
    unknown
}

#[test]
fn metric_name_scan_finds_names_and_histogram_series() {
    assert_eq!(
        metric_names(
            "histogram_quantile(0.99, sum by (le) (rate(txpipe_chunk_latency_seconds_bucket{instance=~\"x\"}[1m]))) / process_cpu_seconds_total"
        ),
        [
            "txpipe_chunk_latency_seconds_bucket",
            "process_cpu_seconds_total"
        ]
    );
    assert_eq!(
        metric_names("my_txpipe_ready + txpipe_ready2"),
        ["txpipe_ready2"]
    );
    assert!(known_metric("txpipe_chunk_latency_seconds_count").is_some());
    assert!(known_metric("txpipe_commits_total").is_some());
    assert!(
        known_metric("txpipe_commits").is_none(),
        "counters are exposed with _total"
    );
    assert!(
        known_metric("txpipe_chunk_latency_seconds").is_none(),
        "a histogram has no bare series"
    );
    assert!(
        known_metric("txpipe_ready_count").is_none(),
        "only histograms have _count series"
    );
}

#[test]
fn dashboard_uses_prometheus_and_known_metrics() {
    let dashboard = dashboard();
    let templating = dashboard["templating"]["list"]
        .as_array()
        .expect("the dashboard has templating variables");
    let variable = |name: &str| {
        templating
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("the dashboard has no `{name}` variable"))
    };
    let datasource = variable("datasource");
    assert_eq!(datasource["type"], "datasource");
    assert_eq!(datasource["query"], "prometheus");
    variable("instance");

    // Panels, also inside collapsed rows.
    let mut panels = Vec::new();
    for panel in dashboard["panels"]
        .as_array()
        .expect("the dashboard has panels")
    {
        panels.push(panel);
        if let Some(inner) = panel["panels"].as_array() {
            panels.extend(inner);
        }
    }
    let graphs: Vec<&Value> = panels.into_iter().filter(|p| p["type"] != "row").collect();
    assert!(!graphs.is_empty(), "the dashboard has no panels");
    for panel in &graphs {
        let title = &panel["title"];
        assert_eq!(
            panel["datasource"]["type"], "prometheus",
            "panel {title} does not query Prometheus"
        );
        let targets = panel["targets"].as_array();
        assert!(
            targets.is_some_and(|t| !t.is_empty() && t.iter().all(|t| t["expr"].is_string())),
            "panel {title} has no PromQL targets"
        );
    }

    let exprs = dashboard_exprs(&dashboard);
    let unknown = unknown_names(
        exprs
            .iter()
            .map(|(title, expr)| (format!("panel {title:?}"), expr.as_str())),
    );
    assert!(
        unknown.is_empty(),
        "deploy/grafana/txpipe.json names metrics txpipe does not export:\n{}",
        unknown.join("\n")
    );

    let shown: Vec<&str> = exprs
        .iter()
        .flat_map(|(_, expr)| metric_names(expr))
        .filter_map(known_metric)
        .collect();
    let missing: Vec<&&str> = KNOWN.iter().filter(|m| !shown.contains(*m)).collect();
    assert!(
        missing.is_empty(),
        "metrics txpipe exports that deploy/grafana/txpipe.json does not show: {missing:?}"
    );
}

#[test]
fn alert_rules_use_known_metrics() {
    let rules = read("deploy/prometheus/alerts.yml");
    let exprs = rule_exprs(&rules);
    let count = rules
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with("- alert:") || l.starts_with("- record:"))
        .count();
    assert!(count > 0, "deploy/prometheus/alerts.yml has no rules");
    assert_eq!(
        exprs.len(),
        count,
        "the line scan found {} exprs for {count} rules in deploy/prometheus/alerts.yml: {exprs:#?}",
        exprs.len()
    );
    assert!(
        exprs.iter().all(|e| !e.trim().is_empty()),
        "an empty expr: {exprs:#?}"
    );
    let unknown = unknown_names(
        exprs
            .iter()
            .enumerate()
            .map(|(n, expr)| (format!("rule {}", n + 1), expr.as_str())),
    );
    assert!(
        unknown.is_empty(),
        "deploy/prometheus/alerts.yml names metrics txpipe does not export:\n{}",
        unknown.join("\n")
    );
}

/// Whether `promtool` is on PATH. Without it: a failure under CI, else a
/// note (the check is skipped).
fn have_promtool(check: &str) -> bool {
    if Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return true;
    }
    assert!(
        !support::ci(),
        "promtool is not on PATH: install the Debian package prometheus \
         (apt-get install -y --no-install-recommends prometheus)"
    );
    eprintln!("note: promtool is not on PATH (Debian package prometheus): skipping {check}");
    false
}

/// Runs promtool with `args`; fails with its output unless it succeeds.
fn promtool(args: &[&Path]) {
    let output = Command::new("promtool")
        .args(args)
        .output()
        .expect("running promtool");
    let shown = args
        .iter()
        .map(|a| a.display().to_string())
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        output.status.success(),
        "promtool {shown} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn promtool_accepts_alert_rules() {
    if !have_promtool("promtool check rules deploy/prometheus/alerts.yml") {
        return;
    }
    promtool(&[
        Path::new("check"),
        Path::new("rules"),
        path("deploy/prometheus/alerts.yml").as_path(),
    ]);
}

#[test]
fn promtool_alert_rule_tests_pass() {
    if !have_promtool("promtool test rules deploy/prometheus/alerts_test.yml") {
        return;
    }
    // rule_files in the test file are relative to the test file.
    promtool(&[
        Path::new("test"),
        Path::new("rules"),
        path("deploy/prometheus/alerts_test.yml").as_path(),
    ]);
}

#[test]
fn promtool_accepts_dashboard_exprs() {
    let exprs = dashboard_exprs(&dashboard());
    assert!(!exprs.is_empty(), "deploy/grafana/txpipe.json has no exprs");
    let mut rules = String::from("groups:\n  - name: grafana\n    rules:\n");
    for (n, (title, expr)) in exprs.iter().enumerate() {
        let mut expr = expr.clone();
        for (variable, value) in GRAFANA_VARIABLES {
            expr = expr.replace(variable, value);
        }
        assert!(
            !expr.contains('$'),
            "panel {title:?} uses a Grafana variable this test does not replace: {expr}"
        );
        rules.push_str(&format!(
            "      - record: grafana_expr_{n}\n        expr: |\n"
        ));
        for line in expr.lines() {
            rules.push_str(&format!("          {line}\n"));
        }
    }
    if !have_promtool("promtool check rules on the dashboard's exprs") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("grafana_exprs.yml");
    std::fs::write(&file, &rules).unwrap();
    promtool(&[Path::new("check"), Path::new("rules"), file.as_path()]);
}
