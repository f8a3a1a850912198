//! The two stacks the `stack` bench and example compare: the hop's layers as built (generic, each wrapping its
//! inner service unboxed) and the same layers with every inner service and future boxed, over an innermost service
//! that answers at once; and the request both serve (GET on a route without a packet: key check, route, limits,
//! body limit).

use std::sync::Arc;

use http::{Request, Response};
use lgsp_auth::{AuthLayer, AuthPolicy, TokenIssuer};
use lgsp_config::RateSpec;
use lgsp_metrics::Metrics;
use lgsp_problem::BoxProblem;
use lgsp_proxy::body::{Body, empty};
use lgsp_proxy::journal::JournalLayer;
use lgsp_proxy::limit::{LimitLayer, LimitPolicy};
use lgsp_proxy::token::TokenLayer;
use lgsp_proxy::validate::{ValidateLayer, ValidationPolicy};
use lgsp_proxy::{HopContext, HopParts, HopService, ObserveLayer, RouteLayer, RouteTable};
use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;

pub type Inner = BoxCloneSyncService<Request<Body>, Response<Body>, BoxProblem>;

fn innermost() -> Inner {
    BoxCloneSyncService::new(tower::service_fn(|_req: Request<Body>| async {
        Ok::<_, BoxProblem>(Response::new(empty()))
    }))
}

pub fn parts() -> HopParts<Inner> {
    let cfg = lgsp_config::embedded().expect("embedded config");
    let metrics = Metrics::new().expect("metrics");
    let mut routes = cfg.hops[0].routes.clone();
    // A limit that never refuses, so every request takes the whole path.
    for r in &mut routes {
        r.rate = Some(RateSpec {
            count: 1_000_000,
            period_secs: 1,
            burst: 1_000_000,
        });
    }
    let hop = Arc::new(HopContext::new("lgsp", &[], metrics.clone()));
    let tokens = TokenIssuer::new("lgsp", None, std::time::Duration::from_secs(60));
    let catalog = Arc::new(lgsp_schema::Catalog::embedded().expect("schemas"));
    let validation = ValidationPolicy::new(
        catalog,
        lgsp_schema::Options::default(),
        1000,
        &cfg.agencies,
    );
    let limits = Arc::new(LimitPolicy::new(&cfg.ratelimit, &cfg.overload).expect("limits"));
    HopParts {
        auth: Arc::new(AuthPolicy::new("lgsp", &cfg.agencies, &[], metrics, tokens)),
        routes: Arc::new(RouteTable::new(&hop, &routes)),
        limit: LimitLayer::new(limits, hop.clone(), &routes, &cfg.agencies),
        validate: ValidateLayer::new(Arc::new(validation), hop.clone()),
        // The bench's request is no packet: the journal passes it.
        journal: JournalLayer::new(
            None,
            hop.clone(),
            &routes,
            std::time::Duration::from_secs(60),
        ),
        forward: innermost(),
        hop,
    }
}

/// The same layers, every inner service boxed (and so every future).
pub fn boxed_stack(p: HopParts<Inner>) -> HopService {
    let stack = ServiceBuilder::new()
        .layer(ObserveLayer::new(p.hop.clone()))
        .layer(BoxCloneSyncService::layer())
        .layer(TokenLayer::new(p.auth.clone(), p.hop))
        .layer(BoxCloneSyncService::layer())
        .layer(AuthLayer::new(p.auth))
        .layer(BoxCloneSyncService::layer())
        .layer(RouteLayer::new(p.routes))
        .layer(BoxCloneSyncService::layer())
        .layer(p.limit)
        .layer(BoxCloneSyncService::layer())
        .layer(p.validate)
        .layer(BoxCloneSyncService::layer())
        .layer(p.journal)
        .layer(BoxCloneSyncService::layer())
        .service(p.forward);
    BoxCloneSyncService::new(stack)
}

pub fn request() -> Request<Body> {
    let mut req = Request::get("/lgsp/v1/BienNhan/0190a5a4-0000-7000-8000-000000000000")
        .header("x-api-key", "lgsp_dev_000.00.00.H29_production")
        .body(empty())
        .expect("request");
    req.extensions_mut().insert(lgsp_tls::PeerIdentity {
        id: "000.00.00.H29".into(),
        source: lgsp_tls::IdentitySource::SanUri,
        cert_sha256: String::new(),
        // 2100-01-01: valid for as long as any test runs.
        not_after: 4_102_444_800,
        spki: Default::default(),
    });
    req
}
