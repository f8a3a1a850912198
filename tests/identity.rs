//! Agencies recognised by certificates as a government CA issues them: no SAN URI, the organisation in the subject.
//! An agency's `certificates` pin them by exact subject and issuer (a renewed certificate keeps matching) or by
//! the SHA-256 of the public key; a look-alike subject from another CA is nobody; check-config refuses two agencies
//! claiming one certificate.

use std::process::Command;

use lgsp_testkit::*;

const KEY_H29: &str = "lgsp_dev_000.00.00.H29_production";
const KEY_H26: &str = "lgsp_dev_000.00.00.H26_production";

/// What openssl prints for a certificate, as an operator would copy it into the config.
fn openssl(pki: &TestPki, file: &str, args: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl x509 -in {} {args}",
            pki.path(file).display()
        ))
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test]
async fn pinned_certificates_without_san_uri_are_their_agencys_and_nobody_elses() {
    if !tool("openssl") {
        return;
    }
    let pki = TestPki::new();
    let names = openssl(
        &pki,
        "gov-h29.pem",
        "-noout -subject -issuer -nameopt RFC2253,-esc_msb",
    );
    let field = |prefix: &str| {
        names
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .expect("a name")
            .trim()
            .to_owned()
    };
    let (subject, issuer) = (field("subject="), field("issuer="));
    let spki = openssl(
        &pki,
        "gov-h26.pem",
        "-noout -pubkey | openssl pkey -pubin -outform DER | sha256sum | cut -d' ' -f1",
    );
    // The next hop takes every packet at once.
    let upstream = Upstream::start(&pki, |_req: http::Request<lgsp_proxy::body::Body>| async {
        http::Response::builder()
            .status(200)
            .body(lgsp_proxy::body::full(bytes::Bytes::from_static(b"{}")))
            .expect("response")
    })
    .await;
    let text = hop_config(&pki, "lgsp", "/lgsp/v1", upstream.addr, "/ndxp/v1", &[])
        .replace("client_ca = [\"ca.pem\"]", &format!("client_ca = [\"ca.pem\", \"{OTHER_CA}\"]"))
        .replace("crls = [\"ca.crl.pem\"]", &format!("crls = [\"ca.crl.pem\", \"{OTHER_CA_CRL}\"]"))
        .replace(
            &format!("code = \"{H29}\"\n"),
            &format!("code = \"{H29}\"\ncertificates = [{{ subject = \"{subject}\", issuer = \"{issuer}\" }}]\n"),
        )
        .replace(
            &format!("code = \"{H26}\"\n"),
            &format!("code = \"{H26}\"\ncertificates = [{{ spki_sha256 = \"{spki}\" }}]\n"),
        );
    let gw = lgsp_proxy::Gateway::start(&parse(&pki, &text))
        .await
        .expect("gateway");
    // A profile of the key's agency's own unit, sent with `identity`'s certificate: (status, body).
    let whoami = |identity: &'static str, key: &'static str| {
        let url = hop_url(&gw, "lgsp", "/lgsp/v1/HoSoCBCCVC");
        let unit = if key == KEY_H26 { H26 } else { H29 };
        let body = sample("valid/HoSoCBCCVC-01-day-du.xml").replace(H29, unit);
        let pki = &pki;
        async move {
            let a = TestClient::new(pki, Some(identity), true)
                .send(
                    "POST",
                    &url,
                    &[("x-api-key", key), ("content-type", "application/xml")],
                    &body,
                )
                .await
                .expect("answer");
            (
                a.status.as_u16(),
                String::from_utf8_lossy(&a.body).into_owned(),
            )
        }
    };
    // The pinned subject and issuer: H29, with H29's key; its renewal (new key) too.
    for cert in [GOV_H29, GOV_H29_RENEWED] {
        let (status, body) = whoami(cert, KEY_H29).await;
        assert_eq!(status, 200, "{cert}: {body}");
        // With another agency's key it is refused as H29's certificate.
        let (status, body) = whoami(cert, KEY_H26).await;
        assert_eq!(status, 403, "{cert}: {body}");
        assert!(body.contains("auth.key_not_bound_to_certificate"), "{body}");
        assert!(body.contains(H29), "{body}");
    }
    // The SPKI pin: H26, and H26 only.
    let (status, body) = whoami(GOV_H26, KEY_H26).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = whoami(GOV_H26, KEY_H29).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains(H26), "{body}");
    // The same subject from another CA the hop also trusts is not H29.
    let (status, body) = whoami(GOV_H29_LOOKALIKE, KEY_H29).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("auth.key_not_bound_to_certificate"), "{body}");
    assert!(!body.contains(&format!("({H29})")), "{body}");
    gw.shutdown().await;

    // Two agencies claiming one certificate: refused with the line of the second claim.
    let twice = text.replace(
        &format!("code = \"{H26}\"\ncertificates = [{{ spki_sha256 = \"{spki}\" }}]\n"),
        &format!("code = \"{H26}\"\ncertificates = [{{ subject = \"{subject}\", issuer = \"{issuer}\" }}]\n"),
    );
    let e = lgsp_config::parse(&twice, "twice.toml", pki.dir()).expect_err("refused");
    assert!(
        e.to_string()
            .contains("already recognised as agency 000.00.00.H29's"),
        "{e}"
    );
    // A subject without its issuer would let any trusted CA mint the agency.
    let alone = text.replace(&format!(", issuer = \"{issuer}\""), "");
    let e = lgsp_config::parse(&alone, "alone.toml", pki.dir()).expect_err("refused");
    assert!(e.to_string().contains("name its issuer too"), "{e}");
}
