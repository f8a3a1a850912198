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
        let end = start
            + with[start..]
                .find("approval_lateness = \"40d\"\n")
                .expect("end")
            + 26;
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
