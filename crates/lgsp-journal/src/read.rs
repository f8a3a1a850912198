//! What the journal answers from its read-only connections: one message or a page of an agency's, the monthly
//! report, profiles and approvals, the outbox's depth, records for export. Every look-up names the agency it
//! answers, and no query here writes.

use std::collections::HashSet;
use std::io::Write;

use sqlx::Row;

use crate::model::{ApprovalReport, ApprovalSent, Message, ProfileSent, ReportRow, Status};
use crate::{Journal, JournalError, Query, now_us};

/// One record as the chain holds it: the content as the text its hash covers.
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    pub chain: &'a str,
    pub seq: i64,
    pub prev_hash: &'a str,
    pub hash: &'a str,
    pub content: &'a str,
}

impl Journal {
    /// Before a read: what this process's writer answered is committed (SQLite's writer keeps a transaction open
    /// for a few milliseconds, its batches durable in the redo log), so the read sees it. A writer that cannot
    /// commit now leaves the read to what is committed.
    pub(crate) async fn visible(&self) {
        if self.dialect == crate::Dialect::Sqlite {
            let _ = self.flush().await;
        }
    }

    /// A message of `agency` at `hop` (another agency's is not found).
    pub async fn message(
        &self,
        hop: &str,
        agency: &str,
        message_id: &str,
    ) -> Result<Option<Message>, JournalError> {
        self.visible().await;
        let row = sqlx::query(concat!(
            "SELECT ",
            joined_message_columns!(),
            " WHERE m.hop = $1 AND m.message_id = $2 AND m.agency = $3"
        ))
        .bind(hop.to_owned())
        .bind(message_id.to_owned())
        .bind(agency.to_owned())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| JournalError::from_db(&e))?;
        Ok(row.map(|r| Message::from_row(&r)).transpose()?)
    }

    /// The profile packets (HoSoCBCCVC) an agency sent through `hop` for these SoCCCDs before `before_us`, oldest
    /// first; rejected, failed and expired ones left out (they did not arrive). Looked up by subject, so the work
    /// is bounded by the approval that asks, not by the agency's size.
    pub async fn profiles(
        &self,
        hop: &str,
        agency: &str,
        subjects: &[String],
        before_us: i64,
    ) -> Result<Vec<ProfileSent>, JournalError> {
        self.visible().await;
        let mut out = Vec::new();
        for chunk in subjects.chunks(500) {
            let list: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 4)).collect();
            let sql = format!(
                "SELECT subject, body_sha256, message_id, accepted_us FROM messages
                 WHERE hop = $1 AND agency = $2 AND accepted_us < $3 AND message_type = 'HoSoCBCCVC'
                   AND status NOT IN ('rejected', 'failed', 'expired') AND subject IN ({})
                 ORDER BY accepted_us, message_id",
                list.join(", ")
            );
            // Only placeholders are formatted in; every value is bound.
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(hop.to_owned())
                .bind(agency.to_owned())
                .bind(before_us);
            for s in chunk {
                q = q.bind(s.clone());
            }
            let rows = q
                .fetch_all(&self.pool)
                .await
                .map_err(|e| JournalError::from_db(&e))?;
            for r in &rows {
                let get = |c: &str| -> Result<String, JournalError> {
                    r.try_get::<String, _>(c)
                        .map_err(|e| JournalError::from_db(&e))
                };
                out.push(ProfileSent {
                    hop: hop.to_owned(),
                    agency: agency.to_owned(),
                    subject: get("subject")?,
                    sha256: get("body_sha256")?,
                    message_id: get("message_id")?,
                    accepted_us: r
                        .try_get::<i64, _>("accepted_us")
                        .map_err(|e| JournalError::from_db(&e))?,
                });
            }
        }
        out.sort_by(|a, b| (a.accepted_us, &a.message_id).cmp(&(b.accepted_us, &b.message_id)));
        Ok(out)
    }

    /// Per hop and agency: the approvals of `month` (`YYYY-MM`) that arrived from `from_us` on, and the profiles
    /// accepted within `[from_us, to_us)` — each SoCCCD's last — that none of them lists.
    pub async fn approval_report(
        &self,
        month: &str,
        from_us: i64,
        to_us: i64,
    ) -> Result<Vec<ApprovalReport>, JournalError> {
        self.visible().await;
        let db = |e: sqlx::Error| JournalError::from_db(&e);
        let approvals = sqlx::query(
            "SELECT hop, agency, message_id, approval FROM messages
             WHERE message_type = 'PheDuyetDuLieu' AND approval IS NOT NULL AND accepted_us >= $1
               AND status NOT IN ('rejected', 'failed', 'expired')
             ORDER BY accepted_us, message_id",
        )
        .bind(from_us)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let mut out: std::collections::BTreeMap<(String, String), ApprovalReport> =
            std::collections::BTreeMap::new();
        let mut approved: HashSet<(String, String, String, String)> = HashSet::new();
        for r in &approvals {
            let (hop, agency, message_id, text): (String, String, String, String) = (
                r.try_get("hop").map_err(db)?,
                r.try_get("agency").map_err(db)?,
                r.try_get("message_id").map_err(db)?,
                r.try_get("approval").map_err(db)?,
            );
            let Ok(approval) = serde_json::from_str::<serde_json::Value>(&text) else {
                continue;
            };
            if approval["month"] != month {
                continue;
            }
            for p in approval["profiles"].as_array().into_iter().flatten() {
                approved.insert((
                    hop.clone(),
                    agency.clone(),
                    p["SoCCCD"].as_str().unwrap_or_default().to_owned(),
                    p["BamSHA256"].as_str().unwrap_or_default().to_owned(),
                ));
            }
            out.entry((hop.clone(), agency.clone()))
                .or_insert_with(|| ApprovalReport {
                    hop: hop.clone(),
                    agency: agency.clone(),
                    approvals: Vec::new(),
                    unapproved: Vec::new(),
                })
                .approvals
                .push(ApprovalSent {
                    hop,
                    agency,
                    message_id,
                    approval,
                });
        }
        let profiles = sqlx::query(
            "SELECT hop, agency, subject, body_sha256, message_id, accepted_us FROM messages
             WHERE message_type = 'HoSoCBCCVC' AND subject IS NOT NULL AND accepted_us >= $1 AND accepted_us < $2
               AND status NOT IN ('rejected', 'failed', 'expired')
             ORDER BY accepted_us, message_id",
        )
        .bind(from_us)
        .bind(to_us)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        // Each subject's last profile of the month at each hop and agency.
        let mut last: std::collections::BTreeMap<(String, String, String), ProfileSent> =
            std::collections::BTreeMap::new();
        for r in &profiles {
            let p = ProfileSent {
                hop: r.try_get("hop").map_err(db)?,
                agency: r.try_get("agency").map_err(db)?,
                subject: r.try_get("subject").map_err(db)?,
                sha256: r.try_get("body_sha256").map_err(db)?,
                message_id: r.try_get("message_id").map_err(db)?,
                accepted_us: r.try_get("accepted_us").map_err(db)?,
            };
            last.insert((p.hop.clone(), p.agency.clone(), p.subject.clone()), p);
        }
        for ((hop, agency, subject), p) in last {
            if approved.contains(&(hop.clone(), agency.clone(), subject, p.sha256.clone())) {
                continue;
            }
            out.entry((hop.clone(), agency.clone()))
                .or_insert_with(|| ApprovalReport {
                    hop,
                    agency,
                    approvals: Vec::new(),
                    unapproved: Vec::new(),
                })
                .unapproved
                .push(p);
        }
        Ok(out.into_values().collect())
    }

    /// A page of an agency's messages, oldest first.
    pub async fn messages(&self, q: &Query) -> Result<Vec<Message>, JournalError> {
        self.visible().await;
        let (after_us, after_id) = q.after.clone().unwrap_or((i64::MIN, String::new()));
        let rows = sqlx::query(concat!(
            "SELECT ",
            joined_message_columns!(),
            " WHERE m.hop = $1 AND m.agency = $2 AND m.accepted_us >= $3 AND m.accepted_us < $4
               AND ($5 = '' OR m.status = $5)
               AND (m.accepted_us > $6 OR (m.accepted_us = $6 AND m.message_id > $7))
             ORDER BY m.accepted_us, m.message_id LIMIT $8"
        ))
        .bind(q.hop.clone())
        .bind(q.agency.clone())
        .bind(q.from_us.unwrap_or(i64::MIN))
        .bind(q.to_us.unwrap_or(i64::MAX))
        .bind(q.status.map_or("", Status::as_str))
        .bind(after_us)
        .bind(after_id)
        .bind(i64::from(q.limit.clamp(1, 1000)))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| JournalError::from_db(&e))?;
        Ok(rows
            .iter()
            .map(Message::from_row)
            .collect::<Result<_, _>>()?)
    }

    /// Writes the records between `from_us` and `to_us` as JSON lines (chain, seq, hashes, content).
    pub async fn export(
        &self,
        from_us: i64,
        to_us: i64,
        out: &mut dyn Write,
    ) -> Result<u64, JournalError> {
        self.each_record(from_us, to_us, &mut |r| {
            let record: serde_json::Value =
                serde_json::from_str(r.content).unwrap_or(serde_json::Value::Null);
            let line = serde_json::json!({
                "chain": r.chain,
                "seq": r.seq,
                "prev_hash": r.prev_hash,
                "hash": r.hash,
                "record": record,
            });
            writeln!(out, "{line}")
        })
        .await
    }

    /// Hands each record between `from_us` and `to_us` to `f`, chain by chain in order, a page of 1000 at a
    /// time; the number of records.
    pub async fn each_record(
        &self,
        from_us: i64,
        to_us: i64,
        f: &mut dyn FnMut(RecordRef<'_>) -> std::io::Result<()>,
    ) -> Result<u64, JournalError> {
        self.visible().await;
        let (mut chain, mut after) = (String::new(), 0i64);
        let mut n = 0u64;
        loop {
            let rows = sqlx::query(
                "SELECT chain, seq, at_us, content, prev_hash, hash FROM journal_records
                 WHERE (chain > $1 OR (chain = $1 AND seq > $2)) AND at_us >= $3 AND at_us < $4
                 ORDER BY chain, seq LIMIT 1000",
            )
            .bind(chain.clone())
            .bind(after)
            .bind(from_us)
            .bind(to_us)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| JournalError::from_db(&e))?;
            if rows.is_empty() {
                return Ok(n);
            }
            for r in &rows {
                let get = |c: &str| {
                    r.try_get::<String, _>(c)
                        .map_err(|e| JournalError::from_db(&e))
                };
                let seq: i64 = r.try_get("seq").map_err(|e| JournalError::from_db(&e))?;
                chain = get("chain")?;
                f(RecordRef {
                    chain: &chain,
                    seq,
                    prev_hash: &get("prev_hash")?,
                    hash: &get("hash")?,
                    content: &get("content")?,
                })
                .map_err(|e| JournalError::Unavailable(format!("writing the export: {e}")))?;
                after = seq;
                n += 1;
            }
        }
    }

    /// Per hop, agency and message type, the messages accepted between `from_us` and `to_us` and where they stand.
    pub async fn report(&self, from_us: i64, to_us: i64) -> Result<Vec<ReportRow>, JournalError> {
        self.visible().await;
        let rows = sqlx::query(
            "SELECT hop, agency, COALESCE(message_type, route) AS message_type, status, COUNT(*) AS n FROM messages
             WHERE accepted_us >= $1 AND accepted_us < $2
             GROUP BY hop, agency, COALESCE(message_type, route), status
             ORDER BY hop, agency, message_type",
        )
        .bind(from_us)
        .bind(to_us)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| JournalError::from_db(&e))?;
        let mut out: Vec<ReportRow> = Vec::new();
        for r in &rows {
            let hop: String = r.try_get("hop").map_err(|e| JournalError::from_db(&e))?;
            let agency: String = r.try_get("agency").map_err(|e| JournalError::from_db(&e))?;
            let message_type: String = r
                .try_get("message_type")
                .map_err(|e| JournalError::from_db(&e))?;
            let status: String = r.try_get("status").map_err(|e| JournalError::from_db(&e))?;
            let n = u64::try_from(
                r.try_get::<i64, _>("n")
                    .map_err(|e| JournalError::from_db(&e))?,
            )
            .unwrap_or(0);
            if out.last().is_none_or(|l| {
                l.hop != hop || l.agency != agency || l.message_type != message_type
            }) {
                out.push(ReportRow {
                    hop,
                    agency,
                    message_type,
                    ..ReportRow::default()
                });
            }
            if let Some(row) = out.last_mut() {
                row.received += n;
                match Status::parse(&status) {
                    Some(Status::Delivered) => row.delivered += n,
                    Some(Status::Rejected) => row.rejected += n,
                    Some(s) if s.pending() => row.pending += n,
                    _ => row.failed += n,
                }
            }
        }
        Ok(out)
    }

    /// A page of the messages of `hop` accepted within `[from_us, to_us)` that ended `status`, every agency's, in
    /// (accepted, message id) order after `after`: the operator's end-to-end check reads them.
    pub async fn ended(
        &self,
        hop: &str,
        status: Status,
        (from_us, to_us): (i64, i64),
        after: Option<(i64, String)>,
        limit: u32,
    ) -> Result<Vec<Message>, JournalError> {
        self.visible().await;
        let (after_us, after_id) = after.unwrap_or((i64::MIN, String::new()));
        let rows = sqlx::query(concat!(
            "SELECT ",
            joined_message_columns!(),
            " WHERE m.hop = $1 AND m.status = $2 AND m.accepted_us >= $3 AND m.accepted_us < $4
               AND (m.accepted_us > $5 OR (m.accepted_us = $5 AND m.message_id > $6))
             ORDER BY m.accepted_us, m.message_id LIMIT $7"
        ))
        .bind(hop.to_owned())
        .bind(status.as_str())
        .bind(from_us)
        .bind(to_us)
        .bind(after_us)
        .bind(after_id)
        .bind(i64::from(limit.clamp(1, 1000)))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| JournalError::from_db(&e))?;
        Ok(rows
            .iter()
            .map(Message::from_row)
            .collect::<Result<_, _>>()?)
    }

    /// The chains whose writer committed within `within`: gateways writing this journal now.
    pub async fn writers_within(
        &self,
        within: std::time::Duration,
    ) -> Result<Vec<String>, JournalError> {
        self.visible().await;
        let since = now_us().saturating_sub(i64::try_from(within.as_micros()).unwrap_or(i64::MAX));
        let rows =
            sqlx::query("SELECT chain FROM journal_chains WHERE alive_us >= $1 ORDER BY chain")
                .bind(since)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| JournalError::from_db(&e))?;
        rows.iter()
            .map(|r| r.try_get("chain").map_err(|e| JournalError::from_db(&e)))
            .collect()
    }

    /// The outbox of `hop`: queued messages, and the age of the oldest (seconds).
    pub async fn outbox(&self, hop: &str) -> Result<(u64, f64), JournalError> {
        self.visible().await;
        let row = sqlx::query(
            "SELECT COUNT(*) AS n, MIN(accepted_us) AS oldest FROM outbox WHERE hop = $1 AND delivery = 'queued'",
        )
        .bind(hop.to_owned())
        .fetch_one(&self.pool)
        .await
        .map_err(|e| JournalError::from_db(&e))?;
        let n: i64 = row.try_get("n").map_err(|e| JournalError::from_db(&e))?;
        let oldest: Option<i64> = row
            .try_get("oldest")
            .map_err(|e| JournalError::from_db(&e))?;
        let age = oldest.map_or(0.0, |o| (now_us().saturating_sub(o)).max(0) as f64 / 1e6);
        Ok((u64::try_from(n).unwrap_or(0), age))
    }
}
