//! The files for the tools around flowcast (issue 14): the Grafana dashboard and the
//! Prometheus alerting rules query only metrics a running `flowcast run` exports, and the rules
//! pass `promtool check rules` and their unit tests (`promtool test rules`) when Debian's
//! `prometheus` package provides promtool (`scripts/test.sh` installs it).

mod common;

use common::*;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

const DASHBOARD: &str = "examples/grafana/flowcast-dashboard.json";
const RULES: &str = "examples/prometheus/flowcast-rules.yml";
const RULE_TESTS: &str = "examples/prometheus/flowcast-rules.test.yml";

/// The metric families a live service declares on `/metrics` (its `# TYPE` lines).
fn exported_families() -> BTreeSet<String> {
    let dir = tempfile::tempdir().unwrap();
    let (svc, _stdin) = start_with_stdin(
        dir.path(),
        "models: models\nsource: { kind: file, path: \"-\" }",
    );
    // Families with a label per flow are declared once the engine has published its flows.
    let port = svc.http_port;
    svc.wait_until("the per-flow metrics", || {
        http(port, "GET", "/metrics")
            .1
            .contains("flowcast_model_member_weight{")
    });
    let (status, body) = http(port, "GET", "/metrics");
    assert_eq!(status, 200);
    body.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_string)
        .collect()
}

/// The `flowcast_*` names a PromQL text uses, histogram series named by their family.
fn metric_names(text: &str) -> BTreeSet<String> {
    let re = regex::Regex::new(r"flowcast_[a-z_]+").unwrap();
    re.find_iter(text)
        .map(|m| {
            let n = m.as_str();
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| n.strip_suffix(s))
                .unwrap_or(n)
                .to_string()
        })
        .collect()
}

#[test]
fn the_grafana_dashboard_and_the_rules_query_only_exported_metrics() {
    let exported = exported_families();
    assert!(
        exported.contains("flowcast_processing_seconds"),
        "{exported:?}"
    );
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).unwrap();
    let panels = dash["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    let mut used = BTreeSet::new();
    for p in panels {
        assert!(p["gridPos"]["w"].as_u64().is_some(), "{p}");
        let targets = p["targets"].as_array().unwrap();
        assert!(
            !targets.is_empty(),
            "a panel without a query: {}",
            p["title"]
        );
        for t in targets {
            used.extend(metric_names(t["expr"].as_str().unwrap()));
        }
    }
    let unknown: Vec<_> = used.difference(&exported).collect();
    assert!(unknown.is_empty(), "the dashboard queries {unknown:?}");
    let rules = metric_names(&std::fs::read_to_string(RULES).unwrap());
    for needed in [
        "flowcast_reload_success",
        "flowcast_sink_dropped_total",
        "flowcast_processing_seconds",
        "flowcast_nats_connected",
    ] {
        assert!(rules.contains(needed), "no rule reads {needed}");
    }
    let unknown: Vec<_> = rules.difference(&exported).collect();
    assert!(unknown.is_empty(), "the rules query {unknown:?}");
}

#[test]
fn the_prometheus_rules_pass_promtool_and_their_unit_tests() {
    if Command::new("promtool").arg("--version").output().is_err() {
        eprintln!(
            "\n*** SKIPPED: promtool is not installed (Debian's `prometheus` package; \
             scripts/test.sh installs it): the alerting rules were not checked. ***\n"
        );
        return;
    }
    let dir = Path::new(RULES).parent().unwrap();
    for args in [
        ["check", "rules", "flowcast-rules.yml"],
        ["test", "rules", "flowcast-rules.test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(dir))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(Path::new(RULE_TESTS).exists());
}
