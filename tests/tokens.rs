//! WSO2-style bearer tokens end to end over real TLS: `POST /token` with HTTP Basic (agency code + API key)
//! gives a token bound to the client certificate (RFC 8705); requests may send it instead of `X-API-Key`; the
//! token is refused over any other certificate.

use lgsp_testkit::*;

const KEY_H29: &str = "lgsp_dev_000.00.00.H29_production";

fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");

#[tokio::test]
async fn a_token_from_post_token_works_like_the_key_over_the_same_certificate_only() {
    let chain = Chain::start().await;
    let h29 = TestClient::new(&chain.pki, Some(AGENCY_OK), false);
    let auth = basic(H29, KEY_H29);
    let a = h29
        .send(
            "POST",
            &chain.lgsp_url("/token"),
            &[("authorization", &auth), FORM],
            "grant_type=client_credentials",
        )
        .await
        .expect("token request");
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(
        a.headers.get("cache-control").map(|v| v.as_bytes()),
        Some(&b"no-store"[..])
    );
    let t = a.json();
    assert_eq!(
        (&t["token_type"], &t["expires_in"]),
        (&serde_json::json!("Bearer"), &serde_json::json!(3600))
    );
    let token = t["access_token"].as_str().expect("access_token").to_owned();
    let bearer = format!("Bearer {token}");

    // The token replaces X-API-Key for the whole chain.
    let a = h29
        .send(
            "POST",
            &chain.lgsp_url("/lgsp/v1/HoSoCBCCVC"),
            &[
                ("authorization", &bearer),
                ("content-type", "application/xml"),
            ],
            &sample("valid/HoSoCBCCVC-01-day-du.xml"),
        )
        .await
        .expect("packet");
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.json()["agency"], H29);

    // Presented with another certificate, the same token is refused.
    let h26 = TestClient::new(&chain.pki, Some(AGENCY_OTHER), false);
    let a = h26
        .send(
            "POST",
            &chain.lgsp_url("/lgsp/v1/HoSoCBCCVC"),
            &[
                ("authorization", &bearer),
                ("content-type", "application/xml"),
            ],
            &sample("valid/HoSoCBCCVC-01-day-du.xml"),
        )
        .await
        .expect("packet");
    assert_eq!(a.status, 401);
    assert_eq!(a.json()["code"], "auth.token_not_bound_to_certificate");

    // A forged or foreign token is refused as well.
    let a = h29
        .send(
            "GET",
            &chain.lgsp_url("/lgsp/v1/BienNhan/x"),
            &[("authorization", "Bearer e30.e30.AAAA")],
            "",
        )
        .await
        .expect("look-up");
    assert_eq!(
        (a.status.as_u16(), a.json()["code"].clone()),
        (401, serde_json::json!("auth.invalid_token"))
    );
    chain.shutdown().await;
}

#[tokio::test]
async fn the_token_endpoint_answers_oauth_errors() {
    let chain = Chain::start().await;
    let url = chain.lgsp_url("/token");
    let h29 = TestClient::new(&chain.pki, Some(AGENCY_OK), true);
    let cases: [(&str, String, &str, u16, &str); 5] = [
        (
            "POST",
            basic(H29, "lgsp_prod_wrong"),
            "grant_type=client_credentials",
            401,
            "invalid_client",
        ),
        (
            "POST",
            basic(H26, "lgsp_dev_000.00.00.H26_production"),
            "grant_type=client_credentials",
            401,
            "invalid_client",
        ),
        (
            "POST",
            basic(H29, KEY_H29),
            "grant_type=password&username=a",
            400,
            "unsupported_grant_type",
        ),
        ("POST", basic(H29, KEY_H29), "", 400, "invalid_request"),
        ("GET", basic(H29, KEY_H29), "", 405, "invalid_request"),
    ];
    for (method, auth, body, status, error) in cases {
        let a = h29
            .send(method, &url, &[("authorization", &auth), FORM], body)
            .await
            .expect("token request");
        assert_eq!(
            (
                a.status.as_u16(),
                a.json()["error"].as_str().unwrap_or_default()
            ),
            (status, error),
            "{method} {body}: {}",
            String::from_utf8_lossy(&a.body)
        );
    }
    let a = h29
        .send("POST", &url, &[FORM], "grant_type=client_credentials")
        .await
        .expect("token request");
    assert_eq!(a.status, 401);
    assert!(a.headers.contains_key("www-authenticate"));

    // An agency in trial gets a trial token; trial traffic then follows the trial rules.
    let g09 = TestClient::new(&chain.pki, Some(AGENCY_TRIAL), true);
    let a = g09
        .send(
            "POST",
            &url,
            &[
                (
                    "authorization",
                    &basic("000.00.00.G09", "lgsp_dev_000.00.00.G09_trial"),
                ),
                FORM,
            ],
            "grant_type=client_credentials",
        )
        .await
        .expect("token request");
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["scope"], "trial");
    chain.shutdown().await;
}
