//! End to end over real TLS with generated identities: agency → LGSP → NDXP → emulator, each a gateway on port 0.

use lgsp_testkit::*;

/// A valid profile packet (HoSoCBCCVC) of agency H29.
static PACKET: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| sample("valid/HoSoCBCCVC-02-toi-thieu.xml"));
const KEY_H29: &str = "lgsp_dev_000.00.00.H29_production";
const KEY_H26: &str = "lgsp_dev_000.00.00.H26_production";

fn xml(key: &str) -> Vec<(&str, &str)> {
    vec![("x-api-key", key), ("content-type", "application/xml")]
}

async fn happy_path(http2: bool) {
    let chain = Chain::start().await;
    let client = TestClient::new(&chain.pki, Some(AGENCY_OK), http2);
    let a = client
        .send(
            "POST",
            &chain.lgsp_url("/lgsp/v1/HoSoCBCCVC"),
            &xml(KEY_H29),
            &PACKET,
        )
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(
        a.version,
        if http2 {
            http::Version::HTTP_2
        } else {
            http::Version::HTTP_11
        }
    );
    let receipt = a.json();
    let id = a.headers["x-lgsp-message-id"].to_str().unwrap();
    assert_eq!(receipt["message_id"], id);
    assert_eq!(uuid_version(id), 7);
    assert_eq!(receipt["agency"], H29);
    assert_eq!(receipt["hops"], "lgsp, ndxp");
    assert_eq!(receipt["delivered_by"], "NDXP-DEV");
    assert_eq!(receipt["bytes"], PACKET.len());
    // The emulator really holds it, and the receipt route reads it back through both hops.
    let (_, emu) = chain.emulator.emulator.as_ref().unwrap();
    assert_eq!(
        emu.receipt(id).unwrap().sha256,
        receipt["sha256"].as_str().unwrap()
    );
    let back = client
        .send(
            "GET",
            &chain.lgsp_url(&format!("/lgsp/v1/BienNhan/{id}")),
            &xml(KEY_H29),
            "",
        )
        .await
        .unwrap();
    assert_eq!(back.status, 200);
    assert_eq!(back.json()["receipt_id"], receipt["receipt_id"]);
    // Both hops counted the request under the agency and route.
    for g in [&chain.lgsp, &chain.ndxp] {
        let hop = &g.hops[0].name;
        assert_eq!(
            g.metrics
                .requests
                .with_label_values(&[hop.as_str(), "HoSoCBCCVC", H29, "production", "200"])
                .get(),
            1
        );
    }
    chain.shutdown().await;
}

fn uuid_version(id: &str) -> u32 {
    // xxxxxxxx-xxxx-Vxxx-...
    id.chars().nth(14).and_then(|c| c.to_digit(16)).unwrap_or(0)
}

#[tokio::test]
async fn happy_path_through_both_hops_over_http1() {
    happy_path(false).await;
}

#[tokio::test]
async fn happy_path_through_both_hops_over_http2() {
    happy_path(true).await;
}

async fn refused_handshake(identity: Option<&str>, alert: &str, reason: &str) {
    let chain = Chain::start().await;
    let addr = chain.lgsp.hop_addr("lgsp").unwrap();
    let err = tls_exchange(addr, chain.pki.client_tls(identity, &[b"http/1.1"]))
        .await
        .unwrap_err();
    assert!(err.contains(alert), "expected alert {alert}, got: {err}");
    assert_eq!(
        chain
            .lgsp
            .metrics
            .tls_handshake_failures
            .with_label_values(&["lgsp", reason])
            .get(),
        1
    );
    assert_eq!(
        chain
            .lgsp
            .metrics
            .requests
            .with_label_values(&["lgsp", "unknown", "unknown", "unknown", "200"])
            .get(),
        0
    );
    chain.shutdown().await;
}

#[tokio::test]
async fn no_client_certificate_fails_the_handshake() {
    refused_handshake(None, "CertificateRequired", "no_client_cert").await;
}

#[tokio::test]
async fn certificate_of_another_ca_fails_the_handshake() {
    refused_handshake(Some(AGENCY_WRONG_CA), "UnknownCA", "unknown_ca").await;
}

