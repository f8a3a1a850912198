//! Trial mode (kết nối thử nghiệm) end to end over real TLS: trial traffic goes to the route's trial upstream (the
//! emulator) and never to production, trial answers carry fuller diagnostics, and an agency in trial may use
//! trial keys only.

use futures_util::FutureExt;
use lgsp_testkit::*;

const TRIAL_G09: &str = "lgsp_dev_000.00.00.G09_trial";
const TRIAL_H29: &str = "lgsp_dev_000.00.00.H29_trial";
const PRODUCTION_H29: &str = "lgsp_dev_000.00.00.H29_production";

/// agency → LGSP, whose production upstream is `held` (it records arrivals and never answers) and whose packet
/// routes send trial traffic straight to the emulator.
struct TrialSetup {
    pki: TestPki,
    emulator: lgsp_proxy::Gateway,
    held: HeldUpstream,
    lgsp: lgsp_proxy::Gateway,
}

async fn setup() -> TrialSetup {
    let pki = TestPki::new();
    let emulator = lgsp_proxy::Gateway::start(&parse(&pki, &emulator_config(&pki)))
        .await
        .expect("emulator");
    let emu = emulator.emulator.as_ref().expect("emulator addr").0;
    let held = HeldUpstream::start(&pki).await;
    let mut text = hop_config(&pki, "lgsp", "/lgsp/v1", held.addr, "/ndxp/v1", &[]);
    for t in ["HoSoCBCCVC", "BienChe", "PheDuyetDuLieu", "BienDong"] {
        text = text.replace(
            &format!("message_type = \"{t}\"\n"),
            &format!(
                "message_type = \"{t}\"\ntrial_upstream = \"https://localhost:{}/cbccvc/v1/{t}\"\n",
                emu.port()
            ),
        );
    }
    let lgsp = lgsp_proxy::Gateway::start(&parse(&pki, &text))
        .await
        .expect("lgsp");
    TrialSetup {
        pki,
        emulator,
        held,
        lgsp,
    }
}

fn xml(key: &str) -> Vec<(&str, &str)> {
    vec![("x-api-key", key), ("content-type", "application/xml")]
}

#[tokio::test]
async fn trial_traffic_reaches_the_emulator_and_never_production() {
    let s = setup().await;
    let url = hop_url(&s.lgsp, "lgsp", "/lgsp/v1/HoSoCBCCVC");
    let packet = sample("valid/HoSoCBCCVC-01-day-du.xml");
    let g09 = TestClient::new(&s.pki, Some(AGENCY_TRIAL), true);
    let packet_g09 = packet.replace("000.00.00.H29", "000.00.00.G09");
    let a = g09
        .send("POST", &url, &xml(TRIAL_G09), &packet_g09)
        .await
        .expect("trial request");
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let receipt = a.json();
    assert_eq!(receipt["mode"], "trial");
    assert_eq!(receipt["hops"], "lgsp");
    assert_eq!(receipt["agency"], "000.00.00.G09");
    // The diagnostics a trial answer carries: its mode, who answered, each hop's time.
    let header = |name: &str| {
        a.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(header("x-lgsp-mode"), "trial");
    assert_eq!(header("x-lgsp-answered-by"), "emulator");
    let timing = header("server-timing");
    assert!(
        timing.starts_with("emulator;dur=") && timing.contains(", lgsp;dur="),
        "{timing}"
    );

    // An official agency tests with its trial key the same way.
    let h29 = TestClient::new(&s.pki, Some(AGENCY_OK), false);
    let a = h29
        .send("POST", &url, &xml(TRIAL_H29), &packet)
        .await
        .expect("trial request");
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["mode"], "trial");
    let stored = s.emulator.emulator.as_ref().expect("emulator").1.stored();
    assert_eq!(stored, 2);

    // A route without a trial upstream refuses trial traffic rather than sending it to production.
    let a = h29
        .send(
            "GET",
            &hop_url(
                &s.lgsp,
                "lgsp",
                "/lgsp/v1/BienNhan/0190b1a4-0000-7000-8000-000000000000",
            ),
            &[("x-api-key", TRIAL_H29)],
            "",
        )
        .await
        .expect("receipt look-up");
    assert_eq!(a.status, 403);
    assert_eq!(a.json()["code"], "trial.not_offered");
    assert_eq!(
        a.headers.get("x-lgsp-answered-by").map(|v| v.as_bytes()),
        Some(&b"lgsp"[..])
    );

    // The production upstream saw none of it (a request would have left a notification behind).
    assert!(
        s.held.arrived.notified().now_or_never().is_none(),
        "trial traffic reached the production upstream"
    );
    let trial_requests = s
        .lgsp
        .metrics
        .requests
        .with_label_values(&["lgsp", "HoSoCBCCVC", "000.00.00.G09", "trial", "200"])
        .get();
    assert_eq!(trial_requests, 1);
    s.lgsp.shutdown().await;
    s.emulator.shutdown().await;
}

