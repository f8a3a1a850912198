//! The request path of one hop, top to bottom. Read this file to see everything a request goes through after the
//! TLS handshake (the listener has already put the client certificate's `PeerIdentity` on the request).
//!
//! Every layer is a generic tower `Layer` over its inner service and returns [`crate::step::Step`]: the inner
//! future unboxed, an answer decided at once, or — only where the layer must wait before deciding — one boxed
//! future. Every layer fails with a `BoxProblem`, which the outermost layer answers as problem+json.

use std::convert::Infallible;
use std::sync::Arc;

use http::{Request, Response};
use lgsp_auth::{AuthLayer, AuthPolicy};
use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;

use crate::body::Body;
use crate::forward::Forward;
use crate::hop::HopContext;
use crate::limit::LimitLayer;
use crate::observe::ObserveLayer;
use crate::route::{RouteLayer, RouteTable};
use crate::token::TokenLayer;
use crate::validate::ValidateLayer;

/// A hop's whole stack as one cloneable service that never fails (errors are already problem+json).
pub type HopService = BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;

/// What one hop's stack is built from (made by [`crate::prepare`]).
pub struct HopParts {
    pub hop: Arc<HopContext>,
    pub auth: Arc<AuthPolicy>,
    pub routes: Arc<RouteTable>,
    pub limit: LimitLayer,
    pub validate: ValidateLayer,
    pub forward: Forward,
}

pub fn hop_stack(p: HopParts) -> HopService {
    let stack = ServiceBuilder::new()
        // Outermost: hop headers are settled before anything reads them, every request is timed and counted
        // whatever happens below, and every failure becomes problem+json here and nowhere else.
        .layer(ObserveLayer::new(p.hop.clone()))
        // POST /token: WSO2-style clients trade HTTP Basic (agency code + API key) for a bearer token bound to
        // their certificate; answered here, before anything that needs a caller.
        .layer(TokenLayer::new(p.auth.clone(), p.hop))
        // Who is calling: certificate identity + API key (or bearer token) bound to it, or a trusted peer
        // relaying for an agency. Before routing, so an unauthenticated caller learns nothing about the routes.
        .layer(AuthLayer::new(p.auth))
        // Which route, whether the method fits, whether this agency may use it.
        .layer(RouteLayer::new(p.routes))
        // Load shedding and the (agency, route) rate limit: after route (the quota is the route's, the key names
        // it), before reading any body, so a flood costs no parsing.
        .layer(p.limit)
        // The route's body limit; for packet routes the packet check (415 / 413 / 400 / 403 / 422). After route
        // and auth: the route names the message type and limit, the caller's agency bounds the MaDonVi.
        .layer(p.validate)
        // Innermost: to the upstream over mTLS as this hop's own identity.
        .service(p.forward);
    BoxCloneSyncService::new(stack)
}
