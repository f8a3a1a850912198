//! The request path of one hop, top to bottom. Read this file to see everything a request goes through after the
//! TLS handshake (the listener has already put the client certificate's `PeerIdentity` on the request).

use std::convert::Infallible;
use std::sync::Arc;

use http::{Request, Response};
use lgsp_auth::{AuthLayer, AuthPolicy};
use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;

use crate::body::Body;
use crate::forward::{Forward, UpstreamClient};
use crate::limit::{LimitLayer, LimitPolicy};
use crate::route::{RouteLayer, RouteTable};
use crate::token::TokenLayer;
use crate::trace::{HopContext, ObserveLayer};
use crate::validate::{ValidateLayer, ValidationPolicy};

/// A hop's whole stack as one cloneable service that never fails (errors are already problem+json).
pub type HopService = BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;

pub fn hop_stack(
    hop: Arc<HopContext>,
    auth: Arc<AuthPolicy>,
    routes: Arc<RouteTable>,
    limits: Arc<LimitPolicy>,
    validation: Arc<ValidationPolicy>,
    client: UpstreamClient,
) -> HopService {
    let stack = ServiceBuilder::new()
        // Outermost: hop headers are settled before anything reads them, every request is timed and counted
        // whatever happens below, and every error becomes problem+json here and nowhere else.
        .layer(ObserveLayer::new(hop.clone()))
        // POST /token: WSO2-style clients trade HTTP Basic (agency code + API key) for a bearer token bound to
        // their certificate; answered here, before anything that needs a caller.
        .layer(TokenLayer::new(auth.clone()))
        // Who is calling: certificate identity + API key (or bearer token) bound to it, or a trusted peer
        // relaying for an agency. Before routing, so an unauthenticated caller learns nothing about the routes.
        .layer(AuthLayer::new(auth))
        // Which route, whether the method fits, whether this agency may use it.
        .layer(RouteLayer::new(routes))
        // Load shedding and the (agency, route) rate limit: after route (the quota is the route's, the key names
        // it), before reading any body, so a flood costs no parsing.
        .layer(LimitLayer::new(limits, hop.clone()))
        // The route's body limit; for packet routes the packet check (415 / 413 / 400 / 403 / 422). After route
        // and auth: the route names the message type and limit, the caller's agency bounds the MaDonVi.
        .layer(ValidateLayer::new(validation, hop.clone()))
        // Innermost: to the upstream over mTLS as this hop's own identity.
        .service(Forward::new(client, hop));
    BoxCloneSyncService::new(stack)
}

/// A layer's inner service, boxed so the futures the layers build have concrete types.
pub(crate) type Inner =
    tower::util::BoxCloneSyncService<Request<Body>, Response<Body>, crate::BoxError>;

/// What a layer of this stack can wrap: a cloneable, thread-safe service of the stack's request and response.
pub(crate) trait Stackable:
    tower::Service<
        Request<Body>,
        Response = Response<Body>,
        Error = crate::BoxError,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static
{
    /// Boxed as the layers hold it.
    fn boxed(self) -> Inner {
        BoxCloneSyncService::new(self)
    }
}

impl<S> Stackable for S where
    S: tower::Service<
            Request<Body>,
            Response = Response<Body>,
            Error = crate::BoxError,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// Waits for the inner service to be ready, then calls it.
pub(crate) async fn call(
    inner: &mut Inner,
    req: Request<Body>,
) -> Result<Response<Body>, crate::BoxError> {
    use tower::{Service, ServiceExt};
    match inner.ready().await {
        Ok(svc) => svc.call(req).await,
        Err(e) => Err(e),
    }
}
