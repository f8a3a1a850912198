//! The committed sample approvals (`schemas/cbccvc/samples/valid/PheDuyetDuLieu-*`) are really signed: by the
//! sample person and agency of `schemas/cbccvc/samples/signing/`, and verify against that sample CA only.

use lgsp_sign::{Policy, TrustStore, Window};
use rustls_pki_types::CertificateDer;
use std::path::PathBuf;

fn samples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../schemas/cbccvc/samples")
}

fn policy(ca_pem: &[u8]) -> Policy {
    let ca = lgsp_sign::xml::pem_certificates(ca_pem).expect("pem");
    let ca: Vec<CertificateDer<'_>> = ca.into_iter().map(CertificateDer::from).collect();
    Policy {
        trust: TrustStore::new(&ca, &[]).expect("trust"),
        identity_prefix: "urn:lgsp:id:".into(),
        window: Window::default(),
    }
}

#[test]
fn every_valid_sample_approval_verifies_against_the_sample_ca_and_no_other() {
    let ca = std::fs::read(samples().join("signing/ca.pem")).expect("sample CA");
    let sample_ca = policy(&ca);
    // Another CA (the person's own certificate is no CA: a chain to it is refused).
    let stranger = policy(&std::fs::read(samples().join("signing/agency.pem")).expect("pem"));
    let mut seen = 0;
    for e in std::fs::read_dir(samples().join("valid")).expect("valid") {
        let path = e.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        if !name.starts_with("PheDuyetDuLieu-") {
            continue;
        }
        seen += 1;
        let bytes = std::fs::read(&path).expect("sample");
        let json = name.ends_with(".json");
        let verify = |p: &Policy| {
            if json {
                p.verify_json(&bytes, Some("000.00.00.H29"), None)
            } else {
                p.verify_xml(&bytes, Some("000.00.00.H29"), None)
            }
        };
        let approval = verify(&sample_ca).unwrap_or_else(|v| panic!("{name}: {v:?}"));
        assert_eq!(approval.month, "2026-10", "{name}");
        let refused = verify(&stranger).expect_err(&name);
        assert!(
            refused.iter().all(|v| v.rule == "signature.untrusted"),
            "{name}: {refused:?}"
        );
    }
    assert_eq!(seen, 6, "three approvals, each as XML and JSON");
}
