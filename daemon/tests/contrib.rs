//! What `contrib/` ships stays true to the daemon: every metric the Grafana
//! dashboard and the Prometheus rules name is one `slsd` exports, and
//! every metric `slsd` exports is in the list they are checked against.
//! (`promtool check rules` and `promtool test rules` run in `.ci/run`.)

use std::collections::BTreeSet;
use std::path::Path;

fn contrib(path: &str) -> String {
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../contrib")
        .join(path);
    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

/// Every `sls_…` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut at = 0;
    while let Some(found) = text[at..].find("sls_") {
        let start = at + found;
        let before = start.checked_sub(1).map(|i| bytes[i]);
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .map_or(text.len(), |n| start + n);
        // Not the tail of another identifier.
        if !before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_') {
            names.insert(text[start..end].to_owned());
        }
        at = end;
    }
    names
}

/// Whether `name` is a series the daemon exports: a metric, or a
/// histogram's bucket, sum or count.
fn exported(name: &str) -> bool {
    slsd::metrics::ALL.contains(&name)
        || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            name.strip_suffix(suffix)
                .is_some_and(|base| slsd::metrics::HISTOGRAMS.contains(&base))
        })
}

#[test]
fn the_dashboard_and_the_rules_name_only_exported_metrics() {
    let dashboard = contrib("grafana/sls-dashboard.json");
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).expect("valid JSON");
    let panels = parsed["panels"].as_array().expect("panels");
    assert!(!panels.is_empty());
    for panel in panels {
        let targets = panel["targets"].as_array().expect("targets");
        assert!(
            targets.iter().all(|t| t["expr"].as_str().is_some()),
            "panel {} has a target without a query",
            panel["title"]
        );
    }
    for (file, text) in [
        ("grafana/sls-dashboard.json", dashboard.as_str()),
        (
            "prometheus/sls-rules.yml",
            &contrib("prometheus/sls-rules.yml"),
        ),
        (
            "prometheus/sls-rules.test.yml",
            &contrib("prometheus/sls-rules.test.yml"),
        ),
    ] {
        let names = metric_names(text);
        assert!(!names.is_empty(), "{file} names no metric");
        let unknown: Vec<_> = names.iter().filter(|n| !exported(n)).collect();
        assert!(
            unknown.is_empty(),
            "{file} names metrics slsd does not export: {unknown:?}"
        );
    }
}

#[test]
fn the_dashboard_shows_what_operators_watch() {
    let names = metric_names(&contrib("grafana/sls-dashboard.json"));
    for wanted in [
        "sls_requests_total",
        "sls_request_seconds_bucket",
        "sls_lockouts_total",
        "sls_sms_deliveries_total",
        "sls_sms_failovers_total",
        "sls_push_answer_seconds_bucket",
        "sls_store_round_trips_total",
        "sls_store_conflicts_total",
        "sls_rejected_handshakes_total",
        "sls_events_dropped_total",
    ] {
        assert!(names.contains(wanted), "the dashboard has no {wanted}");
    }
}

#[test]
fn every_metric_the_daemon_defines_is_listed() {
    let source = include_str!("../src/metrics.rs");
    let defined: BTreeSet<String> = source
        .lines()
        .filter_map(|line| {
            let rest = line.trim().strip_prefix("pub const ")?;
            let literal = rest.split_once(": &str = \"")?.1;
            literal.strip_suffix("\";").map(str::to_owned)
        })
        .collect();
    let listed: BTreeSet<String> = slsd::metrics::ALL.iter().map(|n| n.to_string()).collect();
    assert_eq!(defined, listed, "metrics::ALL and the names defined differ");
    for histogram in slsd::metrics::HISTOGRAMS {
        assert!(listed.contains(histogram));
    }
}

#[test]
fn an_unknown_name_is_caught() {
    // The check above can fail: a misspelt or retired name is not exported.
    assert!(!exported("sls_request_total"));
    assert!(!exported("sls_lockouts_total_bucket"));
    assert!(exported("sls_request_seconds_count"));
    let names = metric_names("rate(sls_requests_total[5m]) / xsls_no");
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["sls_requests_total"]
    );
}
