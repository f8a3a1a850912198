//! The one judge of a delivery: what an upstream's answer (or the failure to get one) means for the packet —
//! delivered, refused for good, or to try again — for every path that delivers: a direct request, the outbox (a
//! queued packet, or a direct one taken up again after a crash) and a broker consumer. Each path then does what its
//! kind of delivery does with a verdict (`Verdict::outcome`); none decides again. The table, in the README:
//!
//! | the answer | verdict |
//! |---|---|
//! | 2xx, read whole (≤ 64 KiB) within the route's timeout | delivered, the answer kept as the receipt |
//! | 2xx, longer than 64 KiB | delivered, the answer passed on but not kept |
//! | 2xx whose body broke or did not arrive in time | again (unconfirmed; the next hop knows the message id) |
//! | 409 `idempotency.in_progress` (a next hop still delivering it) | again, after its Retry-After |
//! | 408, 425, 429, 5xx | again (429 and 503 after their Retry-After) |
//! | any other status (4xx, 3xx) | refused for good, the answer kept |
//! | no answer: connect, TLS, timeout, reset, a broker's refusal | again |
//! | refused at this hop before sending (`trial.not_offered`, …: the client's) | refused for good |
//!
//! Whatever is kept is the answer exactly as it was first given — the upstream's bytes and media type, or this
//! hop's own problem document as the error edge renders it — so a resend of the same Idempotency-Key is answered
//! byte for byte the same.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use lgsp_journal::Status;
use lgsp_problem::{BoxProblem, Class};

use lgsp_hop::body::{Body, full};
use lgsp_hop::route::Route;
use lgsp_upstream::{ForwardError, UpstreamFailure};

/// The most of an upstream's answer read (and kept as its receipt); a longer answer is passed on unread.
pub const ANSWER_LIMIT: usize = lgsp_journal::MAX_RECEIPT_BYTES;

/// What an answer means for the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// Refused for good: another attempt gets the same answer.
    Rejected,
    /// Another attempt may do: not before `after` when the upstream said so (Retry-After).
    Again {
        after: Option<Duration>,
    },
}

impl Verdict {
    /// The message's outcome when this delivery makes no further attempt itself (a direct one, or one whose
    /// attempts are over): again means failed — a resend under the same key tries once more.
    pub fn outcome(self) -> Status {
        match self {
            Verdict::Delivered => Status::Delivered,
            Verdict::Rejected => Status::Rejected,
            Verdict::Again { .. } => Status::Failed,
        }
    }
}

/// A judged answer: the verdict, what to keep, and the answer to pass on.
pub struct Judged {
    pub verdict: Verdict,
    pub upstream_status: Option<u16>,
    /// The answer as first given (at most [`ANSWER_LIMIT`]): the upstream's, or this hop's problem document.
    pub receipt: Option<String>,
    pub answer_type: Option<String>,
    /// Why, for the operator (the upstream's failure, an answer not kept).
    pub detail: Option<String>,
    /// The answer to give the caller of a direct delivery: the upstream's (its body as read, then the rest as it
    /// streams), or the problem.
    pub answer: Result<Response<Body>, BoxProblem>,
}

/// Retry-After in seconds (the HTTP-date form is read as no hint), at most a day.
pub fn retry_after(h: &HeaderMap) -> Option<Duration> {
    h.get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s.min(86_400)))
}

/// What a status alone says, for a whole answer: `None` for a 409 whose problem code decides.
fn by_status(code: StatusCode, hint: Option<Duration>) -> Verdict {
    if code.is_success() {
        Verdict::Delivered
    } else if code == StatusCode::TOO_MANY_REQUESTS || code == StatusCode::SERVICE_UNAVAILABLE {
        Verdict::Again { after: hint }
    } else if code == StatusCode::REQUEST_TIMEOUT || code.as_u16() == 425 || code.is_server_error()
    {
        Verdict::Again { after: None }
    } else {
        Verdict::Rejected
    }
}

/// A next hop's answer that it is still delivering this message (a resend while it works): try again later.
fn still_in_progress(code: StatusCode, body: &[u8]) -> bool {
    code == StatusCode::CONFLICT
        && serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("code").and_then(|c| c.as_str()).map(str::to_owned))
            .is_some_and(|c| c == "idempotency.in_progress")
}

