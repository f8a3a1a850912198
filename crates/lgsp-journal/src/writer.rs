//! Group commit: every append (an acceptance, an outcome) goes to one writer task, which takes as many as are
//! waiting, writes them in one transaction — the chain's head row updated first, so appenders on other replicas
//! wait their turn — and answers each only once the commit (and its fsync) is done.

use sqlx::AnyPool;
use sqlx::{Any, Row, Transaction};
use tokio::sync::{mpsc, oneshot};

use crate::chain;
use crate::model::{Accepted, Admission, Message, Outcome, Status};
use crate::{JournalError, MAX_RECEIPT_BYTES, now_us};

/// At most this many appends per transaction.
const MAX_BATCH: usize = 512;

pub(crate) enum Job {
    Accept(
        Box<Accepted>,
        oneshot::Sender<Result<Admission, JournalError>>,
    ),
    Finish(Box<Outcome>, oneshot::Sender<Result<(), JournalError>>),
}

/// How long kept bodies stay, by delivery kind (set from the config).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Keep {
    /// After a message ends, its body stays this long (0: dropped at once).
    pub bodies_us: i64,
}

pub(crate) fn spawn(pool: AnyPool, keep: Keep) -> mpsc::Sender<Job> {
    let (tx, mut rx) = mpsc::channel::<Job>(4 * MAX_BATCH);
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut jobs = vec![first];
            while jobs.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            write(&pool, keep, jobs).await;
        }
    });
    tx
}

/// What one job wrote, answered once its transaction commits.
enum Written {
    Accept(Admission),
    Finish,
    /// An outcome for a message this hop never accepted: refused alone, the batch goes on.
    Unknown,
}

async fn write(pool: &AnyPool, keep: Keep, jobs: Vec<Job>) {
    match write_batch(pool, keep, &jobs).await {
        Ok(written) => {
            for (job, w) in jobs.into_iter().zip(written) {
                match (job, w) {
                    (Job::Accept(_, reply), Written::Accept(adm)) => {
                        let _ = reply.send(Ok(adm));
                    }
                    (Job::Finish(_, reply), Written::Finish) => {
                        let _ = reply.send(Ok(()));
                    }
                    (Job::Finish(o, reply), Written::Unknown) => {
                        let _ = reply.send(Err(JournalError::UnknownMessage(o.message_id.clone())));
                    }
                    (job, _) => reply_err(
                        job,
                        &sqlx::Error::Protocol("journal batch out of step".into()),
                    ),
                }
            }
        }
        // Everything in the batch fails together: nothing of it was written.
        Err(e) => {
            for job in jobs {
                reply_err(job, &e);
            }
        }
    }
}

/// Writes every job in one transaction and commits it.
async fn write_batch(
    pool: &AnyPool,
    keep: Keep,
    jobs: &[Job],
) -> Result<Vec<Written>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let (mut seq, mut prev) = head(&mut tx).await?;
    let mut written = Vec::with_capacity(jobs.len());
    for job in jobs {
        written.push(match job {
            Job::Accept(a, _) => {
                Written::Accept(accept(&mut tx, a, keep, &mut seq, &mut prev).await?)
            }
            Job::Finish(o, _) => {
                if finish(&mut tx, o, keep, &mut seq, &mut prev).await? {
                    Written::Finish
                } else {
                    Written::Unknown
                }
            }
        });
    }
    set_head(&mut tx, seq, &prev).await?;
    tx.commit().await?;
    Ok(written)
}

fn reply_err(job: Job, e: &sqlx::Error) {
    match job {
        Job::Accept(_, reply) => {
            let _ = reply.send(Err(JournalError::from_db(e)));
        }
        Job::Finish(_, reply) => {
            let _ = reply.send(Err(JournalError::from_db(e)));
        }
    }
}

/// Takes the chain's head for this transaction: the update comes first, so it holds the write lock (SQLite) or
/// the row lock (PostgreSQL) before anything is read.
async fn head(tx: &mut Transaction<'static, Any>) -> Result<(i64, String), sqlx::Error> {
    sqlx::query("UPDATE journal_head SET seq = seq WHERE id = 1")
        .execute(&mut **tx)
        .await?;
    let row = sqlx::query("SELECT seq, hash FROM journal_head WHERE id = 1")
        .fetch_one(&mut **tx)
        .await?;
    Ok((row.try_get("seq")?, row.try_get("hash")?))
}

