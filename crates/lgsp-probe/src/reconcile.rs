//! Reconciliation (đối chiếu): an agency's own list of the packets it sent, against what the gateway's journal
//! holds of that agency's messages in a period — each sent packet delivered, pending, rejected (with the reason),
//! failed, changed (another body under its key) or missing; and what the gateway holds that the list does not.
//! End to end (`--end-to-end`), each packet the gateway says it delivered is also looked up at the national
//! endpoint by its message id, through the gateway's receipt route: one without a receipt there is `lost`.

use std::collections::HashMap;
use std::io::Write;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::{ProbeOptions, Sender};

/// The `Idempotency-Key` a tool of this project sends a packet under, and the packet's SHA-256: the same packet
/// always gets the same key, so sending it again replays the first outcome.
pub fn packet_key(packet: &[u8]) -> (String, String) {
    let sha = hex::encode(Sha256::digest(packet));
    (format!("sha256-{sha}"), sha)
}

/// One packet of the agency's list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sent {
    /// Its line in the file (the header is line 1).
    pub line: usize,
    pub idempotency_key: Option<String>,
    pub message_id: Option<String>,
    /// Lower-case hex.
    pub sha256: Option<String>,
}

/// One message the gateway holds for the agency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Held {
    pub message_id: String,
    pub idempotency_key: Option<String>,
    pub sha256: String,
    pub status: String,
    pub message_type: Option<String>,
    pub accepted_at: String,
    pub reason: Option<String>,
}

/// Where one sent packet stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Delivered,
    /// Queued or still being delivered.
    Pending,
    /// Refused for good by the upstream: fix the packet and send it under a new key.
    Rejected,
    /// Not delivered (the upstream was down, or the delivery expired): send it again under the same key.
    Failed,
    /// The gateway holds another body under this key or message id.
    Changed,
    /// The gateway holds nothing of it in the period.
    Missing,
    /// The gateway says it delivered it, but the national endpoint holds no receipt of its message id.
    Lost,
}

