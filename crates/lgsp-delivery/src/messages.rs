//! The messages API of a hop's journal, answered on a `messages = true` route: `GET {prefix}/{message id}` (one
//! message: status, outcome, receipt) and `GET {prefix}?from=&to=&status=&limit=&after=` (a page of them, oldest
//! first). Every look-up is bound to the caller's agency: another agency's message is not found, whatever its id.

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use lgsp_auth::Caller;
use lgsp_journal::{Journal, JournalError, Message, Query, Status};
use lgsp_problem::{BoxProblem, Internal, Problem};

use lgsp_hop::HopContext;
use lgsp_hop::body::{Body, full};
use lgsp_hop::route::Route;

/// Largest page of a listing; the default page.
pub const MAX_LIMIT: u32 = 1000;
pub const DEFAULT_LIMIT: u32 = 100;
/// The most of a refusal's reason a listing carries (the message itself has the whole receipt).
const REASON_CHARS: usize = 300;

#[derive(Debug, thiserror::Error)]
pub enum MessagesError {
    #[error("no message {id} of agency {agency} at this hop")]
    NotFound { id: String, agency: String },
    #[error("query parameter `{param}`: {reason}")]
    BadQuery { param: String, reason: String },
    #[error("the journal cannot be read: {0}")]
    Unavailable(String),
}

impl Problem for MessagesError {
    fn status(&self) -> StatusCode {
        match self {
            MessagesError::NotFound { .. } => StatusCode::NOT_FOUND,
            MessagesError::BadQuery { .. } => StatusCode::BAD_REQUEST,
            MessagesError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            MessagesError::NotFound { .. } => "messages.not_found",
            MessagesError::BadQuery { .. } => "messages.bad_query",
            MessagesError::Unavailable(_) => "journal.unavailable",
        }
    }

    fn class(&self) -> lgsp_problem::Class {
        match self {
            MessagesError::Unavailable(_) => lgsp_problem::Class::Gateway,
            _ => lgsp_problem::Class::Client,
        }
    }

    fn detail(&self) -> String {
        match self {
            MessagesError::NotFound { id, agency } => format!(
                "This hop holds no message {id} sent by agency {agency}; check the id (each agency sees only its own messages; the id is the X-LGSP-Message-Id of the answer to the packet)."
            ),
            MessagesError::BadQuery { param, reason } => format!(
                "Query parameter `{param}`: {reason}. Accepted: from, to (RFC 3339 times, or dates YYYY-MM-DD meaning midnight in Vietnam), status (in_progress, queued, delivered, rejected, failed, expired), limit (1–{MAX_LIMIT}, default {DEFAULT_LIMIT}), after (the `next` of the previous page)."
            ),
            MessagesError::Unavailable(_) => {
                "The gateway cannot read its journal right now; ask again later.".into()
            }
        }
    }

    fn headers(&self) -> Vec<(http::HeaderName, HeaderValue)> {
        match self {
            MessagesError::Unavailable(_) => {
                vec![(header::RETRY_AFTER, HeaderValue::from_static("5"))]
            }
            _ => Vec::new(),
        }
    }
}

fn bad(param: &str, reason: impl Into<String>) -> MessagesError {
    MessagesError::BadQuery {
        param: param.chars().take(64).collect(),
        reason: reason.into(),
    }
}

fn unavailable(e: JournalError) -> BoxProblem {
    MessagesError::Unavailable(e.to_string()).into()
}

pub use lgsp_journal::time::{parse_time, rfc3339};

/// A page cursor: the last message of a page, `{accepted_us}_{message_id}`.
fn cursor(m: &Message) -> String {
    format!("{}_{}", m.accepted_us, m.message_id)
}

fn parse_cursor(v: &str) -> Result<(i64, String), String> {
    v.split_once('_')
        .and_then(|(us, id)| Some((us.parse().ok()?, id.to_owned())))
        .filter(|(_, id)| !id.is_empty() && id.len() <= 64)
        .ok_or_else(|| {
            "not a cursor this gateway gave; pass the `next` of the previous page".into()
        })
}

/// The listing's filters from the query string; any parameter it does not know is refused, not ignored.
fn query(raw: Option<&str>, hop: &str, agency: &str) -> Result<Query, MessagesError> {
    let mut q = Query {
        hop: hop.to_owned(),
        agency: agency.to_owned(),
        limit: DEFAULT_LIMIT,
        ..Query::default()
    };
    for (k, v) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        match &*k {
            "from" => q.from_us = Some(parse_time(&v).map_err(|e| bad("from", e))?),
            "to" => q.to_us = Some(parse_time(&v).map_err(|e| bad("to", e))?),
            "status" => {
                q.status = Some(Status::parse(&v).ok_or_else(|| {
                    bad(
                        "status",
                        format!(
                            "`{}` is not a status",
                            v.chars().take(32).collect::<String>()
                        ),
                    )
                })?)
            }
            "limit" => {
                q.limit = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| bad("limit", format!("must be 1–{MAX_LIMIT}")))?
            }
            "after" => q.after = Some(parse_cursor(&v).map_err(|e| bad("after", e))?),
            other => return Err(bad(other, "not a parameter of this listing")),
        }
    }
    if let (Some(f), Some(t)) = (q.from_us, q.to_us)
        && f >= t
    {
        return Err(bad("to", "must be later than `from`"));
    }
    Ok(q)
}