async fn set_head(
    tx: &mut Transaction<'static, Any>,
    seq: i64,
    hash: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE journal_head SET seq = $1, hash = $2 WHERE id = 1")
        .bind(seq)
        .bind(hash.to_owned())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Appends one record to the chain.
#[allow(clippy::too_many_arguments)]
async fn record(
    tx: &mut Transaction<'static, Any>,
    seq: &mut i64,
    prev: &mut String,
    at_us: i64,
    kind: &str,
    hop: &str,
    message_id: &str,
    agency: &str,
    content: &serde_json::Value,
) -> Result<(), sqlx::Error> {
    let content = content.to_string();
    let next = *seq + 1;
    let hash = chain::hash(next, prev, &content);
    sqlx::query(
        "INSERT INTO journal_records (seq, at_us, kind, hop, message_id, agency, content, prev_hash, hash)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(next)
    .bind(at_us)
    .bind(kind.to_owned())
    .bind(hop.to_owned())
    .bind(message_id.to_owned())
    .bind(agency.to_owned())
    .bind(content)
    .bind(prev.clone())
    .bind(hash.clone())
    .execute(&mut **tx)
    .await?;
    *seq = next;
    *prev = hash;
    Ok(())
}

/// The message an acceptance repeats, if any: the same idempotency key of the same agency at this hop, or (from
/// a peer, whose message ids are kept) the same message id.
async fn existing(
    tx: &mut Transaction<'static, Any>,
    a: &Accepted,
) -> Result<Option<Message>, sqlx::Error> {
    let row = match &a.idempotency_key {
        Some(key) => {
            sqlx::query(concat!(
                "SELECT ",
                message_columns!(),
                " FROM messages WHERE hop = $1 AND agency = $2 AND idempotency_key = $3"
            ))
            .bind(a.hop.clone())
            .bind(a.agency.clone())
            .bind(key.clone())
            .fetch_optional(&mut **tx)
            .await?
        }
        None => None,
    };
    let row = match row {
        Some(r) => Some(r),
        None => {
            sqlx::query(concat!(
                "SELECT ",
                message_columns!(),
                " FROM messages WHERE hop = $1 AND message_id = $2"
            ))
            .bind(a.hop.clone())
            .bind(a.message_id.clone())
            .fetch_optional(&mut **tx)
            .await?
        }
    };
    row.map(|r| Message::from_row(&r)).transpose()
}

async fn accept(
    tx: &mut Transaction<'static, Any>,
    a: &Accepted,
    keep: Keep,
    seq: &mut i64,
    prev: &mut String,
) -> Result<Admission, sqlx::Error> {
    let at = now_us();
    let again = match existing(tx, a).await? {
        // A resend of a delivery that failed or expired, with the same body: try again under the first id.
        Some(m) if m.status.retryable() && m.body_sha256 == a.body_sha256 => Some(m),
        Some(m) => return Ok(Admission::Existing(Box::new(m))),
        None => None,
    };
    let message_id = again
        .as_ref()
        .map_or_else(|| a.message_id.clone(), |m| m.message_id.clone());
    let status = match a.delivery {
        crate::Delivery::Direct => Status::InProgress,
        crate::Delivery::Queued => Status::Queued,
    };
    let content = serde_json::json!({
        "kind": if again.is_some() { "accepted_again" } else { "accepted" },
        "at_us": at,
        "hop": a.hop,
        "message_id": message_id,
        "agency": a.agency,
        "route": a.route,
        "message_type": a.message_type,
        "mode": a.mode,
        "idempotency_key": a.idempotency_key,
        "sha256": a.body_sha256,
        "size": a.body_size,
        "delivery": a.delivery.as_str(),
    });
    record(
        tx,
        seq,
        prev,
        at,
        if again.is_some() {
            "accepted_again"
        } else {
            "accepted"
        },
        &a.hop,
        &message_id,
        &a.agency,
        &content,
    )
    .await?;
    let request = a
        .request
        .as_ref()
        .and_then(|r| serde_json::to_string(r).ok());
    let body_until = (keep.bodies_us > 0 || a.delivery == crate::Delivery::Queued)
        .then_some(i64::MAX)
        .filter(|_| a.body.is_some());
    if let Some(m) = again {
        sqlx::query(
            "UPDATE messages SET status = $1, delivery = $2, request = $3, body = $4, updated_us = $5,
                 upstream_status = NULL, receipt = NULL, detail = NULL, next_attempt_us = $6,
                 lease_owner = NULL, lease_until_us = NULL, body_until_us = $7, accepted_us = $8
             WHERE hop = $9 AND message_id = $10",
        )
        .bind(status.as_str())
        .bind(a.delivery.as_str())
        .bind(request)
        .bind(a.body.clone())
        .bind(at)
        .bind((a.delivery == crate::Delivery::Queued).then_some(at))
        .bind(body_until)
        .bind(at)
        .bind(m.hop.clone())
        .bind(m.message_id.clone())
        .execute(&mut **tx)
        .await?;
        return Ok(Admission::Again(Box::new(m)));
    }
    sqlx::query(
        "INSERT INTO messages (hop, message_id, agency, route, message_type, mode, idempotency_key, body_sha256,
             body_size, delivery, request, body, status, accepted_us, updated_us, attempts, next_attempt_us,
             body_until_us)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, 0, $16, $17)",
    )
    .bind(a.hop.clone())
    .bind(message_id)
    .bind(a.agency.clone())
    .bind(a.route.clone())
    .bind(a.message_type.clone())
    .bind(a.mode.clone())
    .bind(a.idempotency_key.clone())
    .bind(a.body_sha256.clone())
    .bind(i64::try_from(a.body_size).unwrap_or(i64::MAX))
    .bind(a.delivery.as_str())
    .bind(request)
    .bind(a.body.clone())
    .bind(status.as_str())
    .bind(at)
    .bind(at)
    .bind((a.delivery == crate::Delivery::Queued).then_some(at))
    .bind(body_until)
    .execute(&mut **tx)
    .await?;
    Ok(Admission::New)
}

