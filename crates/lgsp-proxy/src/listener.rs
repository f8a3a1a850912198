//! TLS listeners: accept, handshake within a deadline (failures logged with their reason and counted), read the
//! client's identity from its certificate, then serve HTTP/1.1 or HTTP/2 (hyper-util auto) until drained.

use std::sync::Arc;
use std::time::Duration;

use std::convert::Infallible;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use lgsp_metrics::Metrics;
use lgsp_tls::{HandshakeFailure, PeerIdentity};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::body::{Body, BoxError, boxed};
use crate::stack::HopService;

/// What a listener serves with; swapped whole by a reload. Connections take the TLS part when they are
/// accepted; requests take the service when they arrive, so in-flight requests finish on the state they began with.
pub struct ListenerState {
    pub tls: Arc<rustls::ServerConfig>,
    pub identity_uri_prefix: String,
    pub handshake_timeout: Duration,
    pub service: HopService,
}

pub type LiveState = Arc<arc_swap::ArcSwap<ListenerState>>;

/// How one TLS listener behaves (fixed for the life of the socket; a restart changes these).
#[derive(Clone)]
pub struct ListenerSpec {
    /// `hop` label of this listener's metrics.
    pub name: Arc<str>,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_connections: usize,
    pub drain_timeout: Duration,
}

fn http_builder(spec: &ListenerSpec) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(spec.header_read_timeout)
        .max_buf_size(spec.max_header_bytes.max(8192));
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(spec.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256);
    b
}

/// Puts the connection's client identity on each request and boxes its body for the stack.
#[derive(Clone)]
struct WithIdentity {
    state: LiveState,
    identity: Option<PeerIdentity>,
}

impl tower::Service<Request<Incoming>> for WithIdentity {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = tower::util::Oneshot<HopService, Request<Body>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let mut req: Request<Body> = req.map(boxed);
        if let Some(id) = &self.identity {
            req.extensions_mut().insert(id.clone());
        }
        self.state.load().service.clone().oneshot(req)
    }
}

/// Serves HTTP/1.1 or HTTP/2 on one connection that is already past its TLS handshake (or, in tests, in memory)
/// until it closes; `identity` is the client certificate's.
pub async fn serve_connection<I>(
    io: I,
    identity: Option<PeerIdentity>,
    state: LiveState,
    spec: &ListenerSpec,
) -> Result<(), BoxError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    http_builder(spec)
        .serve_connection(
            TokioIo::new(io),
            TowerToHyperService::new(WithIdentity { state, identity }),
        )
        .await
}

/// Resolves once the shutdown flag is set (or its sender is gone).
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Serves `service` on `listener` until `shutdown` turns true, then drains connections for `drain_timeout`.
pub fn spawn_tls_listener(
    listener: TcpListener,
    spec: ListenerSpec,
    state: LiveState,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let builder = Arc::new(http_builder(&spec));
    let slots = Arc::new(Semaphore::new(spec.max_connections));
    tokio::spawn(async move {
        let graceful = GracefulShutdown::new();
        loop {
            let accepted = tokio::select! {
                biased;
                _ = stopped(&mut shutdown) => break,
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(permit) => tokio::select! {
                        biased;
                        _ = stopped(&mut shutdown) => break,
                        a = listener.accept() => a.map(|a| (a, permit)),
                    },
                    Err(_) => break,
                },
            };
            let ((tcp, peer), permit) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(hop = %spec.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let conn = Accepted {
                spec: spec.clone(),
                state: state.clone(),
                metrics: metrics.clone(),
                builder: builder.clone(),
                peer,
            };
            let watcher = graceful.watcher();
            tokio::spawn(async move {
                // The connection's slot is held until it closes.
                let _permit = permit;
                conn.serve(tcp, watcher).await;
            });
        }
        drop(listener);
        if tokio::time::timeout(spec.drain_timeout, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(hop = %spec.name, "drain timeout passed; closing the remaining connections");
        }
    })
}

/// One accepted TCP connection, before its handshake.
struct Accepted {
    spec: ListenerSpec,
    state: LiveState,
    metrics: Arc<Metrics>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    peer: std::net::SocketAddr,
}

