//! The steps, one function each, in the order an agency's system meets them. Each records its outcome in the run
//! and returns what the next step needs, or [`Failed`] to stop there.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use lgsp_config::ConfigPath;
use lgsp_schema::Format;
use rustls::AlertDescription;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::ProbeOptions;
use crate::report::{Failed, Run};

const URL_FIX: &str = "write the gateway's API base, e.g. https://lgsp.example.gov.vn:8443/lgsp/v1";

/// What the `files` step found: where to connect and what to send.
struct Setup {
    host: String,
    port: u16,
    /// The API base path, without a trailing slash.
    base: String,
    tls: Arc<rustls::ClientConfig>,
    sample: Option<Vec<u8>>,
    format: Format,
    message_type: String,
}

/// An answer read whole.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: http::HeaderMap,
    pub(crate) body: serde_json::Value,
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

/// An HTTP/1.1 connection to the gateway, sending as the agency would.
pub(crate) struct Exchange {
    sender: SendRequest<Full<Bytes>>,
    api_key: String,
    pub(crate) timeout: std::time::Duration,
    authority: String,
    content_type: &'static str,
}

/// Why an exchange gave no answer: the connection failed (`Some`), or no answer came in time (`None`).
pub(crate) type NoAnswer = Option<hyper::Error>;

impl Exchange {
    pub(crate) async fn post(
        &mut self,
        path: &str,
        body: Vec<u8>,
    ) -> Result<Result<Answer, NoAnswer>, http::Error> {
        self.request(Method::POST, path, &[], body).await
    }

    /// One request with the agency's key (and, with a body, its content type), `headers` added.
    pub(crate) async fn request(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<Result<Answer, NoAnswer>, http::Error> {
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, self.authority.as_str())
            .header("x-api-key", self.api_key.as_str());
        if !body.is_empty() {
            b = b.header(http::header::CONTENT_TYPE, self.content_type);
        }
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        let req = b.body(Full::new(Bytes::from(body)))?;
        // The connection takes the next request only once it has settled after the last answer (hyper's http1
        // sender refuses one sent before, as "canceled"); waiting for it is part of the exchange's time.
        let sender = &mut self.sender;
        let fut = async move {
            sender.ready().await?;
            sender.send_request(req).await
        };
        let resp = match tokio::time::timeout(self.timeout, fut).await {
            Err(_) => return Ok(Err(None)),
            Ok(Err(e)) => return Ok(Err(Some(e))),
            Ok(Ok(resp)) => resp,
        };
        let (parts, body) = resp.into_parts();
        let bytes = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Ok(Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body: serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        }))
    }
}

pub(crate) async fn all(run: &mut Run, opts: &ProbeOptions) -> Result<(), Failed> {
    let setup = files(run, opts)?;
    let tcp = tcp(run, opts, &setup).await?;
    let stream = tls(run, opts, &setup, tcp).await?;
    let (mut exchange, answer) = client_certificate(run, opts, &setup, stream).await?;
    let mode = api_key(run, &answer)?;
    let dry_run_path = format!("{}/validate/{}", setup.base, setup.message_type);
    route(run, &answer, &dry_run_path)?;
    let Some(body) = setup.sample.clone() else {
        run.skip("sample", "no --sample given");
        run.skip("round_trip", "no --sample given");
        return Ok(());
    };
    sample(run, &answer, &setup.message_type)?;
    let path = format!("{}/{}", setup.base, setup.message_type);
    round_trip(run, &mut exchange, &path, body, &mode).await
}

