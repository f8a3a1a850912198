//! `JournalLayer`: a packet moves on only once it is journalled. On packet routes the accepted packet is
//! appended (durably, its body kept until its delivery ends) before it is forwarded, and its outcome after (not
//! waited for: the journal's writer keeps it until it is written, and a crash in between has the next start take
//! the delivery up again under the same message id); an `Idempotency-Key` already seen — per agency, mode and
//! route — gets the first answer again, byte for byte, instead of a second delivery; a queued route answers 202
//! once the packet is in the outbox. When the journal cannot be written, packets are refused (503), never forwarded
//! unlogged; an agency holding its quota undelivered gets 429, and a disk below `min_free_disk` 503.

use std::sync::Arc;
use std::task::{Context, Poll};

use std::time::Duration;

use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use lgsp_auth::{Caller, HopSigned};
use lgsp_config::{DeliveryMode, RouteConfig};
use lgsp_journal::{
    Accepted, Admission, Delivery, Journal, JournalError, Message, Outcome, Status,
};
use lgsp_problem::{BoxProblem, Internal, Problem};
use prometheus::Histogram;
use sha2::{Digest, Sha256};
use tower::{Layer, Service};

use crate::coverage;
use crate::judge::{self, judge};
use crate::messages;
use crate::outbox::Deliveries;
use lgsp_hop::HopContext;
use lgsp_hop::body::{Body, full, read_body};
use lgsp_hop::headers::{self, HopPath, KnownAs, MessageId, TraceContext};
use lgsp_hop::packet::PacketError;
use lgsp_hop::route::Route;
use lgsp_hop::step::{Next, Step, unnamed};
use lgsp_upstream::ForwardError;

/// What the validation layer learnt of a good packet, for this layer (a request extension it sets).
#[derive(Debug, Clone, Default)]
pub struct PacketFacts {
    /// A profile's SoCCCD.
    pub subject: Option<String>,
    /// A verified approval.
    pub approval: Option<Arc<lgsp_sign::Approval>>,
    /// Check the approval's profiles against those journalled before this time (Unix µs): the close of its
    /// window, or now if earlier. `None`: not checked.
    pub coverage_until_us: Option<i64>,
}

/// The header agencies name a packet's idempotency key in (IETF httpapi `Idempotency-Key`).
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Set on an answer that repeats the first outcome of an idempotency key.
pub const REPLAYED: &str = "x-lgsp-replayed";

/// Why a packet was not journalled, or not delivered again.
#[derive(Debug, thiserror::Error)]
pub enum JournalProblem {
    #[error("the journal cannot be written: {0}")]
    Unavailable(String),
    #[error("Idempotency-Key {0:?} is not 1–128 printable characters")]
    BadKey(String),
    #[error("Idempotency-Key {key:?} was first used for message {message_id} with another body")]
    KeyReused { key: String, message_id: String },
    #[error("Idempotency-Key {key:?} was first used for message {message_id} on route {route}")]
    KeyOnOtherRoute {
        key: String,
        message_id: String,
        route: String,
    },
    #[error("{0}")]
    AgencyQuota(JournalError),
    #[error("{0}")]
    DiskFull(JournalError),
    #[error("message {message_id} of Idempotency-Key {key:?} is still being delivered")]
    InProgress { key: String, message_id: String },
    #[error("message id {message_id} is already another agency's at this hop")]
    MessageIdTaken { message_id: String },
}

