//! `LimitLayer`: overload protection (caps on requests in flight, global and per agency → 503) and the rate limit of
//! the (agency, route) pair (GCRA, local or Redis → 429), with `Retry-After` and the IETF `RateLimit-Policy` /
//! `RateLimit` headers. Everything about a route's limit that does not depend on the request (its key, quota,
//! policy header, counters) is worked out once, when the route is loaded.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use dashmap::DashMap;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, header};
use lgsp_auth::Caller;
use lgsp_config::{
    AgencyConfig, OverloadConfig, RateLimitBackend, RateLimitConfig, RateSpec, RouteConfig,
};
use lgsp_problem::{BoxProblem, Class, Internal, Problem};
use lgsp_ratelimit::{Decision, Key, Limiter, LocalLimiter, Quota, RedisLimiter};
use prometheus::IntCounter;
use tower::{Layer, Service};

use lgsp_hop::HopContext;
use lgsp_hop::body::Body;
use lgsp_hop::route::Route;
use lgsp_hop::step::{Answer, Next, Step, unnamed};

/// Why a request was held back.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error("rate limit of route {route} reached for {agency}")]
    RateLimited {
        route: Arc<str>,
        agency: Arc<str>,
        retry_after: Duration,
        policy: HeaderValue,
        state: String,
    },
    #[error("too many requests in flight ({scope})")]
    Overloaded {
        scope: &'static str,
        retry_after: Duration,
    },
    #[error("rate-limit backend unavailable and configured to refuse")]
    BackendUnavailable { retry_after: Duration },
}