/// The URL, the certificate, key and CA, and the sample.
fn files(run: &mut Run, opts: &ProbeOptions) -> Result<Setup, Failed> {
    let url: Uri = opts.url.parse().map_err(|e| {
        run.fail(
            "files",
            format!("--url {} is not a URL: {e}", opts.url),
            URL_FIX,
        )
    })?;
    let (Some("https"), Some(host)) = (url.scheme_str(), url.host()) else {
        return Err(run.fail(
            "files",
            format!("--url {} is not an https URL with a host", opts.url),
            URL_FIX,
        ));
    };
    for (name, path) in [
        ("--cert", &opts.cert),
        ("--key", &opts.key),
        ("--ca", &opts.ca),
    ] {
        if let Err(e) = std::fs::metadata(path) {
            return Err(run.fail(
                "files",
                format!("{name} {}: {e}", path.display()),
                "pass the paths of your agency's certificate, its key and the CA certificate",
            ));
        }
    }
    let tls = client_tls(opts).map_err(|e| {
        run.fail(
            "files",
            e,
            "pass PEM files: your agency's certificate chain, its private key, and the CA certificate",
        )
    })?;
    let sample = match &opts.sample {
        Some(p) => Some(std::fs::read(p).map_err(|e| {
            run.fail(
                "files",
                format!("--sample {}: {e}", p.display()),
                "pass the path of a packet file (XML or JSON)",
            )
        })?),
        None => None,
    };
    let format = opts
        .sample
        .as_deref()
        .and_then(Format::from_path)
        .unwrap_or(Format::Xml);
    let message_type = opts
        .message_type
        .clone()
        .or_else(|| detect(format, sample.as_deref()?))
        .unwrap_or_else(|| "HoSoCBCCVC".to_owned());
    run.pass(
        "files",
        format!(
            "certificate, key and CA read; {message_type} {} to {}",
            if sample.is_some() { "sample" } else { "probe" },
            opts.url
        ),
    );
    Ok(Setup {
        host: host.trim_matches(['[', ']']).to_owned(),
        port: url.port_u16().unwrap_or(443),
        base: url.path().trim_end_matches('/').to_owned(),
        tls: Arc::new(tls),
        sample,
        format,
        message_type,
    })
}

fn detect(format: Format, bytes: &[u8]) -> Option<String> {
    let catalog = lgsp_schema::Catalog::embedded().ok()?;
    catalog.detect(format, bytes).map(str::to_owned)
}

/// The client TLS config: the agency's certificate and key, the CA of the gateway's certificate, HTTP/1.1.
pub(crate) fn client_tls(opts: &ProbeOptions) -> Result<rustls::ClientConfig, String> {
    let at = |p: &Path, what: &str| ConfigPath::given(PathBuf::from(p), what);
    let chain = lgsp_tls::load_certs(&at(&opts.cert, "--cert")).map_err(|e| e.to_string())?;
    let key = lgsp_tls::load_key(&at(&opts.key, "--key")).map_err(|e| e.to_string())?;
    let cas = lgsp_tls::load_certs(&at(&opts.ca, "--ca")).map_err(|e| e.to_string())?;
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
    Ok(cfg)
}

async fn tcp(run: &mut Run, opts: &ProbeOptions, s: &Setup) -> Result<TcpStream, Failed> {
    let (host, port) = (&s.host, s.port);
    match tokio::time::timeout(opts.timeout, TcpStream::connect((host.as_str(), port))).await {
        Ok(Ok(tcp)) => {
            let peer = tcp
                .peer_addr()
                .map_or_else(|_| format!("{host}:{port}"), |a| a.to_string());
            run.pass("tcp", format!("connected to {peer}"));
            Ok(tcp)
        }
        Ok(Err(e)) => Err(run.fail(
            "tcp",
            format!("cannot connect to {host}:{port}: {e}"),
            "check the host and port in --url, that the gateway runs, and that a firewall lets you through",
        )),
        Err(_) => Err(run.fail(
            "tcp",
            format!("no answer from {host}:{port} within {:?}", opts.timeout),
            "check the host and port in --url and the firewall between you and the gateway",
        )),
    }
}

/// The handshake and the server certificate. In TLS 1.2 the gateway refuses a client certificate inside the
/// handshake, after ours checked the server's: that failure belongs to the next step.
async fn tls(
    run: &mut Run,
    opts: &ProbeOptions,
    s: &Setup,
    tcp: TcpStream,
) -> Result<TlsStream<TcpStream>, Failed> {
    let Ok(server_name) = ServerName::try_from(s.host.clone()) else {
        return Err(run.fail(
            "tls",
            format!("{} is not a valid TLS server name", s.host),
            "use the host name the gateway's certificate names",
        ));
    };
    let connector = tokio_rustls::TlsConnector::from(s.tls.clone());
    let stream = match tokio::time::timeout(opts.timeout, connector.connect(server_name, tcp)).await
    {
        Err(_) => {
            return Err(run.fail(
                "tls",
                format!("the TLS handshake did not finish within {:?}", opts.timeout),
                "check that --url names the gateway's TLS port",
            ));
        }
        Ok(Err(e)) => return Err(handshake_failed(run, opts, &s.host, &e)),
        Ok(Ok(stream)) => stream,
    };
    run.pass("tls", server_detail(&stream, &s.host));
    Ok(stream)
}

