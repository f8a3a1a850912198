//! TLS listeners: accept, handshake within a deadline and a cap on handshakes in progress (failures logged with
//! their reason and counted), read the client's identity from its certificate, hold it to its share of the
//! listener, then serve HTTP/1.1 or HTTP/2 (hyper-util auto) until the connection is quiet too long or drained.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use std::convert::Infallible;

use futures_util::TryFutureExt;
use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use lgsp_config::HttpConfig;
use lgsp_metrics::Metrics;
use lgsp_tls::{ClientAddr, HandshakeFailure, PeerIdentity, ServerTls};
use rustls::pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::connection::{
    Activity, Answer, Holders, RequestBody, Retired, TooManyConnections, Watched,
};
use crate::stack::HopService;
use lgsp_hop::body::{Body, BoxError, boxed};

/// What a listener serves with; swapped whole by a reload. Connections take the TLS and HTTP parts when they are
/// accepted; requests take the service when they arrive, so in-flight requests finish on the state they began with.
pub struct ListenerState {
    pub tls: ServerTls,
    pub identity_uri_prefix: String,
    /// Agencies' pinned certificates (`[[agency]] certificates`), recognised before the SAN URI.
    pub pins: Arc<lgsp_tls::CertificatePins>,
    pub handshake_timeout: Duration,
    pub http: HttpConfig,
    pub service: HopService,
    /// Whether a certificate identity is still someone this listener serves (an agency or a peer); asked of
    /// every open connection when this state replaces another.
    pub knows: KnowsIdentity,
    /// Set when a reload replaces this state.
    pub retired: Retired,
}

pub type KnowsIdentity = Arc<dyn Fn(&PeerIdentity) -> bool + Send + Sync>;

impl ListenerState {
    /// Swaps `next` in and tells the connections served under the old state to look again.
    pub fn replace(live: &LiveState, next: ListenerState) {
        live.swap(Arc::new(next)).retired.retire();
    }

    /// Why a connection with this client chain and identity may no longer be served under this state, if so.
    fn refuses(
        &self,
        chain: &[CertificateDer<'static>],
        identity: Option<&PeerIdentity>,
    ) -> Option<&'static str> {
        if !chain.is_empty() {
            match self.tls.still_accepts(chain) {
                Ok(()) => {}
                Err(HandshakeFailure::Expired) => return Some("certificate_expired"),
                Err(_) => return Some("certificate_refused"),
            }
        }
        // A pin added or removed can change whose a certificate is: the identity is read again.
        if let Some(leaf) = chain.first() {
            let now = PeerIdentity::recognise(leaf, &self.identity_uri_prefix, &self.pins).ok();
            if now.as_ref().map(|i| &i.id) != identity.map(|i| &i.id) {
                return Some("identity_removed");
            }
        }
        identity
            .is_some_and(|id| !(self.knows)(id))
            .then_some("identity_removed")
    }
}

pub type LiveState = Arc<arc_swap::ArcSwap<ListenerState>>;

/// How one TLS listener behaves for the life of its socket (a restart changes these; the rest of `[hop.http]`
/// reloads with [`ListenerState`]).
#[derive(Clone)]
pub struct ListenerSpec {
    /// `hop` label of this listener's metrics.
    pub name: Arc<str>,
    pub max_connections: usize,
    pub max_handshakes: usize,
    pub drain_timeout: Duration,
}

impl ListenerSpec {
    pub fn new(name: &str, http: &HttpConfig, drain_timeout: Duration) -> Self {
        ListenerSpec {
            name: Arc::from(name),
            max_connections: http.max_connections,
            max_handshakes: http.max_handshakes,
            drain_timeout,
        }
    }
}

/// `keep_alive` off: the connection ends after its first answer (HTTP/1.1; HTTP/2 is closed by the driver).
fn http_builder(http: &HttpConfig, keep_alive: bool) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .keep_alive(keep_alive)
        .header_read_timeout(http.header_read_timeout)
        .max_buf_size(http.max_header_bytes.max(8192));
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(http.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256);
    b
}

