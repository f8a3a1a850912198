//! What one agency, a careless client or a stolen certificate can try, played against the built binary over real
//! TLS with real clients (curl), each refused as the README says. The regression suite of the hardening work: a
//! test per attack, added as each defence lands.

use std::path::{Path, PathBuf};

use lgsp_testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_lgsp-gateway");
const KEY_H29: &str = "lgsp_dev_000.00.00.H29_production";

/// An emulator and one hop in front of it, each its own process of the built binary (or a hop in front of an
/// upstream of the test's own).
struct Target {
    pki: TestPki,
    _emulator: Option<Proc>,
    _hop: Proc,
    port: u16,
    prefix: &'static str,
    /// The hop process's `/metrics` URL.
    metrics: String,
    /// The hop's config file (edit, then [`Target::reload`]).
    config: PathBuf,
}

impl Target {
    /// An LGSP hop at `/lgsp/v1`.
    fn start() -> Target {
        Target::hop("lgsp", "/lgsp/v1", &[])
    }

    /// An NDXP hop at `/ndxp/v1` that takes relays from `peers` (identities or `{ id, sha256 }` tables).
    fn ndxp(pki: TestPki, peers: &[&str]) -> Target {
        Target::hop_in(pki, "ndxp", "/ndxp/v1", peers, "")
    }

    /// An LGSP hop with `extra` appended to its config (e.g. a `[hop.http]` section).
    fn lgsp_with(extra: &str) -> Target {
        Target::hop_in(TestPki::new(), "lgsp", "/lgsp/v1", &[], extra)
    }

    /// An LGSP hop whose config text `edit` rewrites first.
    fn lgsp_edited(edit: impl Fn(String) -> String) -> Target {
        Target::lgsp_edited_by(edit, Proc::spawn)
    }

    /// As [`Target::lgsp_edited`], the process started by `spawn`.
    fn lgsp_edited_by(
        edit: impl Fn(String) -> String,
        spawn: fn(&str, &[&str], &Path) -> Proc,
    ) -> Target {
        let pki = TestPki::new();
        let dir = pki.dir().to_owned();
        let config = edit(hop_config(
            &pki,
            "lgsp",
            "/lgsp/v1",
            "127.0.0.1:9".parse().unwrap(),
            "/cbccvc/v1",
            &[],
        ));
        let config_path = write(&dir, "lgsp.toml", &config);
        Target::spawned_by(pki, "lgsp", "/lgsp/v1", config_path, spawn)
    }

    fn hop(name: &str, prefix: &'static str, peers: &[&str]) -> Target {
        Target::hop_in(TestPki::new(), name, prefix, peers, "")
    }

    fn hop_in(
        pki: TestPki,
        name: &str,
        prefix: &'static str,
        peers: &[&str],
        extra: &str,
    ) -> Target {
        let dir = pki.dir().to_owned();
        let mut emulator = Proc::spawn(
            BIN,
            &[
                "run",
                "--config",
                &write(&dir, "emu.toml", &emulator_config(&pki)),
            ],
            &dir,
        );
        let emu = format!("127.0.0.1:{}", emulator.port("listening: emulator"))
            .parse()
            .unwrap();
        let mut t = Target::in_front_of(pki, emu, name, prefix, peers, extra);
        t._emulator = Some(emulator);
        t
    }

    /// A hop whose routes go to `upstream`.
    fn in_front_of(
        pki: TestPki,
        upstream: std::net::SocketAddr,
        name: &str,
        prefix: &'static str,
        peers: &[&str],
        extra: &str,
    ) -> Target {
        let dir = pki.dir().to_owned();
        let config = hop_config(&pki, name, prefix, upstream, "/cbccvc/v1", peers) + extra;
        let config_path = write(&dir, &format!("{name}.toml"), &config);
        Target::spawned(pki, name, prefix, config_path)
    }

    /// A hop process on `config_path`.
    fn spawned(pki: TestPki, name: &str, prefix: &'static str, config_path: String) -> Target {
        Target::spawned_by(pki, name, prefix, config_path, Proc::spawn)
    }

    /// As [`Target::spawned`], the process started by `spawn`.
    fn spawned_by(
        pki: TestPki,
        name: &str,
        prefix: &'static str,
        config_path: String,
        spawn: fn(&str, &[&str], &Path) -> Proc,
    ) -> Target {
        let dir = pki.dir().to_owned();
        let mut hop = spawn(BIN, &["run", "--config", &config_path], &dir);
        let port = hop.port(&format!("listening: hop {name}"));
        let metrics = hop
            .line("metrics: ")
            .trim_start_matches("metrics: ")
            .to_owned();
        Target {
            pki,
            _emulator: None,
            _hop: hop,
            port,
            prefix,
            metrics,
            config: PathBuf::from(config_path),
        }
    }

