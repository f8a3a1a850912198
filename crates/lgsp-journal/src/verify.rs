//! `journal verify` and `journal rebuild-index`. The chains are the truth: each record's hash covers its content
//! and its link to the record before it, and anchors link the chains to each other. Everything else the journal
//! keeps is derived from them — the records' own columns (kind, hop, message id, agency, time), each message's row
//! (who sent it, where, which body, where it stands, its receipt), the outbox — and `verify` checks that every
//! derived value agrees with the chained content, naming the first that does not. `rebuild-index` writes the
//! derived tables anew from the chains.

use std::collections::{BTreeMap, HashMap};

use sha2::{Digest, Sha256};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AnyPool, Row};

use crate::chain::{Broken, Verifier};
use crate::record::{self, Content};
use crate::store::{Columns, DbError, Param, Store};
use crate::{Dialect, JournalError};

/// What a whole journal verified.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verified {
    /// Records checked, in all chains.
    pub records: u64,
    /// Each chain and its records checked.
    pub chains: Vec<(String, u64)>,
    /// Anchors whose named heads were found.
    pub anchors: u64,
    /// Message rows checked against their records.
    pub messages: u64,
    /// Outbox rows and bodies checked.
    pub outbox: u64,
    pub bodies: u64,
}

/// What `rebuild-index` wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rebuilt {
    /// Record rows whose derived columns were set again from their content.
    pub records: u64,
    pub messages: u64,
    /// Outbox rows removed (their message had ended or was gone) and added (a pending message had none).
    pub outbox_removed: u64,
    pub outbox_added: u64,
}

/// The first disagreement `verify` found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Finding {
    #[error("chain {chain}: {broken}")]
    Chain { chain: String, broken: Broken },
    #[error("chain {chain}, record {seq}: {why}")]
    Record {
        chain: String,
        seq: i64,
        why: String,
    },
    #[error("chain {chain}, record {seq} (an anchor): {why}")]
    Anchor {
        chain: String,
        seq: i64,
        why: String,
    },
    /// A derived value that is not what the chain says: the table, the row, the column.
    #[error("{table}[{key}].{column} is {found}, but the chain says {expected}")]
    Derived {
        table: &'static str,
        key: String,
        column: String,
        expected: String,
        found: String,
    },
    /// A derived row the chain does not account for, or a row the chain needs that is missing.
    #[error("{table}[{key}]: {why}")]
    Row {
        table: &'static str,
        key: String,
        why: String,
    },
}

fn db(e: sqlx::Error) -> JournalError {
    JournalError::Unavailable(e.to_string())
}

/// A message's state as its records say it is, folded in order. `None` in a column means the records do not
/// say (written before they carried it); such a column is not compared.
#[derive(Debug, Clone, Default)]
pub(crate) struct Folded {
    pub hop: String,
    pub message_id: String,
    pub columns: BTreeMap<&'static str, Option<String>>,
    /// The value that counts for checking: a JSON value compared as parsed.
    pub json: BTreeMap<&'static str, Option<serde_json::Value>>,
    pub accepted: bool,
}

/// The text columns of a messages row, in this order (`rebuild` writes them, `verify` reads them).
const MESSAGE_TEXT: [&str; 18] = [
    "agency",
    "route",
    "message_type",
    "mode",
    "idempotency_key",
    "body_sha256",
    "body_size",
    "delivery",
    "status",
    "upstream_status",
    "receipt",
    "answer_type",
    "detail",
    "accepted_us",
    "updated_us",
    "attempts",
    "subject",
    "request",
];
const MESSAGE_JSON: [&str; 2] = ["approval", "hop_signature"];

fn some(s: impl ToString) -> Option<String> {
    Some(s.to_string())
}

impl Folded {
    fn set(&mut self, column: &'static str, v: Option<String>) {
        self.columns.insert(column, v);
    }

