//! The message journal. Every packet a hop accepts is appended before it moves on — who sent it, where to, its
//! SHA-256 and size, its idempotency key — and so is its outcome; the records form a hash chain that
//! `lgsp-gateway journal verify` walks. The same store holds each message's current state (what agencies read
//! back to reconcile), the bodies of queued deliveries (the outbox) and the idempotency keys.
//!
//! One code path serves SQLite (the embedded default: a file, WAL, group commit) and PostgreSQL (several replicas
//! on one database), through sqlx's `Any` driver; the few statements that differ say so. The writer alone runs
//! SQLite through rusqlite on its own thread (`store.rs` says why), with the same statements.
#![forbid(unsafe_code)]

/// The columns a [`Message`] is read from, as a literal (statements stay `&'static str`).
macro_rules! message_columns {
    () => {
        "hop, message_id, agency, route, message_type, mode, idempotency_key, body_sha256, body_size, delivery, \
         request, status, upstream_status, receipt, detail, accepted_us, updated_us, attempts"
    };
}

pub mod chain;
mod model;
mod schema;
mod store;
mod writer;

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyConnection, AnyPool, Connection};
use sqlx::{Executor, Row};
use tokio::sync::{mpsc, oneshot};

pub use model::{
    Accepted, Admission, ApprovalReport, ApprovalSent, Claimed, Delivery, Message, Outcome,
    ProfileSent, ReportRow, Request, Status,
};
pub use schema::Dialect;

/// Copies a SQLite journal to `dest` while gateways keep writing it: SQLite's online backup, a few hundred pages at
/// a time so the writer is never held for long, restarted by SQLite when a write lands mid-copy; the copy is one
/// consistent state (every commit in it whole). Refuses a `dest` that exists, and a PostgreSQL journal (back that
/// up with `pg_dump`). The number of pages copied.
pub fn backup_sqlite(url: &str, dest: &Path) -> Result<u64, JournalError> {
    if !url.starts_with("sqlite:") {
        return Err(JournalError::Unavailable(format!(
            "{url} is not a SQLite journal: back up PostgreSQL with pg_dump (README, Backups)"
        )));
    }
    if dest.exists() {
        return Err(JournalError::Unavailable(format!(
            "{} exists: name a new file (a backup never replaces one)",
            dest.display()
        )));
    }
    let failed = |e: rusqlite::Error| JournalError::Unavailable(format!("backup: {e}"));
    let source = rusqlite::Connection::open_with_flags(
        store::sqlite_path(url),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(failed)?;
    source
        .busy_timeout(Duration::from_secs(5))
        .map_err(failed)?;
    let mut copy = rusqlite::Connection::open(dest).map_err(failed)?;
    {
        let backup = rusqlite::backup::Backup::new(&source, &mut copy).map_err(failed)?;
        backup
            .run_to_completion(256, Duration::from_millis(5), None)
            .map_err(failed)?;
    }
    let pages: i64 = copy
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .map_err(failed)?;
    Ok(u64::try_from(pages).unwrap_or(0))
}

/// The most of an upstream's answer kept as a message's receipt.
pub const MAX_RECEIPT_BYTES: usize = 64 * 1024;

/// Microseconds since the Unix epoch, now.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// Why the journal could not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JournalError {
    /// The store cannot be written or read now (disk full, read-only file, database down): fail closed.
    #[error("the journal is unavailable: {0}")]
    Unavailable(String),
    #[error("no message {0} at this hop")]
    UnknownMessage(String),
    #[error("the journal's chain is broken: {0}")]
    Broken(#[from] chain::Broken),
    #[error("the journal store is not usable: {0}")]
    Open(String),
}

impl JournalError {
    pub(crate) fn from_db(e: &sqlx::Error) -> JournalError {
        JournalError::Unavailable(e.to_string())
    }
}

impl From<store::DbError> for JournalError {
    fn from(e: store::DbError) -> JournalError {
        JournalError::Unavailable(e.0)
    }
}

/// The detail of a direct delivery found in progress long after its route's timeout ([`Journal::abandon_stale`]).
pub const ABANDONED_DETAIL: &str = "the gateway stopped, or could not write its journal, before the upstream's answer was recorded; the upstream may hold the packet: a resend under the same Idempotency-Key delivers it again under the same message id";

/// Where the journal lives and how long it keeps what.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `sqlite://path` (created when missing) or `postgres://…`.
    pub url: String,
    /// How long a message's body stays after it ends (0: dropped at once; queued bodies stay until then).
    pub keep_bodies: Duration,
    /// How long records stay (the audit period).
    pub retention: Duration,
}

