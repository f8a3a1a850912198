//! `ValidateLayer`: the body limit of every route, and for routes that carry a CBCCVC message type, the packet
//! check — Content-Type → XML or JSON (else 415), whole body read within the limit (else 413), schema and domain
//! rules (400 malformed / 422 invalid with every error), the jurisdiction of the packet's MaDonVi (403), and for
//! approvals (`PheDuyetDuLieu`) their two signatures (422, `signature.*`; `lgsp_sign`). A good packet is forwarded
//! byte for byte. A dry-run route answers the verdict here.

use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response, header};
use http_body_util::{BodyExt, Limited};
use lgsp_auth::{AuthError, Caller, HopSigned};
use lgsp_config::AgencyConfig;
use lgsp_problem::{BoxProblem, Internal, Violation};
use lgsp_schema::{Catalog, Format, Options};
use tower::{Layer, Service};

use lgsp_hop::HopContext;
use lgsp_hop::body::{Body, BodyError, declared_length, full, read_body};
use lgsp_hop::route::Route;
use lgsp_hop::step::{Answer, Next, Step, unnamed};

pub use lgsp_delivery::PacketFacts;
pub use lgsp_hop::packet::PacketError;

/// Bodies above this size are validated on the blocking pool, not on the reactor.
const INLINE_LIMIT: usize = 256 * 1024;

/// Levels of a unit code (mã định danh điện tử, QĐ 20/2020/QĐ-TTg): `level4.level3.level2.level1`, e.g.
/// `000.00.15.H26` is unit 15 (level 2) of H26 (level 1).
const UNIT_LEVELS: usize = 4;

/// A unit-code pattern (MaDonVi), matched segment by segment: `*` stands for exactly one whole segment, and a
/// leading `*` in a shorter pattern for every level above the ones written (`*.H29` is `*.*.*.H29`; `*.15.H26`
/// is `*.*.15.H26`). A pattern without `*` is one exact code. Split once at load.
#[derive(Debug, Clone)]
pub struct UnitPattern {
    /// One entry per level, `None` for `*`; or the exact code.
    shape: Result<Vec<Option<Box<str>>>, Box<str>>,
}

impl UnitPattern {
    pub fn new(pattern: &str) -> Self {
        if !pattern.contains('*') {
            return UnitPattern {
                shape: Err(pattern.into()),
            };
        }
        let mut segments: Vec<Option<Box<str>>> = pattern
            .split('.')
            .map(|s| (s != "*").then(|| s.into()))
            .collect();
        if segments.first().is_some_and(Option::is_none) && segments.len() < UNIT_LEVELS {
            let fill = UNIT_LEVELS - segments.len();
            segments.splice(0..0, std::iter::repeat_n(None, fill));
        }
        UnitPattern {
            shape: Ok(segments),
        }
    }

    pub fn matches(&self, unit: &str) -> bool {
        match &self.shape {
            Err(exact) => **exact == *unit,
            Ok(segments) => {
                let mut parts = unit.split('.');
                segments.iter().all(|want| match (parts.next(), want) {
                    (Some(got), None) => !got.is_empty(),
                    (Some(got), Some(want)) => got == &**want,
                    (None, _) => false,
                }) && parts.next().is_none()
            }
        }
    }
}

/// Whether `unit` matches `pattern` (see [`UnitPattern`]).
pub fn unit_matches(pattern: &str, unit: &str) -> bool {
    UnitPattern::new(pattern).matches(unit)
}

/// An agency's jurisdiction: its unit patterns, compiled, and as written (for the refusal's detail).
#[derive(Debug)]
struct Jurisdiction {
    patterns: Vec<UnitPattern>,
    written: String,
}

/// What the layer validates with.
pub struct ValidationPolicy {
    pub catalog: Arc<Catalog>,
    pub options: Options,
    /// `options` for trial-mode requests and dry runs, whose answers list every error up to `trial_max_errors`.
    full_options: Options,
    units: HashMap<String, Jurisdiction>,
    /// How approvals' signatures are checked (`[signing]`); `None`: approvals are refused.
    signing: Option<Arc<lgsp_sign::Policy>>,
    /// Approved profiles are checked against the journal (`[signing] check_coverage`).
    coverage: bool,
}

/// The message type whose packets carry signatures.
pub const APPROVAL: &str = "PheDuyetDuLieu";

