//! Errors that describe themselves. Every failure a request can meet implements [`Problem`] next to where it
//! happens (in the crate that owns it): its HTTP status, a stable code, whose fault it is, what the caller should
//! do, extra headers and, for packets, the located violations. The edge of the stack renders any of them as RFC
//! 9457 `application/problem+json` by asking, with no table of error types: [`response`].
#![forbid(unsafe_code)]

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode, header};
use serde::Serialize;

/// Whose fault a failure is: the `class` member of problems, and how logs rate it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    /// The caller sent something to fix (400s).
    Client,
    /// Something behind the gateway failed (502, 504).
    Upstream,
    /// The gateway itself failed or is overloaded.
    Gateway,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Client => "client",
            Class::Upstream => "upstream",
            Class::Gateway => "gateway",
        }
    }
}

/// One thing wrong with a packet, located: an entry of a problem's `errors` member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// Where, as `/HoSoCBCCVC/QuaTrinhCongTac[2]/NgayBatDau` (attributes as `/@name`).
    pub path: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// Stable rule code, e.g. `xsd.pattern`, `json.required`, `cccd.province`.
    pub rule: &'static str,
    pub message: String,
}

/// A failure that knows how it is answered. `Display` is the operator's one-line account (logs); `detail` is the
/// caller's, naming the fix.
pub trait Problem: std::error::Error + Send + Sync + 'static {
    fn status(&self) -> StatusCode;
    /// Stable machine-readable code (the README's error table), e.g. `auth.unknown_key`.
    fn code(&self) -> &'static str;
    /// Whose fault it is.
    fn class(&self) -> Class {
        Class::Client
    }
    /// What is wrong and what to do about it, for the caller.
    fn detail(&self) -> String;
    /// Headers the answer carries besides the problem (`Allow`, `Retry-After`, `RateLimit-*`).
    fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        Vec::new()
    }
    /// The located violations of a refused packet (`errors`).
    fn errors(&self) -> &[Violation] {
        &[]
    }
}

/// The error type of every service in the request path: any failure that can describe itself.
pub type BoxProblem = Box<dyn Problem>;

impl<P: Problem> From<P> for BoxProblem {
    fn from(p: P) -> BoxProblem {
        Box::new(p)
    }
}

/// A fault of the gateway itself (a layer reached without what an earlier one provides, a task that died).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Internal(pub String);

impl std::fmt::Display for Internal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "internal error: {}", self.0)
    }
}

impl std::error::Error for Internal {}

impl Problem for Internal {
    fn status(&self) -> StatusCode {
        StatusCode::INTERNAL_SERVER_ERROR
    }

    fn code(&self) -> &'static str {
        "gateway.internal"
    }

    fn class(&self) -> Class {
        Class::Gateway
    }

    fn detail(&self) -> String {
        "The gateway failed on its own; tell the LGSP operator the message id.".into()
    }
}

/// Where problem types are documented: `{TYPE_BASE}{code}`.
pub const TYPE_BASE: &str = "https://lgsp-gateway.dev/problems/";
pub const CONTENT_TYPE: &str = "application/problem+json";

/// The problem document (RFC 9457) every refusal carries.
#[derive(Debug, Serialize)]
pub struct Document<'a> {
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: &'static str,
    pub status: u16,
    /// Stable machine-readable code.
    pub code: &'static str,
    pub detail: String,
    pub instance: Option<String>,
    pub message_id: Option<&'a str>,
    /// The hop (or `emulator`) that answered.
    pub hop: &'a str,
    pub class: Class,
    /// What is wrong with a packet, one entry per violation: {path, line, column, rule, message}.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<&'a [Violation]>,
}

impl<'a> Document<'a> {
    pub fn of(p: &'a dyn Problem, hop: &'a str, message_id: Option<&'a str>) -> Self {
        let status = p.status();
        let errors = p.errors();
        Document {
            type_uri: format!("{TYPE_BASE}{}", p.code()),
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            code: p.code(),
            detail: p.detail(),
            instance: message_id.map(|id| format!("urn:uuid:{id}")),
            message_id,
            hop,
            class: p.class(),
            errors: (!errors.is_empty()).then_some(errors),
        }
    }
}

/// The problem+json answer to `p`, as hop `hop` gives it for the request `message_id`.
pub fn response(p: &dyn Problem, hop: &str, message_id: Option<&str>) -> Response<Bytes> {
    let json = serde_json::to_vec(&Document::of(p, hop, message_id)).unwrap_or_default();
    let mut resp = Response::new(Bytes::from(json));
    *resp.status_mut() = p.status();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    for (name, value) in p.headers() {
        h.insert(name, value);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Slow;

    impl std::fmt::Display for Slow {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("slow down")
        }
    }

    impl std::error::Error for Slow {}

    impl Problem for Slow {
        fn status(&self) -> StatusCode {
            StatusCode::TOO_MANY_REQUESTS
        }
        fn code(&self) -> &'static str {
            "test.slow"
        }
        fn detail(&self) -> String {
            "Wait.".into()
        }
        fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
            vec![(header::RETRY_AFTER, HeaderValue::from_static("3"))]
        }
    }

    #[test]
    fn any_problem_renders_itself_with_its_headers() {
        let p: BoxProblem = Slow.into();
        let resp = response(&*p, "lgsp", Some("0190a5a4-0000-7000-8000-000000000000"));
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()["content-type"], CONTENT_TYPE);
        assert_eq!(resp.headers()["retry-after"], "3");
        let doc: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
        assert_eq!(doc["type"], "https://lgsp-gateway.dev/problems/test.slow");
        assert_eq!(doc["title"], "Too Many Requests");
        assert_eq!(doc["class"], "client");
        assert_eq!(
            doc["instance"],
            "urn:uuid:0190a5a4-0000-7000-8000-000000000000"
        );
        assert!(doc.get("errors").is_none());
    }

    #[test]
    fn internal_faults_are_the_gateways() {
        let resp = response(&Internal("no route".into()), "ndxp", None);
        let doc: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
        assert_eq!(
            (
                doc["status"].as_u64(),
                doc["code"].as_str(),
                doc["class"].as_str()
            ),
            (Some(500), Some("gateway.internal"), Some("gateway"))
        );
        assert!(doc["message_id"].is_null());
        assert!(!doc["detail"].as_str().unwrap().contains("no route"));
    }
}
