//! The admin listener: `/metrics` (Prometheus text), `/healthz` (the process answers), `/readyz` (every listener
//! is bound and serving), `POST /admin/reload`. Plain HTTP/1.1, meant for loopback or a management network; it
//! answers only requests that name it (DNS rebinding), refuses browsers' cross-origin requests, and reloads only
//! for the bearer of the admin token.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::Metrics;

/// Whether the gateway is ready for traffic; set once every listener is serving, cleared when draining.
#[derive(Debug, Default, Clone)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Reloads the config; `Ok` carries a summary, `Err` why the file was refused (the old config keeps serving).
pub type ReloadHook = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

/// Who may use the admin listener.
#[derive(Debug, Clone, Default)]
pub struct AdminAccess {
    /// SHA-256 of the admin token (`[admin] token_file`); `None`: `POST /admin/reload` is off (SIGHUP reloads).
    pub token_sha256: Option<[u8; 32]>,
    /// Names the listener answers to besides IP literals and `localhost` (`[admin] hosts`).
    pub hosts: Vec<String>,
}

pub type LiveAccess = Arc<arc_swap::ArcSwap<AdminAccess>>;

/// Why the admin listener refused a request.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("Host {0:?} is not this listener")]
    ForeignHost(String),
    #[error("cross-origin request from {0:?}")]
    ForeignOrigin(String),
    #[error("no admin token configured")]
    ReloadOff,
    #[error("missing or wrong admin token")]
    BadToken,
}

impl lgsp_problem::Problem for AdminError {
    fn status(&self) -> StatusCode {
        match self {
            AdminError::ForeignHost(_) => StatusCode::MISDIRECTED_REQUEST,
            AdminError::ForeignOrigin(_) => StatusCode::FORBIDDEN,
            AdminError::ReloadOff => StatusCode::NOT_FOUND,
            AdminError::BadToken => StatusCode::UNAUTHORIZED,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            AdminError::ForeignHost(_) => "admin.unknown_host",
            AdminError::ForeignOrigin(_) => "admin.cross_origin",
            AdminError::ReloadOff => "admin.reload_disabled",
            AdminError::BadToken => "admin.unauthorized",
        }
    }

    fn detail(&self) -> String {
        match self {
            AdminError::ForeignHost(h) => format!(
                "The admin listener answers requests addressed to its IP address, localhost, or a name in [admin] hosts; Host {h:?} is none of them (a DNS name pointing here is how a web page reaches it)."
            ),
            AdminError::ForeignOrigin(o) => format!(
                "Requests sent by a web page (Origin {o:?}) are refused; call the admin listener with curl or your tooling."
            ),
            AdminError::ReloadOff => "Reloading over HTTP needs an admin token: set [admin] token_file, or reload with SIGHUP (kill -HUP <pid>).".to_owned(),
            AdminError::BadToken => "Send the admin token: Authorization: Bearer <the contents of [admin] token_file>.".to_owned(),
        }
    }

    fn headers(&self) -> Vec<(http::HeaderName, http::HeaderValue)> {
        match self {
            AdminError::BadToken => vec![(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"lgsp-gateway admin\""),
            )],
            _ => Vec::new(),
        }
    }
}

impl AdminAccess {
    /// Keeps only the token's SHA-256.
    pub fn new(token: Option<&str>, hosts: Vec<String>) -> AdminAccess {
        use sha2::Digest;
        AdminAccess {
            token_sha256: token.map(|t| sha2::Sha256::digest(t.as_bytes()).into()),
            hosts,
        }
    }

    /// Refuses a request that does not name this listener (`port` is the one it is bound to) or comes from a web
    /// page. Host names are compared case-insensitively; a missing Host is refused too.
    pub fn admits(&self, headers: &http::HeaderMap, port: u16) -> Result<(), AdminError> {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        if !self.names_us(host, port) {
            return Err(AdminError::ForeignHost(host.to_owned()));
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            return Err(AdminError::ForeignOrigin(
                origin.to_str().unwrap_or("(not text)").to_owned(),
            ));
        }
        Ok(())
    }

