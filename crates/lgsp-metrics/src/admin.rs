//! The admin listener: `/metrics` (Prometheus text), `/healthz` (the process answers), `/readyz` (every listener
//! is bound and serving). Plain HTTP/1.1, meant for loopback or a management network.

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
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
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
) -> std::io::Result<AdminHandle> {
    let local_addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = shutdown.wait_for(|s| *s) => break,
            };
            let Ok((stream, _)) = accepted else { continue };
            let (metrics, ready, reload) = (metrics.clone(), ready.clone(), reload.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let (metrics, ready, reload) = (metrics.clone(), ready.clone(), reload.clone());
                    async move {
                        Ok::<_, Infallible>(answer(&metrics, &ready, reload.as_ref(), &req).await)
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
