//! Broker sources (`[[consumer]]`) end to end against the machine's NATS (JetStream) and RabbitMQ: packets read
//! from a durable consumer or a queue delivered to the route's upstream over mTLS as the hop, each once, the broker
//! acknowledged only after the upstream took it; a packet refused for good and one that names no agency sent to the
//! dead-letter target with the reason; and a gateway killed (`kill -9`) mid-delivery, whose packet the broker hands
//! out again to its restart, delivered again under the same message id (which the endpoint knows) and acknowledged.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures_util::StreamExt;
use lgsp_testkit::*;

/// Fast retries.
const DELIVERY: &str = "[delivery]\nmax_age = \"10m\"\ninitial_backoff = \"100ms\"\nmax_backoff = \"1s\"\nworkers = 4\nlease = \"12s\"\n";

/// What the endpoint received: per message id, the `x-lgsp-hops` of each arrival.
type Seen = Arc<Mutex<BTreeMap<String, Vec<String>>>>;

/// An endpoint (mTLS, the emulator's certificate) that records each arrival by message id, refuses a body holding
/// `REFUSE` for good (422) and takes the rest (200), knowing a repeated message id as the same delivery.
async fn endpoint(pki: &TestPki, seen: Seen) -> Upstream {
    Upstream::start(pki, move |req: http::Request<lgsp_proxy::body::Body>| {
        let seen = seen.clone();
        async move {
            let id = req
                .headers()
                .get("x-lgsp-message-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let hops = req
                .headers()
                .get("x-lgsp-hops")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let body = lgsp_proxy::body::read_body(req.into_body(), 1 << 20)
                .await
                .unwrap_or_default();
            let duplicate = {
                let mut s = seen.lock().unwrap();
                let arrivals = s.entry(id.clone()).or_default();
                arrivals.push(hops);
                arrivals.len() > 1
            };
            let refused = body.windows(6).any(|w| w == b"REFUSE");
            let (status, text) = if refused {
                (
                    422,
                    r#"{"code":"emulator.refused","detail":"refused for good"}"#.to_owned(),
                )
            } else {
                (
                    200,
                    format!(r#"{{"message_id":"{id}","duplicate":{duplicate}}}"#),
                )
            };
            let mut r = http::Response::new(lgsp_proxy::body::full(text));
            *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
            r
        }
    })
    .await
}

/// An NDXP hop (its route HoSoCBCCVC to `upstream`) with `consumer` appended.
fn ndxp_text(pki: &TestPki, upstream: SocketAddr, consumer: &str) -> String {
    let mut text = hop_config(
        pki,
        "ndxp",
        "/ndxp/v1",
        upstream,
        "/cbccvc/v1",
        &["LGSP-DEV"],
    );
    text.push_str(DELIVERY);
    text.push_str(consumer);
    text
}

fn nats_headers(id: &str, agency: Option<&str>) -> async_nats::HeaderMap {
    let mut h = async_nats::HeaderMap::new();
    h.insert("Nats-Msg-Id", id);
    h.insert("x-lgsp-message-id", id);
    if let Some(a) = agency {
        h.insert("x-lgsp-client", a);
    }
    h.insert("x-lgsp-hops", "lgsp");
    h.insert("x-lgsp-mode", "production");
    h.insert("content-type", "application/xml");
    h
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nats_consumer_delivers_each_packet_once_and_dead_letters_what_cannot_be_delivered() {
    let Some((url, addr)) = test_broker("LGSP_TEST_NATS_URL") else {
        return;
    };
    let (js, input, in_subject) = test_stream(&url, "LGSPIN", "lgspin.").await;
    let (_, dead, dead_subject) = test_stream(&url, "LGSPDEAD", "lgspdead.").await;
    let pki = TestPki::new();
    let seen: Seen = Arc::default();
    let up = endpoint(&pki, seen.clone()).await;
    let consumer = format!(
        "[[consumer]]\nname = \"ndxp-in\"\nhop = \"ndxp\"\nroute = \"HoSoCBCCVC\"\nsource = \"nats://{addr}/{input}?consumer=ndxp-in\"\ndead_letter = \"nats://{addr}/{dead_subject}.HoSoCBCCVC\"\nmax_in_flight = 8\n"
    );
    // The route takes packets up to 2 KiB: the bound holds for broker packets too.
    let text = ndxp_text(&pki, up.addr, &consumer).replacen(
        "max_body_bytes = 1048576",
        "max_body_bytes = 2048",
        1,
    );
    let g = lgsp_proxy::Gateway::start(&parse(&pki, &text))
        .await
        .expect("gateway");
    // check-config --connect reaches the source and the dead-letter target.
    let path = write(pki.dir(), "ndxp.toml", &text);
    let (ok, out, err) = tokio::task::block_in_place(|| {
        sh(&format!(
            "cd {} && {} check-config {path} --connect --timeout 5",
            pki.dir().display(),
            env!("CARGO_BIN_EXE_lgsp-gateway")
        ))
    });
    assert!(ok, "{out}{err}");
    assert!(
        out.contains(&format!(
            "✓ consumer ndxp-in (ndxp) ← nats {addr}: stream {input}"
        )),
        "{out}"
    );
    assert!(
        out.contains("✓ consumer ndxp-in dead letters → nats"),
        "{out}"
    );

    let packet = sample("valid/HoSoCBCCVC-02-toi-thieu.xml");
    let n = 20;
    for i in 0..n {
        let id = format!("in-{i}");
        js.publish_with_headers(
            format!("{in_subject}.HoSoCBCCVC"),
            nats_headers(&id, Some("000.00.00.H29")),
            packet.clone().into(),
        )
        .await
        .expect("publish")
        .await
        .expect("stored");
    }
    js.publish_with_headers(
        format!("{in_subject}.HoSoCBCCVC"),
        nats_headers("refused-1", Some("000.00.00.H29")),
        "<REFUSE/>".into(),
    )
    .await
    .expect("publish")
    .await
    .expect("stored");
    js.publish_with_headers(
        format!("{in_subject}.HoSoCBCCVC"),
        nats_headers("anonymous-1", None),
        packet.clone().into(),
    )
    .await
    .expect("publish")
    .await
    .expect("stored");

    js.publish_with_headers(
        format!("{in_subject}.HoSoCBCCVC"),
        nats_headers("big-1", Some("000.00.00.H29")),
        format!("<HoSoCBCCVC>{}</HoSoCBCCVC>", "x".repeat(4096)).into(),
    )
    .await
    .expect("publish")
    .await
    .expect("stored");

    let dead_count = || async {
        js.get_stream(&dead)
            .await
            .expect("dead stream")
            .info()
            .await
            .expect("info")
            .state
            .messages
    };
    eventually(
        "every packet delivered or dead-lettered",
        Duration::from_secs(60),
        || async {
            let delivered = seen
                .lock()
                .unwrap()
                .keys()
                .filter(|k| k.starts_with("in-"))
                .count();
            delivered == n && dead_count().await == 3
        },
    )
    .await;
    {
        let s = seen.lock().unwrap();
        for i in 0..n {
            let arrivals = &s[&format!("in-{i}")];
            assert_eq!(arrivals.len(), 1, "in-{i} delivered once: {arrivals:?}");
            assert_eq!(
                arrivals[0], "lgsp, ndxp",
                "the hop path runs on through this hop"
            );
        }
        assert!(
            !s.contains_key("big-1"),
            "a packet over the route's bound is not delivered"
        );
        assert!(
            !s.contains_key("anonymous-1"),
            "a packet that names no agency is not delivered"
        );
    }
    // The dead letters, each with its reason.
    let s = js.get_stream(&dead).await.expect("dead stream");
    let c = s
        .create_consumer(jetstream::consumer::pull::Config::default())
        .await
        .expect("consumer");
    let mut batch = c
        .fetch()
        .max_messages(10)
        .expires(Duration::from_secs(1))
        .messages()
        .await
        .expect("fetch");
    let mut reasons = BTreeMap::new();
    while let Some(Ok(m)) = batch.next().await {
        let h = m.headers.clone().unwrap_or_default();
        reasons.insert(
            h.get("x-lgsp-message-id")
                .map(|v| v.to_string())
                .unwrap_or_default(),
            h.get("x-lgsp-dead-reason")
                .map(|v| v.to_string())
                .unwrap_or_default(),
        );
    }
    assert!(reasons["refused-1"].contains("422"), "{reasons:?}");
    assert!(reasons["anonymous-1"].contains("agency"), "{reasons:?}");
    assert!(reasons["big-1"].contains("max_body_bytes"), "{reasons:?}");
    let count = |outcome: &str| {
        metric(
            &g,
            &format!("lgsp_consumer_packets_total{{consumer=\"ndxp-in\",outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!(count("delivered"), n as f64);
    assert_eq!(count("dead_lettered"), 2.0);
    assert_eq!(count("unreadable"), 1.0);
    // Acknowledged: nothing is handed out again.
    let input_stream = js.get_stream(&input).await.expect("input stream");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut durable: jetstream::consumer::PullConsumer = input_stream
            .get_consumer("ndxp-in")
            .await
            .expect("durable consumer");
        let i = durable.info().await.expect("consumer info");
        if i.num_pending == 0 && i.num_ack_pending == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "not acknowledged: {i:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    g.shutdown().await;
    for name in [&input, &dead] {
        js.delete_stream(name).await.expect("drop the test stream");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_killed_mid_delivery_has_rabbitmq_hand_the_packet_to_its_restart_under_the_same_id()
 {
    use lapin::options::{BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions};
    use lapin::types::{AMQPValue, FieldTable};

    let Some((url, addr)) = test_broker("LGSP_TEST_AMQP_URL") else {
        return;
    };
    let (_conn, ch) = amqp_channel(&url).await;
    let (queue, dlq) = (unique_name("lgspcrash.in."), unique_name("lgspcrash.dead."));
    for q in [&queue, &dlq] {
        durable_queue(&ch, q).await;
    }
    let userinfo = url
        .split_once("://")
        .and_then(|(_, r)| r.rsplit_once('@'))
        .map_or("guest:guest", |(u, _)| u)
        .to_owned();

    // The endpoint holds the first arrival of a message id (the gateway is killed while it waits) and takes the
    // next; it knows a repeated id as the same delivery, as the national endpoint does.
    let pki = TestPki::new();
    let seen: Seen = Arc::default();
    let arrived = Arc::new(tokio::sync::Notify::new());
    let up = {
        let (seen, arrived) = (seen.clone(), arrived.clone());
        Upstream::start(&pki, move |req: http::Request<lgsp_proxy::body::Body>| {
            let (seen, arrived) = (seen.clone(), arrived.clone());
            async move {
                let id = req
                    .headers()
                    .get("x-lgsp-message-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let first = {
                    let mut s = seen.lock().unwrap();
                    let arrivals = s.entry(id.clone()).or_default();
                    arrivals.push(String::new());
                    arrivals.len() == 1
                };
                if first {
                    arrived.notify_one();
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                http::Response::new(lgsp_proxy::body::full(format!(
                    r#"{{"message_id":"{id}","duplicate":{}}}"#,
                    !first
                )))
            }
        })
        .await
    };
    let consumer = format!(
        "[[consumer]]\nname = \"ndxp-in\"\nhop = \"ndxp\"\nroute = \"HoSoCBCCVC\"\nsource = \"amqp://{userinfo}@{addr}/%2f?queue={queue}\"\ndead_letter = \"amqp://{userinfo}@{addr}/%2f?routing_key={dlq}\"\n"
    );
    let dir = pki.dir().to_owned();
    let path = write(&dir, "ndxp.toml", &ndxp_text(&pki, up.addr, &consumer));
    let bin = env!("CARGO_BIN_EXE_lgsp-gateway");
    let start = || {
        let mut p = Proc::spawn(bin, &["run", "--config", &path], &dir);
        tokio::task::block_in_place(|| p.port("listening: hop ndxp"));
        p
    };
    let first = start();

    let mut headers = FieldTable::default();
    for (k, v) in [
        ("x-lgsp-client", "000.00.00.H29"),
        ("x-lgsp-hops", "lgsp"),
        ("x-lgsp-mode", "production"),
    ] {
        headers.insert(k.into(), AMQPValue::LongString(v.into()));
    }
    ch.basic_publish(
        "".into(),
        queue.clone().into(),
        BasicPublishOptions::default(),
        sample("valid/HoSoCBCCVC-02-toi-thieu.xml").as_bytes(),
        lapin::BasicProperties::default()
            .with_message_id("crash-1".into())
            .with_delivery_mode(2)
            .with_content_type("application/xml".into())
            .with_headers(headers),
    )
    .await
    .expect("publish");
    tokio::time::timeout(Duration::from_secs(30), arrived.notified())
        .await
        .expect("the first delivery reached the endpoint");
    let killed = std::process::Command::new("kill")
        .args(["-9", &first.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    drop(first);

    let second = start();
    eventually(
        "the packet delivered again after the restart",
        Duration::from_secs(60),
        || async {
            seen.lock()
                .unwrap()
                .get("crash-1")
                .is_some_and(|a| a.len() == 2)
        },
    )
    .await;
    // Acknowledged once delivered: with the gateway stopped, nothing of it is back in the queue.
    eventually(
        "the redelivery acknowledged",
        Duration::from_secs(30),
        || async {
            let q = ch
                .queue_declare(
                    queue.clone().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .expect("queue");
            q.message_count() == 0 && q.consumer_count() == 1
        },
    )
    .await;
    assert!(second.terminate(), "the restarted gateway stops cleanly");
    let q = ch
        .queue_declare(
            queue.clone().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue");
    assert_eq!(q.message_count(), 0, "nothing left unacknowledged");
    {
        let s = seen.lock().unwrap();
        assert_eq!(s.len(), 1, "one message id at the endpoint: {s:?}");
    }
    for q in [queue, dlq] {
        ch.queue_delete(q.into(), QueueDeleteOptions::default())
            .await
            .expect("drop the test queue");
    }
}

/// The kinds of upstream answer the three delivery paths are judged on; a packet carries its kind in its body.
const KINDS: [&str; 8] = [
    "ok", "long", "reject", "inprog", "busy", "down", "slow", "reset",
];

/// An endpoint answering each packet as the kind its body names: 200; 200 with a 100 KiB answer; 422 with a
/// problem; 409 `idempotency.in_progress`; 429 and 503 with Retry-After; no head within the route's timeout; a 200
/// whose body breaks. Arrivals counted per message id.
async fn scripted(pki: &TestPki, seen: Seen) -> Upstream {
    Upstream::start(pki, move |req: http::Request<lgsp_proxy::body::Body>| {
        let seen = seen.clone();
        async move {
            let id = req
                .headers()
                .get("x-lgsp-message-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let body = lgsp_proxy::body::read_body(req.into_body(), 1 << 20)
                .await
                .unwrap_or_default();
            let text = String::from_utf8_lossy(&body).into_owned();
            let kind = KINDS
                .iter()
                .find(|k| text.contains(&format!("ANSWER-{k}-")))
                .copied()
                .unwrap_or("ok");
            seen.lock()
                .unwrap()
                .entry(id)
                .or_default()
                .push(kind.to_owned());
            let answer =
                |status: u16, retry: Option<&'static str>, body: lgsp_proxy::body::Body| {
                    let mut r = http::Response::new(body);
                    *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                    if let Some(s) = retry {
                        r.headers_mut()
                            .insert("retry-after", http::HeaderValue::from_static(s));
                    }
                    r.headers_mut().insert(
                        "content-type",
                        http::HeaderValue::from_static("application/json"),
                    );
                    r
                };
            let problem = |code: &str| {
                lgsp_proxy::body::full(format!("{{\"code\":\"{code}\",\"detail\":\"scripted\"}}"))
            };
            match kind {
                "long" => answer(200, None, lgsp_proxy::body::full(vec![b' '; 100 * 1024])),
                "reject" => answer(422, None, problem("emulator.refused")),
                "inprog" => answer(409, Some("1"), problem("idempotency.in_progress")),
                "busy" => answer(429, Some("1"), problem("ratelimit.exceeded")),
                "down" => answer(503, Some("1"), problem("overload.shed")),
                "slow" => {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    answer(200, None, lgsp_proxy::body::full("{}"))
                }
                "reset" => {
                    let frames: Vec<
                        Result<hyper::body::Frame<bytes::Bytes>, lgsp_proxy::body::BoxError>,
                    > = vec![
                        Ok(hyper::body::Frame::data(bytes::Bytes::from_static(
                            b"{\"receipt",
                        ))),
                        Err("the connection was reset".into()),
                    ];
                    let broken =
                        http_body_util::StreamBody::new(futures_util::stream::iter(frames));
                    answer(200, None, lgsp_proxy::body::boxed(broken))
                }
                _ => answer(200, None, lgsp_proxy::body::full("{\"message_id\":\"x\"}")),
            }
        }
    })
    .await
}

/// One judge for three paths: the same upstream answers, given to a direct request, a queued packet and a packet a
/// broker consumer reads, end as the README's table says for each — delivered (2xx, also too long to keep),
/// rejected (a 4xx problem), or again (409 in progress, 429, 503, a timeout, a broken answer): a direct request
/// then fails (its sender resends), a queued packet is tried again until it expires, a consumed one is handed back
/// to its broker and delivered again.
#[tokio::test(flavor = "multi_thread")]
async fn one_judge_decides_the_same_for_direct_queued_and_consumed_packets() {
    let broker = test_broker("LGSP_TEST_NATS_URL");
    let pki = TestPki::new();
    let seen: Seen = Arc::default();
    let up = scripted(&pki, seen.clone()).await;
    // HoSoCBCCVC direct, BienDong queued (expiring after 4 s of fast retries), both to the scripted endpoint,
    // within a 1 s timeout; the consumer reads into HoSoCBCCVC.
    let mut text = hop_config(
        &pki,
        "ndxp",
        "/ndxp/v1",
        up.addr,
        "/cbccvc/v1",
        &["LGSP-DEV"],
    )
    .replace("\ntimeout = \"5s\"\n", "\ntimeout = \"1s\"\n")
    .replacen(
        "message_type = \"BienDong\"\n",
        "message_type = \"BienDong\"\ndelivery = \"queued\"\n",
        1,
    );
    text.push_str(
        "[delivery]\nmax_age = \"4s\"\ninitial_backoff = \"100ms\"\nmax_backoff = \"500ms\"\nworkers = 8\nlease = \"3s\"\n",
    );
    let stream = match &broker {
        Some((url, addr)) => {
            let (js, input, in_subject) = test_stream(url, "LGSPJUDGE", "lgspjudge.").await;
            let (_, _, dead_subject) = test_stream(url, "LGSPJUDGEDEAD", "lgspjudgedead.").await;
            text.push_str(&format!(
                "[[consumer]]\nname = \"judged\"\nhop = \"ndxp\"\nroute = \"HoSoCBCCVC\"\nsource = \"nats://{addr}/{input}?consumer=judged\"\ndead_letter = \"nats://{addr}/{dead_subject}.HoSoCBCCVC\"\nmax_in_flight = 16\n"
            ));
            Some((js, in_subject))
        }
        None => None,
    };
    let journal = journal_url_in(&text);
    let g = lgsp_proxy::Gateway::start(&parse(&pki, &text))
        .await
        .expect("gateway");
    // The packets' bodies carry their kind; the NDXP hop takes them from a peer as the LGSP would send them.
    let client = TestClient::new(&pki, Some("lgsp-client"), false);
    // The kind in a comment before the root's end tag: the packet stays valid.
    let packet = |kind: &str, path: &str| {
        let file = if path == "queued" {
            "valid/BienDong-01-dieu-dong.xml"
        } else {
            "valid/HoSoCBCCVC-02-toi-thieu.xml"
        };
        let mut body = sample(file);
        let end = body.rfind("</").expect("an end tag");
        body.insert_str(end, &format!("<!-- ANSWER-{kind}-{path} -->"));
        body
    };
    let mut ids: BTreeMap<(&str, &str), String> = BTreeMap::new();
    for kind in KINDS {
        for (path, route) in [("direct", "HoSoCBCCVC"), ("queued", "BienDong")] {
            let id = lgsp_proxy::headers::MessageId::new().0;
            let url = hop_url(&g, "ndxp", &format!("/ndxp/v1/{route}"));
            let body = packet(kind, path);
            let mut h = vec![
                ("x-lgsp-client", H29),
                ("x-lgsp-message-id", id.as_str()),
                ("content-type", "application/xml"),
            ];
            let signature = peer_signature(&pki, "lgsp-client", "POST", &url, &h, body.as_bytes());
            h.extend(signature.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            let a = client.send("POST", &url, &h, &body).await.unwrap();
            assert!(a.status.as_u16() >= 200, "{kind} {path}: {}", a.status);
            ids.insert((kind, path), id);
        }
        if let Some((js, subject)) = &stream {
            let id = lgsp_proxy::headers::MessageId::new().0;
            js.publish_with_headers(
                format!("{subject}.HoSoCBCCVC"),
                nats_headers(&id, Some(H29)),
                packet(kind, "consumed").into(),
            )
            .await
            .expect("publish")
            .await
            .expect("stored");
            ids.insert((kind, "consumed"), id);
        }
    }
    // What each path's journal says in the end, and how often the endpoint was asked.
    let want = |kind: &str, path: &str| -> &'static str {
        match (kind, path) {
            ("ok" | "long", _) => "delivered",
            ("reject", _) => "rejected",
            (_, "direct") => "failed",
            (_, "queued") => "expired",
            _ => "failed",
        }
    };
    eventually("every path settles", Duration::from_secs(60), || async {
        let records = journal_records(&journal).await;
        ids.iter().all(|((kind, path), id)| {
            let last = records.iter().rfind(|r| {
                r["record"]["message_id"] == id.as_str() && r["record"]["kind"] == "outcome"
            });
            let status = last
                .and_then(|r| r["record"]["status"].as_str())
                .unwrap_or("none");
            // A consumed packet the judge sends back is delivered again: its outcome stays failed, asked again.
            let again = path == &"consumed" && want(kind, path) == "failed";
            let asked = seen.lock().unwrap().get(id).map_or(0, Vec::len);
            status == want(kind, path) && (!again || asked >= 2)
        })
    })
    .await;
    // Again means asked again where the path retries, and once where the sender does.
    let asked = |kind: &str, path: &str| {
        seen.lock()
            .unwrap()
            .get(&ids[&(kind, path)])
            .map_or(0, Vec::len)
    };
    for kind in KINDS {
        assert_eq!(asked(kind, "direct"), 1, "{kind} direct");
        let queued = asked(kind, "queued");
        match want(kind, "queued") {
            "expired" => assert!(queued >= 2, "{kind} queued asked {queued} times"),
            _ => assert_eq!(queued, 1, "{kind} queued"),
        }
    }
    if stream.is_none() {
        eprintln!("the consumed path was skipped: LGSP_TEST_NATS_URL is not set");
    }
    g.shutdown().await;
}