/// An open journal.
#[derive(Clone)]
pub struct Journal {
    pool: AnyPool,
    dialect: Dialect,
    writer: mpsc::Sender<writer::Job>,
    up: Arc<AtomicBool>,
    settings: Arc<Settings>,
    /// Told after every commit that queued a packet.
    queued: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("dialect", &self.dialect)
            .field("up", &self.is_up())
            .finish_non_exhaustive()
    }
}

fn dialect_of(url: &str) -> Result<Dialect, JournalError> {
    if url.starts_with("sqlite:") {
        Ok(Dialect::Sqlite)
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Dialect::Postgres)
    } else {
        Err(JournalError::Open(format!(
            "`{url}` is neither sqlite://… nor postgres://…"
        )))
    }
}

/// The URL sqlx opens for `url`: a SQLite file is created when missing.
fn store_url(url: &str, dialect: Dialect) -> String {
    match dialect {
        Dialect::Sqlite if !url.contains("mode=") => {
            if url.contains('?') {
                format!("{url}&mode=rwc")
            } else {
                format!("{url}?mode=rwc")
            }
        }
        _ => url.to_owned(),
    }
}

/// What every connection to a SQLite journal runs first: durable at commit (the WAL fsynced before a transaction
/// is said to be written), and waiting for the write lock rather than failing at once.
async fn prepare_connection(conn: &mut AnyConnection, dialect: Dialect) -> Result<(), sqlx::Error> {
    if dialect == Dialect::Sqlite {
        conn.execute("PRAGMA journal_mode = WAL").await?;
        conn.execute("PRAGMA synchronous = FULL").await?;
        conn.execute("PRAGMA busy_timeout = 5000").await?;
    }
    Ok(())
}

/// A connection of its own (the writer's), prepared as the pool's are.
pub(crate) async fn connect_one(url: &str, dialect: Dialect) -> Result<AnyConnection, sqlx::Error> {
    let mut conn = AnyConnection::connect(&store_url(url, dialect)).await?;
    prepare_connection(&mut conn, dialect).await?;
    Ok(conn)
}

/// Connects without migrating.
async fn connect(url: &str) -> Result<(AnyPool, Dialect), JournalError> {
    sqlx::any::install_default_drivers();
    let dialect = dialect_of(url)?;
    let url = store_url(url, dialect);
    let options = AnyPoolOptions::new()
        .max_connections(match dialect {
            Dialect::Sqlite => 4,
            Dialect::Postgres => 8,
        })
        .acquire_timeout(Duration::from_secs(5))
        .after_connect(move |conn, _| Box::pin(prepare_connection(conn, dialect)));
    let pool = options
        .connect(&url)
        .await
        .map_err(|e| JournalError::Open(format!("{url}: {e}")))?;
    Ok((pool, dialect))
}

/// What a journal store holds, without creating or changing anything (`check-config --connect`): the schema version
/// and the number of records, or what the first start would do.
pub async fn inspect(url: &str) -> Result<String, JournalError> {
    let dialect = dialect_of(url)?;
    if dialect == Dialect::Sqlite {
        let path = url.trim_start_matches("sqlite://");
        let path = std::path::Path::new(path.split('?').next().unwrap_or(path));
        if !path.exists() {
            let dir = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            let meta = std::fs::metadata(dir)
                .map_err(|e| JournalError::Open(format!("{}: {e}", dir.display())))?;
            if !meta.is_dir() || meta.permissions().readonly() {
                return Err(JournalError::Open(format!(
                    "{} is not a writable directory",
                    dir.display()
                )));
            }
            return Ok(format!(
                "{} does not exist yet; the first start creates it",
                path.display()
            ));
        }
    }
    sqlx::any::install_default_drivers();
    let read = match dialect {
        Dialect::Sqlite if !url.contains("mode=") => format!("{url}?mode=ro"),
        _ => url.to_owned(),
    };
    let pool = AnyPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&read)
        .await
        .map_err(|e| JournalError::Open(e.to_string()))?;
    let version: Option<i64> = match sqlx::query("SELECT MAX(version) AS v FROM journal_schema")
        .fetch_one(&pool)
        .await
    {
        Ok(r) => r
            .try_get("v")
            .map_err(|e| JournalError::Open(e.to_string()))?,
        // No table yet: an empty database the first start migrates.
        Err(_) => None,
    };
    let Some(version) = version else {
        return Ok("reachable, empty: the first start applies the migrations".into());
    };
    let latest = schema::MIGRATIONS.last().map_or(0, |m| m.version);
    let records: i64 = sqlx::query("SELECT seq FROM journal_head WHERE id = 1")
        .fetch_one(&pool)
        .await
        .and_then(|r| r.try_get("seq"))
        .map_err(|e| JournalError::Open(e.to_string()))?;
    let pending = if version < latest {
        format!("; migrations {}–{latest} are applied at start", version + 1)
    } else {
        String::new()
    };
    Ok(format!(
        "schema version {version}, {records} records{pending}"
    ))
}