/// An upstream's answer body, kept whole when it is at most [`ANSWER_LIMIT`] bytes and arrives within `within`;
/// a longer one is passed on as it streams (and not kept).
async fn read_answer(body: Body, within: Duration) -> Result<(Option<Bytes>, Body), String> {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut kept = bytes::BytesMut::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .map_err(|_| format!("the answer was not read whole within {within:?}"))?;
        match frame {
            None => {
                let kept = kept.freeze();
                return Ok((Some(kept.clone()), full(kept)));
            }
            Some(Err(e)) => return Err(format!("the answer broke: {e}")),
            Some(Ok(f)) => {
                if let Ok(data) = f.into_data() {
                    kept.extend_from_slice(&data);
                }
                if kept.len() > ANSWER_LIMIT {
                    // Not a receipt: what was read, then the rest as it comes.
                    return Ok((None, lgsp_hop::body::prefixed(kept.freeze(), body)));
                }
            }
        }
    }
}

/// This hop's problem document for `problem`, exactly as the error edge renders it for `message_id`.
pub fn rendered(problem: &BoxProblem, hop: &str, message_id: &str) -> (String, String) {
    let r = lgsp_problem::response(&**problem, hop, Some(message_id));
    let kind = r
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or(lgsp_problem::CONTENT_TYPE)
        .to_owned();
    (String::from_utf8_lossy(r.body()).into_owned(), kind)
}

/// Judges what `answer` — the route's upstream's answer to message `message_id`, or why there was none — means.
pub async fn judge(
    hop: &str,
    message_id: &str,
    route: &Route,
    answer: Result<Response<Body>, BoxProblem>,
) -> Judged {
    let resp = match answer {
        Ok(resp) => resp,
        Err(problem) => {
            let verdict = if problem.class() == Class::Client {
                Verdict::Rejected
            } else {
                Verdict::Again { after: None }
            };
            let (receipt, kind) = rendered(&problem, hop, message_id);
            return Judged {
                verdict,
                upstream_status: Some(problem.status().as_u16()),
                receipt: Some(receipt),
                answer_type: Some(kind),
                detail: Some(problem.to_string()),
                answer: Err(problem),
            };
        }
    };
    let code = resp.status();
    let hint = retry_after(resp.headers());
    let kind = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (parts, body) = resp.into_parts();
    match read_answer(body, route.config.timeout).await {
        Ok((kept, body)) => {
            let verdict = match &kept {
                Some(b) if still_in_progress(code, b) => Verdict::Again { after: hint },
                _ => by_status(code, hint),
            };
            let detail = match (&kept, verdict) {
                (None, _) => Some(format!(
                    "the answer is longer than {ANSWER_LIMIT} bytes; not kept"
                )),
                (Some(_), Verdict::Delivered) => None,
                (Some(_), _) => Some(format!("upstream answered {code}")),
            };
            Judged {
                verdict,
                upstream_status: Some(code.as_u16()),
                receipt: kept.map(|b| String::from_utf8_lossy(&b).into_owned()),
                answer_type: kind,
                detail,
                answer: Ok(Response::from_parts(parts, body)),
            }
        }
        // Broken or too slow: the caller hears the upstream broke its answer; another attempt delivers it again
        // under the same message id, which the upstream takes as the same delivery.
        Err(e) => {
            let problem: BoxProblem = ForwardError::Upstream {
                route: route.name.clone(),
                upstream: route.config.upstream.authority.clone(),
                kind: UpstreamFailure::Protocol,
                message: e.clone(),
            }
            .into();
            let (receipt, kind) = rendered(&problem, hop, message_id);
            Judged {
                verdict: Verdict::Again { after: None },
                upstream_status: Some(code.as_u16()),
                receipt: Some(receipt),
                answer_type: Some(kind),
                detail: Some(format!("upstream answered {code}, then {e}")),
                answer: Err(problem),
            }
        }
    }
}

