//! `ValidateLayer`: the body limit of every route, and for routes that carry a CBCCVC message type, the packet
//! check — Content-Type → XML or JSON (else 415), whole body read within the limit (else 413), schema and domain
//! rules (400 malformed / 422 invalid with every error), and the jurisdiction of the packet's MaDonVi (403). A
//! good packet is forwarded byte for byte.

use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use lgsp_auth::Caller;
use lgsp_config::AgencyConfig;
use lgsp_schema::{Catalog, Format, Options, Violation};
use tower::{Layer, Service};

use crate::BoxError;
use crate::body::{Body, full};
use crate::route::Route;
use crate::stack::{Inner, Stackable, call};
use crate::trace::HopContext;

/// Bodies above this size are validated on the blocking pool, not on the reactor.
const INLINE_LIMIT: usize = 256 * 1024;

/// Why a packet was refused.
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    #[error("Content-Type {got:?} is neither XML nor JSON")]
    UnsupportedMediaType { got: Option<String> },
    #[error("body larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("body could not be read: {0}")]
    Unreadable(String),
    #[error("packet not well-formed ({} errors)", violations.len())]
    Malformed { violations: Vec<Violation> },
    #[error("packet invalid ({} errors)", violations.len())]
    Invalid {
        violations: Vec<Violation>,
        truncated: bool,
    },
    #[error("no message type {got:?} to validate")]
    UnknownMessageType { got: String },
    #[error("agency {agency} may not send packets for unit {unit}")]
    OutsideJurisdiction {
        agency: Arc<str>,
        unit: String,
        patterns: Vec<String>,
        violation: Box<Violation>,
    },
}

impl PacketError {
    pub fn status(&self) -> StatusCode {
        match self {
            PacketError::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            PacketError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            PacketError::Unreadable(_) | PacketError::Malformed { .. } => StatusCode::BAD_REQUEST,
            PacketError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            PacketError::OutsideJurisdiction { .. } => StatusCode::FORBIDDEN,
            PacketError::UnknownMessageType { .. } => StatusCode::NOT_FOUND,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            PacketError::UnsupportedMediaType { .. } => "packet.unsupported_media_type",
            PacketError::TooLarge { .. } => "packet.too_large",
            PacketError::Unreadable(_) => "packet.unreadable",
            PacketError::Malformed { .. } => "packet.malformed",
            PacketError::Invalid { .. } => "packet.invalid",
            PacketError::OutsideJurisdiction { .. } => "authz.unit_outside_jurisdiction",
            PacketError::UnknownMessageType { .. } => "validate.unknown_message_type",
        }
    }

    pub fn detail(&self) -> String {
        match self {
            PacketError::UnsupportedMediaType { got } => format!(
                "Content-Type {} is not a packet format; send application/xml or application/json.",
                got.as_deref().unwrap_or("(none)")
            ),
            PacketError::TooLarge { limit } => format!(
                "The body exceeds this route's limit of {limit} bytes; split the batch into smaller packets."
            ),
            PacketError::Unreadable(e) => {
                format!("The body could not be read whole ({e}); send it again.")
            }
            PacketError::Malformed { violations } => format!(
                "The packet is not well-formed ({}); fix it and send it again. `errors` says where.",
                violations.last().map_or("", |v| v.rule)
            ),
            PacketError::Invalid {
                violations,
                truncated,
            } => format!(
                "The packet breaks {}{} rule(s) of its schema or the domain rules; `errors` lists each with its path and line.",
                violations.len(),
                if *truncated { "+" } else { "" }
            ),
            PacketError::UnknownMessageType { got } => format!(
                "`{got}` is not a message type; validate at {{this prefix}}/{{type}} with one of {}.",
                lgsp_schema::MESSAGE_TYPES.join(", ")
            ),
            PacketError::OutsideJurisdiction {
                agency,
                unit,
                patterns,
                ..
            } => format!(
                "Agency {agency} may send packets only for units matching {}; MaDonVi {unit} lies outside. Send it through the agency that manages {unit}, or ask the LGSP operator to extend `units`.",
                patterns.join(", ")
            ),
        }
    }

    /// The `errors` array of the problem document.
    pub fn errors(&self) -> Option<&[Violation]> {
        match self {
            PacketError::Malformed { violations } | PacketError::Invalid { violations, .. } => {
                Some(violations)
            }
            PacketError::OutsideJurisdiction { violation, .. } => {
                Some(std::slice::from_ref(&**violation))
            }
            _ => None,
        }
    }
}

