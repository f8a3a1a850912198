//! `lgsp-gateway check-config` refuses exactly what `run` refuses: problems found while preparing the config (a
//! certificate or CRL that does not load, a schema directory missing a type, a short token secret, a Redis URL the
//! client cannot use) are reported at the line of the config that names them, all at once. `--connect` opens the
//! rate-limit backend and every upstream's TLS as each hop and reports each, at its line when it fails.

use std::path::Path;
use std::process::{Command, Output};

use lgsp_testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_lgsp-gateway");

fn check(dir: &Path, args: &[&str]) -> (Output, String, String) {
    let out = Command::new(BIN)
        .arg("check-config")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run check-config");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

/// The 1-based line of `text` holding `needle`, and the column of the first string on it (where the value, or a
/// list's first item, starts).
fn place(text: &str, needle: &str) -> String {
    let (i, line) = text
        .lines()
        .enumerate()
        .find(|(_, l)| l.contains(needle))
        .unwrap_or_else(|| panic!("no {needle:?} in the config"));
    let column = line.find('"').map_or(1, |c| c + 1);
    format!("{}:{column}", i + 1)
}

/// A scratch directory with the dev PKI (`certs/`) and a copy of the schemas without BienDong.
fn scratch() -> tempfile::TempDir {
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
    let schemas = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/cbccvc");
    let copy = dir.path().join("xsd");
    std::fs::create_dir(&copy).unwrap();
    for entry in std::fs::read_dir(schemas).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if p.is_file() && !name.starts_with("BienDong") {
            std::fs::copy(&p, copy.join(&name)).unwrap();
        }
    }
    std::fs::write(dir.path().join("short.secret"), "too short").unwrap();
    std::fs::write(dir.path().join("certs/garbage.crl.pem"), "not a CRL\n").unwrap();
    dir
}