    /// Applies one record of this message.
    fn apply(&mut self, c: &Content) -> Result<(), String> {
        match c.kind.as_str() {
            record::ACCEPTED | record::ACCEPTED_AGAIN => {
                let again = c.kind == record::ACCEPTED_AGAIN;
                if !again && self.accepted {
                    return Err("a second accepted record of one message".into());
                }
                // Its first acceptance pruned with the records past the retention, the message starts at its
                // acceptance again (which carries the message's whole identity); the attempts before are unknown.
                let again = again && self.accepted;
                if !self.accepted && c.kind == record::ACCEPTED_AGAIN {
                    self.columns.remove("attempts");
                }
                if again {
                    for (col, v) in [
                        ("agency", &c.agency),
                        ("route", &c.route),
                        ("mode", &c.mode),
                        ("idempotency_key", &c.idempotency_key),
                        ("body_sha256", &c.sha256),
                    ] {
                        if self.columns.get(col).cloned().flatten() != *v {
                            return Err(format!(
                                "an accepted_again record with another {col} than the message's"
                            ));
                        }
                    }
                }
                self.accepted = true;
                let pending = if c.delivery.as_deref() == Some("queued") {
                    "queued"
                } else {
                    "in_progress"
                };
                self.set("agency", c.agency.clone());
                self.set("route", c.route.clone());
                self.set("message_type", c.message_type.clone());
                self.set("mode", c.mode.clone());
                self.set("idempotency_key", c.idempotency_key.clone());
                self.set("body_sha256", c.sha256.clone());
                self.set("body_size", c.size.map(|s| s.to_string()));
                self.set("delivery", c.delivery.clone());
                self.set("status", some(pending));
                for col in ["upstream_status", "receipt", "answer_type", "detail"] {
                    self.set(col, None);
                }
                self.set("accepted_us", some(c.at_us));
                self.set("updated_us", some(c.at_us));
                if c.kind == record::ACCEPTED {
                    self.set("attempts", some(0));
                }
                self.set("subject", c.subject.clone());
                self.json.insert("approval", c.approval.clone());
                self.json.insert("hop_signature", c.hop_signature.clone());
                match &c.request {
                    // Records older than the outbox rows did not carry the request: not compared.
                    None => {
                        self.columns.remove("request");
                    }
                    Some(r) => self.set(
                        "request",
                        r.as_ref().and_then(|r| serde_json::to_string(r).ok()),
                    ),
                }
            }
            record::OUTCOME => {
                if !self.accepted {
                    return Err("an outcome record before the message was accepted".into());
                }
                self.set("status", c.status.clone());
                self.set("upstream_status", c.upstream_status.map(|s| s.to_string()));
                self.set("receipt", c.receipt.clone());
                match &c.answer_type {
                    None => {
                        self.columns.remove("answer_type");
                    }
                    Some(t) => self.set("answer_type", t.clone()),
                }
                self.set("detail", c.detail.clone());
                self.set("updated_us", some(c.at_us));
                match c.attempts {
                    None => {
                        self.columns.remove("attempts");
                    }
                    Some(n) => self.set("attempts", some(n)),
                }
            }
            other => return Err(format!("a record of kind {other:?} for a message")),
        }
        Ok(())
    }

    /// Folds a message's records (in the order they happened: each record of a message is later than the one before).
    pub(crate) fn of(hop: &str, message_id: &str, records: &[Content]) -> Result<Folded, String> {
        let mut f = Folded {
            hop: hop.to_owned(),
            message_id: message_id.to_owned(),
            ..Folded::default()
        };
        let mut sorted: Vec<&Content> = records.iter().collect();
        sorted.sort_by_key(|c| (c.at_us, !c.is_acceptance()));
        for c in sorted {
            f.apply(c)?;
        }
        Ok(f)
    }
}

/// A JSON column's text as a value (compared parsed: key order and spacing aside).
fn as_json(text: Option<&str>) -> Option<serde_json::Value> {
    text.and_then(|t| serde_json::from_str(t).ok())
}

fn shown(v: &Option<String>) -> String {
    match v {
        None => "null".into(),
        Some(s) if s.len() > 80 => format!("{:?}…", crate::writer::clip(s, 80)),
        Some(s) => format!("{s:?}"),
    }
}

/// The messages row `row` (read with [`MESSAGE_SELECT`]) against what its records say: the first disagreement.
fn compare(f: &Folded, row: &AnyRow) -> Result<(), Finding> {
    let key = format!("hop={}, message_id={}", f.hop, f.message_id);
    for (i, col) in MESSAGE_TEXT.iter().enumerate() {
        let Some(expected) = f.columns.get(col) else {
            continue;
        };
        let found = text_at(row, i + 2);
        let same = match *col {
            "request" => as_json(found.as_deref()) == as_json(expected.as_deref()),
            _ => found == *expected,
        };
        if !same {
            return Err(Finding::Derived {
                table: "messages",
                key,
                column: (*col).to_owned(),
                expected: shown(expected),
                found: shown(&found),
            });
        }
    }
    for (i, col) in MESSAGE_JSON.iter().enumerate() {
        let expected = f.json.get(col).cloned().flatten();
        let found = as_json(text_at(row, 2 + MESSAGE_TEXT.len() + i).as_deref());
        if found != expected {
            let text = |v: &Option<serde_json::Value>| v.as_ref().map(ToString::to_string);
            return Err(Finding::Derived {
                table: "messages",
                key,
                column: (*col).to_owned(),
                expected: shown(&text(&expected)),
                found: shown(&text(&found)),
            });
        }
    }
    Ok(())
}