/// Puts the connection's client identity on each request, bounds its body's time, and counts it in flight until
/// its answer is sent. On a connection its identity may not hold, answers every request with the refusal.
#[derive(Clone)]
struct WithIdentity {
    state: LiveState,
    identity: Option<PeerIdentity>,
    activity: Arc<Activity>,
    body_read_timeout: Duration,
    refusal: Option<Arc<TooManyConnections>>,
    hop: Arc<str>,
    /// The connection's TCP peer (`None` on in-memory connections).
    remote: Option<std::net::SocketAddr>,
}

type Answering = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl tower::Service<Request<Incoming>> for WithIdentity {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Answering;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let in_flight = self.activity.begin();
        // HTTP/1 cannot refuse a request without reading the rest of its body; HTTP/2 resets just the stream.
        let linger = req.version() < Version::HTTP_2;
        let timeout = self.body_read_timeout;
        let mut req: Request<Body> = req.map(|b| boxed(RequestBody::new(b, timeout, linger)));
        if let Some(refusal) = &self.refusal {
            let answer = lgsp_problem::response(&**refusal, &self.hop, None)
                .map(|b| boxed(Answer::new(lgsp_hop::body::full(b), in_flight)));
            drop(req);
            return Box::pin(std::future::ready(Ok(answer)));
        }
        if let Some(id) = &self.identity {
            req.extensions_mut().insert(id.clone());
        }
        if let Some(addr) = self.remote {
            req.extensions_mut().insert(ClientAddr(addr));
        }
        let service = self.state.load().service.clone();
        // A combinator, not an async block: the boxed service's future is then known to be Send.
        Box::pin(
            service
                .oneshot(req)
                .map_ok(move |resp| resp.map(|b| boxed(Answer::new(b, in_flight)))),
        )
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
    let current = state.load_full();
    let svc = WithIdentity {
        state: state.clone(),
        identity: identity.clone(),
        activity: Arc::new(Activity::default()),
        body_read_timeout: current.http.body_read_timeout,
        refusal: None,
        hop: spec.name.clone(),
        remote: None,
    };
    let standing = Standing {
        live: state,
        chain: Vec::new(),
        identity,
    };
    let (_keep, mut never) = watch::channel(false);
    drive(io, svc, standing, current, &mut never, |_| {}).await
}

/// What can end a served connection besides its own quiet: a reload whose config no longer accepts its
/// certificate (revoked, CA no longer trusted) or its identity (agency or peer removed), and its certificate's
/// expiry.
struct Standing {
    live: LiveState,
    chain: Vec<CertificateDer<'static>>,
    identity: Option<PeerIdentity>,
}

