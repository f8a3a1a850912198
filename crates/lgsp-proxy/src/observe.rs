//! `ObserveLayer`: the edge of the stack. Establishes the hop headers (message id, hop path, trace context),
//! strips agencies' copies of them, times the request, answers every failure below it as problem+json (through
//! [`lgsp_hop::edge`], the only place that does), counts `lgsp_requests_total` / `lgsp_request_duration_seconds` and
//! writes one access-log line.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use http::{HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body::Body as _;
use lgsp_metrics::RequestLabels;
use lgsp_problem::{BoxProblem, Problem};
use lgsp_tls::PeerIdentity;
use tower::{Layer, Service};

use lgsp_hop::HopContext;
use lgsp_hop::body::Body;
use lgsp_hop::edge;
use lgsp_hop::headers::{self, HopPath, KnownAs, MessageId, TraceContext};
use lgsp_hop::step::{Answer, Step};

/// A relaying gateway's hop headers that cannot be honoured.
#[derive(Debug, thiserror::Error)]
pub enum HopHeaderError {
    #[error("invalid hop header {header}: {reason}")]
    BadHeader {
        header: &'static str,
        reason: String,
    },
    #[error("request already passed hop {hop} ({hops})")]
    Loop { hop: Arc<str>, hops: String },
}

impl Problem for HopHeaderError {
    fn status(&self) -> StatusCode {
        match self {
            HopHeaderError::BadHeader { .. } => StatusCode::BAD_REQUEST,
            HopHeaderError::Loop { .. } => StatusCode::LOOP_DETECTED,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            HopHeaderError::BadHeader { .. } => "hop.bad_header",
            HopHeaderError::Loop { .. } => "hop.loop_detected",
        }
    }

    fn detail(&self) -> String {
        match self {
            HopHeaderError::BadHeader { header, reason } => format!(
                "The relaying gateway sent an invalid {header} ({reason}); fix the relaying hop."
            ),
            HopHeaderError::Loop { hop, hops } => format!(
                "The request already passed hop {hop} (X-LGSP-Hops: {hops}); a route points back at an earlier hop — fix the upstream URLs."
            ),
        }
    }
}

/// Message id and hop path for this request: a peer's are kept (this hop appended), an agency's are made new.
fn establish(
    hop: &HopContext,
    req: &mut Request<Body>,
) -> Result<(MessageId, HopPath), HopHeaderError> {
    let peer = hop.is_peer(req.extensions().get::<PeerIdentity>());
    forwarding_record(hop, req, peer);
    if !peer {
        headers::strip_hop_headers(req.headers_mut());
        return Ok((MessageId::new(), HopPath(vec![hop.name.to_string()])));
    }
    let text = |name: &'static str| -> Result<Option<&str>, HopHeaderError> {
        req.headers()
            .get(name)
            .map(|v| {
                v.to_str().map_err(|_| HopHeaderError::BadHeader {
                    header: name,
                    reason: "not ASCII".into(),
                })
            })
            .transpose()
    };
    let id = match text(headers::MESSAGE_ID)? {
        Some(v) => MessageId::parse(v).map_err(|reason| HopHeaderError::BadHeader {
            header: "X-LGSP-Message-Id",
            reason,
        })?,
        None => MessageId::new(),
    };
    let mut hops = match text(headers::HOPS)? {
        Some(v) => HopPath::parse(v).map_err(|reason| HopHeaderError::BadHeader {
            header: "X-LGSP-Hops",
            reason,
        })?,
        None => HopPath(Vec::new()),
    };
    if hops.0.iter().any(|h| **h == *hop.name) {
        return Err(HopHeaderError::Loop {
            hop: hop.name.clone(),
            hops: hops.header_value(),
        });
    }
    hops.0.push(hop.name.to_string());
    Ok((id, hops))
}

/// Removes the headers a client could claim another origin, host, URL or method with (`strip_headers`; a peer
/// keeps its `Forwarded`), then appends this hop's own RFC 7239 record: `for` the connection's address, `by` the
/// hop (an obfuscated node, `_name`), `proto=https`.
fn forwarding_record(hop: &HopContext, req: &mut Request<Body>, peer: bool) {
    let h = req.headers_mut();
    for name in &hop.strip {
        if !(peer && *name == http::header::FORWARDED) {
            h.remove(name);
        }
    }
    let node = match req.extensions().get::<crate::ClientAddr>() {
        Some(crate::ClientAddr(addr)) => format!("\"{addr}\""),
        None => "unknown".to_owned(),
    };
    let by: String = hop
        .name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .collect();
    if let Ok(v) = HeaderValue::from_str(&format!("for={node};by=_{by};proto=https")) {
        req.headers_mut().append(http::header::FORWARDED, v);
    }
}

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
            unready: None,
        }
    }
}

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    hop: Arc<HopContext>,
    /// The inner service's readiness error, answered to the next request (this service itself never fails).
    unready: Option<Arc<BoxProblem>>,
}

/// Everything the access line and the metrics need once the answer is ready.
struct Observation {
    start: Instant,
    hop: Arc<HopContext>,
    labels: RequestLabels,
    message_id: MessageId,
    known_as: KnownAs,
    method: Method,
    uri: Uri,
    bytes_in: Option<u64>,
}

