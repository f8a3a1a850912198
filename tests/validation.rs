//! Packet validation in the pipeline, end to end over real TLS: good packets travel byte for byte, bad ones are
//! answered at the first hop with every error and never reach the national endpoint.

use lgsp_testkit::*;

const KEY_H29: &str = "lgsp_dev_000.00.00.H29_production";

fn headers(ctype: &str) -> Vec<(&str, &str)> {
    vec![("x-api-key", KEY_H29), ("content-type", ctype)]
}

#[tokio::test]
async fn good_packets_of_every_type_and_format_travel_byte_for_byte() {
    let chain = Chain::start().await;
    let client = TestClient::new(&chain.pki, Some(AGENCY_OK), true);
    let cases = [
        (
            "HoSoCBCCVC",
            "valid/HoSoCBCCVC-01-day-du.xml",
            "application/xml",
        ),
        (
            "HoSoCBCCVC",
            "valid/HoSoCBCCVC-01-day-du.json",
            "application/json",
        ),
        (
            "BienChe",
            "valid/BienChe-01-hai-ngach.xml",
            "text/xml; charset=utf-8",
        ),
        (
            "BienChe",
            "valid/BienChe-01-hai-ngach.json",
            "application/json",
        ),
        (
            "PheDuyetDuLieu",
            "valid/PheDuyetDuLieu-01-hai-ho-so.xml",
            "application/xml",
        ),
        (
            "PheDuyetDuLieu",
            "valid/PheDuyetDuLieu-01-hai-ho-so.json",
            "application/json",
        ),
        (
            "BienDong",
            "valid/BienDong-02-luan-chuyen-thu-tu-khac.xml",
            "application/xml",
        ),
        (
            "BienDong",
            "valid/BienDong-02-luan-chuyen-thu-tu-khac.json",
            "application/vnd.cbccvc+json",
        ),
    ];
    for (t, file, ctype) in cases {
        // An approval is accepted only within its window: last month's, signed by the dev signing keys.
        let body = if t == "PheDuyetDuLieu" {
            signed_approval(&chain.pki, file.ends_with(".json"))
        } else {
            sample(file)
        };
        let a = client
            .send(
                "POST",
                &chain.lgsp_url(&format!("/lgsp/v1/{t}")),
                &headers(ctype),
                &body,
            )
            .await
            .unwrap();
        assert_eq!(
            a.status,
            200,
            "{file}: {}",
            String::from_utf8_lossy(&a.body)
        );
        let r = a.json();
        assert_eq!(
            r["sha256"],
            lgsp_auth::sha256_hex(&body),
            "{file} must arrive unchanged"
        );
        assert_eq!(r["message_type"], t);
    }
    chain.shutdown().await;
}