/// The answer to a resend of a message that ended: the first answer again, as it was given.
pub fn replayed(m: &lgsp_journal::Message) -> Response<Body> {
    let status = m
        .upstream_status
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let (body, kind) = match (&m.receipt, &m.answer_type) {
        (Some(r), Some(t)) => (r.clone(), t.clone()),
        // Journalled before media types were kept: told by the text.
        (Some(r), None) => {
            let json = serde_json::from_str::<serde_json::Value>(r).is_ok();
            let kind = match (json, status.is_success()) {
                (true, true) => "application/json",
                (true, false) => lgsp_problem::CONTENT_TYPE,
                _ => "text/plain; charset=utf-8",
            };
            (r.clone(), kind.to_owned())
        }
        // An answer too long to keep: what the journal knows of it.
        (None, _) => (
            serde_json::json!({
                "message_id": m.message_id,
                "status": m.status.as_str(),
                "detail": m.detail,
            })
            .to_string(),
            "application/json".to_owned(),
        ),
    };
    let mut resp = Response::new(full(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(&kind) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use lgsp_hop::route::RouteTable;
    use lgsp_hop::testing::Fixture;
    use std::sync::Arc;

    fn route() -> Arc<Route> {
        let fixture = Fixture::new();
        let cfg = fixture.config(&[]);
        let hop = Arc::new(lgsp_hop::HopContext::new(
            "lgsp",
            &[],
            lgsp_hop::testing::metrics(),
        ));
        RouteTable::new(&hop, &cfg.hops[0].routes)
            .lookup("/lgsp/v1/HoSoCBCCVC")
            .unwrap()
            .clone()
    }

    fn answer(
        status: u16,
        headers: &[(&'static str, &'static str)],
        body: Bytes,
    ) -> Result<Response<Body>, BoxProblem> {
        let mut r = Response::new(full(body));
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        for (n, v) in headers {
            r.headers_mut().insert(*n, HeaderValue::from_static(v));
        }
        Ok(r)
    }

    #[tokio::test]
    async fn every_kind_of_answer_has_its_verdict() {
        let r = route();
        let j = |a| judge("lgsp", "m-1", &r, a);
        let problem =
            |code: &'static str| Bytes::from(format!("{{\"code\":\"{code}\",\"status\":409}}"));
        let cases: Vec<(Result<Response<Body>, BoxProblem>, Verdict)> = vec![
            (
                answer(200, &[], Bytes::from_static(b"{}")),
                Verdict::Delivered,
            ),
            (
                answer(202, &[], Bytes::from(vec![b' '; ANSWER_LIMIT + 1])),
                Verdict::Delivered,
            ),
            (
                answer(422, &[], Bytes::from_static(b"{\"code\":\"x\"}")),
                Verdict::Rejected,
            ),
            (
                answer(409, &[], problem("emulator.conflict")),
                Verdict::Rejected,
            ),
            (
                answer(
                    409,
                    &[("retry-after", "2")],
                    problem("idempotency.in_progress"),
                ),
                Verdict::Again {
                    after: Some(Duration::from_secs(2)),
                },
            ),
            (
                answer(429, &[("retry-after", "30")], Bytes::new()),
                Verdict::Again {
                    after: Some(Duration::from_secs(30)),
                },
            ),
            (
                answer(408, &[], Bytes::new()),
                Verdict::Again { after: None },
            ),
            (
                answer(500, &[], Bytes::new()),
                Verdict::Again { after: None },
            ),
            (answer(301, &[], Bytes::new()), Verdict::Rejected),
            (
                Err(ForwardError::Upstream {
                    route: Arc::from("r"),
                    upstream: "localhost:1".into(),
                    kind: UpstreamFailure::Timeout,
                    message: "no head".into(),
                }
                .into()),
                Verdict::Again { after: None },
            ),
            (
                Err(ForwardError::TrialNotOffered {
                    route: Arc::from("r"),
                }
                .into()),
                Verdict::Rejected,
            ),
        ];
        for (i, (a, want)) in cases.into_iter().enumerate() {
            let got = j(a).await;
            assert_eq!(got.verdict, want, "case {i}");
        }
    }

    #[tokio::test]
    async fn what_is_kept_is_the_answer_as_given() {
        let r = route();
        let long = judge(
            "lgsp",
            "m-1",
            &r,
            answer(200, &[], Bytes::from(vec![b'x'; ANSWER_LIMIT + 10])),
        )
        .await;
        assert_eq!(long.receipt, None);
        assert!(long.detail.unwrap().contains("not kept"));
        let passed = lgsp_hop::body::read_body(long.answer.unwrap().into_body(), 1 << 20)
            .await
            .unwrap();
        assert_eq!(passed.len(), ANSWER_LIMIT + 10, "passed on whole");
        // This hop's own problem: kept as the error edge renders it for this message id.
        let refused = judge(
            "lgsp",
            "m-2",
            &r,
            Err(ForwardError::TrialNotOffered {
                route: Arc::from("HoSoCBCCVC"),
            }
            .into()),
        )
        .await;
        let Err(p) = &refused.answer else {
            panic!("a problem")
        };
        let edge = lgsp_hop::edge::answer(&**p, "lgsp", "m-2");
        let edge_body = lgsp_hop::body::read_body(edge.into_body(), 1 << 20)
            .await
            .unwrap();
        assert_eq!(
            refused.receipt.as_deref().unwrap().as_bytes(),
            &edge_body[..]
        );
        assert_eq!(
            refused.answer_type.as_deref(),
            Some("application/problem+json")
        );
        assert_eq!(Verdict::Again { after: None }.outcome(), Status::Failed);
    }
}
