//! Behind an L4 load balancer: real HAProxy in TCP mode with `send-proxy-v2` in front of a hop. TLS still ends at the
//! gateway (the agency's certificate is checked as ever), and the client's own address — from the PROXY protocol
//! header the balancer sends — is what the hop records in `Forwarded`; a connection from the balancer's address
//! without that header is closed, and nobody else can send one. Handshakes in progress are counted per client the
//! header names, so one agency's stalled connections do not use up every other agency's share of the balancer.

use std::process::Command;

use lgsp_testkit::*;

const KEY_H29: &str = "lgsp_dev_000.00.00.H29_production";

#[tokio::test(flavor = "multi_thread")]
async fn behind_haproxy_the_hop_sees_the_agencys_address_and_tls_ends_at_the_gateway() {
    if !tool("haproxy") || !tool("curl") {
        return;
    }
    let pki = TestPki::new();
    // The next hop answers with the Forwarded header it got.
    let upstream = Upstream::start(
        &pki,
        |req: http::Request<lgsp_proxy::body::Body>| async move {
            let forwarded = req
                .headers()
                .get("forwarded")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            http::Response::builder()
                .status(200)
                .body(lgsp_proxy::body::full(bytes::Bytes::from(forwarded)))
                .expect("response")
        },
    )
    .await;
    let text = behind_balancer(
        &hop_config(&pki, "lgsp", "/lgsp/v1", upstream.addr, "/ndxp/v1", &[]),
        "",
    );
    let gw = lgsp_proxy::Gateway::start(&parse(&pki, &text))
        .await
        .expect("gateway");
    let gw_port = gw.hop_addr("lgsp").expect("hop").port();
    let haproxy = Haproxy::start(pki.dir(), &[([127, 0, 0, 1], gw_port).into()]);
    let lb_port = haproxy.port;
    let curl = |port: u16, local_port: u16| {
        let (pki, port) = (pki.dir().to_owned(), port);
        move || {
            Command::new("curl")
                .args([
                    "-sS",
                    "--max-time",
                    "10",
                    "--local-port",
                    &local_port.to_string(),
                ])
                .args([
                    "--cert",
                    &format!("{AGENCY_OK}.pem"),
                    "--key",
                    &format!("{AGENCY_OK}.key"),
                ])
                .args(["--cacert", "ca.pem", "-H", &format!("X-API-Key: {KEY_H29}")])
                .args([
                    "-H",
                    "Content-Type: application/xml",
                    "--data-binary",
                    "@packet.xml",
                ])
                .arg(format!("https://localhost:{port}/lgsp/v1/HoSoCBCCVC"))
                .current_dir(&pki)
                .output()
                .expect("curl")
        }
    };
    std::fs::write(
        pki.path("packet.xml"),
        sample("valid/HoSoCBCCVC-01-day-du.xml"),
    )
    .expect("packet");
    let local = free_port();
    let out = tokio::task::spawn_blocking(curl(lb_port, local))
        .await
        .expect("curl");
    assert!(out.status.success(), "{out:?}");
    let forwarded = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        forwarded.contains(&format!("for=\"127.0.0.1:{local}\"")),
        "the hop recorded another address than the agency's: {forwarded}"
    );
    // Straight to the hop from the balancer's address, without the header: closed before TLS.
    let direct = tokio::task::spawn_blocking(curl(gw_port, free_port()))
        .await
        .expect("curl");
    assert!(!direct.status.success());
    assert_eq!(
        gw.metrics
            .connections_closed
            .with_label_values(&["lgsp", "proxy_protocol"])
            .get(),
        1
    );
    // HAProxy's health checks (a LOCAL header, then the connection ends) are no failed handshakes.
    eventually(
        "a health check",
        std::time::Duration::from_secs(20),
        || async {
            gw.metrics
                .connections_closed
                .with_label_values(&["lgsp", "balancer_check"])
                .get()
                >= 1
        },
    )
    .await;
    let failed: f64 = gw
        .metrics
        .encode()
        .lines()
        .filter(|l| l.starts_with("lgsp_tls_handshake_failures_total{"))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum();
    assert_eq!(failed, 0.0, "health checks counted as failed handshakes");
    drop(haproxy);
    gw.shutdown().await;
}

