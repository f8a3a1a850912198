//! Drives the built `lgsp-gateway` binary with real clients: three processes (emulator, NDXP, LGSP) on port 0,
//! the printed `curl` run as printed, `openssl s_client` with a revoked certificate, `promtool check metrics` on
//! the real /metrics, SIGTERM draining to exit 0, and the `check-config`, `certs init` and `keys new` commands.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use lgsp_testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_lgsp-gateway");

#[test]
fn printed_curl_travels_three_processes_both_paths_work_and_real_clients_agree() {
    if !tool("curl") {
        return;
    }
    let pki = TestPki::new();
    let dir = pki.dir().to_owned();
    let mut emu = Proc::spawn(
        BIN,
        &[
            "run",
            "--config",
            &write(&dir, "emu.toml", &emulator_config(&pki)),
        ],
        &dir,
    );
    let emu_port = emu.port("listening: emulator");
    let emu_addr = format!("127.0.0.1:{emu_port}").parse().unwrap();
    let ndxp_cfg = hop_config(
        &pki,
        "ndxp",
        "/ndxp/v1",
        emu_addr,
        "/cbccvc/v1",
        &["LGSP-DEV", LGSP2_IDENTITY],
    );
    let mut ndxp = Proc::spawn(
        BIN,
        &["run", "--config", &write(&dir, "ndxp.toml", &ndxp_cfg)],
        &dir,
    );
    let ndxp_addr = format!("127.0.0.1:{}", ndxp.port("listening: hop ndxp"))
        .parse()
        .unwrap();
    let lgsp_cfg = hop_config(&pki, "lgsp", "/lgsp/v1", ndxp_addr, "/ndxp/v1", &[]);
    let mut lgsp = Proc::spawn(
        BIN,
        &["run", "--config", &write(&dir, "lgsp.toml", &lgsp_cfg)],
        &dir,
    );
    let lgsp_port = lgsp.port("listening: hop lgsp");

    // The printed curl, exactly as printed, returns 2xx with the emulator's receipt holding the message id.
    let curl = lgsp.line("curl ");
    let (ok, out, err) = sh(&format!("{curl} -sS -D - "));
    assert!(ok, "curl failed: {err}");
    assert!(out.starts_with("HTTP/2 200"), "{out}");
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("x-lgsp-message-id: "))
        .map(str::trim)
        .expect("message id header")
        .to_owned();
    let body = out.split("\r\n\r\n").nth(1).expect("body");
    let receipt: serde_json::Value = serde_json::from_str(body).expect("receipt JSON");
    assert_eq!(receipt["message_id"], id.as_str());
    // Path (a), agency → LGSP process → NDXP process → emulator: the first hop's X-LGSP-Client is kept, each hop
    // added itself, and the NDXP relayed as its own identity.
    assert_eq!(receipt["hops"], "lgsp, ndxp");
    assert_eq!(receipt["agency"], H29);
    assert_eq!(receipt["delivered_by"], "NDXP-DEV");

    // The printed reload line, as printed, reloads.
    let reload = lgsp.line("reload: ");
    let (ok, out, err) = sh(&format!("{} -sS", reload.trim_start_matches("reload: ")));
    assert!(ok && out.starts_with("reloaded: "), "{out}{err}");

    // A second LGSP process relays to the same NDXP, which knows it by its own certificate.
    let lgsp2_cfg = hop_config(&pki, "lgsp2", "/lgsp/v1", ndxp_addr, "/ndxp/v1", &[]);
    let mut lgsp2 = Proc::spawn(
        BIN,
        &["run", "--config", &write(&dir, "lgsp2.toml", &lgsp2_cfg)],
        &dir,
    );
    let lgsp2_port = lgsp2.port("listening: hop lgsp2");

    // Path (b), direct mode: the agency connects to the NDXP process itself with its own certificate and key.
    let ndxp_port = ndxp_addr.port();
    let ca = pki.path("ca.pem").display().to_string();
    let agency = |id: &str, ext: &str| pki.path(&format!("{id}.{ext}")).display().to_string();
    let packet = write(
        &dir,
        "packet.xml",
        &sample("valid/HoSoCBCCVC-02-toi-thieu.xml"),
    );
    let (ok, out, err) = sh(&format!(
        "curl -sS --cert {} --key {} --cacert {ca} -H 'X-API-Key: lgsp_dev_000.00.00.H29_production' -H 'Content-Type: application/xml' --data-binary @{packet} https://localhost:{ndxp_port}/ndxp/v1/HoSoCBCCVC",
        agency(AGENCY_OK, "pem"),
        agency(AGENCY_OK, "key")
    ));
    assert!(ok, "curl failed: {err}");
    let direct: serde_json::Value = serde_json::from_str(&out).expect("receipt JSON");
    assert_eq!(
        (&direct["hops"], &direct["agency"]),
        (&serde_json::json!("ndxp"), &serde_json::json!(H29))
    );

    let (ok, out, err) = sh(&format!(
        "curl -sS --cert {} --key {} --cacert {ca} -H 'X-API-Key: lgsp_dev_000.00.00.H26_production' -H 'Content-Type: application/xml' --data-binary @{} https://localhost:{lgsp2_port}/lgsp/v1/HoSoCBCCVC",
        agency(AGENCY_OTHER, "pem"),
        agency(AGENCY_OTHER, "key"),
        write(
            &dir,
            "packet-h26.xml",
            &sample("valid/HoSoCBCCVC-02-toi-thieu.xml").replace(H29, H26)
        )
    ));
    assert!(ok, "curl failed: {err}");
    let second: serde_json::Value = serde_json::from_str(&out).expect("receipt JSON");
    assert_eq!(
        (&second["hops"], &second["agency"]),
        (&serde_json::json!("lgsp2, ndxp"), &serde_json::json!(H26))
    );
    assert!(lgsp2.terminate(), "second lgsp did not exit 0");

    // A relay whose hops already list the NDXP is a loop: 508, whoever sends it.
    let (ok, out, _) = sh(&format!(
        "curl -sS -o - -w '\\n%{{http_code}}' --cert {} --key {} --cacert {ca} -H 'X-LGSP-Client: {H29}' -H 'X-LGSP-Hops: ndxp, lgsp' -H 'Content-Type: application/xml' --data-binary @{packet} https://localhost:{ndxp_port}/ndxp/v1/HoSoCBCCVC",
        agency("lgsp-client", "pem"),
        agency("lgsp-client", "key")
    ));
    assert!(ok);
    assert!(out.ends_with("508"), "{out}");
    assert!(out.contains("hop.loop_detected"), "{out}");

    // Real curl over HTTP/1.1 with the wrong key: 401 problem+json.
    let (cert, key) = (
        pki.path(&format!("{AGENCY_OK}.pem")),
        pki.path(&format!("{AGENCY_OK}.key")),
    );
    let (ok, out, _) = sh(&format!(
        "curl -sS --http1.1 -o - -w '\\n%{{http_code}} %{{content_type}}' --cert {} --key {} --cacert {ca} -H 'X-API-Key: nope' -d '<x/>' https://localhost:{lgsp_port}/lgsp/v1/HoSoCBCCVC",
        cert.display(),
        key.display()
    ));
    assert!(ok);
    assert!(out.ends_with("401 application/problem+json"), "{out}");
    assert!(out.contains("\"code\":\"auth.unknown_key\""), "{out}");

    // openssl s_client with the revoked certificate is refused with the certificate_revoked alert.
    if tool("openssl") {
        let revoked = pki.path(AGENCY_REVOKED);
        let (_, out, err) = sh(&format!(
            "printf 'GET / HTTP/1.1\\r\\nHost: localhost\\r\\n\\r\\n' | openssl s_client -connect 127.0.0.1:{lgsp_port} -servername localhost -CAfile {ca} -cert {r}.pem -key {r}.key -ign_eof 2>&1",
            r = revoked.display()
        ));
        let all = format!("{out}{err}");
        assert!(all.contains("certificate revoked"), "{all}");
    }

    // promtool accepts the real exposition of the LGSP process.
    let metrics_url = lgsp
        .line("metrics: ")
        .trim_start_matches("metrics: ")
        .to_owned();
    let (ok, exposition, _) = sh(&format!("curl -sS {metrics_url}"));
    assert!(ok);
    assert!(
        exposition.contains("lgsp_tls_handshake_failures_total"),
        "{exposition}"
    );
    assert!(exposition.contains("lgsp_requests_total{agency=\"000.00.00.H29\",hop=\"lgsp\",mode=\"production\",route=\"HoSoCBCCVC\",status=\"200\"} 1"));
    if tool("promtool") {
        let file = write(&dir, "metrics.txt", &exposition);
        let (ok, out, err) = sh(&format!("promtool check metrics < {file}"));
        assert!(ok, "promtool: {out}{err}");
    }

    // SIGTERM drains and exits 0, front hop first.
    assert!(lgsp.terminate(), "lgsp did not exit 0");
    assert!(ndxp.terminate(), "ndxp did not exit 0");
    assert!(emu.terminate(), "emulator did not exit 0");
}