impl Problem for JournalProblem {
    fn status(&self) -> StatusCode {
        match self {
            JournalProblem::Unavailable(_) | JournalProblem::DiskFull(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            JournalProblem::AgencyQuota(_) => StatusCode::TOO_MANY_REQUESTS,
            JournalProblem::BadKey(_) => StatusCode::BAD_REQUEST,
            JournalProblem::KeyReused { .. } | JournalProblem::KeyOnOtherRoute { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            JournalProblem::InProgress { .. } | JournalProblem::MessageIdTaken { .. } => {
                StatusCode::CONFLICT
            }
        }
    }

    fn code(&self) -> &'static str {
        match self {
            JournalProblem::Unavailable(_) => "journal.unavailable",
            JournalProblem::DiskFull(_) => "journal.disk_full",
            JournalProblem::AgencyQuota(_) => "journal.agency_quota",
            JournalProblem::BadKey(_) => "idempotency.bad_key",
            JournalProblem::KeyReused { .. } | JournalProblem::KeyOnOtherRoute { .. } => {
                "idempotency.key_reused"
            }
            JournalProblem::InProgress { .. } => "idempotency.in_progress",
            JournalProblem::MessageIdTaken { .. } => "idempotency.message_id_taken",
        }
    }

    fn class(&self) -> lgsp_problem::Class {
        match self {
            JournalProblem::Unavailable(_) | JournalProblem::DiskFull(_) => {
                lgsp_problem::Class::Gateway
            }
            _ => lgsp_problem::Class::Client,
        }
    }

    fn detail(&self) -> String {
        match self {
            JournalProblem::Unavailable(_) => "The gateway cannot record packets right now, and forwards none it has not recorded; resend later with the same Idempotency-Key (nothing was delivered).".into(),
            JournalProblem::BadKey(_) => "Send Idempotency-Key as 1 to 128 printable ASCII characters (a UUID is a good key), or leave it out.".into(),
            JournalProblem::KeyReused { message_id, .. } => format!(
                "This Idempotency-Key was already used for message {message_id}, with another body; use a new key for a new packet."
            ),
            JournalProblem::KeyOnOtherRoute { message_id, route, .. } => format!(
                "This Idempotency-Key was already used for message {message_id} on route {route}; a key names one packet on one route (per agency and mode): use a new key for this one."
            ),
            JournalProblem::AgencyQuota(JournalError::OverQuota { held, quota, .. }) => format!(
                "Your agency has {} packets ({} bytes) accepted and not yet delivered at this hop, its quota is {} packets ({} bytes): the upstream is not taking them fast enough. Resend this one later with the same Idempotency-Key; what was accepted is delivered first.",
                held.packets, held.bytes, quota.packets, quota.bytes
            ),
            JournalProblem::AgencyQuota(_) => "Your agency holds its quota of undelivered packets at this hop; resend later with the same Idempotency-Key.".into(),
            JournalProblem::DiskFull(_) => "The gateway's disk is nearly full, so it records no new packet for now (what it accepted is still delivered); resend later with the same Idempotency-Key, and tell the LGSP operator.".into(),
            JournalProblem::InProgress { message_id, .. } => format!(
                "Message {message_id}, sent with this Idempotency-Key, is still being delivered; ask again after Retry-After seconds, or read GET …/messages/{message_id}."
            ),
            JournalProblem::MessageIdTaken { message_id } => format!(
                "X-LGSP-Message-Id {message_id} already names another agency's message at this hop; the relaying hop must give each packet a message id of its own."
            ),
        }
    }

    fn headers(&self) -> Vec<(http::HeaderName, HeaderValue)> {
        match self {
            JournalProblem::Unavailable(_) => {
                vec![(header::RETRY_AFTER, HeaderValue::from_static("5"))]
            }
            JournalProblem::AgencyQuota(_) | JournalProblem::DiskFull(_) => {
                vec![(header::RETRY_AFTER, HeaderValue::from_static("30"))]
            }
            JournalProblem::InProgress { .. } => {
                vec![(header::RETRY_AFTER, HeaderValue::from_static("2"))]
            }
            _ => Vec::new(),
        }
    }
}

/// The request's `Idempotency-Key`, if any: 1–128 printable ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, JournalProblem> {
    let Some(v) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let text = v.to_str().unwrap_or_default();
    let ok = (1..=128).contains(&text.len()) && text.bytes().all(|b| (0x20..0x7f).contains(&b));
    if !ok || text.trim().is_empty() {
        let shown: String = String::from_utf8_lossy(v.as_bytes())
            .chars()
            .take(64)
            .collect();
        return Err(JournalProblem::BadKey(shown));
    }
    Ok(Some(text.to_owned()))
}

#[derive(Clone)]
pub struct JournalLayer {
    journal: Option<Journal>,
    hop: Arc<HopContext>,
    /// The prefix of this hop's messages route, where a 202 says to ask how a queued packet went.
    status_prefix: Option<Arc<str>>,
    deliveries: Arc<Deliveries>,
    append: Histogram,
    /// How long a queued packet handed to this process's delivery workers is theirs (`[delivery] lease`).
    lease: Duration,
}

