//! What one agency, a careless client or a stolen certificate can try, played against the built binary over real
//! TLS with real clients (curl), each refused as the README says. The regression suite of the hardening work: a
//! test per attack, added as each defence lands.

use std::path::{Path, PathBuf};

use lgsp_testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_lgsp-gateway");
const KEY_H29: &str = "lgsp_dev_000.00.00.H29_production";

/// An emulator and an LGSP hop in front of it, each its own process of the built binary.
struct Target {
    pki: TestPki,
    _emulator: Proc,
    _lgsp: Proc,
    port: u16,
}

impl Target {
    fn start() -> Target {
        let pki = TestPki::new();
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
        let config = hop_config(&pki, "lgsp", "/lgsp/v1", emu, "/cbccvc/v1", &[]);
        let mut lgsp = Proc::spawn(
            BIN,
            &["run", "--config", &write(&dir, "lgsp.toml", &config)],
            &dir,
        );
        let port = lgsp.port("listening: hop lgsp");
        Target {
            pki,
            _emulator: emulator,
            _lgsp: lgsp,
            port,
        }
    }

    fn dir(&self) -> &Path {
        self.pki.dir()
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir().join(name)
    }

    /// curl as agency H29 with its key: (status, body). `extra` are further curl arguments.
    fn curl(&self, path: &str, extra: &[&str]) -> (u16, serde_json::Value) {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--path-as-is", "-o", "-", "-w", "\n%{http_code}"])
            .args([
                "--cert",
                &self.file(&format!("{AGENCY_OK}.pem")).display().to_string(),
            ])
            .args([
                "--key",
                &self.file(&format!("{AGENCY_OK}.key")).display().to_string(),
            ])
            .args(["--cacert", &self.file("ca.pem").display().to_string()])
            .args(["-H", &format!("X-API-Key: {KEY_H29}")])
            .args(extra)
            .arg(format!("https://localhost:{}{path}", self.port))
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
        "/lgsp/v1/HoSoCBCCVC/../BienChe",
        "/lgsp/v1/HoSoCBCCVC/%2e%2e/BienChe",
        "/lgsp/v1/HoSoCBCCVC/%2E./BienChe",
        "/lgsp/v1/HoSoCBCCVC%2F..%2FBienChe",
        "/lgsp/v1/HoSoCBCCVC%5C..%5CBienChe",
        "/lgsp/v1/./HoSoCBCCVC",
    ] {
        let (status, doc) = t.curl(path, &post);
        assert_eq!(
            (status, doc["code"].as_str()),
            (400, Some("route.bad_path")),
            "{path}: {doc}"
        );
    }
    // The same packet on its own path goes through.
    let (status, doc) = t.curl("/lgsp/v1/HoSoCBCCVC", &post);
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
        t.curl("/lgsp/v1/HoSoCBCCVC", &args)
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