/// The receipt as JSON when it is JSON, else as text.
fn receipt_value(r: &str) -> serde_json::Value {
    serde_json::from_str(r).unwrap_or_else(|_| serde_json::Value::String(r.to_owned()))
}

/// Why a message was not delivered, in a line: the upstream's problem (code: detail) or the gateway's note.
pub fn reason(m: &Message) -> Option<String> {
    if m.status == Status::Delivered {
        return None;
    }
    let from_receipt = m
        .receipt
        .as_deref()
        .and_then(|r| serde_json::from_str::<serde_json::Value>(r).ok())
        .and_then(|p| {
            let code = p.get("code")?.as_str()?.to_owned();
            let detail = p.get("detail").and_then(|d| d.as_str()).unwrap_or_default();
            Some(format!("{code}: {detail}"))
        });
    from_receipt
        .or_else(|| m.detail.clone())
        .map(|r| r.chars().take(REASON_CHARS).collect())
}

/// A message as an agency reads it; `whole` adds the receipt.
pub fn view(m: &Message, whole: bool) -> serde_json::Value {
    let mut v = serde_json::json!({
        "message_id": m.message_id,
        "status": m.status.as_str(),
        "route": m.route,
        "message_type": m.message_type,
        "mode": m.mode,
        "delivery": m.delivery.as_str(),
        "idempotency_key": m.idempotency_key,
        "sha256": m.body_sha256,
        "size": m.body_size,
        "accepted_at": rfc3339(m.accepted_us),
        "updated_at": rfc3339(m.updated_us),
        "attempts": m.attempts,
        "upstream_status": m.upstream_status,
        "reason": reason(m),
    });
    if whole && let Some(o) = v.as_object_mut() {
        o.insert(
            "receipt".into(),
            m.receipt
                .as_deref()
                .map_or(serde_json::Value::Null, receipt_value),
        );
        o.insert("detail".into(), m.detail.clone().into());
    }
    v
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(full(v.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // What one agency reads of its own messages is for it alone.
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Answers a request on a messages route.
pub async fn answer(
    journal: Journal,
    hop: &HopContext,
    route: &Route,
    req: Request<Body>,
) -> Result<Response<Body>, BoxProblem> {
    let caller = req
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Internal("messages reached without a caller".into()))?;
    if req.method() != Method::GET {
        return Err(Internal(format!("messages route answered {}", req.method())).into());
    }
    let rest = req
        .uri()
        .path()
        .get(route.config.prefix.len()..)
        .unwrap_or_default()
        .trim_start_matches('/');
    // Outcomes this process has not written yet (they are not waited for) are written before the read.
    journal.flush().await.map_err(unavailable)?;
    if rest.is_empty() {
        let q = query(req.uri().query(), &hop.name, &caller.agency)?;
        let page = journal.messages(&q).await.map_err(unavailable)?;
        let next = (page.len() == q.limit as usize)
            .then(|| page.last().map(cursor))
            .flatten();
        let body = serde_json::json!({
            "agency": &*caller.agency,
            "messages": page.iter().map(|m| view(m, false)).collect::<Vec<_>>(),
            "next": next,
        });
        return Ok(json(StatusCode::OK, &body));
    }
    let not_found = || MessagesError::NotFound {
        id: rest.chars().take(64).collect(),
        agency: caller.agency.to_string(),
    };
    if rest.contains('/') || rest.len() > 64 {
        return Err(not_found().into());
    }
    match journal.message(&hop.name, &caller.agency, rest).await {
        Ok(Some(m)) => Ok(json(StatusCode::OK, &view(&m, true))),
        Ok(None) => Err(not_found().into()),
        Err(e) => Err(unavailable(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_or_vietnamese_dates() {
        assert_eq!(parse_time("1970-01-01T00:00:01Z"), Ok(1_000_000));
        // Midnight in Hà Nội is 17:00 UTC the day before.
        assert_eq!(
            rfc3339(parse_time("2026-11-01").unwrap()),
            "2026-10-31T17:00:00Z"
        );
        assert!(parse_time("2026-13-01").is_err());
        assert!(parse_time("yesterday").unwrap_err().contains("`yesterday`"));
    }

    #[test]
    fn a_listing_query_refuses_what_it_does_not_know() {
        let q = query(
            Some("from=2026-11-01&to=2026-12-01T00%3A00%3A00%2B07%3A00&status=delivered&limit=5"),
            "lgsp",
            "000.00.00.H29",
        )
        .unwrap();
        assert_eq!((q.limit, q.status), (5, Some(Status::Delivered)));
        assert_eq!(q.to_us, Some(parse_time("2026-12-01").unwrap()));
        for (raw, param) in [
            ("agency=000.00.00.H26", "agency"),
            ("limit=0", "limit"),
            ("limit=5000", "limit"),
            ("status=lost", "status"),
            ("after=nonsense", "after"),
            ("from=2026-12-01&to=2026-11-01", "to"),
        ] {
            match query(Some(raw), "lgsp", "000.00.00.H29") {
                Err(MessagesError::BadQuery { param: p, .. }) => assert_eq!(p, param, "{raw}"),
                other => panic!("{raw}: {other:?}"),
            }
        }
        let q = query(Some("after=1700000000000000_0190a5a4-0000"), "lgsp", "a").unwrap();
        assert_eq!(
            q.after,
            Some((1_700_000_000_000_000, "0190a5a4-0000".into()))
        );
    }
}