/// A column as text, whatever its type (integers as decimal).
fn text_at(row: &AnyRow, i: usize) -> Option<String> {
    if let Ok(v) = row.try_get::<Option<String>, _>(i) {
        return v;
    }
    row.try_get::<Option<i64>, _>(i)
        .ok()
        .flatten()
        .map(|n| n.to_string())
}

/// Every column a messages row is checked by, the derived ones in [`MESSAGE_TEXT`] then [`MESSAGE_JSON`] order.
const MESSAGE_SELECT: &str = "SELECT hop, message_id, agency, route, message_type, mode, idempotency_key,
    body_sha256, body_size, delivery, status, upstream_status, receipt, answer_type, detail, accepted_us, updated_us,
    attempts, subject, request, approval, hop_signature FROM messages";

const PAGE: i64 = 1000;

/// Walks every chain from its first kept record to its head, checks each record's derived columns and every anchor,
/// then every messages row, outbox row and body against the chains.
pub(crate) async fn verify(pool: &AnyPool) -> Result<Verified, JournalError> {
    // One snapshot for the whole walk: a live writer appends between pages, and a head read before records that
    // arrive after it would look like records beyond the head.
    let mut tx = pool.begin().await.map_err(db)?;
    if tx.backend_name() == "PostgreSQL" {
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(db)?;
    }
    let out = walk(&mut tx).await;
    let _ = tx.rollback().await;
    out
}