impl ValidationPolicy {
    pub fn new(
        catalog: Arc<Catalog>,
        options: Options,
        trial_max_errors: usize,
        agencies: &[AgencyConfig],
    ) -> Self {
        let mut full_options = options.clone();
        full_options.limits.max_errors = trial_max_errors.max(options.limits.max_errors);
        ValidationPolicy {
            catalog,
            options,
            full_options,
            units: agencies
                .iter()
                .map(|a| {
                    let j = Jurisdiction {
                        patterns: a.units.iter().map(|u| UnitPattern::new(u)).collect(),
                        written: a.units.join(", "),
                    };
                    (a.code.clone(), j)
                })
                .collect(),
            signing: None,
            coverage: false,
        }
    }

    /// Checks approvals' signatures with `policy` (`None`: refuses them), and with `coverage` their profiles
    /// against the journal.
    pub fn signing(mut self, policy: Option<Arc<lgsp_sign::Policy>>, coverage: bool) -> Self {
        self.signing = policy;
        self.coverage = coverage;
        self
    }

    /// The signatures of an approval sent by `agency`, checked now: the verified approval, or every problem.
    fn signatures(
        &self,
        format: Format,
        bytes: &[u8],
        agency: &str,
    ) -> Result<lgsp_sign::Approval, Vec<Violation>> {
        let Some(policy) = &self.signing else {
            return Err(vec![Violation {
                path: format!("/{APPROVAL}"),
                line: None,
                column: None,
                rule: "signature.untrusted",
                message: "this gateway has no signing CAs ([signing] ca), so it cannot tell a signed approval from a forged one; the operator must configure them".into(),
            }]);
        };
        let now = Some(time::OffsetDateTime::now_utc());
        match format {
            Format::Xml => policy.verify_xml(bytes, Some(agency), now),
            Format::Json => policy.verify_json(bytes, Some(agency), now),
        }
    }

    /// Until when an approval's profiles count: the close of its window (its month's end and the lateness),
    /// or now if earlier; `None` when coverage is not checked.
    fn coverage_until(&self, approval: &lgsp_sign::Approval) -> Option<i64> {
        let policy = self.signing.as_ref().filter(|_| self.coverage)?;
        let now = time::OffsetDateTime::now_utc();
        let close = lgsp_sign::approval::month_end(&approval.month)
            .map_or(now, |end| end + policy.window.lateness)
            .min(now);
        i64::try_from(close.unix_timestamp_nanos() / 1000).ok()
    }

    /// Schema, domain rules and jurisdiction of one packet.
    fn check(
        &self,
        hop: &HopContext,
        route: &Route,
        caller: &Caller,
        ask: Ask,
        bytes: &[u8],
    ) -> Result<PacketFacts, PacketError> {
        let options = if ask.full_errors {
            &self.full_options
        } else {
            &self.options
        };
        let report = self
            .catalog
            .validate(ask.message_type, ask.format, bytes, options);
        let count = |rule: &str| {
            hop.metrics
                .validation_failures
                .with_label_values(&[&*hop.name, &route.name, ask.message_type, rule])
                .inc();
        };
        let mut rules: Vec<&'static str> = report.violations.iter().map(|v| v.rule).collect();
        rules.sort_unstable();
        rules.dedup();
        rules.iter().for_each(|r| count(r));
        if report.malformed {
            return Err(PacketError::Malformed {
                violations: report.violations,
            });
        }
        let jurisdiction = self.units.get(&*caller.agency);
        let outside = report.units.iter().find(|u| {
            !jurisdiction.is_some_and(|j| j.patterns.iter().any(|p| p.matches(&u.value)))
        });
        if let Some(unit) = outside {
            count("authz.unit_outside_jurisdiction");
            return Err(PacketError::OutsideJurisdiction {
                agency: caller.agency.clone(),
                unit: unit.value.clone(),
                patterns: jurisdiction.map(|j| j.written.clone()).unwrap_or_default(),
                violation: Box::new(Violation {
                    path: unit.path.clone(),
                    line: unit.line,
                    column: unit.column,
                    rule: "authz.unit_outside_jurisdiction",
                    message: format!(
                        "MaDonVi {} is outside the units of agency {}",
                        unit.value, caller.agency
                    ),
                }),
            });
        }
        if !report.is_valid() {
            return Err(PacketError::Invalid {
                violations: report.violations,
                truncated: report.truncated,
            });
        }
        let mut facts = PacketFacts {
            subject: report.subject,
            ..PacketFacts::default()
        };
        if ask.message_type == APPROVAL {
            match self.signatures(ask.format, bytes, &caller.agency) {
                Ok(approval) => {
                    facts.coverage_until_us = self.coverage_until(&approval);
                    facts.approval = Some(Arc::new(approval));
                }
                Err(violations) => {
                    let mut rules: Vec<&'static str> = violations.iter().map(|v| v.rule).collect();
                    rules.sort_unstable();
                    rules.dedup();
                    rules.iter().for_each(|r| count(r));
                    return Err(PacketError::Invalid {
                        violations,
                        truncated: false,
                    });
                }
            }
        }
        Ok(facts)
    }
}