#[test]
fn what_run_refuses_check_config_refuses_each_at_its_line() {
    let dir = scratch();
    let good = lgsp_config::EMBEDDED;
    std::fs::write(dir.path().join("good.toml"), good).unwrap();
    let (out, stdout, stderr) = check(dir.path(), &["good.toml"]);
    assert!(out.status.success(), "{stdout}{stderr}");

    let cases = [
        (
            "# secret_file = \"token.secret\"",
            "secret_file = \"short.secret\"",
            "token.secret_file",
            "holds 9 bytes; write at least 32",
        ),
        (
            "schemas = \"embedded\"",
            "schemas = \"xsd\"",
            "validation.schemas",
            "BienDong.xsd",
        ),
        (
            "backend = \"local\"",
            "backend = \"redis://127.0.0.1:notaport\"",
            "ratelimit.backend",
            "redis://127.0.0.1:6379",
        ),
        (
            "crls = [\"certs/ca.crl.pem\"]\nidentity_uri_prefix = \"urn:lgsp:id:\"\nhandshake_timeout = \"10s\"\n\n[hop.upstream_tls]\ncert = \"certs/ndxp-client.pem\"",
            "crls = [\"certs/garbage.crl.pem\"]\nidentity_uri_prefix = \"urn:lgsp:id:\"\nhandshake_timeout = \"10s\"\n\n[hop.upstream_tls]\ncert = \"certs/ndxp-client.pem\"",
            "hop[1].tls.crls[0]",
            "garbage.crl.pem",
        ),
    ];
    let mut all = good.to_owned();
    for (from, to, field, says) in cases {
        assert!(good.contains(from), "{from}");
        let text = good.replacen(from, to, 1);
        std::fs::write(dir.path().join("bad.toml"), &text).unwrap();
        let (out, _, stderr) = check(dir.path(), &["bad.toml"]);
        assert!(!out.status.success(), "{field}: {stderr}");
        let at = place(&text, to.lines().next().unwrap());
        let expected = format!("bad.toml:{at}: {field}: ");
        assert!(stderr.contains(&expected), "{expected:?} not in:\n{stderr}");
        assert!(stderr.contains(says), "{says:?} not in:\n{stderr}");
        assert!(stderr.contains("bad.toml: 1 problem(s)"), "{stderr}");
        all = all.replacen(from, to, 1);
    }
    // All four at once: every problem is reported, not only the first.
    std::fs::write(dir.path().join("all.toml"), &all).unwrap();
    let (out, _, stderr) = check(dir.path(), &["all.toml"]);
    assert!(!out.status.success());
    assert!(stderr.contains("all.toml: 4 problem(s)"), "{stderr}");

    // And `run` refuses the same file with the same words.
    let run = Command::new(BIN)
        .args(["run", "--config", "all.toml"])
        .current_dir(dir.path())
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let run_err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    for line in stderr
        .lines()
        .filter(|l| l.starts_with("all.toml:") && !l.contains("problem(s)"))
    {
        assert!(
            run_err.contains(line),
            "run does not say {line:?}:\n{run_err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn connect_opens_every_upstream_as_its_hop_and_names_the_unreachable_one_by_line() {
    let chain = Chain::start().await;
    let ndxp = chain.ndxp.hop_addr("ndxp").unwrap();
    let dir = chain.pki.dir().to_owned();
    let text = hop_config(&chain.pki, "lgsp", "/lgsp/v1", ndxp, "/ndxp/v1", &[]);
    std::fs::write(dir.join("lgsp.toml"), &text).unwrap();
    let (out, stdout, stderr) = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || check(&dir, &["lgsp.toml", "--connect"])
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{stdout}{stderr}");
    let reached = format!("✓ hop lgsp → localhost:{}", ndxp.port());
    assert!(stdout.contains(&reached), "{stdout}");
    assert!(stdout.contains("server certificate ndxp."), "{stdout}");
    // The journal is read, never created: this config's file does not exist before its first start.
    assert!(
        stdout.contains("does not exist yet; the first start creates it"),
        "{stdout}"
    );
    let journal = journal_url_in(&text);
    assert!(!std::path::Path::new(journal.trim_start_matches("sqlite://")).exists());

    // One route's upstream is down: named with its line; the others still answer.
    let closed = closed_port().await;
    let text = text.replacen(
        &format!("upstream = \"https://localhost:{}\"", ndxp.port()),
        &format!("upstream = \"https://localhost:{}\"", closed.port()),
        1,
    );
    std::fs::write(dir.join("down.toml"), &text).unwrap();
    let (out, stdout, stderr) = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || check(&dir, &["down.toml", "--connect", "--timeout", "2"])
    })
    .await
    .unwrap();
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains(&reached), "{stdout}");
    let at = place(&text, &format!("localhost:{}", closed.port()));
    let expected = format!(
        "down.toml:{at}: hop[0].route[0].upstream: hop lgsp → localhost:{}",
        closed.port()
    );
    assert!(stderr.contains(&expected), "{expected:?} not in:\n{stderr}");
    assert!(stderr.contains("cannot connect"), "{stderr}");

    // The upstream refuses this hop's client certificate (expired): told apart from an unreachable one.
    let good = hop_config(&chain.pki, "lgsp", "/lgsp/v1", ndxp, "/ndxp/v1", &[]);
    let text = good
        .replacen(
            "cert = \"lgsp-client.pem\"",
            &format!("cert = \"{AGENCY_EXPIRED}.pem\""),
            1,
        )
        .replacen(
            "key = \"lgsp-client.key\"",
            &format!("key = \"{AGENCY_EXPIRED}.key\""),
            1,
        );
    assert_ne!(text, good);
    std::fs::write(dir.join("expired.toml"), &text).unwrap();
    let (out, stdout, _) = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || check(&dir, &["expired.toml", "--connect", "--timeout", "2"])
    })
    .await
    .unwrap();
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("refused this hop's client certificate"),
        "{stdout}"
    );
    assert!(stdout.contains("CertificateExpired"), "{stdout}");

    // A journal a gateway has written is reported by its schema and records; one in a missing directory is refused.
    let running = lgsp_proxy::Gateway::start(&parse(&chain.pki, &good))
        .await
        .unwrap();
    let (_, stdout, _) = tokio::task::spawn_blocking({
        let (dir, good) = (dir.clone(), good.clone());
        move || {
            std::fs::write(dir.join("written.toml"), &good).unwrap();
            check(&dir, &["written.toml", "--connect", "--timeout", "2"])
        }
    })
    .await
    .unwrap();
    assert!(
        stdout.contains("✓ journal sqlite://") && stdout.contains("schema version 7, 0 records"),
        "{stdout}"
    );
    running.shutdown().await;
    let nowhere = good.replacen(
        &journal_url_in(&good),
        "sqlite:///nonexistent-dir/journal.db",
        1,
    );
    std::fs::write(dir.join("nowhere.toml"), &nowhere).unwrap();
    let (out, _, stderr) = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || check(&dir, &["nowhere.toml", "--connect", "--timeout", "2"])
    })
    .await
    .unwrap();
    assert!(!out.status.success());
    let at = place(&nowhere, "sqlite:///nonexistent-dir");
    assert!(
        stderr.contains(&format!(
            "nowhere.toml:{at}: journal.url: journal sqlite:///nonexistent-dir/journal.db"
        )),
        "{stderr}"
    );

    // A shared rate-limit backend is asked for a decision.
    if let Ok(url) = std::env::var("LGSP_TEST_REDIS_URL") {
        let text = format!(
            "{text}\n[ratelimit]\nbackend = \"{url}\"\nkey_prefix = \"lgsp:test:check:\"\n"
        );
        std::fs::write(dir.join("redis.toml"), &text).unwrap();
        let (_, stdout, _) = tokio::task::spawn_blocking({
            let dir = dir.clone();
            move || check(&dir, &["redis.toml", "--connect", "--timeout", "2"])
        })
        .await
        .unwrap();
        assert!(stdout.contains("✓ rate-limit backend redis://"), "{stdout}");
    } else {
        eprintln!("skipped the Redis part: LGSP_TEST_REDIS_URL is not set (.ci/run sets it)");
    }
    chain.shutdown().await;
}