impl Standing {
    /// Resolves with the reason once the connection may no longer be served; `current` is the state it began on.
    async fn lost(&self, mut current: Arc<ListenerState>) -> &'static str {
        let expiry = async {
            match &self.identity {
                Some(id) => {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    let left = u64::try_from(id.not_after).unwrap_or(0).saturating_sub(now);
                    tokio::time::sleep(Duration::from_secs(left)).await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::pin!(expiry);
        loop {
            tokio::select! {
                () = current.retired.wait() => {
                    current = self.live.load_full();
                    if let Some(reason) = current.refuses(&self.chain, self.identity.as_ref()) {
                        return reason;
                    }
                }
                () = &mut expiry => return "certificate_expired",
            }
        }
    }
}

/// Runs one connection until it closes. When it has been quiet too long (no first byte, or idle), or the
/// listener drains, it is closed gracefully: HTTP/1.1 once no request is in flight, HTTP/2 with GOAWAY. A refused
/// connection is closed after its first answer.
async fn drive<I>(
    io: I,
    svc: WithIdentity,
    standing: Standing,
    current: Arc<ListenerState>,
    shutdown: &mut watch::Receiver<bool>,
    on_close: impl FnOnce(&'static str),
) -> Result<(), BoxError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let refused = svc.refusal.is_some();
    let http = &current.http;
    let activity = svc.activity.clone();
    let builder = http_builder(http, !refused);
    let conn = builder.serve_connection(
        TokioIo::new(Watched::new(io, activity.clone())),
        TowerToHyperService::new(svc),
    );
    tokio::pin!(conn);
    let quiet = activity.quiet(http.first_byte_timeout, http.idle_timeout);
    tokio::pin!(quiet);
    let answered = async {
        if refused {
            activity.answered().await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::pin!(answered);
    let lost = standing.lost(current.clone());
    tokio::pin!(lost);
    let mut on_close = Some(on_close);
    let mut closing = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => return r,
            q = &mut quiet, if !closing => {
                if let Some(f) = on_close.take() {
                    f(q.reason());
                }
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            reason = &mut lost, if !closing => {
                if let Some(f) = on_close.take() {
                    f(reason);
                }
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            () = &mut answered, if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            () = lgsp_hop::stopped(shutdown), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}

/// Reasons of `lgsp_connections_closed_total`, exported as 0 from the start.
const CLOSED_REASONS: [&str; 9] = [
    "proxy_protocol",
    "balancer_check",
    "first_byte_timeout",
    "idle_timeout",
    "too_many_handshakes",
    "too_many_agency_connections",
    "certificate_refused",
    "certificate_expired",
    "identity_removed",
];

/// Serves `service` on `listener` until `shutdown` turns true, then drains connections for `drain_timeout`.
pub fn spawn_tls_listener(
    listener: TcpListener,
    spec: ListenerSpec,
    state: LiveState,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let slots = Arc::new(Semaphore::new(spec.max_connections));
    let handshakes = Arc::new(Semaphore::new(spec.max_handshakes));
    let holders = Arc::new(Holders::default());
    let handshaking = Arc::new(Holders::default());
    for reason in CLOSED_REASONS {
        metrics
            .connections_closed
            .with_label_values(&[&spec.name, reason]);
    }
    for reason in HandshakeFailure::ALL {
        metrics
            .tls_handshake_failures
            .with_label_values(&[&spec.name, reason.as_str()]);
    }
    tokio::spawn(async move {
        // Every connection task holds a sender; the channel closes when the last one ends.
        let (open_tx, mut open_rx) = mpsc::channel::<()>(1);
        loop {
            let accepted = tokio::select! {
                biased;
                _ = lgsp_hop::stopped(&mut shutdown) => break,
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(permit) => tokio::select! {
                        biased;
                        _ = lgsp_hop::stopped(&mut shutdown) => break,
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
            let closed = |reason: &str| {
                metrics
                    .connections_closed
                    .with_label_values(&[&spec.name, reason])
                    .inc();
            };
            // A handshake slot now or never, within the listener's and within the source address's share:
            // connections that stall before TLS cannot queue up, nor can one host's take every slot. A load
            // balancer's connections are counted by the client its PROXY header names, once read.
            let (per_address, balancer) = {
                let http = &state.load().http;
                (http.max_handshakes_per_address, http.proxied(peer.ip()))
            };
            let address = if balancer {
                Ok(None)
            } else {
                handshaking
                    .admit(&peer.ip().to_string(), per_address)
                    .map(Some)
                    .ok_or(())
            };
            let handshake = match (handshakes.clone().try_acquire_owned(), address) {
                (Ok(global), Ok(address)) => Handshake {
                    _global: global,
                    address,
                },
                (global, _) => {
                    closed("too_many_handshakes");
                    let (cap, what) = if global.is_err() {
                        (spec.max_handshakes, "max_handshakes")
                    } else {
                        (per_address, "max_handshakes_per_address")
                    };
                    tracing::warn!(hop = %spec.name, peer = %peer, "connection closed: {cap} handshakes already in progress ({what})");
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let conn = Accepted {
                spec: spec.clone(),
                state: state.clone(),
                metrics: metrics.clone(),
                holders: holders.clone(),
                handshaking: handshaking.clone(),
                shutdown: shutdown.clone(),
                peer,
            };
            let open = open_tx.clone();
            tokio::spawn(async move {
                // The connection's slot is held until it closes.
                let _permit = permit;
                let _open = open;
                conn.serve(tcp, handshake).await;
            });
        }
        drop(listener);
        drop(open_tx);
        if tokio::time::timeout(spec.drain_timeout, open_rx.recv())
            .await
            .is_err()
        {
            tracing::warn!(hop = %spec.name, "drain timeout passed; closing the remaining connections");
        }
    })
}

/// The slots a connection holds until its TLS handshake ends: one of the listener's, and one of its source
/// address's (taken after the PROXY header for a load balancer's connection).
struct Handshake {
    _global: tokio::sync::OwnedSemaphorePermit,
    address: Option<crate::connection::Held>,
}

/// One accepted TCP connection, before its handshake.
struct Accepted {
    spec: ListenerSpec,
    state: LiveState,
    metrics: Arc<Metrics>,
    holders: Arc<Holders>,
    handshaking: Arc<Holders>,
    shutdown: watch::Receiver<bool>,
    peer: std::net::SocketAddr,
}

impl Accepted {
    /// Handshakes within the deadline (failures logged with their reason and counted), reads the client's identity,
    /// holds it to its share of the listener, then serves HTTP until the connection closes, is quiet too long, or
    /// the drain ends it.
    async fn serve(self, tcp: tokio::net::TcpStream, mut handshake: Handshake) {
        let Accepted {
            spec,
            state,
            metrics,
            holders,
            handshaking,
            mut shutdown,
            peer,
        } = self;
        // The TLS and HTTP settings in force when the connection arrives (a reload swaps them for later ones).
        let current = state.load_full();
        // A load balancer's connection opens with the PROXY protocol header naming the client (within the
        // handshake's deadline); nobody else's is read for one.
        // One deadline for everything before HTTP: the PROXY header, a balancer's check, the TLS handshake.
        let deadline = tokio::time::Instant::now() + current.handshake_timeout;
        let closed = |reason: &str| {
            metrics
                .connections_closed
                .with_label_values(&[&spec.name, reason])
                .inc();
        };
        let mut tcp = tcp;
        let peer = if current.http.proxied(peer.ip()) {
            let read =
                tokio::time::timeout_at(deadline, crate::proxy_protocol::read_header(&mut tcp))
                    .await;
            match read {
                Ok(Ok(Some(client))) => client,
                // The balancer's own connection (LOCAL): its health check, which ends before any TLS, is no
                // failed handshake; one that goes on to TLS is served as the balancer's.
                Ok(Ok(None)) => {
                    let mut first = [0u8; 1];
                    match tokio::time::timeout_at(deadline, tcp.peek(&mut first)).await {
                        Ok(Ok(n)) if n > 0 => peer,
                        _ => {
                            closed("balancer_check");
                            tracing::debug!(hop = %spec.name, balancer = %peer, "load balancer's check connection ended");
                            return;
                        }
                    }
                }
                Ok(Err(e)) => {
                    closed("proxy_protocol");
                    tracing::warn!(hop = %spec.name, balancer = %peer, error = %e, "connection closed: its PROXY protocol header is refused");
                    return;
                }
                Err(_) => {
                    closed("proxy_protocol");
                    tracing::warn!(hop = %spec.name, balancer = %peer, "connection closed: no PROXY protocol header within {:?}", current.handshake_timeout);
                    return;
                }
            }
        } else {
            peer
        };
        if handshake.address.is_none() {
            let per_address = current.http.max_handshakes_per_address;
            match handshaking.admit(&peer.ip().to_string(), per_address) {
                Some(held) => handshake.address = Some(held),
                None => {
                    closed("too_many_handshakes");
                    tracing::warn!(hop = %spec.name, peer = %peer, "connection closed: {per_address} handshakes already in progress (max_handshakes_per_address)");
                    return;
                }
            }
        }
        let acceptor = TlsAcceptor::from(current.tls.config.clone());
        let failed = |reason: HandshakeFailure| {
            metrics
                .tls_handshake_failures
                .with_label_values(&[&spec.name, reason.as_str()])
                .inc();
        };
        let tls = match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
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
        drop(handshake);
        let chain: Vec<CertificateDer<'static>> = tls
            .get_ref()
            .1
            .peer_certificates()
            .map(<[CertificateDer<'_>]>::to_vec)
            .unwrap_or_default();
        let identity = match chain
            .first()
            .map(|leaf| PeerIdentity::recognise(leaf, &current.identity_uri_prefix, &current.pins))
        {
            Some(Ok(id)) => Some(id),
            Some(Err(e)) => {
                tracing::warn!(hop = %spec.name, peer = %peer, error = %e, "client certificate has no usable identity");
                None
            }
            None => None,
        };
        let http = &current.http;
        // Counted by the certificate's identity; certificates without one share a single count.
        let holder = identity.as_ref().map_or("", |i| i.id.as_str()).to_owned();
        let held = holders.admit(&holder, http.max_connections_per_agency);
        let refusal = if held.is_none() {
            closed("too_many_agency_connections");
            tracing::warn!(hop = %spec.name, peer = %peer, identity = %holder, cap = http.max_connections_per_agency, "connection refused: its identity holds max_connections_per_agency");
            Some(Arc::new(TooManyConnections {
                identity: holder.clone(),
                cap: http.max_connections_per_agency,
            }))
        } else {
            None
        };
        tracing::debug!(hop = %spec.name, peer = %peer, identity = ?identity.as_ref().map(|i| &i.id), "connection open");
        let open = metrics.connections_open.with_label_values(&[&spec.name]);
        open.inc();
        let svc = WithIdentity {
            state: state.clone(),
            identity: identity.clone(),
            activity: Arc::new(Activity::default()),
            body_read_timeout: http.body_read_timeout,
            refusal,
            hop: spec.name.clone(),
            remote: Some(peer),
        };
        let standing = Standing {
            live: state,
            chain,
            identity,
        };
        let closing = |reason: &'static str| {
            metrics
                .connections_closed
                .with_label_values(&[&spec.name, reason])
                .inc();
            tracing::info!(hop = %spec.name, peer = %peer, identity = %holder, reason, "closing the connection");
        };
        if let Err(e) = drive(tls, svc, standing, current.clone(), &mut shutdown, closing).await {
            tracing::debug!(hop = %spec.name, peer = %peer, error = %e, "connection ended with an error");
        }
        drop(held);
        open.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;
    use lgsp_hop::testing::identity;

    /// A listener state whose service answers with the identity it was given, as a header.
    fn state() -> LiveState {
        let fixture = lgsp_hop::testing::Fixture::new();
        let cfg = fixture.config(&[]);
        let svc = tower::service_fn(|req: Request<Body>| async move {
            let id = req
                .extensions()
                .get::<PeerIdentity>()
                .map_or("none".to_owned(), |p| p.id.clone());
            let mut resp = Response::new(lgsp_hop::body::empty());
            resp.headers_mut()
                .insert("seen-identity", id.parse().expect("header value"));
            Ok::<_, Infallible>(resp)
        });
        Arc::new(arc_swap::ArcSwap::from_pointee(ListenerState {
            tls: lgsp_tls::server_tls(&cfg.hops[0].tls).expect("tls"),
            identity_uri_prefix: cfg.hops[0].tls.identity_uri_prefix.clone(),
            pins: Default::default(),
            handshake_timeout: Duration::from_secs(5),
            http: HttpConfig::default(),
            service: tower::util::BoxCloneSyncService::new(svc),
            knows: Arc::new(|_| true),
            retired: Retired::default(),
        }))
    }

    /// Hyper's bodies cannot be made by hand, so the service is driven over an in-memory connection.
    #[tokio::test]
    async fn each_request_carries_its_connections_identity_to_the_current_service() {
        let live = state();
        let spec = ListenerSpec::new("lgsp", &HttpConfig::default(), Duration::from_secs(1));
        for (id, seen) in [
            (Some(identity("000.00.00.H29")), "000.00.00.H29"),
            (None, "none"),
        ] {
            let (client, server) = tokio::io::duplex(4096);
            let (live, spec) = (live.clone(), spec.clone());
            tokio::spawn(async move { serve_connection(server, id, live, &spec).await });
            let (mut sender, _conn) = h1(client).await;
            let resp = sender.send_request(get()).await.expect("answer");
            assert_eq!(resp.headers()["seen-identity"], seen);
        }
    }

    /// An HTTP/1.1 client on `io`, its connection driven in the background.
    async fn h1<I, B>(
        io: I,
    ) -> (
        hyper::client::conn::http1::SendRequest<B>,
        tokio::task::JoinHandle<Result<(), hyper::Error>>,
    )
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .expect("handshake");
        (sender, tokio::spawn(conn))
    }

    /// An HTTP/2 client on `io`, its connection driven in the background.
    async fn h2<I>(
        io: I,
    ) -> (
        hyper::client::conn::http2::SendRequest<http_body_util::Full<bytes::Bytes>>,
        tokio::task::JoinHandle<Result<(), hyper::Error>>,
    )
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                .await
                .expect("handshake");
        (sender, tokio::spawn(conn))
    }

    fn get() -> Request<http_body_util::Full<bytes::Bytes>> {
        Request::get("/x")
            .header("host", "localhost")
            .body(http_body_util::Full::default())
            .expect("request")
    }

    /// Short bounds, so the tests see them pass.
    fn short() -> HttpConfig {
        HttpConfig {
            first_byte_timeout: Duration::from_millis(200),
            idle_timeout: Duration::from_millis(200),
            body_read_timeout: Duration::from_millis(200),
            ..HttpConfig::default()
        }
    }

    /// A listener state over `service` with `http`.
    fn serving<S>(http: HttpConfig, service: S) -> LiveState
    where
        S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        Arc::new(arc_swap::ArcSwap::from_pointee(serving_state(
            http,
            service,
            Arc::new(|_| true),
        )))
    }

    /// A listener state over `service` with `http`, serving the identities `knows` knows.
    fn serving_state<S>(http: HttpConfig, service: S, knows: KnowsIdentity) -> ListenerState
    where
        S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        let base = state();
        let tls = base.load().tls.clone();
        ListenerState {
            tls,
            identity_uri_prefix: String::new(),
            pins: Default::default(),
            handshake_timeout: Duration::from_secs(5),
            http,
            service: tower::util::BoxCloneSyncService::new(service),
            knows,
            retired: Retired::default(),
        }
    }

    /// As [`connection`], over real TCP (a socket closed with unread data resets, which memory pipes never do).
    async fn tcp_connection(live: LiveState) -> tokio::net::TcpStream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let spec = ListenerSpec::new("lgsp", &HttpConfig::default(), Duration::from_secs(1));
        tokio::spawn(async move {
            if let Ok((tcp, _)) = listener.accept().await {
                let _ = serve_connection(tcp, Some(identity("000.00.00.H29")), live, &spec).await;
            }
        });
        tokio::net::TcpStream::connect(addr).await.expect("connect")
    }

    /// Drives one in-memory connection; the task ends when the server side closes it. `refusal` as the listener
    /// sets it for an identity at its cap.
    fn connection(
        live: LiveState,
        refusal: Option<TooManyConnections>,
        buffer: usize,
    ) -> (tokio::io::DuplexStream, tokio::task::JoinHandle<()>) {
        connection_as(live, refusal, buffer, identity("000.00.00.H29"))
    }

    /// As [`connection`], for the certificate identity `id`.
    fn connection_as(
        live: LiveState,
        refusal: Option<TooManyConnections>,
        buffer: usize,
        id: PeerIdentity,
    ) -> (tokio::io::DuplexStream, tokio::task::JoinHandle<()>) {
        let (client, server) = tokio::io::duplex(buffer);
        let current = live.load_full();
        let svc = WithIdentity {
            state: live.clone(),
            identity: Some(id.clone()),
            activity: Arc::new(Activity::default()),
            body_read_timeout: current.http.body_read_timeout,
            refusal: refusal.map(Arc::new),
            hop: Arc::from("lgsp"),
            remote: None,
        };
        let standing = Standing {
            live,
            chain: Vec::new(),
            identity: Some(id),
        };
        let task = tokio::spawn(async move {
            let (_keep, mut never) = watch::channel(false);
            let _ = drive(server, svc, standing, current, &mut never, |_| {}).await;
        });
        (client, task)
    }

    /// Waits (at most a generous while, so a regression fails rather than hangs) for the server to close.
    async fn closes(task: tokio::task::JoinHandle<()>) {
        tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .expect("the gateway closed the connection")
            .expect("connection task");
    }

    fn ok_service() -> impl tower::Service<
        Request<Body>,
        Response = Response<Body>,
        Error = Infallible,
        Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send,
    > + Clone
    + Send
    + Sync
    + 'static {
        tower::service_fn(|_req: Request<Body>| async {
            Ok::<_, Infallible>(Response::new(lgsp_hop::body::empty()))
        })
    }

    #[tokio::test]
    async fn a_connection_that_sends_nothing_is_closed() {
        let (_client, task) = connection(serving(short(), ok_service()), None, 4096);
        closes(task).await;
    }

    #[tokio::test]
    async fn idle_http1_and_http2_connections_are_closed() {
        // HTTP/1.1: one request, then nothing.
        let (client, task) = connection(serving(short(), ok_service()), None, 4096);
        let (mut sender, client_conn) = h1(client).await;
        let resp = sender.send_request(get()).await.expect("answer");
        assert_eq!(resp.status(), 200);
        closes(task).await;
        // The client sees the close.
        let _ = tokio::time::timeout(Duration::from_secs(20), client_conn)
            .await
            .expect("client saw the close");

        // HTTP/2: one stream, then none: GOAWAY, then the connection ends.
        let (client, task) = connection(serving(short(), ok_service()), None, 4096);
        let (mut sender, client_conn) = h2(client).await;
        let resp = sender.send_request(get()).await.expect("answer");
        assert_eq!(resp.status(), 200);
        closes(task).await;
        let _ = tokio::time::timeout(Duration::from_secs(20), client_conn)
            .await
            .expect("client saw the GOAWAY");
    }

    #[tokio::test]
    async fn a_body_slower_than_body_read_timeout_is_answered_408() {
        let reading = tower::service_fn(|req: Request<Body>| async move {
            Ok::<_, Infallible>(
                match lgsp_hop::body::read_body(req.into_body(), 1 << 20).await {
                    Ok(_) => Response::new(lgsp_hop::body::empty()),
                    Err(e) => lgsp_hop::edge::answer(&e, "lgsp", "id"),
                },
            )
        });
        let (client, _task) = connection(serving(short(), reading), None, 4096);
        let (mut sender, _conn) = h1(client).await;
        // One chunk, then the client stalls with the rest promised.
        let (tx, rx) =
            tokio::sync::mpsc::channel::<Result<http_body::Frame<bytes::Bytes>, Infallible>>(1);
        tx.send(Ok(http_body::Frame::data(bytes::Bytes::from_static(
            b"<HoSo",
        ))))
        .await
        .expect("first chunk");
        let body = http_body_util::StreamBody::new(tokio_stream_from(rx));
        let req = Request::post("/x")
            .header("host", "localhost")
            .header("content-length", "1000")
            .body(body)
            .expect("request");
        let resp = sender.send_request(req).await.expect("answer");
        assert_eq!(resp.status(), StatusCode::REQUEST_TIMEOUT);
        let doc: serde_json::Value = serde_json::from_slice(
            &http_body_util::BodyExt::collect(resp.into_body())
                .await
                .expect("body")
                .to_bytes(),
        )
        .expect("problem+json");
        assert_eq!(doc["code"], "packet.body_timeout");
        drop(tx);
    }

    fn tokio_stream_from<T: Send + 'static>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> + Send {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }

    #[tokio::test]
    async fn a_request_refused_before_its_body_is_read_still_gets_its_answer() {
        // Refused at once, body unread; the client is still writing a body much larger than the pipe.
        let refusing = tower::service_fn(|_req: Request<Body>| async {
            let mut r = Response::new(lgsp_hop::body::full("refused"));
            *r.status_mut() = StatusCode::UNSUPPORTED_MEDIA_TYPE;
            Ok::<_, Infallible>(r)
        });
        let client = tcp_connection(serving(HttpConfig::default(), refusing)).await;
        let (mut sender, _conn) = h1(client).await;
        let req = Request::post("/x")
            .header("host", "localhost")
            .body(http_body_util::Full::new(bytes::Bytes::from(vec![
                b'x';
                8 << 20
            ])))
            .expect("request");
        let resp = sender
            .send_request(req)
            .await
            .expect("the answer, not a broken pipe");
        assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }

    #[tokio::test]
    async fn a_connection_over_its_identitys_cap_is_answered_429_then_closed() {
        let refusal = TooManyConnections {
            identity: "000.00.00.H29".into(),
            cap: 1,
        };
        let (client, task) = connection(
            serving(HttpConfig::default(), ok_service()),
            Some(refusal),
            4096,
        );
        let (mut sender, _conn) = h2(client).await;
        let resp = sender.send_request(get()).await.expect("answer");
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()["retry-after"], "1");
        closes(task).await;
    }

    #[tokio::test]
    async fn a_reload_that_drops_the_identity_closes_its_open_connection() {
        let live = serving(HttpConfig::default(), ok_service());
        let (client, task) = connection(live.clone(), None, 4096);
        let (mut sender, _conn) = h2(client).await;
        assert_eq!(
            sender.send_request(get()).await.expect("answer").status(),
            200
        );
        // A reload that still knows H29 leaves the connection be.
        ListenerState::replace(
            &live,
            serving_state(HttpConfig::default(), ok_service(), Arc::new(|_| true)),
        );
        assert_eq!(
            sender.send_request(get()).await.expect("answer").status(),
            200
        );
        // One that no longer does closes it (HTTP/2: GOAWAY, then the end).
        ListenerState::replace(
            &live,
            serving_state(
                HttpConfig::default(),
                ok_service(),
                Arc::new(|id: &PeerIdentity| id.id != "000.00.00.H29"),
            ),
        );
        closes(task).await;
    }

    #[tokio::test]
    async fn a_connection_ends_when_its_certificate_expires() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let expiring = PeerIdentity {
            not_after: i64::try_from(now + 1).expect("seconds"),
            spki: Default::default(),
            ..identity("000.00.00.H29")
        };
        let (client, task) = connection_as(
            serving(HttpConfig::default(), ok_service()),
            None,
            4096,
            expiring,
        );
        let (mut sender, _conn) = h2(client).await;
        assert_eq!(
            sender.send_request(get()).await.expect("answer").status(),
            200
        );
        closes(task).await;
    }
}
