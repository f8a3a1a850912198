//! The integrator's connectivity probe (`lgsp-gateway probe`): walks the connection an agency's system makes,
//! one step at a time, and says for each what passed, how long it took, and what to fix when it failed — TCP,
//! the TLS handshake and the server certificate, the client certificate (told apart by the alert the gateway
//! sends: unknown CA, expired, revoked, missing), the API key and its binding to the certificate, the route, the
//! sample packet (dry run), and a round trip to the national endpoint with its receipt.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use lgsp_config::ConfigPath;
use rustls::AlertDescription;
use rustls::pki_types::ServerName;
use serde::Serialize;
use tokio::net::TcpStream;

/// What to probe with.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    /// The gateway's API base, e.g. `https://lgsp.example.gov.vn:8443/lgsp/v1`.
    pub url: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    pub api_key: String,
    /// A packet to dry-run and then send (XML or JSON).
    pub sample: Option<PathBuf>,
    /// Its message type; default: read from the packet (or `HoSoCBCCVC` without one).
    pub message_type: Option<String>,
    /// Bound on each network step.
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    Fail,
    /// Not run: an earlier step failed, or there is nothing to run it with.
    Skipped,
}

/// One step of the probe.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// Stable name: `files`, `tcp`, `tls`, `client_certificate`, `api_key`, `route`, `sample`, `round_trip`.
    pub name: &'static str,
    pub outcome: Outcome,
    pub millis: f64,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// No step failed.
    pub ok: bool,
    pub steps: Vec<Step>,
}

const STEPS: &[&str] = &[
    "files",
    "tcp",
    "tls",
    "client_certificate",
    "api_key",
    "route",
    "sample",
    "round_trip",
];

struct Run {
    steps: Vec<Step>,
    clock: Instant,
}

impl Run {
    fn pass(&mut self, name: &'static str, detail: String) {
        self.push(name, Outcome::Pass, detail, None);
    }

    fn fail(&mut self, name: &'static str, detail: String, fix: impl Into<String>) -> Report {
        self.push(name, Outcome::Fail, detail, Some(fix.into()));
        self.finish()
    }

    fn skip(&mut self, name: &'static str, detail: &str) {
        self.push(name, Outcome::Skipped, detail.to_owned(), None);
    }

    fn push(&mut self, name: &'static str, outcome: Outcome, detail: String, fix: Option<String>) {
        let millis = self.clock.elapsed().as_secs_f64() * 1000.0;
        self.clock = Instant::now();
        self.steps.push(Step {
            name,
            outcome,
            millis,
            detail,
            fix,
        });
    }

    /// The report; steps not reached are listed as skipped.
    fn finish(&mut self) -> Report {
        for name in STEPS.iter().skip(self.steps.len()) {
            self.steps.push(Step {
                name,
                outcome: Outcome::Skipped,
                millis: 0.0,
                detail: "not run: an earlier step failed".into(),
                fix: None,
            });
        }
        Report {
            ok: self.steps.iter().all(|s| s.outcome != Outcome::Fail),
            steps: std::mem::take(&mut self.steps),
        }
    }
}

/// An answer read whole.
struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: serde_json::Value,
}

impl Answer {
    fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or_default()
    }

    fn detail(&self) -> String {
        self.body["detail"]
            .as_str()
            .map_or_else(|| format!("HTTP {}", self.status), str::to_owned)
    }
}

/// The rustls error somewhere in an error's chain.
fn rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(x) = cur {
        if let Some(r) = x.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(io) = x.downcast_ref::<std::io::Error>()
            && let Some(r) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
        {
            return Some(r);
        }
        cur = x.source();
    }
    None
}

/// What the gateway's alert about our client certificate means, and the fix.
fn client_certificate_refused(alert: AlertDescription) -> (String, &'static str) {
    match alert {
        AlertDescription::UnknownCA => (
            "the gateway does not trust the CA that issued your client certificate (alert unknown_ca)".into(),
            "use the certificate issued to your agency under the CA the LGSP operator accepts (--cert/--key)",
        ),
        AlertDescription::CertificateExpired => (
            "your client certificate has expired (alert certificate_expired)".into(),
            "renew the certificate with the issuing CA and install the new one",
        ),
        AlertDescription::CertificateRevoked => (
            "your client certificate has been revoked (alert certificate_revoked)".into(),
            "ask the issuing CA for a new certificate; the revoked one will never be accepted again",
        ),
        AlertDescription::CertificateRequired => (
            "the gateway requires a client certificate and got none (alert certificate_required)".into(),
            "pass your agency's certificate and key with --cert and --key",
        ),
        other => (
            format!("the gateway refused the client certificate (alert {other:?})"),
            "check that --cert and --key are your agency's pair and that the certificate is for client authentication",
        ),
    }
}

