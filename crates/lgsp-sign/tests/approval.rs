//! The approval policy, one rule at a time: each signature problem is its own rule code on its own signature.

mod common;

use common::*;
use lgsp_sign::xml::{SigningKey, sign};
use lgsp_sign::{Policy, TrustStore, Window};
use rcgen::KeyUsagePurpose;
use rustls_pki_types::CertificateDer;
use time::{Duration, OffsetDateTime, macros::datetime};

const MONTH: &str = "2026-10";
const APPROVED: &str = "2026-10-30T10:00:00+07:00";
const RECEIVED: OffsetDateTime = datetime!(2026-10-31 12:00 +7);

struct Pki {
    ca: Ca,
    person: Leaf,
    agency: Leaf,
}

fn pki() -> Pki {
    let ca = ca("Signing CA");
    let person = ca.issue(Spec::person("Lê Văn Cường", 10));
    let agency = ca.issue(Spec::agency(AGENCY, 11));
    Pki { ca, person, agency }
}

fn policy(ca: &Ca, crls: &[Vec<u8>]) -> Policy {
    Policy {
        trust: TrustStore::new(&[CertificateDer::from(ca.der.clone())], crls).expect("trust"),
        identity_prefix: PREFIX.into(),
        window: Window::default(),
    }
}

fn key(leaf: &Leaf) -> SigningKey {
    SigningKey::from_pem(leaf.key_pem.as_bytes(), leaf.cert_pem.as_bytes(), false).expect("key")
}

fn signed_by(text: &str, leaves: &[&Leaf]) -> String {
    leaves
        .iter()
        .fold(text.to_owned(), |t, l| sign(&t, &key(l)).expect("sign"))
}

/// The rule codes of the verdict, in order; empty when the approval is accepted.
fn rules(policy: &Policy, packet: &str, agency: &str) -> Vec<&'static str> {
    match policy.verify_xml(packet.as_bytes(), Some(agency), Some(RECEIVED)) {
        Ok(_) => Vec::new(),
        Err(v) => v.iter().map(|v| v.rule).collect(),
    }
}

#[test]
fn both_signatures_in_either_order_make_an_approval() {
    let p = pki();
    let policy = policy(&p.ca, &[]);
    let text = approval(MONTH, APPROVED);
    for order in [[&p.person, &p.agency], [&p.agency, &p.person]] {
        let packet = signed_by(&text, &order);
        let approval = policy
            .verify_xml(packet.as_bytes(), Some(AGENCY), Some(RECEIVED))
            .expect("accepted");
        assert_eq!(approval.month, MONTH);
        assert_eq!(approval.person.common_name.as_deref(), Some("Lê Văn Cường"));
        assert_eq!(approval.agency.uris, [format!("{PREFIX}{AGENCY}")]);
        assert_eq!(approval.person.serial, "0a");
    }
}

#[test]
fn rsa_and_rsa_pss_keys_sign_too() {
    let ca = ca("Signing CA");
    let person = ca.issue(Spec {
        rsa: true,
        ..Spec::person("Trần Thị Bình", 20)
    });
    let agency = ca.issue(Spec {
        rsa: true,
        ..Spec::agency(AGENCY, 21)
    });
    let pss = SigningKey::from_pem(person.key_pem.as_bytes(), person.cert_pem.as_bytes(), true)
        .expect("key");
    assert_eq!(pss.method, lgsp_sign::xml::RSA_PSS_SHA256);
    let once = sign(&approval(MONTH, APPROVED), &pss).expect("pss");
    let packet = sign(&once, &key(&agency)).expect("pkcs1");
    assert!(packet.contains(lgsp_sign::xml::RSA_SHA256));
    assert_eq!(
        rules(&policy(&ca, &[]), &packet, AGENCY),
        Vec::<&str>::new()
    );
}

#[test]
fn a_changed_packet_breaks_the_digest_of_both_signatures() {
    let p = pki();
    let packet = signed_by(&approval(MONTH, APPROVED), &[&p.person, &p.agency]);
    let changed = packet.replace("HS-0002", "HS-0009");
    assert_eq!(
        rules(&policy(&p.ca, &[]), &changed, AGENCY),
        ["signature.digest_mismatch", "signature.digest_mismatch"]
    );
}

#[test]
fn another_certificate_in_key_info_makes_the_signature_invalid() {
    let p = pki();
    let other = p.ca.issue(Spec::person("Phạm Văn Dũng", 12));
    let packet = signed_by(&approval(MONTH, APPROVED), &[&p.person, &p.agency]);
    let b64 = |der: &[u8]| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(der)
    };
    let swapped = packet.replace(&b64(&p.person.der), &b64(&other.der));
    assert_ne!(swapped, packet);
    assert_eq!(
        rules(&policy(&p.ca, &[]), &swapped, AGENCY),
        ["signature.invalid"]
    );
}

