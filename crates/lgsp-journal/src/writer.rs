//! Group commit: every append (an acceptance, an outcome) goes to one writer task, which takes as many as are
//! waiting, writes them in one transaction — the chain's head row updated first, so appenders on other replicas
//! wait their turn — and answers each only once the commit (and its fsync) is done.

use std::sync::Arc;

use sqlx::AnyConnection;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::chain;
use crate::model::{Accepted, Admission, Message, Outcome, Status};
use crate::store::{Columns, DbError, Param, Store};
use crate::{Dialect, JournalError, MAX_RECEIPT_BYTES, now_us};

/// How long the writer waits for a new connection before failing its batch (as the pool waits for one).
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The `owner` of an outcome that ends a direct delivery abandoned in progress: written only while the message is
/// still in progress (a delivery worker's owner is `host:pid:hex` and never starts with `#`).
pub(crate) const ABANDONED: &str = "#abandoned";

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

/// Starts the writer on a thread of its own: each statement of a batch is a round trip to the database (a
/// PostgreSQL socket, or SQLite run by this thread itself), and a writer task on the request runtime would wait
/// behind the requests in its run queue after every one of them (measured under load: 2.2 ms a batch there, 1.1 ms
/// here).
pub(crate) fn spawn(
    url: String,
    dialect: Dialect,
    keep: Keep,
    queued: Arc<Notify>,
) -> Result<mpsc::Sender<Job>, JournalError> {
    let (tx, rx) = mpsc::channel::<Job>(4 * MAX_BATCH);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| JournalError::Open(format!("the journal writer's runtime: {e}")))?;
    std::thread::Builder::new()
        .name("lgsp-journal-writer".into())
        // Ends when every sender is gone (the journal dropped).
        .spawn(move || match dialect {
            Dialect::Sqlite => runtime.block_on(run::<rusqlite::Connection>(url, keep, queued, rx)),
            Dialect::Postgres => runtime.block_on(run::<AnyConnection>(url, keep, queued, rx)),
        })
        .map_err(|e| JournalError::Open(format!("the journal writer's thread: {e}")))?;
    Ok(tx)
}

/// The writer's loop: takes as many jobs as are waiting and writes them in one transaction. It keeps a connection
/// of its own, opened on its own runtime (a PostgreSQL socket opened on the request runtime would wake the writer
/// from there), and opens another after a failed batch.
async fn run<S: Store>(url: String, keep: Keep, queued: Arc<Notify>, mut rx: mpsc::Receiver<Job>) {
    let mut conn: Option<S> = None;
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let wakes = jobs
            .iter()
            .any(|j| matches!(j, Job::Accept(a, _) if a.delivery == crate::Delivery::Queued));
        write(&url, &mut conn, keep, jobs).await;
        // Delivery workers of this process start on a new queued packet at once (other replicas poll).
        if wakes {
            queued.notify_waiters();
        }
    }
}

/// What one job wrote, answered once its transaction commits.
enum Written {
    Accept(Admission),
    Finish,
    /// An outcome for a message this hop never accepted: refused alone, the batch goes on.
    Unknown,
}