impl Verdict {
    pub const ALL: [Verdict; 7] = [
        Verdict::Delivered,
        Verdict::Pending,
        Verdict::Rejected,
        Verdict::Failed,
        Verdict::Changed,
        Verdict::Missing,
        Verdict::Lost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Delivered => "delivered",
            Verdict::Pending => "pending",
            Verdict::Rejected => "rejected",
            Verdict::Failed => "failed",
            Verdict::Changed => "changed",
            Verdict::Missing => "missing",
            Verdict::Lost => "lost",
        }
    }

    /// Whether the agency must act: the packet is not where it should be and nothing will move it.
    pub fn needs_action(self) -> bool {
        matches!(
            self,
            Verdict::Failed | Verdict::Changed | Verdict::Missing | Verdict::Lost
        )
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Line {
    pub sent: Sent,
    pub verdict: Verdict,
    pub held: Option<Held>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Reconciliation {
    pub lines: Vec<Line>,
    /// Messages the gateway holds that the list does not name.
    pub unexpected: Vec<Held>,
}

impl Reconciliation {
    pub fn count(&self, v: Verdict) -> usize {
        self.lines.iter().filter(|l| l.verdict == v).count()
    }

    /// Whether everything sent is delivered or on its way.
    pub fn ok(&self) -> bool {
        !self.lines.iter().any(|l| l.verdict.needs_action())
    }

    pub fn write(&self, out: &mut impl Write, json: bool) -> std::io::Result<()> {
        if json {
            let mut doc = serde_json::to_value(self).unwrap_or_default();
            if let Some(o) = doc.as_object_mut() {
                let counts: serde_json::Map<String, serde_json::Value> = Verdict::ALL
                    .iter()
                    .map(|v| (v.as_str().to_owned(), self.count(*v).into()))
                    .chain([("unexpected".to_owned(), self.unexpected.len().into())])
                    .collect();
                o.insert("counts".into(), counts.into());
                o.insert("ok".into(), self.ok().into());
            }
            return writeln!(out, "{doc}");
        }
        for l in self
            .lines
            .iter()
            .filter(|l| l.verdict != Verdict::Delivered)
        {
            let who = match (&l.sent.idempotency_key, &l.sent.message_id) {
                (Some(k), _) => format!("key {k}"),
                (None, Some(id)) => format!("message {id}"),
                (None, None) => "-".into(),
            };
            let held = l.held.as_ref().map_or(String::new(), |h| {
                format!(
                    " (message {}, {}{})",
                    h.message_id,
                    h.status,
                    h.reason
                        .as_deref()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                )
            });
            writeln!(
                out,
                "line {}: {} {who}{held}",
                l.sent.line,
                l.verdict.as_str()
            )?;
        }
        for h in &self.unexpected {
            writeln!(
                out,
                "unexpected: message {} key {} sha256 {} {} accepted {}",
                h.message_id,
                h.idempotency_key.as_deref().unwrap_or("-"),
                h.sha256,
                h.status,
                h.accepted_at
            )?;
        }
        let counts: Vec<String> = Verdict::ALL
            .iter()
            .map(|v| format!("{} {}", self.count(*v), v.as_str()))
            .collect();
        writeln!(
            out,
            "{} sent: {}; {} unexpected",
            self.lines.len(),
            counts.join(", "),
            self.unexpected.len()
        )
    }
}

fn column(header: &csv::StringRecord, names: &[&str]) -> Option<usize> {
    header
        .iter()
        .position(|h| names.iter().any(|n| h.trim().eq_ignore_ascii_case(n)))
}

/// The agency's list: CSV with a header naming `idempotency_key` (or `key`) and/or `message_id`, and `sha256`;
/// other columns are ignored.
pub fn read_sent(text: &str) -> Result<Vec<Sent>, String> {
    let mut r = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let header = r.headers().map_err(|e| format!("line 1: {e}"))?.clone();
    let key = column(&header, &["idempotency_key", "key", "idempotency-key"]);
    let id = column(&header, &["message_id", "message-id"]);
    let sha = column(&header, &["sha256", "sha-256"]);
    if key.is_none() && id.is_none() {
        return Err("line 1: the header names neither `idempotency_key` nor `message_id`; write e.g. `idempotency_key,sha256`".into());
    }
    let mut out = Vec::new();
    for (i, record) in r.records().enumerate() {
        let line = i + 2;
        let record = record.map_err(|e| format!("line {line}: {e}"))?;
        let cell = |c: Option<usize>| {
            c.and_then(|c| record.get(c))
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        let sent = Sent {
            line,
            idempotency_key: cell(key),
            message_id: cell(id).map(|s| s.to_ascii_lowercase()),
            sha256: cell(sha).map(|s| s.to_ascii_lowercase()),
        };
        if sent.idempotency_key.is_none() && sent.message_id.is_none() {
            return Err(format!(
                "line {line}: neither an idempotency key nor a message id"
            ));
        }
        if let Some(s) = &sent.sha256
            && (s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(format!("line {line}: sha256 `{s}` is not 64 hex digits"));
        }
        out.push(sent);
    }
    Ok(out)
}

/// Matches the list against the held messages, by key first, then by message id.
pub fn reconcile(sent: Vec<Sent>, held: Vec<Held>) -> Reconciliation {
    let mut by_key: HashMap<String, usize> = HashMap::new();
    let mut by_id: HashMap<String, usize> = HashMap::new();
    for (i, h) in held.iter().enumerate() {
        by_id.insert(h.message_id.clone(), i);
        if let Some(k) = &h.idempotency_key {
            by_key.insert(k.clone(), i);
        }
    }
    let mut matched = vec![false; held.len()];
    let lines = sent
        .into_iter()
        .map(|s| {
            let found = s
                .idempotency_key
                .as_ref()
                .and_then(|k| by_key.get(k))
                .or_else(|| s.message_id.as_ref().and_then(|id| by_id.get(id)))
                .copied();
            let Some(i) = found else {
                return Line {
                    sent: s,
                    verdict: Verdict::Missing,
                    held: None,
                };
            };
            matched[i] = true;
            let h = held[i].clone();
            let verdict = if s.sha256.as_ref().is_some_and(|sha| *sha != h.sha256) {
                Verdict::Changed
            } else {
                match h.status.as_str() {
                    "delivered" => Verdict::Delivered,
                    "queued" | "in_progress" => Verdict::Pending,
                    "rejected" => Verdict::Rejected,
                    _ => Verdict::Failed,
                }
            };
            Line {
                sent: s,
                verdict,
                held: Some(h),
            }
        })
        .collect();
    let unexpected = held
        .into_iter()
        .zip(matched)
        .filter(|(_, m)| !m)
        .map(|(h, _)| h)
        .collect();
    Reconciliation { lines, unexpected }
}

/// End to end: each line the gateway delivered is looked up at the national endpoint through the gateway's receipt
/// route (`GET {base}/{receipts}/{message id}`, answered only to the agency that sent it): a receipt leaves it
/// delivered, none (404) makes it lost; any other answer is an error (nothing could be concluded).
pub async fn end_to_end(
    opts: &ProbeOptions,
    receipts: &str,
    r: &mut Reconciliation,
) -> Result<(), String> {
    let mut sender = Sender::connect(opts).await?;
    let receipts = receipts.trim_matches('/');
    for l in r
        .lines
        .iter_mut()
        .filter(|l| l.verdict == Verdict::Delivered)
    {
        let Some(h) = &l.held else { continue };
        let path = format!("/{receipts}/{}", h.message_id);
        if sender.found(&path).await? {
            continue;
        }
        l.verdict = Verdict::Lost;
    }
    Ok(())
}

/// Every message the gateway holds for the agency between `from` and `to` (as the messages route takes them),
/// page after page.
pub async fn fetch(opts: &ProbeOptions, from: &str, to: &str) -> Result<Vec<Held>, String> {
    let mut sender = Sender::connect(opts).await?;
    let mut held = Vec::new();
    let mut after: Option<String> = None;
    let enc = |v: &str| form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
    loop {
        let mut path = format!("/messages?from={}&to={}&limit=1000", enc(from), enc(to));
        if let Some(a) = &after {
            path.push_str(&format!("&after={}", enc(a)));
        }
        let page = sender.get_json(&path).await?;
        let messages = page["messages"]
            .as_array()
            .ok_or_else(|| format!("GET {path}: the answer holds no `messages` list"))?;
        for m in messages {
            let text = |k: &str| m[k].as_str().map(str::to_owned);
            held.push(Held {
                message_id: text("message_id").unwrap_or_default(),
                idempotency_key: text("idempotency_key"),
                sha256: text("sha256").unwrap_or_default(),
                status: text("status").unwrap_or_default(),
                message_type: text("message_type"),
                accepted_at: text("accepted_at").unwrap_or_default(),
                reason: text("reason"),
            });
        }
        match page["next"].as_str() {
            Some(next) if !messages.is_empty() => after = Some(next.to_owned()),
            _ => return Ok(held),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(id: &str, key: &str, sha: &str, status: &str) -> Held {
        Held {
            message_id: id.into(),
            idempotency_key: Some(key.into()),
            sha256: sha.into(),
            status: status.into(),
            message_type: Some("HoSoCBCCVC".into()),
            accepted_at: "2026-11-02T01:00:00Z".into(),
            reason: (status == "rejected").then(|| "schema.invalid: HoTen".into()),
        }
    }

    #[test]
    fn every_sent_packet_gets_a_verdict_and_the_rest_is_unexpected() {
        let a = "a".repeat(64);
        let b = "b".repeat(64);
        let csv = format!(
            "idempotency_key,sha256,note\nk1,{a},first\nk2,{a}\nk3,{a}\nk4,{a}\nk5,{a}\nk6,{a}\n"
        );
        let sent = read_sent(&csv).unwrap();
        assert_eq!(sent.len(), 6);
        let r = reconcile(
            sent,
            vec![
                held("m1", "k1", &a, "delivered"),
                held("m2", "k2", &a, "queued"),
                held("m3", "k3", &a, "rejected"),
                held("m4", "k4", &a, "expired"),
                held("m5", "k5", &b, "delivered"),
                held("m9", "k9", &a, "delivered"),
            ],
        );
        let verdicts: Vec<Verdict> = r.lines.iter().map(|l| l.verdict).collect();
        // Every verdict but `lost`, which only the end-to-end look-up gives.
        assert_eq!(verdicts, Verdict::ALL[..6]);
        assert_eq!(r.unexpected.len(), 1);
        assert!(!r.ok());
        let mut text = Vec::new();
        r.write(&mut text, false).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.contains("line 4: rejected key k3 (message m3, rejected: schema.invalid: HoTen)"),
            "{text}"
        );
        assert!(text.contains("line 7: missing key k6"), "{text}");
        assert!(text.ends_with("6 sent: 1 delivered, 1 pending, 1 rejected, 1 failed, 1 changed, 1 missing, 0 lost; 1 unexpected\n"), "{text}");
    }

    #[test]
    fn a_list_by_message_id_matches_too_and_bad_lists_say_where() {
        let csv = "message_id\n0190A5A4-0000-7000-8000-000000000001\n";
        let sent = read_sent(csv).unwrap();
        let mut h = held(
            "0190a5a4-0000-7000-8000-000000000001",
            "x",
            "c",
            "delivered",
        );
        h.idempotency_key = None;
        assert!(reconcile(sent, vec![h]).ok());
        assert!(
            read_sent("sha256\nabc\n")
                .unwrap_err()
                .starts_with("line 1:")
        );
        assert!(
            read_sent("key,sha256\nk,xyz\n")
                .unwrap_err()
                .starts_with("line 2: sha256")
        );
        assert!(
            read_sent("key,message_id\n,\n")
                .unwrap_err()
                .starts_with("line 2:")
        );
        let (key, sha) = packet_key(b"<a/>");
        assert_eq!(key, format!("sha256-{sha}"));
    }
}
