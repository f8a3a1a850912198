//! What one agency, a careless client or a stolen certificate can try, played against the built binary over real
//! TLS with real clients (curl), each refused as the README says. The regression suite of the hardening work: a
//! test per attack, added as each defence lands.

use std::path::{Path, PathBuf};

use lgsp_testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_lgsp-gateway");
const KEY_H29: &str = "lgsp_dev_000.00.00.H29_production";

/// An emulator and one hop in front of it, each its own process of the built binary.
struct Target {
    pki: TestPki,
    _emulator: Proc,
    _hop: Proc,
    port: u16,
    prefix: &'static str,
}

impl Target {
    /// An LGSP hop at `/lgsp/v1`.
    fn start() -> Target {
        Target::hop("lgsp", "/lgsp/v1", &[])
    }

    /// An NDXP hop at `/ndxp/v1` that takes relays from `peers` (identities or `{ id, sha256 }` tables).
    fn ndxp(pki: TestPki, peers: &[&str]) -> Target {
        Target::hop_in(pki, "ndxp", "/ndxp/v1", peers)
    }

    fn hop(name: &str, prefix: &'static str, peers: &[&str]) -> Target {
        Target::hop_in(TestPki::new(), name, prefix, peers)
    }

    fn hop_in(pki: TestPki, name: &str, prefix: &'static str, peers: &[&str]) -> Target {
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
        let config = hop_config(&pki, name, prefix, emu, "/cbccvc/v1", peers);
        let mut hop = Proc::spawn(
            BIN,
            &[
                "run",
                "--config",
                &write(&dir, &format!("{name}.toml"), &config),
            ],
            &dir,
        );
        let port = hop.port(&format!("listening: hop {name}"));
        Target {
            pki,
            _emulator: emulator,
            _hop: hop,
            port,
            prefix,
        }
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

#[test]
fn only_the_exact_san_identity_makes_a_peer() {
    if !tool("curl") {
        return;
    }
    let t = Target::ndxp(TestPki::new(), &["LGSP-DEV"]);
    let body = packet();
    let relay = relay_args(&body);
    // The real relay: SAN URI `urn:lgsp:id:LGSP-DEV`.
    let (status, doc) = t.curl_as("lgsp-client", "/HoSoCBCCVC", &relay);
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
    let (status, doc) = t.curl_as("lgsp2-client", "/HoSoCBCCVC", &relay);
    assert_eq!(status, 200, "{doc}");
    let (status, doc) = t.curl_as("lgsp-client", "/HoSoCBCCVC", &relay);
    assert_eq!(status, 401, "{doc}");
}
