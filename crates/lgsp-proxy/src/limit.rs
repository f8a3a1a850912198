//! `LimitLayer`: overload protection (caps on requests in flight, global and per agency → 503) and the rate limit of
//! the (agency, route) pair (GCRA, local or Redis → 429), with `Retry-After` and the IETF `RateLimit-Policy` /
//! `RateLimit` headers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use dashmap::DashMap;
use futures_util::future::BoxFuture;
use http::{HeaderValue, Request, Response};
use lgsp_auth::Caller;
use lgsp_config::{OverloadConfig, RateLimitBackend, RateLimitConfig, RateSpec};
use lgsp_ratelimit::{Decision, Key, Limiter, LocalLimiter, Quota, RedisLimiter};
use tower::{Layer, Service};

use crate::BoxError;
use crate::body::Body;
use crate::route::Route;
use crate::stack::{Inner, Stackable, call};
use crate::trace::HopContext;

/// Why a request was held back.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error("rate limit of route {route} reached for {agency}")]
    RateLimited {
        route: Arc<str>,
        agency: Arc<str>,
        retry_after: Duration,
        policy: String,
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

    /// Headers the refusal carries: `Retry-After` (whole seconds, rounded up) and the rate-limit fields.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut h = vec![(
            "retry-after",
            secs_up(self.retry_after()).max(1).to_string(),
        )];
        if let LimitError::RateLimited { policy, state, .. } = self {
            h.push(("ratelimit-policy", policy.clone()));
            h.push(("ratelimit", state.clone()));
        }
        h
    }
}

/// Requests in flight, released when the guard drops.
struct InFlight {
    global: Arc<AtomicUsize>,
    agency: Option<Arc<AtomicUsize>>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.global.fetch_sub(1, Ordering::AcqRel);
        if let Some(a) = &self.agency {
            a.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// What the layer decides with; one per process (limits and counters are shared by the hops' routes by key).
pub struct LimitPolicy {
    shared: Option<RedisLimiter>,
    backend_label: String,
    local: LocalLimiter,
    fallback_local: bool,
    backend_up: AtomicBool,
    overload: OverloadConfig,
    global: Arc<AtomicUsize>,
    per_agency: DashMap<Arc<str>, Arc<AtomicUsize>>,
}

impl LimitPolicy {
    pub fn new(
        rl: &RateLimitConfig,
        overload: &OverloadConfig,
    ) -> Result<Self, lgsp_ratelimit::BackendError> {
        let (shared, backend_label) = match &rl.backend {
            RateLimitBackend::Local => (None, "local".to_owned()),
            RateLimitBackend::Redis(url) => (
                Some(RedisLimiter::new(url, rl.timeout)?.with_prefix(&rl.key_prefix)),
                "redis".to_owned(),
            ),
        };
        Ok(LimitPolicy {
            shared,
            backend_label,
            local: LocalLimiter::new(),
            fallback_local: rl.fallback_local,
            backend_up: AtomicBool::new(true),
            overload: overload.clone(),
            global: Arc::new(AtomicUsize::new(0)),
            per_agency: DashMap::new(),
        })
    }

    pub fn backend(&self) -> &str {
        &self.backend_label
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
        let counter = self
            .per_agency
            .entry(agency.clone())
            .or_insert_with(|| Arc::new(AtomicUsize::new(0)))
            .clone();
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
            agency: Some(counter),
        })
    }

