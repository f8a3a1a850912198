//! The monitoring kit in `deploy/`: the alert rules pass `promtool check rules` and their unit tests, and every
//! metric the dashboard and the rules use is one the gateway exports.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

fn deploy() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// `lgsp_…` names in a text, with histogram series suffixes folded into their family.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("lgsp_") {
        let start = i + pos;
        let before_ok =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = start
            + text[start..]
                .bytes()
                .take_while(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_')
                .count();
        if before_ok {
            let name = &text[start..end];
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            out.insert(family.to_owned());
        }
        i = end.max(start + 1);
    }
    out
}

#[test]
fn dashboard_and_rules_use_only_exported_metrics() {
    let exported: BTreeSet<String> = lgsp_metrics::Metrics::new()
        .unwrap()
        .family_names()
        .into_iter()
        .collect();
    for file in [
        "grafana/lgsp-gateway.json",
        "prometheus/alerts.yml",
        "prometheus/alerts.test.yml",
    ] {
        let text = std::fs::read_to_string(deploy().join(file)).unwrap();
        let used = metric_names(&text);
        assert!(!used.is_empty(), "{file} uses no metric");
        let unknown: Vec<&String> = used.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{file} uses metrics the gateway does not export: {unknown:?}"
        );
    }
    // The dashboard is valid JSON with panels.
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(deploy().join("grafana/lgsp-gateway.json")).unwrap(),
    )
    .unwrap();
    assert!(dash["panels"].as_array().unwrap().len() >= 10);
}

#[test]
fn alert_rules_pass_promtool() {
    let found = Command::new("promtool").arg("--version").output().is_ok();
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool is missing in CI: .ci/run must install prometheus"
        );
        eprintln!("skipped: promtool is not installed (apt-get install prometheus)");
        return;
    }
    let check = Command::new("promtool")
        .args(["check", "rules", "prometheus/alerts.yml"])
        .current_dir(deploy())
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let test = Command::new("promtool")
        .args(["test", "rules", "alerts.test.yml"])
        .current_dir(deploy().join("prometheus"))
        .output()
        .unwrap();
    assert!(
        test.status.success(),
        "{}{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );
}

#[test]
fn metric_names_are_found_in_text() {
    let names =
        metric_names("rate(lgsp_request_duration_seconds_bucket[5m]) + xlgsp_no + lgsp_up_total");
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["lgsp_request_duration_seconds", "lgsp_up_total"]
    );
}