#[tokio::test]
async fn expired_certificate_fails_the_handshake() {
    refused_handshake(Some(AGENCY_EXPIRED), "CertificateExpired", "expired").await;
}

#[tokio::test]
async fn revoked_certificate_fails_the_handshake() {
    refused_handshake(Some(AGENCY_REVOKED), "CertificateRevoked", "revoked").await;
}

#[tokio::test]
async fn tls12_clients_are_served_too() {
    let chain = Chain::start().await;
    let addr = chain.lgsp.hop_addr("lgsp").unwrap();
    let tls =
        chain
            .pki
            .client_tls_versions(Some(AGENCY_OK), &[b"http/1.1"], &[&rustls::version::TLS12]);
    let answer = tls_exchange(addr, tls).await.unwrap();
    // The handshake succeeded; the request (sent without a key) reached the auth layer.
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(answer.contains("auth.missing_key"), "{answer}");
    chain.shutdown().await;
}

#[tokio::test]
async fn valid_certificate_with_the_key_of_another_agency_is_403() {
    let chain = Chain::start().await;
    let client = TestClient::new(&chain.pki, Some(AGENCY_OK), false);
    let a = client
        .send(
            "POST",
            &chain.lgsp_url("/lgsp/v1/HoSoCBCCVC"),
            &xml(KEY_H26),
            &PACKET,
        )
        .await
        .unwrap();
    assert_eq!(a.status, 403);
    assert_eq!(a.headers["content-type"], "application/problem+json");
    let p = a.json();
    assert_eq!(p["code"], "auth.key_not_bound_to_certificate");
    assert!(p["detail"].as_str().unwrap().contains(H29), "{p}");
    assert_eq!(
        chain
            .lgsp
            .metrics
            .auth_failures
            .with_label_values(&["lgsp", "key_not_bound_to_certificate"])
            .get(),
        1
    );
    assert_eq!(chain.emulator.emulator.as_ref().unwrap().1.stored(), 0);
    chain.shutdown().await;
}

#[tokio::test]
async fn missing_and_wrong_keys_are_401() {
    let chain = Chain::start().await;
    let client = TestClient::new(&chain.pki, Some(AGENCY_OK), true);
    let url = chain.lgsp_url("/lgsp/v1/HoSoCBCCVC");
    let a = client
        .send(
            "POST",
            &url,
            &[("content-type", "application/xml")],
            &PACKET,
        )
        .await
        .unwrap();
    assert_eq!(
        (a.status.as_u16(), a.json()["code"].as_str().unwrap()),
        (401, "auth.missing_key")
    );
    let a = client
        .send("POST", &url, &xml("lgsp_prod_0000"), &PACKET)
        .await
        .unwrap();
    assert_eq!(
        (a.status.as_u16(), a.json()["code"].as_str().unwrap()),
        (401, "auth.unknown_key")
    );
    assert!(a.json()["message_id"].is_string());
    chain.shutdown().await;
}

#[tokio::test]
async fn unknown_route_is_404_problem_json() {
    let chain = Chain::start().await;
    let client = TestClient::new(&chain.pki, Some(AGENCY_OK), false);
    let a = client
        .send(
            "POST",
            &chain.lgsp_url("/lgsp/v1/Unknown"),
            &xml(KEY_H29),
            &PACKET,
        )
        .await
        .unwrap();
    assert_eq!(a.status, 404);
    assert_eq!(a.json()["code"], "route.not_found");
    assert_eq!(
        chain
            .lgsp
            .metrics
            .requests
            .with_label_values(&["lgsp", "unknown", H29, "production", "404"])
            .get(),
        1
    );
    let a = client
        .send(
            "DELETE",
            &chain.lgsp_url("/lgsp/v1/BienChe"),
            &xml(KEY_H29),
            "",
        )
        .await
        .unwrap();
    assert_eq!(
        (a.status.as_u16(), a.headers["allow"].to_str().unwrap()),
        (405, "POST, PUT")
    );
    chain.shutdown().await;
}

