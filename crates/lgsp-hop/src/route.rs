//! `RouteLayer`: (method, path prefix) → route. The longest prefix wins, matched on whole path segments; the
//! caller's agency must be one the route allows.

use std::collections::HashSet;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{Either, Ready};
use http::{HeaderName, HeaderValue, Request, StatusCode, header};
use lgsp_auth::Caller;
use lgsp_config::RouteConfig;
use lgsp_metrics::{RequestLabels, RouteMetrics};
use lgsp_problem::{BoxProblem, Internal, Problem};
use tower::{Layer, Service};

use crate::hop::HopContext;

/// A request no route of this hop takes.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// A path an upstream could read differently than this hop (Envoy's `REJECT_REQUEST` for escaped slashes).
    #[error("path with {what}")]
    BadPath { what: &'static str },
    #[error("no route for {path}")]
    NotFound { path: String },
    #[error("{method} not allowed on route {route}")]
    MethodNotAllowed {
        route: Arc<str>,
        method: String,
        allow: String,
    },
    #[error("agency {agency} may not use route {route}")]
    AgencyNotAllowed { route: Arc<str>, agency: Arc<str> },
}

impl Problem for RouteError {
    fn status(&self) -> StatusCode {
        match self {
            RouteError::BadPath { .. } => StatusCode::BAD_REQUEST,
            RouteError::NotFound { .. } => StatusCode::NOT_FOUND,
            RouteError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            RouteError::AgencyNotAllowed { .. } => StatusCode::FORBIDDEN,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            RouteError::BadPath { .. } => "route.bad_path",
            RouteError::NotFound { .. } => "route.not_found",
            RouteError::MethodNotAllowed { .. } => "route.method_not_allowed",
            RouteError::AgencyNotAllowed { .. } => "route.agency_not_allowed",
        }
    }

    fn detail(&self) -> String {
        match self {
            RouteError::BadPath { what } => format!(
                "The path holds {what}; an upstream that tidies paths would serve another endpoint than the one this gateway checked. Send the path as the route names it, without `.` or `..` segments or encoded slashes."
            ),
            RouteError::NotFound { path } => format!(
                "No route of this gateway matches {path}; check the path against the routes the LGSP operator published (e.g. /lgsp/v1/HoSoCBCCVC)."
            ),
            RouteError::MethodNotAllowed { method, allow, .. } => {
                format!("{method} is not accepted on this route; use {allow}.")
            }
            RouteError::AgencyNotAllowed { route, agency } => format!(
                "Agency {agency} is not allowed on route {route}; ask the LGSP operator to add it to the route's `agencies`."
            ),
        }
    }

    fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        match self {
            RouteError::MethodNotAllowed { allow, .. } => HeaderValue::from_str(allow)
                .map(|v| vec![(header::ALLOW, v)])
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }
}

/// What makes a request path unsafe to route: dot segments (`.`, `..`, also percent-encoded), encoded slashes and
/// backslashes (`%2F`, `%5C`), and backslashes. `path` is the path as received (not decoded).
pub fn bad_path(path: &str) -> Option<RouteError> {
    let what = if path.contains('\\') {
        "a backslash"
    } else if contains_ignore_case(path, "%2f") || contains_ignore_case(path, "%5c") {
        "an encoded slash or backslash"
    } else if path.split('/').any(is_dot_segment) {
        "a dot segment"
    } else {
        return None;
    };
    Some(RouteError::BadPath { what })
}

fn contains_ignore_case(haystack: &str, needle: &str) -> bool {
    haystack
        .as_bytes()
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// `.` or `..`, with any of its dots written `%2e`.
fn is_dot_segment(segment: &str) -> bool {
    let mut rest = segment;
    let mut dots = 0;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            rest = r;
        } else if rest.len() >= 3 && rest[..3].eq_ignore_ascii_case("%2e") {
            rest = &rest[3..];
        } else {
            return false;
        }
        dots += 1;
    }
    (1..=2).contains(&dots)
}