    /// The value of one sample of the hop's metrics (`family{labels}` as exported), 0 when absent.
    fn metric(&self, sample: &str) -> f64 {
        let (ok, out, err) = sh(&format!("curl -sS --max-time 20 {}", self.metrics));
        assert!(ok, "{err}");
        out.lines()
            .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Rewrites the hop's config with `edit` and reloads it (SIGHUP), returning once the reload has counted.
    fn reload(&self, edit: impl FnOnce(String) -> String) {
        let text = std::fs::read_to_string(&self.config).expect("config");
        std::fs::write(&self.config, edit(text)).expect("config written");
        let success = "lgsp_config_reloads_total{result=\"success\"}";
        let before = self.metric(success);
        let (ok, _, err) = sh(&format!("kill -HUP {}", self._hop.id()));
        assert!(ok, "{err}");
        for _ in 0..200 {
            if self.metric(success) > before {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("the reload did not succeed");
    }

    fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// A TLS connection as `identity` that completes its handshake, then sends nothing.
    fn idle_tls(&self, identity: &str) -> Idle {
        let cfg = std::sync::Arc::new(self.pki.client_tls(Some(identity), &[b"http/1.1"]));
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut conn = rustls::ClientConnection::new(cfg, name).expect("client");
        let mut tcp = std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp).expect("handshake");
        }
        Idle(rustls::StreamOwned::new(conn, tcp))
    }

    /// A TCP connection from `source` (any 127.x address) that never starts TLS.
    fn idle_tcp(&self, source: &str) -> std::net::TcpStream {
        connect_from(source, self.port).expect("connect from a second loopback address")
    }

    fn dir(&self) -> &Path {
        self.pki.dir()
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir().join(name)
    }

    /// curl as agency H29 with its key to `path` under the hop's prefix: (status, body). `extra` are further curl
    /// arguments.
    fn curl(&self, path: &str, extra: &[&str]) -> (u16, serde_json::Value) {
        let key = format!("X-API-Key: {KEY_H29}");
        let mut args = vec!["-H", key.as_str()];
        args.extend(extra);
        self.curl_as(AGENCY_OK, path, &args)
    }

    /// curl presenting the certificate `identity` (a file stem of the test PKI), with no key unless `extra` has one.
    fn curl_as(&self, identity: &str, path: &str, extra: &[&str]) -> (u16, serde_json::Value) {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--path-as-is", "-o", "-", "-w", "\n%{http_code}"])
            .args([
                "--cert",
                &self.file(&format!("{identity}.pem")).display().to_string(),
            ])
            .args([
                "--key",
                &self.file(&format!("{identity}.key")).display().to_string(),
            ])
            .args(["--cacert", &self.file("ca.pem").display().to_string()])
            .args(["--max-time", "20"])
            .args(extra)
            .arg(format!(
                "https://localhost:{}{}{path}",
                self.port, self.prefix
            ))
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (
            status.trim().parse().unwrap_or(0),
            serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
        )
    }
}

fn packet() -> String {
    sample("valid/HoSoCBCCVC-02-toi-thieu.xml")
}

#[test]
fn dot_segments_and_escaped_slashes_are_refused_before_routing() {
    if !tool("curl") {
        return;
    }
    let t = Target::start();
    let body = packet();
    let post = [
        "-H",
        "Content-Type: application/xml",
        "--data-binary",
        body.as_str(),
    ];
    // The route that would have checked the packet, and the one an upstream would have served.
    for path in [
        "/HoSoCBCCVC/../BienChe",
        "/HoSoCBCCVC/%2e%2e/BienChe",
        "/HoSoCBCCVC/%2E./BienChe",
        "/HoSoCBCCVC%2F..%2FBienChe",
        "/HoSoCBCCVC%5C..%5CBienChe",
        "/./HoSoCBCCVC",
    ] {
        let (status, doc) = t.curl(path, &post);
        assert_eq!(
            (status, doc["code"].as_str()),
            (400, Some("route.bad_path")),
            "{path}: {doc}"
        );
    }
    // The same packet on its own path goes through.
    let (status, doc) = t.curl("/HoSoCBCCVC", &post);
    assert_eq!(status, 200, "{doc}");
}

#[test]
fn declared_charsets_encodings_and_doubled_content_types_are_refused() {
    if !tool("curl") {
        return;
    }
    let t = Target::start();
    let body = packet();
    let send = |headers: &[&str]| {
        let mut args: Vec<&str> = Vec::new();
        for h in headers {
            args.extend(["-H", h]);
        }
        args.extend(["--data-binary", body.as_str()]);
        t.curl("/HoSoCBCCVC", &args)
    };
    for (headers, status, code) in [
        (
            &["Content-Type: application/xml; charset=iso-8859-1"][..],
            415,
            "packet.unsupported_charset",
        ),
        (
            &["Content-Type: application/json; charset=utf-16"][..],
            415,
            "packet.unsupported_charset",
        ),
        (
            &["Content-Type: application/xml", "Content-Encoding: gzip"][..],
            415,
            "packet.unsupported_encoding",
        ),
        (
            &["Content-Type: application/xml", "Content-Type: text/plain"][..],
            400,
            "packet.ambiguous_content_type",
        ),
    ] {
        let (got, doc) = send(headers);
        assert_eq!(
            (got, doc["code"].as_str()),
            (status, Some(code)),
            "{headers:?}: {doc}"
        );
    }
    let (got, doc) = send(&["Content-Type: application/xml; charset=UTF-8"]);
    assert_eq!(got, 200, "{doc}");
}

/// A relayed packet for H29, as an LGSP sends it: no key, the agency in `X-LGSP-Client`.
fn relay_args(body: &str) -> [&str; 6] {
    [
        "-H",
        "X-LGSP-Client: 000.00.00.H29",
        "-H",
        "Content-Type: application/xml",
        "--data-binary",
        body,
    ]
}

impl Target {
    /// curl as the relaying gateway `identity` to `/HoSoCBCCVC` with the packet `body`, its request signed as a
    /// hop signs.
    fn relay_as(&self, identity: &str, body: &str) -> (u16, serde_json::Value) {
        let url = format!("https://localhost:{}{}/HoSoCBCCVC", self.port, self.prefix);
        let bytes = body.as_bytes();
        let signature = peer_signature(
            &self.pki,
            identity,
            "POST",
            &url,
            &[("x-lgsp-client", "000.00.00.H29")],
            bytes,
        );
        let headers: Vec<String> = signature.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        let mut args: Vec<&str> = relay_args(body).to_vec();
        for h in &headers {
            args.extend(["-H", h.as_str()]);
        }
        self.curl_as(identity, "/HoSoCBCCVC", &args)
    }
}

#[test]
fn only_the_exact_san_identity_makes_a_peer() {
    if !tool("curl") {
        return;
    }
    let t = Target::ndxp(TestPki::new(), &["LGSP-DEV"]);
    let body = packet();
    let relay = relay_args(&body);
    // The real relay: SAN URI `urn:lgsp:id:LGSP-DEV`.
    let (status, doc) = t.relay_as("lgsp-client", relay[5]);
    assert_eq!(status, 200, "{doc}");
    // A CN of `LGSP-DEV` with no SAN, or the SAN in upper case, is an unknown caller, not the relay: without an
    // API key it is refused, whatever X-LGSP-Client says.
    for impostor in [IMPOSTOR_CN, IMPOSTOR_UPPER_SAN] {
        let (status, doc) = t.curl_as(impostor, "/HoSoCBCCVC", &relay);
        assert_eq!(
            (status, doc["code"].as_str()),
            (401, Some("auth.missing_key")),
            "{impostor}: {doc}"
        );
    }
}

#[test]
fn a_pinned_peer_is_only_the_certificate_pinned() {
    if !tool("curl") || !tool("openssl") {
        return;
    }
    let pki = TestPki::new();
    // The operator pins LGSP-2 the way the README shows.
    let (ok, fingerprint, err) = sh(&format!(
        "openssl x509 -in {} -noout -fingerprint -sha256",
        pki.path("lgsp2-client.pem").display()
    ));
    assert!(ok, "{err}");
    let pin = fingerprint
        .trim()
        .rsplit_once('=')
        .map(|(_, hex)| hex.to_owned())
        .expect("openssl prints sha256 Fingerprint=AB:CD:…");
    let t = Target::ndxp(
        pki,
        &[
            &format!("{{ id = \"{LGSP2_IDENTITY}\", sha256 = \"{pin}\" }}"),
            // LGSP-DEV pinned to a certificate other than the one it presents (a stolen CA-issued twin, or a
            // renewal the operator has not pinned yet).
            &format!("{{ id = \"LGSP-DEV\", sha256 = \"{}\" }}", "0".repeat(64)),
        ],
    );
    let body = packet();
    let relay = relay_args(&body);
    let (status, doc) = t.relay_as("lgsp2-client", relay[5]);
    assert_eq!(status, 200, "{doc}");
    let (status, doc) = t.relay_as("lgsp-client", relay[5]);
    assert_eq!(status, 401, "{doc}");
}

/// A client connection that has gone quiet.
struct Idle(rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>);

impl Idle {
    /// Writes `request`, then reads until the gateway closes the connection (at most 20 s): the answer.
    fn exchange(&mut self, request: &str) -> String {
        use std::io::{Read, Write};
        self.0.write_all(request.as_bytes()).expect("request");
        self.0.flush().expect("flush");
        self.0
            .sock
            .set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .expect("timeout");
        let mut answer = Vec::new();
        let _ = self.0.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    }