#[tokio::test]
async fn upstream_down_is_502_problem_json_and_counted() {
    let pki = TestPki::new();
    let down = closed_port().await;
    let cfg = parse(
        &pki,
        &hop_config(&pki, "lgsp", "/lgsp/v1", down, "/ndxp/v1", &[]),
    );
    let lgsp = lgsp_proxy::Gateway::start(&cfg).await.unwrap();
    let client = TestClient::new(&pki, Some(AGENCY_OK), false);
    let url = hop_url(&lgsp, "lgsp", "/lgsp/v1/HoSoCBCCVC");
    let a = client
        .send("POST", &url, &xml(KEY_H29), &PACKET)
        .await
        .unwrap();
    assert_eq!(a.status, 502);
    let p = a.json();
    assert_eq!(p["code"], "upstream.unreachable");
    assert_eq!(p["class"], "upstream");
    let upstream = format!("localhost:{}", down.port());
    assert_eq!(
        lgsp.metrics
            .upstream_errors
            .with_label_values(&["lgsp", upstream.as_str(), "connect"])
            .get(),
        1
    );
    assert_eq!(
        lgsp.metrics
            .requests
            .with_label_values(&["lgsp", "HoSoCBCCVC", H29, "production", "502"])
            .get(),
        1
    );
    lgsp.shutdown().await;
}

#[tokio::test]
async fn spoofed_hop_headers_are_stripped_at_the_first_hop() {
    let chain = Chain::start().await;
    let client = TestClient::new(&chain.pki, Some(AGENCY_OK), false);
    let spoofed_id = "01900000-0000-7000-8000-000000000000";
    let mut headers = xml(KEY_H29);
    headers.extend([
        ("x-lgsp-client", "000.00.00.G09"),
        ("x-lgsp-message-id", spoofed_id),
        ("x-lgsp-hops", "ndxp"),
        ("x-lgsp-mode", "trial"),
    ]);
    let a = client
        .send(
            "POST",
            &chain.lgsp_url("/lgsp/v1/HoSoCBCCVC"),
            &headers,
            &PACKET,
        )
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let r = a.json();
    assert_eq!(r["agency"], H29);
    assert_eq!(r["hops"], "lgsp, ndxp");
    assert_eq!(r["mode"], "production");
    assert_ne!(r["message_id"], spoofed_id);
    chain.shutdown().await;
}

#[tokio::test]
async fn an_agency_cannot_pose_as_a_peer_at_the_ndxp_hop() {
    // Direct mode: an agency talks to NDXP itself; its X-LGSP-Client is not trusted there either.
    let chain = Chain::start().await;
    let client = TestClient::new(&chain.pki, Some(AGENCY_OK), true);
    let url = hop_url(&chain.ndxp, "ndxp", "/ndxp/v1/HoSoCBCCVC");
    let mut headers = xml(KEY_H29);
    headers.push(("x-lgsp-client", "000.00.00.H26"));
    let a = client.send("POST", &url, &headers, &PACKET).await.unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["agency"], H29);
    assert_eq!(a.json()["hops"], "ndxp");
    chain.shutdown().await;
}

/// A single LGSP hop in front of a held upstream, with the config text adjusted by `tweak`.
async fn lgsp_before_held(
    tweak: impl Fn(String) -> String,
) -> (TestPki, HeldUpstream, lgsp_proxy::Gateway) {
    let pki = TestPki::new();
    let held = HeldUpstream::start(&pki).await;
    let cfg = parse(
        &pki,
        &tweak(hop_config(&pki, "lgsp", "/lgsp/v1", held.addr, "/x", &[])),
    );
    let lgsp = lgsp_proxy::Gateway::start(&cfg).await.unwrap();
    (pki, held, lgsp)
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests_and_refuses_new_connections() {
    let (pki, held, lgsp) = lgsp_before_held(|c| c).await;
    let addr = lgsp.hop_addr("lgsp").unwrap();
    let url = format!("https://localhost:{}/lgsp/v1/HoSoCBCCVC", addr.port());
    let client = TestClient::new(&pki, Some(AGENCY_OK), true);
    let in_flight =
        tokio::spawn(async move { client.send("POST", &url, &xml(KEY_H29), &PACKET).await });
    held.arrived.notified().await;
    let draining = tokio::spawn(lgsp.shutdown());
    // New connections are refused once the listener is closed; the held request is still in flight.
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        tokio::task::yield_now().await;
    }
    held.release.notify_one();
    let a = in_flight.await.unwrap().unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(&a.body[..], b"released");
    draining.await.unwrap();
}