async fn walk(conn: &mut AnyConnection) -> Result<Verified, JournalError> {
    let mut out = Verified::default();
    let chains =
        sqlx::query("SELECT chain, seq, hash, pruned_through FROM journal_chains ORDER BY chain")
            .fetch_all(&mut *conn)
            .await
            .map_err(db)?;
    let mut pruned: HashMap<String, i64> = HashMap::new();
    let mut anchors: Vec<(String, i64, record::Head)> = Vec::new();
    for c in &chains {
        let chain: String = c.try_get("chain").map_err(db)?;
        let head_seq: i64 = c.try_get("seq").map_err(db)?;
        let head_hash: String = c.try_get("hash").map_err(db)?;
        let through: i64 = c.try_get("pruned_through").map_err(db)?;
        pruned.insert(chain.clone(), through);
        let broken = |b: Broken| Finding::Chain {
            chain: chain.clone(),
            broken: b,
        };
        let mut v: Option<Verifier> = None;
        let mut after = 0i64;
        loop {
            let rows = sqlx::query(
                "SELECT seq, at_us, kind, hop, message_id, agency, content, prev_hash, hash FROM journal_records
                 WHERE chain = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            )
            .bind(chain.clone())
            .bind(after)
            .bind(PAGE)
            .fetch_all(&mut *conn)
            .await
            .map_err(db)?;
            if rows.is_empty() {
                let v = v.unwrap_or_else(|| Verifier::starting_at(through + 1, ""));
                v.end(head_seq, &head_hash).map_err(broken)?;
                out.records += v.checked;
                out.chains.push((chain.clone(), v.checked));
                break;
            }
            let mut accepted: Vec<(String, String, i64)> = Vec::new();
            for r in &rows {
                let seq: i64 = r.try_get("seq").map_err(db)?;
                let get = |col: &str| r.try_get::<String, _>(col).map_err(db);
                let (prev, hash, content) = (get("prev_hash")?, get("hash")?, get("content")?);
                // Records older than the retention were pruned: the chain starts right after them, linked to the
                // last pruned one (or to the genesis); a record missing before it is a gap.
                let verifier = v.get_or_insert_with(|| {
                    if through == 0 {
                        Verifier::default()
                    } else {
                        Verifier::starting_at(through + 1, &prev)
                    }
                });
                verifier.next(seq, &prev, &content, &hash).map_err(broken)?;
                let record = |why: String| Finding::Record {
                    chain: chain.clone(),
                    seq,
                    why,
                };
                let c = Content::parse(&content).map_err(record)?;
                let at_us: i64 = r.try_get("at_us").map_err(db)?;
                let derived = [
                    ("kind", Some(get("kind")?), Some(c.kind.clone())),
                    ("at_us", Some(at_us.to_string()), Some(c.at_us.to_string())),
                    (
                        "hop",
                        Some(get("hop")?),
                        Some(c.hop.clone().unwrap_or_default()),
                    ),
                    (
                        "message_id",
                        Some(get("message_id")?),
                        Some(c.message_id.clone().unwrap_or_default()),
                    ),
                    // Outcome records older than this version named no agency: checked against the message.
                    (
                        "agency",
                        Some(get("agency")?),
                        if c.kind == record::OUTCOME && c.agency.is_none() {
                            None
                        } else {
                            Some(c.agency.clone().unwrap_or_default())
                        },
                    ),
                ];
                for (column, found, expected) in derived {
                    if expected.is_some() && found != expected {
                        return Err(Finding::Derived {
                            table: "journal_records",
                            key: format!("chain={chain}, seq={seq}"),
                            column: column.to_owned(),
                            expected: shown(&expected),
                            found: shown(&found),
                        }
                        .into());
                    }
                }
                if c.kind == record::ANCHOR {
                    for h in c.heads.iter().flatten() {
                        anchors.push((chain.clone(), seq, h.clone()));
                    }
                }
                if c.is_acceptance() {
                    accepted.push((
                        c.hop.clone().unwrap_or_default(),
                        c.message_id.clone().unwrap_or_default(),
                        seq,
                    ));
                }
                after = seq;
            }
            // Every message the chain accepted has its row (unless it ended and was pruned with its records).
            present(&mut *conn, &chain, &accepted).await?;
        }
    }
    // Records of a chain the journal does not list.
    let listed = sqlx::query(
        "SELECT DISTINCT chain FROM journal_records WHERE chain NOT IN (SELECT chain FROM journal_chains)",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    if let Some(r) = listed.first() {
        let chain: String = r.try_get("chain").map_err(db)?;
        return Err(Finding::Row {
            table: "journal_records",
            key: format!("chain={chain}"),
            why: "records of a chain journal_chains does not list (its head is gone)".into(),
        }
        .into());
    }
    for (chain, seq, h) in anchors {
        let anchor = |why: String| Finding::Anchor {
            chain: chain.clone(),
            seq,
            why,
        };
        let Some(through) = pruned.get(&h.chain) else {
            return Err(anchor(format!(
                "names chain {}, which the journal does not hold",
                h.chain
            ))
            .into());
        };
        if h.seq <= *through {
            continue;
        }
        let found = sqlx::query("SELECT hash FROM journal_records WHERE chain = $1 AND seq = $2")
            .bind(h.chain.clone())
            .bind(h.seq)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db)?;
        let found: Option<String> = found.map(|r| r.try_get("hash")).transpose().map_err(db)?;
        if found.as_deref() != Some(h.hash.as_str()) {
            return Err(anchor(format!(
                "names record {} of chain {} with hash {}, which that chain does not hold (it was changed or removed)",
                h.seq, h.chain, h.hash
            ))
            .into());
        }
        out.anchors += 1;
    }
    out.messages = messages(&mut *conn).await?;
    out.outbox = outbox(&mut *conn).await?;
    out.bodies = bodies(&mut *conn).await?;
    Ok(out)
}

