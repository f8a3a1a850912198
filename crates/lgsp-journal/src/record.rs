//! A chain record's content: one JSON object per record, written field by field in a fixed order (no document
//! tree is built on the hot path), and read back whole by `verify` and `rebuild-index`, which derive every column of
//! `journal_records` and `messages` from it. Records written before this encoding (their keys in another order)
//! read back the same way: the hash covers the stored text, never a re-encoding.

use std::io::Write;

use serde::Deserialize;

use crate::model::{Accepted, Outcome, Request};

/// The kinds of record.
pub const ACCEPTED: &str = "accepted";
pub const ACCEPTED_AGAIN: &str = "accepted_again";
pub const OUTCOME: &str = "outcome";
/// A link to the other chains' heads, so that `verify` walks the chains together (one per replica).
pub const ANCHOR: &str = "anchor";

/// A JSON object written in place.
pub(crate) struct Json(Vec<u8>);

impl Json {
    pub(crate) fn new(kind: &str, at_us: i64) -> Json {
        let mut j = Json(Vec::with_capacity(512));
        j.0.push(b'{');
        j.key("kind");
        j.string(kind);
        j.int("at_us", at_us);
        j
    }

    fn key(&mut self, k: &str) {
        if self.0.len() > 1 {
            self.0.push(b',');
        }
        self.string(k);
        self.0.push(b':');
    }

    fn string(&mut self, s: &str) {
        // Writing into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut self.0, s);
    }

    pub(crate) fn str(&mut self, k: &str, v: &str) {
        self.key(k);
        self.string(v);
    }

    /// `null` when absent.
    pub(crate) fn opt_str(&mut self, k: &str, v: Option<&str>) {
        self.key(k);
        match v {
            Some(v) => self.string(v),
            None => self.0.extend_from_slice(b"null"),
        }
    }

    pub(crate) fn int(&mut self, k: &str, v: i64) {
        self.key(k);
        let _ = write!(self.0, "{v}");
    }

    pub(crate) fn opt_int(&mut self, k: &str, v: Option<i64>) {
        match v {
            Some(v) => self.int(k, v),
            None => {
                self.key(k);
                self.0.extend_from_slice(b"null");
            }
        }
    }

    /// A value that is JSON already; left out unless it parses as one (never a broken record).
    pub(crate) fn raw(&mut self, k: &str, json: &str) {
        if serde_json::from_str::<&serde_json::value::RawValue>(json).is_ok() {
            self.key(k);
            self.0.extend_from_slice(json.as_bytes());
        }
    }

    pub(crate) fn value<T: serde::Serialize>(&mut self, k: &str, v: &T) {
        self.key(k);
        let _ = serde_json::to_writer(&mut self.0, v);
    }

    pub(crate) fn finish(mut self) -> String {
        self.0.push(b'}');
        // Built from `&str`s and serde_json's own escaping: always UTF-8.
        String::from_utf8(self.0).unwrap_or_default()
    }
}

/// The content of an acceptance (`accepted`, or `accepted_again` under the first message id).
pub(crate) fn accepted(a: &Accepted, message_id: &str, kind: &str, at_us: i64) -> String {
    let mut j = Json::new(kind, at_us);
    j.str("hop", &a.hop);
    j.str("message_id", message_id);
    j.str("agency", &a.agency);
    j.str("route", &a.route);
    j.opt_str("message_type", a.message_type.as_deref());
    j.str("mode", &a.mode);
    j.opt_str("idempotency_key", a.idempotency_key.as_deref());
    j.str("sha256", &a.body_sha256);
    j.int("size", i64::try_from(a.body_size).unwrap_or(i64::MAX));
    j.str("delivery", a.delivery.as_str());
    // The record proves whose profile a packet was, what an approval approved and who signed it, and holds what a
    // delivery replays (so the outbox can be rebuilt from the chain).
    if let Some(s) = &a.subject {
        j.str("subject", s);
    }
    if let Some(approval) = &a.approval {
        j.raw("approval", approval);
    }
    if let Some(signature) = &a.hop_signature {
        j.raw("hop_signature", signature);
    }
    // Always named (null when there is none), so `verify` tells it from a record older than this field.
    j.value("request", &a.request);
    j.finish()
}

/// The content of an outcome of a message of `agency`, after `attempts` attempts.
pub(crate) fn outcome(
    o: &Outcome,
    receipt: Option<&str>,
    agency: &str,
    attempts: i64,
    at_us: i64,
) -> String {
    let mut j = Json::new(OUTCOME, at_us);
    j.str("hop", &o.hop);
    j.str("message_id", &o.message_id);
    j.str("agency", agency);
    j.str("status", o.status.as_str());
    j.opt_int("upstream_status", o.upstream_status.map(i64::from));
    j.opt_str("receipt", receipt);
    j.opt_str("answer_type", o.answer_type.as_deref());
    j.opt_str("detail", o.detail.as_deref());
    j.int("attempts", attempts);
    j.finish()
}

