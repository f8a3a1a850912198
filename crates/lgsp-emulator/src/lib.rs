//! The national CBCCVC endpoint emulator: stands in for the national database of cadres, civil servants and public
//! employees (CSDLQG về CBCCVC). It accepts packets on `/cbccvc/v1/{message type}`, answers a JSON receipt (biên
//! nhận) naming the message id, treats a repeated message id as the same delivery (idempotent), and serves receipts
//! back on `GET /cbccvc/v1/BienNhan/{message id}` for reconciliation (đối chiếu).
#![forbid(unsafe_code)]

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use lgsp_metrics::Metrics;
use lgsp_problem::{Class, Problem};
use lgsp_tls::PeerIdentity;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// Message types the national endpoint accepts (names as in the schemas).
pub const MESSAGE_TYPES: &[&str] = &["HoSoCBCCVC", "BienChe", "PheDuyetDuLieu", "BienDong"];
/// Largest packet the emulator reads.
pub const MAX_PACKET_BYTES: usize = 32 * 1024 * 1024;
const BASE: &str = "/cbccvc/v1/";

/// The receipt (biên nhận) the national endpoint answers with.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Receipt {
    /// Receipt number assigned by the national endpoint.
    pub receipt_id: String,
    /// `X-LGSP-Message-Id` of the delivery: the idempotency key end to end.
    pub message_id: String,
    pub message_type: String,
    /// Always `accepted` here: the emulator stores what arrives; validation happens at the first hop.
    pub status: &'static str,
    pub received_at: String,
    /// SHA-256 (hex) of the packet as received, for reconciliation against what the agency sent.
    pub sha256: String,
    pub bytes: usize,
    /// The agency the packet is from (`X-LGSP-Client`).
    pub agency: Option<String>,
    /// The hops it passed (`X-LGSP-Hops`).
    pub hops: Option<String>,
    /// Identity of the gateway that delivered it (its client certificate).
    pub delivered_by: Option<String>,
    /// The delivering hop's signature (RFC 9421) over this request, as the emulator verified it.
    pub hop_signature: HopSignatureCheck,
    pub mode: String,
    /// True when this message id had already been received with the same content.
    pub duplicate: bool,
}

/// The verdict on the delivering hop's signature: `valid` (with its key id and time), `missing` or `invalid` (with
/// why). The emulator records it rather than refusing, so an integrator sees what a hop sent.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct HopSignatureCheck {
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keyid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Verifies the delivering hop's signature with the key of the certificate it connected with, and the body against
/// the signed `Content-Digest`.
fn check_hop_signature(parts: &http::request::Parts, body: &[u8]) -> HopSignatureCheck {
    let text = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let failed = |status: &'static str, detail: String| HopSignatureCheck {
        status,
        keyid: None,
        created: None,
        detail: Some(detail),
    };
    let Some(peer) = parts.extensions.get::<PeerIdentity>() else {
        return failed("missing", "no client certificate".into());
    };
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| text("host"))
        .unwrap_or_default();
    let target = format!(
        "https://{authority}{}",
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let covered = lgsp_sign::http::Covered {
        method: parts.method.as_str(),
        target_uri: &target,
        content_digest: text("content-digest").unwrap_or_default(),
        message_id: text("x-lgsp-message-id").unwrap_or_default(),
        client: text("x-lgsp-client").unwrap_or_default(),
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    match lgsp_sign::http::verify(
        &peer.spki,
        &peer.id,
        &covered,
        text("signature-input"),
        text("signature"),
        now,
    ) {
        Err(lgsp_sign::http::HopSignatureError::Missing(why)) => failed("missing", why),
        Err(lgsp_sign::http::HopSignatureError::Invalid(why)) => failed("invalid", why),
        Ok(_) if covered.content_digest != lgsp_sign::http::content_digest(body) => failed(
            "invalid",
            "the body is not the one its signed Content-Digest names".into(),
        ),
        Ok(v) => HopSignatureCheck {
            status: "valid",
            keyid: Some(v.keyid),
            created: Some(v.created),
            detail: None,
        },
    }
}

/// Receipts kept for look-up, oldest dropped first.
#[derive(Debug)]
struct Store {
    by_id: HashMap<String, Receipt>,
    order: VecDeque<String>,
    max: usize,
}

/// The emulator as a tower/hyper service; clone per connection.
#[derive(Clone)]
pub struct Emulator {
    store: Arc<Mutex<Store>>,
    metrics: Arc<Metrics>,
    /// Where shared data goes (NATS `host:port`, subject prefix), and the connection it goes over.
    share: Option<Arc<(String, String, lgsp_broker::Brokers)>>,
}

/// Why the national endpoint refused a request.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    #[error("{method} not allowed on {}", if *receipts { "receipts" } else { "packets" })]
    MethodNotAllowed { method: Method, receipts: bool },
    #[error("no receipt for this message id")]
    ReceiptNotFound,
    #[error("unknown message type")]
    UnknownMessageType,
    #[error("no X-LGSP-Message-Id")]
    MissingMessageId,
    #[error("packet unreadable: {0}")]
    BodyUnreadable(String),
    #[error("message id reused for a different packet")]
    MessageIdReused,
    #[error("the receipt store is unavailable")]
    Internal,
    #[error("this emulator shares no data (no [emulator] share)")]
    SharingOff,
    #[error("the shared packet could not be published: {0}")]
    ShareFailed(String),
    #[error("`{0}` is not an agency code")]
    NoSuchAgency(String),
}