/// A PROXY protocol v2 header for a TCP/IPv4 connection from `client` to 127.0.0.1:443.
fn proxy_v2(client: std::net::SocketAddrV4) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&client.ip().octets());
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&client.port().to_be_bytes());
    h.extend_from_slice(&443u16.to_be_bytes());
    h
}

/// Whether the gateway closes `tcp` within `within` (it sends nothing before the client's TLS hello).
async fn closed_within(tcp: &mut tokio::net::TcpStream, within: std::time::Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1];
    matches!(
        tokio::time::timeout(within, tcp.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn handshakes_behind_a_balancer_are_counted_per_client_not_per_balancer() {
    use tokio::io::AsyncWriteExt;
    let pki = TestPki::new();
    let upstream = Upstream::start(&pki, |_req: http::Request<lgsp_proxy::body::Body>| async {
        http::Response::builder()
            .status(200)
            .body(lgsp_proxy::body::full(bytes::Bytes::from_static(b"ok")))
            .expect("response")
    })
    .await;
    let text = behind_balancer(
        &hop_config(&pki, "lgsp", "/lgsp/v1", upstream.addr, "/ndxp/v1", &[]),
        "max_handshakes_per_address = 2\n",
    );
    let gw = lgsp_proxy::Gateway::start(&parse(&pki, &text))
        .await
        .expect("gateway");
    let addr = gw.hop_addr("lgsp").expect("hop");
    let via_balancer = |client: &str| {
        let header = proxy_v2(client.parse().expect("client address"));
        async move {
            let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
            tcp.write_all(&header).await.expect("PROXY header");
            tcp
        }
    };
    // One agency's host stalls two handshakes through the balancer: its whole share.
    let _stalled = [
        via_balancer("192.0.2.1:40001").await,
        via_balancer("192.0.2.1:40002").await,
    ];
    // Its next connection is closed before TLS (tried again while the two are still being admitted).
    let mut refused = false;
    let mut held = Vec::new();
    for port in 40003..40008 {
        let mut third = via_balancer(&format!("192.0.2.1:{port}")).await;
        if closed_within(&mut third, std::time::Duration::from_secs(2)).await {
            refused = true;
            break;
        }
        held.push(third);
    }
    assert!(refused, "a third handshake from 192.0.2.1 was admitted");
    // Another agency behind the same balancer — whose address already has two handshakes in progress — is served.
    let other = via_balancer("192.0.2.2:40001").await;
    let answer = tls_exchange_on(other, pki.client_tls(Some(AGENCY_OK), &[b"http/1.1"]))
        .await
        .expect("the other client's exchange");
    assert!(answer.starts_with("HTTP/1.1 "), "{answer}");
    assert!(
        gw.metrics
            .connections_closed
            .with_label_values(&["lgsp", "too_many_handshakes"])
            .get()
            >= 1
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_balancers_header_is_bounded_in_time_and_size() {
    use tokio::io::AsyncWriteExt;
    let pki = TestPki::new();
    let text = behind_balancer(
        &hop_config(
            &pki,
            "lgsp",
            "/lgsp/v1",
            "127.0.0.1:9".parse().expect("addr"),
            "/ndxp/v1",
            &[],
        ),
        "",
    )
    .replacen(
        "handshake_timeout = \"5s\"",
        "handshake_timeout = \"1s\"",
        1,
    );
    let gw = lgsp_proxy::Gateway::start(&parse(&pki, &text))
        .await
        .expect("gateway");
    let addr = gw.hop_addr("lgsp").expect("hop");
    // Half a header, then nothing: closed once the handshake's time is up.
    let mut slow = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let header = proxy_v2("192.0.2.1:40001".parse().expect("client"));
    slow.write_all(&header[..10]).await.expect("write");
    // A header announcing 65,535 bytes of addresses: closed without reading them.
    let mut long = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut big = header[..14].to_vec();
    big.extend_from_slice(&[0xff, 0xff]);
    long.write_all(&big).await.expect("write");
    assert!(closed_within(&mut long, std::time::Duration::from_secs(20)).await);
    assert!(closed_within(&mut slow, std::time::Duration::from_secs(20)).await);
    assert_eq!(
        gw.metrics
            .connections_closed
            .with_label_values(&["lgsp", "proxy_protocol"])
            .get(),
        2
    );
    gw.shutdown().await;
}