impl JournalLayer {
    /// `journal: None` journals nothing (configuration checks and layer tests, never a serving gateway): packets
    /// pass, and messages routes answer 503.
    pub fn new(
        journal: Option<Journal>,
        hop: Arc<HopContext>,
        routes: &[RouteConfig],
        lease: Duration,
    ) -> Self {
        JournalLayer {
            journal,
            lease,
            status_prefix: routes
                .iter()
                .find(|r| r.messages)
                .map(|r| Arc::from(r.prefix.as_str())),
            deliveries: Arc::new(Deliveries::new(&hop, routes)),
            append: hop.metrics.journal_append.with_label_values(&[&hop.name]),
            hop,
        }
    }
}

impl<S> Layer<S> for JournalLayer {
    type Service = Journalled<S>;

    fn layer(&self, inner: S) -> Journalled<S> {
        Journalled {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Journalled<S> {
    inner: S,
    layer: JournalLayer,
}

impl<S: Next> Service<Request<Body>> for Journalled<S> {
    type Response = Response<Body>;
    type Error = BoxProblem;
    type Future = Step<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxProblem>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let Some(route) = req.extensions().get::<Arc<Route>>().cloned() else {
            return Step::refuse(Internal("journal reached without a route".into()));
        };
        if route.config.messages {
            let Some(journal) = self.layer.journal.clone() else {
                return Step::refuse(JournalProblem::Unavailable("no journal".into()));
            };
            let hop = self.layer.hop.clone();
            return Step::wait(async move { messages::answer(journal, &hop, &route, req).await });
        }
        // Only packets are journalled: look-ups and dry runs pass.
        let (Some(journal), Some(message_type)) = (
            self.layer.journal.clone(),
            route.config.message_type.clone(),
        ) else {
            return Step::inner(self.inner.call(req));
        };
        let key = match idempotency_key(req.headers()) {
            Ok(k) => k,
            Err(e) => return Step::refuse(e),
        };
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let packet = Packet {
            layer: self.layer.clone(),
            journal,
            route,
            message_type,
            key,
        };
        Step::wait(packet.journalled(inner, req))
    }
}

/// One packet on its way through the journal.
struct Packet {
    layer: JournalLayer,
    journal: Journal,
    route: Arc<Route>,
    message_type: String,
    key: Option<String>,
}

impl Packet {
    async fn journalled<S: Next>(
        self,
        mut inner: S,
        req: Request<Body>,
    ) -> Result<Response<Body>, BoxProblem> {
        let Packet {
            layer,
            journal,
            route,
            message_type,
            key,
        } = self;
        let hop = &layer.hop;
        let (mut parts, body) = req.into_parts();
        let missing = |what: &str| Internal(format!("journal reached without {what}"));
        let caller = parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| missing("a caller"))?;
        let id = parts
            .extensions
            .get::<MessageId>()
            .cloned()
            .ok_or_else(|| missing("a message id"))?;
        let queued = route.config.delivery == DeliveryMode::Queued;
        // What a direct delivery would refuse at once is refused before a queued one is accepted, not after.
        if queued
            && caller.kind == lgsp_config::KeyKind::Trial
            && route.config.trial_upstream.is_none()
        {
            return Err(ForwardError::TrialNotOffered {
                route: route.name.clone(),
            }
            .into());
        }
        // Validation read the packet whole already: this takes its bytes.
        let bytes = read_body(body, route.config.max_body_bytes).await?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let facts = parts
            .extensions
            .get::<PacketFacts>()
            .cloned()
            .unwrap_or_default();
        if let (Some(approval), Some(until)) = (&facts.approval, facts.coverage_until_us) {
            let problems = coverage::check(&journal, &hop.name, &caller.agency, approval, until)
                .await
                .map_err(|e| JournalProblem::Unavailable(e.to_string()))?;
            if !problems.is_empty() {
                let mut rules: Vec<&'static str> = problems.iter().map(|v| v.rule).collect();
                rules.sort_unstable();
                rules.dedup();
                for rule in rules {
                    hop.metrics
                        .validation_failures
                        .with_label_values(&[&*hop.name, &route.name, &message_type, rule])
                        .inc();
                }
                return Err(PacketError::Invalid {
                    violations: problems,
                    truncated: false,
                }
                .into());
            }
        }
        let accepted = Accepted {
            hop: hop.name.to_string(),
            message_id: id.0.clone(),
            agency: caller.agency.to_string(),
            route: route.name.to_string(),
            message_type: Some(message_type),
            mode: caller.kind.as_str().to_owned(),
            idempotency_key: key.clone(),
            body_sha256: sha256.clone(),
            body_size: bytes.len() as u64,
            delivery: if queued {
                Delivery::Queued
            } else {
                Delivery::Direct
            },
            request: Some(replay_request(&parts, &caller)),
            body: Some(bytes.clone()),
            lease: if queued {
                layer.lease
            } else {
                direct_lease(&route)
            },
            subject: facts.subject.clone(),
            approval: facts.approval.as_ref().map(|a| a.to_json().to_string()),
            hop_signature: parts.extensions.get::<HopSigned>().map(|HopSigned(v)| {
                let covered: serde_json::Map<String, serde_json::Value> = v
                    .covered
                    .iter()
                    .map(|(c, value)| ((*c).to_owned(), value.clone().into()))
                    .collect();
                serde_json::json!({
                    "keyid": v.keyid,
                    "created": v.created,
                    "signature_input": v.signed.input,
                    "signature": v.signed.signature,
                    "covered": covered,
                })
                .to_string()
            }),
        };
        let started = std::time::Instant::now();
        let admitted = journal.accept(accepted).await;
        layer.append.observe(started.elapsed().as_secs_f64());
        let status_url = |message_id: &str| {
            layer
                .status_prefix
                .as_deref()
                .map(|p| format!("{p}/{message_id}"))
        };
        let message_id = match admitted {
            Err(JournalError::Unavailable(e)) => {
                hop.metrics.journal_up.set(0);
                return Err(JournalProblem::Unavailable(e).into());
            }
            Err(e @ JournalError::OverQuota { .. }) => {
                return Err(JournalProblem::AgencyQuota(e).into());
            }
            Err(e @ JournalError::DiskFull { .. }) => {
                return Err(JournalProblem::DiskFull(e).into());
            }
            Err(e) => return Err(Internal(format!("journal: {e}")).into()),
            Ok(Admission::Taken) => {
                return Err(JournalProblem::MessageIdTaken { message_id: id.0 }.into());
            }
            Ok(Admission::Existing(m)) => {
                hop.metrics.journal_up.set(1);
                known_as(&parts, &m.message_id);
                return replay(
                    &m,
                    key.as_deref(),
                    &sha256,
                    &route.name,
                    status_url(&m.message_id),
                    queued,
                );
            }
            Ok(Admission::New) => id.0.clone(),
            // The same key after a failed delivery: tried again under the first message id.
            Ok(Admission::Again(m)) => {
                known_as(&parts, &m.message_id);
                parts.extensions.insert(MessageId(m.message_id.clone()));
                m.message_id.clone()
            }
        };
        hop.metrics.journal_up.set(1);
        if queued {
            return Ok(accepted_202(&message_id, status_url(&message_id), false));
        }
        let answer = unnamed(inner.call(Request::from_parts(parts, full(bytes)))).await;
        let judged = judge(&hop.name, &message_id, &route, answer).await;
        let status = judged.verdict.outcome();
        layer.deliveries.count(route.index, status.as_str());
        // Not waited for: the writer keeps it until it is written (through an outage of the store); a crash before
        // that leaves the delivery leased to this process, and the next start takes it up again.
        journal.finish_later(Outcome {
            hop: hop.name.to_string(),
            message_id,
            status,
            upstream_status: judged.upstream_status,
            receipt: judged.receipt,
            answer_type: judged.answer_type,
            detail: judged.detail,
            owner: Some(journal.owner().to_owned()),
        });
        judged.answer
    }
}

/// How long a direct delivery is this process's before another may take it up: the wait for the upstream's head
/// and for its answer (each within the route's timeout), and a margin to write the outcome.
fn direct_lease(route: &Route) -> Duration {
    route
        .config
        .timeout
        .saturating_mul(2)
        .saturating_add(Duration::from_secs(30))
}

/// Tells observe the answer is message `id`'s (an earlier one's, found by its key).
fn known_as(parts: &http::request::Parts, id: &str) {
    if let Some(k) = parts.extensions.get::<KnownAs>() {
        k.set(MessageId(id.to_owned()));
    }
}

/// Headers a queued delivery does not keep: the connection's own, and the hop headers forward writes anew.
fn kept(name: &http::HeaderName) -> bool {
    !matches!(
        name.as_str(),
        "host"
            | "content-length"
            | "connection"
            | "keep-alive"
            | "te"
            | "transfer-encoding"
            | "upgrade"
    ) && !name.as_str().starts_with(headers::HOP_HEADER_PREFIX)
}

/// What a queued delivery replays: the request as this hop would have forwarded it.
pub(crate) fn replay_request(
    parts: &http::request::Parts,
    caller: &Caller,
) -> lgsp_journal::Request {
    lgsp_journal::Request {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned()),
        headers: parts
            .headers
            .iter()
            .filter(|(n, _)| kept(n))
            .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect(),
        via: caller.via.clone(),
        hops: parts
            .extensions
            .get::<HopPath>()
            .map(|h| h.0.clone())
            .unwrap_or_default(),
        traceparent: parts
            .extensions
            .get::<TraceContext>()
            .map(TraceContext::header_value),
    }
}

