//! `lgsp-gateway probe` against a real chain: every step passes with good credentials, and each step fails in
//! turn — with the message that names the cause and the fix.

use std::path::PathBuf;
use std::time::Duration;

use lgsp_probe::{Outcome, ProbeOptions, Report, probe};
use lgsp_testkit::*;

const KEY_H29: &str = "lgsp_dev_000.00.00.H29_production";

fn options(chain: &Chain, identity: &str) -> ProbeOptions {
    ProbeOptions {
        url: chain.lgsp_url("/lgsp/v1"),
        cert: chain.pki.path(&format!("{identity}.pem")),
        key: chain.pki.path(&format!("{identity}.key")),
        ca: chain.pki.path("ca.pem"),
        api_key: KEY_H29.into(),
        sample: Some(sample_path("valid/HoSoCBCCVC-01-day-du.xml")),
        message_type: None,
        timeout: Duration::from_secs(5),
    }
}

fn sample_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("schemas/cbccvc/samples")
        .join(name)
}

/// The one failing step: its name, detail and fix; every step before it passed, every one after was skipped.
fn failure(r: &Report) -> (&'static str, String, String) {
    assert!(!r.ok, "{r:#?}");
    let i = r
        .steps
        .iter()
        .position(|s| s.outcome == Outcome::Fail)
        .expect("a failed step");
    assert!(
        r.steps[..i].iter().all(|s| s.outcome == Outcome::Pass),
        "{r:#?}"
    );
    assert!(
        r.steps[i + 1..]
            .iter()
            .all(|s| s.outcome == Outcome::Skipped),
        "{r:#?}"
    );
    let s = &r.steps[i];
    (s.name, s.detail.clone(), s.fix.clone().unwrap_or_default())
}

#[tokio::test]
async fn every_step_passes_then_each_fails_in_turn_with_its_fix() {
    let chain = Chain::start().await;

    let r = probe(&options(&chain, AGENCY_OK)).await;
    assert!(r.ok, "{r:#?}");
    let names: Vec<&str> = r.steps.iter().map(|s| s.name).collect();
    assert_eq!(
        names,
        [
            "files",
            "tcp",
            "tls",
            "client_certificate",
            "api_key",
            "route",
            "sample",
            "round_trip"
        ]
    );
    assert!(
        r.steps[2].detail.contains("chains to the CA"),
        "{}",
        r.steps[2].detail
    );
    assert!(
        r.steps[7].detail.starts_with("receipt "),
        "{}",
        r.steps[7].detail
    );

    // Without a sample the last two steps are skipped, and the probe still passes.
    let mut o = options(&chain, AGENCY_OK);
    o.sample = None;
    let r = probe(&o).await;
    assert!(r.ok, "{r:#?}");
    assert_eq!(r.steps[6].outcome, Outcome::Skipped);

    let mut o = options(&chain, AGENCY_OK);
    o.key = chain.pki.path("missing.key");
    let (step, detail, _) = failure(&probe(&o).await);
    assert_eq!(step, "files");
    assert!(detail.contains("--key"), "{detail}");

    let mut o = options(&chain, AGENCY_OK);
    o.url = format!("https://localhost:{}/lgsp/v1", closed_port().await.port());
    let (step, detail, fix) = failure(&probe(&o).await);
    assert_eq!(step, "tcp");
    assert!(detail.contains("cannot connect"), "{detail}");
    assert!(fix.contains("firewall"), "{fix}");

    // The gateway's certificate checked against a CA that did not issue it.
    let mut o = options(&chain, AGENCY_OK);
    o.ca = chain.pki.path(&format!("{AGENCY_WRONG_CA}.pem"));
    let (step, detail, fix) = failure(&probe(&o).await);
    assert_eq!(step, "tls");
    assert!(detail.contains("does not chain to the CA"), "{detail}");
    assert!(fix.contains("--ca"), "{fix}");

    // Client certificates told apart by the alert the gateway sends.
    for (identity, expected) in [
        (AGENCY_WRONG_CA, "does not trust the CA"),
        (AGENCY_EXPIRED, "has expired"),
        (AGENCY_REVOKED, "has been revoked"),
    ] {
        let (step, detail, _) = failure(&probe(&options(&chain, identity)).await);
        assert_eq!(step, "client_certificate", "{identity}");
        assert!(detail.contains(expected), "{identity}: {detail}");
    }

    let mut o = options(&chain, AGENCY_OK);
    o.api_key = "lgsp_prod_not_a_key".into();
    let (step, detail, fix) = failure(&probe(&o).await);
    assert_eq!(step, "api_key");
    assert!(detail.contains("auth.unknown_key"), "{detail}");
    assert!(fix.contains("--api-key"), "{fix}");
    let mut o = options(&chain, AGENCY_OK);
    o.api_key = "lgsp_dev_000.00.00.H26_production".into();
    let (step, detail, _) = failure(&probe(&o).await);
    assert_eq!(step, "api_key");
    assert!(
        detail.contains("auth.key_not_bound_to_certificate"),
        "{detail}"
    );

    let mut o = options(&chain, AGENCY_OK);
    o.url = chain.lgsp_url("/lgsp/v9");
    let (step, detail, fix) = failure(&probe(&o).await);
    assert_eq!(step, "route");
    assert!(detail.contains("route.not_found"), "{detail}");
    assert!(fix.contains("API prefix"), "{fix}");

    let mut o = options(&chain, AGENCY_OK);
    o.sample = Some(sample_path(
        "invalid/HoSoCBCCVC-56-cccd.province-ma-tinh-003.xml",
    ));
    let (step, detail, _) = failure(&probe(&o).await);
    assert_eq!(step, "sample");
    assert!(detail.contains("cccd.province"), "{detail}");

    // Everything up to the gateway works, but the national endpoint is down: no receipt.
    let o = options(&chain, AGENCY_OK);
    let Chain {
        pki,
        emulator,
        ndxp,
        lgsp,
        ..
    } = chain;
    emulator.shutdown().await;
    let (step, detail, _) = failure(&probe(&o).await);
    assert_eq!(step, "round_trip");
    assert!(detail.contains("upstream.unreachable"), "{detail}");
    lgsp.shutdown().await;
    ndxp.shutdown().await;
    drop(pki);
}