impl Accepted {
    /// Handshakes within the deadline (failures logged with their reason and counted), reads the client's identity,
    /// then serves HTTP until the connection closes or the drain ends it.
    async fn serve(
        self,
        tcp: tokio::net::TcpStream,
        watcher: hyper_util::server::graceful::Watcher,
    ) {
        let Accepted {
            spec,
            state,
            metrics,
            builder,
            peer,
        } = self;
        // The TLS settings in force when the connection arrives (a reload swaps them for later ones).
        let current = state.load_full();
        let acceptor = TlsAcceptor::from(current.tls.clone());
        let failed = |reason: HandshakeFailure| {
            metrics
                .tls_handshake_failures
                .with_label_values(&[&spec.name, reason.as_str()])
                .inc();
        };
        let tls = match tokio::time::timeout(current.handshake_timeout, acceptor.accept(tcp)).await
        {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                let reason = HandshakeFailure::classify(&e);
                failed(reason);
                tracing::warn!(hop = %spec.name, peer = %peer, reason = reason.as_str(), error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                failed(HandshakeFailure::Timeout);
                tracing::warn!(hop = %spec.name, peer = %peer, reason = "timeout", "TLS handshake not finished within {:?}", current.handshake_timeout);
                return;
            }
        };
        let identity = match tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|leaf| PeerIdentity::from_certificate(leaf, &current.identity_uri_prefix))
        {
            Some(Ok(id)) => Some(id),
            Some(Err(e)) => {
                tracing::warn!(hop = %spec.name, peer = %peer, error = %e, "client certificate has no usable identity");
                None
            }
            None => None,
        };
        tracing::debug!(hop = %spec.name, peer = %peer, identity = ?identity.as_ref().map(|i| &i.id), "connection open");
        let open = metrics.connections_open.with_label_values(&[&spec.name]);
        open.inc();
        let svc = WithIdentity { state, identity };
        let conn = builder.serve_connection(TokioIo::new(tls), TowerToHyperService::new(svc));
        if let Err(e) = watcher.watch(conn.into_owned()).await {
            tracing::debug!(hop = %spec.name, peer = %peer, error = %e, "connection ended with an error");
        }
        open.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::identity;

    /// A listener state whose service answers with the identity it was given, as a header.
    fn state() -> LiveState {
        let fixture = crate::testing::Fixture::new();
        let cfg = fixture.config(&[]);
        let svc = tower::service_fn(|req: Request<Body>| async move {
            let id = req
                .extensions()
                .get::<PeerIdentity>()
                .map_or("none".to_owned(), |p| p.id.clone());
            let mut resp = Response::new(crate::body::empty());
            resp.headers_mut()
                .insert("seen-identity", id.parse().expect("header value"));
            Ok::<_, Infallible>(resp)
        });
        Arc::new(arc_swap::ArcSwap::from_pointee(ListenerState {
            tls: lgsp_tls::server_config(&cfg.hops[0].tls).expect("tls"),
            identity_uri_prefix: cfg.hops[0].tls.identity_uri_prefix.clone(),
            handshake_timeout: Duration::from_secs(5),
            service: tower::util::BoxCloneSyncService::new(svc),
        }))
    }

    /// Hyper's bodies cannot be made by hand, so the service is driven over an in-memory connection.
    #[tokio::test]
    async fn each_request_carries_its_connections_identity_to_the_current_service() {
        let live = state();
        let with = |identity| WithIdentity {
            state: live.clone(),
            identity,
        };
        for (id, seen) in [
            (Some(identity("000.00.00.H29")), "000.00.00.H29"),
            (None, "none"),
        ] {
            let (client, server) = tokio::io::duplex(4096);
            let svc = with(id);
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(server), TowerToHyperService::new(svc))
                    .await;
            });
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client))
                .await
                .expect("handshake");
            tokio::spawn(conn);
            let resp = sender
                .send_request(
                    Request::get("/x")
                        .header("host", "localhost")
                        .body(http_body_util::Empty::<bytes::Bytes>::new())
                        .expect("request"),
                )
                .await
                .expect("answer");
            assert_eq!(resp.headers()["seen-identity"], seen);
        }
    }
}