pin_project_lite::pin_project! {
    /// The inner answer, observed: problems rendered, hop headers and trial diagnostics added, counted, logged.
    pub struct Observed<F> {
        #[pin]
        inner: Step<F>,
        span: tracing::Span,
        seen: Option<Observation>,
    }
}

impl<S> Service<Request<Body>> for Observe<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = BoxProblem>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Observed<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        if self.unready.is_none()
            && let Err(e) = ready!(self.inner.poll_ready(cx))
        {
            self.unready = Some(Arc::new(e));
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Body>) -> Observed<S::Future> {
        let start = Instant::now();
        let labels = RequestLabels::default();
        req.extensions_mut().insert(labels.clone());
        let known_as = KnownAs::default();
        req.extensions_mut().insert(known_as.clone());
        let trace = TraceContext::continue_or_start(req.headers());
        let established = establish(&self.hop, &mut req);
        let message_id = established
            .as_ref()
            .map_or_else(|_| MessageId::new(), |(id, _)| id.clone());
        let span = tracing::info_span!("request", hop = %self.hop.name, message_id = %message_id, trace_id = %trace.trace_id);
        req.extensions_mut().insert(trace);
        let seen = Observation {
            start,
            hop: self.hop.clone(),
            labels,
            message_id,
            known_as,
            method: req.method().clone(),
            uri: req.uri().clone(),
            bytes_in: req.body().size_hint().exact(),
        };
        // Before anything reads the path: what this hop checks must be what an upstream serves.
        let bad_path = lgsp_hop::route::bad_path(seen.uri.path());
        let inner = match (self.unready.take(), bad_path, established) {
            (Some(not_ready), ..) => Step::refuse(Unready(not_ready)),
            (None, Some(bad), _) => Step::refuse(bad),
            (None, None, Err(e)) => Step::refuse(e),
            (None, None, Ok((id, hops))) => {
                req.extensions_mut().insert(id);
                req.extensions_mut().insert(hops);
                Step::inner(self.inner.call(req))
            }
        };
        Observed {
            inner,
            span,
            seen: Some(seen),
        }
    }
}

/// A readiness error of the stack below, answered as itself.
#[derive(Debug)]
struct Unready(Arc<BoxProblem>);

impl std::fmt::Display for Unready {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "not ready: {}", self.0)
    }
}

impl std::error::Error for Unready {}

impl Problem for Unready {
    fn status(&self) -> StatusCode {
        self.0.status()
    }
    fn code(&self) -> &'static str {
        self.0.code()
    }
    fn class(&self) -> lgsp_problem::Class {
        self.0.class()
    }
    fn detail(&self) -> String {
        self.0.detail()
    }
    fn headers(&self) -> Vec<(http::HeaderName, HeaderValue)> {
        self.0.headers()
    }
}

impl<F: Future<Output = Answer>> Future for Observed<F> {
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let result = ready!(this.inner.poll(cx));
        let Some(seen) = this.seen.take() else {
            return Poll::Ready(Ok(edge::answer(
                &lgsp_problem::Internal("an observed request was polled after its answer".into()),
                "unknown",
                &MessageId::new().0,
            )));
        };
        Poll::Ready(Ok(seen.finish(result)))
    }
}

