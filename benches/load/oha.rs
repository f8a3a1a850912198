//! The load client: oha (`cargo install oha --locked`), an HTTP load generator that speaks mTLS and is not this
//! project's, run for a fixed time and read from its JSON summary.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

/// How requests reach the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1, each connection kept alive.
    Http1,
    /// HTTP/2, one stream at a time per connection.
    Http2,
    /// HTTP/1.1 with a new TCP connection and TLS handshake per request (the handshake's cost).
    NewConnection,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Http1, Protocol::Http2, Protocol::NewConnection];

    pub fn label(self) -> &'static str {
        match self {
            Protocol::Http1 => "HTTP/1.1 keep-alive",
            Protocol::Http2 => "HTTP/2",
            Protocol::NewConnection => "new TLS connection per request",
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Protocol::Http1 => "h1",
            Protocol::Http2 => "h2",
            Protocol::NewConnection => "new",
        }
    }

    fn args(self) -> &'static [&'static str] {
        match self {
            Protocol::Http1 => &[],
            Protocol::Http2 => &["--http2"],
            Protocol::NewConnection => &["--disable-keepalive"],
        }
    }
}

/// The client's side of one run.
pub struct Load<'a> {
    pub oha: &'a Path,
    pub url: String,
    pub headers: Vec<String>,
    pub body: &'a Path,
    pub certs: &'a Path,
    pub connections: usize,
    pub duration: Duration,
    pub protocol: Protocol,
}

/// What oha measured.
#[derive(Clone, Debug, Default)]
pub struct Measured {
    pub requests: u64,
    /// Answers with a 2xx status.
    pub ok: u64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    /// Status codes and errors other than 2xx, as oha counted them (`"503": 12`, `"connection closed": 1`).
    pub failures: Vec<(String, u64)>,
}

impl Load<'_> {
    /// The oha command line, as the report prints it.
    pub fn command(&self) -> Vec<String> {
        let c = |f: &str| self.certs.join(f).display().to_string();
        let mut args: Vec<String> = vec![
            "--no-tui".into(),
            "--output-format".into(),
            "json".into(),
            "-z".into(),
            format!("{}s", self.duration.as_secs()),
            "-c".into(),
            self.connections.to_string(),
            "-m".into(),
            "POST".into(),
            "-T".into(),
            "application/xml".into(),
            "-D".into(),
            self.body.display().to_string(),
            "--cert".into(),
            c("agency-000.00.00.H29.pem"),
            "--key".into(),
            c("agency-000.00.00.H29.key"),
            "--cacert".into(),
            c("ca.pem"),
            // Requests cut by the end of the run are waited for, not counted as errors.
            "-w".into(),
        ];
        args.extend(self.protocol.args().iter().map(|a| (*a).to_owned()));
        for h in &self.headers {
            args.push("-H".into());
            args.push(h.clone());
        }
        args.push(self.url.clone());
        args
    }

    pub fn run(&self) -> Measured {
        let out = Command::new(self.oha)
            .args(self.command())
            .output()
            .expect("run oha");
        assert!(
            out.status.success(),
            "oha failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "oha printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        measured(&doc)
    }
}

fn measured(doc: &Value) -> Measured {
    let ms = |p: &str| doc["latencyPercentiles"][p].as_f64().unwrap_or(f64::NAN) * 1000.0;
    let mut requests = 0;
    let mut ok = 0;
    let mut failures = Vec::new();
    if let Some(codes) = doc["statusCodeDistribution"].as_object() {
        for (code, n) in codes {
            let n = n.as_u64().unwrap_or(0);
            requests += n;
            if code.starts_with('2') {
                ok += n;
            } else {
                failures.push((code.clone(), n));
            }
        }
    }
    if let Some(errors) = doc["errorDistribution"].as_object() {
        for (what, n) in errors {
            let n = n.as_u64().unwrap_or(0);
            requests += n;
            failures.push((what.clone(), n));
        }
    }
    let seconds = doc["summary"]["total"].as_f64().unwrap_or(f64::NAN);
    Measured {
        requests,
        ok,
        // 2xx answers per second: a server that answers errors fast does not look fast.
        rps: ok as f64 / seconds,
        p50_ms: ms("p50"),
        p99_ms: ms("p99"),
        p999_ms: ms("p99.9"),
        failures,
    }
}

/// oha on `PATH` or where `cargo install` puts it.
pub fn find() -> Option<PathBuf> {
    let installed = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|d| d.join("bin/oha"));
    std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("oha"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .chain(installed)
        .find(|p| p.is_file())
}
