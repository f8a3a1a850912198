//! Rate limits and overload protection end to end: 429 with Retry-After and RateLimit headers, per-agency
//! overrides, 503 load shedding, and a limit shared by two gateways through one Redis.

use lgsp_testkit::*;

const KEY_H29: &str = "lgsp_dev_000.00.00.H29_production";
const KEY_H26: &str = "lgsp_dev_000.00.00.H26_production";

fn packet(agency_unit: &str) -> String {
    sample("valid/HoSoCBCCVC-02-toi-thieu.xml").replace("000.00.00.H29", agency_unit)
}

fn headers(key: &str) -> Vec<(&str, &str)> {
    vec![("x-api-key", key), ("content-type", "application/xml")]
}

#[tokio::test]
async fn past_the_burst_the_answer_is_429_with_retry_after_and_ratelimit_headers() {
    let chain = Chain::start_with("rate = \"1/h\"\nburst = 3", "").await;
    let client = TestClient::new(&chain.pki, Some(AGENCY_OK), true);
    let url = chain.lgsp_url("/lgsp/v1/HoSoCBCCVC");
    for remaining in [2, 1, 0] {
        let a = client
            .send("POST", &url, &headers(KEY_H29), &packet("000.00.00.H29"))
            .await
            .unwrap();
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
        assert_eq!(a.headers["ratelimit-policy"], "\"HoSoCBCCVC\";q=3;w=10800");
        assert!(
            a.headers["ratelimit"]
                .to_str()
                .unwrap()
                .starts_with(&format!("\"HoSoCBCCVC\";r={remaining};t="))
        );
    }
    let a = client
        .send("POST", &url, &headers(KEY_H29), &packet("000.00.00.H29"))
        .await
        .unwrap();
    assert_eq!(a.status, 429);
    let retry: u64 = a.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((3500..=3600).contains(&retry), "retry-after {retry}");
    assert_eq!(a.headers["ratelimit-policy"], "\"HoSoCBCCVC\";q=3;w=10800");
    assert!(a.headers["ratelimit"].to_str().unwrap().contains(";r=0;"));
    assert_eq!(a.json()["code"], "ratelimit.exceeded");
    assert_eq!(
        chain
            .lgsp
            .metrics
            .ratelimited
            .with_label_values(&["lgsp", "HoSoCBCCVC", H29])
            .get(),
        1
    );
    // Another agency has its own allowance.
    let other = TestClient::new(&chain.pki, Some(AGENCY_OTHER), true);
    let a = other
        .send("POST", &url, &headers(KEY_H26), &packet("000.00.00.H26"))
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    chain.shutdown().await;
}

#[tokio::test]
async fn an_agency_override_replaces_the_route_rate() {
    let route = "rate = \"1/h\"\nburst = 1\noverrides = [{ agency = \"000.00.00.H29\", rate = \"1/h\", burst = 2 }]";
    let chain = Chain::start_with(route, "").await;
    let client = TestClient::new(&chain.pki, Some(AGENCY_OK), false);
    let url = chain.lgsp_url("/lgsp/v1/HoSoCBCCVC");
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(
            client
                .status("POST", &url, &headers(KEY_H29), &packet("000.00.00.H29"))
                .await,
        );
    }
    assert_eq!(statuses, [200, 200, 429]);
    chain.shutdown().await;
}

#[tokio::test]
async fn too_many_in_flight_for_one_agency_is_503_and_others_still_pass() {
    let pki = TestPki::new();
    let held = HeldUpstream::start(&pki).await;
    let cfg = parse(
        &pki,
        &lgsp_config_with(
            &pki,
            held.addr,
            "",
            "[overload]\nmax_in_flight_per_agency = 1\nretry_after = \"2s\"\n",
        ),
    );
    let lgsp = lgsp_proxy::Gateway::start(&cfg).await.unwrap();
    let url = hop_url(&lgsp, "lgsp", "/lgsp/v1/HoSoCBCCVC");
    let first = {
        let (client, url) = (TestClient::new(&pki, Some(AGENCY_OK), true), url.clone());
        tokio::spawn(async move {
            client
                .send("POST", &url, &headers(KEY_H29), &packet("000.00.00.H29"))
                .await
        })
    };
    held.arrived.notified().await;
    let client = TestClient::new(&pki, Some(AGENCY_OK), true);
    let a = client
        .send("POST", &url, &headers(KEY_H29), &packet("000.00.00.H29"))
        .await
        .unwrap();
    assert_eq!(
        (a.status.as_u16(), a.json()["code"].as_str()),
        (503, Some("overload.shed"))
    );
    assert_eq!(a.headers["retry-after"], "2");
    assert_eq!(
        lgsp.metrics
            .load_shed
            .with_label_values(&["lgsp", "agency"])
            .get(),
        1
    );
    // Another agency is not held back by H29's batch.
    let other = tokio::spawn({
        let (client, url) = (TestClient::new(&pki, Some(AGENCY_OTHER), true), url.clone());
        async move {
            client
                .send("POST", &url, &headers(KEY_H26), &packet("000.00.00.H26"))
                .await
        }
    });
    held.arrived.notified().await;
    held.release.notify_one();
    held.release.notify_one();
    assert_eq!(first.await.unwrap().unwrap().status, 200);
    assert_eq!(other.await.unwrap().unwrap().status, 200);
    lgsp.shutdown().await;
}

