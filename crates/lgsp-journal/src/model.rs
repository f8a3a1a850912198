//! What the journal keeps: packets accepted, their outcomes, and each message's current state.

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::store::{Columns, DbError};

/// How a route delivers: now, answering with the upstream's answer, or from the outbox after a 202.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Delivery {
    Direct,
    Queued,
}

impl Delivery {
    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::Direct => "direct",
            Delivery::Queued => "queued",
        }
    }

    pub(crate) fn parse(s: &str) -> Delivery {
        if s == "queued" {
            Delivery::Queued
        } else {
            Delivery::Direct
        }
    }
}

/// Where a message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// A direct delivery under way.
    InProgress,
    /// Waiting in the outbox (first attempt or a retry).
    Queued,
    /// The upstream took it (2xx).
    Delivered,
    /// The upstream refused it for good (the judge's table: a 4xx other than 408, 425, 429 and a next hop's
    /// `idempotency.in_progress`).
    Rejected,
    /// A direct delivery the upstream could not take (5xx, timeout, unreachable); a resend may try again.
    Failed,
    /// A queued delivery not made within `delivery.max_age`.
    Expired,
}

impl Status {
    pub const ALL: [Status; 6] = [
        Status::InProgress,
        Status::Queued,
        Status::Delivered,
        Status::Rejected,
        Status::Failed,
        Status::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::InProgress => "in_progress",
            Status::Queued => "queued",
            Status::Delivered => "delivered",
            Status::Rejected => "rejected",
            Status::Failed => "failed",
            Status::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Still moving: a resend must wait for it.
    pub fn pending(self) -> bool {
        matches!(self, Status::InProgress | Status::Queued)
    }

    /// Ended in a way another attempt may change (the upstream was down): a resend tries again.
    pub fn retryable(self) -> bool {
        matches!(self, Status::Failed | Status::Expired)
    }
}

/// The request a delivery replays: what the hop would have sent at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Request {
    pub method: String,
    /// Path and query as the agency sent them (the route rewrites them again at delivery).
    pub path: String,
    /// The headers the hop would have forwarded (Content-Type, Idempotency-Key, this hop's Forwarded, …), in
    /// order; the hop's own X-LGSP-* headers are written again at delivery.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// The peer gateway that relayed it, if any.
    pub via: Option<String>,
    /// The hops it passed (`X-LGSP-Hops`), this one included.
    pub hops: Vec<String>,
    pub traceparent: Option<String>,
}

/// A packet a hop accepted, as it is appended before it moves on.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub hop: String,
    pub message_id: String,
    pub agency: String,
    pub route: String,
    pub message_type: Option<String>,
    /// `trial` or `production`.
    pub mode: String,
    pub idempotency_key: Option<String>,
    /// Lower-case hex SHA-256 of the body as received.
    pub body_sha256: String,
    pub body_size: u64,
    pub delivery: Delivery,
    /// What a delivery replays (a queued one, or a direct one taken up again after a crash).
    pub request: Option<Request>,
    /// The packet: stored once by its SHA-256 and held in the outbox until its delivery ends, so a delivery cut
    /// short by a crash is made again (and kept `keep_bodies` after). `None` when the journal owes no delivery
    /// of its own (a broker holds the packet and hands it out again).
    pub body: Option<Bytes>,
    /// How long this process holds a direct delivery (or a queued one it starts at once) before another process
    /// may take it up: at least twice the route's timeout.
    pub lease: Duration,
    /// Whose data the packet is: a profile's SoCCCD (what approvals are checked against).
    pub subject: Option<String>,
    /// A verified approval (PheDuyetDuLieu): its month, signers and approved profiles, as JSON.
    pub approval: Option<String>,
    /// The relaying hop's verified signature (RFC 9421: key id, time, Signature-Input, Signature), as JSON: the
    /// record proves which hop sent what.
    pub hop_signature: Option<String>,
}

/// How a delivery ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub hop: String,
    pub message_id: String,
    pub status: Status,
    pub upstream_status: Option<u16>,
    /// The answer as it was first given (the upstream's receipt or problem, or this hop's own problem document),
    /// at most [`crate::MAX_RECEIPT_BYTES`]: a replay answers with exactly these bytes.
    pub receipt: Option<String>,
    /// The answer's media type (`application/json`, `application/problem+json`, …).
    pub answer_type: Option<String>,
    /// Why, in the operator's words (an upstream error, an expiry).
    pub detail: Option<String>,
    /// The lease this outcome ends ([`crate::Journal::owner`]): refused once another process has taken the
    /// delivery up. `None` for a delivery the journal holds no lease of (a broker's packet).
    pub owner: Option<String>,
}