#[test]
fn trust_rests_on_the_signing_ca_its_crl_validity_and_key_usage() {
    let p = pki();
    let text = approval(MONTH, APPROVED);
    // Another CA: a valid signature by an unknown signer.
    let stranger = ca("Stranger CA").issue(Spec::person("Lê Văn Cường", 10));
    let packet = signed_by(&text, &[&stranger, &p.agency]);
    assert_eq!(
        rules(&policy(&p.ca, &[]), &packet, AGENCY),
        ["signature.untrusted"]
    );
    // Revoked by the CA's CRL.
    let packet = signed_by(&text, &[&p.person, &p.agency]);
    let crl = p.ca.crl(&[p.person.serial]);
    assert_eq!(
        rules(&policy(&p.ca, &[crl]), &packet, AGENCY),
        ["signature.revoked"]
    );
    // Not valid when it signed (expired before ThoiDiemPheDuyet).
    let expired = p.ca.issue(Spec {
        not_before: datetime!(2025-01-01 0:00 UTC),
        not_after: datetime!(2026-09-30 0:00 UTC),
        ..Spec::person("Lê Văn Cường", 13)
    });
    let packet = signed_by(&text, &[&expired, &p.agency]);
    assert_eq!(
        rules(&policy(&p.ca, &[]), &packet, AGENCY),
        ["signature.expired"]
    );
    // A certificate whose key usage does not allow signing documents.
    let tls_only = p.ca.issue(Spec {
        usages: vec![KeyUsagePurpose::KeyEncipherment],
        ..Spec::person("Lê Văn Cường", 14)
    });
    let packet = signed_by(&text, &[&tls_only, &p.agency]);
    assert_eq!(
        rules(&policy(&p.ca, &[]), &packet, AGENCY),
        ["signature.key_usage"]
    );
}

#[test]
fn the_agency_signature_must_be_the_senders_own() {
    let p = pki();
    let other = p.ca.issue(Spec::agency(OTHER_AGENCY, 15));
    let packet = signed_by(&approval(MONTH, APPROVED), &[&p.person, &other]);
    let policy = policy(&p.ca, &[]);
    assert_eq!(rules(&policy, &packet, AGENCY), ["signature.wrong_agency"]);
    // The same packet is the other agency's approval when that agency sends it.
    assert_eq!(rules(&policy, &packet, OTHER_AGENCY), Vec::<&str>::new());
}

#[test]
fn one_signature_of_each_role() {
    let p = pki();
    let text = approval(MONTH, APPROVED);
    let policy = policy(&p.ca, &[]);
    assert_eq!(
        rules(&policy, &signed_by(&text, &[&p.person]), AGENCY),
        ["signature.missing"]
    );
    assert_eq!(
        rules(&policy, &signed_by(&text, &[&p.agency]), AGENCY),
        ["signature.missing"]
    );
    let second = p.ca.issue(Spec::person("Phạm Văn Dũng", 16));
    assert_eq!(
        rules(&policy, &signed_by(&text, &[&p.person, &second]), AGENCY),
        ["signature.duplicate"]
    );
}

#[test]
fn the_approval_window_is_the_months_last_days_and_the_allowed_lateness() {
    let p = pki();
    let mut policy = policy(&p.ca, &[]);
    let at = |approved: &str, received: OffsetDateTime, policy: &Policy| {
        let packet = signed_by(&approval(MONTH, approved), &[&p.person, &p.agency]);
        match policy.verify_xml(packet.as_bytes(), Some(AGENCY), Some(received)) {
            Ok(_) => "accepted".to_owned(),
            Err(v) => format!("{} {}", v[0].rule, v[0].path),
        }
    };
    // The last 5 days of October (Vietnam time): 27 Oct 00:00 to 1 Nov 00:00.
    assert_eq!(
        at("2026-10-27T00:00:00+07:00", RECEIVED, &policy),
        "accepted"
    );
    assert_eq!(
        at(
            "2026-10-31T16:59:59Z",
            RECEIVED + Duration::hours(12),
            &policy
        ),
        "accepted"
    );
    let early = "signature.outside_window /PheDuyetDuLieu/ThoiDiemPheDuyet";
    assert_eq!(at("2026-10-26T23:59:59+07:00", RECEIVED, &policy), early);
    assert_eq!(at("2026-11-01T00:00:00+07:00", RECEIVED, &policy), early);
    // Signed in the future of the gateway's clock.
    assert_eq!(at("2026-10-31T20:00:00+07:00", RECEIVED, &policy), early);
    // Arriving after the month ended: refused unless the operator allows that much lateness.
    let late = datetime!(2026-11-02 9:00 +7);
    assert_eq!(
        at(APPROVED, late, &policy),
        "signature.outside_window /PheDuyetDuLieu/KyPheDuyet"
    );
    policy.window.lateness = Duration::days(3);
    assert_eq!(at(APPROVED, late, &policy), "accepted");
    policy.window.days = 1;
    assert_eq!(at(APPROVED, late, &policy), early);
}

