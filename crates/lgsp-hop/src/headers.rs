//! Headers between hops (DESIGN.md): `X-LGSP-Message-Id`, `X-LGSP-Client`, `X-LGSP-Mode`, `X-LGSP-Hops`, and W3C
//! `traceparent`. What a hop establishes travels down the stack as typed extensions; `forward` writes them out.

use std::fmt;
use std::sync::Arc;

use http::HeaderMap;

pub const MESSAGE_ID: &str = "x-lgsp-message-id";
pub const CLIENT: &str = lgsp_auth::CLIENT_HEADER;
pub const MODE: &str = "x-lgsp-mode";
pub const HOPS: &str = "x-lgsp-hops";
pub const TRACEPARENT: &str = "traceparent";
/// On trial-mode responses: which hop (or upstream) produced the answer.
pub const ANSWERED_BY: &str = "x-lgsp-answered-by";
/// On trial-mode responses (W3C Server-Timing): each hop's time, innermost first, e.g.
/// `emulator;dur=0.4, ndxp;dur=3.1, lgsp;dur=7.9`.
pub const SERVER_TIMING: &str = "server-timing";
/// Every header in this family is the gateways' own; agencies' copies are stripped at the first hop.
pub const HOP_HEADER_PREFIX: &str = "x-lgsp-";
/// Longest X-LGSP-Hops accepted from a peer.
const MAX_HOPS: usize = 16;

/// The message id (UUIDv7) of a request: made by the first hop, kept by every hop after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageId(pub String);

impl MessageId {
    pub fn new() -> Self {
        MessageId(uuid::Uuid::now_v7().to_string())
    }

    /// A peer's message id: any UUID, written in canonical lower-case hyphenated form.
    pub fn parse(s: &str) -> Result<Self, String> {
        uuid::Uuid::parse_str(s)
            .map(|u| MessageId(u.hyphenated().to_string()))
            .map_err(|_| format!("`{}` is not a UUID", truncate(s)))
    }
}

impl Default for MessageId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The message id a request's answer is known by when the journal says it is an earlier message's (a resend with
/// the same `Idempotency-Key`): set below, read by observe for the answer's `X-LGSP-Message-Id`, problem and log.
#[derive(Debug, Clone, Default)]
pub struct KnownAs(Arc<std::sync::OnceLock<MessageId>>);

impl KnownAs {
    pub fn set(&self, id: MessageId) {
        let _ = self.0.set(id);
    }

    pub fn get(&self) -> Option<&MessageId> {
        self.0.get()
    }
}

/// The hops a request has passed, this one included last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HopPath(pub Vec<String>);

impl HopPath {
    /// Parses a peer's `X-LGSP-Hops` (comma-separated hop names).
    pub fn parse(s: &str) -> Result<Self, String> {
        let hops: Vec<String> = s
            .split(',')
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .collect();
        if hops.len() > MAX_HOPS {
            return Err(format!("more than {MAX_HOPS} hops"));
        }
        if let Some(bad) = hops.iter().find(|h| !lgsp_config::valid_identity(h)) {
            return Err(format!("`{}` is not a hop name", truncate(bad)));
        }
        Ok(HopPath(hops))
    }

    pub fn header_value(&self) -> String {
        self.0.join(", ")
    }
}

/// W3C trace context of this hop: the caller's trace id (or a new one) and this hop's own span id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: String,
    pub span_id: String,
    pub flags: String,
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    if getrandom::fill(&mut buf).is_err() || buf.iter().all(|b| *b == 0) {
        // All-zero ids are invalid in W3C trace context; fall back to UUIDv7 randomness.
        buf.copy_from_slice(&uuid::Uuid::now_v7().as_bytes()[16 - bytes..]);
    }
    hex::encode(buf)
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && s.bytes().any(|b| b != b'0')
}

impl TraceContext {
    /// Continues the caller's trace when its `traceparent` is valid, else starts a new one.
    pub fn continue_or_start(headers: &HeaderMap) -> Self {
        let parsed = headers
            .get(TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let mut parts = v.trim().split('-');
                let (version, trace, _parent, flags) =
                    (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
                (version == "00"
                    && parts.next().is_none()
                    && is_lower_hex(trace, 32)
                    && flags.len() == 2)
                    .then(|| (trace.to_owned(), flags.to_owned()))
            });
        let (trace_id, flags) = parsed.unwrap_or_else(|| (random_hex(16), "01".to_owned()));
        TraceContext {
            trace_id,
            span_id: random_hex(8),
            flags,
        }
    }

    pub fn header_value(&self) -> String {
        format!("00-{}-{}-{}", self.trace_id, self.span_id, self.flags)
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Removes every `X-LGSP-*` header (agencies may not set them).
pub fn strip_hop_headers(headers: &mut HeaderMap) {
    let names: Vec<_> = headers
        .keys()
        .filter(|k| k.as_str().starts_with(HOP_HEADER_PREFIX))
        .cloned()
        .collect();
    for n in names {
        headers.remove(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_uuid_v7_and_peer_ids_must_be_uuids() {
        let id = MessageId::new();
        assert_eq!(uuid::Uuid::parse_str(&id.0).unwrap().get_version_num(), 7);
        assert!(MessageId::parse("not-a-uuid").is_err());
        assert_eq!(MessageId::parse(&id.0.to_uppercase()).unwrap(), id);
    }

    #[test]
    fn traceparent_is_continued_with_a_new_span_or_started() {
        let mut h = HeaderMap::new();
        h.insert(
            TRACEPARENT,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        let t = TraceContext::continue_or_start(&h);
        assert_eq!(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(t.span_id, "00f067aa0ba902b7");
        h.insert(
            TRACEPARENT,
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        let t = TraceContext::continue_or_start(&h);
        assert_ne!(t.trace_id, "00000000000000000000000000000000");
        assert_eq!(t.header_value().len(), 55);
    }

    #[test]
    fn hop_paths_are_bounded_and_named() {
        assert_eq!(
            HopPath::parse("lgsp, ndxp").unwrap().0,
            vec!["lgsp", "ndxp"]
        );
        assert!(HopPath::parse("a b").is_err());
        assert!(HopPath::parse(&vec!["h"; 17].join(",")).is_err());
    }

    #[test]
    fn strips_only_the_hop_family() {
        let mut h = HeaderMap::new();
        h.insert("x-lgsp-client", "000.00.00.H29".parse().unwrap());
        h.insert("X-LGSP-Hops", "evil".parse().unwrap());
        h.insert("x-api-key", "k".parse().unwrap());
        strip_hop_headers(&mut h);
        assert_eq!(h.len(), 1);
    }
}