/// The answer to a repeat of an idempotency key: the first answer again, byte for byte, or why not.
fn replay(
    m: &Message,
    key: Option<&str>,
    sha256: &str,
    route: &str,
    status_url: Option<String>,
    queued: bool,
) -> Result<Response<Body>, BoxProblem> {
    let key = key.unwrap_or_default().to_owned();
    if m.route != route {
        return Err(JournalProblem::KeyOnOtherRoute {
            key,
            message_id: m.message_id.clone(),
            route: m.route.clone(),
        }
        .into());
    }
    if m.body_sha256 != sha256 {
        return Err(JournalProblem::KeyReused {
            key,
            message_id: m.message_id.clone(),
        }
        .into());
    }
    if m.status == Status::Queued || (queued && m.status.pending()) {
        return Ok(accepted_202(&m.message_id, status_url, true));
    }
    if m.status.pending() {
        return Err(JournalProblem::InProgress {
            key,
            message_id: m.message_id.clone(),
        }
        .into());
    }
    let mut resp = judge::replayed(m);
    let h = resp.headers_mut();
    h.insert(REPLAYED, HeaderValue::from_static("true"));
    if let Ok(v) = HeaderValue::from_str(&m.message_id) {
        h.insert(headers::MESSAGE_ID, v);
    }
    Ok(resp)
}