#[test]
fn each_problem_names_its_signature_and_the_fix() {
    let p = pki();
    let packet = signed_by(&approval(MONTH, APPROVED), &[&p.person, &p.agency]);
    let crl = p.ca.crl(&[p.agency.serial]);
    let v = policy(&p.ca, &[crl])
        .verify_xml(packet.as_bytes(), Some(AGENCY), Some(RECEIVED))
        .expect_err("revoked");
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].path, "/PheDuyetDuLieu/Signature[2]");
    assert!(
        v[0].message.contains("revoked") && v[0].message.contains("sign again"),
        "{}",
        v[0].message
    );
}

#[test]
fn a_key_that_is_not_the_certificates_is_refused_when_signing() {
    let p = pki();
    let wrong = SigningKey::from_pem(
        p.person.key_pem.as_bytes(),
        p.agency.cert_pem.as_bytes(),
        false,
    )
    .expect("loads");
    let e = sign(&approval(MONTH, APPROVED), &wrong).expect_err("mismatch");
    assert!(e.to_string().contains("does not belong"), "{e}");
}

#[test]
fn outside_the_profile_is_unsupported() {
    let p = pki();
    let packet = signed_by(&approval(MONTH, APPROVED), &[&p.person, &p.agency]);
    // A filter that subtracts data instead of signatures: still a valid signature, but not over the whole packet.
    let partial = packet.replacen(">//ds:Signature<", ">//ds:HoSo<", 1);
    let v = policy(&p.ca, &[])
        .verify_xml(partial.as_bytes(), Some(AGENCY), Some(RECEIVED))
        .expect_err("refused");
    assert_eq!(v[0].rule, "signature.unsupported", "{v:?}");
    assert_eq!(v[0].path, "/PheDuyetDuLieu/Signature[1]");
}

fn json_signed_by(text: &str, leaves: &[&Leaf]) -> String {
    let mut packet: serde_json::Value = serde_json::from_str(text).expect("json");
    for l in leaves {
        lgsp_sign::jws::sign(&mut packet, &key(l)).expect("sign");
    }
    serde_json::to_string_pretty(&packet).expect("text")
}

fn json_rules(policy: &Policy, packet: &str, agency: &str) -> Vec<&'static str> {
    match policy.verify_json(packet.as_bytes(), Some(agency), Some(RECEIVED)) {
        Ok(_) => Vec::new(),
        Err(v) => v.iter().map(|v| v.rule).collect(),
    }
}

#[test]
fn json_approvals_carry_the_same_two_signatures_as_jws() {
    let p = pki();
    let policy = policy(&p.ca, &[]);
    let text = approval_json(MONTH, APPROVED);
    for order in [[&p.person, &p.agency], [&p.agency, &p.person]] {
        let packet = json_signed_by(&text, &order);
        let approval = policy
            .verify_json(packet.as_bytes(), Some(AGENCY), Some(RECEIVED))
            .expect("accepted");
        assert_eq!(approval.agency.uris, [format!("{PREFIX}{AGENCY}")]);
        // What was signed is the canonical form: spacing and key order may change on the way.
        let value: serde_json::Value = serde_json::from_str(&packet).expect("json");
        let compact = serde_json::to_string(&value).expect("compact");
        assert_eq!(json_rules(&policy, &compact, AGENCY), Vec::<&str>::new());
    }
    let packet = json_signed_by(&text, &[&p.person, &p.agency]);
    assert_eq!(
        json_rules(&policy, &packet.replace("HS-0002", "HS-0009"), AGENCY),
        ["signature.digest_mismatch", "signature.digest_mismatch"]
    );
    assert_eq!(
        json_rules(&policy, &packet, OTHER_AGENCY),
        ["signature.wrong_agency"]
    );
    assert_eq!(
        json_rules(&policy, &json_signed_by(&text, &[&p.person]), AGENCY),
        ["signature.missing"]
    );
    let crl = p.ca.crl(&[p.person.serial]);
    assert_eq!(
        json_rules(&self::policy(&p.ca, &[crl]), &packet, AGENCY),
        ["signature.revoked"]
    );
}

#[test]
/// U+FF61 sorts before U+1F600 in UTF-8 but after it in UTF-16 (a surrogate pair, D83D): JCS uses UTF-16.
fn jcs_sorts_keys_by_utf16_and_escapes_as_ecmascript() {
    let v: serde_json::Value = serde_json::from_str(
        r#"{"b": [1, 2.0, "x\u0001\n\"é"], "a": {"\uff61": 1, "\ud83d\ude00": 2}, "c": null}"#,
    )
    .expect("json");
    assert_eq!(
        lgsp_sign::jws::canonical(&v),
        "{\"a\":{\"\u{1f600}\":2,\"\u{ff61}\":1},\"b\":[1,2,\"x\\u0001\\n\\\"é\"],\"c\":null}"
    );
}