impl Problem for EmulatorError {
    fn status(&self) -> StatusCode {
        match self {
            EmulatorError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            EmulatorError::ReceiptNotFound | EmulatorError::UnknownMessageType => {
                StatusCode::NOT_FOUND
            }
            EmulatorError::MissingMessageId => StatusCode::BAD_REQUEST,
            EmulatorError::BodyUnreadable(_) => StatusCode::PAYLOAD_TOO_LARGE,
            EmulatorError::MessageIdReused => StatusCode::CONFLICT,
            EmulatorError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            EmulatorError::SharingOff | EmulatorError::NoSuchAgency(_) => StatusCode::NOT_FOUND,
            EmulatorError::ShareFailed(_) => StatusCode::BAD_GATEWAY,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            EmulatorError::MethodNotAllowed { .. } => "emulator.method_not_allowed",
            EmulatorError::ReceiptNotFound => "emulator.receipt_not_found",
            EmulatorError::UnknownMessageType => "emulator.unknown_message_type",
            EmulatorError::MissingMessageId => "emulator.missing_message_id",
            EmulatorError::BodyUnreadable(_) => "emulator.body_unreadable",
            EmulatorError::MessageIdReused => "emulator.message_id_reused",
            EmulatorError::Internal => "gateway.internal",
            EmulatorError::SharingOff => "emulator.sharing_off",
            EmulatorError::ShareFailed(_) => "emulator.share_failed",
            EmulatorError::NoSuchAgency(_) => "emulator.no_such_agency",
        }
    }

    fn class(&self) -> Class {
        match self {
            EmulatorError::Internal => Class::Gateway,
            EmulatorError::ShareFailed(_) => Class::Upstream,
            _ => Class::Client,
        }
    }

    fn detail(&self) -> String {
        match self {
            EmulatorError::MethodNotAllowed { receipts: true, .. } => {
                "Receipts are read with GET.".into()
            }
            EmulatorError::MethodNotAllowed { .. } => {
                "Packets are sent with POST (or PUT for a profile update).".into()
            }
            EmulatorError::ReceiptNotFound => "No packet with this message id reached the national endpoint; send it again (the message id makes a resend safe).".into(),
            EmulatorError::UnknownMessageType => format!(
                "The national endpoint accepts {} under {BASE}.",
                MESSAGE_TYPES.join(", ")
            ),
            EmulatorError::MissingMessageId => "Packets reach the national endpoint through a gateway, which sets X-LGSP-Message-Id (a UUID).".into(),
            EmulatorError::BodyUnreadable(e) => format!(
                "The packet could not be read whole ({e}); packets are limited to {MAX_PACKET_BYTES} bytes."
            ),
            EmulatorError::MessageIdReused => "This message id was already used for a different packet; a new packet needs a new message id.".into(),
            EmulatorError::Internal => "The emulator's store is unavailable; restart it.".into(),
            EmulatorError::SharingOff => "This emulator shares no data back to agencies; set [emulator] share = \"nats://host:port/<subject prefix>\" to publish with POST /cbccvc/v1/ChiaSe/{agency code}.".into(),
            EmulatorError::ShareFailed(why) => format!("The shared packet was not published (the broker: {why}); send it again when the broker is back."),
            EmulatorError::NoSuchAgency(code) => format!("`{code}` is not an agency code (dot-separated groups of 0-9 A-Z, e.g. 000.00.00.H29); share with POST /cbccvc/v1/ChiaSe/{{agency code}}."),
        }
    }
}