#[test]
fn certs_init_writes_what_the_default_config_needs_and_check_config_says_ok() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["certs", "init", "--dir", "certs"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = Command::new(BIN)
        .args(["certs", "init", "--dir", "certs"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        !again.status.success(),
        "a second init must not overwrite without --force"
    );
    write(dir.path(), "gateway.toml", lgsp_config::EMBEDDED);
    let out = Command::new(BIN)
        .args(["check-config", "gateway.toml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ok (2 hops"), "{stdout}");
}

#[test]
fn check_config_prints_each_problem_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let text = lgsp_config::EMBEDDED
        .replacen(
            "handshake_timeout = \"10s\"",
            "handshake_timeout = \"soon\"",
            1,
        )
        .replacen(
            "upstream = \"https://localhost:8444\"",
            "upstream = \"ftp://localhost\"",
            1,
        );
    let file = write(dir.path(), "bad.toml", &text);
    let out = Command::new(BIN)
        .args(["check-config", &file])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line_of = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    assert!(
        stderr.contains(&format!("bad.toml:{}:", line_of("\"soon\""))),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("bad.toml:{}:", line_of("ftp://"))),
        "{stderr}"
    );
    assert!(stderr.contains("2 problem(s)"), "{stderr}");

    let unknown = write(
        dir.path(),
        "unknown.toml",
        &lgsp_config::EMBEDDED.replacen("[log]\n", "[log]\ncolour = true\n", 1),
    );
    let out = Command::new(BIN)
        .args(["check-config", &unknown])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("unknown field `colour`"), "{stderr}");
}

