//! `lgsp-gateway keys csr`: the key and the signing-certificate request an agency sends to a real CA, checked by
//! openssl — a valid self-signature, the agency's code as CN and SAN URI, signing key usages only — with the key
//! owner-only and never replaced.

use std::process::Command;

use lgsp_testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_lgsp-gateway");

#[test]
fn a_signing_request_names_the_agency_and_keeps_its_key_private() {
    if !tool("openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().display().to_string();
    let run = |args: &[&str]| {
        Command::new(BIN)
            .args(["keys", "csr"])
            .args(args)
            .args(["--out", &out])
            .output()
            .expect("run keys csr")
    };
    let made = run(&[
        "--agency",
        "000.00.00.H29",
        "--name",
        "Sở Nội vụ",
        "--algorithm",
        "rsa2048",
    ]);
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let csr = dir.path().join("000.00.00.H29-signing.csr.pem");
    let (ok, text, err) = sh(&format!(
        "openssl req -in {} -noout -verify -text -nameopt utf8,sep_comma_plus",
        csr.display()
    ));
    assert!(ok, "{err}");
    assert!(
        err.contains("verify OK") || text.contains("verify OK"),
        "{text}{err}"
    );
    assert!(text.contains("CN=000.00.00.H29"), "{text}");
    assert!(text.contains("O=Sở Nội vụ"), "{text}");
    assert!(text.contains("URI:urn:lgsp:id:000.00.00.H29"), "{text}");
    assert!(
        text.contains("Digital Signature, Non Repudiation"),
        "{text}"
    );
    assert!(text.contains("Public-Key: (2048 bit)"), "{text}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("000.00.00.H29-signing.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the key is owner-only");
    }
    // A second request never replaces the key; a bad code is named.
    let again = run(&["--agency", "000.00.00.H29"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("never replaces a key"));
    let bad = run(&["--agency", "h29"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not an agency code"));
}

#[test]
fn the_dev_pki_issues_signing_certificates_from_a_ca_of_their_own() {
    if !tool("openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let made = Command::new(BIN)
        .args(["certs", "init", "--dir"])
        .arg(dir.path())
        .output()
        .expect("certs init");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let p = |f: &str| dir.path().join(f).display().to_string();
    for leaf in [
        "signing-agency-000.00.00.H29.pem",
        "signing-person-000.00.00.H29.pem",
    ] {
        let (ok, out, err) = sh(&format!(
            "openssl verify -CAfile {} {}",
            p("signing-ca.pem"),
            p(leaf)
        ));
        assert!(ok, "{leaf}: {out}{err}");
        // Not under the CA a gateway trusts for mTLS, and signing only.
        let (ok, ..) = sh(&format!(
            "openssl verify -CAfile {} {}",
            p("ca.pem"),
            p(leaf)
        ));
        assert!(!ok, "{leaf} chains to the mTLS CA");
        let (_, text, _) = sh(&format!("openssl x509 -in {} -noout -text", p(leaf)));
        assert!(
            text.contains("Digital Signature, Non Repudiation"),
            "{text}"
        );
        assert!(!text.contains("TLS Web Client Authentication"), "{text}");
    }
    let (_, agency, _) = sh(&format!(
        "openssl x509 -in {} -noout -ext subjectAltName",
        p("signing-agency-000.00.00.H29.pem")
    ));
    assert!(agency.contains("URI:urn:lgsp:id:000.00.00.H29"), "{agency}");
}

#[test]
fn a_hop_certificate_request_names_its_identity_and_hosts() {
    if !tool("openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().display().to_string();
    let made = Command::new(BIN)
        .args([
            "certs",
            "csr",
            "--hop",
            "LGSP-HN",
            "--dns",
            "lgsp.hanoi.gov.vn",
            "--dns",
            "10.10.0.5",
        ])
        .args([
            "--organisation",
            "Sở Thông tin và Truyền thông Hà Nội",
            "--out",
            &out,
        ])
        .output()
        .expect("run certs csr");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let csr = dir.path().join("LGSP-HN.csr.pem");
    let checked = Command::new("openssl")
        .args(["req", "-in"])
        .arg(&csr)
        .args(["-noout", "-verify", "-text"])
        .output()
        .expect("openssl req");
    let text = String::from_utf8_lossy(&checked.stdout).into_owned()
        + &String::from_utf8_lossy(&checked.stderr);
    assert!(checked.status.success(), "{text}");
    for expected in [
        "CN = LGSP-HN",
        "URI:urn:lgsp:id:LGSP-HN",
        "DNS:lgsp.hanoi.gov.vn",
        "IP Address:10.10.0.5",
        "TLS Web Server Authentication",
        "TLS Web Client Authentication",
    ] {
        assert!(text.contains(expected), "{expected} not in:\n{text}");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("LGSP-HN.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // No host named: refused, nothing written.
    let refused = Command::new(BIN)
        .args(["certs", "csr", "--hop", "LGSP-X", "--out", &out])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(!dir.path().join("LGSP-X.key").exists());
}

/// Runs `keys rotate` on `config` in the PKI directory (where the config's relative paths point).
fn rotate(pki: &TestPki, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(["keys", "rotate", "--config", "gw.toml", "--agency", H29])
        .args(args)
        .current_dir(pki.dir())
        .output()
        .expect("run keys rotate")
}

/// The key `keys rotate` printed (the line after its heading).
fn printed_key(out: &std::process::Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    lines
        .find(|l| l.starts_with("New API key for"))
        .and_then(|_| lines.next())
        .map(|l| l.trim().to_owned())
        .unwrap_or_else(|| panic!("no key printed: {text}"))
}

/// The statuses `keys` get on a gateway started from the config file as it is now (a dry-run route: no upstream).
async fn statuses(pki: &TestPki, keys: &[&str]) -> Vec<(u16, String)> {
    let text = std::fs::read_to_string(pki.path("gw.toml")).expect("config");
    let gw = lgsp_proxy::Gateway::start(&parse(pki, &text))
        .await
        .expect("gateway");
    let client = TestClient::new(pki, Some(AGENCY_OK), true);
    let url = hop_url(&gw, "lgsp", "/lgsp/v1/validate/HoSoCBCCVC");
    let mut out = Vec::new();
    for key in keys {
        let a = client
            .send(
                "POST",
                &url,
                &[("x-api-key", key), ("content-type", "application/xml")],
                &sample("valid/HoSoCBCCVC-02-toi-thieu.xml"),
            )
            .await
            .expect("answer");
        let code = if a.status == 200 {
            String::new()
        } else {
            a.json()["code"].as_str().unwrap_or_default().to_owned()
        };
        out.push((a.status.as_u16(), code));
    }
    gw.shutdown().await;
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_rotate_adds_a_key_and_ends_the_old_one_after_the_overlap() {
    use std::os::unix::fs::PermissionsExt;
    const OLD: &str = "lgsp_dev_000.00.00.H29_production";
    let pki = TestPki::new();
    let text = format!(
        "# the operator's config\n{}",
        hop_config(
            &pki,
            "lgsp",
            "/lgsp/v1",
            "127.0.0.1:9".parse().unwrap(),
            "/ndxp/v1",
            &[]
        )
    );
    let path = pki.path("gw.toml");
    std::fs::write(&path, &text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();

    // A dry run prints the key and the agency's keys after the rotation, and leaves the file alone.
    let dry = rotate(&pki, &["--overlap", "7d"]);
    assert!(
        dry.status.success(),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    assert!(String::from_utf8_lossy(&dry.stdout).contains("keys = ["));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);

    // Written with an overlap: the old key and the new one both work.
    let first = rotate(&pki, &["--overlap", "7d", "--label", "hrm-2027", "--write"]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let new = printed_key(&first);
    let written = std::fs::read_to_string(&path).unwrap();
    assert!(
        written.starts_with("# the operator's config\n"),
        "comments kept"
    );
    assert!(written.contains("label = \"hrm-2027\""));
    assert!(written.contains(&lgsp_auth::sha256_hex(&new)));
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o640
    );
    let (ok, _, err) = sh(&format!(
        "cd {} && {BIN} check-config gw.toml",
        pki.dir().display()
    ));
    assert!(ok, "{err}");
    assert_eq!(
        statuses(&pki, &[OLD, &new]).await,
        vec![(200, String::new()), (200, String::new())]
    );

    // With no overlap left, every current key ends at once: only the newest works.
    let second = rotate(&pki, &["--overlap", "0s", "--write"]);
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let newest = printed_key(&second);
    let ended = (401, "auth.key_outside_validity".to_owned());
    assert_eq!(
        statuses(&pki, &[OLD, &new, &newest]).await,
        vec![ended.clone(), ended, (200, String::new())]
    );

    // An agency the file does not hold: refused with the fix, the file unchanged.
    let before = std::fs::read_to_string(&path).unwrap();
    let unknown = Command::new(BIN)
        .args([
            "keys",
            "rotate",
            "--config",
            "gw.toml",
            "--agency",
            "000.00.00.X01",
            "--write",
        ])
        .current_dir(pki.dir())
        .output()
        .unwrap();
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr)
            .contains("no [[agency]] with code = \"000.00.00.X01\""),
        "{}",
        String::from_utf8_lossy(&unknown.stderr)
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
}