/// Each accepted message's row is there, or it ended and went with the records the retention pruned.
async fn present(
    conn: &mut AnyConnection,
    chain: &str,
    accepted: &[(String, String, i64)],
) -> Result<(), JournalError> {
    let mut by_hop: BTreeMap<&str, Vec<&(String, String, i64)>> = BTreeMap::new();
    for a in accepted {
        by_hop.entry(&a.0).or_default().push(a);
    }
    for (hop, list) in by_hop {
        for chunk in list.chunks(500) {
            let ids: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
            // Only placeholders are formatted in; every value is bound.
            let sql = format!(
                "SELECT message_id FROM messages WHERE hop = $1 AND message_id IN ({})",
                ids.join(", ")
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(hop.to_owned());
            for a in chunk {
                q = q.bind(a.1.clone());
            }
            let found: std::collections::HashSet<String> = q
                .fetch_all(&mut *conn)
                .await
                .map_err(db)?
                .iter()
                .filter_map(|r| r.try_get::<String, _>("message_id").ok())
                .collect();
            if let Some(missing) = chunk.iter().find(|a| !found.contains(&a.1)) {
                return Err(Finding::Row {
                    table: "messages",
                    key: format!("hop={hop}, message_id={}", missing.1),
                    why: format!(
                        "missing, though chain {chain} accepted it (record {}); `journal rebuild-index` writes it again",
                        missing.2
                    ),
                }
                .into());
            }
        }
    }
    Ok(())
}

/// A page of messages' records: per (hop, message id), their contents and agency columns.
type RecordsOf = HashMap<(String, String), Vec<(Content, String)>>;

async fn records_of(
    conn: &mut AnyConnection,
    hop: &str,
    ids: &[String],
) -> Result<RecordsOf, JournalError> {
    let mut out: RecordsOf = HashMap::new();
    for chunk in ids.chunks(500) {
        let list: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
        let sql = format!(
            "SELECT chain, seq, message_id, agency, content FROM journal_records
             WHERE hop = $1 AND message_id IN ({}) AND kind <> 'anchor'",
            list.join(", ")
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(hop.to_owned());
        for id in chunk {
            q = q.bind(id.clone());
        }
        for r in q.fetch_all(&mut *conn).await.map_err(db)? {
            let id: String = r.try_get("message_id").map_err(db)?;
            let text: String = r.try_get("content").map_err(db)?;
            let c = Content::parse(&text).map_err(|why| Finding::Record {
                chain: r.try_get("chain").unwrap_or_default(),
                seq: r.try_get("seq").unwrap_or_default(),
                why,
            })?;
            out.entry((hop.to_owned(), id))
                .or_default()
                .push((c, r.try_get("agency").map_err(db)?));
        }
    }
    Ok(out)
}

/// Every messages row against the records of its message.
async fn messages(conn: &mut AnyConnection) -> Result<u64, JournalError> {
    let mut n = 0u64;
    let (mut after_hop, mut after_id) = (String::new(), String::new());
    loop {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{MESSAGE_SELECT} WHERE hop > $1 OR (hop = $1 AND message_id > $2)
             ORDER BY hop, message_id LIMIT 500"
        )))
        .bind(after_hop.clone())
        .bind(after_id.clone())
        .fetch_all(&mut *conn)
        .await
        .map_err(db)?;
        let Some(last) = rows.last() else {
            return Ok(n);
        };
        after_hop = last.try_get("hop").map_err(db)?;
        after_id = last.try_get("message_id").map_err(db)?;
        let mut by_hop: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in &rows {
            by_hop
                .entry(r.try_get("hop").map_err(db)?)
                .or_default()
                .push(r.try_get("message_id").map_err(db)?);
        }
        let mut records: RecordsOf = HashMap::new();
        for (hop, ids) in &by_hop {
            records.extend(records_of(&mut *conn, hop, ids).await?);
        }
        for r in &rows {
            let hop: String = r.try_get("hop").map_err(db)?;
            let id: String = r.try_get("message_id").map_err(db)?;
            let key = format!("hop={hop}, message_id={id}");
            let mine = records
                .remove(&(hop.clone(), id.clone()))
                .unwrap_or_default();
            if !mine.iter().any(|(c, _)| c.is_acceptance()) {
                return Err(Finding::Row {
                    table: "messages",
                    key,
                    why: "no acceptance record in any chain holds this message (a row added, or its records removed)"
                        .into(),
                }
                .into());
            }
            let contents: Vec<Content> = mine.iter().map(|(c, _)| c.clone()).collect();
            let folded = Folded::of(&hop, &id, &contents).map_err(|why| Finding::Row {
                table: "messages",
                key: key.clone(),
                why,
            })?;
            compare(&folded, r)?;
            // Each record's agency column is its message's agency.
            let agency = folded.columns.get("agency").cloned().flatten();
            if let Some((_, found)) = mine.iter().find(|(_, a)| Some(a) != agency.as_ref()) {
                return Err(Finding::Derived {
                    table: "journal_records",
                    key,
                    column: "agency".into(),
                    expected: shown(&agency),
                    found: shown(&Some(found.clone())),
                }
                .into());
            }
            n += 1;
        }
    }
}