#[test]
fn keys_new_prints_a_key_and_the_config_line_with_its_hash() {
    let out = Command::new(BIN)
        .args([
            "keys",
            "new",
            "--agency",
            "000.00.00.H29",
            "--kind",
            "trial",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let key = stdout.lines().nth(1).unwrap().trim();
    assert!(key.starts_with("lgsp_trial_"), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "{{ sha256 = \"{}\", kind = \"trial\" }}",
            lgsp_auth::sha256_hex(key)
        )),
        "{stdout}"
    );
    let bad = Command::new(BIN)
        .args(["keys", "new", "--agency", "h29"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not an agency code"));
}

#[test]
fn validate_checks_files_offline_with_the_gateway_rules() {
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/cbccvc/samples");
    let good = samples.join("valid/HoSoCBCCVC-01-day-du.xml");
    let good_json = samples.join("valid/BienDong-03-nghi-huu.json");
    let domain = samples.join("invalid/HoSoCBCCVC-48-cccd.province-ma-tinh-003.json");
    let run = |args: &[&str], files: &[&Path]| {
        let out = Command::new(BIN)
            .arg("validate")
            .args(args)
            .args(files)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, out) = run(&[], &[&good, &good_json]);
    assert!(ok, "{out}");
    assert!(
        out.contains("valid (HoSoCBCCVC, xml)") && out.contains("valid (BienDong, json)"),
        "{out}"
    );
    let (ok, out) = run(&[], &[&good, &domain]);
    assert!(!ok);
    assert!(
        out.contains("[cccd.province]") && out.contains("6:15 /HoSoCBCCVC/SoCCCD"),
        "{out}"
    );
    // Schema only: the domain rule is not checked.
    let (ok, _) = run(&["--schema-only"], &[&domain]);
    assert!(ok);
    // A forced type that does not fit the root.
    let (ok, out) = run(&["--type", "BienChe"], &[&good]);
    assert!(!ok);
    assert!(out.contains("[xsd.unknown_root]"), "{out}");
    let (ok, out) = run(&["--json"], &[&domain]);
    assert!(!ok);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["errors"][0]["rule"], "cccd.province");
}

#[test]
fn json_access_log_has_one_line_per_request_without_key_or_packet_and_sighup_reloads() {
    if !tool("curl") {
        return;
    }
    let pki = TestPki::new();
    let dir = pki.dir().to_owned();
    let down: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let text = hop_config(&pki, "lgsp", "/lgsp/v1", down, "/ndxp/v1", &[]).replace(
        "[log]\nlevel = \"warn\"\n",
        "[log]\nformat = \"json\"\nlevel = \"info\"\n",
    );
    let config = write(&dir, "lgsp-json.toml", &text);
    let log = dir.join("lgsp.log");
    let mut lgsp = Proc::spawn_logging(BIN, &["run", "--config", &config], &dir, Some(&log));
    let port = lgsp.port("listening: hop lgsp");
    let ca = pki.path("ca.pem").display().to_string();
    let key = "lgsp_dev_000.00.00.H29_production";
    let body = dir.join("packet.xml");
    std::fs::write(&body, sample("valid/HoSoCBCCVC-02-toi-thieu.xml")).unwrap();
    let curl = format!(
        "curl -sS -o /dev/null -w '%{{http_code}}' --cert {c}.pem --key {c}.key --cacert {ca} -H 'X-API-Key: {key}' -H 'Content-Type: application/xml' --data-binary @{b} https://localhost:{port}/lgsp/v1/HoSoCBCCVC",
        c = pki.path(AGENCY_OK).display(),
        b = body.display()
    );
    let (_, code, _) = sh(&curl);
    assert_eq!(code, "502", "the upstream is down in this test");

    // SIGHUP reloads the file: the counter shows it.
    std::fs::write(
        &config,
        text.replace("timeout = \"5s\"", "timeout = \"6s\""),
    )
    .unwrap();
    let pid = lgsp.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let metrics_url = lgsp
        .line("metrics: ")
        .trim_start_matches("metrics: ")
        .to_owned();
    let mut reloaded = false;
    for _ in 0..200 {
        let (_, m, _) = sh(&format!("curl -sS {metrics_url}"));
        if m.contains("lgsp_config_reloads_total{result=\"success\"} 1") {
            reloaded = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(reloaded, "SIGHUP did not reload");
    assert!(lgsp.terminate());

    let logs = std::fs::read_to_string(&log).unwrap();
    let access: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "lgsp::access")
        .collect();
    assert_eq!(access.len(), 1, "{logs}");
    let a = &access[0];
    for field in [
        "message_id",
        "agency",
        "route",
        "status",
        "duration_ms",
        "bytes_in",
        "bytes_out",
        "mode",
    ] {
        assert!(!a[field].is_null(), "access log lacks {field}: {a}");
    }
    assert_eq!(
        (
            a["agency"].as_str(),
            a["status"].as_u64(),
            a["mode"].as_str()
        ),
        (Some(H29), Some(502), Some("production"))
    );
    assert!(!logs.contains(key), "the API key must never be logged");
    assert!(
        !logs.contains("Nguyễn") && !logs.contains("001090012345"),
        "packet content must never be logged"
    );
}