/// 202 Accepted for a queued packet: its message id and where to ask how it went.
fn accepted_202(message_id: &str, status_url: Option<String>, replayed: bool) -> Response<Body> {
    let body = serde_json::json!({
        "message_id": message_id,
        "status": "queued",
        "status_url": status_url,
    });
    let mut resp = Response::new(full(body.to_string()));
    *resp.status_mut() = StatusCode::ACCEPTED;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(v) = status_url.and_then(|u| HeaderValue::from_str(&u).ok()) {
        h.insert(header::LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(message_id) {
        h.insert(headers::MESSAGE_ID, v);
    }
    if replayed {
        h.insert(REPLAYED, HeaderValue::from_static("true"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_short_printable_text() {
        let mut h = HeaderMap::new();
        assert_eq!(idempotency_key(&h).ok(), Some(None));
        h.insert(
            IDEMPOTENCY_KEY,
            HeaderValue::from_static("2026-11-H29-0001"),
        );
        assert_eq!(
            idempotency_key(&h).ok().flatten().as_deref(),
            Some("2026-11-H29-0001")
        );
        for bad in ["", " ", &"k".repeat(129)] {
            h.insert(IDEMPOTENCY_KEY, HeaderValue::from_str(bad).unwrap());
            let e = idempotency_key(&h).unwrap_err();
            assert_eq!(
                (e.status(), e.code()),
                (StatusCode::BAD_REQUEST, "idempotency.bad_key")
            );
        }
    }

    use std::sync::atomic::{AtomicUsize, Ordering};

    use tower::ServiceExt;

    use lgsp_hop::route::RouteTable;
    use lgsp_hop::testing::{Fixture, metrics};

    const H29: &str = "000.00.00.H29";

    /// The journal layer of the embedded LGSP hop (its HoSoCBCCVC route `delivery` as given) over `inner`, on a
    /// journal of its own.
    struct Bench {
        _fixture: Fixture,
        journal: Journal,
        layer: JournalLayer,
        routes: RouteTable,
    }

    impl Bench {
        async fn new(delivery: &str) -> Bench {
            let fixture = Fixture::new();
            let cfg = fixture.config(&[(
                "delivery = \"direct\"",
                &format!("delivery = \"{delivery}\""),
            )]);
            let journal = Journal::open(lgsp_journal::Settings::new(cfg.journal.url.clone()))
                .await
                .unwrap();
            let hop = Arc::new(HopContext::new("lgsp", &[], metrics()));
            let routes = &cfg.hops[0].routes;
            Bench {
                layer: JournalLayer::new(
                    Some(journal.clone()),
                    hop.clone(),
                    routes,
                    Duration::from_secs(60),
                ),
                routes: RouteTable::new(&hop, routes),
                journal,
                _fixture: fixture,
            }
        }

        /// A request as the layers above leave it: route, caller and hop headers on its extensions.
        fn request(
            &self,
            method: &str,
            path: &str,
            key: Option<&str>,
            body: &str,
            agency: &str,
        ) -> Request<Body> {
            let mut b = Request::builder()
                .method(method)
                .uri(path)
                .header("content-type", "application/xml");
            if let Some(k) = key {
                b = b.header(IDEMPOTENCY_KEY, k);
            }
            let mut req = b.body(full(body.to_owned())).unwrap();
            let e = req.extensions_mut();
            let route_path = path.split('?').next().unwrap_or(path);
            e.insert(self.routes.lookup(route_path).unwrap().clone());
            e.insert(Caller {
                agency: Arc::from(agency),
                kind: lgsp_config::KeyKind::Production,
                via: None,
            });
            e.insert(MessageId::new());
            e.insert(HopPath(vec!["lgsp".into()]));
            e.insert(TraceContext::continue_or_start(&HeaderMap::new()));
            req
        }

        fn packet(&self, key: Option<&str>, body: &str) -> Request<Body> {
            self.request("POST", "/lgsp/v1/HoSoCBCCVC", key, body, H29)
        }
    }

    /// An upstream that answers every packet with `status` and a receipt naming its message id, counting calls.
    fn upstream(status: StatusCode, calls: Arc<AtomicUsize>) -> impl Next {
        tower::service_fn(move |req: Request<Body>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                let id = req
                    .extensions()
                    .get::<MessageId>()
                    .map(|m| m.0.clone())
                    .unwrap_or_default();
                let mut resp = Response::new(full(format!("{{\"message_id\":\"{id}\"}}")));
                *resp.status_mut() = status;
                Ok::<_, BoxProblem>(resp)
            }
        })
    }

    async fn body_of(resp: Response<Body>) -> serde_json::Value {
        let b = read_body(resp.into_body(), 1 << 20).await.unwrap();
        serde_json::from_slice(&b).unwrap()
    }

    fn id_of(resp: &Response<Body>) -> String {
        resp.headers()[headers::MESSAGE_ID]
            .to_str()
            .unwrap()
            .to_owned()
    }

    #[tokio::test]
    async fn a_resend_with_the_same_key_gets_the_first_outcome_and_never_a_second_delivery() {
        let b = Bench::new("direct").await;
        let calls = Arc::new(AtomicUsize::new(0));
        let svc = b.layer.layer(upstream(StatusCode::OK, calls.clone()));
        let first = svc
            .clone()
            .oneshot(b.packet(Some("k-1"), "<a/>"))
            .await
            .unwrap();
        assert_eq!(first.status(), StatusCode::OK);
        let id = body_of(first).await["message_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let again = svc
            .clone()
            .oneshot(b.packet(Some("k-1"), "<a/>"))
            .await
            .unwrap();
        assert_eq!(
            (again.status(), id_of(&again)),
            (StatusCode::OK, id.clone())
        );
        assert_eq!(again.headers()[REPLAYED], "true");
        assert_eq!(body_of(again).await["message_id"], id.as_str());
        assert_eq!(calls.load(Ordering::SeqCst), 1, "delivered once");
        // Another body under the key: refused, naming the first message.
        let e = svc
            .clone()
            .oneshot(b.packet(Some("k-1"), "<b/>"))
            .await
            .unwrap_err();
        assert_eq!(
            (e.status(), e.code()),
            (StatusCode::UNPROCESSABLE_ENTITY, "idempotency.key_reused")
        );
        assert!(e.detail().contains(&id), "{}", e.detail());
        let e = svc
            .clone()
            .oneshot(b.packet(Some("a\tb"), "<a/>"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), "idempotency.bad_key");
        // Without a key every packet is a message of its own.
        svc.clone().oneshot(b.packet(None, "<a/>")).await.unwrap();
        svc.clone().oneshot(b.packet(None, "<a/>")).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        let m = b.journal.message("lgsp", H29, &id).await.unwrap().unwrap();
        assert_eq!(
            (m.status, m.upstream_status, m.idempotency_key.as_deref()),
            (Status::Delivered, Some(200), Some("k-1"))
        );
        // accepted + outcome for each of the three messages (the last outcome was handed over unwaited).
        b.journal.flush().await.unwrap();
        assert_eq!(b.journal.verify().await.unwrap().records, 6);
    }

    #[tokio::test]
    async fn a_failed_delivery_is_tried_again_under_its_first_id_and_one_in_progress_waits() {
        let b = Bench::new("direct").await;
        let calls = Arc::new(AtomicUsize::new(0));
        let down = b
            .layer
            .layer(upstream(StatusCode::BAD_GATEWAY, calls.clone()));
        let first = down.oneshot(b.packet(Some("k-2"), "<a/>")).await.unwrap();
        assert_eq!(first.status(), StatusCode::BAD_GATEWAY);
        let id = id_of_message(&b, "k-2").await;
        let up = b.layer.layer(upstream(StatusCode::OK, calls.clone()));
        let again = up
            .clone()
            .oneshot(b.packet(Some("k-2"), "<a/>"))
            .await
            .unwrap();
        assert_eq!(again.status(), StatusCode::OK);
        assert!(
            again.headers().get(REPLAYED).is_none(),
            "a new attempt, not a replay"
        );
        assert_eq!(body_of(again).await["message_id"], id.as_str());
        assert_eq!(calls.load(Ordering::SeqCst), 2);

        // While one is still at the upstream, its resend waits.
        let (release, held) = tokio::sync::oneshot::channel::<()>();
        let held = Arc::new(tokio::sync::Mutex::new(Some(held)));
        let slow = b.layer.layer(tower::service_fn(move |_req: Request<Body>| {
            let held = held.clone();
            async move {
                if let Some(rx) = held.lock().await.take() {
                    let _ = rx.await;
                }
                Ok::<_, BoxProblem>(Response::new(full("{}")))
            }
        }));
        let first = tokio::spawn(slow.clone().oneshot(b.packet(Some("k-3"), "<a/>")));
        // k-3's first attempt journalled and at the upstream (not k-2's, whose outcome is written without being
        // waited for and may not be yet).
        while !b
            .journal
            .messages(&lgsp_journal::Query {
                hop: "lgsp".into(),
                agency: H29.into(),
                status: Some(Status::InProgress),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap()
            .iter()
            .any(|m| m.idempotency_key.as_deref() == Some("k-3"))
        {
            tokio::task::yield_now().await;
        }
        let e = slow
            .clone()
            .oneshot(b.packet(Some("k-3"), "<a/>"))
            .await
            .unwrap_err();
        assert_eq!(
            (e.status(), e.code()),
            (StatusCode::CONFLICT, "idempotency.in_progress")
        );
        assert!(e.headers().iter().any(|(n, _)| n == header::RETRY_AFTER));
        release.send(()).unwrap();
        assert_eq!(first.await.unwrap().unwrap().status(), StatusCode::OK);
    }

    async fn id_of_message(b: &Bench, key: &str) -> String {
        let page = b
            .journal
            .messages(&lgsp_journal::Query {
                hop: "lgsp".into(),
                agency: H29.into(),
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap();
        page.into_iter()
            .find(|m| m.idempotency_key.as_deref() == Some(key))
            .unwrap()
            .message_id
    }

    #[tokio::test]
    async fn a_queued_route_answers_202_once_the_outbox_holds_the_packet() {
        let b = Bench::new("queued").await;
        let calls = Arc::new(AtomicUsize::new(0));
        let svc = b.layer.layer(upstream(StatusCode::OK, calls.clone()));
        let resp = svc
            .clone()
            .oneshot(b.packet(Some("q-1"), "<a/>"))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
        let id = id_of(&resp);
        let location = resp.headers()[header::LOCATION]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(location, format!("/lgsp/v1/messages/{id}"));
        let doc = body_of(resp).await;
        assert_eq!(
            (doc["status"].as_str(), doc["status_url"].as_str()),
            (Some("queued"), Some(location.as_str()))
        );
        assert_eq!(calls.load(Ordering::SeqCst), 0, "nothing forwarded at once");
        let again = svc
            .clone()
            .oneshot(b.packet(Some("q-1"), "<a/>"))
            .await
            .unwrap();
        assert_eq!(
            (again.status(), id_of(&again)),
            (StatusCode::ACCEPTED, id.clone())
        );
        let claimed = b
            .journal
            .claim("lgsp", std::time::Duration::from_secs(60), 10)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].body.as_deref(), Some(&b"<a/>"[..]));
        let request = claimed[0].message.request.clone().unwrap();
        assert_eq!(
            (request.method.as_str(), request.path.as_str()),
            ("POST", "/lgsp/v1/HoSoCBCCVC")
        );
        assert!(
            request
                .headers
                .iter()
                .any(|(n, v)| n == "idempotency-key" && v == "q-1")
        );
    }

    #[tokio::test]
    async fn the_messages_route_answers_only_the_callers_own_messages() {
        let b = Bench::new("direct").await;
        let svc = b
            .layer
            .layer(upstream(StatusCode::OK, Arc::new(AtomicUsize::new(0))));
        let resp = svc
            .clone()
            .oneshot(b.packet(Some("m-1"), "<a/>"))
            .await
            .unwrap();
        let id = body_of(resp).await["message_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let get = |path: String, agency: &str| b.request("GET", &path, None, "", agency);
        let one = svc
            .clone()
            .oneshot(get(format!("/lgsp/v1/messages/{id}"), H29))
            .await
            .unwrap();
        assert_eq!(one.status(), StatusCode::OK);
        assert_eq!(one.headers()[header::CACHE_CONTROL], "no-store");
        let doc = body_of(one).await;
        assert_eq!(
            (doc["status"].as_str(), doc["idempotency_key"].as_str()),
            (Some("delivered"), Some("m-1"))
        );
        assert_eq!(doc["receipt"]["message_id"], id.as_str());
        let e = svc
            .clone()
            .oneshot(get(format!("/lgsp/v1/messages/{id}"), "000.00.00.H26"))
            .await
            .unwrap_err();
        assert_eq!(
            (e.status(), e.code()),
            (StatusCode::NOT_FOUND, "messages.not_found")
        );
        let list = svc
            .clone()
            .oneshot(get("/lgsp/v1/messages?status=delivered".into(), H29))
            .await
            .unwrap();
        let doc = body_of(list).await;
        assert_eq!(doc["messages"].as_array().unwrap().len(), 1);
        assert!(
            doc["messages"][0].get("receipt").is_none(),
            "a listing carries no receipts"
        );
        let theirs = svc
            .clone()
            .oneshot(get("/lgsp/v1/messages".into(), "000.00.00.H26"))
            .await
            .unwrap();
        assert_eq!(
            body_of(theirs).await["messages"].as_array().unwrap().len(),
            0
        );
        let e = svc
            .clone()
            .oneshot(get("/lgsp/v1/messages?agency=000.00.00.H26".into(), H29))
            .await
            .unwrap_err();
        assert_eq!(
            (e.status(), e.code()),
            (StatusCode::BAD_REQUEST, "messages.bad_query")
        );
    }

    #[tokio::test]
    async fn without_a_journal_packets_pass_and_messages_are_unavailable() {
        let b = Bench::new("direct").await;
        let bare = JournalLayer::new(None, b.layer.hop.clone(), &[], Duration::from_secs(60));
        let calls = Arc::new(AtomicUsize::new(0));
        let svc = bare.layer(upstream(StatusCode::OK, calls.clone()));
        assert_eq!(
            svc.clone()
                .oneshot(b.packet(Some("x"), "<a/>"))
                .await
                .unwrap()
                .status(),
            StatusCode::OK
        );
        let e = svc
            .oneshot(b.request("GET", "/lgsp/v1/messages", None, "", H29))
            .await
            .unwrap_err();
        assert_eq!(
            (e.status(), e.code()),
            (StatusCode::SERVICE_UNAVAILABLE, "journal.unavailable")
        );
    }
}