/// Applies the migrations not yet applied; returns the versions it applied.
pub async fn migrate(url: &str) -> Result<Vec<i64>, JournalError> {
    let (pool, dialect) = connect(url).await?;
    migrate_pool(&pool, dialect).await
}

async fn migrate_pool(pool: &AnyPool, dialect: Dialect) -> Result<Vec<i64>, JournalError> {
    let db = |e: sqlx::Error| JournalError::Open(format!("migrating the journal: {e}"));
    sqlx::query(schema::SCHEMA_TABLE)
        .execute(pool)
        .await
        .map_err(db)?;
    let mut applied = Vec::new();
    for m in schema::MIGRATIONS {
        let mut tx = pool.begin().await.map_err(db)?;
        let done: Option<i64> =
            sqlx::query("SELECT version FROM journal_schema WHERE version = $1")
                .bind(m.version)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db)?
                .map(|r| r.try_get("version"))
                .transpose()
                .map_err(db)?;
        if done.is_some() {
            continue;
        }
        for statement in (m.statements)(dialect) {
            sqlx::query(sqlx::AssertSqlSafe(statement))
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        sqlx::query("INSERT INTO journal_schema (version, name, applied_us) VALUES ($1, $2, $3)")
            .bind(m.version)
            .bind(m.name)
            .bind(now_us())
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        applied.push(m.version);
    }
    Ok(applied)
}

/// Filters of a message listing; an agency sees only its own.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub hop: String,
    pub agency: String,
    pub from_us: Option<i64>,
    pub to_us: Option<i64>,
    pub status: Option<Status>,
    /// Resume after this (accepted_us, message_id), from the previous page's last message.
    pub after: Option<(i64, String)>,
    pub limit: u32,
}

impl Journal {
    /// Opens (creating and migrating as needed) the journal at `settings.url`, and starts its writer.
    pub async fn open(settings: Settings) -> Result<Journal, JournalError> {
        let (pool, dialect) = connect(&settings.url).await?;
        migrate_pool(&pool, dialect).await?;
        let keep = writer::Keep {
            bodies_us: i64::try_from(settings.keep_bodies.as_micros()).unwrap_or(i64::MAX),
        };
        let queued = Arc::new(tokio::sync::Notify::new());
        let writer = writer::spawn(settings.url.clone(), dialect, keep, queued.clone())?;
        Ok(Journal {
            pool,
            dialect,
            writer,
            up: Arc::new(AtomicBool::new(true)),
            settings: Arc::new(settings),
            queued,
        })
    }

