//! Signed approvals end to end over real TLS: the hop verifies both signatures of every approval against
//! `[signing]` and refuses each problem with 422 and its own rule, naming the signature.

use lgsp_testkit::*;

const KEY_H29: &str = "lgsp_dev_000.00.00.H29_production";
const KEY_H26: &str = "lgsp_dev_000.00.00.H26_production";

async fn post(chain: &Chain, who: &str, key: &str, json: bool, body: &str) -> Answer {
    let ctype = if json {
        "application/json"
    } else {
        "application/xml"
    };
    TestClient::new(&chain.pki, Some(who), true)
        .send(
            "POST",
            &chain.lgsp_url("/lgsp/v1/PheDuyetDuLieu"),
            &[("x-api-key", key), ("content-type", ctype)],
            body,
        )
        .await
        .expect("answer")
}

/// The rules of a 422's errors.
fn rules(a: &Answer) -> Vec<String> {
    assert_eq!(a.status, 422, "{}", String::from_utf8_lossy(&a.body));
    let p = a.json();
    assert_eq!(p["code"], "packet.invalid");
    p["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e["rule"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn failures(chain: &Chain, rule: &str) -> u64 {
    chain
        .lgsp
        .metrics
        .validation_failures
        .with_label_values(&["lgsp", "PheDuyetDuLieu", "PheDuyetDuLieu", rule])
        .get()
}

#[tokio::test]
async fn a_signed_approval_travels_and_each_problem_is_refused_with_its_rule() {
    let chain = Chain::start().await;
    for json in [false, true] {
        let good = signed_approval(&chain.pki, json);
        let a = post(&chain, AGENCY_OK, KEY_H29, json, &good).await;
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
        assert_eq!(a.json()["sha256"], lgsp_auth::sha256_hex(&good));

        // Changed after signing: both signatures break, each named.
        let changed = good.replacen("HS-2026-10-0002", "HS-2026-10-0009", 1);
        assert_ne!(changed, good);
        let a = post(&chain, AGENCY_OK, KEY_H29, json, &changed).await;
        assert_eq!(rules(&a), ["signature.digest_mismatch"; 2]);
        let element = if json { "ChuKySo" } else { "Signature" };
        assert_eq!(
            a.json()["errors"][1]["path"],
            format!("/PheDuyetDuLieu/{element}[2]")
        );

        // Only the approving person signed.
        let one = approval_signed_with(&chain.pki, json, |t| t, &["signing-person"]);
        assert_eq!(
            rules(&post(&chain, AGENCY_OK, KEY_H29, json, &one).await),
            ["signature.missing"]
        );

        // Approved in the middle of the month: outside the window of its last 5 days.
        let early = approval_signed_with(
            &chain.pki,
            json,
            |t| {
                let at = t.find("T12:00:00+07:00").expect("the approval time");
                format!("{}10{}", &t[..at - 2], &t[at..])
            },
            &["signing-person", "signing-agency"],
        );
        assert_eq!(
            rules(&post(&chain, AGENCY_OK, KEY_H29, json, &early).await),
            ["signature.outside_window"]
        );

        // H26 sends an approval of its own unit that H29's agency key signed.
        let foreign = approval_signed_with(
            &chain.pki,
            json,
            |t| t.replace("000.00.00.H29", "000.00.00.H26"),
            &["signing-person", "signing-agency"],
        );
        assert_eq!(
            rules(&post(&chain, AGENCY_OTHER, KEY_H26, json, &foreign).await),
            ["signature.wrong_agency"]
        );
    }
    assert_eq!(failures(&chain, "signature.digest_mismatch"), 2);
    assert_eq!(failures(&chain, "signature.wrong_agency"), 2);
    assert_eq!(failures(&chain, "signature.untrusted"), 0, "exported at 0");
    chain.shutdown().await;
}

#[tokio::test]
async fn a_signer_the_signing_ca_does_not_know_and_a_hop_without_signing_cas_are_refused() {
    let pki = TestPki::new();
    // The mTLS CA issued this agency signing certificate: it never vouches for a signature.
    let packet = approval_signed_with(&pki, false, |t| t, &["signing-person", SIGNER_FROM_MTLS_CA]);
    let upstream = HeldUpstream::start(&pki).await;
    let with = hop_config(&pki, "lgsp", "/lgsp/v1", upstream.addr, "/ndxp/v1", &[]);
    let without = {
        let start = with.find("[signing]\n").expect("[signing]");
        let last = "check_coverage = false\n";
        let end = start + with[start..].find(last).expect("end") + last.len();
        format!("{}{}", &with[..start], &with[end..])
    };
    for (text, expected) in [
        (with, "signature.untrusted"),
        (without, "signature.untrusted"),
    ] {
        let gw = lgsp_proxy::Gateway::start(&parse(&pki, &text))
            .await
            .expect("gateway");
        let a = TestClient::new(&pki, Some(AGENCY_OK), true)
            .send(
                "POST",
                &hop_url(&gw, "lgsp", "/lgsp/v1/PheDuyetDuLieu"),
                &[("x-api-key", KEY_H29), ("content-type", "application/xml")],
                &packet,
            )
            .await
            .expect("answer");
        assert_eq!(a.status, 422, "{}", String::from_utf8_lossy(&a.body));
        let p = a.json();
        assert_eq!(p["errors"][0]["rule"], expected, "{p}");
        gw.shutdown().await;
    }
}

/// A profile packet for `cccd` (the full sample, its SoCCCD and the name changed); `version` changes its content.
fn profile(cccd: &str, version: &str) -> String {
    sample("valid/HoSoCBCCVC-01-day-du.xml")
        .replace(
            "<SoCCCD>001090012345</SoCCCD>",
            &format!("<SoCCCD>{cccd}</SoCCCD>"),
        )
        .replace("Nguyễn Văn An", &format!("Nguyễn Văn {version}"))
}

#[tokio::test]
async fn an_approval_approves_the_last_profiles_sent_and_the_report_names_what_is_unapproved() {
    let pki = TestPki::new();
    let emulator = lgsp_proxy::Gateway::start(&parse(&pki, &emulator_config(&pki)))
        .await
        .expect("emulator");
    let emu = emulator.emulator.as_ref().expect("emulator").0;
    let text = hop_config(&pki, "lgsp", "/lgsp/v1", emu, "/cbccvc/v1", &[])
        .replace("check_coverage = false", "check_coverage = true");
    let gw = lgsp_proxy::Gateway::start(&parse(&pki, &text))
        .await
        .expect("gateway");
    let client = TestClient::new(&pki, Some(AGENCY_OK), true);
    let send = |path: &'static str, body: String| {
        let client = &client;
        let url = hop_url(&gw, "lgsp", path);
        async move {
            client
                .send(
                    "POST",
                    &url,
                    &[("x-api-key", KEY_H29), ("content-type", "application/xml")],
                    &body,
                )
                .await
                .expect("answer")
        }
    };
    // Two profiles reach the hop; the approval lists both with their SHA-256.
    let (p1, p2) = (
        profile("001090012341", "An"),
        profile("001090012342", "Bình"),
    );
    for p in [&p1, &p2] {
        let a = send("/lgsp/v1/HoSoCBCCVC", p.clone()).await;
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    }
    let (h1, h2) = (lgsp_auth::sha256_hex(&p1), lgsp_auth::sha256_hex(&p2));
    let approve = |first: &str, second: &str, cccd2: &str| {
        let (first, second, cccd2) = (first.to_owned(), second.to_owned(), cccd2.to_owned());
        approval_signed_with(
            &pki,
            false,
            move |t| {
                t.replace(&"1".repeat(64), &first)
                    .replace(&"2".repeat(64), &second)
                    .replace(
                        "<SoCCCD>001090012342</SoCCCD>",
                        &format!("<SoCCCD>{cccd2}</SoCCCD>"),
                    )
            },
            &["signing-person", "signing-agency"],
        )
    };
    let a = send("/lgsp/v1/PheDuyetDuLieu", approve(&h1, &h2, "001090012342")).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));

    // A profile that never reached the hop.
    let a = send("/lgsp/v1/PheDuyetDuLieu", approve(&h1, &h2, "001090099999")).await;
    assert_eq!(rules(&a), ["approval.unknown_profile"]);
    assert_eq!(
        a.json()["errors"][0]["path"],
        "/PheDuyetDuLieu/HoSo[2]/BamSHA256"
    );

    // The second profile changes after it was approved: approving the old version is refused, naming the new.
    let p2b = profile("001090012342", "Bích");
    assert_eq!(send("/lgsp/v1/HoSoCBCCVC", p2b.clone()).await.status, 200);
    let a = send("/lgsp/v1/PheDuyetDuLieu", approve(&h1, &h2, "001090012342")).await;
    assert_eq!(rules(&a), ["approval.changed_profile"]);
    let message = a.json()["errors"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(message.contains("replaced by message"), "{message}");
    // A hash that is no version of it at all.
    let a = send(
        "/lgsp/v1/PheDuyetDuLieu",
        approve(&h1, &"a".repeat(64), "001090012342"),
    )
    .await;
    assert_eq!(rules(&a), ["approval.changed_profile"]);
    assert_eq!(
        gw.metrics
            .validation_failures
            .with_label_values(&[
                "lgsp",
                "PheDuyetDuLieu",
                "PheDuyetDuLieu",
                "approval.changed_profile"
            ])
            .get(),
        2
    );

    // The journal keeps who approved what; its report names the profile still unapproved (the new version).
    let journal = lgsp_journal::Journal::open_reader(&journal_url_in(&text))
        .await
        .expect("journal");
    let now = time::OffsetDateTime::now_utc().to_offset(lgsp_sign::approval::VIETNAM);
    let this_month = now.date().replace_day(1).expect("day 1");
    let last = this_month.previous_day().expect("last month");
    let month = format!("{:04}-{:02}", last.year(), u8::from(last.month()));
    let from = last
        .replace_day(1)
        .expect("first")
        .midnight()
        .assume_offset(lgsp_sign::approval::VIETNAM);
    let to = now + time::Duration::days(1);
    let us = |t: time::OffsetDateTime| i64::try_from(t.unix_timestamp_nanos() / 1000).unwrap_or(0);
    let report = journal
        .approval_report(&month, us(from), us(to))
        .await
        .expect("report");
    assert_eq!(report.len(), 1, "{report:?}");
    assert_eq!(report[0].approvals.len(), 1);
    let approval = &report[0].approvals[0].approval;
    assert_eq!(approval["profiles"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        approval["person"]["subject"]
            .as_str()
            .map(|s| s.contains("Nguyễn Văn An")),
        Some(true)
    );
    let unapproved: Vec<(&str, &str)> = report[0]
        .unapproved
        .iter()
        .map(|p| (p.subject.as_str(), p.sha256.as_str()))
        .collect();
    let h2b = lgsp_auth::sha256_hex(&p2b);
    assert_eq!(unapproved, [("001090012342", h2b.as_str())]);
    gw.shutdown().await;
    emulator.shutdown().await;
}