    /// Whether the gateway closes it within `within` (EOF, close_notify or reset).
    fn closed_within(&mut self, within: std::time::Duration) -> bool {
        use std::io::Read;
        self.0.sock.set_read_timeout(Some(within)).expect("timeout");
        let mut buf = [0u8; 64];
        match self.0.read(&mut buf) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        }
    }
}

/// Whether a plain TCP connection is closed by the other end within `within`.
fn tcp_closed_within(tcp: &mut std::net::TcpStream, within: std::time::Duration) -> bool {
    use std::io::Read;
    tcp.set_read_timeout(Some(within)).expect("timeout");
    let mut buf = [0u8; 64];
    match tcp.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// Connects to 127.0.0.1:`port` from `source`, so one host's connections can be told from another's.
fn connect_from(source: &str, port: u16) -> std::io::Result<std::net::TcpStream> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(
            format!("{source}:0")
                .parse()
                .map_err(std::io::Error::other)?,
        )?;
        let tcp = socket
            .connect(
                format!("127.0.0.1:{port}")
                    .parse()
                    .map_err(std::io::Error::other)?,
            )
            .await?;
        tcp.into_std()
    })
    .and_then(|tcp| {
        tcp.set_nonblocking(false)?;
        Ok(tcp)
    })
}

#[test]
fn idle_and_stalled_connections_are_bounded_and_spare_other_agencies() {
    if !tool("curl") {
        return;
    }
    let t = Target::lgsp_with(
        "\n[hop.http]\nmax_connections = 8\nmax_connections_per_agency = 3\nmax_handshakes_per_address = 2\nfirst_byte_timeout = \"1s\"\nidle_timeout = \"2s\"\n",
    );
    let body = packet();
    let post = [
        "-H",
        "Content-Type: application/xml",
        "--data-binary",
        body.as_str(),
    ];
    // H29 takes its whole share with connections that say nothing, and a host at 127.0.0.2 stalls two
    // connections before TLS.
    // Each is opened once the hop has finished the one before: a client's handshake ends before the hop's
    // (it still reads the client's Finished), and the hop's per-address handshake bound counts until then.
    let open = "lgsp_connections_open{hop=\"lgsp\"}";
    let mut quiet: Vec<Idle> = Vec::new();
    for n in 1..=3 {
        quiet.push(t.idle_tls(AGENCY_OK));
        let mut waited = 0;
        while t.metric(open) < f64::from(n) && waited < 200 {
            std::thread::sleep(std::time::Duration::from_millis(20));
            waited += 1;
        }
        assert!(
            t.metric(open) >= f64::from(n),
            "the hop never opened connection {n}"
        );
    }
    let mut stalled: Vec<std::net::TcpStream> = (0..2).map(|_| t.idle_tcp("127.0.0.2")).collect();
    // H29's next connection is answered and closed; that host's next one is closed before TLS.
    let (status, doc) = t.curl("/HoSoCBCCVC", &post);
    assert_eq!(
        (status, doc["code"].as_str()),
        (429, Some("overload.too_many_connections")),
        "{doc}"
    );
    let mut third = t.idle_tcp("127.0.0.2");
    assert!(tcp_closed_within(
        &mut third,
        std::time::Duration::from_secs(20)
    ));
    // Another agency is served as usual.
    let theirs = body.replace(H29, H26);
    let (status, doc) = t.curl_as(
        AGENCY_OTHER,
        "/HoSoCBCCVC",
        &[
            "-H",
            "X-API-Key: lgsp_dev_000.00.00.H26_production",
            "-H",
            "Content-Type: application/xml",
            "--data-binary",
            &theirs,
        ],
    );
    assert_eq!(status, 200, "{doc}");
    // The quiet ones are closed: TLS connections after first_byte_timeout, the stalled ones after the
    // handshake timeout. Then H29 is served again.
    for q in &mut quiet {
        assert!(q.closed_within(std::time::Duration::from_secs(20)));
    }
    for s in &mut stalled {
        assert!(tcp_closed_within(s, std::time::Duration::from_secs(20)));
    }
    let (status, doc) = t.curl("/HoSoCBCCVC", &post);
    assert_eq!(status, 200, "{doc}");
    let counted = |reason: &str| {
        t.metric(&format!(
            "lgsp_connections_closed_total{{hop=\"lgsp\",reason=\"{reason}\"}}"
        ))
    };
    assert!(counted("first_byte_timeout") >= 3.0);
    assert!(counted("too_many_agency_connections") >= 1.0);
    assert!(counted("too_many_handshakes") >= 1.0);
}