fn handshake_failed(run: &mut Run, opts: &ProbeOptions, host: &str, e: &std::io::Error) -> Failed {
    match lgsp_tls::rustls_error(e) {
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
            run.pass("tls", "server certificate verified (TLS 1.2)".into());
            let (what, fix) = client_certificate_refused(*alert);
            run.fail("client_certificate", what, fix)
        }
        _ => run.fail(
            "tls",
            format!("TLS handshake failed: {e}"),
            "check that --url names the gateway's TLS port (https), not another service",
        ),
    }
}

/// The protocol, and the server certificate's subject and expiry (with a warning two weeks ahead).
fn server_detail(stream: &TlsStream<TcpStream>, host: &str) -> String {
    let (_, conn) = stream.get_ref();
    let version = conn
        .protocol_version()
        .map_or_else(|| "TLS".to_owned(), |v| format!("{v:?}"));
    let server = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| lgsp_tls::describe_certificate(c.as_ref()));
    let Some((subject, not_after)) = server else {
        return format!("{version}; server certificate verified");
    };
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

/// HTTP/1.1 over an established TLS connection, posting with the agency's key.
pub(crate) async fn exchange(
    stream: TlsStream<TcpStream>,
    opts: &ProbeOptions,
    authority: String,
    format: Format,
) -> Result<Exchange, hyper::Error> {
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(Exchange {
        sender,
        api_key: opts.api_key.clone(),
        timeout: opts.timeout,
        authority,
        content_type: match format {
            Format::Xml => "application/xml",
            Format::Json => "application/json",
        },
    })
}

/// The first exchange (the sample's dry run): in TLS 1.3 the gateway judges the client certificate here.
async fn client_certificate(
    run: &mut Run,
    opts: &ProbeOptions,
    s: &Setup,
    stream: TlsStream<TcpStream>,
) -> Result<(Exchange, Answer), Failed> {
    let authority = format!("{}:{}", s.host, s.port);
    let mut exchange = exchange(stream, opts, authority, s.format)
        .await
        .map_err(|e| {
            run.fail(
                "client_certificate",
                format!("HTTP could not start over TLS: {e}"),
                "check that --url names the gateway",
            )
        })?;
    let path = format!("{}/validate/{}", s.base, s.message_type);
    let sent = exchange
        .post(&path, s.sample.clone().unwrap_or_default())
        .await
        .map_err(|_| {
            run.fail(
                "client_certificate",
                "the request could not be built".into(),
                "check --url and --api-key for characters HTTP does not allow",
            )
        })?;
    match sent {
        Ok(answer) => {
            run.pass(
                "client_certificate",
                "the gateway accepted the client certificate".into(),
            );
            Ok((exchange, answer))
        }
        Err(e) => Err(connection_refused(run, opts, e)),
    }
}

fn connection_refused(run: &mut Run, opts: &ProbeOptions, e: NoAnswer) -> Failed {
    let alert = e.as_ref().and_then(|e| match lgsp_tls::rustls_error(e) {
        Some(rustls::Error::AlertReceived(a)) => Some(*a),
        _ => None,
    });
    if let Some(a) = alert {
        let (what, fix) = client_certificate_refused(a);
        return run.fail("client_certificate", what, fix);
    }
    run.fail(
        "client_certificate",
        match e {
            Some(e) => format!("the gateway closed the connection: {e}"),
            None => format!("no answer within {:?}", opts.timeout),
        },
        "check that your client certificate is your agency's and that the gateway accepts its CA",
    )
}

/// The API key and its binding to the certificate; returns the mode the gateway saw.
fn api_key(run: &mut Run, answer: &Answer) -> Result<String, Failed> {
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
        return Err(run.fail(
            "api_key",
            format!("{} ({})", answer.detail(), answer.code()),
            fix,
        ));
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
    Ok(mode)
}