    /// Notified after each commit that put a packet in the outbox (of this process; other replicas poll).
    pub fn queued(&self) -> &tokio::sync::Notify {
        &self.queued
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Whether the last write succeeded (what `/readyz` and `lgsp_journal_up` report).
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    fn mark<T>(&self, r: Result<T, JournalError>) -> Result<T, JournalError> {
        match &r {
            Ok(_) => self.up.store(true, Ordering::Release),
            Err(JournalError::Unavailable(e)) => {
                if self.up.swap(false, Ordering::AcqRel) {
                    tracing::error!(error = %e, "the journal cannot be written; packet routes answer 503 until it can");
                }
            }
            Err(_) => {}
        }
        r
    }

    /// Checks that the journal can be written now (a transaction that takes the chain's head and commits).
    pub async fn ping(&self) -> Result<(), JournalError> {
        let r = async {
            let mut tx = self.pool.begin().await?;
            sqlx::query("UPDATE journal_head SET seq = seq WHERE id = 1")
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        }
        .await
        .map_err(|e| JournalError::from_db(&e));
        self.mark(r)
    }

    /// Appends an accepted packet (durably, before it is forwarded).
    pub async fn accept(&self, a: Accepted) -> Result<Admission, JournalError> {
        let (tx, rx) = oneshot::channel();
        let sent = self.writer.send(writer::Job::Accept(Box::new(a), tx)).await;
        let r = match sent {
            Ok(()) => rx.await.unwrap_or_else(|_| {
                Err(JournalError::Unavailable(
                    "the journal writer stopped".into(),
                ))
            }),
            Err(_) => Err(JournalError::Unavailable(
                "the journal writer stopped".into(),
            )),
        };
        self.mark(r)
    }

    /// Appends how a delivery ended.
    pub async fn finish(&self, o: Outcome) -> Result<(), JournalError> {
        let (tx, rx) = oneshot::channel();
        let sent = self.writer.send(writer::Job::Finish(Box::new(o), tx)).await;
        let r = match sent {
            Ok(()) => rx.await.unwrap_or_else(|_| {
                Err(JournalError::Unavailable(
                    "the journal writer stopped".into(),
                ))
            }),
            Err(_) => Err(JournalError::Unavailable(
                "the journal writer stopped".into(),
            )),
        };
        self.mark(r)
    }

    /// Direct deliveries at `hop` still in progress though untouched since `before_us` — their gateway stopped, or
    /// could not write, before the upstream's answer was recorded — marked failed, so that a resend under the same
    /// Idempotency-Key is delivered again (under the first message id, which the upstream takes as the same
    /// delivery) instead of being told for ever that it is in progress. Each gets its outcome record; one that
    /// ended meanwhile is left as it ended. Returns the message ids marked.
    pub async fn abandon_stale(
        &self,
        hop: &str,
        before_us: i64,
    ) -> Result<Vec<String>, JournalError> {
        let rows = sqlx::query(
            "SELECT message_id FROM messages
             WHERE hop = $1 AND status = 'in_progress' AND delivery = 'direct' AND updated_us < $2
             ORDER BY updated_us LIMIT 1000",
        )
        .bind(hop.to_owned())
        .bind(before_us)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| JournalError::from_db(&e))?;
        let mut marked = Vec::new();
        for row in rows {
            let id: String = row
                .try_get("message_id")
                .map_err(|e| JournalError::from_db(&e))?;
            let outcome = Outcome {
                hop: hop.to_owned(),
                message_id: id.clone(),
                status: Status::Failed,
                upstream_status: None,
                receipt: None,
                detail: Some(ABANDONED_DETAIL.into()),
                owner: Some(writer::ABANDONED.into()),
            };
            match self.finish(outcome).await {
                Ok(()) => marked.push(id),
                Err(JournalError::UnknownMessage(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(marked)
    }

    /// A message of `agency` at `hop` (another agency's is not found).
    pub async fn message(
        &self,
        hop: &str,
        agency: &str,
        message_id: &str,
    ) -> Result<Option<Message>, JournalError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            message_columns!(),
            " FROM messages WHERE hop = $1 AND message_id = $2 AND agency = $3"
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
        let (after_us, after_id) = q.after.clone().unwrap_or((i64::MIN, String::new()));
        let rows = sqlx::query(concat!(
            "SELECT ",
            message_columns!(),
            " FROM messages
             WHERE hop = $1 AND agency = $2 AND accepted_us >= $3 AND accepted_us < $4
               AND ($5 = '' OR status = $5)
               AND (accepted_us > $6 OR (accepted_us = $6 AND message_id > $7))
             ORDER BY accepted_us, message_id LIMIT $8"
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

    /// Walks the whole chain in order, from the first record the retention kept to the head; the number of records
    /// checked, or the first broken one.
    pub async fn verify(&self) -> Result<u64, JournalError> {
        let db = |e: sqlx::Error| JournalError::from_db(&e);
        let head = sqlx::query("SELECT seq, hash, pruned_through FROM journal_head WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .map_err(db)?;
        let head_seq: i64 = head.try_get("seq").map_err(db)?;
        let head_hash: String = head.try_get("hash").map_err(db)?;
        let pruned: i64 = head.try_get("pruned_through").map_err(db)?;
        let mut v: Option<chain::Verifier> = None;
        let mut after = 0i64;
        loop {
            let rows = sqlx::query(
                "SELECT seq, content, prev_hash, hash FROM journal_records WHERE seq > $1 ORDER BY seq LIMIT 1000",
            )
            .bind(after)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| JournalError::from_db(&e))?;
            if rows.is_empty() {
                let v = v.unwrap_or_else(|| chain::Verifier::starting_at(pruned + 1, ""));
                v.end(head_seq, &head_hash)?;
                return Ok(v.checked);
            }
            for r in &rows {
                let seq: i64 = r.try_get("seq").map_err(|e| JournalError::from_db(&e))?;
                let content: String = r
                    .try_get("content")
                    .map_err(|e| JournalError::from_db(&e))?;
                let prev: String = r
                    .try_get("prev_hash")
                    .map_err(|e| JournalError::from_db(&e))?;
                let hash: String = r.try_get("hash").map_err(|e| JournalError::from_db(&e))?;
                // Records older than the retention were pruned: the chain starts right after them, linked to the
                // last pruned one (or to the genesis); a record missing before it is a gap.
                let verifier = v.get_or_insert_with(|| {
                    if pruned == 0 {
                        chain::Verifier::default()
                    } else {
                        chain::Verifier::starting_at(pruned + 1, &prev)
                    }
                });
                verifier.next(seq, &prev, &content, &hash)?;
                after = seq;
            }
        }
    }

    /// Writes the records between `from_us` and `to_us` as JSON lines (seq, hashes, content).
    pub async fn export(
        &self,
        from_us: i64,
        to_us: i64,
        out: &mut dyn Write,
    ) -> Result<u64, JournalError> {
        self.each_record(from_us, to_us, &mut |seq, prev_hash, hash, content| {
            let record: serde_json::Value =
                serde_json::from_str(content).unwrap_or(serde_json::Value::Null);
            let line = serde_json::json!({
                "seq": seq,
                "prev_hash": prev_hash,
                "hash": hash,
                "record": record,
            });
            writeln!(out, "{line}")
        })
        .await
    }

    /// Hands each record between `from_us` and `to_us` to `f` in order — `(seq, prev_hash, hash, content)`, the
    /// content as the text its hash covers —, a page of 1000 at a time; the number of records.
    pub async fn each_record(
        &self,
        from_us: i64,
        to_us: i64,
        f: &mut dyn FnMut(i64, &str, &str, &str) -> std::io::Result<()>,
    ) -> Result<u64, JournalError> {
        let mut after = 0i64;
        let mut n = 0u64;
        loop {
            let rows = sqlx::query(
                "SELECT seq, at_us, content, prev_hash, hash FROM journal_records
                 WHERE seq > $1 AND at_us >= $2 AND at_us < $3 ORDER BY seq LIMIT 1000",
            )
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
                f(seq, &get("prev_hash")?, &get("hash")?, &get("content")?)
                    .map_err(|e| JournalError::Unavailable(format!("writing the export: {e}")))?;
                after = seq;
                n += 1;
            }
        }
    }

    /// Per hop, agency and message type, the messages accepted between `from_us` and `to_us` and where they stand.
    pub async fn report(&self, from_us: i64, to_us: i64) -> Result<Vec<ReportRow>, JournalError> {
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

    /// Claims up to `limit` queued deliveries of `hop` that are due, leasing them to `owner` for `lease`: another
    /// replica takes them back when the lease ends unfinished (a crashed worker's).
    pub async fn claim(
        &self,
        hop: &str,
        owner: &str,
        lease: Duration,
        limit: u32,
    ) -> Result<Vec<Claimed>, JournalError> {
        let now = now_us();
        let until = now.saturating_add(i64::try_from(lease.as_micros()).unwrap_or(i64::MAX));
        macro_rules! claim {
            ($lock:literal) => {
                concat!(
                    "UPDATE messages SET lease_owner = $1, lease_until_us = $2, attempts = attempts + 1
                     WHERE (hop, message_id) IN (
                         SELECT hop, message_id FROM messages
                         WHERE hop = $3 AND status = 'queued' AND next_attempt_us <= $4
                           AND (lease_until_us IS NULL OR lease_until_us < $4)
                         ORDER BY next_attempt_us LIMIT $5 ",
                    $lock,
                    ") RETURNING ",
                    message_columns!(),
                    ", body"
                )
            };
        }
        // Replicas on one PostgreSQL skip each other's rows; SQLite has one writer at a time.
        let sql = match self.dialect {
            Dialect::Postgres => claim!("FOR UPDATE SKIP LOCKED"),
            Dialect::Sqlite => claim!(""),
        };
        let rows = sqlx::query(sql)
            .bind(owner.to_owned())
            .bind(until)
            .bind(hop.to_owned())
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await;
        let rows = self.mark(rows.map_err(|e| JournalError::from_db(&e)))?;
        rows.iter()
            .map(|r| {
                Ok(Claimed {
                    message: Message::from_row(r)?,
                    body: r
                        .try_get::<Option<Vec<u8>>, _>("body")
                        .map_err(|e| JournalError::from_db(&e))?
                        .unwrap_or_default(),
                })
            })
            .collect()
    }

    /// A claimed delivery that must wait: due again at `at_us`, its lease released.
    pub async fn retry_at(
        &self,
        hop: &str,
        message_id: &str,
        owner: &str,
        at_us: i64,
        detail: &str,
    ) -> Result<(), JournalError> {
        let r = sqlx::query(
            "UPDATE messages SET next_attempt_us = $1, lease_owner = NULL, lease_until_us = NULL, detail = $2,
                 updated_us = $3
             WHERE hop = $4 AND message_id = $5 AND lease_owner = $6 AND status = 'queued'",
        )
        .bind(at_us)
        .bind(detail.to_owned())
        .bind(now_us())
        .bind(hop.to_owned())
        .bind(message_id.to_owned())
        .bind(owner.to_owned())
        .execute(&self.pool)
        .await
        .map(|_| ())
        .map_err(|e| JournalError::from_db(&e));
        self.mark(r)
    }

    /// The outbox of `hop`: queued messages, and the age of the oldest (seconds).
    pub async fn outbox(&self, hop: &str) -> Result<(u64, f64), JournalError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n, MIN(accepted_us) AS oldest FROM messages WHERE hop = $1 AND status = 'queued'",
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

    /// Drops records older than the retention (from the start of the chain, the head remembering how far) and
    /// bodies past their keeping time; returns (records, bodies).
    pub async fn prune(&self) -> Result<(u64, u64), JournalError> {
        let now = now_us();
        let cutoff = now
            .saturating_sub(i64::try_from(self.settings.retention.as_micros()).unwrap_or(i64::MAX));
        let records = async {
            let mut tx = self.pool.begin().await?;
            sqlx::query("UPDATE journal_head SET seq = seq WHERE id = 1")
                .execute(&mut *tx)
                .await?;
            let through: Option<i64> =
                sqlx::query("SELECT MAX(seq) AS s FROM journal_records WHERE at_us < $1")
                    .bind(cutoff)
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get("s")?;
            let Some(through) = through else {
                return Ok::<u64, sqlx::Error>(0);
            };
            let n = sqlx::query("DELETE FROM journal_records WHERE seq <= $1")
                .bind(through)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            sqlx::query("UPDATE journal_head SET pruned_through = $1 WHERE id = 1")
                .bind(through)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(n)
        }
        .await
        .map_err(|e| JournalError::from_db(&e))?;
        let bodies = sqlx::query(
            "UPDATE messages SET body = NULL WHERE body IS NOT NULL AND status <> 'queued' AND status <> 'in_progress'
               AND body_until_us < $1",
        )
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(|e| JournalError::from_db(&e))?
        .rows_affected();
        // Keys are kept as long as the records: a message's row goes with them once it has ended.
        sqlx::query(
            "DELETE FROM messages WHERE accepted_us < $1 AND status <> 'queued' AND status <> 'in_progress'",
        )
        .bind(cutoff)
        .execute(&self.pool)
        .await
        .map_err(|e| JournalError::from_db(&e))?;
        Ok((records, bodies))
    }
}
