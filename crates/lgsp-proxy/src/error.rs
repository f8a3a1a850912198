//! Failures of the proxy's own layers, and the one place every error becomes RFC 9457 problem+json.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use lgsp_auth::AuthError;
use serde::Serialize;

use crate::BoxError;
use crate::body::Body;

/// Whose fault a failure is; logs and the `class` field of problems say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Blame {
    Client,
    Upstream,
    Gateway,
}

/// How an upstream exchange failed (`kind` label of `lgsp_upstream_errors_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    Connect,
    Tls,
    Timeout,
    Protocol,
}

impl UpstreamFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamFailure::Connect => "connect",
            UpstreamFailure::Tls => "tls",
            UpstreamFailure::Timeout => "timeout",
            UpstreamFailure::Protocol => "protocol",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route for {path}")]
    RouteNotFound { path: String },
    #[error("{method} not allowed on route {route}")]
    MethodNotAllowed {
        route: Arc<str>,
        method: String,
        allow: String,
    },
    #[error("agency {agency} may not use route {route}")]
    AgencyNotAllowed { route: Arc<str>, agency: Arc<str> },
    #[error("invalid hop header {header}: {reason}")]
    BadHopHeader {
        header: &'static str,
        reason: String,
    },
    #[error("request already passed hop {hop} ({hops})")]
    HopLoop { hop: Arc<str>, hops: String },
    #[error("route {route} takes no trial traffic")]
    TrialNotOffered { route: Arc<str> },
    #[error("upstream {upstream} failed ({}): {message}", kind.as_str())]
    Upstream {
        upstream: String,
        kind: UpstreamFailure,
        message: String,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

impl ProxyError {
    fn status(&self) -> StatusCode {
        match self {
            ProxyError::RouteNotFound { .. } => StatusCode::NOT_FOUND,
            ProxyError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::AgencyNotAllowed { .. } => StatusCode::FORBIDDEN,
            ProxyError::BadHopHeader { .. } => StatusCode::BAD_REQUEST,
            ProxyError::HopLoop { .. } => StatusCode::LOOP_DETECTED,
            ProxyError::TrialNotOffered { .. } => StatusCode::FORBIDDEN,
            ProxyError::Upstream {
                kind: UpstreamFailure::Timeout,
                ..
            } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ProxyError::RouteNotFound { .. } => "route.not_found",
            ProxyError::MethodNotAllowed { .. } => "route.method_not_allowed",
            ProxyError::AgencyNotAllowed { .. } => "route.agency_not_allowed",
            ProxyError::BadHopHeader { .. } => "hop.bad_header",
            ProxyError::HopLoop { .. } => "hop.loop_detected",
            ProxyError::TrialNotOffered { .. } => "trial.not_offered",
            ProxyError::Upstream {
                kind: UpstreamFailure::Connect,
                ..
            } => "upstream.unreachable",
            ProxyError::Upstream {
                kind: UpstreamFailure::Tls,
                ..
            } => "upstream.tls_failed",
            ProxyError::Upstream {
                kind: UpstreamFailure::Timeout,
                ..
            } => "upstream.timeout",
            ProxyError::Upstream {
                kind: UpstreamFailure::Protocol,
                ..
            } => "upstream.protocol_error",
            ProxyError::Internal(_) => "gateway.internal",
        }
    }

    fn blame(&self) -> Blame {
        match self {
            ProxyError::Upstream { .. } => Blame::Upstream,
            ProxyError::Internal(_) => Blame::Gateway,
            _ => Blame::Client,
        }
    }

    fn detail(&self) -> String {
        match self {
            ProxyError::RouteNotFound { path } => format!(
                "No route of this gateway matches {path}; check the path against the routes the LGSP operator published (e.g. /lgsp/v1/HoSoCBCCVC)."
            ),
            ProxyError::MethodNotAllowed { method, allow, .. } => {
                format!("{method} is not accepted on this route; use {allow}.")
            }
            ProxyError::AgencyNotAllowed { route, agency } => format!(
                "Agency {agency} is not allowed on route {route}; ask the LGSP operator to add it to the route's `agencies`."
            ),
            ProxyError::BadHopHeader { header, reason } => {
                format!(
                    "The relaying gateway sent an invalid {header} ({reason}); fix the relaying hop."
                )
            }
            ProxyError::HopLoop { hop, hops } => format!(
                "The request already passed hop {hop} (X-LGSP-Hops: {hops}); a route points back at an earlier hop — fix the upstream URLs."
            ),
            ProxyError::TrialNotOffered { route } => format!(
                "Route {route} takes no trial-mode traffic at this hop; send it with a production key once your agency is official, or ask the operator to set the route's `trial_upstream`."
            ),
            ProxyError::Upstream {
                upstream,
                kind: UpstreamFailure::Timeout,
                ..
            } => format!(
                "Upstream {upstream} did not answer within the route's timeout; retry later with the same X-LGSP-Message-Id (resends are safe)."
            ),
            ProxyError::Upstream { upstream, kind, .. } => format!(
                "Upstream {upstream} could not be reached ({}); retry later with the same X-LGSP-Message-Id, and tell the LGSP operator if it persists.",
                kind.as_str()
            ),
            ProxyError::Internal(_) => {
                "The gateway failed on its own; tell the LGSP operator the message id.".into()
            }
        }
    }
}

/// The problem document (RFC 9457) every refusal carries.
#[derive(Debug, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: String,
    pub status: u16,
    /// Stable machine-readable code (README table).
    pub code: &'static str,
    pub detail: String,
    pub instance: Option<String>,
    pub message_id: Option<String>,
    pub hop: String,
    pub class: Blame,
    /// What is wrong with a packet, one entry per violation: {path, line, column, rule, message}.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<lgsp_schema::Violation>>,
}