#[test]
fn a_connection_idle_between_requests_is_closed() {
    if !tool("curl") {
        return;
    }
    let t = Target::lgsp_with("\n[hop.http]\nidle_timeout = \"1s\"\n");
    let mut c = t.idle_tls(AGENCY_OK);
    // One request and its answer, then nothing: the gateway closes.
    let answer = c.exchange(&format!(
        "GET /lgsp/v1/BienNhan/none HTTP/1.1\r\nhost: localhost\r\nx-api-key: {KEY_H29}\r\n\r\n"
    ));
    assert!(answer.starts_with("HTTP/1.1 "), "{answer}");
    assert!(c.closed_within(std::time::Duration::from_secs(1)));
    assert!(t.metric("lgsp_connections_closed_total{hop=\"lgsp\",reason=\"idle_timeout\"}") >= 1.0);
}

#[test]
fn a_body_slower_than_body_read_timeout_is_cut_off_with_408() {
    let t = Target::lgsp_with("\n[hop.http]\nbody_read_timeout = \"1s\"\n");
    let mut c = t.idle_tls(AGENCY_OK);
    // The head promises 1000 bytes; five arrive, then the client dawdles.
    let answer = c.exchange(&format!(
        "POST /lgsp/v1/HoSoCBCCVC HTTP/1.1\r\nhost: localhost\r\nx-api-key: {KEY_H29}\r\ncontent-type: application/xml\r\ncontent-length: 1000\r\n\r\n<HoSo"
    ));
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(answer.contains("\"packet.body_timeout\""), "{answer}");
}

