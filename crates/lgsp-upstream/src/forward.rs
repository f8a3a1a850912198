//! `Forward`: the innermost service. Sends the request to the route's upstream over mTLS as this hop's own
//! identity, with the hop headers written out, within the route's timeout; streams the answer back.

use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri, Version};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use lgsp_auth::Caller;
use lgsp_broker::ClientIdentity;
use lgsp_config::{KeyKind, RouteConfig, UpstreamProtocol};
use lgsp_problem::{BoxProblem, Internal};
use prometheus::IntCounter;
use tokio::sync::Semaphore;
use tower::Service;

use crate::error::{ForwardError, UpstreamFailure};
use crate::publish::Publisher;
use lgsp_hop::HopContext;
use lgsp_hop::body::{Body, boxed, full, holding, read_body};
use lgsp_hop::headers::{self, HopPath, MessageId, TraceContext};
use lgsp_hop::route::Route;

pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, Body>;

/// A pooled client over rustls presenting `tls`'s client certificate: HTTP/1.1 keep-alive connections, or HTTP/2
/// where `protocol` asks for it and the upstream offers it.
pub fn upstream_client(tls: rustls::ClientConfig, protocol: UpstreamProtocol) -> UpstreamClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(std::time::Duration::from_secs(10)));
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1();
    let https = match protocol {
        UpstreamProtocol::Http1 => builder.wrap_connector(http),
        UpstreamProtocol::Http2 => builder.enable_http2().wrap_connector(http),
    };
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(std::time::Duration::from_secs(90))
        .timer(hyper_util::rt::TokioTimer::new())
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .build(https)
}

/// Hop-by-hop headers (RFC 9110 §7.6.1): they describe one connection and never travel on.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
    "trailer",
];

fn strip_hop_by_hop(h: &mut HeaderMap) {
    let listed: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in listed {
        h.remove(n);
    }
    for n in HOP_BY_HOP {
        h.remove(*n);
    }
}

/// The upstream URI: base path + (rewrite or prefix) + the rest of the path, query kept. Trial traffic goes to
/// the route's trial upstream instead, whose path replaces the prefix; a route without one refuses it.
pub fn upstream_uri(route: &Route, uri: &Uri, mode: KeyKind) -> Result<Uri, BoxProblem> {
    let c = &route.config;
    let path = uri.path();
    let rest = if c.prefix == "/" {
        path
    } else {
        path.get(c.prefix.len()..).unwrap_or_default()
    };
    let (authority, mut target) = match mode {
        KeyKind::Production => {
            let new_prefix = c.rewrite.as_deref().unwrap_or(&c.prefix);
            let new_prefix = if new_prefix == "/" { "" } else { new_prefix };
            (
                &c.upstream.authority,
                format!("{}{new_prefix}{rest}", c.upstream.base_path),
            )
        }
        KeyKind::Trial => {
            let trial = c
                .trial_upstream
                .as_ref()
                .ok_or_else(|| ForwardError::TrialNotOffered {
                    route: route.name.clone(),
                })?;
            (&trial.authority, format!("{}{rest}", trial.base_path))
        }
    };
    if target.is_empty() {
        target.push('/');
    }
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    format!("https://{authority}{target}{query}")
        .parse()
        .map_err(|e| Internal(format!("upstream URI for route {}: {e}", route.name)).into())
}

/// Largest look-up answer a hop reads to find its owner.
const LOOKUP_MAX_BYTES: usize = 1024 * 1024;

/// A look-up's answer, read whole, when the record it holds names the caller's agency at `pointer`.
async fn owned(
    route: &Route,
    caller: &Caller,
    pointer: &str,
    body: Body,
) -> Result<bytes::Bytes, BoxProblem> {
    let upstream = route.config.upstream.authority.clone();
    let broken = |message: String| ForwardError::Upstream {
        route: route.name.clone(),
        upstream: upstream.clone(),
        kind: UpstreamFailure::Protocol,
        message,
    };
    let bytes = tokio::time::timeout(route.config.timeout, read_body(body, LOOKUP_MAX_BYTES))
        .await
        .map_err(|_| ForwardError::Upstream {
            route: route.name.clone(),
            upstream: upstream.clone(),
            kind: UpstreamFailure::Timeout,
            message: "look-up answer not read within the route's timeout".into(),
        })?
        .map_err(|e| broken(format!("look-up answer: {e}")))?;
    let named = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|doc| {
            doc.pointer(pointer)
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        });
    let refused = |why| ForwardError::NotOwner {
        route: route.name.clone(),
        agency: caller.agency.clone(),
        why,
    };
    match named {
        Some(agency) if *agency == *caller.agency => Ok(bytes),
        Some(_) => Err(refused("another agency's").into()),
        None => {
            // Fail closed: a record that names no agency reaches nobody (the operator sees why in the log).
            tracing::warn!(route = %route.name, pointer, "look-up answer names no agency at the route's owner pointer; refused");
            Err(refused("names no agency").into())
        }
    }
}