    fn names_us(&self, host: &str, port: u16) -> bool {
        let (name, given_port) = match host.rsplit_once(':') {
            // `[::1]:9464`, `127.0.0.1:9464`, `name:9464`; a bare IPv6 literal has colons but no brackets.
            Some((n, p)) if !n.is_empty() && (n.ends_with(']') || !n.contains(':')) => (n, Some(p)),
            _ => (host, None),
        };
        if given_port.is_some_and(|p| p.parse() != Ok(port)) || name.is_empty() {
            return false;
        }
        let bare = name.trim_start_matches('[').trim_end_matches(']');
        bare.parse::<std::net::IpAddr>().is_ok()
            || name.eq_ignore_ascii_case("localhost")
            || self.hosts.iter().any(|h| h.eq_ignore_ascii_case(name))
    }

    /// Whether the request carries the admin token.
    pub fn authorizes(&self, headers: &http::HeaderMap) -> Result<(), AdminError> {
        use sha2::Digest;
        use subtle::ConstantTimeEq;
        let expected = self.token_sha256.ok_or(AdminError::ReloadOff)?;
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
            .ok_or(AdminError::BadToken)?;
        let digest: [u8; 32] = sha2::Sha256::digest(presented.as_bytes()).into();
        if bool::from(digest.ct_eq(&expected)) {
            Ok(())
        } else {
            Err(AdminError::BadToken)
        }
    }
}

fn refusal(e: &AdminError) -> Response<Full<Bytes>> {
    tracing::warn!(code = lgsp_problem::Problem::code(e), error = %e, "admin request refused");
    lgsp_problem::response(e, "admin", None).map(Full::new)
}

/// A running admin listener.
pub struct AdminHandle {
    pub local_addr: SocketAddr,
    pub task: tokio::task::JoinHandle<()>,
}

const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

async fn answer(
    metrics: &Metrics,
    ready: &Readiness,
    reload: Option<&ReloadHook>,
    access: &AdminAccess,
    port: u16,
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let reloading = req.method() == Method::POST && req.uri().path() == "/admin/reload";
    if let Err(e) = access.admits(req.headers(), port).and_then(|()| {
        if reloading {
            access.authorizes(req.headers())
        } else {
            Ok(())
        }
    }) {
        return refusal(&e);
    }
    let (status, ctype, body) = match (req.method(), req.uri().path()) {
        (&Method::POST, "/admin/reload") => match reload {
            None => (
                StatusCode::NOT_FOUND,
                "text/plain",
                "this process does not reload\n".to_owned(),
            ),
            Some(hook) => {
                let hook = hook.clone();
                match tokio::task::spawn_blocking(move || hook()).await {
                    Ok(Ok(summary)) => (
                        StatusCode::OK,
                        "text/plain",
                        format!("reloaded: {summary}\n"),
                    ),
                    Ok(Err(e)) => (
                        StatusCode::BAD_REQUEST,
                        "text/plain",
                        format!("reload refused, the old config keeps serving:\n{e}\n"),
                    ),
                    Err(e) => (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "text/plain",
                        format!("reload failed: {e}\n"),
                    ),
                }
            }
        },
        (_, "/admin/reload") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use POST\n".to_owned(),
        ),
        (&Method::GET | &Method::HEAD, "/metrics") => {
            (StatusCode::OK, PROMETHEUS_TEXT, metrics.encode())
        }
        (&Method::GET | &Method::HEAD, "/healthz") => {
            (StatusCode::OK, "text/plain", "ok\n".to_owned())
        }
        (&Method::GET | &Method::HEAD, "/readyz")
            if ready.get() && metrics.journal_up.get() == 0 =>
        {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "not ready: the journal cannot be written\n".to_owned(),
            )
        }
        (&Method::GET | &Method::HEAD, "/readyz") if ready.get() => {
            (StatusCode::OK, "text/plain", "ready\n".to_owned())
        }
        (&Method::GET | &Method::HEAD, "/readyz") => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready: starting or draining\n".to_owned(),
        ),
        (_, "/metrics" | "/healthz" | "/readyz") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use GET\n".to_owned(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "admin endpoints: /metrics /healthz /readyz\n".to_owned(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(ctype),
    );
    if status == StatusCode::METHOD_NOT_ALLOWED {
        resp.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
    }
    resp
}

