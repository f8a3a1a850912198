//! Data back to agencies: an `inbox` route answers `GET {prefix}?after=<cursor>&limit=<n>` from the JetStream
//! subject `<subject prefix>.<the caller's agency code>`, where the national side publishes what it shares with that
//! agency. The subject comes from the caller's authenticated identity only, so an agency reads its own inbox and no
//! other. Each packet carries its cursor (its place in the stream); the agency acknowledges a page by asking for the
//! next one with `after` = the page's `next` — at least once, in order, and nothing is lost if it asks again.

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use lgsp_auth::Caller;
use lgsp_broker::{Brokers, ClientIdentity, InboxPacket};
use lgsp_config::KeyKind;
use lgsp_problem::{BoxProblem, Class, Internal, Problem};

use crate::error::BrokerFailed;
use crate::error::ForwardError;
use lgsp_hop::body::{Body, full};
use lgsp_hop::route::Route;

/// Packets per page: the default and the most.
pub const DEFAULT_LIMIT: usize = 20;
pub const MAX_LIMIT: usize = 100;
/// The most of packet bodies one page carries (a page always carries at least one packet).
pub const MAX_PAGE_BYTES: usize = 8 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
#[error("inbox query parameter `{param}`: {reason}")]
pub struct InboxQueryError {
    param: String,
    reason: String,
}

impl Problem for InboxQueryError {
    fn status(&self) -> StatusCode {
        StatusCode::BAD_REQUEST
    }

    fn code(&self) -> &'static str {
        "inbox.bad_query"
    }

    fn class(&self) -> Class {
        Class::Client
    }

    fn detail(&self) -> String {
        format!(
            "Query parameter `{}` {}. Ask GET …/inbox?after=<the `next` of your last page, 0 at first>&limit=<1–{MAX_LIMIT}>.",
            self.param, self.reason
        )
    }
}

/// `after` and `limit` of an inbox request.
fn query(q: Option<&str>) -> Result<(u64, usize), InboxQueryError> {
    let mut after = 0u64;
    let mut limit = DEFAULT_LIMIT;
    for (k, v) in form_urlencoded::parse(q.unwrap_or_default().as_bytes()) {
        let bad = |reason: &str| InboxQueryError {
            param: k.to_string(),
            reason: reason.to_owned(),
        };
        match &*k {
            "after" => {
                after = v
                    .parse()
                    .map_err(|_| bad("is not a cursor (a whole number)"))?
            }
            "limit" => {
                limit = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| bad(&format!("is not a number from 1 to {MAX_LIMIT}")))?;
            }
            _ => return Err(bad("is not known here (after, limit)")),
        }
    }
    Ok((after, limit))
}

/// A packet as the page shows it: its body as text when it is UTF-8 (XML and JSON packets), else base64.
fn view(p: &InboxPacket) -> serde_json::Value {
    let h = |name: &str| {
        p.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let mut v = serde_json::json!({
        "cursor": p.cursor,
        "message_id": h("x-lgsp-message-id").or_else(|| h("Nats-Msg-Id")),
        "message_type": h("x-lgsp-message-type"),
        "content_type": h("content-type"),
    });
    match std::str::from_utf8(&p.body) {
        Ok(text) => v["body"] = text.into(),
        Err(_) => {
            use base64::Engine;
            v["body_base64"] = base64::engine::general_purpose::STANDARD
                .encode(&p.body)
                .into();
        }
    }
    v
}

/// Answers an inbox route's request.
pub async fn answer(
    brokers: &Brokers,
    hop: &str,
    identity: Option<&ClientIdentity>,
    route: &Route,
    req: Request<Body>,
) -> Result<Response<Body>, BoxProblem> {
    let Some(target) = &route.config.inbox else {
        return Err(Internal("inbox reached for a route without one".into()).into());
    };
    let Some(broker @ lgsp_config::Broker::Nats { subject, .. }) = &target.broker else {
        return Err(Internal("an inbox route without its NATS subject".into()).into());
    };
    let caller = req
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Internal("inbox reached without a caller".into()))?;
    if req.method() != Method::GET {
        return Err(Internal(format!("inbox route answered {}", req.method())).into());
    }
    // What the national side shares is production data: a trial key reads nothing of it.
    if caller.kind == KeyKind::Trial {
        return Err(ForwardError::TrialNotOffered {
            route: route.name.clone(),
        }
        .into());
    }
    let (after, limit) = query(req.uri().query())?;
    // Agency codes are dot-separated groups of 0-9A-Z (checked when the key was matched): subject tokens.
    let agency_subject = format!("{subject}.{}", caller.agency);
    let (packets, more) = brokers
        .read_inbox(
            hop,
            identity,
            &target.authority,
            broker,
            &agency_subject,
            after,
            limit,
            MAX_PAGE_BYTES,
            route.config.timeout,
        )
        .await
        .map_err(|error| BrokerFailed {
            route: route.name.clone(),
            upstream: target.authority.clone(),
            broker: "nats",
            error,
        })?;
    let next = packets.last().map_or(after, |p| p.cursor);
    let body = serde_json::json!({
        "agency": &*caller.agency,
        "packets": packets.iter().map(view).collect::<Vec<_>>(),
        "next": next,
        "more": more,
    });
    let mut resp = Response::new(full(body.to_string()));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_and_limits_are_read_or_refused_by_name() {
        assert_eq!(query(None).unwrap(), (0, DEFAULT_LIMIT));
        assert_eq!(query(Some("after=42&limit=5")).unwrap(), (42, 5));
        for (q, param) in [
            ("after=-1", "after"),
            ("after=x", "after"),
            ("limit=0", "limit"),
            ("limit=101", "limit"),
            ("agency=000.00.00.H26", "agency"),
        ] {
            let e = query(Some(q)).unwrap_err();
            assert_eq!(e.param, param, "{q}");
            assert_eq!(e.status(), StatusCode::BAD_REQUEST);
            assert!(e.detail().contains("after="), "{}", e.detail());
        }
    }

    #[test]
    fn text_bodies_stay_text_and_others_travel_as_base64() {
        let p = InboxPacket {
            cursor: 7,
            headers: vec![
                ("x-lgsp-message-id".into(), "m-1".into()),
                ("Content-Type".into(), "application/xml".into()),
            ],
            body: bytes::Bytes::from_static("<HoSo>Nguyễn</HoSo>".as_bytes()),
        };
        let v = view(&p);
        assert_eq!(v["cursor"], 7);
        assert_eq!(v["message_id"], "m-1");
        assert_eq!(v["content_type"], "application/xml");
        assert_eq!(v["body"], "<HoSo>Nguyễn</HoSo>");
        let raw = InboxPacket {
            body: bytes::Bytes::from_static(&[0xff, 0xfe]),
            ..p
        };
        assert_eq!(view(&raw)["body_base64"], "//4=");
    }
}
