//! Broker routes end to end over real TLS against the machine's NATS (JetStream) and RabbitMQ: a packet answered 202
//! only once the broker confirmed it, with its message id as `Nats-Msg-Id` / `message_id` and the hop headers beside
//! it; a resend under its Idempotency-Key answered from the journal, the stream holding it once; an unroutable
//! packet refused as the 502 it is; and a queued route whose broker is out of reach for 30 s under load, every
//! accepted packet in the stream exactly once afterwards. `LGSP_TEST_NATS_URL` / `LGSP_TEST_AMQP_URL` name the
//! brokers; without them each test says why it skips.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures_util::StreamExt;
use lgsp_testkit::*;

const KEY_H29: &str = "lgsp_dev_000.00.00.H29_production";

/// Fast retries and a lease over twice the test routes' 5 s timeout.
const DELIVERY: &str = "[delivery]\nmax_age = \"10m\"\ninitial_backoff = \"100ms\"\nmax_backoff = \"1s\"\nworkers = 8\nlease = \"12s\"\n";

/// An LGSP hop config whose routes named in `brokered` publish to their broker URL (`route_extra` added to each)
/// and whose other routes go to a closed port.
async fn config(pki: &TestPki, brokered: &[(&str, &str)], route_extra: &str) -> String {
    let nowhere = closed_port().await;
    let mut text = hop_config(pki, "lgsp", "/lgsp/v1", nowhere, "/ndxp/v1", &[]);
    for (route, upstream) in brokered {
        let old = format!(
            "upstream = \"https://localhost:{}\"\nrewrite = \"/ndxp/v1/{route}\"\n",
            nowhere.port()
        );
        assert!(text.contains(&old), "no route {route}");
        text = text.replacen(
            &old,
            &format!("upstream = \"{upstream}\"\n{route_extra}\n"),
            1,
        );
    }
    text.push_str(DELIVERY);
    text
}

/// An LGSP hop whose HoSoCBCCVC route publishes to `upstream`.
async fn gateway(pki: &TestPki, upstream: &str, route_extra: &str) -> lgsp_proxy::Gateway {
    let text = config(pki, &[("HoSoCBCCVC", upstream)], route_extra).await;
    lgsp_proxy::Gateway::start(&parse(pki, &text))
        .await
        .expect("gateway")
}

/// POSTs the sample packet to the HoSoCBCCVC route of `g`'s LGSP hop under `key`.
async fn post_packet(client: &TestClient, g: &lgsp_proxy::Gateway, key: &str) -> Answer {
    client
        .send(
            "POST",
            &hop_url(g, "lgsp", "/lgsp/v1/HoSoCBCCVC"),
            &headers(key),
            &packet(),
        )
        .await
        .expect("sent")
}

fn packet() -> String {
    sample("valid/HoSoCBCCVC-02-toi-thieu.xml")
}

fn headers(key: &str) -> Vec<(&str, &str)> {
    vec![
        ("x-api-key", KEY_H29),
        ("content-type", "application/xml"),
        ("idempotency-key", key),
    ]
}