/// Every outbox row belongs to a pending message of the same agency and body; every queued message has one.
async fn outbox(conn: &mut AnyConnection) -> Result<u64, JournalError> {
    let rows = sqlx::query(
        "SELECT o.hop, o.message_id, o.agency, o.body_sha256, o.delivery, o.bytes, m.agency AS m_agency, m.status,
             m.body_sha256 AS m_sha, m.delivery AS m_delivery, m.body_size,
             (SELECT COUNT(*) FROM journal_bodies b WHERE b.sha256 = o.body_sha256) AS kept
         FROM outbox o LEFT JOIN messages m ON m.hop = o.hop AND m.message_id = o.message_id",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    for r in &rows {
        let get = |c: &str| r.try_get::<Option<String>, _>(c).map_err(db);
        let key = format!(
            "hop={}, message_id={}",
            get("hop")?.unwrap_or_default(),
            get("message_id")?.unwrap_or_default()
        );
        let Some(status) = get("status")? else {
            return Err(Finding::Row {
                table: "outbox",
                key,
                why: "a delivery of a message the journal does not hold".into(),
            }
            .into());
        };
        if status != "queued" && status != "in_progress" {
            return Err(Finding::Row {
                table: "outbox",
                key,
                why: format!("a delivery of a message that ended ({status})"),
            }
            .into());
        }
        let int = |c: &str| r.try_get::<Option<i64>, _>(c).map_err(db);
        if int("kept")?.unwrap_or(0) == 0 {
            return Err(Finding::Row {
                table: "outbox",
                key,
                why: "a delivery whose packet the journal no longer holds (journal_bodies lacks its SHA-256)".into(),
            }
            .into());
        }
        for (column, mine, theirs) in [
            ("agency", get("agency")?, get("m_agency")?),
            ("body_sha256", get("body_sha256")?, get("m_sha")?),
            ("delivery", get("delivery")?, get("m_delivery")?),
            (
                "bytes",
                int("bytes")?.map(|n| n.to_string()),
                int("body_size")?.map(|n| n.to_string()),
            ),
        ] {
            if mine != theirs {
                return Err(Finding::Derived {
                    table: "outbox",
                    key,
                    column: column.into(),
                    expected: shown(&theirs),
                    found: shown(&mine),
                }
                .into());
            }
        }
    }
    // Owed and held by nobody: a queued packet, or a direct one the journal kept the packet of (its request).
    let lost = sqlx::query(
        "SELECT hop, message_id FROM messages m
         WHERE (status = 'queued' OR (status = 'in_progress' AND request IS NOT NULL))
           AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.hop = m.hop AND o.message_id = m.message_id) LIMIT 1",
    )
    .fetch_optional(&mut *conn)
    .await
    .map_err(db)?;
    if let Some(r) = lost {
        let hop: String = r.try_get("hop").map_err(db)?;
        let id: String = r.try_get("message_id").map_err(db)?;
        return Err(Finding::Row {
            table: "outbox",
            key: format!("hop={hop}, message_id={id}"),
            why: "missing: the message is owed (queued, or in progress with its packet kept), so nothing would deliver it".into(),
        }
        .into());
    }
    Ok(rows.len() as u64)
}

/// Every kept body hashes to its key.
async fn bodies(conn: &mut AnyConnection) -> Result<u64, JournalError> {
    let mut n = 0u64;
    let mut after = String::new();
    loop {
        let rows = sqlx::query(
            "SELECT sha256, size, body FROM journal_bodies WHERE sha256 > $1 ORDER BY sha256 LIMIT 64",
        )
        .bind(after.clone())
        .fetch_all(&mut *conn)
        .await
        .map_err(db)?;
        let Some(last) = rows.last() else {
            return Ok(n);
        };
        after = last.try_get("sha256").map_err(db)?;
        for r in &rows {
            let key: String = r.try_get("sha256").map_err(db)?;
            let body: Vec<u8> = r.try_get("body").map_err(db)?;
            let size: i64 = r.try_get("size").map_err(db)?;
            let actual = hex::encode(Sha256::digest(&body));
            if actual != key || usize::try_from(size).ok() != Some(body.len()) {
                return Err(Finding::Derived {
                    table: "journal_bodies",
                    key: format!("sha256={key}"),
                    column: "body".into(),
                    expected: format!("bytes whose SHA-256 is {key}"),
                    found: format!("{} bytes whose SHA-256 is {actual}", body.len()),
                }
                .into());
            }
            n += 1;
        }
    }
}