fn read_file(name: &str, path: &std::path::Path) -> Result<(), String> {
    std::fs::metadata(path)
        .map(|_| ())
        .map_err(|e| format!("{name} {}: {e}", path.display()))
}

/// Runs every step; stops at the first failure.
pub async fn probe(opts: &ProbeOptions) -> Report {
    let mut run = Run {
        steps: Vec::new(),
        clock: Instant::now(),
    };
    // Files and URL.
    let url: Uri = match opts.url.parse() {
        Ok(u) => u,
        Err(e) => {
            return run.fail(
                "files",
                format!("--url {} is not a URL: {e}", opts.url),
                "write the gateway's API base, e.g. https://lgsp.example.gov.vn:8443/lgsp/v1",
            );
        }
    };
    let (Some("https"), Some(host)) = (url.scheme_str(), url.host()) else {
        return run.fail(
            "files",
            format!("--url {} is not an https URL with a host", opts.url),
            "write the gateway's API base, e.g. https://lgsp.example.gov.vn:8443/lgsp/v1",
        );
    };
    let host = host.trim_matches(['[', ']']).to_owned();
    let port = url.port_u16().unwrap_or(443);
    let base = url.path().trim_end_matches('/').to_owned();
    for (name, path) in [
        ("--cert", &opts.cert),
        ("--key", &opts.key),
        ("--ca", &opts.ca),
    ] {
        if let Err(e) = read_file(name, path) {
            return run.fail(
                "files",
                e,
                "pass the paths of your agency's certificate, its key and the CA certificate",
            );
        }
    }
    let at = |p: &PathBuf| ConfigPath {
        path: p.clone(),
        line: 0,
    };
    let loaded = (|| {
        let chain = lgsp_tls::load_certs(&at(&opts.cert)).map_err(|e| e.to_string())?;
        let key = lgsp_tls::load_key(&at(&opts.key)).map_err(|e| e.to_string())?;
        let cas = lgsp_tls::load_certs(&at(&opts.ca)).map_err(|e| e.to_string())?;
        let mut roots = rustls::RootCertStore::empty();
        for c in cas {
            roots.add(c).map_err(|e| format!("--ca: {e}"))?;
        }
        let mut cfg = rustls::ClientConfig::builder_with_provider(lgsp_tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("--cert/--key do not form a pair: {e}"))?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok::<_, String>(cfg)
    })();
    let tls_config = match loaded {
        Ok(c) => Arc::new(c),
        Err(e) => {
            return run.fail(
                "files",
                e,
                "pass PEM files: your agency's certificate chain, its private key, and the CA certificate",
            );
        }
    };
    let sample = match &opts.sample {
        Some(p) => match std::fs::read(p) {
            Ok(b) => Some((p.clone(), b)),
            Err(e) => {
                return run.fail(
                    "files",
                    format!("--sample {}: {e}", p.display()),
                    "pass the path of a packet file (XML or JSON)",
                );
            }
        },
        None => None,
    };
    let format = sample
        .as_ref()
        .and_then(|(p, _)| lgsp_schema::Format::from_path(p))
        .unwrap_or(lgsp_schema::Format::Xml);
    let message_type = opts
        .message_type
        .clone()
        .or_else(|| {
            let (_, bytes) = sample.as_ref()?;
            let catalog = lgsp_schema::Catalog::embedded().ok()?;
            catalog.detect(format, bytes).map(str::to_owned)
        })
        .unwrap_or_else(|| "HoSoCBCCVC".to_owned());
    run.pass(
        "files",
        format!(
            "certificate, key and CA read; {} {} to {}",
            message_type,
            if sample.is_some() { "sample" } else { "probe" },
            opts.url
        ),
    );

    // TCP.
    let tcp = match tokio::time::timeout(opts.timeout, TcpStream::connect((host.as_str(), port)))
        .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return run.fail(
                "tcp",
                format!("cannot connect to {host}:{port}: {e}"),
                "check the host and port in --url, that the gateway runs, and that a firewall lets you through",
            );
        }
        Err(_) => {
            return run.fail(
                "tcp",
                format!("no answer from {host}:{port} within {:?}", opts.timeout),
                "check the host and port in --url and the firewall between you and the gateway",
            );
        }
    };
    let peer = tcp
        .peer_addr()
        .map_or_else(|_| format!("{host}:{port}"), |a| a.to_string());
    run.pass("tcp", format!("connected to {peer}"));

    // TLS handshake and the server certificate.
    let Ok(server_name) = ServerName::try_from(host.clone()) else {
        return run.fail(
            "tls",
            format!("{host} is not a valid TLS server name"),
            "use the host name the gateway's certificate names",
        );
    };
    let connector = tokio_rustls::TlsConnector::from(tls_config);
    let stream = match tokio::time::timeout(opts.timeout, connector.connect(server_name, tcp)).await
    {
        Err(_) => {
            return run.fail(
                "tls",
                format!("the TLS handshake did not finish within {:?}", opts.timeout),
                "check that --url names the gateway's TLS port",
            );
        }
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return match rustls_error(&e) {
                Some(rustls::Error::InvalidCertificate(c)) => {
                    let (what, fix) = match c {
                        rustls::CertificateError::UnknownIssuer => (
                            format!(
                                "the server certificate does not chain to the CA in {}",
                                opts.ca.display()
                            ),
                            "pass the CA certificate the LGSP operator published with --ca",
                        ),
                        rustls::CertificateError::NotValidForName
                        | rustls::CertificateError::NotValidForNameContext { .. } => (
                            format!("the server certificate is not valid for {host}"),
                            "use the host name written in the gateway's certificate in --url",
                        ),
                        rustls::CertificateError::Expired
                        | rustls::CertificateError::ExpiredContext { .. } => (
                            "the server certificate has expired".to_owned(),
                            "tell the LGSP operator: the gateway's certificate must be renewed",
                        ),
                        other => (
                            format!("the server certificate was refused: {other:?}"),
                            "check --ca and --url against what the LGSP operator published",
                        ),
                    };
                    run.fail("tls", what, fix)
                }
                Some(rustls::Error::AlertReceived(alert)) => {
                    // TLS 1.2 refuses the client certificate inside the handshake, after ours checked the server's.
                    run.pass("tls", "server certificate verified (TLS 1.2)".into());
                    let (what, fix) = client_certificate_refused(*alert);
                    run.fail("client_certificate", what, fix)
                }
                _ => run.fail(
                    "tls",
                    format!("TLS handshake failed: {e}"),
                    "check that --url names the gateway's TLS port (https), not another service",
                ),
            };
        }
    };
    let (_, conn) = stream.get_ref();
    let version = conn
        .protocol_version()
        .map_or_else(|| "TLS".to_owned(), |v| format!("{v:?}"));
    let server = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| lgsp_tls::describe_certificate(c.as_ref()));
    let server_detail = match server {
        Some((subject, not_after)) => {
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let days = (not_after - now) / 86_400;
            let until = time::OffsetDateTime::from_unix_timestamp(not_after)
                .map(|t| t.date().to_string())
                .unwrap_or_default();
            let warn = if days < 14 {
                " — renewal due soon"
            } else {
                ""
            };
            format!(
                "{version}; server certificate {subject} chains to the CA, valid for {host}, expires {until} (in {days} days){warn}"
            )
        }
        None => format!("{version}; server certificate verified"),
    };
    run.pass("tls", server_detail);

    // HTTP over this connection: the client certificate is judged on the first exchange (TLS 1.3).
    let (mut sender, connection) =
        match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
            Ok(x) => x,
            Err(e) => {
                return run.fail(
                    "client_certificate",
                    format!("HTTP could not start over TLS: {e}"),
                    "check that --url names the gateway",
                );
            }
        };
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let ctype = match format {
        lgsp_schema::Format::Xml => "application/xml",
        lgsp_schema::Format::Json => "application/json",
    };
    let body = sample.as_ref().map(|(_, b)| b.clone()).unwrap_or_default();
    let authority = format!("{host}:{port}");
    let request = |path: String, body: Vec<u8>| {
        Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(http::header::HOST, authority.as_str())
            .header("x-api-key", opts.api_key.as_str())
            .header(http::header::CONTENT_TYPE, ctype)
            .body(Full::new(Bytes::from(body)))
    };
    let exchange = |sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
                    req: Request<Full<Bytes>>| {
        let fut = sender.send_request(req);
        async move {
            let resp = tokio::time::timeout(opts.timeout, fut)
                .await
                .map_err(|_| None)?
                .map_err(Some)?;
            let (parts, body) = resp.into_parts();
            let bytes = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Ok::<_, Option<hyper::Error>>(Answer {
                status: parts.status,
                headers: parts.headers,
                body: serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
            })
        }
    };
    let dry_run_path = format!("{base}/validate/{message_type}");
    let Ok(req) = request(dry_run_path.clone(), body.clone()) else {
        return run.fail(
            "client_certificate",
            "the request could not be built".into(),
            "check --url and --api-key for characters HTTP does not allow",
        );
    };
    let answer = match exchange(&mut sender, req).await {
        Ok(a) => a,
        Err(e) => {
            let alert = e.as_ref().and_then(|e| match rustls_error(e) {
                Some(rustls::Error::AlertReceived(a)) => Some(*a),
                _ => None,
            });
            return match alert {
                Some(a) => {
                    let (what, fix) = client_certificate_refused(a);
                    run.fail("client_certificate", what, fix)
                }
                None => run.fail(
                    "client_certificate",
                    match e {
                        Some(e) => format!("the gateway closed the connection: {e}"),
                        None => format!("no answer within {:?}", opts.timeout),
                    },
                    "check that your client certificate is your agency's and that the gateway accepts its CA",
                ),
            };
        }
    };
    run.pass(
        "client_certificate",
        "the gateway accepted the client certificate".into(),
    );

    // The API key and its binding to the certificate.
    if answer.code().starts_with("auth.") {
        let fix = match answer.code() {
            "auth.missing_key" | "auth.unknown_key" => {
                "pass the API key the LGSP operator issued to your agency with --api-key"
            }
            "auth.key_not_bound_to_certificate" => {
                "use the API key and the certificate of the same agency"
            }
            "auth.trial_agency_production_key" => {
                "your agency is in trial: use its trial key until the operator switches it to official"
            }
            _ => "see the detail; ask the LGSP operator if it persists",
        };
        return run.fail(
            "api_key",
            format!("{} ({})", answer.detail(), answer.code()),
            fix,
        );
    }
    let mode = answer
        .headers
        .get("x-lgsp-mode")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("production")
        .to_owned();
    run.pass(
        "api_key",
        format!("the API key is accepted and bound to the certificate ({mode} mode)"),
    );

    // The route.
    if matches!(
        answer.code(),
        "route.not_found" | "route.method_not_allowed" | "route.agency_not_allowed"
    ) {
        return run.fail(
            "route",
            format!("POST {dry_run_path}: {} ({})", answer.detail(), answer.code()),
            "check --url: it ends at the API prefix the operator published, e.g. https://host:8443/lgsp/v1",
        );
    }
    if answer.status.is_server_error() {
        return run.fail(
            "route",
            format!(
                "POST {dry_run_path}: {} ({})",
                answer.detail(),
                answer.code()
            ),
            "the gateway failed on its side; tell the LGSP operator the message id",
        );
    }
    run.pass(
        "route",
        format!("POST {dry_run_path} reached the dry-run route"),
    );

    // The sample, dry run.
    if sample.is_none() {
        run.skip("sample", "no --sample given");
        run.skip("round_trip", "no --sample given");
        return run.finish();
    }
    if answer.status != StatusCode::OK {
        let errors: Vec<String> = answer.body["errors"]
            .as_array()
            .map(|a| {
                a.iter()
                    .take(5)
                    .map(|e| {
                        format!(
                            "{} (line {}): {} — {}",
                            e["path"].as_str().unwrap_or("/"),
                            e["line"],
                            e["rule"].as_str().unwrap_or_default(),
                            e["message"].as_str().unwrap_or_default()
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut detail = format!("{} ({})", answer.detail(), answer.code());
        for e in errors {
            detail.push_str("\n  ");
            detail.push_str(&e);
        }
        return run.fail(
            "sample",
            detail,
            "fix the packet (every error is listed; `lgsp-gateway validate FILE` checks it offline)",
        );
    }
    run.pass(
        "sample",
        format!("the sample is a valid {message_type} packet (dry run, nothing sent)"),
    );

    // The round trip.
    let Ok(req) = request(format!("{base}/{message_type}"), body) else {
        return run.fail(
            "round_trip",
            "the request could not be built".into(),
            "check --url",
        );
    };
    match exchange(&mut sender, req).await {
        Ok(a) if a.status == StatusCode::OK && a.body["receipt_id"].is_string() => {
            let answered = a
                .headers
                .get("x-lgsp-answered-by")
                .and_then(|v| v.to_str().ok())
                .map(|v| format!(", answered by {v}"))
                .unwrap_or_default();
            run.pass(
                "round_trip",
                format!(
                    "receipt {} for message {} ({} mode{answered})",
                    a.body["receipt_id"].as_str().unwrap_or_default(),
                    a.body["message_id"].as_str().unwrap_or_default(),
                    a.body["mode"].as_str().unwrap_or(&mode)
                ),
            );
            run.finish()
        }
        Ok(a) => run.fail(
            "round_trip",
            format!("{} ({}, HTTP {})", a.detail(), a.code(), a.status.as_u16()),
            "the packet passed here but the chain behind the gateway did not answer with a receipt; resend later with the same message id, and tell the LGSP operator if it persists",
        ),
        Err(e) => run.fail(
            "round_trip",
            match e {
                Some(e) => format!("the connection failed: {e}"),
                None => format!("no answer within {:?}", opts.timeout),
            },
            "resend later; tell the LGSP operator if it persists",
        ),
    }
}
