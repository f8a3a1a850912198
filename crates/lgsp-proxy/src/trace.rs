//! `ObserveLayer`: the edge of the stack. Establishes the hop headers (message id, hop path, trace context),
//! strips agencies' copies of them, times the request, turns every error into problem+json (the only place that
//! does), counts `lgsp_requests_total` / `lgsp_request_duration_seconds` and writes one access-log line.

use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{HeaderValue, Request, Response};
use http_body::Body as _;
use lgsp_metrics::{Metrics, RequestLabels};
use lgsp_tls::PeerIdentity;
use tower::{Layer, Service};
use tracing::Instrument;

use crate::BoxError;
use crate::body::Body;
use crate::error::{Blame, ProxyError, rescue};
use crate::headers::{self, HopPath, MessageId, TraceContext};

/// What every layer of one hop knows about the hop itself.
#[derive(Debug)]
pub struct HopContext {
    pub name: Arc<str>,
    pub peers: HashSet<String>,
    pub metrics: Arc<Metrics>,
}

impl HopContext {
    fn is_peer(&self, identity: Option<&PeerIdentity>) -> bool {
        identity.is_some_and(|p| self.peers.contains(&p.id))
    }

    /// Message id and hop path for this request: a peer's are kept (this hop appended), an agency's are made new.
    fn establish(&self, req: &mut Request<Body>) -> Result<(MessageId, HopPath), ProxyError> {
        if !self.is_peer(req.extensions().get::<PeerIdentity>()) {
            headers::strip_hop_headers(req.headers_mut());
            return Ok((MessageId::new(), HopPath(vec![self.name.to_string()])));
        }
        let text = |name: &'static str| -> Result<Option<&str>, ProxyError> {
            req.headers()
                .get(name)
                .map(|v| {
                    v.to_str().map_err(|_| ProxyError::BadHopHeader {
                        header: name,
                        reason: "not ASCII".into(),
                    })
                })
                .transpose()
        };
        let id = match text(headers::MESSAGE_ID)? {
            Some(v) => MessageId::parse(v).map_err(|reason| ProxyError::BadHopHeader {
                header: "X-LGSP-Message-Id",
                reason,
            })?,
            None => MessageId::new(),
        };
        let mut hops = match text(headers::HOPS)? {
            Some(v) => HopPath::parse(v).map_err(|reason| ProxyError::BadHopHeader {
                header: "X-LGSP-Hops",
                reason,
            })?,
            None => HopPath(Vec::new()),
        };
        if hops.0.iter().any(|h| **h == *self.name) {
            return Err(ProxyError::HopLoop {
                hop: self.name.clone(),
                hops: hops.header_value(),
            });
        }
        hops.0.push(self.name.to_string());
        Ok((id, hops))
    }
}

type InnerFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

/// What a trial-mode answer tells the integrator beyond a production one: the mode, which hop answered (kept
/// when an upstream already said), and this hop's time after the upstreams' in `Server-Timing`.
fn trial_diagnostics(h: &mut http::HeaderMap, hop: &str, elapsed: std::time::Duration) {
    h.insert(headers::MODE, HeaderValue::from_static("trial"));
    if !h.contains_key(headers::ANSWERED_BY)
        && let Ok(v) = HeaderValue::from_str(hop)
    {
        h.insert(headers::ANSWERED_BY, v);
    }
    let own = format!("{hop};dur={:.1}", elapsed.as_secs_f64() * 1000.0);
    let timing = match h.get(headers::SERVER_TIMING).and_then(|v| v.to_str().ok()) {
        Some(upstream) if !upstream.trim().is_empty() => format!("{upstream}, {own}"),
        _ => own,
    };
    if let Ok(v) = HeaderValue::from_str(&timing) {
        h.insert(headers::SERVER_TIMING, v);
    }
}

#[derive(Clone)]
pub struct ObserveLayer {
    hop: Arc<HopContext>,
}