/// What a body is checked as.
#[derive(Clone, Copy)]
struct Ask {
    message_type: &'static str,
    format: Format,
    /// List every error (trial mode, dry runs), up to `trial_max_errors`.
    full_errors: bool,
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

impl<S> Layer<S> for ValidateLayer {
    type Service = Validate<S>;

    fn layer(&self, inner: S) -> Validate<S> {
        Validate {
            inner,
            policy: self.policy.clone(),
            hop: self.hop.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Validate<S> {
    inner: S,
    policy: Arc<ValidationPolicy>,
    hop: Arc<HopContext>,
}

/// What the packet's headers declare it as: one Content-Type, XML or JSON, in UTF-8, unencoded.
fn packet_format(headers: &http::HeaderMap) -> Result<Format, PacketError> {
    let count = headers.get_all(header::CONTENT_TYPE).iter().count();
    if count > 1 {
        return Err(PacketError::AmbiguousContentType { count });
    }
    if let Some(enc) = headers.get(header::CONTENT_ENCODING) {
        let got = String::from_utf8_lossy(enc.as_bytes()).trim().to_owned();
        if !got.eq_ignore_ascii_case("identity") {
            return Err(PacketError::UnsupportedEncoding {
                got: got.chars().take(64).collect(),
            });
        }
    }
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let Some(format) = ctype.and_then(Format::from_content_type) else {
        let got = ctype.map(str::to_owned);
        return Err(PacketError::UnsupportedMediaType { got });
    };
    let charset = ctype
        .into_iter()
        .flat_map(|c| c.split(';').skip(1))
        .find_map(|param| {
            let (name, value) = param.split_once('=')?;
            name.trim()
                .eq_ignore_ascii_case("charset")
                .then(|| value.trim().trim_matches('"').to_owned())
        });
    match charset {
        Some(c) if !c.eq_ignore_ascii_case("utf-8") && !c.eq_ignore_ascii_case("utf8") => {
            Err(PacketError::UnsupportedCharset {
                got: c.chars().take(64).collect(),
            })
        }
        _ => Ok(format),
    }
}

/// The message type a request to `route` carries: its configured one, or on a dry-run route the path's last
/// segment (`{prefix}/{MessageType}`). `Ok(None)`: no packet on this route.
fn message_type(route: &Route, path: &str) -> Result<Option<&'static str>, BoxProblem> {
    let c = &route.config;
    let (name, dry_run) = if c.dry_run {
        let rest = path.get(c.prefix.len()..).unwrap_or_default();
        (rest.trim_matches('/'), true)
    } else {
        match &c.message_type {
            Some(m) => (m.as_str(), false),
            None => return Ok(None),
        }
    };
    match lgsp_schema::MESSAGE_TYPES.iter().find(|t| **t == name) {
        Some(t) => Ok(Some(t)),
        None if dry_run => Err(PacketError::UnknownMessageType {
            got: name.chars().take(64).collect(),
            known: lgsp_schema::MESSAGE_TYPES,
        }
        .into()),
        None => Err(Internal(format!("route {} names no message type", route.name)).into()),
    }
}

impl<S: Next> Service<Request<Body>> for Validate<S> {
    type Response = Response<Body>;
    type Error = BoxProblem;
    type Future = Step<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxProblem>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let Some(route) = req.extensions().get::<Arc<Route>>().cloned() else {
            return Step::refuse(Internal("validate reached without a route".into()));
        };
        let limit = route.config.max_body_bytes;
        if declared_length(req.headers()).is_some_and(|n| n > limit as u64) {
            return Step::refuse(BodyError::TooLarge { limit });
        }
        let message_type = match message_type(&route, req.uri().path()) {
            Ok(Some(t)) => t,
            // A peer's signed body is read whole and checked against its Content-Digest first.
            Ok(None) if req.extensions().get::<HopSigned>().is_some() => {
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                let hop = self.hop.clone();
                return Step::wait(async move {
                    let (parts, body) = req.into_parts();
                    let bytes = read_body(body, limit).await?;
                    signed_digest(&hop, &parts, &bytes)?;
                    unnamed(inner.call(Request::from_parts(parts, full(bytes)))).await
                });
            }
            // No packet to check: stream the body through, cut at the limit.
            Ok(None) => {
                return Step::inner(
                    self.inner
                        .call(req.map(|b| Limited::new(b, limit).boxed_unsync())),
                );
            }
            Err(e) => return Step::refuse(e),
        };
        let format = match packet_format(req.headers()) {
            Ok(f) => f,
            Err(e) => return Step::refuse(e),
        };
        let Some(caller) = req.extensions().get::<Caller>().cloned() else {
            return Step::refuse(Internal("validate reached without a caller".into()));
        };
        let ask = Ask {
            message_type,
            format,
            // A dry run is a diagnosis: it lists every error, as trial mode does.
            full_errors: route.config.dry_run || caller.kind == lgsp_config::KeyKind::Trial,
        };
        // The packet is read whole before anything is decided: the one path that waits.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let (policy, hop) = (self.policy.clone(), self.hop.clone());
        Step::wait(packet(inner, policy, hop, route, caller, ask, req))
    }
}

async fn packet<S: Next>(
    mut inner: S,
    policy: Arc<ValidationPolicy>,
    hop: Arc<HopContext>,
    route: Arc<Route>,
    caller: Caller,
    ask: Ask,
    req: Request<Body>,
) -> Answer {
    let (parts, body) = req.into_parts();
    let bytes = read_body(body, route.config.max_body_bytes).await?;
    signed_digest(&hop, &parts, &bytes)?;
    let dry_run = route.config.dry_run;
    let checked = if bytes.len() > INLINE_LIMIT {
        let (b, r, h) = (bytes.clone(), route.clone(), hop.clone());
        tokio::task::spawn_blocking(move || policy.check(&h, &r, &caller, ask, &b))
            .await
            .map_err(|e| Internal(format!("validation task: {e}")))?
    } else {
        policy.check(&hop, &route, &caller, ask, &bytes)
    };
    let facts = checked?;
    if dry_run {
        return Ok(verdict(&hop, ask, bytes.len()));
    }
    let mut req = Request::from_parts(parts, full(bytes));
    req.extensions_mut().insert(facts);
    unnamed(inner.call(req)).await
}

/// A peer's body must be what its hop signature covers: the `Content-Digest` it signed is this body's SHA-256.
fn signed_digest(
    hop: &HopContext,
    parts: &http::request::Parts,
    bytes: &[u8],
) -> Result<(), AuthError> {
    let Some(HopSigned(signed)) = parts.extensions.get::<HopSigned>() else {
        return Ok(());
    };
    let sent = parts
        .headers
        .get("content-digest")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if sent == lgsp_sign::http::content_digest(bytes) {
        return Ok(());
    }
    let e = AuthError::HopSignatureInvalid {
        peer: signed.keyid.clone(),
        why: "the body is not the one its signed Content-Digest names (changed on the way, or sent twice with another body)".into(),
    };
    hop.metrics.auth_failure(&hop.name, e.reason());
    Err(e)
}

/// A dry run's answer for a valid packet (an invalid one gets the problem the packet route would answer).
fn verdict(hop: &HopContext, ask: Ask, bytes: usize) -> Response<Body> {
    let body = serde_json::json!({
        "valid": true,
        "message_type": ask.message_type,
        "format": match ask.format {
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

/// Exports `lgsp_validation_failures_total` at 0 for every (route, message type, rule) this hop can count, so
/// dashboards and alerts see 0 before the first refusal.
pub fn export_rules(hop: &HopContext, routes: &[lgsp_config::RouteConfig]) {
    for r in routes {
        let types: Vec<&str> = match (&r.message_type, r.dry_run) {
            (Some(t), _) => vec![t.as_str()],
            (None, true) => lgsp_schema::MESSAGE_TYPES.to_vec(),
            (None, false) => continue,
        };
        for t in types {
            let (signatures, coverage) = if t == APPROVAL {
                (lgsp_sign::RULES, lgsp_delivery::coverage::RULES)
            } else {
                (&[][..], &[][..])
            };
            for rule in lgsp_schema::RULES
                .iter()
                .chain(&["authz.unit_outside_jurisdiction"])
                .chain(signatures)
                .chain(coverage)
            {
                hop.metrics
                    .validation_failures
                    .with_label_values(&[&*hop.name, &r.name, t, rule]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;
    use lgsp_config::KeyKind;
    use lgsp_metrics::Metrics;
    use lgsp_problem::Problem;
    use tower::ServiceExt;

    const GOOD: &str =
        include_str!("../../../schemas/cbccvc/samples/valid/HoSoCBCCVC-02-toi-thieu.xml");

    type Echo = tower::util::BoxCloneSyncService<Request<Body>, Response<Body>, BoxProblem>;

    fn service() -> (Validate<Echo>, Arc<Route>) {
        let cfg = lgsp_config::embedded().unwrap();
        let catalog = Arc::new(Catalog::embedded().unwrap());
        let policy = Arc::new(ValidationPolicy::new(
            catalog,
            Options::default(),
            1000,
            &cfg.agencies,
        ));
        let hop = Arc::new(HopContext::new("lgsp", &[], Metrics::new().unwrap()));
        let echo = tower::service_fn(|req: Request<Body>| async move {
            let bytes = req
                .into_body()
                .collect()
                .await
                .map_err(|e| BodyError::Unreadable(e.to_string()))?
                .to_bytes();
            Ok::<_, BoxProblem>(Response::new(full(bytes)))
        });
        let table = lgsp_hop::route::RouteTable::new(&hop, &cfg.hops[0].routes);
        let route = table.lookup("/lgsp/v1/HoSoCBCCVC").unwrap().clone();
        (
            ValidateLayer::new(policy, hop).layer(tower::util::BoxCloneSyncService::new(echo)),
            route,
        )
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

    fn refusal(r: Result<Response<Body>, BoxProblem>) -> BoxProblem {
        r.unwrap_err()
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
            (e.status(), e.errors()[0].rule),
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
    fn a_packet_is_one_content_type_in_utf_8_unencoded() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = http::HeaderMap::new();
            for (k, v) in pairs {
                h.append(*k, http::HeaderValue::from_static(v));
            }
            packet_format(&h).map_err(|e| e.code())
        };
        assert_eq!(
            headers(&[("content-type", "application/xml")]),
            Ok(Format::Xml)
        );
        assert_eq!(
            headers(&[("content-type", "application/json; charset=UTF-8")]),
            Ok(Format::Json)
        );
        assert_eq!(
            headers(&[("content-type", "text/xml;charset=\"utf-8\"")]),
            Ok(Format::Xml)
        );
        assert_eq!(
            headers(&[("content-type", "application/xml; charset=iso-8859-1")]),
            Err("packet.unsupported_charset")
        );
        assert_eq!(
            headers(&[("content-type", "application/json; charset=utf-16")]),
            Err("packet.unsupported_charset")
        );
        assert_eq!(
            headers(&[
                ("content-type", "application/xml"),
                ("content-encoding", "gzip")
            ]),
            Err("packet.unsupported_encoding")
        );
        assert_eq!(
            headers(&[
                ("content-type", "application/xml"),
                ("content-encoding", "identity")
            ]),
            Ok(Format::Xml)
        );
        assert_eq!(
            headers(&[
                ("content-type", "application/xml"),
                ("content-type", "text/plain")
            ]),
            Err("packet.ambiguous_content_type")
        );
        assert_eq!(headers(&[]), Err("packet.unsupported_media_type"));
    }

    #[test]
    fn unit_patterns_match_whole_segments_of_four_level_codes() {
        assert!(unit_matches("*.H29", "000.00.00.H29"));
        assert!(unit_matches("*.H29", "000.01.00.H29"));
        assert!(!unit_matches("*.H29", "000.00.00.H26"));
        // A code that only ends like H29's units, or has more levels, is not one of them.
        assert!(!unit_matches("*.H29", "000.00.00.H26.H29"));
        assert!(!unit_matches("*.H29", "000.00.00.XH29"));
        assert!(!unit_matches("*.H29", "00.00.H29"));
        assert!(unit_matches("*.15.H26", "001.02.15.H26"));
        assert!(!unit_matches("*.15.H26", "001.02.16.H26"));
        assert!(unit_matches("000.00.00.H29", "000.00.00.H29"));
        assert!(!unit_matches("000.00.00.H29", "000.00.00.H290"));
        assert!(unit_matches("000.*.00.H29", "000.12.00.H29"));
        assert!(!unit_matches("000.*.00.H29", "000.1.2.00.H29"));
        assert!(unit_matches("*", "000.00.00.H29"));
        assert!(!unit_matches("*.H29", "000..00.H29"));
    }
}