/// Whether `unit` matches `pattern`, where `*` stands for any run of characters.
pub fn unit_matches(pattern: &str, unit: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == unit;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !unit.starts_with(first) || unit.len() < first.len() + last.len() || !unit.ends_with(last) {
        return false;
    }
    let mut rest = &unit[first.len()..unit.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(i) => rest = &rest[i + middle.len()..],
            None => return false,
        }
    }
    true
}

/// What the layer validates with.
pub struct ValidationPolicy {
    pub catalog: Arc<Catalog>,
    pub options: Options,
    /// `max_errors` for trial-mode requests, whose answers list every error up to this many.
    pub trial_max_errors: usize,
    /// Unit-code patterns per agency code.
    pub units: HashMap<String, Vec<String>>,
}

impl ValidationPolicy {
    pub fn new(catalog: Arc<Catalog>, options: Options, agencies: &[AgencyConfig]) -> Self {
        ValidationPolicy {
            catalog,
            trial_max_errors: options.limits.max_errors,
            options,
            units: agencies
                .iter()
                .map(|a| (a.code.clone(), a.units.clone()))
                .collect(),
        }
    }
}

#[derive(Clone)]
pub struct ValidateLayer {
    policy: Arc<ValidationPolicy>,
    hop: Arc<HopContext>,
}

impl ValidateLayer {
    pub fn new(policy: Arc<ValidationPolicy>, hop: Arc<HopContext>) -> Self {
        ValidateLayer { policy, hop }
    }
}

impl<S: Stackable> Layer<S> for ValidateLayer {
    type Service = Validate;