/// What an error becomes at the edge: status, code, blame and the problem body; also what logs and metrics read.
pub struct Rescued {
    pub status: StatusCode,
    pub code: &'static str,
    pub blame: Blame,
    pub detail: String,
    /// Extra response headers (`Allow`, `Retry-After`, `RateLimit-*`).
    pub headers: Vec<(&'static str, String)>,
    pub log: String,
    pub errors: Option<Vec<lgsp_schema::Violation>>,
}

/// Maps any error of the stack to its problem (linkerd's `ServerRescue`, in one place).
pub fn rescue(e: &BoxError) -> Rescued {
    if let Some(a) = e.downcast_ref::<AuthError>() {
        return Rescued {
            status: a.status(),
            code: a.code(),
            blame: Blame::Client,
            detail: a.detail(),
            headers: Vec::new(),
            log: a.to_string(),
            errors: None,
        };
    }
    if let Some(l) = e.downcast_ref::<crate::limit::LimitError>() {
        use crate::limit::LimitError as L;
        let (status, code, detail) = match l {
            L::RateLimited { route, agency, .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "ratelimit.exceeded",
                format!("Agency {agency} sends faster than route {route} allows; wait Retry-After seconds and resend with the same X-LGSP-Message-Id (RateLimit-Policy gives the quota)."),
            ),
            L::Overloaded { scope, .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "overload.shed",
                format!("The gateway has too many requests in flight ({scope}); resend after Retry-After seconds."),
            ),
            L::BackendUnavailable { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "ratelimit.backend_unavailable",
                "The shared rate-limit store is unreachable and the gateway is set to refuse meanwhile; resend after Retry-After seconds.".to_owned(),
            ),
        };
        let blame = if matches!(l, L::RateLimited { .. }) {
            Blame::Client
        } else {
            Blame::Gateway
        };
        return Rescued {
            status,
            code,
            blame,
            detail,
            headers: l.headers(),
            log: l.to_string(),
            errors: None,
        };
    }
    if let Some(p) = e.downcast_ref::<crate::validate::PacketError>() {
        return Rescued {
            status: p.status(),
            code: p.code(),
            blame: Blame::Client,
            detail: p.detail(),
            headers: Vec::new(),
            log: p.to_string(),
            errors: p.errors().map(<[lgsp_schema::Violation]>::to_vec),
        };
    }
    if let Some(p) = e.downcast_ref::<ProxyError>() {
        let headers = match p {
            ProxyError::MethodNotAllowed { allow, .. } => vec![("allow", allow.clone())],
            _ => Vec::new(),
        };
        return Rescued {
            status: p.status(),
            code: p.code(),
            blame: p.blame(),
            detail: p.detail(),
            headers,
            log: p.to_string(),
            errors: None,
        };
    }
    Rescued {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        code: "gateway.internal",
        blame: Blame::Gateway,
        detail: "The gateway failed on its own; tell the LGSP operator the message id.".into(),
        headers: Vec::new(),
        log: e.to_string(),
        errors: None,
    }
}

impl Rescued {
    /// The problem+json response.
    pub fn into_response(self, hop: &str, message_id: Option<&str>) -> http::Response<Body> {
        let problem = Problem {
            type_uri: format!("https://lgsp-gateway.dev/problems/{}", self.code),
            title: self.status.canonical_reason().unwrap_or("Error").to_owned(),
            status: self.status.as_u16(),
            code: self.code,
            detail: self.detail,
            instance: message_id.map(|id| format!("urn:uuid:{id}")),
            message_id: message_id.map(str::to_owned),
            hop: hop.to_owned(),
            class: self.blame,
            errors: self.errors,
        };
        let json = serde_json::to_vec(&problem).unwrap_or_default();
        let mut resp = Response::new(
            Full::new(Bytes::from(json))
                .map_err(|never| match never {})
                .boxed_unsync(),
        );
        *resp.status_mut() = self.status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        for (name, value) in self.headers {
            if let Ok(v) = HeaderValue::from_str(&value) {
                resp.headers_mut().insert(name, v);
            }
        }
        resp
    }
}