/// Serves the admin endpoints on `listener` until `shutdown` turns true.
pub fn serve_admin(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    ready: Readiness,
    mut shutdown: watch::Receiver<bool>,
    reload: Option<ReloadHook>,
    access: LiveAccess,
) -> std::io::Result<AdminHandle> {
    let local_addr = listener.local_addr()?;
    let port = local_addr.port();
    let task = tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = shutdown.wait_for(|s| *s) => break,
            };
            let Ok((stream, _)) = accepted else { continue };
            let (metrics, ready, reload, access) = (
                metrics.clone(),
                ready.clone(),
                reload.clone(),
                access.clone(),
            );
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let (metrics, ready, reload) = (metrics.clone(), ready.clone(), reload.clone());
                    let access = access.load_full();
                    async move {
                        Ok::<_, Infallible>(
                            answer(&metrics, &ready, reload.as_ref(), &access, port, &req).await,
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(AdminHandle { local_addr, task })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lgsp_problem::Problem;

    fn headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (http::HeaderName::from_static(k), v.parse().unwrap()))
            .collect()
    }

    #[test]
    fn only_requests_addressed_to_the_listener_are_answered() {
        let access = AdminAccess::new(None, vec!["lgsp-admin.example.gov.vn".into()]);
        for host in [
            "127.0.0.1:9464",
            "127.0.0.1",
            "[::1]:9464",
            "10.1.2.3:9464",
            "localhost:9464",
            "LOCALHOST",
            "lgsp-admin.example.gov.vn:9464",
        ] {
            assert!(
                access.admits(&headers(&[("host", host)]), 9464).is_ok(),
                "{host}"
            );
        }
        // A DNS name an attacker points at the host, another port, nothing at all.
        for host in [
            "attacker.example:9464",
            "127.0.0.1:8080",
            "",
            "localhost.attacker.example",
        ] {
            let e = access
                .admits(&headers(&[("host", host)]), 9464)
                .unwrap_err();
            assert_eq!(e.code(), "admin.unknown_host", "{host}");
        }
        assert!(access.admits(&http::HeaderMap::new(), 9464).is_err());
        // A web page's request, even to the right address.
        let e = access
            .admits(
                &headers(&[
                    ("host", "127.0.0.1:9464"),
                    ("origin", "https://evil.example"),
                ]),
                9464,
            )
            .unwrap_err();
        assert_eq!(
            (e.status(), e.code()),
            (StatusCode::FORBIDDEN, "admin.cross_origin")
        );
    }

    #[test]
    fn reload_needs_the_token() {
        let token = "0123456789abcdef0123456789abcdef";
        let access = AdminAccess::new(Some(token), Vec::new());
        assert!(
            access
                .authorizes(&headers(&[("authorization", &format!("Bearer {token}"))]))
                .is_ok()
        );
        for wrong in ["", "Bearer nope", "Basic MDEyMzQ1Njc4OWFiY2RlZg==", token] {
            let e = access
                .authorizes(&headers(&[("authorization", wrong)]))
                .unwrap_err();
            assert_eq!(
                (e.status(), e.code()),
                (StatusCode::UNAUTHORIZED, "admin.unauthorized"),
                "{wrong}"
            );
            assert!(
                e.headers()
                    .iter()
                    .any(|(n, _)| n == header::WWW_AUTHENTICATE)
            );
        }
        let off = AdminAccess::new(None, Vec::new());
        let e = off
            .authorizes(&headers(&[("authorization", &format!("Bearer {token}"))]))
            .unwrap_err();
        assert_eq!(e.code(), "admin.reload_disabled");
        assert!(e.detail().contains("SIGHUP"));
    }
}