/// Another chain's head as an anchor names it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct Head {
    pub chain: String,
    pub seq: i64,
    pub hash: String,
}

/// The content of an anchor of chain `chain`: the other chains' heads as this writer read them.
pub(crate) fn anchor(chain: &str, heads: &[Head], at_us: i64) -> String {
    let mut j = Json::new(ANCHOR, at_us);
    j.str("chain", chain);
    j.value("heads", &heads);
    j.finish()
}

/// A record's content as read back: every field any kind carries (absent ones `None`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Content {
    pub kind: String,
    pub at_us: i64,
    pub hop: Option<String>,
    pub message_id: Option<String>,
    pub agency: Option<String>,
    pub route: Option<String>,
    pub message_type: Option<String>,
    pub mode: Option<String>,
    pub idempotency_key: Option<String>,
    pub sha256: Option<String>,
    pub size: Option<u64>,
    pub delivery: Option<String>,
    pub subject: Option<String>,
    pub approval: Option<serde_json::Value>,
    pub hop_signature: Option<serde_json::Value>,
    /// `None`: not named (a record older than the field); `Some(None)`: named as null.
    #[serde(default, deserialize_with = "named")]
    pub request: Option<Option<Request>>,
    pub status: Option<String>,
    pub upstream_status: Option<u16>,
    pub receipt: Option<String>,
    #[serde(default, deserialize_with = "named")]
    pub answer_type: Option<Option<String>>,
    pub detail: Option<String>,
    pub attempts: Option<u32>,
    pub chain: Option<String>,
    pub heads: Option<Vec<Head>>,
}

/// A field that is there, even as null (absent ones stay `None` by `#[serde(default)]`).
fn named<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

impl Content {
    pub fn parse(text: &str) -> Result<Content, String> {
        serde_json::from_str(text).map_err(|e| format!("its content is not a record ({e})"))
    }

    /// Whether it starts or restarts a message (its identity columns come from it).
    pub fn is_acceptance(&self) -> bool {
        self.kind == ACCEPTED || self.kind == ACCEPTED_AGAIN
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Delivery, Status};

    fn accepted_packet() -> Accepted {
        Accepted {
            hop: "lgsp".into(),
            message_id: "m-1".into(),
            agency: "000.00.00.H29".into(),
            route: "HoSoCBCCVC".into(),
            message_type: Some("HoSoCBCCVC".into()),
            mode: "production".into(),
            idempotency_key: Some("k \"quoted\" \u{1}".into()),
            body_sha256: "ab".into(),
            body_size: 5,
            delivery: Delivery::Queued,
            request: Some(Request {
                method: "POST".into(),
                path: "/lgsp/v1/HoSoCBCCVC".into(),
                ..Request::default()
            }),
            body: None,
            lease: std::time::Duration::from_secs(60),
            subject: Some("001090000001".into()),
            approval: Some("{\"month\":\"2026-11\"}".into()),
            hop_signature: Some("not json".into()),
        }
    }

    #[test]
    fn an_acceptance_reads_back_as_written_and_escapes_what_it_must() {
        let text = accepted(&accepted_packet(), "m-1", ACCEPTED, 42);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["idempotency_key"], "k \"quoted\" \u{1}");
        assert_eq!(v["approval"]["month"], "2026-11");
        assert!(v.get("hop_signature").is_none(), "broken JSON is left out");
        let c = Content::parse(&text).unwrap();
        assert!(c.is_acceptance());
        assert_eq!(
            (c.at_us, c.size, c.delivery.as_deref(), c.subject.as_deref()),
            (42, Some(5), Some("queued"), Some("001090000001"))
        );
        assert_eq!(c.request.flatten().unwrap().path, "/lgsp/v1/HoSoCBCCVC");
    }

    #[test]
    fn an_outcome_and_an_anchor_read_back() {
        let o = Outcome {
            hop: "lgsp".into(),
            message_id: "m-1".into(),
            status: Status::Rejected,
            upstream_status: Some(422),
            receipt: Some("{\"code\":\"x\"}".into()),
            answer_type: Some("application/problem+json".into()),
            detail: None,
            owner: None,
        };
        let c = Content::parse(&outcome(&o, o.receipt.as_deref(), "H29", 3, 7)).unwrap();
        assert_eq!(
            (
                c.kind.as_str(),
                c.status.as_deref(),
                c.upstream_status,
                c.attempts,
                c.agency.as_deref()
            ),
            (OUTCOME, Some("rejected"), Some(422), Some(3), Some("H29"))
        );
        let heads = vec![Head {
            chain: "b".into(),
            seq: 3,
            hash: "00".into(),
        }];
        let c = Content::parse(&anchor("a", &heads, 9)).unwrap();
        assert_eq!((c.kind.as_str(), c.heads), (ANCHOR, Some(heads)));
    }
}