impl Observation {
    fn finish(mut self, result: Answer) -> Response<Body> {
        if let Some(first) = self.known_as.get() {
            self.message_id = first.clone();
        }
        let hop = &self.hop;
        let mut resp = match result {
            Ok(resp) => resp,
            Err(e) => edge::answer(&*e, &hop.name, &self.message_id.0),
        };
        if let Ok(v) = HeaderValue::from_str(&self.message_id.0) {
            resp.headers_mut().insert(headers::MESSAGE_ID, v);
        }
        let status = resp.status();
        let elapsed = self.start.elapsed();
        let labels = &self.labels;
        let (route, agency, mode) = (labels.route(), labels.agency(), labels.mode());
        if mode == "trial" {
            trial_diagnostics(resp.headers_mut(), &hop.name, elapsed);
        }
        hop.metrics
            .requests
            .with_label_values(&[&hop.name, route, agency, mode, status.as_str()])
            .inc();
        labels
            .route_metrics()
            .unwrap_or(&hop.unknown_route)
            .duration
            .observe(elapsed.as_secs_f64());
        let bytes_out = resp.body().size_hint().exact();
        let signed = |b: Option<u64>| b.map_or(-1, |b| i64::try_from(b).unwrap_or(i64::MAX));
        tracing::info!(
            target: "lgsp::access",
            message_id = %self.message_id,
            agency,
            route,
            method = %self.method,
            path = %self.uri.path(),
            status = status.as_u16(),
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            bytes_in = signed(self.bytes_in),
            bytes_out = signed(bytes_out),
            mode,
            "access"
        );
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use lgsp_hop::body;
    use lgsp_metrics::Metrics;
    use tower::ServiceExt;

    fn hop(peers: &[&str]) -> Arc<HopContext> {
        let peers: Vec<lgsp_config::PeerConfig> = peers
            .iter()
            .map(|p| lgsp_config::PeerConfig {
                id: (*p).to_owned(),
                sha256: None,
            })
            .collect();
        Arc::new(HopContext::new("ndxp", &peers, Metrics::new().unwrap()))
    }

    /// An inner service that echoes what it was given as response headers.
    fn echo() -> tower::util::BoxCloneSyncService<Request<Body>, Response<Body>, BoxProblem> {
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
            Ok::<_, BoxProblem>(resp)
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
            // 2100-01-01: valid for as long as any test runs.
            not_after: 4_102_444_800,
            spki: Default::default(),
        });
        req
    }

    /// An inner service that answers with the request's headers named in `names`, comma-joined per name.
    fn headers_seen() -> tower::util::BoxCloneSyncService<Request<Body>, Response<Body>, BoxProblem>
    {
        tower::util::BoxCloneSyncService::new(tower::service_fn(|req: Request<Body>| async move {
            let seen: serde_json::Map<String, serde_json::Value> = req
                .headers()
                .keys()
                .map(|k| {
                    let all: Vec<&str> = req
                        .headers()
                        .get_all(k)
                        .iter()
                        .filter_map(|v| v.to_str().ok())
                        .collect();
                    (k.as_str().to_owned(), all.join(", ").into())
                })
                .collect();
            Ok::<_, BoxProblem>(Response::new(body::full(
                serde_json::Value::Object(seen).to_string(),
            )))
        }))
    }

    async fn seen(resp: Response<Body>) -> serde_json::Value {
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap()
    }

    #[tokio::test]
    async fn spoofable_forwarding_headers_are_replaced_by_the_hops_own_record() {
        let h = hop(&["LGSP-DEV"]);
        let claims = [
            ("x-forwarded-for", "10.0.0.1"),
            ("forwarded", "for=10.0.0.1;by=_ndxp"),
            ("x-real-ip", "10.0.0.1"),
            ("x-forwarded-host", "admin.internal"),
            ("x-original-url", "/admin"),
            ("x-http-method-override", "DELETE"),
            ("cookie", "session=stolen"),
            ("accept", "application/json"),
        ];
        let mut req = request("000.00.00.H29", &claims);
        req.extensions_mut()
            .insert(crate::ClientAddr("203.0.113.7:50000".parse().unwrap()));
        let got = seen(
            ObserveLayer::new(h.clone())
                .layer(headers_seen())
                .oneshot(req)
                .await
                .unwrap(),
        )
        .await;
        for (name, _) in &claims[..7] {
            if *name != "forwarded" {
                assert!(
                    got.get(*name).is_none(),
                    "{name} reached the upstream: {got}"
                );
            }
        }
        assert_eq!(
            got["forwarded"],
            "for=\"203.0.113.7:50000\";by=_ndxp;proto=https"
        );
        assert_eq!(got["accept"], "application/json");

        // A peer's record is kept and this hop's appended; its other claims go.
        let mut req = request(
            "LGSP-DEV",
            &[
                (
                    "forwarded",
                    "for=\"198.51.100.2:40000\";by=_lgsp;proto=https",
                ),
                ("x-forwarded-for", "10.0.0.1"),
            ],
        );
        req.extensions_mut()
            .insert(crate::ClientAddr("[2001:db8::5]:443".parse().unwrap()));
        let got = seen(
            ObserveLayer::new(h)
                .layer(headers_seen())
                .oneshot(req)
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            got["forwarded"],
            "for=\"198.51.100.2:40000\";by=_lgsp;proto=https, for=\"[2001:db8::5]:443\";by=_ndxp;proto=https"
        );
        assert!(got.get("x-forwarded-for").is_none(), "{got}");
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
            Err::<Response<Body>, BoxProblem>(
                lgsp_hop::route::RouteError::NotFound {
                    path: "/nope".into(),
                }
                .into(),
            )
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

#[cfg(test)]
mod readiness {
    use super::*;
    use http_body_util::BodyExt;
    use lgsp_metrics::Metrics;
    use tower::ServiceExt;

    /// A service that is never ready: it fails readiness with an overload.
    #[derive(Clone)]
    struct Refusing;

    impl Service<Request<Body>> for Refusing {
        type Response = Response<Body>;
        type Error = BoxProblem;
        type Future = std::future::Ready<Answer>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxProblem>> {
            Poll::Ready(Err(crate::limit::LimitError::Overloaded {
                scope: "global",
                retry_after: std::time::Duration::from_secs(2),
            }
            .into()))
        }

        fn call(&mut self, _: Request<Body>) -> Self::Future {
            panic!("called without being ready")
        }
    }

    #[tokio::test]
    async fn a_readiness_error_below_is_answered_not_swallowed() {
        let hop = Arc::new(HopContext::new("lgsp", &[], Metrics::new().unwrap()));
        let resp = ObserveLayer::new(hop)
            .layer(Refusing)
            .oneshot(Request::new(lgsp_hop::body::empty()))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()["retry-after"], "2");
        let body: serde_json::Value =
            serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(body["code"], "overload.shed");
        assert_eq!(body["class"], "gateway");
    }
}
