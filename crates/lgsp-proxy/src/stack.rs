//! The request path of one hop, top to bottom. Read this file to see everything a request goes through after the
//! TLS handshake (the listener has already put the client certificate's `PeerIdentity` on the request).
//!
//! Every layer is a generic tower `Layer` over its inner service and returns [`lgsp_hop::step::Step`]: the inner
//! future unboxed, an answer decided at once, or — only where the layer must wait before deciding — one boxed
//! future. Every layer fails with a `BoxProblem`, which the outermost layer answers as problem+json.

use std::convert::Infallible;
use std::sync::Arc;

use http::{Request, Response};
use lgsp_auth::{AuthLayer, AuthPolicy};
use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;

use crate::limit::LimitLayer;
use crate::observe::ObserveLayer;
use crate::token::TokenLayer;
use crate::validate::ValidateLayer;
use lgsp_delivery::journal::JournalLayer;
use lgsp_hop::HopContext;
use lgsp_hop::body::Body;
use lgsp_hop::route::{RouteLayer, RouteTable};
use lgsp_upstream::forward::Forward;

/// A hop's whole stack as one cloneable service that never fails (errors are already problem+json).
pub type HopService = BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;

/// What one hop's stack is built from (made by [`crate::prepare`]); `S` is the innermost service, [`Forward`]
/// except in benchmarks.
pub struct HopParts<S = Forward> {
    pub hop: Arc<HopContext>,
    pub auth: Arc<AuthPolicy>,
    pub routes: Arc<RouteTable>,
    pub limit: LimitLayer,
    pub validate: ValidateLayer,
    pub journal: JournalLayer,
    pub forward: S,
}

pub fn hop_stack<S>(p: HopParts<S>) -> HopService
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = lgsp_problem::BoxProblem>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
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
        // A packet moves on only once it is journalled (and a repeated Idempotency-Key is answered from the
        // journal, a queued route's packet answered 202): after validation, so only checked packets are recorded.
        .layer(p.journal)
        // Innermost: to the upstream over mTLS as this hop's own identity.
        .service(p.forward);
    BoxCloneSyncService::new(stack)
}

/// The whole stack of one hop, served over an in-memory connection (no sockets): these tests pin the order of the
/// layers, which decides what a caller can learn and what a request costs before it is refused.
#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use http::{Request, StatusCode};
    use http_body_util::{BodyExt, Full, StreamBody};
    use hyper::client::conn::http1;
    use hyper_util::rt::TokioIo;

    use crate::listener::{ListenerSpec, serve_connection};
    use lgsp_hop::testing::{Fixture, identity, metrics};

    const KEY_H29: &str = "lgsp_dev_000.00.00.H29_production";
    const PACKET: &str =
        include_str!("../../../schemas/cbccvc/samples/valid/HoSoCBCCVC-02-toi-thieu.xml");

    type Client<B> = http1::SendRequest<B>;

    /// The first hop of `edits`'s config, serving one in-memory connection from agency H29.
    async fn connect<B>(fixture: &Fixture, edits: &[(&str, &str)]) -> Client<B>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let cfg = fixture.config(edits);
        let prepared = crate::prepare(&cfg, &metrics(), None, None).expect("prepared");
        let state = prepared.hops.into_iter().next().expect("a hop").state;
        let live = Arc::new(arc_swap::ArcSwap::from_pointee(state));
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let spec = ListenerSpec::new(
            "lgsp",
            &lgsp_config::HttpConfig::default(),
            std::time::Duration::from_secs(1),
        );
        tokio::spawn(async move {
            let _ = serve_connection(server_io, Some(identity("000.00.00.H29")), live, &spec).await;
        });
        let (sender, conn) = http1::handshake(TokioIo::new(client_io))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        sender
    }

    async fn code(resp: http::Response<hyper::body::Incoming>) -> (StatusCode, String) {
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let doc: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        (status, doc["code"].as_str().unwrap_or_default().to_owned())
    }

    fn post(path: &str, key: Option<&str>, body: &str) -> Request<Full<Bytes>> {
        let mut b = Request::post(path)
            .header("host", "localhost")
            .header("content-type", "application/xml");
        if let Some(k) = key {
            b = b.header("x-api-key", k);
        }
        b.body(Full::new(Bytes::from(body.to_owned()))).unwrap()
    }

    #[tokio::test]
    async fn an_unauthenticated_caller_learns_nothing_about_routes() {
        let fixture = Fixture::new();
        let mut client = connect(&fixture, &[]).await;
        let unknown = client
            .send_request(post("/no/such/route", None, ""))
            .await
            .unwrap();
        assert_eq!(
            code(unknown).await,
            (StatusCode::UNAUTHORIZED, "auth.missing_key".into()),
            "auth comes before routing"
        );
        let wrong_method = client
            .send_request(
                Request::delete("/lgsp/v1/HoSoCBCCVC")
                    .header("host", "localhost")
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(code(wrong_method).await.0, StatusCode::UNAUTHORIZED);
        // Authenticated, the same request is told the route does not exist.
        let unknown = client
            .send_request(post("/no/such/route", Some(KEY_H29), ""))
            .await
            .unwrap();
        assert_eq!(
            code(unknown).await,
            (StatusCode::NOT_FOUND, "route.not_found".into())
        );
    }

    #[tokio::test]
    async fn a_request_over_its_rate_is_refused_before_its_body_is_read() {
        let fixture = Fixture::new();
        let one_per_hour = [(
            "dry_run = true\nagencies = [\"*\"]\nmax_body_bytes = 8388608\nrate = \"20/s\"\nburst = 40",
            "dry_run = true\nagencies = [\"*\"]\nmax_body_bytes = 8388608\nrate = \"1/h\"\nburst = 1",
        )];
        let mut client = connect(&fixture, &one_per_hour).await;
        let first = client
            .send_request(
                post("/lgsp/v1/validate/HoSoCBCCVC", Some(KEY_H29), PACKET)
                    .map(http_body_util::Either::Left),
            )
            .await
            .unwrap();
        assert_eq!(
            code(first).await.0,
            StatusCode::OK,
            "the dry run uses the allowance"
        );
        // The second request announces a body it never sends: a layer that read bodies before the rate limit
        // would wait for it forever, so the answer arriving at all shows the body was not read.
        let (_tx, rx) = tokio::sync::mpsc::channel::<
            Result<hyper::body::Frame<Bytes>, std::convert::Infallible>,
        >(1);
        let never = StreamBody::new(tokio_stream_of(rx));
        let req = Request::post("/lgsp/v1/validate/HoSoCBCCVC")
            .header("host", "localhost")
            .header("x-api-key", KEY_H29)
            .header("content-type", "application/xml")
            .header("content-length", "100000")
            .body(http_body_util::Either::Right(never))
            .unwrap();
        let answer =
            tokio::time::timeout(std::time::Duration::from_secs(60), client.send_request(req))
                .await
                .expect("the limit layer waited for the body")
                .unwrap();
        assert_eq!(answer.headers()["retry-after"], "3600");
        assert_eq!(
            code(answer).await,
            (StatusCode::TOO_MANY_REQUESTS, "ratelimit.exceeded".into())
        );
    }

    /// A stream of what arrives on `rx`.
    fn tokio_stream_of<T: Send + 'static>(
        rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> + Send {
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
    }
}