async fn write<S: Store>(url: &str, conn: &mut Option<S>, keep: Keep, jobs: Vec<Job>) {
    let written = match conn {
        Some(c) => write_batch(c, keep, &jobs).await,
        None => match tokio::time::timeout(CONNECT_TIMEOUT, S::connect(url)).await {
            Ok(Ok(c)) => write_batch(conn.insert(c), keep, &jobs).await,
            Ok(Err(e)) => Err(e),
            Err(_) => Err(DbError(format!(
                "no connection to the journal within {} s",
                CONNECT_TIMEOUT.as_secs()
            ))),
        },
    };
    // A connection that failed a batch is not trusted with the next: closed, and another opened for it.
    if written.is_err()
        && let Some(c) = conn.take()
    {
        c.close().await;
    }
    match written {
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
                    (job, _) => reply_err(job, &DbError("journal batch out of step".into())),
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

/// Writes every job in one transaction and commits it: the transaction opened with the chain's head, the new
/// messages (a key or message id already there is skipped, then looked at), the outcomes, the chain's records and
/// the head moved with the commit.
async fn write_batch<S: Store>(
    conn: &mut S,
    keep: Keep,
    jobs: &[Job],
) -> Result<Vec<Written>, DbError> {
    let written = write_in_transaction(conn, keep, jobs).await;
    if written.is_err() {
        // Nothing of the batch stays (the caller closes the connection too, so a failed rollback leaves nothing).
        conn.rollback().await;
    }
    written
}

async fn write_in_transaction<S: Store>(
    tx: &mut S,
    keep: Keep,
    jobs: &[Job],
) -> Result<Vec<Written>, DbError> {
    let at = now_us();
    let accepts: Vec<&Accepted> = jobs
        .iter()
        .filter_map(|j| match j {
            Job::Accept(a, _) => Some(&**a),
            Job::Finish(..) => None,
        })
        .collect();
    let (mut seq, mut prev) = tx.begin().await?;
    let inserted = insert_messages(tx, &accepts, keep, at).await?;
    // Outcomes are written together, in runs that keep the batch's order: a run ends before a repeated acceptance
    // (which reads the message) and before a second outcome of the same message.
    let mut agencies: Vec<Option<String>> = vec![None; jobs.len()];
    let mut admissions: Vec<Option<Admission>> = Vec::with_capacity(jobs.len());
    let mut run: Vec<(usize, &Outcome)> = Vec::new();
    for (i, job) in jobs.iter().enumerate() {
        match job {
            Job::Accept(a, _) => {
                if inserted.contains(&(a.hop.clone(), a.message_id.clone())) {
                    admissions.push(Some(Admission::New));
                } else {
                    finish_run(tx, &mut run, &mut agencies, keep, at).await?;
                    admissions.push(Some(repeated(tx, a, keep, at).await?));
                }
            }
            Job::Finish(o, _) => {
                if run
                    .iter()
                    .any(|(_, r)| r.hop == o.hop && r.message_id == o.message_id)
                {
                    finish_run(tx, &mut run, &mut agencies, keep, at).await?;
                }
                run.push((i, o));
                admissions.push(None);
            }
        }
    }
    finish_run(tx, &mut run, &mut agencies, keep, at).await?;
    let mut records: Vec<Pending> = Vec::with_capacity(jobs.len());
    let mut written = Vec::with_capacity(jobs.len());
    for ((job, admission), agency) in jobs.iter().zip(admissions).zip(agencies) {
        written.push(match (job, admission) {
            (Job::Accept(a, _), Some(admission)) => {
                match &admission {
                    Admission::New => records.push(accepted_record(a, &a.message_id, false, at)),
                    Admission::Again(m) => {
                        records.push(accepted_record(a, &m.message_id, true, at))
                    }
                    Admission::Existing(_) | Admission::Taken => {}
                }
                Written::Accept(admission)
            }
            (Job::Finish(o, _), _) => match agency {
                Some(agency) => {
                    records.push(outcome_record(o, keep_receipt(o), agency, at));
                    Written::Finish
                }
                None => Written::Unknown,
            },
            (Job::Accept(..), None) => {
                return Err(DbError("journal batch out of step".into()));
            }
        });
    }
    for chunk in shaped(&records) {
        let params = record_params(chunk, &mut seq, &mut prev);
        tx.fetch(&records_sql(chunk.len()), params).await?;
    }
    tx.commit(seq, &prev).await?;
    Ok(written)
}

fn reply_err(job: Job, e: &DbError) {
    let err = JournalError::Unavailable(e.0.clone());
    match job {
        Job::Accept(_, reply) => {
            let _ = reply.send(Err(err));
        }
        Job::Finish(_, reply) => {
            let _ = reply.send(Err(err));
        }
    }
}

/// A record waiting for its place in the chain.
struct Pending {
    at_us: i64,
    kind: &'static str,
    hop: String,
    message_id: String,
    agency: String,
    content: String,
}

/// Numbered placeholders `($first, $first+1, …)` for `rows` rows of `cols` values each.
fn values_from(rows: usize, cols: usize, first: usize) -> String {
    let mut out = String::with_capacity(rows * cols * 5);
    for r in 0..rows {
        if r > 0 {
            out.push_str(", ");
        }
        out.push('(');
        for c in 0..cols {
            if c > 0 {
                out.push_str(", ");
            }
            out.push_str(&format!("${}", first + r * cols + c));
        }
        out.push(')');
    }
    out
}

/// Splits `rows` into multi-row statements of 16, 8, 4, 2 or 1 rows: five statement shapes, each prepared once and
/// reused on PostgreSQL (a statement per batch size would be prepared anew for almost every batch). Measured with
/// the append bench: 16 rows beat 8 and 32 on both databases (PostgreSQL slowed tenfold at 32 and more). SQLite
/// takes a batch's shapes together in one round trip, so there the prepared script is the combination — one per
/// batch size seen, kept by sqlx's statement cache (its preparation costs less than the round trips it saves).
fn shaped<T>(mut rows: &[T]) -> Vec<&[T]> {
    let mut out = Vec::new();
    let mut size = 16;
    while !rows.is_empty() {
        while size > rows.len() {
            size /= 2;
        }
        let (head, rest) = rows.split_at(size);
        out.push(head);
        rows = rest;
    }
    out
}

/// The statement inserting `rows` chain records.
fn records_sql(rows: usize) -> String {
    format!(
        "INSERT INTO journal_records (seq, at_us, kind, hop, message_id, agency, content, prev_hash, hash) VALUES {}",
        values_from(rows, 9, 1)
    )
}

/// Links `chunk` into the chain after `(seq, prev)`: the values of [`records_sql`].
fn record_params(chunk: &[Pending], seq: &mut i64, prev: &mut String) -> Vec<Param> {
    let mut params = Vec::with_capacity(chunk.len() * 9);
    for r in chunk {
        let next = *seq + 1;
        let hash = chain::hash(next, prev, &r.content);
        params.extend([
            Param::from(next),
            r.at_us.into(),
            r.kind.into(),
            r.hop.clone().into(),
            r.message_id.clone().into(),
            r.agency.clone().into(),
            r.content.clone().into(),
            prev.clone().into(),
            hash.clone().into(),
        ]);
        *seq = next;
        *prev = hash;
    }
    params
}

fn accepted_record(a: &Accepted, message_id: &str, again: bool, at: i64) -> Pending {
    let kind = if again { "accepted_again" } else { "accepted" };
    let mut content = serde_json::json!({
        "kind": kind,
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
    // The record proves whose profile a packet was and what an approval approved and who signed it.
    if let Some(o) = content.as_object_mut() {
        if let Some(s) = &a.subject {
            o.insert("subject".into(), s.clone().into());
        }
        let json = |t: &Option<String>| {
            t.as_deref()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
        };
        if let Some(approval) = json(&a.approval) {
            o.insert("approval".into(), approval);
        }
        if let Some(signature) = json(&a.hop_signature) {
            o.insert("hop_signature".into(), signature);
        }
    }
    Pending {
        at_us: at,
        kind,
        hop: a.hop.clone(),
        message_id: message_id.to_owned(),
        agency: a.agency.clone(),
        content: content.to_string(),
    }
}

fn status_of(a: &Accepted) -> Status {
    match a.delivery {
        crate::Delivery::Direct => Status::InProgress,
        crate::Delivery::Queued => Status::Queued,
    }
}

/// The request a queued delivery replays, as stored.
fn request_json(a: &Accepted) -> Option<String> {
    a.request
        .as_ref()
        .and_then(|r| serde_json::to_string(r).ok())
}

/// When a queued message is first due for delivery: at once.
fn due(a: &Accepted, at: i64) -> Option<i64> {
    (a.delivery == crate::Delivery::Queued).then_some(at)
}

/// When a message's body may go: never while it is queued; kept bodies stay until the outcome sets a time.
fn body_until(a: &Accepted, keep: Keep) -> Option<i64> {
    (keep.bodies_us > 0 || a.delivery == crate::Delivery::Queued)
        .then_some(i64::MAX)
        .filter(|_| a.body.is_some())
}

/// The statement inserting `rows` accepted messages; a key or message id already there is skipped (left for
/// [`repeated`]), the inserted ones returned.
fn messages_sql(rows: usize) -> String {
    format!(
        "INSERT INTO messages (hop, message_id, agency, route, message_type, mode, idempotency_key, body_sha256,
             body_size, delivery, request, body, status, accepted_us, updated_us, next_attempt_us, body_until_us,
             subject, approval, hop_signature)
         VALUES {} ON CONFLICT DO NOTHING RETURNING hop, message_id",
        values_from(rows, 20, 1)
    )
}

/// The values of [`messages_sql`] for `chunk`.
fn message_params(chunk: &[&Accepted], keep: Keep, at: i64) -> Vec<Param> {
    let mut params = Vec::with_capacity(chunk.len() * 20);
    for a in chunk {
        params.extend([
            Param::from(a.hop.clone()),
            a.message_id.clone().into(),
            a.agency.clone().into(),
            a.route.clone().into(),
            a.message_type.clone().into(),
            a.mode.clone().into(),
            a.idempotency_key.clone().into(),
            a.body_sha256.clone().into(),
            i64::try_from(a.body_size).unwrap_or(i64::MAX).into(),
            a.delivery.as_str().into(),
            request_json(a).into(),
            a.body.clone().into(),
            status_of(a).as_str().into(),
            at.into(),
            at.into(),
            due(a, at).into(),
            body_until(a, keep).into(),
            a.subject.clone().into(),
            a.approval.clone().into(),
            a.hop_signature.clone().into(),
        ]);
    }
    params
}

type Inserted = std::collections::HashSet<(String, String)>;

/// Inserts every accepted message whose idempotency key (or message id) is new at its hop, a statement per shape;
/// returns those inserted. The others — repeats, also of an earlier packet of the same batch — are left for
/// [`repeated`].
async fn insert_messages<S: Store>(
    tx: &mut S,
    accepts: &[&Accepted],
    keep: Keep,
    at: i64,
) -> Result<Inserted, DbError> {
    let mut inserted = Inserted::new();
    for chunk in shaped(accepts) {
        let rows = tx
            .fetch(&messages_sql(chunk.len()), message_params(chunk, keep, at))
            .await?;
        for row in rows {
            inserted.insert((row.text(0)?, row.text(1)?));
        }
    }
    Ok(inserted)
}

/// An acceptance whose key (or message id) is already there: the message as it stands, or — when its delivery
/// failed or expired and the body is the same — the same message tried again.
async fn repeated<S: Store>(
    tx: &mut S,
    a: &Accepted,
    keep: Keep,
    at: i64,
) -> Result<Admission, DbError> {
    let mut rows = match &a.idempotency_key {
        Some(key) => {
            tx.fetch(
                concat!(
                    "SELECT ",
                    message_columns!(),
                    " FROM messages WHERE hop = $1 AND agency = $2 AND idempotency_key = $3"
                ),
                vec![
                    a.hop.clone().into(),
                    a.agency.clone().into(),
                    key.clone().into(),
                ],
            )
            .await?
        }
        None => Vec::new(),
    };
    if rows.is_empty() {
        rows = tx
            .fetch(
                concat!(
                    "SELECT ",
                    message_columns!(),
                    " FROM messages WHERE hop = $1 AND message_id = $2"
                ),
                vec![a.hop.clone().into(), a.message_id.clone().into()],
            )
            .await?;
    }
    let row = rows.first().ok_or_else(|| {
        DbError(format!(
            "message {} was neither inserted nor found at hop {}",
            a.message_id, a.hop
        ))
    })?;
    let m = Message::from_row(row)?;
    if m.agency != a.agency {
        return Ok(Admission::Taken);
    }
    if !(m.status.retryable() && m.body_sha256 == a.body_sha256) {
        return Ok(Admission::Existing(Box::new(m)));
    }
    tx.fetch(
        "UPDATE messages SET status = $1, delivery = $2, request = $3, body = $4, updated_us = $5,
             upstream_status = NULL, receipt = NULL, detail = NULL, next_attempt_us = $6,
             lease_owner = NULL, lease_until_us = NULL, body_until_us = $7, accepted_us = $8
         WHERE hop = $9 AND message_id = $10",
        vec![
            status_of(a).as_str().into(),
            a.delivery.as_str().into(),
            request_json(a).into(),
            a.body.clone().into(),
            at.into(),
            due(a, at).into(),
            body_until(a, keep).into(),
            at.into(),
            m.hop.clone().into(),
            m.message_id.clone().into(),
        ],
    )
    .await?;
    Ok(Admission::Again(Box::new(m)))
}

/// The receipt an outcome keeps: at most [`MAX_RECEIPT_BYTES`].
fn keep_receipt(o: &Outcome) -> Option<String> {
    o.receipt.as_ref().map(|r| clip(r, MAX_RECEIPT_BYTES))
}

/// Sets the outcomes of `run` (each of another message) in one statement per shape, and notes the agency of each
/// message found — an outcome of a message this hop never accepted (or whose lease its worker lost) finds none.
async fn finish_run<S: Store>(
    tx: &mut S,
    run: &mut Vec<(usize, &Outcome)>,
    agencies: &mut [Option<String>],
    keep: Keep,
    at: i64,
) -> Result<(), DbError> {
    // Its body stays `keep_bodies` after it ends, or goes now.
    let body_until = at.saturating_add(keep.bodies_us);
    for chunk in shaped(run) {
        // VALUES columns are column1… in both SQLite and PostgreSQL.
        let sql = format!(
            "UPDATE messages SET status = v.column3, upstream_status = v.column4, receipt = v.column5,
                 detail = v.column6, updated_us = $1, lease_owner = NULL, lease_until_us = NULL,
                 next_attempt_us = NULL, body_until_us = $2, body = CASE WHEN $3 THEN messages.body ELSE NULL END
             FROM (VALUES {}) AS v
             WHERE messages.hop = v.column1 AND messages.message_id = v.column2
                 AND (v.column7 = '' OR messages.lease_owner = v.column7
                      OR (v.column7 = '{ABANDONED}' AND messages.status = 'in_progress'))
             RETURNING messages.hop, messages.message_id, messages.agency",
            values_from(chunk.len(), 7, 4)
        );
        let mut params: Vec<Param> = Vec::with_capacity(3 + chunk.len() * 7);
        params.extend([at.into(), body_until.into(), (keep.bodies_us > 0).into()]);
        for (_, o) in chunk {
            params.extend([
                Param::from(o.hop.clone()),
                o.message_id.clone().into(),
                o.status.as_str().into(),
                o.upstream_status.map(i64::from).into(),
                keep_receipt(o).into(),
                o.detail.clone().into(),
                o.owner.clone().unwrap_or_default().into(),
            ]);
        }
        for row in tx.fetch(&sql, params).await? {
            let (hop, id) = (row.text(0)?, row.text(1)?);
            if let Some((i, _)) = chunk
                .iter()
                .find(|(_, o)| o.hop == hop && o.message_id == id)
            {
                agencies[*i] = Some(row.text(2)?);
            }
        }
    }
    run.clear();
    Ok(())
}

/// The chain record of an outcome written for a message of `agency`.
fn outcome_record(o: &Outcome, receipt: Option<String>, agency: String, at: i64) -> Pending {
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
    Pending {
        at_us: at,
        kind: "outcome",
        hop: o.hop.clone(),
        message_id: o.message_id.clone(),
        agency,
        content: content.to_string(),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_split_into_a_few_statement_shapes() {
        let rows: Vec<u32> = (0..300).collect();
        let sizes: Vec<usize> = shaped(&rows).iter().map(|c| c.len()).collect();
        assert_eq!(sizes.iter().sum::<usize>(), 300);
        assert!(sizes.iter().all(|s| s.is_power_of_two() && *s <= 16));
        // 300 = 18 × 16 + 8 + 4.
        assert_eq!((sizes.len(), &sizes[18..]), (20, &[8, 4][..]));
        assert_eq!(shaped::<u32>(&[]).len(), 0);
        assert_eq!(values_from(2, 2, 1), "($1, $2), ($3, $4)");
        assert_eq!(values_from(1, 3, 5), "($5, $6, $7)");
    }
}