/// A route ready to serve.
#[derive(Debug)]
pub struct Route {
    /// Its place in the hop's config: layers that keep per-route state index it by this.
    pub index: usize,
    pub name: Arc<str>,
    pub config: RouteConfig,
    /// Its metric handles (the `route` label).
    pub metrics: Arc<RouteMetrics>,
    allow: String,
    agencies: Option<HashSet<String>>,
}

/// The routes of one hop, longest prefix first.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
}

/// Whether `path` lies under `prefix` on a segment boundary.
fn under(path: &str, prefix: &str) -> bool {
    prefix == "/"
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

impl RouteTable {
    /// The routes of `hop`, in the order of `routes` for their `index`.
    pub fn new(hop: &HopContext, routes: &[RouteConfig]) -> Self {
        let mut routes: Vec<Arc<Route>> = routes
            .iter()
            .enumerate()
            .map(|(index, r)| {
                Arc::new(Route {
                    index,
                    name: Arc::from(r.name.as_str()),
                    metrics: hop.metrics.route(&hop.name, &r.name),
                    allow: r.methods.join(", "),
                    agencies: r.agencies.as_ref().map(|a| a.iter().cloned().collect()),
                    config: r.clone(),
                })
            })
            .collect();
        // Longest prefix first; the sort is stable, so equal prefixes keep file order (the first one wins).
        routes.sort_by_key(|r| std::cmp::Reverse(r.config.prefix.len()));
        RouteTable { routes }
    }

    /// The route named `name` (a queued delivery finds its route again by name, across reloads).
    pub fn named(&self, name: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| *r.name == *name)
    }

    /// The route whose prefix is the longest one `path` lies under.
    pub fn lookup(&self, path: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| under(path, &r.config.prefix))
    }
}

#[derive(Clone)]
pub struct RouteLayer {
    table: Arc<RouteTable>,
}

impl RouteLayer {
    pub fn new(table: Arc<RouteTable>) -> Self {
        RouteLayer { table }
    }
}

impl<S> Layer<S> for RouteLayer {
    type Service = Routing<S>;

    fn layer(&self, inner: S) -> Routing<S> {
        Routing {
            inner,
            table: self.table.clone(),
        }
    }
}

/// Puts the matched `Arc<Route>` on the request.
#[derive(Clone)]
pub struct Routing<S> {
    inner: S,
    table: Arc<RouteTable>,
}

impl<S> Routing<S> {
    fn decide<B>(&self, req: &Request<B>) -> Result<Arc<Route>, BoxProblem> {
        let path = req.uri().path();
        let route = self
            .table
            .lookup(path)
            .ok_or_else(|| RouteError::NotFound {
                path: path.chars().take(256).collect(),
            })?;
        if let Some(labels) = req.extensions().get::<RequestLabels>() {
            labels.set_route(route.metrics.clone());
        }
        if !route
            .config
            .methods
            .iter()
            .any(|m| m == req.method().as_str())
        {
            return Err(RouteError::MethodNotAllowed {
                route: route.name.clone(),
                method: req.method().to_string(),
                allow: route.allow.clone(),
            }
            .into());
        }
        let caller = req
            .extensions()
            .get::<Caller>()
            .ok_or_else(|| Internal("route reached without an authenticated caller".into()))?;
        if let Some(allowed) = &route.agencies
            && !allowed.contains(&*caller.agency)
        {
            return Err(RouteError::AgencyNotAllowed {
                route: route.name.clone(),
                agency: caller.agency.clone(),
            }
            .into());
        }
        Ok(route.clone())
    }
}