/// The problem+json answer to `e`, naming the message id when the request carried one.
fn problem(e: EmulatorError, message_id: Option<&str>) -> Response<Full<Bytes>> {
    lgsp_problem::response(&e, "emulator", message_id).map(Full::new)
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn header_str(req: &http::request::Parts, name: &str) -> Option<String> {
    req.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

impl Emulator {
    pub fn new(max_stored: usize, metrics: Arc<Metrics>) -> Self {
        for message_type in MESSAGE_TYPES {
            for result in ["accepted", "duplicate", "refused"] {
                metrics
                    .emulator_packets
                    .with_label_values(&[message_type, result]);
            }
        }
        Emulator {
            share: None,
            store: Arc::new(Mutex::new(Store {
                by_id: HashMap::new(),
                order: VecDeque::new(),
                max: max_stored.max(1),
            })),
            metrics,
        }
    }

    /// Number of receipts held.
    pub fn stored(&self) -> usize {
        self.store.lock().map_or(0, |s| s.by_id.len())
    }

    /// Shares data back to agencies over NATS: `POST /cbccvc/v1/ChiaSe/{agency code}` publishes the body to
    /// `<subject>.<agency code>` (at `authority`), where the agency's inbox route reads it.
    pub fn sharing(mut self, authority: String, subject: String) -> Self {
        self.share = Some(Arc::new((authority, subject, lgsp_broker::Brokers::new())));
        self
    }

    /// `POST /cbccvc/v1/ChiaSe/{agency code}`: the body published for that agency, answered 202 with its message id
    /// and its place in the stream once JetStream stored it.
    async fn share<B>(
        &self,
        parts: &http::request::Parts,
        agency: &str,
        body: B,
    ) -> Result<Response<Full<Bytes>>, EmulatorError>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let share = self.share.clone().ok_or(EmulatorError::SharingOff)?;
        if parts.method != Method::POST {
            return Err(EmulatorError::MethodNotAllowed {
                method: parts.method.clone(),
                receipts: false,
            });
        }
        let valid = !agency.is_empty()
            && agency.len() <= 35
            && agency.split('.').all(|g| {
                !g.is_empty()
                    && g.bytes()
                        .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
            });
        if !valid {
            return Err(EmulatorError::NoSuchAgency(
                agency.chars().take(40).collect(),
            ));
        }
        let bytes = Limited::new(body, MAX_PACKET_BYTES)
            .collect()
            .await
            .map_err(|e| EmulatorError::BodyUnreadable(e.to_string()))?
            .to_bytes();
        let (authority, prefix, brokers) = &*share;
        let message_id = uuid::Uuid::now_v7().to_string();
        let message_type = header_str(parts, "x-lgsp-message-type")
            .filter(|t| MESSAGE_TYPES.contains(&t.as_str()));
        let mut headers = vec![
            ("x-lgsp-message-id".to_owned(), message_id.clone()),
            ("x-lgsp-client".to_owned(), agency.to_owned()),
        ];
        if let Some(t) = &message_type {
            headers.push(("x-lgsp-message-type".to_owned(), t.clone()));
        }
        let subject = format!("{prefix}.{agency}");
        let confirmed = brokers
            .publish(
                "emulator",
                None,
                authority,
                &lgsp_config::Broker::Nats {
                    tls: false,
                    subject: subject.clone(),
                },
                lgsp_broker::Publication {
                    message_id: message_id.clone(),
                    headers,
                    content_type: header_str(parts, "content-type"),
                    body: bytes,
                },
                std::time::Duration::from_secs(10),
            )
            .await
            .map_err(|e| {
                // The broker's address stays in the log.
                tracing::warn!(error = %e, agency, "emulator: sharing failed");
                EmulatorError::ShareFailed(e.outcome().replace('_', " "))
            })?;
        tracing::info!(%message_id, agency, subject = %subject, "emulator shared a packet");
        Ok(json(
            StatusCode::ACCEPTED,
            &serde_json::json!({
                "message_id": message_id,
                "agency": agency,
                "subject": subject,
                "stream": confirmed.stream,
                "sequence": confirmed.sequence,
            }),
        ))
    }

    /// The receipt of a message id, if the emulator received it.
    pub fn receipt(&self, message_id: &str) -> Option<Receipt> {
        self.store.lock().ok()?.by_id.get(message_id).cloned()
    }

    async fn handle<B>(self, req: Request<B>) -> Response<Full<Bytes>>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (parts, body) = req.into_parts();
        let message_id = header_str(&parts, "x-lgsp-message-id");
        let rest = parts.uri.path().strip_prefix(BASE).unwrap_or_default();
        let answer = match (rest.strip_prefix("BienNhan/"), rest.strip_prefix("ChiaSe/")) {
            (Some(id), _) => self.look_up(&parts.method, id, header_str(&parts, "x-lgsp-client")),
            (None, Some(agency)) => self.share(&parts, agency, body).await,
            (None, None) => self.accept(&parts, body).await,
        };
        answer.unwrap_or_else(|e| problem(e, message_id.as_deref()))
    }

    /// `GET /cbccvc/v1/BienNhan/{message id}`: the receipt, for reconciliation — only to the agency that sent the
    /// packet (`X-LGSP-Client`, set by the gateway); anyone else is told no such receipt exists.
    fn look_up(
        &self,
        method: &Method,
        id: &str,
        agency: Option<String>,
    ) -> Result<Response<Full<Bytes>>, EmulatorError> {
        if method != Method::GET && method != Method::HEAD {
            return Err(EmulatorError::MethodNotAllowed {
                method: method.clone(),
                receipts: true,
            });
        }
        let r = self
            .receipt(id)
            .filter(|r| r.agency == agency)
            .ok_or(EmulatorError::ReceiptNotFound)?;
        Ok(json(StatusCode::OK, &r))
    }

    /// `POST /cbccvc/v1/{message type}`: a packet, stored once per message id and answered with its receipt.
    async fn accept<B>(
        &self,
        parts: &http::request::Parts,
        body: B,
    ) -> Result<Response<Full<Bytes>>, EmulatorError>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let rest = parts.uri.path().strip_prefix(BASE).unwrap_or_default();
        let message_type = *MESSAGE_TYPES
            .iter()
            .find(|t| **t == rest)
            .ok_or(EmulatorError::UnknownMessageType)?;
        if parts.method != Method::POST && parts.method != Method::PUT {
            return Err(EmulatorError::MethodNotAllowed {
                method: parts.method.clone(),
                receipts: false,
            });
        }
        let refused = |e: EmulatorError| {
            self.count(message_type, "refused");
            e
        };
        let message_id = header_str(parts, "x-lgsp-message-id")
            .filter(|id| uuid::Uuid::parse_str(id).is_ok())
            .ok_or_else(|| refused(EmulatorError::MissingMessageId))?;
        let bytes = Limited::new(body, MAX_PACKET_BYTES)
            .collect()
            .await
            .map_err(|e| refused(EmulatorError::BodyUnreadable(e.to_string())))?
            .to_bytes();
        let receipt = Receipt {
            receipt_id: uuid::Uuid::now_v7().to_string(),
            message_id,
            message_type: message_type.to_owned(),
            status: "accepted",
            received_at: time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            sha256: hex::encode(Sha256::digest(&bytes)),
            bytes: bytes.len(),
            agency: header_str(parts, "x-lgsp-client"),
            hops: header_str(parts, "x-lgsp-hops"),
            delivered_by: parts.extensions.get::<PeerIdentity>().map(|p| p.id.clone()),
            hop_signature: check_hop_signature(parts, &bytes),
            mode: header_str(parts, "x-lgsp-mode").unwrap_or_else(|| "production".to_owned()),
            duplicate: false,
        };
        let (receipt, result) = self.store(receipt).map_err(|e| match e {
            EmulatorError::MessageIdReused => refused(e),
            other => other,
        })?;
        self.count(message_type, result);
        if result == "accepted" {
            tracing::info!(message_id = %receipt.message_id, message_type, agency = receipt.agency.as_deref().unwrap_or("-"), bytes = receipt.bytes, "emulator accepted packet");
        }
        Ok(json(StatusCode::OK, &receipt))
    }

    /// Keeps a new receipt (dropping the oldest past the bound); a resend gets the first receipt back, marked
    /// `duplicate`, and a different packet under a used message id is refused.
    fn store(&self, receipt: Receipt) -> Result<(Receipt, &'static str), EmulatorError> {
        let mut store = self.store.lock().map_err(|_| EmulatorError::Internal)?;
        if let Some(prev) = store.by_id.get(&receipt.message_id) {
            if prev.sha256 != receipt.sha256 {
                return Err(EmulatorError::MessageIdReused);
            }
            let mut again = prev.clone();
            again.duplicate = true;
            return Ok((again, "duplicate"));
        }
        if store.order.len() >= store.max
            && let Some(old) = store.order.pop_front()
        {
            store.by_id.remove(&old);
        }
        store.order.push_back(receipt.message_id.clone());
        store
            .by_id
            .insert(receipt.message_id.clone(), receipt.clone());
        Ok((receipt, "accepted"))
    }

    fn count(&self, message_type: &str, result: &str) {
        self.metrics
            .emulator_packets
            .with_label_values(&[message_type, result])
            .inc();
    }
}