/// Writes the derived tables anew from the chains, in the writer's transaction: each record's columns from its
/// content, each message's row from its records, the outbox from the messages still pending (a row kept where one
/// is, added — due now — where the body is there and none is).
pub(crate) async fn rebuild<S: Store>(
    conn: &mut S,
    dialect: Dialect,
    at: i64,
) -> Result<Rebuilt, DbError> {
    let mut out = Rebuilt::default();
    // The records' own columns.
    let (mut chain, mut seq) = (String::new(), 0i64);
    loop {
        let rows = conn
            .fetch(
                "SELECT chain, seq, at_us, kind, hop, message_id, agency, content FROM journal_records
                 WHERE chain > $1 OR (chain = $1 AND seq > $2) ORDER BY chain, seq LIMIT 1000",
                vec![chain.clone().into(), seq.into()],
            )
            .await?;
        let Some(last) = rows.last() else { break };
        (chain, seq) = (last.text(0)?, last.int(1)?);
        for r in &rows {
            let Ok(c) = Content::parse(&r.text(7)?) else {
                continue;
            };
            let derived = (
                c.at_us,
                c.kind.clone(),
                c.hop.clone().unwrap_or_default(),
                c.message_id.clone().unwrap_or_default(),
            );
            let stored = (r.int(2)?, r.text(3)?, r.text(4)?, r.text(5)?);
            let agency_known = c.agency.clone();
            if derived != stored
                || agency_known
                    .as_ref()
                    .is_some_and(|a| *a != r.text(6).unwrap_or_default())
            {
                conn.fetch(
                    "UPDATE journal_records SET at_us = $1, kind = $2, hop = $3, message_id = $4,
                         agency = COALESCE($5, agency) WHERE chain = $6 AND seq = $7",
                    vec![
                        derived.0.into(),
                        derived.1.into(),
                        derived.2.into(),
                        derived.3.into(),
                        Param::from(agency_known),
                        r.text(0)?.into(),
                        r.int(1)?.into(),
                    ],
                )
                .await?;
                out.records += 1;
            }
        }
    }
    // The messages.
    conn.fetch("DELETE FROM messages", Vec::new()).await?;
    let (mut hop, mut id) = (String::new(), String::new());
    loop {
        let ids = conn
            .fetch(
                "SELECT DISTINCT hop, message_id FROM journal_records
                 WHERE kind IN ('accepted', 'accepted_again') AND (hop > $1 OR (hop = $1 AND message_id > $2))
                 ORDER BY hop, message_id LIMIT 500",
                vec![hop.clone().into(), id.clone().into()],
            )
            .await?;
        let Some(last) = ids.last() else { break };
        (hop, id) = (last.text(0)?, last.text(1)?);
        for m in &ids {
            let (h, i) = (m.text(0)?, m.text(1)?);
            let rows = conn
                .fetch(
                    "SELECT content FROM journal_records WHERE hop = $1 AND message_id = $2 AND kind <> 'anchor'",
                    vec![h.clone().into(), i.clone().into()],
                )
                .await?;
            let contents: Vec<Content> = rows
                .iter()
                .filter_map(|r| r.text(0).ok())
                .filter_map(|t| Content::parse(&t).ok())
                .collect();
            let Ok(f) = Folded::of(&h, &i, &contents) else {
                continue;
            };
            let col = |c: &str| f.columns.get(c).cloned().flatten();
            let int = |c: &str| col(c).and_then(|v| v.parse::<i64>().ok());
            let json = |c: &str| f.json.get(c).cloned().flatten().map(|v| v.to_string());
            conn.fetch(
                "INSERT INTO messages (hop, message_id, agency, route, message_type, mode, idempotency_key,
                     body_sha256, body_size, delivery, request, status, upstream_status, receipt, answer_type, detail,
                     accepted_us, updated_us, attempts, subject, approval, hop_signature)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20,
                     $21, $22)",
                vec![
                    f.hop.clone().into(),
                    f.message_id.clone().into(),
                    col("agency").unwrap_or_default().into(),
                    col("route").unwrap_or_default().into(),
                    col("message_type").into(),
                    col("mode").unwrap_or_default().into(),
                    col("idempotency_key").into(),
                    col("body_sha256").unwrap_or_default().into(),
                    int("body_size").unwrap_or(0).into(),
                    col("delivery").unwrap_or_default().into(),
                    col("request").into(),
                    col("status").unwrap_or_default().into(),
                    int("upstream_status").into(),
                    col("receipt").into(),
                    col("answer_type").into(),
                    col("detail").into(),
                    int("accepted_us").unwrap_or(0).into(),
                    int("updated_us").unwrap_or(0).into(),
                    int("attempts").unwrap_or(0).into(),
                    col("subject").into(),
                    json("approval").into(),
                    json("hop_signature").into(),
                ],
            )
            .await?;
            out.messages += 1;
        }
    }
    // The outbox: rows of ended or missing messages go, pending messages with a body and no row get one.
    out.outbox_removed = conn
        .fetch(
            "DELETE FROM outbox WHERE NOT EXISTS (
                 SELECT 1 FROM messages m WHERE m.hop = outbox.hop AND m.message_id = outbox.message_id
                   AND m.status IN ('queued', 'in_progress') AND m.agency = outbox.agency
                   AND m.body_sha256 = outbox.body_sha256)
             RETURNING hop",
            Vec::new(),
        )
        .await?
        .len() as u64;
    let _ = dialect;
    out.outbox_added = conn
        .fetch(
            "INSERT INTO outbox (hop, message_id, agency, body_sha256, bytes, delivery, accepted_us, due_us, attempts,
                 lease_owner)
             SELECT m.hop, m.message_id, m.agency, m.body_sha256, b.size, m.delivery, m.accepted_us, $1, 0, NULL
             FROM messages m JOIN journal_bodies b ON b.sha256 = m.body_sha256
             WHERE m.status IN ('queued', 'in_progress') AND m.request IS NOT NULL
               AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.hop = m.hop AND o.message_id = m.message_id)
             RETURNING hop",
            vec![at.into()],
        )
        .await?
        .len() as u64;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(json: &str) -> Content {
        Content::parse(json).unwrap()
    }

    #[test]
    fn a_message_folds_from_its_records_in_order_and_refuses_what_cannot_happen() {
        let accepted = content(
            r#"{"kind":"accepted","at_us":10,"hop":"lgsp","message_id":"m","agency":"A","route":"r","message_type":"T","mode":"production","idempotency_key":"k","sha256":"s","size":3,"delivery":"queued","request":null}"#,
        );
        let outcome = content(
            r#"{"kind":"outcome","at_us":12,"hop":"lgsp","message_id":"m","agency":"A","status":"delivered","upstream_status":200,"receipt":"{}","answer_type":"application/json","detail":null,"attempts":2}"#,
        );
        // Given in any order, folded in the order they happened.
        let f = Folded::of("lgsp", "m", &[outcome.clone(), accepted.clone()]).unwrap();
        let col = |c: &str| f.columns.get(c).cloned().flatten();
        assert_eq!(col("status").as_deref(), Some("delivered"));
        assert_eq!(col("attempts").as_deref(), Some("2"));
        assert_eq!(
            (col("accepted_us").as_deref(), col("updated_us").as_deref()),
            (Some("10"), Some("12"))
        );
        assert_eq!(f.columns.get("request"), Some(&None));
        // An outcome with nothing accepted, and two acceptances, are not a message.
        assert!(Folded::of("lgsp", "m", std::slice::from_ref(&outcome)).is_err());
        let mut twice = accepted.clone();
        twice.at_us = 11;
        assert!(Folded::of("lgsp", "m", &[accepted, twice]).is_err());
    }

    #[test]
    fn old_records_leave_unknown_columns_unchecked() {
        let accepted = content(
            r#"{"agency":"A","at_us":1,"delivery":"direct","hop":"lgsp","idempotency_key":null,"kind":"accepted","message_id":"m","message_type":"T","mode":"production","route":"r","sha256":"s","size":1}"#,
        );
        let outcome = content(
            r#"{"at_us":2,"detail":null,"hop":"lgsp","kind":"outcome","message_id":"m","receipt":null,"status":"failed","upstream_status":502}"#,
        );
        let f = Folded::of("lgsp", "m", &[accepted, outcome]).unwrap();
        for unknown in ["request", "answer_type", "attempts"] {
            assert!(!f.columns.contains_key(unknown), "{unknown}");
        }
        assert_eq!(f.columns.get("status"), Some(&Some("failed".into())));
    }
}