async fn finish(
    tx: &mut Transaction<'static, Any>,
    o: &Outcome,
    keep: Keep,
    seq: &mut i64,
    prev: &mut String,
) -> Result<bool, sqlx::Error> {
    let at = now_us();
    let receipt = o.receipt.as_ref().map(|r| clip(r, MAX_RECEIPT_BYTES));
    let agency: Option<String> =
        sqlx::query("SELECT agency FROM messages WHERE hop = $1 AND message_id = $2")
            .bind(o.hop.clone())
            .bind(o.message_id.clone())
            .fetch_optional(&mut **tx)
            .await?
            .map(|r| r.try_get("agency"))
            .transpose()?;
    let Some(agency) = agency else {
        return Ok(false);
    };
    let content = serde_json::json!({
        "kind": "outcome",
        "at_us": at,
        "hop": o.hop,
        "message_id": o.message_id,
        "status": o.status.as_str(),
        "upstream_status": o.upstream_status,
        "receipt": receipt,
        "detail": o.detail,
    });
    record(
        tx,
        seq,
        prev,
        at,
        "outcome",
        &o.hop,
        &o.message_id,
        &agency,
        &content,
    )
    .await?;
    // Its body stays `keep_bodies` after it ends, or goes now.
    let body_until = at.saturating_add(keep.bodies_us);
    sqlx::query(
        "UPDATE messages SET status = $1, upstream_status = $2, receipt = $3, detail = $4, updated_us = $5,
             lease_owner = NULL, lease_until_us = NULL, next_attempt_us = NULL, body_until_us = $6,
             body = CASE WHEN $7 THEN body ELSE NULL END
         WHERE hop = $8 AND message_id = $9",
    )
    .bind(o.status.as_str())
    .bind(o.upstream_status.map(i64::from))
    .bind(receipt)
    .bind(o.detail.clone())
    .bind(at)
    .bind(body_until)
    .bind(keep.bodies_us > 0)
    .bind(o.hop.clone())
    .bind(o.message_id.clone())
    .execute(&mut **tx)
    .await?;
    Ok(true)
}

/// At most `max` bytes of `s`, cut at a character boundary.
pub(crate) fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}