impl<S, B> Service<Request<B>> for Routing<S>
where
    S: Service<Request<B>, Error = BoxProblem>,
{
    type Response = S::Response;
    type Error = BoxProblem;
    type Future = Either<Ready<Result<S::Response, BoxProblem>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxProblem>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        match self.decide(&req) {
            Ok(route) => {
                req.extensions_mut().insert(route);
                Either::Right(self.inner.call(req))
            }
            Err(e) => Either::Left(futures_util::future::ready(Err(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lgsp_config::KeyKind;
    use tower::ServiceExt;

    fn table() -> Arc<RouteTable> {
        let hop = HopContext::new("lgsp", &[], lgsp_metrics::Metrics::new().unwrap());
        let cfg = lgsp_config::embedded().unwrap();
        let mut routes = cfg.hops[0].routes.clone();
        let mut narrow = routes[0].clone();
        narrow.name = "narrow".into();
        narrow.prefix = "/lgsp/v1/HoSoCBCCVC/batch".into();
        narrow.agencies = Some(vec!["000.00.00.H26".into()]);
        routes.push(narrow);
        Arc::new(RouteTable::new(&hop, &routes))
    }

    fn svc() -> Routing<tower::util::BoxCloneSyncService<Request<()>, Arc<Route>, BoxProblem>> {
        let inner = tower::service_fn(|req: Request<()>| async move {
            Ok::<_, BoxProblem>(req.extensions().get::<Arc<Route>>().unwrap().clone())
        });
        RouteLayer::new(table()).layer(tower::util::BoxCloneSyncService::new(inner))
    }

    fn req(method: &str, path: &str, agency: &str) -> Request<()> {
        let mut r = Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .unwrap();
        r.extensions_mut().insert(Caller {
            agency: Arc::from(agency),
            kind: KeyKind::Production,
            via: None,
        });
        r
    }

    fn refusal(r: Result<Arc<Route>, BoxProblem>) -> BoxProblem {
        r.unwrap_err()
    }

    #[test]
    fn paths_an_upstream_could_read_otherwise_are_refused() {
        for bad in [
            "/lgsp/v1/HoSoCBCCVC/../BienChe",
            "/lgsp/v1/HoSoCBCCVC/%2e%2e/BienChe",
            "/lgsp/v1/HoSoCBCCVC/.%2E/BienChe",
            "/lgsp/v1/./HoSoCBCCVC",
            "/lgsp/v1/HoSoCBCCVC/..",
            "/lgsp/v1/HoSoCBCCVC%2F..%2FBienChe",
            "/lgsp/v1/HoSoCBCCVC%5cx",
            "/lgsp/v1/HoSoCBCCVC\\x",
        ] {
            let e = bad_path(bad).unwrap_or_else(|| panic!("{bad} passed"));
            assert_eq!(
                (e.status(), e.code()),
                (StatusCode::BAD_REQUEST, "route.bad_path")
            );
        }
        for good in [
            "/lgsp/v1/HoSoCBCCVC",
            "/lgsp/v1/BienNhan/01a2.b",
            "/a/.../b",
            "/a/..b/c",
            "/a/%41",
        ] {
            assert!(bad_path(good).is_none(), "{good}");
        }
    }

    #[tokio::test]
    async fn longest_prefix_wins_on_segment_boundaries() {
        let r = svc()
            .oneshot(req("POST", "/lgsp/v1/HoSoCBCCVC/batch/1", "000.00.00.H26"))
            .await
            .unwrap();
        assert_eq!(&*r.name, "narrow");
        let r = svc()
            .oneshot(req("POST", "/lgsp/v1/HoSoCBCCVC/x", "000.00.00.H26"))
            .await
            .unwrap();
        assert_eq!(&*r.name, "HoSoCBCCVC");
        let e = refusal(
            svc()
                .oneshot(req("POST", "/lgsp/v1/HoSoCBCCVCX", "000.00.00.H26"))
                .await,
        );
        assert_eq!(
            (e.status(), e.code()),
            (StatusCode::NOT_FOUND, "route.not_found")
        );
    }

    #[tokio::test]
    async fn wrong_method_is_405_with_allow_and_foreign_agency_403() {
        let e = refusal(
            svc()
                .oneshot(req("DELETE", "/lgsp/v1/HoSoCBCCVC", "000.00.00.H29"))
                .await,
        );
        assert_eq!(e.code(), "route.method_not_allowed");
        assert_eq!(
            e.headers(),
            vec![(header::ALLOW, HeaderValue::from_static("POST, PUT"))]
        );
        let e = refusal(
            svc()
                .oneshot(req("POST", "/lgsp/v1/HoSoCBCCVC/batch", "000.00.00.H29"))
                .await,
        );
        assert_eq!(
            (e.status(), e.code()),
            (StatusCode::FORBIDDEN, "route.agency_not_allowed")
        );
    }
}
