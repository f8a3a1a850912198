//! The README's error tables against the gateway: one request for every row — over real TLS where a request can
//! reach it — checking its status, `code` and `class` (or, at the token endpoint, OAuth's `error`); and every code
//! the sources can answer is in a table. The tables and the code cannot drift apart.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use lgsp_testkit::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY_H29: &str = "lgsp_dev_000.00.00.H29_production";
const TRIAL_H29: &str = "lgsp_dev_000.00.00.H29_trial";
const KEY_H26: &str = "lgsp_dev_000.00.00.H26_production";
/// A key of H29's the failing gateway retired at the start of 2020.
const KEY_RETIRED: &str = "lgsp_retired_000.00.00.H29";
/// The identity the LGSP hop presents to the NDXP (a listed peer there).
const LGSP_PEER: &str = "lgsp-client";

/// One row of an error table.
#[derive(Debug)]
struct Row {
    code: String,
    status: u16,
    /// `class` for problems, OAuth's `error` at the token endpoint.
    kind: String,
}

/// The rows of the README table whose header starts with `header`.
fn table(header: &str) -> Vec<Row> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let start = readme
        .find(header)
        .unwrap_or_else(|| panic!("README has no table {header:?}"));
    readme[start..]
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            Row {
                code: cells[1].trim_matches('`').to_owned(),
                status: cells[2].parse().unwrap_or_else(|_| panic!("status of {l}")),
                kind: cells[3].trim_matches('`').to_owned(),
            }
        })
        .collect()
}

/// An answer: status and JSON body.
struct Seen {
    status: u16,
    body: Value,
}

impl From<Answer> for Seen {
    fn from(a: Answer) -> Seen {
        Seen {
            status: a.status.as_u16(),
            body: serde_json::from_slice(&a.body).unwrap_or(Value::Null),
        }
    }
}

/// `text` with `edit` applied to its `[[hop.route]]` named `name`.
fn edit_route(text: &str, name: &str, edit: impl Fn(&str) -> String) -> String {
    const MARK: &str = "[[hop.route]]\n";
    let blocks: Vec<String> = text
        .split(MARK)
        .map(|b| {
            if b.starts_with(&format!("name = \"{name}\"\n")) {
                edit(b)
            } else {
                b.to_owned()
            }
        })
        .collect();
    blocks.join(MARK)
}

