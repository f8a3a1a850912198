//! The monitoring kit in `deploy/`: the alert rules pass `promtool check rules` and their unit tests, and every
//! metric the dashboard and the rules use is one the gateway exports; the systemd unit verifies and rates OK, and
//! `run` speaks its readiness protocol.

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

/// The example deployments parse as they stand (their certificate paths are examples, so nothing is loaded).
#[test]
fn example_configs_parse_and_keep_trial_traffic_off_production() {
    let dir = deploy().join("examples");
    let parse = |name: &str| {
        let text = std::fs::read_to_string(dir.join(name)).expect("example config");
        lgsp_config::parse(&text, name, &dir).unwrap_or_else(|e| panic!("{name}:\n{e}"))
    };
    let lgsp = parse("lgsp-province.toml");
    let ndxp = parse("ndxp.toml");
    for (cfg, hop) in [(&lgsp, "lgsp-hanoi"), (&ndxp, "ndxp")] {
        let h = cfg.hops.iter().find(|h| h.name == hop).expect("hop");
        for r in h.routes.iter().filter(|r| !r.dry_run) {
            let trial = r.trial_upstream.as_ref().expect("a trial upstream");
            assert_ne!(trial.authority, r.upstream.authority, "{hop} {}", r.name);
        }
        assert!(
            h.routes.iter().any(|r| r.dry_run),
            "{hop} has a dry-run route"
        );
    }
    let peers = &ndxp.hops[0].peers;
    assert!(peers.iter().any(|p| p.id == "LGSP-HN"));
    // Every agency the LGSP relays for is registered at the NDXP too.
    for a in &lgsp.agencies {
        assert!(
            ndxp.agencies.iter().any(|n| n.code == a.code),
            "{} missing at the NDXP",
            a.code
        );
    }
}

/// The direct agency's profile is what `probe --profile` reads: its paths show up in the first step.
#[test]
fn the_direct_agency_profile_feeds_the_probe() {
    let out = Command::new(env!("CARGO_BIN_EXE_lgsp-gateway"))
        .args(["probe", "--json", "--profile"])
        .arg(deploy().join("examples/agency-direct.toml"))
        .env("LGSP_API_KEY", "lgsp_trial_example")
        .output()
        .expect("run probe");
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["ok"], false);
    assert_eq!(report["steps"][0]["name"], "files");
    assert_eq!(report["steps"][0]["outcome"], "fail");
    let detail = report["steps"][0]["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("/etc/hrm/pki/agency-000.00.00.G09.pem"),
        "{detail}"
    );
    // Without a key anywhere, the probe says how to give one and exits 2.
    let out = Command::new(env!("CARGO_BIN_EXE_lgsp-gateway"))
        .args(["probe", "--profile"])
        .arg(deploy().join("examples/agency-direct.toml"))
        .env_remove("LGSP_API_KEY")
        .output()
        .expect("run probe");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("LGSP_API_KEY"));
}

#[test]
fn the_systemd_unit_verifies_and_is_rated_ok_or_better() {
    if !lgsp_testkit::tool("systemd-analyze") {
        return;
    }
    // The unit as installed, its binary the one just built (verify checks that ExecStart can run).
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(deploy().join("systemd/lgsp-gateway.service"))
        .unwrap()
        .replace("/usr/bin/lgsp-gateway", env!("CARGO_BIN_EXE_lgsp-gateway"));
    let path = dir.path().join("lgsp-gateway.service");
    std::fs::write(&path, unit).unwrap();
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&verify.stderr).into_owned();
    assert!(verify.status.success() && said.trim().is_empty(), "{said}");
    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(&path)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&security.stdout).into_owned();
    let overall = report
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("{report}"))
        .to_owned();
    println!("{overall}");
    let rating = overall.split_whitespace().nth_back(1).unwrap_or_default();
    assert!(
        ["SAFE", "OK"].contains(&rating),
        "systemd-analyze security rates the unit {rating}: {overall}"
    );
    // What the issue asks of it, line by line.
    let text = std::fs::read_to_string(deploy().join("systemd/lgsp-gateway.service")).unwrap();
    for line in [
        "User=lgsp-gateway",
        "ProtectSystem=strict",
        "StateDirectory=lgsp-gateway",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "LimitNOFILE=65536",
    ] {
        assert!(text.lines().any(|l| l == line), "the unit lacks {line}");
    }
}

#[test]
fn run_tells_systemd_when_it_is_ready_and_when_it_stops_and_takes_signals_once_ready() {
    use std::os::unix::net::UnixDatagram;
    let pki = lgsp_testkit::TestPki::new();
    let dir = pki.dir().to_owned();
    let socket_path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let config = lgsp_testkit::write(&dir, "emu.toml", &lgsp_testkit::emulator_config(&pki));
    let mut child = Command::new(env!("CARGO_BIN_EXE_lgsp-gateway"))
        .args(["run", "--config", &config])
        .current_dir(&dir)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 64];
    let n = socket.recv(&mut buf).expect("READY=1 within 30 s");
    assert_eq!(&buf[..n], b"READY=1");
    // Once it says ready, a reload (SIGHUP, as `systemctl reload` sends) at once is a reload, not the end of it.
    let _ = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let n = socket.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert!(child.wait().unwrap().success());
}