impl ObserveLayer {
    pub fn new(hop: Arc<HopContext>) -> Self {
        ObserveLayer { hop }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            hop: self.hop.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    hop: Arc<HopContext>,
}

fn content_length(size: http_body::SizeHint) -> Option<u64> {
    size.exact()
}

impl<S> Service<Request<Body>> for Observe<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Inner layers never apply backpressure here; readiness errors would have nowhere to go but a 500.
        match self.inner.poll_ready(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(_) => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let start = Instant::now();
        let hop = self.hop.clone();
        let labels = RequestLabels::default();
        req.extensions_mut().insert(labels.clone());
        let trace = TraceContext::continue_or_start(req.headers());
        req.extensions_mut().insert(trace.clone());
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let bytes_in = content_length(req.body().size_hint());
        let established = hop.establish(&mut req);
        let message_id = established
            .as_ref()
            .map_or_else(|_| MessageId::new(), |(id, _)| id.clone());
        let span = tracing::info_span!("request", hop = %hop.name, message_id = %message_id, trace_id = %trace.trace_id);
        let inner = match established {
            Ok((id, hops)) => {
                req.extensions_mut().insert(id);
                req.extensions_mut().insert(hops);
                let fut: InnerFuture = Box::pin(self.inner.call(req));
                Ok(fut)
            }
            Err(e) => Err(e),
        };
        Box::pin(
            async move {
                let result = match inner {
                    Ok(fut) => fut.await,
                    Err(e) => Err(Box::new(e) as BoxError),
                };
                let mut resp = match result {
                    Ok(resp) => resp,
                    Err(e) => {
                        let r = rescue(&e);
                        match r.blame {
                            Blame::Client => tracing::info!(code = r.code, error = %r.log, "refused"),
                            Blame::Upstream => tracing::warn!(code = r.code, error = %r.log, "upstream failed"),
                            Blame::Gateway => tracing::error!(code = r.code, error = %r.log, "gateway error"),
                        }
                        r.into_response(&hop.name, Some(&message_id.0))
                    }
                };
                if let Ok(v) = HeaderValue::from_str(&message_id.0) {
                    resp.headers_mut().insert(headers::MESSAGE_ID, v);
                }
                let status = resp.status();
                let elapsed = start.elapsed();
                let (route, agency) = (labels.route(), labels.agency());
                let mode = labels.mode();
                if mode == "trial" {
                    trial_diagnostics(resp.headers_mut(), &hop.name, elapsed);
                }
                hop.metrics.requests.with_label_values(&[&hop.name, route, agency, mode, status.as_str()]).inc();
                hop.metrics.duration.with_label_values(&[&hop.name, route]).observe(elapsed.as_secs_f64());
                tracing::info!(
                    target: "lgsp::access",
                    message_id = %message_id,
                    agency,
                    route,
                    method = %method,
                    path = %path,
                    status = status.as_u16(),
                    duration_ms = elapsed.as_secs_f64() * 1000.0,
                    bytes_in = bytes_in.map_or(-1, |b| i64::try_from(b).unwrap_or(i64::MAX)),
                    bytes_out = content_length(resp.body().size_hint()).map_or(-1, |b| i64::try_from(b).unwrap_or(i64::MAX)),
                    mode,
                    "access"
                );
                Ok(resp)
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn hop(peers: &[&str]) -> Arc<HopContext> {
        Arc::new(HopContext {
            name: Arc::from("ndxp"),
            peers: peers.iter().map(|p| (*p).to_owned()).collect(),
            metrics: Metrics::new().unwrap(),
        })
    }

    /// An inner service that echoes what it was given as response headers.
    fn echo() -> tower::util::BoxCloneSyncService<Request<Body>, Response<Body>, BoxError> {
        tower::util::BoxCloneSyncService::new(tower::service_fn(|req: Request<Body>| async move {
            let mut resp = Response::new(body::empty());
            let id = req.extensions().get::<MessageId>().unwrap().0.clone();
            let hops = req.extensions().get::<HopPath>().unwrap().header_value();
            resp.headers_mut().insert("seen-id", id.parse().unwrap());
            resp.headers_mut()
                .insert("seen-hops", hops.parse().unwrap());
            resp.headers_mut().insert(
                "seen-client",
                HeaderValue::from_static(if req.headers().contains_key("x-lgsp-client") {
                    "yes"
                } else {
                    "no"
                }),
            );
            Ok::<_, BoxError>(resp)
        }))
    }

    fn request(identity: &str, headers: &[(&str, &str)]) -> Request<Body> {
        let mut b = Request::builder().uri("/x");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let mut req = b.body(body::empty()).unwrap();
        req.extensions_mut().insert(PeerIdentity {
            id: identity.into(),
            source: lgsp_tls::IdentitySource::SanUri,
            cert_sha256: String::new(),
            not_after: 0,
        });
        req
    }

    #[tokio::test]
    async fn agencies_get_a_new_message_id_and_their_hop_headers_stripped() {
        let svc = ObserveLayer::new(hop(&["LGSP-DEV"])).layer(echo());
        let spoof = "0190a5a4-0000-7000-8000-000000000000";
        let resp = svc
            .oneshot(request(
                "000.00.00.H29",
                &[
                    ("x-lgsp-message-id", spoof),
                    ("x-lgsp-client", "000.00.00.G09"),
                    ("x-lgsp-hops", "x"),
                ],
            ))
            .await
            .unwrap();
        assert_ne!(resp.headers()["seen-id"], spoof);
        assert_eq!(resp.headers()["seen-hops"], "ndxp");
        assert_eq!(resp.headers()["seen-client"], "no");
        assert_eq!(
            resp.headers()["x-lgsp-message-id"],
            resp.headers()["seen-id"]
        );
    }

    #[tokio::test]
    async fn peers_keep_message_id_and_hops_and_loops_are_508() {
        let h = hop(&["LGSP-DEV"]);
        let id = "0190a5a4-0000-7000-8000-000000000001";
        let resp = ObserveLayer::new(h.clone())
            .layer(echo())
            .oneshot(request(
                "LGSP-DEV",
                &[("x-lgsp-message-id", id), ("x-lgsp-hops", "lgsp")],
            ))
            .await
            .unwrap();
        assert_eq!(resp.headers()["seen-id"], id);
        assert_eq!(resp.headers()["seen-hops"], "lgsp, ndxp");

        let resp = ObserveLayer::new(h.clone())
            .layer(echo())
            .oneshot(request("LGSP-DEV", &[("x-lgsp-hops", "lgsp, ndxp")]))
            .await
            .unwrap();
        assert_eq!(resp.status(), http::StatusCode::LOOP_DETECTED);
        let body: serde_json::Value =
            serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(body["code"], "hop.loop_detected");
        assert_eq!(
            h.metrics
                .requests
                .with_label_values(&["ndxp", "unknown", "unknown", "unknown", "508"])
                .get(),
            1
        );
    }

    #[tokio::test]
    async fn errors_become_problem_json_with_the_message_id() {
        let failing = tower::service_fn(|_req: Request<Body>| async {
            Err::<Response<Body>, BoxError>(Box::new(ProxyError::RouteNotFound {
                path: "/nope".into(),
            }))
        });
        let resp = ObserveLayer::new(hop(&[]))
            .layer(failing)
            .oneshot(request("000.00.00.H29", &[]))
            .await
            .unwrap();
        assert_eq!(resp.status(), http::StatusCode::NOT_FOUND);
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
        let id = resp.headers()["x-lgsp-message-id"]
            .to_str()
            .unwrap()
            .to_owned();
        let body: serde_json::Value =
            serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(body["code"], "route.not_found");
        assert_eq!(body["message_id"], id.as_str());
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains("/lgsp/v1/HoSoCBCCVC")
        );
    }
}