/// Every message of a stream: (Nats-Msg-Id, x-lgsp-client, payload).
async fn stored(js: &jetstream::Context, name: &str) -> Vec<(String, String, Vec<u8>)> {
    let mut s = js.get_stream(name).await.expect("stream");
    let n = s.info().await.expect("info").state.messages;
    let consumer = s
        .create_consumer(jetstream::consumer::pull::Config::default())
        .await
        .expect("consumer");
    let mut out = Vec::new();
    while (out.len() as u64) < n {
        let mut batch = consumer
            .fetch()
            .max_messages(500)
            .expires(Duration::from_secs(1))
            .messages()
            .await
            .expect("fetch");
        let before = out.len();
        while let Some(Ok(m)) = batch.next().await {
            let h = |k: &str| {
                m.headers
                    .as_ref()
                    .and_then(|h| h.get(k))
                    .map(|v| v.to_string())
                    .unwrap_or_default()
            };
            out.push((h("Nats-Msg-Id"), h("x-lgsp-client"), m.payload.to_vec()));
        }
        assert!(
            out.len() > before,
            "the stream holds {n} messages, read {}",
            out.len()
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nats_route_answers_202_once_jetstream_confirmed_and_a_resend_is_answered_from_the_journal()
 {
    let Some((url, addr)) = test_broker("LGSP_TEST_NATS_URL") else {
        return;
    };
    let (js, name, subject) = test_stream(&url, "LGSPE2E", "lgspe2e.").await;
    let pki = TestPki::new();
    let g = gateway(&pki, &format!("nats://{addr}/{subject}.HoSoCBCCVC"), "").await;
    let client = TestClient::new(&pki, Some(AGENCY_OK), false);
    let target = hop_url(&g, "lgsp", "/lgsp/v1/HoSoCBCCVC");
    let first = client
        .send("POST", &target, &headers("2026-12-H29-nats-1"), &packet())
        .await
        .expect("sent");
    assert_eq!(
        first.status,
        202,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    let receipt = first.json();
    let id = first
        .headers
        .get("x-lgsp-message-id")
        .and_then(|v| v.to_str().ok())
        .expect("message id")
        .to_owned();
    assert_eq!(receipt["message_id"], id.as_str());
    assert_eq!(receipt["broker"], "nats");
    assert_eq!(receipt["stream"], name.as_str());
    assert_eq!(receipt["duplicate"], false);

    let again = client
        .send("POST", &target, &headers("2026-12-H29-nats-1"), &packet())
        .await
        .expect("resent");
    assert_eq!(again.status, 202);
    assert_eq!(
        again.headers.get("x-lgsp-replayed").map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    let messages = stored(&js, &name).await;
    assert_eq!(messages.len(), 1, "published once");
    assert_eq!(messages[0].0, id, "Nats-Msg-Id is the message id");
    assert_eq!(
        messages[0].1, "000.00.00.H29",
        "the hop headers travel along"
    );
    assert_eq!(messages[0].2, packet().as_bytes());

    // The journal keeps the broker's confirmation as the receipt.
    let status = client
        .send(
            "GET",
            &hop_url(&g, "lgsp", &format!("/lgsp/v1/messages/{id}")),
            &headers("x"),
            "",
        )
        .await
        .expect("status");
    assert_eq!(status.status, 200);
    let m = status.json();
    assert_eq!(m["status"], "delivered", "{m}");
    assert_eq!(m["receipt"]["stream"], name.as_str(), "{m}");
    let confirmed = "lgsp_broker_publish_total{broker=\"nats\",hop=\"lgsp\",outcome=\"confirmed\",route=\"HoSoCBCCVC\"}";
    assert_eq!(metric(&g, confirmed), 1.0);

    // The integrator's probe sees the broker's confirmation at the end of its round trip.
    let report = lgsp_probe::probe(&lgsp_probe::ProbeOptions {
        url: hop_url(&g, "lgsp", "/lgsp/v1"),
        cert: pki.path(&format!("{AGENCY_OK}.pem")),
        key: pki.path(&format!("{AGENCY_OK}.key")),
        ca: pki.path("ca.pem"),
        api_key: KEY_H29.into(),
        sample: Some(
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("schemas/cbccvc/samples/valid/HoSoCBCCVC-01-day-du.xml"),
        ),
        message_type: None,
        timeout: Duration::from_secs(10),
    })
    .await;
    assert!(report.ok, "{report:#?}");
    let round_trip = report
        .steps
        .iter()
        .find(|s| s.name == "round_trip")
        .expect("round trip step");
    assert!(
        round_trip.detail.contains(&format!(
            "published to nats {subject}.HoSoCBCCVC, stream {name}"
        )),
        "{}",
        round_trip.detail
    );
    assert_eq!(stored(&js, &name).await.len(), 2);
    js.delete_stream(&name).await.expect("drop the test stream");
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rabbitmq_route_publishes_persistent_and_an_unroutable_packet_is_a_502() {
    use lapin::options::{
        BasicGetOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeleteOptions,
    };
    use lapin::types::FieldTable;

    let Some((url, addr)) = test_broker("LGSP_TEST_AMQP_URL") else {
        return;
    };
    let (_conn, ch) = amqp_channel(&url).await;
    let exchange = unique_name("lgspe2e.x.");
    let queue = unique_name("lgspe2e.q.");
    ch.exchange_declare(
        exchange.clone().into(),
        lapin::ExchangeKind::Direct,
        ExchangeDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("exchange");
    durable_queue(&ch, &queue).await;
    ch.queue_bind(
        queue.clone().into(),
        exchange.clone().into(),
        "HoSoCBCCVC".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind");
    let userinfo = url
        .split_once("://")
        .and_then(|(_, r)| r.rsplit_once('@'))
        .map_or("guest:guest", |(u, _)| u);

    let pki = TestPki::new();
    let client = TestClient::new(&pki, Some(AGENCY_OK), true);
    let g = gateway(
        &pki,
        &format!("amqp://{userinfo}@{addr}/%2f?exchange={exchange}&routing_key=HoSoCBCCVC"),
        "",
    )
    .await;
    let sent = post_packet(&client, &g, "2026-12-H29-amqp-1").await;
    assert_eq!(sent.status, 202, "{}", String::from_utf8_lossy(&sent.body));
    let id = sent.json()["message_id"]
        .as_str()
        .expect("message id")
        .to_owned();
    let got = ch
        .basic_get(queue.clone().into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
        .expect("the packet is in the queue");
    assert_eq!(
        got.properties.message_id().as_ref().map(|s| s.to_string()),
        Some(id)
    );
    assert_eq!(*got.properties.delivery_mode(), Some(2));
    assert_eq!(got.data, packet().as_bytes());
    g.shutdown().await;

    // A routing key no queue is bound for: the broker returns the packet, the caller hears why.
    let g = gateway(
        &pki,
        &format!("amqp://{userinfo}@{addr}/%2f?exchange={exchange}&routing_key=NoQueue"),
        "",
    )
    .await;
    let refused = post_packet(&client, &g, "2026-12-H29-amqp-2").await;
    assert_eq!(refused.status, 502);
    let problem = refused.json();
    assert_eq!(problem["code"], "broker.unroutable", "{problem}");
    assert!(
        !problem.to_string().contains(&addr.to_string()),
        "the broker's address stays inside"
    );
    let unroutable = "lgsp_broker_publish_total{broker=\"amqp\",hop=\"lgsp\",outcome=\"unroutable\",route=\"HoSoCBCCVC\"}";
    assert_eq!(metric(&g, unroutable), 1.0);
    g.shutdown().await;
    ch.queue_delete(queue.into(), QueueDeleteOptions::default())
        .await
        .expect("drop the test queue");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_queued_nats_route_out_of_reach_for_30s_under_load_delivers_every_packet_once() {
    let Some((url, addr)) = test_broker("LGSP_TEST_NATS_URL") else {
        return;
    };
    let (js, name, subject) = test_stream(&url, "LGSPE2E", "lgspe2e.").await;
    let relay = outage::Relay::start(addr).await;
    let pki = TestPki::new();
    let g = gateway(
        &pki,
        &format!("nats://{}/{subject}.HoSoCBCCVC", relay.addr),
        "delivery = \"queued\"",
    )
    .await;
    let client = TestClient::new(&pki, Some(AGENCY_OK), false);
    let target = hop_url(&g, "lgsp", "/lgsp/v1/HoSoCBCCVC");
    let mut accepted = HashSet::new();
    let mut n = 0;
    let mut send_for = async |d: Duration, accepted: &mut HashSet<String>| {
        let until = Instant::now() + d;
        while Instant::now() < until {
            n += 1;
            let key = format!("2026-12-H29-outage-{n}");
            let a = client
                .send("POST", &target, &headers(&key), &packet())
                .await
                .expect("sent");
            assert_eq!(a.status, 202, "{}", String::from_utf8_lossy(&a.body));
            accepted.insert(a.json()["message_id"].as_str().expect("id").to_owned());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    send_for(Duration::from_secs(2), &mut accepted).await;
    relay.cut();
    send_for(Duration::from_secs(30), &mut accepted).await;
    relay.restore();
    send_for(Duration::from_secs(2), &mut accepted).await;

    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let held = js
            .get_stream(&name)
            .await
            .expect("stream")
            .info()
            .await
            .expect("info")
            .state
            .messages;
        if held as usize >= accepted.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stream holds {held} of {} accepted packets",
            accepted.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let messages = stored(&js, &name).await;
    let ids: Vec<&String> = messages.iter().map(|m| &m.0).collect();
    let distinct: HashSet<String> = ids.iter().map(|s| (*s).clone()).collect();
    assert_eq!(ids.len(), distinct.len(), "no packet twice");
    assert_eq!(
        distinct, accepted,
        "every accepted packet, and nothing else"
    );
    assert!(
        metric(
            &g,
            "lgsp_broker_publish_total{broker=\"nats\",hop=\"lgsp\",outcome=\"confirmed\",route=\"HoSoCBCCVC\"}"
        ) >= 1.0
    );
    js.delete_stream(&name).await.expect("drop the test stream");
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn check_config_connect_reaches_each_broker_and_names_the_missing_exchange_by_line() {
    let (Some((nats_url, nats)), Some((amqp_url, amqp))) = (
        test_broker("LGSP_TEST_NATS_URL"),
        test_broker("LGSP_TEST_AMQP_URL"),
    ) else {
        return;
    };
    let (js, name, subject) = test_stream(&nats_url, "LGSPE2E", "lgspe2e.").await;
    let userinfo = amqp_url
        .split_once("://")
        .and_then(|(_, r)| r.rsplit_once('@'))
        .map_or("guest:guest", |(u, _)| u);
    let missing = unique_name("lgspe2e.missing.");
    let pki = TestPki::new();
    let nats_target = format!("nats://{nats}/{subject}.HoSoCBCCVC");
    let amqp_target =
        format!("amqp://{userinfo}@{amqp}/%2f?exchange={missing}&routing_key=BienChe");
    let text = config(
        &pki,
        &[("HoSoCBCCVC", &nats_target), ("BienChe", &amqp_target)],
        "",
    )
    .await;
    std::fs::write(pki.dir().join("brokers.toml"), &text).expect("config written");
    let out = tokio::task::spawn_blocking({
        let dir = pki.dir().to_owned();
        move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_lgsp-gateway"))
                .args([
                    "check-config",
                    "brokers.toml",
                    "--connect",
                    "--timeout",
                    "5",
                ])
                .current_dir(dir)
                .output()
                .expect("run check-config")
        }
    })
    .await
    .expect("check-config ran");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the missing exchange fails the check:\n{stdout}{stderr}"
    );
    let reached = format!("✓ hop lgsp → nats {nats} {subject}.HoSoCBCCVC");
    assert!(stdout.contains(&reached), "{reached:?} not in:\n{stdout}");
    assert!(stdout.contains(&format!("stream {name}")), "{stdout}");
    let line = text
        .lines()
        .position(|l| l.contains(&missing))
        .map(|i| i + 1)
        .expect("the amqp line");
    assert!(
        stderr.contains(&format!("brokers.toml:{line}:")),
        "line {line} not in:\n{stderr}"
    );
    assert!(
        stderr.contains(&format!("exchange `{missing}`")),
        "{stderr}"
    );
    assert!(
        !stderr.contains(&format!("{userinfo}@")),
        "the credentials stay out of the report: {stderr}"
    );
    js.delete_stream(&name).await.expect("drop the test stream");
}

/// A gateway whose hop presents an expired client certificate, publishing to `upstream`, and its answer to one
/// packet: the broker must refuse the hop (502 or 504).
async fn sent_with_an_expired_certificate(
    pki: &TestPki,
    client: &TestClient,
    upstream: &str,
    key: &str,
) -> (lgsp_proxy::Gateway, Answer) {
    let text = config(pki, &[("HoSoCBCCVC", upstream)], "")
        .await
        .replacen(
            "cert = \"lgsp-client.pem\"",
            &format!("cert = \"{AGENCY_EXPIRED}.pem\""),
            1,
        )
        .replacen(
            "key = \"lgsp-client.key\"",
            &format!("key = \"{AGENCY_EXPIRED}.key\""),
            1,
        );
    let g = lgsp_proxy::Gateway::start(&parse(pki, &text))
        .await
        .expect("gateway");
    let refused = post_packet(client, &g, key).await;
    assert!(
        matches!(refused.status.as_u16(), 502 | 504),
        "{}",
        refused.status
    );
    (g, refused)
}

/// A private `nats-server` with JetStream, TLS and client certificates verified against the test PKI's CA.
async fn tls_nats(pki: &TestPki) -> (Proc, u16, tempfile::TempDir) {
    let store = tempfile::tempdir().expect("store dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let (port_s, store_s) = (port.to_string(), store.path().display().to_string());
    let log = store.path().join("nats.log").display().to_string();
    let server = Proc::spawn(
        "nats-server",
        &[
            "-js",
            "-sd",
            &store_s,
            "-a",
            "127.0.0.1",
            "-p",
            &port_s,
            "-l",
            &log,
            "--tlsverify",
            "--tlscert",
            "ndxp-server.pem",
            "--tlskey",
            "ndxp-server.key",
            "--tlscacert",
            "ca.pem",
        ],
        pki.dir(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "nats-server did not listen: {log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (server, port, store)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nats_tls_route_publishes_with_the_hops_client_certificate() {
    if !tool("nats-server") {
        return;
    }
    let pki = TestPki::new();
    let (_server, port, _store) = tls_nats(&pki).await;
    let admin = async_nats::ConnectOptions::new()
        .add_root_certificates(pki.path("ca.pem"))
        .add_client_certificate(pki.path("ndxp-client.pem"), pki.path("ndxp-client.key"))
        .require_tls(true)
        .connect(format!("tls://localhost:{port}"))
        .await
        .expect("connect to the TLS nats-server");
    let js = jetstream::new(admin);
    js.create_stream(jetstream::stream::Config {
        name: "CBCCVC".into(),
        subjects: vec!["cbccvc.in.>".into()],
        ..Default::default()
    })
    .await
    .expect("stream");

    let g = gateway(
        &pki,
        &format!("nats+tls://localhost:{port}/cbccvc.in.HoSoCBCCVC"),
        "",
    )
    .await;
    let client = TestClient::new(&pki, Some(AGENCY_OK), false);
    let sent = post_packet(&client, &g, "2026-12-H29-tls-1").await;
    assert_eq!(sent.status, 202, "{}", String::from_utf8_lossy(&sent.body));
    assert_eq!(sent.json()["stream"], "CBCCVC");
    assert_eq!(stored(&js, "CBCCVC").await.len(), 1);
    g.shutdown().await;

    // A hop whose certificate the broker does not trust (expired) publishes nothing: a 502, and the stream unchanged.
    let (g, refused) = sent_with_an_expired_certificate(
        &pki,
        &client,
        &format!("nats+tls://localhost:{port}/cbccvc.in.HoSoCBCCVC"),
        "2026-12-H29-tls-2",
    )
    .await;
    assert!(
        refused.json()["code"]
            .as_str()
            .is_some_and(|c| c.starts_with("broker.")),
        "{}",
        refused.json()
    );
    assert_eq!(stored(&js, "CBCCVC").await.len(), 1);
    g.shutdown().await;
}

/// A private RabbitMQ node listening only for AMQPS on a free port, verifying client certificates against the test
/// PKI's CA; killed when dropped. The node runs as the `rabbitmq` user, so its files are copied where it can read
/// them.
struct TlsRabbit {
    port: u16,
    dir: tempfile::TempDir,
    _server: Proc,
}

impl TlsRabbit {
    async fn start(pki: &TestPki) -> TlsRabbit {
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port()
        };
        let (port, dist) = (free(), free());
        let dir = tempfile::tempdir().expect("node dir");
        let d = dir.path().display().to_string();
        for f in ["ca.pem", "ndxp-server.pem", "ndxp-server.key"] {
            std::fs::copy(pki.path(f), dir.path().join(f)).expect("copy");
        }
        std::fs::write(
            dir.path().join("rabbitmq.conf"),
            format!(
                "listeners.tcp = none\nlisteners.ssl.default = {port}\nssl_options.cacertfile = {d}/ca.pem\nssl_options.certfile = {d}/ndxp-server.pem\nssl_options.keyfile = {d}/ndxp-server.key\nssl_options.verify = verify_peer\nssl_options.fail_if_no_peer_cert = true\nloopback_users = none\n"
            ),
        )
        .expect("node config");
        let (ok, out, err) = sh(&format!("chmod -R a+rX {d} && chown -R rabbitmq {d}"));
        assert!(ok, "{out}{err}");
        let node = format!("lgsptest{}@localhost", std::process::id());
        let script = format!(
            "HOME={d} RABBITMQ_NODENAME={node} RABBITMQ_DIST_PORT={dist} RABBITMQ_MNESIA_BASE={d}/mnesia RABBITMQ_LOG_BASE={d}/log RABBITMQ_CONFIG_FILE={d}/rabbitmq.conf RABBITMQ_ENABLED_PLUGINS_FILE={d}/plugins RABBITMQ_PID_FILE={d}/pid exec rabbitmq-server > {d}/out.log 2>&1"
        );
        let server = Proc::spawn("sh", &["-c", &script], dir.path());
        let deadline = Instant::now() + Duration::from_secs(60);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "the TLS RabbitMQ node did not start: {d}/out.log"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        TlsRabbit {
            port,
            dir,
            _server: server,
        }
    }

    /// A channel on the node over TLS, as the NDXP hop's client certificate.
    async fn channel(&self, pki: &TestPki) -> (lapin::Connection, lapin::Channel) {
        let read = |f: &str| std::fs::read(pki.path(f)).expect("pem");
        let tls = lapin::tcp::OwnedTLSConfig {
            identity: Some(lapin::tcp::OwnedIdentity::PKCS8 {
                pem: read("ndxp-client.pem"),
                key: read("ndxp-client.key"),
            }),
            cert_chain: Some(String::from_utf8(read("ca.pem")).expect("utf-8")),
        };
        let conn = lapin::Connection::connect_with_config(
            &format!("amqps://guest:guest@localhost:{}/%2f", self.port),
            lapin::ConnectionProperties::default(),
            tls,
            lapin::runtime::default_runtime().expect("runtime"),
        )
        .await
        .expect("connect over TLS");
        let ch = conn.create_channel().await.expect("channel");
        (conn, ch)
    }
}

impl Drop for TlsRabbit {
    fn drop(&mut self) {
        // The node is beam.smp under the rabbitmq user: stopped by its pid.
        if let Ok(pid) = std::fs::read_to_string(self.dir.path().join("pid")) {
            let _ = std::process::Command::new("kill").arg(pid.trim()).status();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_amqps_route_publishes_with_the_hops_client_certificate() {
    if !tool("rabbitmqctl") {
        return;
    }
    let pki = TestPki::new();
    let node = TlsRabbit::start(&pki).await;
    let (_conn, ch) = node.channel(&pki).await;
    let queue = unique_name("lgsptls.q.");
    durable_queue(&ch, &queue).await;

    let g = gateway(
        &pki,
        &format!(
            "amqps://guest:guest@localhost:{}/%2f?routing_key={queue}",
            node.port
        ),
        "",
    )
    .await;
    let client = TestClient::new(&pki, Some(AGENCY_OK), false);
    let sent = post_packet(&client, &g, "2026-12-H29-amqps-1").await;
    assert_eq!(sent.status, 202, "{}", String::from_utf8_lossy(&sent.body));
    let id = sent.json()["message_id"]
        .as_str()
        .expect("message id")
        .to_owned();
    let got = ch
        .basic_get(
            queue.clone().into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .expect("basic.get")
        .expect("the packet is in the queue");
    assert_eq!(
        got.properties.message_id().as_ref().map(|s| s.to_string()),
        Some(id)
    );
    g.shutdown().await;

    // A hop whose certificate the node does not accept (expired) publishes nothing.
    let (g, _refused) = sent_with_an_expired_certificate(
        &pki,
        &client,
        &format!(
            "amqps://guest:guest@localhost:{}/%2f?routing_key={queue}",
            node.port
        ),
        "2026-12-H29-amqps-2",
    )
    .await;
    let empty = ch
        .basic_get(
            queue.clone().into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .expect("basic.get");
    assert!(
        empty.is_none(),
        "nothing published with a refused certificate"
    );
    g.shutdown().await;
}