#[tokio::test]
async fn a_bad_packet_is_422_with_every_error_and_is_counted() {
    let chain = Chain::start().await;
    let client = TestClient::new(&chain.pki, Some(AGENCY_OK), false);
    let body = sample("invalid/HoSoCBCCVC-42-xsd.missing_element-CongTac-thieu-DonVi.xml")
        .replacen(
            "<HoVaTen>Nguyễn Văn An</HoVaTen>",
            "<HoVaTen>A</HoVaTen>",
            1,
        );
    let a = client
        .send(
            "POST",
            &chain.lgsp_url("/lgsp/v1/HoSoCBCCVC"),
            &headers("application/xml"),
            &body,
        )
        .await
        .unwrap();
    assert_eq!(a.status, 422);
    assert_eq!(a.headers["content-type"], "application/problem+json");
    let p = a.json();
    assert_eq!(p["code"], "packet.invalid");
    let errors = p["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2, "{p}");
    assert_eq!(errors[0]["rule"], "xsd.min_length");
    assert_eq!(errors[0]["path"], "/HoSoCBCCVC/HoVaTen");
    assert_eq!(errors[0]["line"], 5);
    assert!(errors[0]["column"].is_u64() && errors[0]["message"].is_string());
    assert_eq!(errors[1]["path"], "/HoSoCBCCVC/QuaTrinhCongTac[1]");
    assert_eq!(errors[1]["rule"], "xsd.missing_element");
    let m = &chain.lgsp.metrics.validation_failures;
    assert_eq!(
        m.with_label_values(&["lgsp", "HoSoCBCCVC", "HoSoCBCCVC", "xsd.min_length"])
            .get(),
        1
    );
    assert_eq!(
        m.with_label_values(&["lgsp", "HoSoCBCCVC", "HoSoCBCCVC", "xsd.missing_element"])
            .get(),
        1
    );
    assert_eq!(
        chain.emulator.emulator.as_ref().unwrap().1.stored(),
        0,
        "nothing reaches the national endpoint"
    );
    // The domain rules answer the same way, for JSON with line and column too.
    let body = sample("invalid/HoSoCBCCVC-48-cccd.province-ma-tinh-003.json");
    let a = client
        .send(
            "POST",
            &chain.lgsp_url("/lgsp/v1/HoSoCBCCVC"),
            &headers("application/json"),
            &body,
        )
        .await
        .unwrap();
    let p = a.json();
    assert_eq!(
        (a.status.as_u16(), p["errors"][0]["rule"].as_str()),
        (422, Some("cccd.province")),
        "{p}"
    );
    assert!(p["errors"][0]["line"].is_u64(), "{p}");
    chain.shutdown().await;
}

#[tokio::test]
async fn media_type_size_and_well_formedness_are_checked_first() {
    let chain = Chain::start().await;
    let client = TestClient::new(&chain.pki, Some(AGENCY_OK), true);
    let url = chain.lgsp_url("/lgsp/v1/HoSoCBCCVC");
    let good = sample("valid/HoSoCBCCVC-02-toi-thieu.xml");
    let a = client
        .send("POST", &url, &headers("text/plain"), &good)
        .await
        .unwrap();
    assert_eq!(
        (a.status.as_u16(), a.json()["code"].as_str()),
        (415, Some("packet.unsupported_media_type"))
    );
    let a = client
        .send("POST", &url, &[("x-api-key", KEY_H29)], &good)
        .await
        .unwrap();
    assert_eq!(a.status, 415);
    let huge = format!("{}{}", good, " ".repeat(2 * 1024 * 1024));
    let a = client
        .send("POST", &url, &headers("application/xml"), &huge)
        .await
        .unwrap();
    assert_eq!(
        (a.status.as_u16(), a.json()["code"].as_str()),
        (413, Some("packet.too_large"))
    );
    let doctype = format!(
        "<!DOCTYPE x [<!ENTITY a \"b\">]>{}",
        good.trim_start_matches("<?xml version=\"1.0\" encoding=\"UTF-8\"?>")
    );
    let a = client
        .send("POST", &url, &headers("application/xml"), &doctype)
        .await
        .unwrap();
    let p = a.json();
    assert_eq!(
        (a.status.as_u16(), p["code"].as_str()),
        (400, Some("packet.malformed")),
        "{p}"
    );
    assert_eq!(p["errors"][0]["rule"], "xml.doctype_forbidden");
    let a = client
        .send(
            "POST",
            &url,
            &headers("application/json"),
            r#"{"HoSoCBCCVC": {"a": 1, "a": 2}}"#,
        )
        .await
        .unwrap();
    assert_eq!(
        (a.status.as_u16(), a.json()["errors"][0]["rule"].as_str()),
        (400, Some("json.duplicate_key"))
    );
    assert_eq!(chain.emulator.emulator.as_ref().unwrap().1.stored(), 0);
    chain.shutdown().await;
}

#[tokio::test]
async fn a_unit_outside_the_agency_jurisdiction_is_403() {
    let chain = Chain::start().await;
    let client = TestClient::new(&chain.pki, Some(AGENCY_OK), false);
    let url = chain.lgsp_url("/lgsp/v1/HoSoCBCCVC");
    let other = sample("valid/HoSoCBCCVC-02-toi-thieu.xml").replace(
        "<MaDonVi>000.00.00.H29</MaDonVi>",
        "<MaDonVi>000.00.00.H26</MaDonVi>",
    );
    let a = client
        .send("POST", &url, &headers("application/xml"), &other)
        .await
        .unwrap();
    let p = a.json();
    assert_eq!(
        (a.status.as_u16(), p["code"].as_str()),
        (403, Some("authz.unit_outside_jurisdiction")),
        "{p}"
    );
    assert_eq!(p["errors"][0]["path"], "/HoSoCBCCVC/MaDonVi");
    assert!(p["detail"].as_str().unwrap().contains("*.H29"), "{p}");
    // A unit below the agency matches its pattern.
    let below = sample("valid/HoSoCBCCVC-02-toi-thieu.xml").replace(
        "<MaDonVi>000.00.00.H29</MaDonVi>",
        "<MaDonVi>000.12.34.H29</MaDonVi>",
    );
    let a = client
        .send("POST", &url, &headers("application/xml"), &below)
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    chain.shutdown().await;
}

#[tokio::test]
async fn a_dry_run_answers_the_verdict_and_forwards_nothing() {
    let chain = Chain::start().await;
    let client = TestClient::new(&chain.pki, Some(AGENCY_OK), false);
    let url = |t: &str| chain.lgsp_url(&format!("/lgsp/v1/validate/{t}"));

    let a = client
        .send(
            "POST",
            &url("HoSoCBCCVC"),
            &headers("application/xml"),
            &sample("valid/HoSoCBCCVC-01-day-du.xml"),
        )
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let v = a.json();
    assert_eq!(
        (&v["valid"], &v["message_type"], &v["format"], &v["hop"]),
        (
            &serde_json::json!(true),
            &serde_json::json!("HoSoCBCCVC"),
            &serde_json::json!("xml"),
            &serde_json::json!("lgsp")
        )
    );
    assert!(a.headers.contains_key("x-lgsp-message-id"));

    // An invalid packet gets the problem the packet route would answer, every error listed.
    let a = client
        .send(
            "POST",
            &url("BienChe"),
            &headers("application/json"),
            &sample("invalid/BienChe-07-json.minimum-SoLuong-am.json"),
        )
        .await
        .unwrap();
    assert_eq!(a.status, 422);
    let p = a.json();
    assert_eq!(p["code"], "packet.invalid");
    assert_eq!(p["errors"][0]["rule"], "json.minimum");

    // Jurisdiction is part of the verdict; a type that does not exist is 404.
    let other =
        sample("valid/HoSoCBCCVC-02-toi-thieu.xml").replace("000.00.00.H29", "000.00.00.H26");
    let a = client
        .send(
            "POST",
            &url("HoSoCBCCVC"),
            &headers("application/xml"),
            &other,
        )
        .await
        .unwrap();
    assert_eq!(
        (a.status.as_u16(), a.json()["code"].clone()),
        (403, serde_json::json!("authz.unit_outside_jurisdiction"))
    );
    let a = client
        .send("POST", &url("HoSo"), &headers("application/xml"), "<x/>")
        .await
        .unwrap();
    assert_eq!(
        (a.status.as_u16(), a.json()["code"].clone()),
        (404, serde_json::json!("validate.unknown_message_type"))
    );

    // Nothing reached the national endpoint.
    assert_eq!(chain.emulator.emulator.as_ref().unwrap().1.stored(), 0);
    chain.shutdown().await;
}