fn classify(e: &hyper_util::client::legacy::Error) -> UpstreamFailure {
    if lgsp_tls::rustls_error(e).is_some() {
        UpstreamFailure::Tls
    } else if e.is_connect() {
        UpstreamFailure::Connect
    } else {
        UpstreamFailure::Protocol
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// `lgsp_upstream_errors_total{hop, upstream, kind}` of one target, by kind.
struct UpstreamCounters([IntCounter; 4]);

impl UpstreamCounters {
    fn new(hop: &HopContext, authority: &str) -> Self {
        UpstreamCounters(UpstreamFailure::ALL.map(|k| {
            hop.metrics
                .upstream_errors
                .with_label_values(&[&hop.name, authority, k.as_str()])
        }))
    }

    fn count(&self, kind: UpstreamFailure) {
        self.0[kind as usize].inc();
    }
}

/// A route's counters for its production and trial targets, worked out at load.
struct RouteTargets {
    production: UpstreamCounters,
    trial: Option<UpstreamCounters>,
}

#[derive(Clone)]
pub struct Forward {
    client: UpstreamClient,
    /// Per route, by [`Route::index`].
    targets: Arc<[RouteTargets]>,
    /// Per upstream (`host:port`): its share of `[hop.upstream] max_connections`, held until the answer is read.
    slots: Arc<HashMap<String, Arc<Semaphore>>>,
    /// Routes whose upstream is a broker publish through here.
    publisher: Arc<Publisher>,
    /// The hop's key: every request it forwards is signed with it (RFC 9421).
    signer: Option<Arc<lgsp_sign::http::HopKey>>,
}

impl Forward {
    /// `max_connections`: requests in flight to one upstream at once (its keep-alive connections over HTTP/1.1).
    /// `identity`: the hop's client identity towards brokers over TLS.
    pub fn new(
        client: UpstreamClient,
        hop: Arc<HopContext>,
        routes: &[RouteConfig],
        max_connections: usize,
        identity: Option<ClientIdentity>,
        signer: Option<Arc<lgsp_sign::http::HopKey>>,
    ) -> Self {
        let slots = routes
            .iter()
            .flat_map(|r| std::iter::once(&r.upstream).chain(r.trial_upstream.as_ref()))
            .map(|u| {
                (
                    u.authority.clone(),
                    Arc::new(Semaphore::new(max_connections)),
                )
            })
            .collect();
        let targets = routes
            .iter()
            .map(|r| RouteTargets {
                production: UpstreamCounters::new(&hop, &r.upstream.authority),
                trial: r
                    .trial_upstream
                    .as_ref()
                    .map(|t| UpstreamCounters::new(&hop, &t.authority)),
            })
            .collect();
        Forward {
            client,
            targets,
            slots: Arc::new(slots),
            publisher: Arc::new(Publisher::new(hop, routes, identity)),
            signer,
        }
    }
}

/// Signs a request as this hop (RFC 9421 over method, target, Content-Digest, message id and client): its body read
/// whole (within the route's limit) to digest it.
async fn signed(
    key: &lgsp_sign::http::HopKey,
    route: &Route,
    req: Request<Body>,
) -> Result<Request<Body>, BoxProblem> {
    let (mut parts, body) = req.into_parts();
    let bytes = lgsp_hop::body::read_body(body, route.config.max_body_bytes).await?;
    let digest = lgsp_sign::http::content_digest(&bytes);
    let text = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let target = parts.uri.to_string();
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let covered = lgsp_sign::http::Covered {
        method: parts.method.as_str(),
        target_uri: &target,
        content_digest: &digest,
        message_id: &text(headers::MESSAGE_ID),
        client: &text(headers::CLIENT),
    };
    let s = key
        .sign(&covered, created)
        .map_err(|e| Internal(format!("signing the request as this hop: {e}")))?;
    let h = &mut parts.headers;
    set(h, "content-digest", &digest)?;
    set(h, "signature-input", &s.input)?;
    set(h, "signature", &s.signature)?;
    Ok(Request::from_parts(parts, full(bytes)))
}

fn set(h: &mut HeaderMap, name: &'static str, value: &str) -> Result<(), BoxProblem> {
    let v =
        HeaderValue::from_str(value).map_err(|_| Internal(format!("{name} value not sendable")))?;
    h.insert(name, v);
    Ok(())
}

impl Forward {
    fn prepare(
        &self,
        mut req: Request<Body>,
    ) -> Result<(Request<Body>, Arc<Route>, Caller), BoxProblem> {
        let missing = |what: &str| Internal(format!("forward reached without {what}"));
        let route = req
            .extensions()
            .get::<Arc<Route>>()
            .cloned()
            .ok_or_else(|| missing("a route"))?;
        let caller = req
            .extensions()
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| missing("a caller"))?;
        let id = req
            .extensions()
            .get::<MessageId>()
            .cloned()
            .ok_or_else(|| missing("a message id"))?;
        let hops = req
            .extensions()
            .get::<HopPath>()
            .cloned()
            .ok_or_else(|| missing("a hop path"))?;
        let trace = req
            .extensions()
            .get::<TraceContext>()
            .cloned()
            .ok_or_else(|| missing("a trace context"))?;
        *req.uri_mut() = upstream_uri(&route, req.uri(), caller.kind)?;
        // The upstream connection negotiates its own protocol by ALPN.
        *req.version_mut() = Version::HTTP_11;
        let h = req.headers_mut();
        strip_hop_by_hop(h);
        h.remove(header::HOST);
        set(h, headers::MESSAGE_ID, &id.0)?;
        set(h, headers::CLIENT, &caller.agency)?;
        set(h, headers::HOPS, &hops.header_value())?;
        set(h, headers::MODE, caller.kind.as_str())?;
        set(h, headers::TRACEPARENT, &trace.header_value())?;
        Ok((req, route, caller))
    }
}

impl Service<Request<Body>> for Forward {
    type Response = Response<Body>;
    type Error = BoxProblem;
    type Future = BoxFuture<'static, Result<Response<Body>, BoxProblem>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxProblem>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        // An inbox route answers from its broker here: nothing is forwarded.
        if let Some(route) = req
            .extensions()
            .get::<Arc<Route>>()
            .filter(|r| r.config.inbox.is_some())
            .cloned()
        {
            let publisher = self.publisher.clone();
            return Box::pin(async move { publisher.inbox(&route, req).await });
        }
        let prepared = self.prepare(req);
        let client = self.client.clone();
        let targets = self.targets.clone();
        let slots = self.slots.clone();
        let publisher = self.publisher.clone();
        let signer = self.signer.clone();
        Box::pin(async move {
            let (req, route, caller) = prepared?;
            let mode = caller.kind;
            let target = match mode {
                KeyKind::Production => Some(&route.config.upstream),
                KeyKind::Trial => route.config.trial_upstream.as_ref(),
            };
            if let Some(target) = target.filter(|t| t.broker.is_some()) {
                return publisher
                    .publish(&route, target, mode == KeyKind::Trial, req)
                    .await;
            }
            let req = match &signer {
                Some(key) => signed(key, &route, req).await?,
                None => req,
            };
            let upstream = req.uri().authority().map_or_else(
                || route.config.upstream.authority.clone(),
                |a| a.as_str().to_owned(),
            );
            // The route's timeout covers the wait for a connection slot and the answer's head together.
            let deadline = tokio::time::Instant::now() + route.config.timeout;
            let permit = match slots.get(&upstream) {
                Some(s) => tokio::time::timeout_at(deadline, s.clone().acquire_owned())
                    .await
                    .map(Result::ok),
                None => Ok(None),
            };
            let outcome = match permit {
                Ok(permit) => match tokio::time::timeout_at(deadline, client.request(req)).await {
                    Ok(r) => Ok(r.map(|r| (r, permit))),
                    Err(_) => Err(format!(
                        "no response head within {:?}",
                        route.config.timeout
                    )),
                },
                Err(_) => Err(format!(
                    "every one of the upstream's connections ([hop.upstream] max_connections) stayed busy for {:?}",
                    route.config.timeout
                )),
            };
            let (kind, message) = match outcome {
                Ok(Ok((resp, permit))) => {
                    let (mut parts, body) = resp.into_parts();
                    strip_hop_by_hop(&mut parts.headers);
                    if mode == KeyKind::Trial
                        && !parts.headers.contains_key(headers::ANSWERED_BY)
                        && let Ok(v) = HeaderValue::from_str(&upstream)
                    {
                        // An upstream that is no gateway of ours: name it by its address.
                        parts.headers.insert(headers::ANSWERED_BY, v);
                    }
                    if let Some(pointer) = &route.config.owner
                        && parts.status.is_success()
                    {
                        let body = owned(&route, &caller, pointer, boxed(body)).await?;
                        return Ok(Response::from_parts(parts, full(body)));
                    }
                    return Ok(Response::from_parts(parts, holding(boxed(body), permit)));
                }
                Ok(Err(e)) => {
                    // The client's body, not the upstream, failed: its own deadline passed mid-stream.
                    if let Some(t) = lgsp_hop::body::body_timeout(&e) {
                        return Err(lgsp_hop::body::BodyError::Timeout { after: t.after }.into());
                    }
                    (classify(&e), error_chain(&e))
                }
                Err(message) => (UpstreamFailure::Timeout, message),
            };
            let counters = targets.get(route.index).and_then(|t| match mode {
                KeyKind::Production => Some(&t.production),
                KeyKind::Trial => t.trial.as_ref(),
            });
            if let Some(c) = counters {
                c.count(kind);
            }
            Err(ForwardError::Upstream {
                route: route.name.clone(),
                upstream,
                kind,
                message,
            }
            .into())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;
    use lgsp_hop::route::RouteTable;
    use lgsp_problem::Class;

    fn table(routes: &[RouteConfig]) -> RouteTable {
        let hop = HopContext::new("lgsp", &[], lgsp_metrics::Metrics::new().unwrap());
        RouteTable::new(&hop, routes)
    }

    fn target(authority: &str, base_path: &str) -> lgsp_config::Upstream {
        lgsp_config::Upstream {
            authority: authority.into(),
            base_path: base_path.into(),
            broker: None,
            origin: lgsp_config::Origin::default(),
        }
    }

    fn route(prefix: &str, rewrite: Option<&str>, upstream: &str) -> Arc<Route> {
        let mut r = lgsp_config::embedded().unwrap().hops[0].routes[0].clone();
        r.prefix = prefix.into();
        r.rewrite = rewrite.map(str::to_owned);
        let (authority, base) = upstream
            .split_once('/')
            .map_or((upstream, ""), |(a, b)| (a, b));
        let base = if base.is_empty() {
            String::new()
        } else {
            format!("/{base}")
        };
        r.upstream = target(authority, &base);
        table(&[r]).lookup(prefix).unwrap().clone()
    }

    #[tokio::test]
    async fn a_look_up_reaches_only_the_agency_its_record_names() {
        let r = route("/lgsp/v1/BienNhan", None, "h:1");
        let caller = |agency: &str| Caller {
            agency: Arc::from(agency),
            kind: KeyKind::Production,
            via: None,
        };
        let receipt = r#"{"message_id":"m","agency":"000.00.00.H29","hops":["lgsp"]}"#;
        let read = |agency: &'static str, pointer: &'static str, answer: &'static str| {
            let r = r.clone();
            async move { owned(&r, &caller(agency), pointer, full(answer)).await }
        };
        assert_eq!(
            read("000.00.00.H29", "/agency", receipt).await.unwrap(),
            receipt
        );
        for (agency, pointer, answer) in [
            // Another agency's record.
            ("000.00.00.H26", "/agency", receipt),
            // A record that names nobody where the route says, or is no JSON: refused, fail closed.
            ("000.00.00.H29", "/owner", receipt),
            ("000.00.00.H29", "/agency", r#"{"agency":29}"#),
            ("000.00.00.H29", "/agency", "<BienNhan/>"),
        ] {
            let e = read(agency, pointer, answer).await.unwrap_err();
            assert_eq!(
                (e.status(), e.code()),
                (StatusCode::NOT_FOUND, "lookup.not_found"),
                "{agency} {pointer} {answer}"
            );
            assert!(!e.detail().contains("H29") || agency == "000.00.00.H29");
        }
    }

    #[test]
    fn rewrites_prefix_and_keeps_rest_and_query() {
        let r = route("/lgsp/v1/HoSoCBCCVC", Some("/ndxp/v1/HoSoCBCCVC"), "h:1");
        let u = upstream_uri(
            &r,
            &"/lgsp/v1/HoSoCBCCVC/a/b?x=1".parse().unwrap(),
            KeyKind::Production,
        )
        .unwrap();
        assert_eq!(u.to_string(), "https://h:1/ndxp/v1/HoSoCBCCVC/a/b?x=1");
        let r = route("/lgsp", None, "h:1/base");
        assert_eq!(
            upstream_uri(&r, &"/lgsp/x".parse().unwrap(), KeyKind::Production)
                .unwrap()
                .to_string(),
            "https://h:1/base/lgsp/x"
        );
        let r = route("/", Some("/"), "h:1");
        assert_eq!(
            upstream_uri(&r, &"/a".parse().unwrap(), KeyKind::Production)
                .unwrap()
                .to_string(),
            "https://h:1/a"
        );
    }

    #[test]
    fn trial_traffic_goes_to_the_trial_upstream_or_is_refused() {
        let mut config = route("/lgsp/v1/HoSoCBCCVC", Some("/ndxp/v1/HoSoCBCCVC"), "ndxp:1")
            .config
            .clone();
        config.trial_upstream = Some(target("emu:2", "/cbccvc/v1/HoSoCBCCVC"));
        let r = table(&[config.clone()])
            .lookup("/lgsp/v1/HoSoCBCCVC")
            .unwrap()
            .clone();
        let uri = "/lgsp/v1/HoSoCBCCVC/x?y=1".parse().unwrap();
        assert_eq!(
            upstream_uri(&r, &uri, KeyKind::Trial).unwrap().to_string(),
            "https://emu:2/cbccvc/v1/HoSoCBCCVC/x?y=1"
        );
        assert_eq!(
            upstream_uri(&r, &uri, KeyKind::Production)
                .unwrap()
                .to_string(),
            "https://ndxp:1/ndxp/v1/HoSoCBCCVC/x?y=1"
        );
        config.trial_upstream = None;
        let r = table(&[config])
            .lookup("/lgsp/v1/HoSoCBCCVC")
            .unwrap()
            .clone();
        let e = upstream_uri(&r, &uri, KeyKind::Trial).unwrap_err();
        assert_eq!(
            (e.status(), e.code()),
            (StatusCode::FORBIDDEN, "trial.not_offered")
        );
    }

    #[test]
    fn hop_by_hop_headers_do_not_travel() {
        let mut h = HeaderMap::new();
        h.insert("connection", "close, x-private".parse().unwrap());
        h.insert("x-private", "1".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("content-type", "application/xml".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
    }

    /// A request as the layers above leave it for forward: route, caller and hop headers on its extensions.
    fn prepared_request(route: &Arc<Route>) -> Request<Body> {
        let mut req = Request::post("/lgsp/v1/HoSoCBCCVC")
            .header("connection", "close")
            .body(lgsp_hop::body::full("<x/>"))
            .unwrap();
        let e = req.extensions_mut();
        e.insert(route.clone());
        e.insert(Caller {
            agency: Arc::from("000.00.00.H29"),
            kind: KeyKind::Production,
            via: None,
        });
        e.insert(MessageId::new());
        e.insert(HopPath(vec!["lgsp".into()]));
        e.insert(TraceContext::continue_or_start(&HeaderMap::new()));
        req
    }

    #[tokio::test]
    async fn an_upstream_that_is_down_is_a_counted_502_and_a_bare_request_an_internal_fault() {
        use tower::ServiceExt;
        let fixture = lgsp_hop::testing::Fixture::new();
        let cfg = fixture.config(&[]);
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut r = cfg.hops[0].routes[0].clone();
        r.upstream = target(&format!("localhost:{}", closed.port()), "");
        let metrics = lgsp_hop::testing::metrics();
        let hop = Arc::new(HopContext::new("lgsp", &[], metrics.clone()));
        let client = upstream_client(
            lgsp_tls::client_config(&cfg.hops[0].upstream_tls).unwrap(),
            UpstreamProtocol::Http1,
        );
        let forward = Forward::new(
            client,
            hop.clone(),
            std::slice::from_ref(&r),
            64,
            None,
            None,
        );
        let route = RouteTable::new(&hop, &[r])
            .lookup("/lgsp/v1/HoSoCBCCVC")
            .unwrap()
            .clone();
        let e = forward
            .clone()
            .oneshot(prepared_request(&route))
            .await
            .unwrap_err();
        assert_eq!(
            (e.status(), e.code(), e.class()),
            (
                StatusCode::BAD_GATEWAY,
                "upstream.unreachable",
                Class::Upstream
            )
        );
        let label = format!("localhost:{}", closed.port());
        assert_eq!(
            metrics
                .upstream_errors
                .with_label_values(&["lgsp", &label, "connect"])
                .get(),
            1
        );
        let bare = Request::new(lgsp_hop::body::empty());
        let e = forward.oneshot(bare).await.unwrap_err();
        assert_eq!((e.code(), e.class()), ("gateway.internal", Class::Gateway));
    }
}