#[test]
fn revocation_and_removal_reach_open_connections_and_tokens() {
    if !tool("curl") {
        return;
    }
    let t = Target::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let key = [("x-api-key", KEY_H29)];
    // H29 holds an HTTP/2 connection with its spare certificate, and H26 one with its own.
    let (spare, mut other) = rt.block_on(async {
        let mut spare = H2Connection::open(&t.pki, t.addr(), AGENCY_SPARE)
            .await
            .expect("spare connects");
        assert_eq!(spare.get("/lgsp/v1/BienNhan/none", &key).await, Ok(404));
        let other = H2Connection::open(&t.pki, t.addr(), AGENCY_OTHER)
            .await
            .expect("H26 connects");
        (spare, other)
    });
    // The spare certificate is revoked: the CRL is replaced and the config reloaded.
    std::fs::copy(t.file(CRL_REVOKING_SPARE), t.file("ca.crl.pem")).expect("new CRL");
    t.reload(|text| text);
    rt.block_on(async {
        assert!(
            spare
                .closed_within(std::time::Duration::from_secs(20))
                .await,
            "the revoked certificate's connection is closed"
        );
        // The other agency's connection serves on.
        let h26 = [("x-api-key", "lgsp_dev_000.00.00.H26_production")];
        assert_eq!(other.get("/lgsp/v1/BienNhan/none", &h26).await, Ok(404));
    });
    assert_eq!(
        t.metric("lgsp_connections_closed_total{hop=\"lgsp\",reason=\"certificate_refused\"}"),
        1.0
    );

    // A token issued for H29's production key works until the key is removed.
    let (ok, out, err) = sh(&format!(
        "curl -sS --max-time 20 --cert {} --key {} --cacert {} -u 000.00.00.H29:{KEY_H29} -d grant_type=client_credentials https://localhost:{}/token",
        t.file(&format!("{AGENCY_OK}.pem")).display(),
        t.file(&format!("{AGENCY_OK}.key")).display(),
        t.file("ca.pem").display(),
        t.port
    ));
    assert!(ok, "{err}");
    let token: serde_json::Value = serde_json::from_str(&out).expect("token answer");
    let token = token["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned();
    let bearer = format!("Authorization: Bearer {token}");
    let (status, doc) = t.curl_as(AGENCY_OK, "/BienNhan/none", &["-H", &bearer]);
    assert_eq!(status, 404, "{doc}");
    let h29_production = lgsp_auth_sha256(KEY_H29);
    t.reload(|text| {
        assert!(text.contains(&h29_production));
        text.replace(&h29_production, &"0".repeat(64))
    });
    let (status, doc) = t.curl_as(AGENCY_OK, "/BienNhan/none", &["-H", &bearer]);
    assert_eq!(
        (status, doc["code"].as_str()),
        (401, Some("auth.invalid_token")),
        "{doc}"
    );
    assert!(
        doc["detail"]
            .as_str()
            .is_some_and(|d| d.contains("no longer configured")),
        "{doc}"
    );
}

/// SHA-256 (hex) of a key, as `gateway.toml` stores it.
fn lgsp_auth_sha256(key: &str) -> String {
    let (ok, out, err) = sh(&format!("printf %s '{key}' | sha256sum"));
    assert!(ok, "{err}");
    out.split_whitespace().next().unwrap_or_default().to_owned()
}

#[test]
fn a_receipt_answers_only_the_agency_that_sent_the_packet() {
    if !tool("curl") {
        return;
    }
    let t = Target::start();
    let body = packet();
    let (status, doc) = t.curl(
        "/HoSoCBCCVC",
        &[
            "-H",
            "Content-Type: application/xml",
            "--data-binary",
            &body,
        ],
    );
    assert_eq!(status, 200, "{doc}");
    let id = doc["message_id"]
        .as_str()
        .expect("receipt names its message id");
    let path = format!("/BienNhan/{id}");
    // Its sender reads it back for reconciliation.
    let (status, doc) = t.curl(&path, &[]);
    assert_eq!((status, doc["agency"].as_str()), (200, Some(H29)), "{doc}");
    // Another agency hears of no such receipt — as for an id never sent. (Trial look-ups go to the trial
    // upstream, whose receipts are as strictly owned: lgsp-emulator's unit tests.)
    let h26 = ["-H", "X-API-Key: lgsp_dev_000.00.00.H26_production"];
    let (status, seen) = t.curl_as(AGENCY_OTHER, &path, &h26);
    let (unknown_status, unknown) = t.curl_as(
        AGENCY_OTHER,
        "/BienNhan/0190a5a4-0000-7000-8000-00000000dead",
        &h26,
    );
    assert_eq!((status, unknown_status), (404, 404), "{seen}");
    assert_eq!(seen["code"], unknown["code"], "{seen}");
    assert!(
        seen.get("agency").is_none() && seen.get("sha256").is_none(),
        "{seen}"
    );
}

#[test]
fn spoofed_forwarding_headers_never_reach_the_upstream() {
    if !tool("curl") {
        return;
    }
    let pki = TestPki::new();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    // An upstream that answers with the request headers it received, as JSON.
    let echo = rt.block_on(Upstream::start(&pki, |req| async move {
        let mut seen = serde_json::Map::new();
        for k in req.headers().keys() {
            let all: Vec<&str> = req
                .headers()
                .get_all(k)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            seen.insert(k.as_str().to_owned(), all.join(", ").into());
        }
        http::Response::new(lgsp_proxy::body::full(
            serde_json::Value::Object(seen).to_string(),
        ))
    }));
    let t = Target::in_front_of(pki, echo.addr, "lgsp", "/lgsp/v1", &[], "");
    let body = packet();
    let (status, seen) = t.curl(
        "/HoSoCBCCVC",
        &[
            "-H",
            "Content-Type: application/xml",
            "-H",
            "X-Forwarded-For: 10.0.0.1",
            "-H",
            "Forwarded: for=10.0.0.1;by=_ndxp",
            "-H",
            "X-Real-IP: 10.0.0.1",
            "-H",
            "X-Forwarded-Host: admin.internal",
            "-H",
            "X-Original-URL: /admin",
            "-H",
            "X-HTTP-Method-Override: DELETE",
            "-H",
            "Cookie: session=stolen",
            "--data-binary",
            &body,
        ],
    );
    assert_eq!(status, 200, "{seen}");
    for name in [
        "x-forwarded-for",
        "x-real-ip",
        "x-forwarded-host",
        "x-original-url",
        "x-http-method-override",
        "cookie",
        "x-api-key",
    ] {
        assert!(
            seen.get(name).is_none(),
            "{name} reached the upstream: {seen}"
        );
    }
    // The one forwarding record is the hop's own: curl's address, this hop, https.
    let forwarded = seen["forwarded"].as_str().unwrap_or_default();
    assert!(
        forwarded.starts_with("for=\"127.0.0.1:") && forwarded.ends_with("\";by=_lgsp;proto=https"),
        "{forwarded}"
    );
    assert!(!forwarded.contains("10.0.0.1"), "{forwarded}");
    drop(echo);
}

#[test]
fn the_admin_listener_reloads_only_for_its_token_and_only_under_its_own_names() {
    if !tool("curl") {
        return;
    }
    let t = Target::start();
    let reload_url = t.metrics.replace("/metrics", "/admin/reload");
    let token = std::fs::read_to_string(t.file("admin.token")).expect("admin token");
    let bearer = format!("Authorization: Bearer {}", token.trim());
    let admin = |extra: &[&str]| {
        let mut cmd = std::process::Command::new("curl");
        cmd.args([
            "-sS",
            "--max-time",
            "20",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "-X",
            "POST",
        ]);
        cmd.args(extra).arg(&reload_url);
        let out = cmd.output().expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (
            status.trim().parse::<u16>().unwrap_or(0),
            serde_json::from_str::<serde_json::Value>(body).unwrap_or(serde_json::Value::Null),
        )
    };
    // No token, a wrong one: 401.
    for extra in [&[][..], &["-H", "Authorization: Bearer guess"][..]] {
        let (status, doc) = admin(extra);
        assert_eq!(
            (status, doc["code"].as_str()),
            (401, Some("admin.unauthorized")),
            "{doc}"
        );
    }
    // A page in the operator's browser: through a DNS name pointing here, or by its Origin.
    let (status, doc) = admin(&["-H", &bearer, "-H", "Host: rebind.attacker.example"]);
    assert_eq!(
        (status, doc["code"].as_str()),
        (421, Some("admin.unknown_host")),
        "{doc}"
    );
    let (status, doc) = admin(&["-H", &bearer, "-H", "Origin: https://attacker.example"]);
    assert_eq!(
        (status, doc["code"].as_str()),
        (403, Some("admin.cross_origin")),
        "{doc}"
    );
    assert_eq!(
        t.metric("lgsp_config_reloads_total{result=\"success\"}"),
        0.0
    );
    // The operator, as the README shows.
    let (status, _) = admin(&["-H", &bearer]);
    assert_eq!(status, 200);
    assert_eq!(
        t.metric("lgsp_config_reloads_total{result=\"success\"}"),
        1.0
    );
}

#[test]
fn guessing_keys_is_held_back_per_certificate_and_address() {
    if !tool("curl") {
        return;
    }
    let t = Target::start();
    let guess = |i: usize| {
        let key = format!("X-API-Key: lgsp_guess_{i:04}");
        t.curl_as(AGENCY_OK, "/BienNhan/none", &["-H", &key])
    };
    // The default allowance is 10 failures; the 11th attempt and every one after waits.
    let statuses: Vec<u16> = (0..15).map(|i| guess(i).0).collect();
    assert_eq!(statuses[..10], [401; 10], "{statuses:?}");
    assert_eq!(statuses[10..], [429; 5], "{statuses:?}");
    let (_, doc) = guess(99);
    assert_eq!(doc["code"], "auth.too_many_failures", "{doc}");
    // While held back, the right key waits too: guessing cannot be interleaved with real traffic.
    let (status, _) = t.curl("/BienNhan/none", &[]);
    assert_eq!(status, 429);
    // Another agency from another address is not held back.
    let (status, doc) = t.curl_as(
        AGENCY_OTHER,
        "/BienNhan/none",
        &[
            "-H",
            "X-API-Key: lgsp_dev_000.00.00.H26_production",
            "--interface",
            "127.0.0.2",
        ],
    );
    assert_eq!(status, 404, "{doc}");
    assert!(t.metric("lgsp_auth_failures_total{hop=\"lgsp\",reason=\"too_many_failures\"}") >= 6.0);
    assert_eq!(
        t.metric("lgsp_auth_failures_total{hop=\"lgsp\",reason=\"unknown_key\"}"),
        10.0
    );
}

/// The process's peak resident memory (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[test]
fn sixteen_large_json_packets_at_once_stay_within_a_small_multiple_of_their_size() {
    if !tool("curl") || !std::path::Path::new("/proc/self/status").exists() {
        return;
    }
    const MIB: usize = 1024 * 1024;
    // The dry-run route takes 9 MiB bodies here.
    let t = Target::lgsp_edited(|c| {
        c.replace(
            "dry_run = true\nagencies = [\"*\"]\nmax_body_bytes = 1048576",
            "dry_run = true\nagencies = [\"*\"]\nmax_body_bytes = 9437184",
        )
    });
    let mut body = String::from("{\"HoSoCBCCVC\":{\"a\":[0");
    while body.len() < 8 * MIB {
        body.push_str(",0");
    }
    body.push_str("]}}");
    let file = t.file("attack.json");
    std::fs::write(&file, &body).expect("packet file");
    let before = peak_rss(t._hop.id());
    let senders: Vec<_> = (0..16)
        .map(|_| {
            std::process::Command::new("curl")
                .args([
                    "-sS",
                    "--max-time",
                    "60",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                ])
                .args([
                    "--cert",
                    &t.file(&format!("{AGENCY_OK}.pem")).display().to_string(),
                ])
                .args([
                    "--key",
                    &t.file(&format!("{AGENCY_OK}.key")).display().to_string(),
                ])
                .args(["--cacert", &t.file("ca.pem").display().to_string()])
                .args(["-H", &format!("X-API-Key: {KEY_H29}")])
                .args(["-H", "Content-Type: application/json"])
                .args(["--data-binary", &format!("@{}", file.display())])
                .arg(format!(
                    "https://localhost:{}/lgsp/v1/validate/HoSoCBCCVC",
                    t.port
                ))
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("curl")
        })
        .collect();
    for s in senders {
        let out = s.wait_with_output().expect("curl");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "422");
    }
    let grown = peak_rss(t._hop.id()).saturating_sub(before);
    println!(
        "16 × {} MiB JSON packets at once: peak RSS +{} MiB",
        body.len() / MIB,
        grown / MIB as u64
    );
    // Each packet's own bytes, plus the buffer growth that reads it, plus validation: within 4× the packets.
    assert!(
        grown <= (16 * 4 * body.len()) as u64,
        "peak RSS grew by {} MiB",
        grown / MIB as u64
    );
}