/// A message as the journal holds it now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    pub hop: String,
    pub message_id: String,
    pub agency: String,
    pub route: String,
    pub message_type: Option<String>,
    pub mode: String,
    pub idempotency_key: Option<String>,
    pub body_sha256: String,
    pub body_size: u64,
    pub delivery: Delivery,
    pub status: Status,
    pub upstream_status: Option<u16>,
    pub receipt: Option<String>,
    #[serde(skip)]
    pub answer_type: Option<String>,
    pub detail: Option<String>,
    /// Microseconds since the Unix epoch.
    pub accepted_us: i64,
    pub updated_us: i64,
    pub attempts: u32,
    #[serde(skip)]
    pub request: Option<Request>,
}

impl Message {
    /// A message from a row that starts with `message_columns!()`, in that order.
    pub(crate) fn from_row<R: Columns>(row: &R) -> Result<Message, DbError> {
        let status = row.text(11)?;
        let delivery = row.text(9)?;
        Ok(Message {
            hop: row.text(0)?,
            message_id: row.text(1)?,
            agency: row.text(2)?,
            route: row.text(3)?,
            message_type: row.opt_text(4)?,
            mode: row.text(5)?,
            idempotency_key: row.opt_text(6)?,
            body_sha256: row.text(7)?,
            body_size: u64::try_from(row.int(8)?).unwrap_or(0),
            delivery: Delivery::parse(&delivery),
            status: Status::parse(&status).unwrap_or(Status::Failed),
            upstream_status: row.opt_int(12)?.and_then(|s| u16::try_from(s).ok()),
            receipt: row.opt_text(13)?,
            detail: row.opt_text(14)?,
            accepted_us: row.int(15)?,
            updated_us: row.int(16)?,
            attempts: u32::try_from(row.int(17)?).unwrap_or(u32::MAX),
            answer_type: row.opt_text(18)?,
            request: row
                .opt_text(10)?
                .and_then(|r| serde_json::from_str(&r).ok()),
        })
    }
}

/// What an acceptance found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Appended: a new message.
    New,
    /// The same agency already sent this idempotency key in this mode (or a peer this message id): the message
    /// as it stands. Its `route` may differ from the one asked: the key names another route's message.
    Existing(Box<Message>),
    /// The same key, whose earlier delivery failed or expired: appended again as a new attempt under the first
    /// message id.
    Again(Box<Message>),
    /// The message id is already another agency's at this hop (a relaying hop reused one): nothing appended, and
    /// nothing of the other agency's message shown.
    Taken,
}

/// A delivery the journal owes, leased to this process: queued (from the outbox) or direct (taken up again
/// after the process that started it stopped).
#[derive(Debug, Clone)]
pub struct Claimed {
    pub message: Message,
    /// `None` when the journal no longer holds the packet (it cannot be delivered again).
    pub body: Option<Bytes>,
    /// Attempts made so far, this one included.
    pub attempts: u32,
    /// The last attempt's note.
    pub last: Option<String>,
}

/// What one agency may hold undelivered in the journal (queued, or in progress).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub packets: u64,
    pub bytes: u64,
}

/// What one agency holds undelivered now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Held {
    pub packets: u64,
    pub bytes: u64,
}

impl Held {
    /// Whether `more` on top of this stays within `quota`.
    pub(crate) fn fits(&self, more: Held, quota: Quota) -> bool {
        self.packets.saturating_add(more.packets) <= quota.packets
            && self.bytes.saturating_add(more.bytes) <= quota.bytes
    }

    pub(crate) fn add(&mut self, other: Held) {
        self.packets = self.packets.saturating_add(other.packets);
        self.bytes = self.bytes.saturating_add(other.bytes);
    }

    pub(crate) fn sub(&mut self, other: Held) {
        self.packets = self.packets.saturating_sub(other.packets);
        self.bytes = self.bytes.saturating_sub(other.bytes);
    }
}

/// A profile packet (HoSoCBCCVC) the journal holds: whose, which content, when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProfileSent {
    pub hop: String,
    pub agency: String,
    /// SoCCCD.
    pub subject: String,
    pub sha256: String,
    pub message_id: String,
    /// Microseconds since the Unix epoch.
    pub accepted_us: i64,
}

/// A verified approval the journal holds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApprovalSent {
    pub hop: String,
    pub agency: String,
    pub message_id: String,
    /// What the gateway verified: month, approval time, signers, approved profiles.
    pub approval: serde_json::Value,
}

/// Per hop and agency, a month's approvals and the profiles of that month no approval covers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApprovalReport {
    pub hop: String,
    pub agency: String,
    pub approvals: Vec<ApprovalSent>,
    /// Profiles accepted in the month (each SoCCCD's last) whose SHA-256 no approval of the month lists.
    pub unapproved: Vec<ProfileSent>,
}

/// One line of the monthly report: per hop, agency and message type.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReportRow {
    pub hop: String,
    pub agency: String,
    pub message_type: String,
    pub received: u64,
    pub delivered: u64,
    pub rejected: u64,
    pub pending: u64,
    /// Failed or expired: not delivered, not refused by the upstream.
    pub failed: u64,
}