#[tokio::test]
async fn slow_upstream_is_504_problem_json_and_counted() {
    let (pki, held, lgsp) = lgsp_before_held(|c| {
        c.replace(
            "timeout = \"5s\"\nagencies",
            "timeout = \"300ms\"\nagencies",
        )
    })
    .await;
    let client = TestClient::new(&pki, Some(AGENCY_OK), false);
    let url = hop_url(&lgsp, "lgsp", "/lgsp/v1/HoSoCBCCVC");
    let a = client
        .send("POST", &url, &xml(KEY_H29), &PACKET)
        .await
        .unwrap();
    assert_eq!(a.status, 504);
    assert_eq!(a.json()["code"], "upstream.timeout");
    let upstream = format!("localhost:{}", held.addr.port());
    assert_eq!(
        lgsp.metrics
            .upstream_errors
            .with_label_values(&["lgsp", upstream.as_str(), "timeout"])
            .get(),
        1
    );
    held.release.notify_waiters();
    lgsp.shutdown().await;
}

#[tokio::test]
async fn a_client_that_never_finishes_the_handshake_is_cut_off_and_counted() {
    let pki = TestPki::new();
    let held = HeldUpstream::start(&pki).await;
    let text = hop_config(&pki, "lgsp", "/lgsp/v1", held.addr, "/x", &[]).replace(
        "handshake_timeout = \"5s\"",
        "handshake_timeout = \"200ms\"",
    );
    let lgsp = lgsp_proxy::Gateway::start(&parse(&pki, &text))
        .await
        .unwrap();
    let mut tcp = tokio::net::TcpStream::connect(lgsp.hop_addr("lgsp").unwrap())
        .await
        .unwrap();
    let mut buf = Vec::new();
    // The gateway closes the silent connection: read_to_end returns (EOF or reset), never hangs.
    let _ = tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut buf).await;
    assert!(buf.is_empty());
    assert_eq!(
        lgsp.metrics
            .tls_handshake_failures
            .with_label_values(&["lgsp", "timeout"])
            .get(),
        1
    );
    lgsp.shutdown().await;
}

#[tokio::test]
async fn admin_listener_serves_health_readiness_and_metrics() {
    let chain = Chain::start().await;
    let admin = chain.lgsp.admin;
    for (path, expect) in [
        ("/healthz", "200 OK"),
        ("/readyz", "200 OK"),
        ("/metrics", "200 OK"),
        ("/nope", "404 Not Found"),
    ] {
        let mut tcp = tokio::net::TcpStream::connect(admin).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nhost: {admin}\r\nconnection: close\r\n\r\n");
        tokio::io::AsyncWriteExt::write_all(&mut tcp, req.as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut tcp, &mut out)
            .await
            .unwrap();
        assert!(
            out.starts_with(&format!("HTTP/1.1 {expect}")),
            "{path}: {out}"
        );
        if path == "/metrics" {
            assert!(out.contains("lgsp_build_info{"), "{out}");
        }
    }
    chain.shutdown().await;
}

#[tokio::test]
async fn certificate_and_crl_expiry_is_exported() {
    let chain = Chain::start().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let m = &chain.lgsp.metrics.certificate_expiry;
    let server = m
        .with_label_values(&["lgsp", "server", "lgsp.lgsp-gateway.localhost"])
        .get();
    assert!(
        server > now + 700.0 * 86_400.0,
        "dev server certificates live 825 days: {server}"
    );
    assert!(m.with_label_values(&["lgsp", "client", "LGSP-DEV"]).get() > now);
    assert!(
        m.with_label_values(&["lgsp", "ca", "lgsp-gateway dev CA"])
            .get()
            > now + 3000.0 * 86_400.0
    );
    assert!(
        m.with_label_values(&["lgsp", "crl", "lgsp-gateway dev CA"])
            .get()
            > now + 300.0 * 86_400.0
    );
    chain.shutdown().await;
}