#[test]
fn labelled_families_are_exported_as_zero_from_start_up() {
    if !tool("curl") {
        return;
    }
    let t = Target::start();
    // Nothing has happened yet: every bounded family already has its series, at 0.
    for sample in [
        "lgsp_auth_failures_total{hop=\"lgsp\",reason=\"unknown_key\"}",
        "lgsp_auth_failures_total{hop=\"lgsp\",reason=\"too_many_failures\"}",
        "lgsp_tls_handshake_failures_total{hop=\"lgsp\",reason=\"revoked\"}",
        "lgsp_validation_failures_total{hop=\"lgsp\",message_type=\"HoSoCBCCVC\",route=\"HoSoCBCCVC\",rule=\"xsd.pattern\"}",
        "lgsp_validation_failures_total{hop=\"lgsp\",message_type=\"BienDong\",route=\"validate\",rule=\"cccd.province\"}",
        "lgsp_load_shed_total{hop=\"lgsp\",scope=\"agency\"}",
        "lgsp_config_reloads_total{result=\"failure\"}",
        "lgsp_connections_closed_total{hop=\"lgsp\",reason=\"idle_timeout\"}",
    ] {
        let (ok, out, err) = sh(&format!("curl -sS --max-time 20 {}", t.metrics));
        assert!(ok, "{err}");
        assert!(
            out.lines()
                .any(|l| l.strip_prefix(sample).is_some_and(|v| v.trim() == "0")),
            "{sample} is not exported as 0"
        );
    }
    let (_, out, _) = sh(&format!("curl -sS --max-time 20 {}", t.metrics));
    assert!(
        out.lines().any(|l| l.starts_with(
            "lgsp_upstream_errors_total{hop=\"lgsp\",kind=\"timeout\",upstream=\"localhost:"
        ) && l.ends_with("} 0")),
        "upstream errors are not exported per configured upstream"
    );
    // The exposition is what Prometheus reads.
    if tool("promtool") {
        let (ok, out, err) = sh(&format!(
            "curl -sS --max-time 20 {} | promtool check metrics",
            t.metrics
        ));
        assert!(ok, "{out}{err}");
    }
}

