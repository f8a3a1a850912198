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
    pub mode: String,
    /// True when this message id had already been received with the same content.
    pub duplicate: bool,
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
}

fn problem(status: StatusCode, code: &str, detail: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({
        "type": format!("https://lgsp-gateway.dev/problems/{code}"),
        "title": status.canonical_reason().unwrap_or("error"),
        "status": status.as_u16(),
        "code": code,
        "detail": detail,
    });
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    resp
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
        Emulator {
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
        let rest = parts
            .uri
            .path()
            .strip_prefix(BASE)
            .unwrap_or_default()
            .to_owned();
        if let Some(id) = rest.strip_prefix("BienNhan/") {
            if parts.method != Method::GET && parts.method != Method::HEAD {
                return problem(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "emulator.method_not_allowed",
                    "Receipts are read with GET.",
                );
            }
            return match self.receipt(id) {
                Some(r) => json(StatusCode::OK, &r),
                None => problem(
                    StatusCode::NOT_FOUND,
                    "emulator.receipt_not_found",
                    "No packet with this message id reached the national endpoint; send it again (the message id makes a resend safe).",
                ),
            };
        }
        let Some(message_type) = MESSAGE_TYPES.iter().find(|t| **t == rest) else {
            return problem(
                StatusCode::NOT_FOUND,
                "emulator.unknown_message_type",
                &format!(
                    "The national endpoint accepts {} under {BASE}.",
                    MESSAGE_TYPES.join(", ")
                ),
            );
        };
        if parts.method != Method::POST && parts.method != Method::PUT {
            return problem(
                StatusCode::METHOD_NOT_ALLOWED,
                "emulator.method_not_allowed",
                "Packets are sent with POST (or PUT for a profile update).",
            );
        }
        let Some(message_id) =
            header_str(&parts, "x-lgsp-message-id").filter(|id| uuid::Uuid::parse_str(id).is_ok())
        else {
            self.count(message_type, "refused");
            return problem(
                StatusCode::BAD_REQUEST,
                "emulator.missing_message_id",
                "Packets reach the national endpoint through a gateway, which sets X-LGSP-Message-Id (a UUID).",
            );
        };
        let bytes = match Limited::new(body, MAX_PACKET_BYTES).collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) => {
                self.count(message_type, "refused");
                return problem(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "emulator.body_unreadable",
                    &format!(
                        "The packet could not be read whole ({e}); packets are limited to {MAX_PACKET_BYTES} bytes."
                    ),
                );
            }
        };
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let now = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let receipt = Receipt {
            receipt_id: uuid::Uuid::now_v7().to_string(),
            message_id: message_id.clone(),
            message_type: (*message_type).to_owned(),
            status: "accepted",
            received_at: now,
            sha256,
            bytes: bytes.len(),
            agency: header_str(&parts, "x-lgsp-client"),
            hops: header_str(&parts, "x-lgsp-hops"),
            delivered_by: parts.extensions.get::<PeerIdentity>().map(|p| p.id.clone()),
            mode: header_str(&parts, "x-lgsp-mode").unwrap_or_else(|| "production".to_owned()),
            duplicate: false,
        };
        let Ok(mut store) = self.store.lock() else {
            return problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "emulator.internal",
                "The emulator's store is unavailable; restart it.",
            );
        };
        if let Some(prev) = store.by_id.get(&message_id) {
            if prev.sha256 != receipt.sha256 {
                drop(store);
                self.count(message_type, "refused");
                return problem(
                    StatusCode::CONFLICT,
                    "emulator.message_id_reused",
                    "This message id was already used for a different packet; a new packet needs a new message id.",
                );
            }
            let mut again = prev.clone();
            again.duplicate = true;
            drop(store);
            self.count(message_type, "duplicate");
            return json(StatusCode::OK, &again);
        }
        if store.order.len() >= store.max
            && let Some(old) = store.order.pop_front()
        {
            store.by_id.remove(&old);
        }
        store.order.push_back(message_id.clone());
        store.by_id.insert(message_id, receipt.clone());
        drop(store);
        self.count(message_type, "accepted");
        tracing::info!(message_id = %receipt.message_id, message_type, agency = receipt.agency.as_deref().unwrap_or("-"), bytes = receipt.bytes, "emulator accepted packet");
        json(StatusCode::OK, &receipt)
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
        let get = Request::get(format!("/cbccvc/v1/BienNhan/{id}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(
            body_json(emu.oneshot(get).await.unwrap()).await["message_id"],
            id.as_str()
        );
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
