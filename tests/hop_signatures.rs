//! Every hop's transaction signed (RFC 9421), end to end over real TLS: the LGSP signs what it forwards, the NDXP
//! verifies it with the LGSP's certificate before trusting its hop headers and keeps the signature in its journal,
//! the NDXP signs again, and the national endpoint's emulator verifies that and says so in its receipt.

use lgsp_testkit::*;

const KEY_H29: &str = "lgsp_dev_000.00.00.H29_production";

#[tokio::test]
async fn each_hop_signs_the_next_verifies_and_the_journal_keeps_the_proof() {
    let chain = Chain::start().await;
    let (pki, lgsp, ndxp) = (&chain.pki, &chain.lgsp, &chain.ndxp);

    let body = sample("valid/HoSoCBCCVC-01-day-du.xml");
    let a = TestClient::new(pki, Some(AGENCY_OK), true)
        .send(
            "POST",
            &hop_url(lgsp, "lgsp", "/lgsp/v1/HoSoCBCCVC"),
            &[("x-api-key", KEY_H29), ("content-type", "application/xml")],
            &body,
        )
        .await
        .expect("answer");
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let receipt = a.json();
    // The national endpoint verified the NDXP's signature over what it received.
    assert_eq!(receipt["hop_signature"]["status"], "valid", "{receipt}");
    assert_eq!(receipt["hop_signature"]["keyid"], "NDXP-DEV");
    let message_id = receipt["message_id"]
        .as_str()
        .expect("message id")
        .to_owned();

    // The NDXP's journal keeps the LGSP's signature with what it covered; checked again later with the LGSP's
    // certificate alone, it still verifies, and proves the LGSP sent this body for this agency.
    let record = journal_records_once(&chain.ndxp_journal, "the accepted record", |r| {
        r.iter().any(|l| l["record"]["kind"] == "accepted")
    })
    .await
    .into_iter()
    .find(|l| l["record"]["kind"] == "accepted")
    .expect("the accepted record");
    let sig = &record["record"]["hop_signature"];
    assert_eq!(sig["keyid"], "LGSP-DEV", "{record}");
    assert_eq!(sig["covered"]["x-lgsp-message-id"], message_id.as_str());
    assert_eq!(sig["covered"]["x-lgsp-client"], H29);
    assert_eq!(
        sig["covered"]["content-digest"],
        lgsp_sign::http::content_digest(body.as_bytes()).as_str()
    );
    let cert = pki.path("lgsp-client.pem");
    let again = recorded_hop_signature_verifies(sig, &cert, &[]);
    assert!(again.is_ok(), "{again:?}");
    // The same record naming another agency no longer verifies: the proof is bound to what was sent.
    assert!(
        recorded_hop_signature_verifies(sig, &cert, &[("x-lgsp-client", "000.00.00.H26")]).is_err()
    );

    // A relay by hand that names a body other than the one it signed: refused at the NDXP, nothing delivered.
    let url = hop_url(ndxp, "ndxp", "/ndxp/v1/HoSoCBCCVC");
    let headers = [("x-lgsp-client", H29), ("content-type", "application/xml")];
    let signature = peer_signature(pki, "lgsp-client", "POST", &url, &headers, body.as_bytes());
    let mut all: Vec<(&str, &str)> = headers.to_vec();
    all.extend(signature.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let other = body.replace("Nguyễn Văn An", "Nguyễn Văn Ân");
    let a = TestClient::new(pki, Some("lgsp-client"), true)
        .send("POST", &url, &all, &other)
        .await
        .expect("answer");
    assert_eq!(a.status, 401, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.json()["code"], "hop.signature_invalid");
    assert_eq!(
        ndxp.metrics
            .auth_failures
            .with_label_values(&["ndxp", "hop_signature_invalid"])
            .get(),
        1
    );
    chain.shutdown().await;
}