#[tokio::test]
async fn trial_answers_list_every_error_production_answers_stop_at_max_errors() {
    let s = setup().await;
    let url = hop_url(&s.lgsp, "lgsp", "/lgsp/v1/HoSoCBCCVC");
    // Thirty periods of work, each with an impossible date: 30 errors, past the default max_errors (20).
    let entry = "  <QuaTrinhCongTac>\n    <NgayBatDau>2020-13-01</NgayBatDau>\n    <DonViCongTac>Sở Nội vụ</DonViCongTac>\n  </QuaTrinhCongTac>\n";
    let packet = sample("valid/HoSoCBCCVC-02-toi-thieu.xml");
    let at = packet.find("</HoSoCBCCVC>").expect("root end");
    let bad = format!("{}{}{}", &packet[..at], entry.repeat(30), &packet[at..]);
    let client = TestClient::new(&s.pki, Some(AGENCY_OK), true);

    let production = client
        .send("POST", &url, &xml(PRODUCTION_H29), &bad)
        .await
        .expect("production request");
    assert_eq!(production.status, 422);
    let p = production.json();
    assert_eq!(p["errors"].as_array().map(Vec::len), Some(20), "{p}");
    assert!(production.headers.get("server-timing").is_none());

    let trial = client
        .send("POST", &url, &xml(TRIAL_H29), &bad)
        .await
        .expect("trial request");
    assert_eq!(trial.status, 422);
    let t = trial.json();
    let errors = t["errors"].as_array().cloned().unwrap_or_default();
    assert!(errors.len() >= 30, "{} errors: {t}", errors.len());
    assert_eq!(
        errors[29]["path"],
        "/HoSoCBCCVC/QuaTrinhCongTac[30]/NgayBatDau"
    );
    assert_eq!(
        trial
            .headers
            .get("x-lgsp-answered-by")
            .map(|v| v.as_bytes()),
        Some(&b"lgsp"[..])
    );
    assert!(s.held.arrived.notified().now_or_never().is_none());
    s.lgsp.shutdown().await;
    s.emulator.shutdown().await;
}

/// Trial traffic may also travel the whole chain: the LGSP's trial upstream is the NDXP, whose trial upstream is
/// the emulator. The answer then times every hop, innermost first.
#[tokio::test]
async fn trial_answers_time_every_hop_of_the_chain() {
    let pki = TestPki::new();
    let emulator = lgsp_proxy::Gateway::start(&parse(&pki, &emulator_config(&pki)))
        .await
        .expect("emulator");
    let emu = emulator.emulator.as_ref().expect("emulator addr").0;
    let with_trial = |text: String, to: &str| {
        let mut text = text;
        for t in ["HoSoCBCCVC", "BienChe", "PheDuyetDuLieu", "BienDong"] {
            text = text.replace(
                &format!("message_type = \"{t}\"\n"),
                &format!("message_type = \"{t}\"\ntrial_upstream = \"{to}/{t}\"\n"),
            );
        }
        text
    };
    let ndxp_text = hop_config(&pki, "ndxp", "/ndxp/v1", emu, "/cbccvc/v1", &["LGSP-DEV"]);
    let ndxp = lgsp_proxy::Gateway::start(&parse(
        &pki,
        &with_trial(
            ndxp_text,
            &format!("https://localhost:{}/cbccvc/v1", emu.port()),
        ),
    ))
    .await
    .expect("ndxp");
    let ndxp_addr = ndxp.hop_addr("ndxp").expect("ndxp addr");
    let lgsp_text = hop_config(&pki, "lgsp", "/lgsp/v1", ndxp_addr, "/ndxp/v1", &[]);
    let lgsp = lgsp_proxy::Gateway::start(&parse(
        &pki,
        &with_trial(
            lgsp_text,
            &format!("https://localhost:{}/ndxp/v1", ndxp_addr.port()),
        ),
    ))
    .await
    .expect("lgsp");

    let client = TestClient::new(&pki, Some(AGENCY_OK), true);
    let a = client
        .send(
            "POST",
            &hop_url(&lgsp, "lgsp", "/lgsp/v1/BienChe"),
            &xml(TRIAL_H29),
            &sample("valid/BienChe-01-hai-ngach.xml"),
        )
        .await
        .expect("trial request");
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let receipt = a.json();
    assert_eq!(
        (&receipt["mode"], &receipt["hops"]),
        (
            &serde_json::json!("trial"),
            &serde_json::json!("lgsp, ndxp")
        )
    );
    let timing = a
        .headers
        .get("server-timing")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let hops: Vec<&str> = timing
        .split(", ")
        .map(|entry| entry.split(';').next().unwrap_or_default())
        .collect();
    assert_eq!(hops, ["emulator", "ndxp", "lgsp"], "{timing}");
    assert_eq!(
        a.headers.get("x-lgsp-answered-by").map(|v| v.as_bytes()),
        Some(&b"emulator"[..])
    );
    lgsp.shutdown().await;
    ndxp.shutdown().await;
    emulator.shutdown().await;
}