impl<B> tower::Service<Request<B>> for Emulator
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let this = self.clone();
        let trial = req
            .headers()
            .get("x-lgsp-mode")
            .is_some_and(|m| m.as_bytes() == b"trial");
        Box::pin(async move {
            let start = std::time::Instant::now();
            let mut resp = this.handle(req).await;
            if trial {
                // Trial answers say who answered and how long it took (the hops add theirs after this).
                let h = resp.headers_mut();
                h.insert(
                    "x-lgsp-answered-by",
                    http::HeaderValue::from_static("emulator"),
                );
                let timing = format!("emulator;dur={:.1}", start.elapsed().as_secs_f64() * 1000.0);
                if let Ok(v) = http::HeaderValue::from_str(&timing) {
                    h.insert("server-timing", v);
                }
            }
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    fn post(path: &str, id: Option<&str>, body: &'static str) -> Request<Full<Bytes>> {
        let mut b = Request::builder()
            .method("POST")
            .uri(path)
            .header("x-lgsp-client", "000.00.00.H29");
        if let Some(id) = id {
            b = b.header("x-lgsp-message-id", id);
        }
        b.body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    }

    async fn body_json(resp: Response<Full<Bytes>>) -> serde_json::Value {
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap()
    }

    #[tokio::test]
    async fn accepts_a_packet_and_answers_a_receipt_with_the_message_id() {
        let emu = Emulator::new(10, Metrics::new().unwrap());
        let id = uuid::Uuid::now_v7().to_string();
        let resp = emu
            .clone()
            .oneshot(post("/cbccvc/v1/HoSoCBCCVC", Some(&id), "<HoSoCBCCVC/>"))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let r = body_json(resp).await;
        assert_eq!(r["message_id"], id.as_str());
        assert_eq!(r["agency"], "000.00.00.H29");
        assert_eq!(r["duplicate"], false);
        assert_eq!(emu.receipt(&id).unwrap().bytes, 13);
    }

    #[tokio::test]
    async fn a_resend_is_a_duplicate_and_a_changed_resend_a_conflict() {
        let emu = Emulator::new(10, Metrics::new().unwrap());
        let id = uuid::Uuid::now_v7().to_string();
        emu.clone()
            .oneshot(post("/cbccvc/v1/BienChe", Some(&id), "a"))
            .await
            .unwrap();
        let again = body_json(
            emu.clone()
                .oneshot(post("/cbccvc/v1/BienChe", Some(&id), "a"))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(again["duplicate"], true);
        let changed = emu
            .clone()
            .oneshot(post("/cbccvc/v1/BienChe", Some(&id), "b"))
            .await
            .unwrap();
        assert_eq!(changed.status(), StatusCode::CONFLICT);
        let get = |agency: Option<&str>| {
            let mut b = Request::get(format!("/cbccvc/v1/BienNhan/{id}"));
            if let Some(a) = agency {
                b = b.header("x-lgsp-client", a);
            }
            b.body(Full::new(Bytes::new())).unwrap()
        };
        assert_eq!(
            body_json(
                emu.clone()
                    .oneshot(get(Some("000.00.00.H29")))
                    .await
                    .unwrap()
            )
            .await["message_id"],
            id.as_str()
        );
        // Another agency, or nobody, hears of no such receipt.
        for other in [Some("000.00.00.H26"), None] {
            let r = emu.clone().oneshot(get(other)).await.unwrap();
            assert_eq!(r.status(), StatusCode::NOT_FOUND);
            assert_eq!(body_json(r).await["code"], "emulator.receipt_not_found");
        }
    }

    #[tokio::test]
    async fn refuses_unknown_types_and_missing_ids_and_keeps_the_store_bounded() {
        let emu = Emulator::new(2, Metrics::new().unwrap());
        let r = emu
            .clone()
            .oneshot(post(
                "/cbccvc/v1/Other",
                Some(&uuid::Uuid::now_v7().to_string()),
                "a",
            ))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let r = emu
            .clone()
            .oneshot(post("/cbccvc/v1/BienDong", None, "a"))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        for _ in 0..3 {
            let id = uuid::Uuid::now_v7().to_string();
            emu.clone()
                .oneshot(post("/cbccvc/v1/BienDong", Some(&id), "a"))
                .await
                .unwrap();
        }
        assert_eq!(emu.stored(), 2);
    }
}