    async fn decide(
        &self,
        hop: &HopContext,
        key: &Key,
        quota: &Quota,
    ) -> Result<Decision, LimitError> {
        let Some(shared) = &self.shared else {
            return Ok(self.local.decide(key, quota));
        };
        match shared.check(key, quota).await {
            Ok(d) => {
                if !self.backend_up.swap(true, Ordering::AcqRel) {
                    tracing::info!(backend = %self.backend_label, "rate-limit backend reachable again; shared limits resume");
                }
                hop.metrics
                    .ratelimit_backend_up
                    .with_label_values(&[&self.backend_label])
                    .set(1);
                Ok(d)
            }
            Err(e) => {
                if self.backend_up.swap(false, Ordering::AcqRel) {
                    let then = if self.fallback_local {
                        "limiting in-process until it is back"
                    } else {
                        "refusing rate-limited routes until it is back"
                    };
                    tracing::warn!(backend = %self.backend_label, error = %e, "rate-limit backend unreachable; {then}");
                }
                hop.metrics
                    .ratelimit_backend_up
                    .with_label_values(&[&self.backend_label])
                    .set(0);
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

fn quota(spec: &RateSpec) -> Quota {
    Quota::new(spec.count, spec.period_secs, spec.burst)
}

/// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers): the burst as quota over the refill window.
fn policy_header(route: &str, q: &Quota) -> String {
    format!("\"{route}\";q={};w={}", q.burst, q.window_secs())
}

fn state_header(route: &str, remaining: u32, reset: Duration) -> String {
    format!("\"{route}\";r={remaining};t={}", secs_up(reset))
}

#[derive(Clone)]
pub struct LimitLayer {
    policy: Arc<LimitPolicy>,
    hop: Arc<HopContext>,
}

impl LimitLayer {
    pub fn new(policy: Arc<LimitPolicy>, hop: Arc<HopContext>) -> Self {
        LimitLayer { policy, hop }
    }
}

impl<S: Stackable> Layer<S> for LimitLayer {
    type Service = Limit;

    fn layer(&self, inner: S) -> Limit {
        Limit {
            inner: inner.boxed(),
            policy: self.policy.clone(),
            hop: self.hop.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Limit {
    inner: Inner,
    policy: Arc<LimitPolicy>,
    hop: Arc<HopContext>,
}

impl Service<Request<Body>> for Limit {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<Body>, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        Box::pin(limit(
            self.inner.clone(),
            self.policy.clone(),
            self.hop.clone(),
            req,
        ))
    }
}

fn refuse(e: LimitError) -> Result<Response<Body>, BoxError> {
    Err(Box::new(e))
}

async fn limit(
    mut inner: Inner,
    policy: Arc<LimitPolicy>,
    hop: Arc<HopContext>,
    req: Request<Body>,
) -> Result<Response<Body>, BoxError> {
    let (Some(route), Some(caller)) = (
        req.extensions().get::<Arc<Route>>().cloned(),
        req.extensions().get::<Caller>().cloned(),
    ) else {
        return Err(Box::new(crate::error::ProxyError::Internal(
            "limit reached without route and caller".into(),
        )));
    };
    let _in_flight = match policy.admit(&caller.agency) {
        Ok(g) => g,
        Err(e) => {
            if let LimitError::Overloaded { scope, .. } = &e {
                hop.metrics
                    .load_shed
                    .with_label_values(&[&*hop.name, scope])
                    .inc();
            }
            return refuse(e);
        }
    };
    let spec = route
        .config
        .overrides
        .get(&*caller.agency)
        .or(route.config.rate.as_ref());
    let Some(spec) = spec else {
        return call(&mut inner, req).await;
    };
    let q = quota(spec);
    // Hops share one limiter per process (and one Redis per cluster): the key names the hop too.
    let key = Key {
        agency: caller.agency.clone(),
        route: Arc::from(format!("{}/{}", hop.name, route.name)),
    };
    let decision = match policy.decide(&hop, &key, &q).await {
        Ok(d) => d,
        Err(e) => return refuse(e),
    };
    let policy_value = policy_header(&route.name, &q);
    match decision {
        Decision::Deny { retry_after, reset } => {
            hop.metrics
                .ratelimited
                .with_label_values(&[&*hop.name, &route.name, &caller.agency])
                .inc();
            refuse(LimitError::RateLimited {
                route: route.name.clone(),
                agency: caller.agency.clone(),
                retry_after,
                policy: policy_value,
                state: state_header(&route.name, 0, reset),
            })
        }
        Decision::Allow { remaining, reset } => {
            let mut resp = call(&mut inner, req).await?;
            let h = resp.headers_mut();
            if let Ok(v) = HeaderValue::from_str(&policy_value) {
                h.insert("ratelimit-policy", v);
            }
            if let Ok(v) = HeaderValue::from_str(&state_header(&route.name, remaining, reset)) {
                h.insert("ratelimit", v);
            }
            Ok(resp)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lgsp_config::KeyKind;
    use lgsp_metrics::Metrics;
    use tower::ServiceExt;

    fn service(policy: &Arc<LimitPolicy>, hop: &str, metrics: &Arc<Metrics>) -> Limit {
        let hop = Arc::new(HopContext {
            name: Arc::from(hop),
            peers: Default::default(),
            metrics: metrics.clone(),
        });
        let ok = tower::service_fn(|_req: Request<Body>| async {
            Ok::<_, BoxError>(Response::new(crate::body::empty()))
        });
        LimitLayer::new(policy.clone(), hop).layer(ok)
    }

    fn request(route: &Arc<Route>) -> Request<Body> {
        let mut req = Request::new(crate::body::empty());
        req.extensions_mut().insert(route.clone());
        req.extensions_mut().insert(Caller {
            agency: Arc::from("000.00.00.H29"),
            kind: KeyKind::Production,
            via: None,
        });
        req
    }

    #[tokio::test]
    async fn hops_sharing_a_process_and_a_route_name_keep_separate_limits() {
        let cfg = lgsp_config::embedded().unwrap();
        let metrics = Metrics::new().unwrap();
        let policy = Arc::new(LimitPolicy::new(&cfg.ratelimit, &cfg.overload).unwrap());
        let mut route_cfg = cfg.hops[0].routes[0].clone();
        route_cfg.rate = Some(RateSpec {
            count: 1,
            period_secs: 3600,
            burst: 1,
        });
        let table = crate::route::RouteTable::new(&[route_cfg]);
        let route = table.lookup("/lgsp/v1/HoSoCBCCVC").unwrap().clone();
        let lgsp = service(&policy, "lgsp", &metrics);
        let ndxp = service(&policy, "ndxp", &metrics);
        assert!(lgsp.clone().oneshot(request(&route)).await.is_ok());
        assert!(
            ndxp.clone().oneshot(request(&route)).await.is_ok(),
            "the NDXP hop has its own allowance"
        );
        let e = lgsp.oneshot(request(&route)).await.unwrap_err();
        let e = e.downcast::<LimitError>().unwrap();
        assert!(matches!(*e, LimitError::RateLimited { .. }));
        assert_eq!(e.headers()[0].0, "retry-after");
    }
}