fn route(run: &mut Run, answer: &Answer, path: &str) -> Result<(), Failed> {
    let refused = |run: &mut Run, fix| {
        run.fail(
            "route",
            format!("POST {path}: {} ({})", answer.detail(), answer.code()),
            fix,
        )
    };
    if matches!(
        answer.code(),
        "route.not_found" | "route.method_not_allowed" | "route.agency_not_allowed"
    ) {
        return Err(refused(
            run,
            "check --url: it ends at the API prefix the operator published, e.g. https://host:8443/lgsp/v1",
        ));
    }
    if answer.status.is_server_error() {
        return Err(refused(
            run,
            "the gateway failed on its side; tell the LGSP operator the message id",
        ));
    }
    run.pass("route", format!("POST {path} reached the dry-run route"));
    Ok(())
}

/// The sample's dry-run verdict, with the first errors when it is refused.
fn sample(run: &mut Run, answer: &Answer, message_type: &str) -> Result<(), Failed> {
    if answer.status == StatusCode::OK {
        run.pass(
            "sample",
            format!("the sample is a valid {message_type} packet (dry run, nothing sent)"),
        );
        return Ok(());
    }
    let mut detail = format!("{} ({})", answer.detail(), answer.code());
    for e in answer.body["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .take(5)
    {
        detail.push_str(&format!(
            "\n  {} (line {}): {} — {}",
            e["path"].as_str().unwrap_or("/"),
            e["line"],
            e["rule"].as_str().unwrap_or_default(),
            e["message"].as_str().unwrap_or_default()
        ));
    }
    Err(run.fail(
        "sample",
        detail,
        "fix the packet (every error is listed; `lgsp-gateway validate FILE` checks it offline)",
    ))
}

/// The sample sent for real, answered with a receipt (biên nhận).
async fn round_trip(
    run: &mut Run,
    exchange: &mut Exchange,
    path: &str,
    body: Vec<u8>,
    mode: &str,
) -> Result<(), Failed> {
    let sent = exchange.post(path, body).await.map_err(|_| {
        run.fail(
            "round_trip",
            "the request could not be built".into(),
            "check --url",
        )
    })?;
    match sent {
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
                    a.body["mode"].as_str().unwrap_or(mode)
                ),
            );
            Ok(())
        }
        // A broker route: the broker confirmed the packet (the route's upstream is a queue, not an endpoint).
        Ok(a) if a.status == StatusCode::ACCEPTED && a.body["status"] == "published" => {
            let at = match (a.body["stream"].as_str(), a.body["sequence"].as_u64()) {
                (Some(stream), Some(seq)) => format!(", stream {stream} #{seq}"),
                _ => String::new(),
            };
            run.pass(
                "round_trip",
                format!(
                    "message {} published to {} {}{at}{}",
                    a.body["message_id"].as_str().unwrap_or_default(),
                    a.body["broker"].as_str().unwrap_or("the broker"),
                    a.body["destination"].as_str().unwrap_or_default(),
                    if a.body["duplicate"] == true {
                        " (the broker had it already)"
                    } else {
                        ""
                    }
                ),
            );
            Ok(())
        }
        // A queued route: the journal holds it; its delivery is told at its status URL.
        Ok(a) if a.status == StatusCode::ACCEPTED && a.body["status"] == "queued" => {
            run.pass(
                "round_trip",
                format!(
                    "message {} queued for delivery; follow it at {}",
                    a.body["message_id"].as_str().unwrap_or_default(),
                    a.body["status_url"].as_str().unwrap_or("the messages route")
                ),
            );
            Ok(())
        }
        Ok(a) => Err(run.fail(
            "round_trip",
            format!("{} ({}, HTTP {})", a.detail(), a.code(), a.status.as_u16()),
            "the packet passed here but the chain behind the gateway did not answer with a receipt; resend later with the same Idempotency-Key, and tell the LGSP operator if it persists",
        )),
        Err(e) => Err(run.fail(
            "round_trip",
            match e {
                Some(e) => format!("the connection failed: {e}"),
                None => format!("no answer within {:?}", exchange.timeout),
            },
            "resend later; tell the LGSP operator if it persists",
        )),
    }
}