    fn layer(&self, inner: S) -> Validate {
        Validate {
            inner: inner.boxed(),
            policy: self.policy.clone(),
            hop: self.hop.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Validate {
    inner: Inner,
    policy: Arc<ValidationPolicy>,
    hop: Arc<HopContext>,
}

fn declared_length(req: &Request<Body>) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Reads the whole body within `limit`, refusing as soon as it grows past it.
pub(crate) async fn read_body(mut body: Body, limit: usize) -> Result<Bytes, PacketError> {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| PacketError::Unreadable(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(PacketError::TooLarge { limit });
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// What a body is checked as.
#[derive(Clone, Copy)]
struct Ask<'a> {
    message_type: &'a str,
    format: Format,
    /// List every error (trial mode, dry runs), up to `trial_max_errors`.
    full_errors: bool,
}

impl Validate {
    fn check(
        policy: &ValidationPolicy,
        hop: &HopContext,
        route: &Route,
        caller: &Caller,
        ask: Ask<'_>,
        bytes: &[u8],
    ) -> Result<(), PacketError> {
        let Ask {
            message_type,
            format,
            full_errors,
        } = ask;
        let trial_options;
        let options = if full_errors {
            let mut o = policy.options.clone();
            o.limits.max_errors = policy.trial_max_errors.max(o.limits.max_errors);
            trial_options = o;
            &trial_options
        } else {
            &policy.options
        };
        let report = policy
            .catalog
            .validate(message_type, format, bytes, options);
        let mut rules: Vec<&'static str> = report.violations.iter().map(|v| v.rule).collect();
        rules.sort_unstable();
        rules.dedup();
        for rule in &rules {
            hop.metrics
                .validation_failures
                .with_label_values(&[&*hop.name, &route.name, message_type, rule])
                .inc();
        }
        if report.malformed {
            return Err(PacketError::Malformed {
                violations: report.violations,
            });
        }
        let patterns = policy
            .units
            .get(&*caller.agency)
            .cloned()
            .unwrap_or_default();
        if let Some(unit) = report
            .units
            .iter()
            .find(|u| !patterns.iter().any(|p| unit_matches(p, &u.value)))
        {
            hop.metrics
                .validation_failures
                .with_label_values(&[
                    &*hop.name,
                    &route.name,
                    message_type,
                    "authz.unit_outside_jurisdiction",
                ])
                .inc();
            let violation = Box::new(Violation {
                path: unit.path.clone(),
                line: unit.line,
                column: unit.column,
                rule: "authz.unit_outside_jurisdiction",
                message: format!(
                    "MaDonVi {} is outside the units of agency {}",
                    unit.value, caller.agency
                ),
            });
            return Err(PacketError::OutsideJurisdiction {
                agency: caller.agency.clone(),
                unit: unit.value.clone(),
                patterns,
                violation,
            });
        }
        if !report.is_valid() {
            return Err(PacketError::Invalid {
                violations: report.violations,
                truncated: report.truncated,
            });
        }
        Ok(())
    }
}

impl Service<Request<Body>> for Validate {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<Body>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        // The clone that was made ready is taken; a fresh clone stays for the next call.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(handle(inner, self.policy.clone(), self.hop.clone(), req))
    }
}

fn fail(e: PacketError) -> Result<Response<Body>, BoxError> {
    Err(Box::new(e))
}

fn internal(message: &str) -> Result<Response<Body>, BoxError> {
    Err(Box::new(crate::error::ProxyError::Internal(
        message.to_owned(),
    )))
}

/// Cuts a streamed body at `limit` bytes.
fn limited(body: Body, limit: usize) -> Body {
    Limited::new(body, limit).boxed_unsync()
}

async fn handle(
    mut inner: Inner,
    policy: Arc<ValidationPolicy>,
    hop: Arc<HopContext>,
    req: Request<Body>,
) -> Result<Response<Body>, BoxError> {
    let Some(route) = req.extensions().get::<Arc<Route>>().cloned() else {
        return internal("validate reached without a route");
    };
    let limit = route.config.max_body_bytes;
    if declared_length(&req).is_some_and(|n| n > limit as u64) {
        return fail(PacketError::TooLarge { limit });
    }
    let dry_run = route.config.dry_run;
    let message_type = if dry_run {
        // The message type is the path's last segment: {prefix}/{MessageType}.
        let rest = req
            .uri()
            .path()
            .get(route.config.prefix.len()..)
            .unwrap_or_default()
            .trim_matches('/');
        match lgsp_schema::MESSAGE_TYPES.iter().find(|t| **t == rest) {
            Some(t) => (*t).to_owned(),
            None => {
                return fail(PacketError::UnknownMessageType {
                    got: rest.chars().take(64).collect(),
                });
            }
        }
    } else {
        let Some(message_type) = route.config.message_type.clone() else {
            // No packet to check: stream the body through, cut at the limit.
            return call(&mut inner, req.map(|b| limited(b, limit))).await;
        };
        message_type
    };
    let ctype = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let Some(format) = ctype.as_deref().and_then(Format::from_content_type) else {
        return fail(PacketError::UnsupportedMediaType { got: ctype });
    };
    let Some(caller) = req.extensions().get::<Caller>().cloned() else {
        return internal("validate reached without a caller");
    };
    let (parts, body) = req.into_parts();
    let bytes = match read_body(body, limit).await {
        Ok(b) => b,
        Err(e) => return fail(e),
    };
    // A dry run is a diagnosis: it lists every error, as trial mode does.
    let full_errors = dry_run || caller.kind == lgsp_config::KeyKind::Trial;
    let checked = if bytes.len() > INLINE_LIMIT {
        let (p, h, r, c, t, b) = (
            policy.clone(),
            hop.clone(),
            route.clone(),
            caller.clone(),
            message_type.clone(),
            bytes.clone(),
        );
        match tokio::task::spawn_blocking(move || {
            let ask = Ask {
                message_type: &t,
                format,
                full_errors,
            };
            Validate::check(&p, &h, &r, &c, ask, &b)
        })
        .await
        {
            Ok(checked) => checked,
            Err(e) => return internal(&format!("validation task: {e}")),
        }
    } else {
        let ask = Ask {
            message_type: &message_type,
            format,
            full_errors,
        };
        Validate::check(&policy, &hop, &route, &caller, ask, &bytes)
    };
    match checked {
        Ok(()) if dry_run => Ok(verdict(&hop, &message_type, format, bytes.len())),
        Ok(()) => call(&mut inner, Request::from_parts(parts, full(bytes))).await,
        Err(e) => fail(e),
    }
}

/// A dry run's answer for a valid packet (an invalid one gets the problem the packet route would answer).
fn verdict(hop: &HopContext, message_type: &str, format: Format, bytes: usize) -> Response<Body> {
    let body = serde_json::json!({
        "valid": true,
        "message_type": message_type,
        "format": match format {
            Format::Xml => "xml",
            Format::Json => "json",
        },
        "bytes": bytes,
        "hop": &*hop.name,
        "detail": "The packet passes the schema, the domain rules and your jurisdiction; nothing was forwarded.",
    });
    let mut resp = Response::new(full(body.to_string()));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use lgsp_config::KeyKind;
    use lgsp_metrics::Metrics;
    use tower::ServiceExt;

    const GOOD: &str =
        include_str!("../../../schemas/cbccvc/samples/valid/HoSoCBCCVC-02-toi-thieu.xml");

    fn service() -> (Validate, Arc<Route>) {
        let cfg = lgsp_config::embedded().unwrap();
        let catalog = Arc::new(Catalog::embedded().unwrap());
        let policy = Arc::new(ValidationPolicy::new(
            catalog,
            Options::default(),
            &cfg.agencies,
        ));
        let hop = Arc::new(HopContext {
            name: Arc::from("lgsp"),
            peers: Default::default(),
            metrics: Metrics::new().unwrap(),
        });
        let echo = tower::service_fn(|req: Request<Body>| async move {
            let bytes = req.into_body().collect().await?.to_bytes();
            Ok::<_, BoxError>(Response::new(full(bytes)))
        });
        let table = crate::route::RouteTable::new(&cfg.hops[0].routes);
        let route = table.lookup("/lgsp/v1/HoSoCBCCVC").unwrap().clone();
        (ValidateLayer::new(policy, hop).layer(echo), route)
    }

    fn request(route: &Arc<Route>, ctype: Option<&str>, body: &str) -> Request<Body> {
        let mut b = Request::builder().method("POST").uri("/lgsp/v1/HoSoCBCCVC");
        if let Some(c) = ctype {
            b = b.header(header::CONTENT_TYPE, c);
        }
        let mut req = b.body(full(body.to_owned())).unwrap();
        req.extensions_mut().insert(route.clone());
        req.extensions_mut().insert(Caller {
            agency: Arc::from("000.00.00.H29"),
            kind: KeyKind::Production,
            via: None,
        });
        req
    }

    fn refusal(r: Result<Response<Body>, BoxError>) -> PacketError {
        *r.unwrap_err().downcast::<PacketError>().unwrap()
    }

    #[tokio::test]
    async fn a_good_packet_reaches_the_inner_service_unchanged() {
        let (svc, route) = service();
        let resp = svc
            .oneshot(request(&route, Some("application/xml"), GOOD))
            .await
            .unwrap();
        assert_eq!(
            resp.into_body().collect().await.unwrap().to_bytes(),
            GOOD.as_bytes()
        );
    }

    #[tokio::test]
    async fn refusals_have_their_status() {
        let (svc, route) = service();
        let e = refusal(
            svc.clone()
                .oneshot(request(&route, Some("text/plain"), GOOD))
                .await,
        );
        assert_eq!(
            (e.status(), e.code()),
            (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "packet.unsupported_media_type"
            )
        );
        let e = refusal(svc.clone().oneshot(request(&route, None, GOOD)).await);
        assert_eq!(e.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let bad = GOOD.replace("<GioiTinh>Nam</GioiTinh>", "<GioiTinh>X</GioiTinh>");
        let e = refusal(
            svc.clone()
                .oneshot(request(&route, Some("application/xml"), &bad))
                .await,
        );
        assert_eq!(
            (e.status(), e.errors().unwrap()[0].rule),
            (StatusCode::UNPROCESSABLE_ENTITY, "xsd.enumeration")
        );
        let e = refusal(
            svc.clone()
                .oneshot(request(&route, Some("application/xml"), "<x"))
                .await,
        );
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        let other = GOOD.replace("000.00.00.H29", "000.00.00.H26");
        let e = refusal(
            svc.clone()
                .oneshot(request(&route, Some("application/xml"), &other))
                .await,
        );
        assert_eq!(e.code(), "authz.unit_outside_jurisdiction");
        let mut big = request(&route, Some("application/xml"), GOOD);
        big.headers_mut()
            .insert(header::CONTENT_LENGTH, "999999999".parse().unwrap());
        let e = refusal(svc.oneshot(big).await);
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[test]
    fn unit_patterns() {
        assert!(unit_matches("*.H29", "000.00.00.H29"));
        assert!(unit_matches("*.H29", "000.01.00.H29"));
        assert!(!unit_matches("*.H29", "000.00.00.H26"));
        assert!(unit_matches("000.00.00.H29", "000.00.00.H29"));
        assert!(!unit_matches("000.00.00.H29", "000.00.00.H290"));
        assert!(unit_matches("000.*.00.H29", "000.12.00.H29"));
        assert!(unit_matches("*", "anything"));
        assert!(!unit_matches("A*B*C", "AC"));
    }
}