fn redis_url() -> Option<String> {
    let url = std::env::var("LGSP_TEST_REDIS_URL").ok();
    if url.is_none() {
        eprintln!("skipped: LGSP_TEST_REDIS_URL is not set (e.g. redis://127.0.0.1:6379)");
    }
    url
}

#[tokio::test]
async fn two_gateways_on_one_redis_share_the_limit() {
    let Some(redis) = redis_url() else { return };
    let chain = Chain::start().await;
    let ndxp = chain.ndxp.hop_addr("ndxp").unwrap();
    let prefix = format!(
        "lgsp:test:{}:{}:",
        std::process::id(),
        chain.lgsp.admin.port()
    );
    let extra = format!(
        "[ratelimit]\nbackend = \"{redis}\"\nkey_prefix = \"{prefix}\"\ntimeout = \"2s\"\n"
    );
    let route = "rate = \"1/h\"\nburst = 4";
    let a = lgsp_proxy::Gateway::start(&parse(
        &chain.pki,
        &lgsp_config_with(&chain.pki, ndxp, route, &extra),
    ))
    .await
    .unwrap();
    let b = lgsp_proxy::Gateway::start(&parse(
        &chain.pki,
        &lgsp_config_with(&chain.pki, ndxp, route, &extra),
    ))
    .await
    .unwrap();
    let client = TestClient::new(&chain.pki, Some(AGENCY_OK), true);
    let mut allowed = 0;
    for i in 0..10 {
        let g = if i % 2 == 0 { &a } else { &b };
        let url = hop_url(g, "lgsp", "/lgsp/v1/HoSoCBCCVC");
        let s = client
            .status("POST", &url, &headers(KEY_H29), &packet("000.00.00.H29"))
            .await;
        assert!(s == 200 || s == 429, "{s}");
        allowed += usize::from(s == 200);
    }
    assert_eq!(allowed, 4, "the burst of 4 holds across both gateways");
    assert_eq!(
        a.metrics
            .ratelimit_backend_up
            .with_label_values(&["redis"])
            .get(),
        1
    );
    a.shutdown().await;
    b.shutdown().await;
    chain.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_redis_falls_back_to_local_or_refuses() {
    let chain = Chain::start().await;
    let ndxp = chain.ndxp.hop_addr("ndxp").unwrap();
    let client = TestClient::new(&chain.pki, Some(AGENCY_OK), true);
    for (mode, expect) in [("local", [200u16, 429]), ("refuse", [503, 503])] {
        let extra = format!(
            "[ratelimit]\nbackend = \"redis://127.0.0.1:1\"\non_backend_failure = \"{mode}\"\ntimeout = \"200ms\"\n"
        );
        let g = lgsp_proxy::Gateway::start(&parse(
            &chain.pki,
            &lgsp_config_with(&chain.pki, ndxp, "rate = \"1/h\"\nburst = 1", &extra),
        ))
        .await
        .unwrap();
        let url = hop_url(&g, "lgsp", "/lgsp/v1/HoSoCBCCVC");
        let mut got = Vec::new();
        for _ in 0..2 {
            got.push(
                client
                    .status("POST", &url, &headers(KEY_H29), &packet("000.00.00.H29"))
                    .await,
            );
        }
        assert_eq!(got, expect, "{mode}");
        assert_eq!(
            g.metrics
                .ratelimit_backend_up
                .with_label_values(&["redis"])
                .get(),
            0
        );
        g.shutdown().await;
    }
    chain.shutdown().await;
}

/// `[hop.upstream] max_connections` caps what a hop has in flight to one upstream, across its routes: with one slot,
/// a packet of another route waits while the first is held at the upstream — and, its route's shorter timeout
/// passed, is answered 504 without ever reaching it; once the first is answered, the next packet goes through.
#[tokio::test]
async fn requests_in_flight_to_one_upstream_are_capped() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let pki = TestPki::new();
    let arrived = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(tokio::sync::Notify::new());
    let (a, r) = (arrived.clone(), release.clone());
    let upstream = Upstream::start(&pki, move |_req| {
        let (a, r) = (a.clone(), r.clone());
        async move {
            a.fetch_add(1, Ordering::SeqCst);
            r.notified().await;
            http::Response::new(lgsp_proxy::body::full("{}"))
        }
    })
    .await;
    let text = lgsp_config_with(&pki, upstream.addr, "", "")
        .replacen(
            "[[hop.route]]",
            "[hop.upstream]\nmax_connections = 1\n[[hop.route]]",
            1,
        )
        // BienChe's packets give up long before HoSoCBCCVC's.
        .replace(
            "prefix = \"/lgsp/v1/BienChe\"\nupstream = \"https://localhost:",
            "timeout = \"1s\"\nprefix = \"/lgsp/v1/BienChe\"\nupstream = \"https://localhost:",
        )
        .replace(
            "timeout = \"5s\"\nagencies = [\"*\"]\nmessage_type = \"BienChe\"",
            "agencies = [\"*\"]\nmessage_type = \"BienChe\"",
        );
    let gw = lgsp_proxy::Gateway::start(&parse(&pki, &text))
        .await
        .expect("gateway starts");
    let url = hop_url(&gw, "lgsp", "/lgsp/v1/HoSoCBCCVC");
    let body = packet("000.00.00.H29");
    let first = {
        let (pki_client, url, body) = (
            TestClient::new(&pki, Some(AGENCY_OK), false),
            url.clone(),
            body.clone(),
        );
        tokio::spawn(async move {
            pki_client
                .status("POST", &url, &headers(KEY_H29), &body)
                .await
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while arrived.load(Ordering::SeqCst) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the first packet never reached the upstream"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let staffing = sample("valid/BienChe-01-hai-ngach.xml");
    let second = TestClient::new(&pki, Some(AGENCY_OK), false)
        .send(
            "POST",
            &hop_url(&gw, "lgsp", "/lgsp/v1/BienChe"),
            &headers(KEY_H29),
            &staffing,
        )
        .await
        .unwrap();
    assert_eq!(second.status, 504);
    assert_eq!(second.json()["code"], "upstream.timeout");
    assert_eq!(
        arrived.load(Ordering::SeqCst),
        1,
        "the second packet took no slot"
    );
    release.notify_one();
    assert_eq!(first.await.unwrap(), 200);
    let third = {
        let (client, url, body) = (
            TestClient::new(&pki, Some(AGENCY_OK), false),
            url.clone(),
            body.clone(),
        );
        tokio::spawn(async move { client.status("POST", &url, &headers(KEY_H29), &body).await })
    };
    while arrived.load(Ordering::SeqCst) < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the third packet never reached the upstream"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    release.notify_one();
    assert_eq!(third.await.unwrap(), 200);
    gw.shutdown().await;
}

/// A hop talks HTTP/1.1 keep-alive to its upstreams unless `[hop.upstream] protocol = "http2"` (then h2, when the
/// upstream offers it).
#[tokio::test]
async fn the_upstream_protocol_is_what_the_hop_offers() {
    let pki = TestPki::new();
    let upstream = Upstream::start(&pki, |req| async move {
        http::Response::new(lgsp_proxy::body::full(format!("{:?}", req.version())))
    })
    .await;
    for (protocol, seen) in [("", "HTTP/1.1"), ("protocol = \"http2\"", "HTTP/2.0")] {
        let text = lgsp_config_with(&pki, upstream.addr, "", "").replacen(
            "[[hop.route]]",
            &format!("[hop.upstream]\n{protocol}\n[[hop.route]]"),
            1,
        );
        let gw = lgsp_proxy::Gateway::start(&parse(&pki, &text))
            .await
            .expect("gateway starts");
        let a = TestClient::new(&pki, Some(AGENCY_OK), false)
            .send(
                "POST",
                &hop_url(&gw, "lgsp", "/lgsp/v1/HoSoCBCCVC"),
                &headers(KEY_H29),
                &packet("000.00.00.H29"),
            )
            .await
            .unwrap();
        assert_eq!(
            (a.status.as_u16(), String::from_utf8_lossy(&a.body).as_ref()),
            (200, seen),
            "{protocol}"
        );
        gw.shutdown().await;
    }
}