/// A route block that forwards to `to` and checks no packet.
fn upstream(block: &str, to: SocketAddr) -> String {
    block
        .lines()
        .filter(|l| !l.starts_with("message_type"))
        .map(|l| {
            if l.starts_with("upstream = ") {
                format!("upstream = \"https://localhost:{}\"", to.port())
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// A TLS server (with the certificate `stem`) that reads a request head and answers bytes that are not HTTP.
async fn garbage_upstream(pki: &TestPki, stem: &str) -> SocketAddr {
    let cfg = parse(pki, &emulator_config(pki));
    let mut server = cfg.emulator.expect("emulator").tls;
    server.cert.path = pki.path(&format!("{stem}.pem"));
    server.key.path = pki.path(&format!("{stem}.key"));
    let tls = lgsp_tls::server_config(&server).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.clone());
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"NOT HTTP AT ALL\r\n\r\n").await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// Writes `request` over TLS as `identity` and returns the status and body of the answer.
/// One plain HTTP/1.1 request to an admin listener; `headers` are written as given (Host included).
async fn admin(addr: SocketAddr, method: &str, path: &str, headers: &[String]) -> Seen {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("content-length: 0\r\nconnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tcp.read_to_end(&mut out).await;
    seen_in(&out)
}

async fn raw(pki: &TestPki, addr: SocketAddr, identity: &str, request: &[u8]) -> Seen {
    let tls = pki.client_tls(Some(identity), &[b"http/1.1"]);
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut s = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    seen_in(&out)
}

/// Status and problem document of a raw HTTP/1.1 answer.
fn seen_in(out: &[u8]) -> Seen {
    let text = String::from_utf8_lossy(out);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    // The answer is one JSON document, possibly chunked: take the object.
    let json = body
        .find('{')
        .zip(body.rfind('}'))
        .map_or("", |(a, b)| &body[a..=b]);
    Seen {
        status,
        body: serde_json::from_str(json).unwrap_or(Value::Null),
    }
}

/// Every gateway the scenarios need: the chain, plus LGSP hops whose routes fail in each way upstream, that limit
/// and shed, and whose rate-limit store is down.
struct World {
    chain: Chain,
    /// Routes: HoSoCBCCVC → a closed port, BienChe → a TLS server whose certificate no trusted CA issued,
    /// PheDuyetDuLieu → a TLS server that does not speak HTTP, BienDong → `silent`, an upstream that never answers (300 ms timeout); BienNhan only for H26.
    failing: lgsp_proxy::Gateway,
    /// One request in flight per agency; the dry run limited to one per hour; upstream: `held`.
    limited: lgsp_proxy::Gateway,
    held: HeldUpstream,
    /// BienDong's upstream at `failing`: never answers.
    _silent: HeldUpstream,
    /// The shared rate-limit store unreachable, set to refuse; no admin token.
    refusing: lgsp_proxy::Gateway,
    /// One connection per identity, bodies within 300 ms; receipts from `_foreign`.
    strict: lgsp_proxy::Gateway,
    /// One failed authentication allowed per identity and address, then one an hour.
    throttled: lgsp_proxy::Gateway,
    _foreign: Upstream,
    /// Journalled routes: BienDong's packets wait at `keeper_held`; its journal is `keeper_journal`.
    keeper: lgsp_proxy::Gateway,
    keeper_held: HeldUpstream,
    keeper_journal: String,
    /// An agency may hold one packet undelivered; HoSoCBCCVC queued to a closed port.
    quota: lgsp_proxy::Gateway,
    /// A journal that wants more free disk than any disk has.
    full: lgsp_proxy::Gateway,
    /// Broker routes: HoSoCBCCVC → NATS at a closed port, BienChe → a "broker" that never speaks (300 ms
    /// timeout), PheDuyetDuLieu → the machine's NATS on a subject no stream takes, BienDong → the machine's RabbitMQ
    /// with a routing key no queue is bound for (the last two only with LGSP_TEST_NATS_URL / LGSP_TEST_AMQP_URL).
    brokers: lgsp_proxy::Gateway,
    _brokers_silent: HeldUpstream,
    /// Why a broker row has no request here, by code.
    broker_skips: Vec<(&'static str, String)>,
    /// An emulator that shares data over NATS at a closed port.
    sharing: lgsp_proxy::Gateway,
}

/// A route block that publishes to the broker at `url` (no rewrite) and checks no packet.
fn broker(block: &str, url: &str) -> String {
    block
        .lines()
        .filter(|l| !l.starts_with("message_type") && !l.starts_with("rewrite"))
        .map(|l| {
            if l.starts_with("upstream = ") {
                format!("upstream = \"{url}\"")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// The broker gateway of [`World`], and the rows it cannot answer on this machine.
async fn broker_world(
    base: &str,
    pki: &TestPki,
) -> (
    lgsp_proxy::Gateway,
    HeldUpstream,
    Vec<(&'static str, String)>,
) {
    let silent = HeldUpstream::start(pki).await;
    let mut skips = Vec::new();
    let mut text = edit_route(base, "HoSoCBCCVC", |b| {
        broker(
            b,
            &format!("nats://127.0.0.1:{}/lgsp.errors", closed_port_sync().port()),
        )
    });
    text = edit_route(&text, "BienChe", |b| {
        broker(
            b,
            &format!("nats://127.0.0.1:{}/lgsp.errors", silent.addr.port()),
        )
        .replace("timeout = \"5s\"", "timeout = \"300ms\"")
    });
    let server = |var: &str| {
        std::env::var(var).ok().map(|u| {
            let rest = u
                .split_once("://")
                .map_or(u.as_str(), |(_, r)| r)
                .to_owned();
            rest.split('/').next().unwrap_or_default().to_owned()
        })
    };
    match server("LGSP_TEST_NATS_URL") {
        Some(hostport) => {
            let subject = format!("lgsp.errors.nostream.{}", std::process::id());
            text = edit_route(&text, "PheDuyetDuLieu", |b| {
                broker(b, &format!("nats://{hostport}/{subject}"))
            });
        }
        None => skips.push(("broker.refused", "LGSP_TEST_NATS_URL is not set".to_owned())),
    }
    match server("LGSP_TEST_AMQP_URL") {
        Some(userinfo_host) => {
            let with_user = if userinfo_host.contains('@') {
                userinfo_host
            } else {
                format!("guest:guest@{userinfo_host}")
            };
            text = edit_route(&text, "BienDong", |b| {
                broker(
                    b,
                    &format!(
                        "amqp://{with_user}/%2f?exchange=amq.direct&routing_key=lgsp.errors.noqueue"
                    ),
                )
            });
        }
        None => skips.push((
            "broker.unroutable",
            "LGSP_TEST_AMQP_URL is not set".to_owned(),
        )),
    }
    text = text.replacen(
        "[[hop.route]]\nname = \"messages\"",
        &format!(
            "[[hop.route]]\nname = \"inbox\"\nmethods = [\"GET\"]\nprefix = \"/lgsp/v1/inbox\"\ninbox = \"nats://127.0.0.1:{}/cbccvc.out\"\nagencies = [\"*\"]\n\n[[hop.route]]\nname = \"messages\"",
            closed_port_sync().port()
        ),
        1,
    );
    let g = lgsp_proxy::Gateway::start(&parse(pki, &text))
        .await
        .unwrap();
    (g, silent, skips)
}

impl World {
    async fn start() -> World {
        let chain = Chain::start().await;
        let ndxp = chain.ndxp.hop_addr("ndxp").unwrap();
        let pki = &chain.pki;
        let held = HeldUpstream::start(pki).await;
        // Its own never-answering upstream, so a timed-out request left waiting there cannot take `held`'s
        // release or leave an arrival behind.
        let silent = HeldUpstream::start(pki).await;
        let base = hop_config(pki, "lgsp", "/lgsp/v1", ndxp, "/ndxp/v1", &[]);

        let mut text = edit_route(&base, "HoSoCBCCVC", |b| upstream(b, closed_port_sync()));
        let untrusted = garbage_upstream(pki, AGENCY_WRONG_CA).await;
        text = edit_route(&text, "BienChe", |b| upstream(b, untrusted));
        let garbage = garbage_upstream(pki, "emulator-server").await;
        text = edit_route(&text, "PheDuyetDuLieu", |b| upstream(b, garbage));
        text = edit_route(&text, "BienDong", |b| {
            upstream(b, silent.addr).replace("timeout = \"5s\"", "timeout = \"300ms\"")
        });
        text = edit_route(&text, "BienNhan", |b| {
            b.replace("agencies = [\"*\"]", "agencies = [\"000.00.00.H26\"]")
        });
        // H29 also holds a key retired at the end of a rotation.
        let h29 = text.find(&format!("code = \"{H29}\"")).expect("H29");
        let keys = h29 + text[h29..].find("keys = [\n").expect("H29's keys") + "keys = [\n".len();
        text.insert_str(
            keys,
            &format!(
                "    {{ sha256 = \"{}\", kind = \"production\", label = \"retired\", not_after = \"2020-01-01\" }},\n",
                lgsp_auth::sha256_hex(KEY_RETIRED)
            ),
        );
        let failing = lgsp_proxy::Gateway::start(&parse(pki, &text))
            .await
            .unwrap();

        let mut text = edit_route(&base, "BienChe", |b| upstream(b, held.addr));
        text = edit_route(&text, "validate", |b| {
            b.replacen(
                "dry_run = true\n",
                "dry_run = true\nrate = \"1/h\"\nburst = 1\n",
                1,
            )
        });
        text.push_str("\n[overload]\nmax_in_flight_per_agency = 1\n");
        let limited = lgsp_proxy::Gateway::start(&parse(pki, &text))
            .await
            .unwrap();

        let redis = closed_port().await;
        let mut text = edit_route(&base, "validate", |b| {
            b.replacen(
                "dry_run = true\n",
                "dry_run = true\nrate = \"10/s\"\nburst = 10\n",
                1,
            )
        });
        text.push_str(&format!(
            "\n[ratelimit]\nbackend = \"redis://127.0.0.1:{}\"\non_backend_failure = \"refuse\"\ntimeout = \"250ms\"\n",
            redis.port()
        ));
        // And no admin token: reload over HTTP is off.
        let token_line = format!("token_file = \"{}/admin.token\"\n", pki.dir().display());
        assert!(text.contains(&token_line));
        let text = text.replacen(&token_line, "", 1);
        let refusing = lgsp_proxy::Gateway::start(&parse(pki, &text))
            .await
            .unwrap();
        // Its receipts come from an upstream that answers every look-up with H26's record.
        let foreign = Upstream::start(pki, |_req| async {
            let mut r = http::Response::new(lgsp_proxy::body::full(
                r#"{"message_id":"0190a5a4-0000-7000-8000-000000000009","agency":"000.00.00.H26"}"#,
            ));
            r.headers_mut().insert(
                "content-type",
                http::HeaderValue::from_static("application/json"),
            );
            r
        })
        .await;
        let text = edit_route(&base, "BienNhan", |b| upstream(b, foreign.addr));
        let text = format!(
            "{text}\n[hop.http]\nmax_connections_per_agency = 1\nbody_read_timeout = \"300ms\"\n"
        );
        let strict = lgsp_proxy::Gateway::start(&parse(pki, &text))
            .await
            .unwrap();
        let text = format!("{base}\n[auth]\nfailure_rate = \"1/h\"\nfailure_burst = 1\n");
        let throttled = lgsp_proxy::Gateway::start(&parse(pki, &text))
            .await
            .unwrap();
        let keeper_held = HeldUpstream::start(pki).await;
        let keeper_text = hop_config(pki, "lgsp", "/lgsp/v1", ndxp, "/ndxp/v1", &[]);
        let keeper_text = edit_route(&keeper_text, "BienDong", |b| {
            b.replace(
                &format!("upstream = \"https://localhost:{}\"", ndxp.port()),
                &format!(
                    "upstream = \"https://localhost:{}\"",
                    keeper_held.addr.port()
                ),
            )
        });
        let keeper = lgsp_proxy::Gateway::start(&parse(pki, &keeper_text))
            .await
            .unwrap();
        let closed = closed_port_sync();
        let text = queued(&edit_route(&base, "HoSoCBCCVC", |b| {
            // Still a packet route (journalled), its upstream gone.
            b.lines()
                .map(|l| {
                    if l.starts_with("upstream = ") {
                        format!("upstream = \"https://localhost:{}\"", closed.port())
                    } else {
                        l.to_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n")
                + "\n"
        }))
        .replacen(
            "min_free_disk = \"1MiB\"\n",
            "min_free_disk = \"1MiB\"\nagency_quota = { packets = 1 }\n",
            1,
        );
        let quota = lgsp_proxy::Gateway::start(&parse(pki, &text))
            .await
            .unwrap();
        let text = base.replacen(
            "min_free_disk = \"1MiB\"\n",
            "min_free_disk = \"1000000TB\"\n",
            1,
        );
        let full = lgsp_proxy::Gateway::start(&parse(pki, &text))
            .await
            .unwrap();
        let (brokers, brokers_silent, broker_skips) = broker_world(&base, pki).await;
        let share = format!(
            "listen = \"127.0.0.1:0\"\nshare = \"nats://127.0.0.1:{}/cbccvc.out\"\n",
            closed_port_sync().port()
        );
        let text = emulator_config(pki).replacen(
            "[emulator]\nlisten = \"127.0.0.1:0\"\n",
            &format!("[emulator]\n{share}"),
            1,
        );
        let sharing = lgsp_proxy::Gateway::start(&parse(pki, &text))
            .await
            .unwrap();
        World {
            sharing,
            brokers,
            _brokers_silent: brokers_silent,
            broker_skips,
            keeper,
            keeper_held,
            keeper_journal: journal_url_in(&keeper_text),
            quota,
            full,
            chain,
            failing,
            limited,
            held,
            _silent: silent,
            refusing,
            strict,
            _foreign: foreign,
            throttled,
        }
    }

    fn client(&self, identity: &str) -> TestClient {
        TestClient::new(&self.chain.pki, Some(identity), false)
    }

    async fn send(
        &self,
        identity: &str,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Seen {
        // A relaying gateway signs what it sends, as every hop does.
        let signature = if identity == LGSP_PEER {
            peer_signature(
                &self.chain.pki,
                identity,
                method,
                url,
                headers,
                body.as_bytes(),
            )
        } else {
            Vec::new()
        };
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        all.extend(signature.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        self.client(identity)
            .send(method, url, &all, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"))
            .into()
    }

    /// A request as the dev LGSP relays it, unsigned or with its signature spoilt.
    async fn relay_spoilt(&self, signed: bool) -> Seen {
        let url = self.ndxp("/ndxp/v1/BienNhan/x");
        let h = [("x-lgsp-client", H29)];
        let mut all: Vec<(String, String)> =
            h.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
        if signed {
            // Signed for H29, then sent naming H26: the signature no longer covers the request.
            all.extend(peer_signature(
                &self.chain.pki,
                LGSP_PEER,
                "GET",
                &url,
                &h,
                b"",
            ));
            all[0].1 = H26.into();
        }
        let all: Vec<(&str, &str)> = all.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        self.client(LGSP_PEER)
            .send("GET", &url, &all, "")
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
            .into()
    }

    /// A packet to `path` of gateway `g`'s LGSP hop as H29.
    async fn post(
        &self,
        g: &lgsp_proxy::Gateway,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Seen {
        self.send(AGENCY_OK, "POST", &hop_url(g, "lgsp", path), headers, body)
            .await
    }

    fn ndxp(&self, path: &str) -> String {
        hop_url(&self.chain.ndxp, "ndxp", path)
    }

    fn sharing_url(&self, path: &str) -> String {
        let addr = self.sharing.emulator.as_ref().map(|e| e.0).unwrap();
        format!("https://localhost:{}{path}", addr.port())
    }

    fn emulator(&self, path: &str) -> String {
        let addr = self.chain.emulator.emulator.as_ref().map(|e| e.0).unwrap();
        format!("https://localhost:{}{path}", addr.port())
    }

    /// The request that answers `code`.
    async fn trigger(&self, code: &str) -> Seen {
        let lgsp = &self.chain.lgsp;
        let xml = |key| vec![("x-api-key", key), ("content-type", "application/xml")];
        let good = sample("valid/HoSoCBCCVC-02-toi-thieu.xml");
        match code {
            "auth.no_client_identity" => {
                self.send(
                    AGENCY_NO_IDENTITY,
                    "GET",
                    &self.chain.lgsp_url("/lgsp/v1/BienNhan/x"),
                    &[("x-api-key", KEY_H29)],
                    "",
                )
                .await
            }
            "auth.missing_key" => self.post(lgsp, "/lgsp/v1/HoSoCBCCVC", &[], &good).await,
            "auth.unknown_key" => {
                self.post(lgsp, "/lgsp/v1/HoSoCBCCVC", &xml("lgsp_prod_nope"), &good)
                    .await
            }
            "auth.key_not_bound_to_certificate" => {
                self.post(lgsp, "/lgsp/v1/HoSoCBCCVC", &xml(KEY_H26), &good)
                    .await
            }
            "auth.key_outside_validity" => {
                self.post(
                    &self.failing,
                    "/lgsp/v1/HoSoCBCCVC",
                    &xml(KEY_RETIRED),
                    &good,
                )
                .await
            }
            "hop.signature_missing" => self.relay_spoilt(false).await,
            "hop.signature_invalid" => self.relay_spoilt(true).await,
            "auth.peer_missing_client" => {
                self.send(LGSP_PEER, "GET", &self.ndxp("/ndxp/v1/BienNhan/x"), &[], "")
                    .await
            }
            "auth.peer_unknown_agency" => {
                let h = [("x-lgsp-client", "000.00.00.X01")];
                self.send(LGSP_PEER, "GET", &self.ndxp("/ndxp/v1/BienNhan/x"), &h, "")
                    .await
            }
            "auth.trial_agency_production_key" => {
                let h = [
                    ("x-lgsp-client", "000.00.00.G09"),
                    ("x-lgsp-mode", "production"),
                ];
                self.send(LGSP_PEER, "GET", &self.ndxp("/ndxp/v1/BienNhan/x"), &h, "")
                    .await
            }
            "auth.invalid_token" => {
                let h = [("authorization", "Bearer not.a.token")];
                self.post(lgsp, "/lgsp/v1/HoSoCBCCVC", &h, &good).await
            }
            "auth.token_not_bound_to_certificate" => {
                let basic = format!("Basic {}", base64_of(&format!("{H29}:{KEY_H29}")));
                let form = [
                    ("authorization", basic.as_str()),
                    ("content-type", "application/x-www-form-urlencoded"),
                ];
                let t = self
                    .post(lgsp, "/token", &form, "grant_type=client_credentials")
                    .await;
                let bearer = format!("Bearer {}", t.body["access_token"].as_str().unwrap());
                let h = [
                    ("authorization", bearer.as_str()),
                    ("content-type", "application/xml"),
                ];
                self.send(
                    AGENCY_OTHER,
                    "POST",
                    &self.chain.lgsp_url("/lgsp/v1/HoSoCBCCVC"),
                    &h,
                    &good,
                )
                .await
            }
            "trial.not_offered" => {
                self.post(lgsp, "/lgsp/v1/HoSoCBCCVC", &xml(TRIAL_H29), &good)
                    .await
            }
            "route.bad_path" => {
                self.post(
                    lgsp,
                    "/lgsp/v1/HoSoCBCCVC/%2e%2e/BienChe",
                    &xml(KEY_H29),
                    &good,
                )
                .await
            }
            "route.not_found" => self.post(lgsp, "/lgsp/v9/Nope", &xml(KEY_H29), "").await,
            "route.method_not_allowed" => {
                self.send(
                    AGENCY_OK,
                    "DELETE",
                    &self.chain.lgsp_url("/lgsp/v1/HoSoCBCCVC"),
                    &xml(KEY_H29),
                    "",
                )
                .await
            }
            "route.agency_not_allowed" => {
                let url = hop_url(&self.failing, "lgsp", "/lgsp/v1/BienNhan/x");
                self.send(AGENCY_OK, "GET", &url, &[("x-api-key", KEY_H29)], "")
                    .await
            }
            "hop.bad_header" => {
                let h = [("x-lgsp-client", H29), ("x-lgsp-message-id", "not-a-uuid")];
                self.send(LGSP_PEER, "GET", &self.ndxp("/ndxp/v1/BienNhan/x"), &h, "")
                    .await
            }
            "hop.loop_detected" => {
                let h = [("x-lgsp-client", H29), ("x-lgsp-hops", "lgsp, ndxp")];
                self.send(LGSP_PEER, "GET", &self.ndxp("/ndxp/v1/BienNhan/x"), &h, "")
                    .await
            }
            "upstream.unreachable" => {
                self.post(&self.failing, "/lgsp/v1/HoSoCBCCVC", &xml(KEY_H29), "x")
                    .await
            }
            "upstream.tls_failed" => {
                self.post(&self.failing, "/lgsp/v1/BienChe", &xml(KEY_H29), "x")
                    .await
            }
            "upstream.protocol_error" => {
                self.post(&self.failing, "/lgsp/v1/PheDuyetDuLieu", &xml(KEY_H29), "x")
                    .await
            }
            "broker.unreachable" => {
                self.post(&self.brokers, "/lgsp/v1/HoSoCBCCVC", &xml(KEY_H29), "x")
                    .await
            }
            "broker.timeout" => {
                self.post(&self.brokers, "/lgsp/v1/BienChe", &xml(KEY_H29), "x")
                    .await
            }
            "broker.refused" => {
                self.post(&self.brokers, "/lgsp/v1/PheDuyetDuLieu", &xml(KEY_H29), "x")
                    .await
            }
            "broker.unroutable" => {
                self.post(&self.brokers, "/lgsp/v1/BienDong", &xml(KEY_H29), "x")
                    .await
            }
            "upstream.timeout" => {
                self.post(&self.failing, "/lgsp/v1/BienDong", &xml(KEY_H29), "x")
                    .await
            }
            "ratelimit.exceeded" => {
                let first = self
                    .post(
                        &self.limited,
                        "/lgsp/v1/validate/HoSoCBCCVC",
                        &xml(KEY_H29),
                        &good,
                    )
                    .await;
                assert_eq!(first.status, 200, "{}", first.body);
                self.post(
                    &self.limited,
                    "/lgsp/v1/validate/HoSoCBCCVC",
                    &xml(KEY_H29),
                    &good,
                )
                .await
            }
            "overload.shed" => {
                let url = hop_url(&self.limited, "lgsp", "/lgsp/v1/BienChe");
                let client = self.client(AGENCY_OK);
                let held = tokio::spawn(async move {
                    client
                        .send("POST", &url, &[("x-api-key", KEY_H29)], "x")
                        .await
                });
                self.held.arrived.notified().await;
                let shed = self
                    .post(&self.limited, "/lgsp/v1/BienChe", &xml(KEY_H29), "x")
                    .await;
                self.held.release.notify_one();
                assert_eq!(held.await.unwrap().unwrap().status, 200);
                shed
            }
            "ratelimit.backend_unavailable" => {
                self.post(
                    &self.refusing,
                    "/lgsp/v1/validate/HoSoCBCCVC",
                    &xml(KEY_H29),
                    &good,
                )
                .await
            }
            "packet.unsupported_media_type" => {
                let h = [("x-api-key", KEY_H29), ("content-type", "text/plain")];
                self.post(lgsp, "/lgsp/v1/HoSoCBCCVC", &h, &good).await
            }
            "packet.unsupported_charset" => {
                let h = [
                    ("x-api-key", KEY_H29),
                    ("content-type", "application/xml; charset=iso-8859-1"),
                ];
                self.post(lgsp, "/lgsp/v1/HoSoCBCCVC", &h, &good).await
            }
            "packet.unsupported_encoding" => {
                let h = [
                    ("x-api-key", KEY_H29),
                    ("content-type", "application/xml"),
                    ("content-encoding", "gzip"),
                ];
                self.post(lgsp, "/lgsp/v1/HoSoCBCCVC", &h, &good).await
            }
            "packet.ambiguous_content_type" => {
                let h = [
                    ("x-api-key", KEY_H29),
                    ("content-type", "application/xml"),
                    ("content-type", "application/json"),
                ];
                self.post(lgsp, "/lgsp/v1/HoSoCBCCVC", &h, &good).await
            }
            "packet.too_large" => {
                self.post(
                    lgsp,
                    "/lgsp/v1/HoSoCBCCVC",
                    &xml(KEY_H29),
                    &"x".repeat(1024 * 1024 + 1),
                )
                .await
            }
            "packet.unreadable" => {
                let addr = lgsp.hop_addr("lgsp").unwrap();
                let head = format!(
                    "POST /lgsp/v1/HoSoCBCCVC HTTP/1.1\r\nhost: localhost\r\nx-api-key: {KEY_H29}\r\ncontent-type: application/xml\r\ntransfer-encoding: chunked\r\n\r\n5\r\n<Ho\r\nzz\r\n"
                );
                raw(&self.chain.pki, addr, AGENCY_OK, head.as_bytes()).await
            }
            "admin.unknown_host"
            | "admin.cross_origin"
            | "admin.unauthorized"
            | "admin.reload_disabled" => {
                let (gw, host) = match code {
                    "admin.reload_disabled" => (&self.refusing, self.refusing.admin),
                    _ => (&self.chain.lgsp, self.chain.lgsp.admin),
                };
                let token = std::fs::read_to_string(self.chain.pki.path("admin.token")).unwrap();
                let bearer = format!("authorization: Bearer {}", token.trim());
                let headers = match code {
                    // A web page's DNS name for the host, with the right token even.
                    "admin.unknown_host" => {
                        vec!["host: rebind.attacker.example".to_owned(), bearer]
                    }
                    "admin.cross_origin" => vec![
                        format!("host: {host}"),
                        "origin: https://attacker.example".to_owned(),
                        bearer,
                    ],
                    "admin.unauthorized" => vec![format!("host: {host}")],
                    _ => vec![format!("host: {host}"), bearer],
                };
                admin(gw.admin, "POST", "/admin/reload", &headers).await
            }
            "auth.too_many_failures" => {
                // One wrong key spends the allowance; the next attempt, right key and all, waits.
                let wrong = self
                    .post(
                        &self.throttled,
                        "/lgsp/v1/validate/HoSoCBCCVC",
                        &xml("guess"),
                        &good,
                    )
                    .await;
                assert_eq!(wrong.status, 401, "{}", wrong.body);
                self.post(
                    &self.throttled,
                    "/lgsp/v1/validate/HoSoCBCCVC",
                    &xml(KEY_H29),
                    &good,
                )
                .await
            }
            "lookup.not_found" => {
                // The upstream hands H29 a record of H26's: the hop does not pass it on.
                self.send(
                    AGENCY_OK,
                    "GET",
                    &hop_url(
                        &self.strict,
                        "lgsp",
                        "/lgsp/v1/BienNhan/0190a5a4-0000-7000-8000-000000000009",
                    ),
                    &[("x-api-key", KEY_H29)],
                    "",
                )
                .await
            }
            "packet.body_timeout" => {
                // The head promises 1000 bytes; five arrive, then nothing.
                let addr = self.strict.hop_addr("lgsp").unwrap();
                let head = format!(
                    "POST /lgsp/v1/HoSoCBCCVC HTTP/1.1\r\nhost: localhost\r\nx-api-key: {KEY_H29}\r\ncontent-type: application/xml\r\ncontent-length: 1000\r\n\r\n<HoSo"
                );
                raw(&self.chain.pki, addr, AGENCY_OK, head.as_bytes()).await
            }
            "overload.too_many_connections" => {
                // H26 holds its one connection; a second one is answered and closed.
                let addr = self.strict.hop_addr("lgsp").unwrap();
                let tls = self
                    .chain
                    .pki
                    .client_tls(Some(AGENCY_OTHER), &[b"http/1.1"]);
                let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                let mut held = tokio_rustls::TlsConnector::from(Arc::new(tls))
                    .connect(name, tcp)
                    .await
                    .unwrap();
                let head = format!(
                    "GET /lgsp/v1/BienNhan/x HTTP/1.1\r\nhost: localhost\r\nx-api-key: {KEY_H26}\r\n\r\n"
                );
                // An answer on it proves the gateway counts it.
                held.write_all(head.as_bytes()).await.unwrap();
                let mut answer = [0u8; 12];
                held.read_exact(&mut answer).await.unwrap();
                assert!(answer.starts_with(b"HTTP/1.1 "), "{answer:?}");
                let seen = raw(&self.chain.pki, addr, AGENCY_OTHER, head.as_bytes()).await;
                drop(held);
                seen
            }
            "packet.malformed" => {
                self.post(lgsp, "/lgsp/v1/HoSoCBCCVC", &xml(KEY_H29), "<x")
                    .await
            }
            "packet.invalid" => {
                let bad = good.replace("<GioiTinh>Nam</GioiTinh>", "<GioiTinh>X</GioiTinh>");
                self.post(lgsp, "/lgsp/v1/HoSoCBCCVC", &xml(KEY_H29), &bad)
                    .await
            }
            "authz.unit_outside_jurisdiction" => {
                let other = good.replace("000.00.00.H29", "000.00.00.H26");
                self.post(lgsp, "/lgsp/v1/HoSoCBCCVC", &xml(KEY_H29), &other)
                    .await
            }
            "journal.unavailable" => {
                // Another writer holds the journal's lock past its busy timeout: the packet is refused, not sent.
                let lock = JournalLock::hold(&self.keeper_journal).await;
                let seen = self
                    .post(&self.keeper, "/lgsp/v1/HoSoCBCCVC", &xml(KEY_H29), &good)
                    .await;
                lock.release().await;
                seen
            }
            "journal.agency_quota" => {
                // The first packet is held undelivered (its upstream is down); the second is one too many.
                let mut h = xml(KEY_H29);
                h.push(("idempotency-key", "errors-quota-1"));
                let first = self
                    .post(&self.quota, "/lgsp/v1/HoSoCBCCVC", &h, &good)
                    .await;
                assert_eq!(first.status, 202, "{}", first.body);
                let mut h = xml(KEY_H29);
                h.push(("idempotency-key", "errors-quota-2"));
                let other = good.replace("Nguyễn Văn An", "Nguyễn Văn Bình");
                self.post(&self.quota, "/lgsp/v1/HoSoCBCCVC", &h, &other)
                    .await
            }
            "journal.disk_full" => {
                self.post(&self.full, "/lgsp/v1/HoSoCBCCVC", &xml(KEY_H29), &good)
                    .await
            }
            "idempotency.bad_key" => {
                let mut h = xml(KEY_H29);
                h.push(("idempotency-key", "a\tb"));
                self.post(lgsp, "/lgsp/v1/HoSoCBCCVC", &h, &good).await
            }
            "idempotency.key_reused" => {
                let mut h = xml(KEY_H29);
                h.push(("idempotency-key", "errors-reused-1"));
                let first = self.post(lgsp, "/lgsp/v1/HoSoCBCCVC", &h, &good).await;
                assert_eq!(first.status, 200, "{}", first.body);
                let other = good.replace("Nguyễn Văn An", "Nguyễn Văn Bình");
                assert_ne!(other, good);
                self.post(lgsp, "/lgsp/v1/HoSoCBCCVC", &h, &other).await
            }
            "idempotency.in_progress" => {
                let mut h = xml(KEY_H29);
                h.push(("idempotency-key", "errors-held-1"));
                let packet = sample("valid/BienDong-01-dieu-dong.xml");
                let url = hop_url(&self.keeper, "lgsp", "/lgsp/v1/BienDong");
                let first = {
                    let (client, url, h, packet) = (
                        self.client(AGENCY_OK),
                        url.clone(),
                        h.clone(),
                        packet.clone(),
                    );
                    let h: Vec<(String, String)> = h
                        .iter()
                        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
                        .collect();
                    tokio::spawn(async move {
                        let h: Vec<(&str, &str)> =
                            h.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
                        client
                            .send("POST", &url, &h, &packet)
                            .await
                            .map(|a| a.status)
                    })
                };
                // Journalled and at the upstream: the resend must wait.
                self.keeper_held.arrived.notified().await;
                let seen = self.send(AGENCY_OK, "POST", &url, &h, &packet).await;
                self.keeper_held.release.notify_one();
                assert_eq!(first.await.unwrap().unwrap().as_u16(), 200);
                seen
            }
            "idempotency.message_id_taken" => {
                // The NDXP knows this message id as H29's; a peer sending it again for H26 learns nothing of it.
                let id = "0190a5a4-0000-7000-8000-0000000000aa";
                let url = self.ndxp("/ndxp/v1/HoSoCBCCVC");
                let mine = [
                    ("x-lgsp-client", H29),
                    ("x-lgsp-message-id", id),
                    ("content-type", "application/xml"),
                ];
                let first = self.send(LGSP_PEER, "POST", &url, &mine, &good).await;
                assert_eq!(first.status, 200, "{}", first.body);
                let theirs = [
                    ("x-lgsp-client", H26),
                    ("x-lgsp-message-id", id),
                    ("content-type", "application/xml"),
                ];
                let packet = good.replace("000.00.00.H29", "000.00.00.H26");
                self.send(LGSP_PEER, "POST", &url, &theirs, &packet).await
            }
            "messages.not_found" => {
                let url = self
                    .chain
                    .lgsp_url("/lgsp/v1/messages/0190a5a4-0000-7000-8000-000000000001");
                self.send(AGENCY_OK, "GET", &url, &[("x-api-key", KEY_H29)], "")
                    .await
            }
            "messages.bad_query" => {
                let url = self.chain.lgsp_url("/lgsp/v1/messages?limit=0");
                self.send(AGENCY_OK, "GET", &url, &[("x-api-key", KEY_H29)], "")
                    .await
            }
            "validate.unknown_message_type" => {
                self.post(lgsp, "/lgsp/v1/validate/Nope", &xml(KEY_H29), &good)
                    .await
            }
            "gateway.internal" => misassembled_stack().await,
            "emulator.missing_message_id" => {
                self.send(
                    AGENCY_OK,
                    "POST",
                    &self.emulator("/cbccvc/v1/HoSoCBCCVC"),
                    &[],
                    "x",
                )
                .await
            }
            "emulator.unknown_message_type" => {
                self.send(
                    AGENCY_OK,
                    "POST",
                    &self.emulator("/cbccvc/v1/Nope"),
                    &[],
                    "x",
                )
                .await
            }
            "emulator.method_not_allowed" => {
                self.send(
                    AGENCY_OK,
                    "DELETE",
                    &self.emulator("/cbccvc/v1/BienNhan/x"),
                    &[],
                    "",
                )
                .await
            }
            "emulator.message_id_reused" => {
                let id = [("x-lgsp-message-id", "0190a5a4-0000-7000-8000-00000000abcd")];
                let url = self.emulator("/cbccvc/v1/BienChe");
                assert_eq!(
                    self.send(AGENCY_OK, "POST", &url, &id, "a").await.status,
                    200
                );
                self.send(AGENCY_OK, "POST", &url, &id, "b").await
            }
            "emulator.sharing_off" => {
                let url = self.emulator("/cbccvc/v1/ChiaSe/000.00.00.H29");
                self.send(AGENCY_OK, "POST", &url, &[], "<x/>").await
            }
            "emulator.no_such_agency" => {
                let url = self.sharing_url("/cbccvc/v1/ChiaSe/h29");
                self.send(AGENCY_OK, "POST", &url, &[], "<x/>").await
            }
            "emulator.share_failed" => {
                let url = self.sharing_url("/cbccvc/v1/ChiaSe/000.00.00.H29");
                self.send(AGENCY_OK, "POST", &url, &[], "<x/>").await
            }
            "inbox.bad_query" => {
                let url = hop_url(&self.brokers, "lgsp", "/lgsp/v1/inbox?after=yesterday");
                self.send(AGENCY_OK, "GET", &url, &[("x-api-key", KEY_H29)], "")
                    .await
            }
            "emulator.receipt_not_found" => {
                let url = self.emulator("/cbccvc/v1/BienNhan/0190a5a4-0000-7000-8000-00000000dcba");
                self.send(AGENCY_OK, "GET", &url, &[], "").await
            }
            "emulator.body_unreadable" => {
                let id = [("x-lgsp-message-id", "0190a5a4-0000-7000-8000-00000000beef")];
                let body = "x".repeat(lgsp_emulator_max() + 1);
                self.send(
                    AGENCY_OK,
                    "POST",
                    &self.emulator("/cbccvc/v1/BienDong"),
                    &id,
                    &body,
                )
                .await
            }
            "token.method_not_allowed" => {
                self.send(AGENCY_OK, "GET", &self.chain.lgsp_url("/token"), &[], "")
                    .await
            }
            "token.missing_client_credentials" => {
                self.post(lgsp, "/token", &[], "grant_type=client_credentials")
                    .await
            }
            "token.bad_request" | "token.unsupported_grant_type" => {
                let basic = format!("Basic {}", base64_of(&format!("{H29}:{KEY_H29}")));
                let form = if code == "token.bad_request" {
                    ""
                } else {
                    "grant_type=password"
                };
                self.post(lgsp, "/token", &[("authorization", basic.as_str())], form)
                    .await
            }
            other => panic!(
                "the README lists {other}, and this test has no request that answers it: add one"
            ),
        }
    }
}

fn lgsp_emulator_max() -> usize {
    32 * 1024 * 1024
}

fn closed_port_sync() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn base64_of(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// `gateway.internal` has no request path in a correctly built stack: a hop stack assembled without its auth and
/// route layers (a programming error) makes the innermost service meet a request it cannot handle.
async fn misassembled_stack() -> Seen {
    use http_body_util::BodyExt;
    use tower::{Layer, ServiceExt};
    let metrics = lgsp_metrics::Metrics::new().unwrap();
    let hop = Arc::new(lgsp_proxy::HopContext::new("lgsp", &[], metrics));
    let pki = TestPki::new();
    let client = lgsp_proxy::upstream_client(
        pki.client_tls(None, &[]),
        lgsp_config::UpstreamProtocol::Http1,
    );
    let forward = lgsp_proxy::Forward::new(client, hop.clone(), &[], 1, None, None);
    let resp = lgsp_proxy::ObserveLayer::new(hop)
        .layer(forward)
        .oneshot(http::Request::new(lgsp_proxy::body::empty()))
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Seen {
        status,
        body: serde_json::from_slice(&body).unwrap(),
    }
}

/// Every code the sources can answer: the literals of each `fn code(&self) -> &'static str`, and the token
/// endpoint's own `token.*` codes.
fn codes_in_sources() -> BTreeSet<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates");
    let mut files = Vec::new();
    let mut dirs = vec![root];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() && !p.ends_with("target") && !p.ends_with("fuzz") {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs")
                && p.to_string_lossy().contains("/src/")
            {
                files.push(p);
            }
        }
    }
    let mut codes = BTreeSet::new();
    let literal = regex::Regex::new(r#""([a-z]+\.[a-z_]+)""#).unwrap();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let text = text
            .split("#[cfg(test)]\nmod tests")
            .next()
            .unwrap_or_default();
        for (at, _) in text.match_indices("fn code(&self) -> &'static str {") {
            let body = &text[at..];
            let mut depth = 0;
            let end = body
                .char_indices()
                .find(|(_, c)| {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        _ => {}
                    }
                    *c == '}' && depth == 0
                })
                .map_or(body.len(), |(i, _)| i);
            codes.extend(literal.captures_iter(&body[..end]).map(|c| c[1].to_owned()));
        }
        if f.ends_with("lgsp-proxy/src/token.rs") {
            codes.extend(
                literal
                    .captures_iter(text)
                    .map(|c| c[1].to_owned())
                    .filter(|c| c.starts_with("token.")),
            );
        }
    }
    codes
}

#[tokio::test(flavor = "multi_thread")]
async fn every_row_of_the_readme_error_tables_is_what_the_gateway_answers() {
    let problems = table("| code | status | class |");
    let token = table("| code | status | error |");
    assert!(
        problems.len() >= 30 && token.len() >= 4,
        "{problems:?} {token:?}"
    );
    let world = World::start().await;
    for row in problems.iter().chain(&token) {
        if let Some((_, why)) = world.broker_skips.iter().find(|(c, _)| *c == row.code) {
            eprintln!(
                "skipped row {}: {why} (.ci/run sets it to the machine's broker)",
                row.code
            );
            continue;
        }
        let seen = world.trigger(&row.code).await;
        let kind_field = if row.code.starts_with("token.") {
            "error"
        } else {
            "class"
        };
        assert_eq!(
            (
                seen.status,
                seen.body["code"].as_str(),
                seen.body[kind_field].as_str()
            ),
            (row.status, Some(row.code.as_str()), Some(row.kind.as_str())),
            "README row {row:?}, answered {}",
            seen.body
        );
        if kind_field == "class" {
            assert!(
                seen.body["detail"].as_str().is_some_and(|d| !d.is_empty()),
                "{}",
                seen.body
            );
        }
        // An agency hears which route failed, never where its upstream lives (the log keeps that).
        let text = seen.body.to_string();
        assert!(
            !text.contains("127.0.0.1:") && !text.contains("localhost:"),
            "{} names an address: {text}",
            row.code
        );
    }
    let listed: BTreeSet<String> = problems
        .iter()
        .chain(&token)
        .map(|r| r.code.clone())
        .collect();
    let answered = codes_in_sources();
    let missing: Vec<&String> = answered.difference(&listed).collect();
    assert!(
        missing.is_empty(),
        "codes the gateway answers but the README does not list: {missing:?}"
    );
    let stale: Vec<&String> = listed.difference(&answered).collect();
    assert!(
        stale.is_empty(),
        "README codes no source answers: {stale:?}"
    );
    world.held.release.notify_waiters();
}
