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