#[test]
fn a_stalled_log_output_never_stalls_requests_and_its_drops_are_counted() {
    if !tool("curl") {
        return;
    }
    // Every request logs an access line at info; the log may queue 16 lines; nobody reads stderr.
    let t = Target::lgsp_edited_by(
        |c| {
            c.replace(
                "level = \"warn\"\n",
                "level = \"info\"\nbuffer_lines = 16\n",
            )
        },
        Proc::spawn_with_stalled_stderr,
    );
    // 600 requests on one connection: their access lines are far more than a pipe and the queue hold.
    let url = format!("https://localhost:{}/lgsp/v1/BienNhan/none", t.port);
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sS", "--max-time", "60", "-w", "%{http_code}\n"])
        .args([
            "--cert",
            &t.file(&format!("{AGENCY_OK}.pem")).display().to_string(),
        ])
        .args([
            "--key",
            &t.file(&format!("{AGENCY_OK}.key")).display().to_string(),
        ])
        .args(["--cacert", &t.file("ca.pem").display().to_string()])
        .args(["-H", &format!("X-API-Key: {KEY_H29}")]);
    for _ in 0..600 {
        cmd.args(["-o", "/dev/null", &url]);
    }
    let out = cmd.output().expect("curl");
    let codes = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        codes.lines().count(),
        600,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // (Its upstream is a closed port: each answer is a quick 502, each logged.)
    assert!(codes.lines().all(|c| c == "502"), "{codes}");
    // The dropped lines are counted (the count is synced once a second).
    let mut dropped = 0.0;
    for _ in 0..100 {
        dropped = t.metric("lgsp_log_lines_dropped_total");
        if dropped > 0.0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(dropped > 0.0, "no dropped line counted");
}

#[test]
fn the_log_level_reloads_and_a_log_file_holds_no_colour_codes() {
    if !tool("curl") {
        return;
    }
    let t = Target::lgsp_edited_by(
        |c| c,
        |bin, args, cwd| Proc::spawn_logging(bin, args, cwd, Some(&cwd.join("gateway.log"))),
    );
    let access_lines = |t: &Target| {
        std::fs::read_to_string(t.file("gateway.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("access"))
            .count()
    };
    // At warn (the test config), requests write no access line. (The upstream is a closed port: 502.)
    let (status, _) = t.curl("/BienNhan/none", &[]);
    assert_eq!(status, 502);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(access_lines(&t), 0);
    // Reloaded at info, they do.
    t.reload(|c| c.replace("level = \"warn\"", "level = \"info\""));
    let (status, _) = t.curl("/BienNhan/none", &[]);
    assert_eq!(status, 502);
    let mut seen = 0;
    for _ in 0..50 {
        seen = access_lines(&t);
        if seen > 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(seen > 0, "no access line after the level was reloaded");
    let text = std::fs::read_to_string(t.file("gateway.log")).unwrap_or_default();
    assert!(!text.contains('\u{1b}'), "colour codes in a log file");
}

#[test]
fn a_unit_code_that_only_ends_like_the_agencys_is_outside_its_jurisdiction() {
    if !tool("curl") {
        return;
    }
    let t = Target::start();
    // H29 may send for `*.H29`: four-level codes whose first level is H29. This one ends in .H29 but is H26's.
    let body = packet().replace(
        "<MaDonVi>000.00.00.H29</MaDonVi>",
        "<MaDonVi>000.00.00.H26.H29</MaDonVi>",
    );
    assert!(body.contains("000.00.00.H26.H29"));
    let (status, doc) = t.curl(
        "/HoSoCBCCVC",
        &[
            "-H",
            "Content-Type: application/xml",
            "--data-binary",
            &body,
        ],
    );
    assert_eq!(
        (status, doc["code"].as_str()),
        (403, Some("authz.unit_outside_jurisdiction")),
        "{doc}"
    );
}