fn secs_up(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl LimitError {
    pub fn retry_after(&self) -> Duration {
        match self {
            LimitError::RateLimited { retry_after, .. }
            | LimitError::Overloaded { retry_after, .. }
            | LimitError::BackendUnavailable { retry_after } => *retry_after,
        }
    }
}

impl Problem for LimitError {
    fn status(&self) -> StatusCode {
        match self {
            LimitError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            LimitError::Overloaded { .. } | LimitError::BackendUnavailable { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    fn code(&self) -> &'static str {
        match self {
            LimitError::RateLimited { .. } => "ratelimit.exceeded",
            LimitError::Overloaded { .. } => "overload.shed",
            LimitError::BackendUnavailable { .. } => "ratelimit.backend_unavailable",
        }
    }

    fn class(&self) -> Class {
        match self {
            LimitError::RateLimited { .. } => Class::Client,
            _ => Class::Gateway,
        }
    }

    fn detail(&self) -> String {
        match self {
            LimitError::RateLimited { route, agency, .. } => format!(
                "Agency {agency} sends faster than route {route} allows; wait Retry-After seconds and resend (nothing of this request was journalled or delivered; RateLimit-Policy gives the quota)."
            ),
            LimitError::Overloaded { scope, .. } => format!(
                "The gateway has too many requests in flight ({scope}); resend after Retry-After seconds."
            ),
            LimitError::BackendUnavailable { .. } => "The shared rate-limit store is unreachable and the gateway is set to refuse meanwhile; resend after Retry-After seconds.".to_owned(),
        }
    }

    /// `Retry-After` (whole seconds, rounded up) and, for a rate limit, its `RateLimit-Policy` and `RateLimit`.
    fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        let mut h = vec![(
            header::RETRY_AFTER,
            HeaderValue::from(secs_up(self.retry_after()).max(1)),
        )];
        if let LimitError::RateLimited { policy, state, .. } = self {
            h.push((RATELIMIT_POLICY, policy.clone()));
            if let Ok(v) = HeaderValue::from_str(state) {
                h.push((RATELIMIT, v));
            }
        }
        h
    }
}

const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Requests in flight, released when the guard drops.
struct InFlight {
    global: Arc<AtomicUsize>,
    agency: Arc<AtomicUsize>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.global.fetch_sub(1, Ordering::AcqRel);
        self.agency.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the layer decides with; one per process (limits and counters are shared by the hops' routes by key).
pub struct LimitPolicy {
    shared: Option<RedisLimiter>,
    backend_label: &'static str,
    local: LocalLimiter,
    fallback_local: bool,
    backend_up: AtomicBool,
    overload: OverloadConfig,
    global: Arc<AtomicUsize>,
    per_agency: DashMap<Arc<str>, Arc<AtomicUsize>>,
}

impl LimitPolicy {
    /// Opens the backend (Redis lazily: a Redis that is down at start does not stop the gateway; the fallback
    /// decides meanwhile). Fails only when the backend's URL cannot be used at all.
    pub fn new(
        rl: &RateLimitConfig,
        overload: &OverloadConfig,
    ) -> Result<Self, lgsp_ratelimit::BackendError> {
        let shared = match &rl.backend {
            RateLimitBackend::Local => None,
            RateLimitBackend::Redis { url, .. } => {
                Some(RedisLimiter::new(url, rl.timeout)?.with_prefix(&rl.key_prefix))
            }
        };
        Ok(LimitPolicy {
            backend_label: if shared.is_some() { "redis" } else { "local" },
            shared,
            local: LocalLimiter::new(),
            fallback_local: rl.fallback_local,
            backend_up: AtomicBool::new(true),
            overload: overload.clone(),
            global: Arc::new(AtomicUsize::new(0)),
            per_agency: DashMap::new(),
        })
    }

    /// `local` or `redis` (the `backend` label).
    pub fn backend(&self) -> &'static str {
        self.backend_label
    }

    /// Asks the shared backend for a decision on a key no request uses (`check-config --connect`).
    pub async fn ping(&self) -> Result<(), lgsp_ratelimit::BackendError> {
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        let key = Key {
            agency: Arc::from("check-config"),
            route: Arc::from("ping"),
        };
        shared
            .check(&key, &Quota::new(1_000_000, 1, 1_000_000))
            .await
            .map(|_| ())
    }

    fn admit(&self, agency: &Arc<str>) -> Result<InFlight, LimitError> {
        let retry_after = self.overload.retry_after;
        if self.global.fetch_add(1, Ordering::AcqRel) >= self.overload.max_in_flight {
            self.global.fetch_sub(1, Ordering::AcqRel);
            return Err(LimitError::Overloaded {
                scope: "global",
                retry_after,
            });
        }
        let counter = match self.per_agency.get(agency) {
            Some(c) => c.clone(),
            None => self
                .per_agency
                .entry(agency.clone())
                .or_insert_with(|| Arc::new(AtomicUsize::new(0)))
                .clone(),
        };
        if counter.fetch_add(1, Ordering::AcqRel) >= self.overload.max_in_flight_per_agency {
            counter.fetch_sub(1, Ordering::AcqRel);
            self.global.fetch_sub(1, Ordering::AcqRel);
            return Err(LimitError::Overloaded {
                scope: "agency",
                retry_after,
            });
        }
        Ok(InFlight {
            global: self.global.clone(),
            agency: counter,
        })
    }

    /// A decision from the shared backend, or the local one when it is down and the fallback allows.
    async fn decide_shared(
        &self,
        shared: &RedisLimiter,
        hop: &HopContext,
        key: &Key,
        quota: &Quota,
    ) -> Result<Decision, LimitError> {
        let up = hop
            .metrics
            .ratelimit_backend_up
            .with_label_values(&[self.backend_label]);
        match shared.check(key, quota).await {
            Ok(d) => {
                if !self.backend_up.swap(true, Ordering::AcqRel) {
                    tracing::info!(
                        backend = self.backend_label,
                        "rate-limit backend reachable again; shared limits resume"
                    );
                }
                up.set(1);
                Ok(d)
            }
            Err(e) => {
                if self.backend_up.swap(false, Ordering::AcqRel) {
                    let then = if self.fallback_local {
                        "limiting in-process until it is back"
                    } else {
                        "refusing rate-limited routes until it is back"
                    };
                    tracing::warn!(backend = self.backend_label, error = %e, "rate-limit backend unreachable; {then}");
                }
                up.set(0);
                if self.fallback_local {
                    Ok(self.local.decide(key, quota))
                } else {
                    Err(LimitError::BackendUnavailable {
                        retry_after: self.overload.retry_after,
                    })
                }
            }
        }
    }
}

/// One quota of a route, with what its answers say about it.
struct RouteQuota {
    quota: Quota,
    /// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers): the burst as quota over the refill window.
    policy: HeaderValue,
}

/// A route's limits, worked out at load.
struct RouteLimits {
    name: Arc<str>,
    /// The route part of the limiter key: hops share one limiter per process (and one Redis per cluster).
    key: Arc<str>,
    default: Option<RouteQuota>,
    overrides: HashMap<String, RouteQuota>,
    /// `lgsp_ratelimited_total{hop, route, agency}` per known agency.
    ratelimited: HashMap<String, IntCounter>,
}

impl RouteLimits {
    fn new(hop: &HopContext, r: &RouteConfig, agencies: &[AgencyConfig]) -> Self {
        let quota = |spec: &RateSpec| {
            let quota = Quota::new(spec.count, spec.period_secs, spec.burst);
            let policy = format!("\"{}\";q={};w={}", r.name, quota.burst, quota.window_secs());
            RouteQuota {
                policy: HeaderValue::from_str(&policy)
                    .unwrap_or_else(|_| HeaderValue::from_static("\"route\"")),
                quota,
            }
        };
        RouteLimits {
            name: Arc::from(r.name.as_str()),
            key: Arc::from(format!("{}/{}", hop.name, r.name)),
            default: r.rate.as_ref().map(quota),
            overrides: r
                .overrides
                .iter()
                .map(|(a, s)| (a.clone(), quota(s)))
                .collect(),
            ratelimited: agencies
                .iter()
                .map(|a| {
                    let c = hop
                        .metrics
                        .ratelimited
                        .with_label_values(&[&*hop.name, &r.name, &a.code]);
                    (a.code.clone(), c)
                })
                .collect(),
        }
    }

    fn quota(&self, agency: &str) -> Option<&RouteQuota> {
        self.overrides.get(agency).or(self.default.as_ref())
    }

    fn state(&self, remaining: u32, reset: Duration) -> String {
        format!("\"{}\";r={remaining};t={}", self.name, secs_up(reset))
    }

    /// The refusal of a denied request.
    fn denied(
        &self,
        agency: &Arc<str>,
        q: &RouteQuota,
        retry_after: Duration,
        reset: Duration,
    ) -> LimitError {
        if let Some(c) = self.ratelimited.get(&**agency) {
            c.inc();
        }
        LimitError::RateLimited {
            route: self.name.clone(),
            agency: agency.clone(),
            retry_after,
            policy: q.policy.clone(),
            state: self.state(0, reset),
        }
    }
}

#[derive(Clone)]
pub struct LimitLayer {
    policy: Arc<LimitPolicy>,
    hop: Arc<HopContext>,
    /// Per route, by [`Route::index`].
    routes: Arc<[RouteLimits]>,
}

impl LimitLayer {
    pub fn new(
        policy: Arc<LimitPolicy>,
        hop: Arc<HopContext>,
        routes: &[RouteConfig],
        agencies: &[AgencyConfig],
    ) -> Self {
        let routes = routes
            .iter()
            .map(|r| RouteLimits::new(&hop, r, agencies))
            .collect();
        LimitLayer {
            policy,
            hop,
            routes,
        }
    }
}

impl<S> Layer<S> for LimitLayer {
    type Service = Limit<S>;

    fn layer(&self, inner: S) -> Limit<S> {
        Limit {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Limit<S> {
    inner: S,
    layer: LimitLayer,
}

pin_project_lite::pin_project! {
    /// The inner answer of an admitted request: its in-flight slot held until then, its rate-limit state added.
    pub struct Admitted<F> {
        #[pin]
        fut: F,
        slot: Option<InFlight>,
        headers: Option<(HeaderValue, String)>,
    }
}

impl<F: Future<Output = Answer>> Future for Admitted<F> {
    type Output = Answer;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Answer> {
        let this = self.project();
        let mut resp: Response<Body> = ready!(this.fut.poll(cx))?;
        drop(this.slot.take());
        if let Some((policy, state)) = this.headers.take() {
            let h = resp.headers_mut();
            h.insert(RATELIMIT_POLICY, policy);
            if let Ok(v) = HeaderValue::from_str(&state) {
                h.insert(RATELIMIT, v);
            }
        }
        Poll::Ready(Ok(resp))
    }
}

impl<S: Next> Service<Request<Body>> for Limit<S> {
    type Response = Response<Body>;
    type Error = BoxProblem;
    type Future = Step<Admitted<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxProblem>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let (Some(route), Some(caller)) = (
            req.extensions().get::<Arc<Route>>().cloned(),
            req.extensions().get::<Caller>().cloned(),
        ) else {
            return Step::refuse(Internal("limit reached without route and caller".into()));
        };
        let LimitLayer {
            policy,
            hop,
            routes,
        } = &self.layer;
        let slot = match policy.admit(&caller.agency) {
            Ok(slot) => slot,
            Err(e) => {
                match &e {
                    LimitError::Overloaded {
                        scope: "global", ..
                    } => hop.shed_global.inc(),
                    LimitError::Overloaded { .. } => hop.shed_agency.inc(),
                    _ => {}
                }
                return Step::refuse(e);
            }
        };
        let Some(limits) = routes.get(route.index) else {
            return Step::refuse(Internal(format!("no limits for route {}", route.name)));
        };
        let Some(q) = limits.quota(&caller.agency) else {
            return Step::inner(Admitted {
                fut: self.inner.call(req),
                slot: Some(slot),
                headers: None,
            });
        };
        let key = Key {
            agency: caller.agency.clone(),
            route: limits.key.clone(),
        };
        let Some(shared) = &policy.shared else {
            let decision = policy.local.decide(&key, &q.quota);
            return admit(
                &mut self.inner,
                req,
                slot,
                limits,
                &caller.agency,
                q,
                decision,
            );
        };
        // The shared backend answers over the network: the one path that waits before calling inner.
        let _ = shared;
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let wait = Shared {
            policy: policy.clone(),
            hop: hop.clone(),
            routes: routes.clone(),
            index: route.index,
            agency: caller.agency,
            key,
        };
        Step::wait(wait.decide(inner, req, slot))
    }
}

/// A request waiting for the shared backend's decision.
struct Shared {
    policy: Arc<LimitPolicy>,
    hop: Arc<HopContext>,
    routes: Arc<[RouteLimits]>,
    index: usize,
    agency: Arc<str>,
    key: Key,
}

impl Shared {
    async fn decide<S: Next>(self, mut inner: S, req: Request<Body>, slot: InFlight) -> Answer {
        let (Some(limits), Some(shared)) =
            (self.routes.get(self.index), self.policy.shared.as_ref())
        else {
            return Err(Internal("limits changed under a request".into()).into());
        };
        let Some(q) = limits.quota(&self.agency) else {
            return unnamed(inner.call(req)).await;
        };
        let decision = self
            .policy
            .decide_shared(shared, &self.hop, &self.key, &q.quota)
            .await?;
        unnamed(admit(
            &mut inner,
            req,
            slot,
            limits,
            &self.agency,
            q,
            decision,
        ))
        .await
    }
}

/// Calls inner for an allowed request (with the rate-limit state for its answer), refuses a denied one.
fn admit<S>(
    inner: &mut S,
    req: Request<Body>,
    slot: InFlight,
    limits: &RouteLimits,
    agency: &Arc<str>,
    q: &RouteQuota,
    decision: Decision,
) -> Step<Admitted<S::Future>>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = BoxProblem>,
{
    match decision {
        Decision::Deny { retry_after, reset } => {
            Step::refuse(limits.denied(agency, q, retry_after, reset))
        }
        Decision::Allow { remaining, reset } => Step::inner(Admitted {
            fut: inner.call(req),
            slot: Some(slot),
            headers: Some((q.policy.clone(), limits.state(remaining, reset))),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lgsp_config::KeyKind;
    use lgsp_metrics::Metrics;
    use tower::ServiceExt;

    type Ok200 = tower::util::BoxCloneSyncService<Request<Body>, Response<Body>, BoxProblem>;

    fn ok() -> Ok200 {
        tower::util::BoxCloneSyncService::new(tower::service_fn(|_req: Request<Body>| async {
            Ok::<_, BoxProblem>(Response::new(lgsp_hop::body::empty()))
        }))
    }

    fn service(
        policy: &Arc<LimitPolicy>,
        hop: &str,
        metrics: &Arc<Metrics>,
        routes: &[RouteConfig],
    ) -> (Limit<Ok200>, Arc<lgsp_hop::route::RouteTable>) {
        let hop = Arc::new(HopContext::new(hop, &[], metrics.clone()));
        let cfg = lgsp_config::embedded().unwrap();
        let table = Arc::new(lgsp_hop::route::RouteTable::new(&hop, routes));
        (
            LimitLayer::new(policy.clone(), hop, routes, &cfg.agencies).layer(ok()),
            table,
        )
    }

    fn request(route: &Arc<Route>, agency: &str) -> Request<Body> {
        let mut req = Request::new(lgsp_hop::body::empty());
        req.extensions_mut().insert(route.clone());
        req.extensions_mut().insert(Caller {
            agency: Arc::from(agency),
            kind: KeyKind::Production,
            via: None,
        });
        req
    }

    fn one_per_hour() -> Vec<RouteConfig> {
        let cfg = lgsp_config::embedded().unwrap();
        let mut route = cfg.hops[0].routes[0].clone();
        route.rate = Some(RateSpec {
            count: 1,
            period_secs: 3600,
            burst: 1,
        });
        route.overrides.clear();
        route.overrides.insert(
            "000.00.00.H26".into(),
            RateSpec {
                count: 10,
                period_secs: 1,
                burst: 5,
            },
        );
        vec![route]
    }

    #[tokio::test]
    async fn hops_sharing_a_process_and_a_route_name_keep_separate_limits() {
        let cfg = lgsp_config::embedded().unwrap();
        let metrics = Metrics::new().unwrap();
        let policy = Arc::new(LimitPolicy::new(&cfg.ratelimit, &cfg.overload).unwrap());
        let routes = one_per_hour();
        let (lgsp, table) = service(&policy, "lgsp", &metrics, &routes);
        let (ndxp, _) = service(&policy, "ndxp", &metrics, &routes);
        let route = table.lookup("/lgsp/v1/HoSoCBCCVC").unwrap().clone();
        let first = lgsp
            .clone()
            .oneshot(request(&route, "000.00.00.H29"))
            .await
            .unwrap();
        assert_eq!(
            first.headers()["ratelimit-policy"],
            "\"HoSoCBCCVC\";q=1;w=3600"
        );
        assert_eq!(first.headers()["ratelimit"], "\"HoSoCBCCVC\";r=0;t=3600");
        assert!(
            ndxp.clone()
                .oneshot(request(&route, "000.00.00.H29"))
                .await
                .is_ok(),
            "the NDXP hop has its own allowance"
        );
        let e = lgsp
            .clone()
            .oneshot(request(&route, "000.00.00.H29"))
            .await
            .unwrap_err();
        assert_eq!(
            (e.status(), e.code()),
            (StatusCode::TOO_MANY_REQUESTS, "ratelimit.exceeded")
        );
        let h = e.headers();
        assert_eq!(h[0].0, header::RETRY_AFTER);
        assert_eq!(h[1].1, "\"HoSoCBCCVC\";q=1;w=3600");
        assert_eq!(
            metrics
                .ratelimited
                .with_label_values(&["lgsp", "HoSoCBCCVC", "000.00.00.H29"])
                .get(),
            1
        );
        // H26's override gives it its own quota on the same route.
        let resp = lgsp
            .oneshot(request(&route, "000.00.00.H26"))
            .await
            .unwrap();
        assert_eq!(resp.headers()["ratelimit-policy"], "\"HoSoCBCCVC\";q=5;w=1");
    }

    #[tokio::test]
    async fn an_agency_at_its_in_flight_cap_is_shed_while_others_pass() {
        let mut cfg = lgsp_config::embedded().unwrap();
        cfg.overload.max_in_flight_per_agency = 1;
        let metrics = Metrics::new().unwrap();
        let policy = Arc::new(LimitPolicy::new(&cfg.ratelimit, &cfg.overload).unwrap());
        let routes = vec![cfg.hops[0].routes[0].clone()];
        let hop = Arc::new(HopContext::new("lgsp", &[], metrics.clone()));
        let table = lgsp_hop::route::RouteTable::new(&hop, &routes);
        let route = table.lookup("/lgsp/v1/HoSoCBCCVC").unwrap().clone();
        let release = Arc::new(tokio::sync::Semaphore::new(0));
        let r = release.clone();
        let held =
            tower::util::BoxCloneSyncService::new(tower::service_fn(move |_req: Request<Body>| {
                let r = r.clone();
                async move {
                    let _ = r.acquire().await;
                    Ok::<_, BoxProblem>(Response::new(lgsp_hop::body::empty()))
                }
            }));
        let svc = LimitLayer::new(policy, hop, &routes, &cfg.agencies).layer(held);
        // The slot is taken when the request is admitted, before its answer: H29's one slot is now in use.
        let mut s1 = svc.clone();
        let first = s1
            .ready()
            .await
            .unwrap()
            .call(request(&route, "000.00.00.H29"));
        let e = svc
            .clone()
            .oneshot(request(&route, "000.00.00.H29"))
            .await
            .unwrap_err();
        assert_eq!(
            (e.status(), e.code()),
            (StatusCode::SERVICE_UNAVAILABLE, "overload.shed")
        );
        assert_eq!(e.class(), Class::Gateway);
        let mut s2 = svc.clone();
        let other = s2
            .ready()
            .await
            .unwrap()
            .call(request(&route, "000.00.00.H26"));
        release.add_permits(2);
        assert!(first.await.is_ok());
        assert!(other.await.is_ok());
        // Answered: the slot is free again.
        release.add_permits(1);
        assert!(svc.oneshot(request(&route, "000.00.00.H29")).await.is_ok());
        assert_eq!(
            metrics
                .load_shed
                .with_label_values(&["lgsp", "agency"])
                .get(),
            1
        );
    }
}
