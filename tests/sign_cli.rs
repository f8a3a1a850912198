//! `lgsp-gateway sign` and `verify` as an integrator runs them: an approval signed once by the approving person
//! (PEM key) and once by the agency (a PKCS#12 file made by openssl, as CAs hand keys out), verified offline by
//! the gateway's code and by xmlsec1; a changed packet and the wrong sender refused with their rules.

use std::path::Path;
use std::process::Command;

use lgsp_testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_lgsp-gateway");

fn samples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/cbccvc/samples")
}

fn run(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run lgsp-gateway");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_integrator_signs_with_pem_and_pkcs12_keys_and_verifies_offline() {
    if !tool("openssl") {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let signing = samples().join("signing");
    let path = |p: &Path| p.display().to_string();
    // The agency's key handed out as PKCS#12 (openssl 3's defaults: AES-256-CBC, PBKDF2).
    let p12 = dir.path().join("agency.p12");
    let made = Command::new("openssl")
        .args(["pkcs12", "-export", "-passout", "env:P12_PASSWORD"])
        .args(["-inkey", &path(&signing.join("agency.key.pem"))])
        .args(["-in", &path(&signing.join("agency.pem"))])
        .args(["-out", &path(&p12)])
        .env("P12_PASSWORD", "mật khẩu")
        .output()
        .expect("openssl pkcs12");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );

    for ext in ["xml", "json"] {
        // The sample approval without its signatures: strip them with the gateway's own reader of the samples.
        let signed_sample = std::fs::read_to_string(
            samples().join(format!("valid/PheDuyetDuLieu-01-hai-ho-so.{ext}")),
        )
        .expect("sample");
        let unsigned = if ext == "xml" {
            let start = signed_sample.find("<ds:Signature").expect("signature");
            let end =
                signed_sample.rfind("</ds:Signature>").expect("end") + "</ds:Signature>".len();
            format!("{}{}", &signed_sample[..start], &signed_sample[end..])
        } else {
            let mut v: serde_json::Value = serde_json::from_str(&signed_sample).expect("json");
            v["PheDuyetDuLieu"]
                .as_object_mut()
                .expect("object")
                .remove("ChuKySo");
            serde_json::to_string_pretty(&v).expect("text")
        };
        let packet = dir.path().join(format!("approval.{ext}"));
        std::fs::write(&packet, unsigned).expect("write");
        let p = path(&packet);
        let (code, _, err) = run(
            &[
                "sign",
                "--key",
                &path(&signing.join("person.key.pem")),
                "--cert",
                &path(&signing.join("person.pem")),
                "--out",
                &p,
                &p,
            ],
            &[],
        );
        assert_eq!(code, Some(0), "{err}");
        let (code, _, err) = run(
            &[
                "sign",
                "--p12",
                &path(&p12),
                "--password-env",
                "P12_PASSWORD",
                "--out",
                &p,
                &p,
            ],
            &[("P12_PASSWORD", "mật khẩu")],
        );
        assert_eq!(code, Some(0), "{err}");
        let ca = path(&signing.join("ca.pem"));
        let (code, out, err) = run(&["verify", "--ca", &ca, "--agency", H29, "--json", &p], &[]);
        assert_eq!(code, Some(0), "{out}{err}");
        let verdict: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
        assert_eq!(verdict["approved"], true, "{verdict}");
        assert_eq!(verdict["agency"]["uris"][0], format!("urn:lgsp:id:{H29}"));
        if ext == "xml" && tool("xmlsec1") {
            for i in 1..=2 {
                let ok = Command::new("xmlsec1")
                    .args([
                        "--verify",
                        "--trusted-pem",
                        &ca,
                        "--enabled-key-data",
                        "x509",
                    ])
                    .args([
                        "--node-xpath",
                        &format!("(//*[local-name()='Signature'])[{i}]"),
                    ])
                    .arg(&p)
                    .output()
                    .expect("xmlsec1");
                assert!(
                    ok.status.success(),
                    "{}",
                    String::from_utf8_lossy(&ok.stderr)
                );
            }
        }
        // Sent by another agency: its signature is not theirs. Changed after signing: both digests break.
        let (code, out, _) = run(
            &["verify", "--ca", &ca, "--agency", "000.00.00.H26", &p],
            &[],
        );
        assert_eq!(code, Some(1), "{out}");
        assert!(out.contains("[signature.wrong_agency]"), "{out}");
        let changed = dir.path().join(format!("changed.{ext}"));
        let text = std::fs::read_to_string(&packet).expect("signed");
        std::fs::write(
            &changed,
            text.replacen("HS-2026-10-0002", "HS-2026-10-0009", 1),
        )
        .expect("write");
        let (code, out, _) = run(&["verify", "--ca", &ca, &path(&changed)], &[]);
        assert_eq!(code, Some(1), "{out}");
        assert_eq!(
            out.matches("[signature.digest_mismatch]").count(),
            2,
            "{out}"
        );
    }
    // A wrong PKCS#12 password is a clear error, not a panic.
    let (code, _, err) = run(
        &[
            "sign",
            "--p12",
            &path(&p12),
            "--password-env",
            "P12_PASSWORD",
            &path(&dir.path().join("approval.xml")),
        ],
        &[("P12_PASSWORD", "sai")],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("the key cannot be read"), "{err}");
}
