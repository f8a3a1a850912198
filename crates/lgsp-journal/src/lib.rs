//! The message journal. Every packet a hop accepts is appended before it moves on — who sent it, where to, its
//! SHA-256 and size, its idempotency key — and so is its outcome; the records form hash chains (one per writing
//! process, linked by anchors) that `lgsp-gateway journal verify` walks. Derived from them, and checked against
//! them by `verify`: each message's current state (what agencies read back to reconcile), the idempotency keys,
//! the outbox of deliveries owed. Packets' bodies are kept once each, by SHA-256, until their delivery ends.
//!
//! One writer per process owns every write (`writer.rs`); everything else reads through read-only connections.
//! One code path serves SQLite (the embedded default: a file, WAL, group commit) and PostgreSQL (several replicas
//! on one database, each with a chain of its own), through sqlx's `Any` driver for reads; the writer runs SQLite
//! itself through rusqlite on its own thread (`store.rs` says why), with the same statements.
#![forbid(unsafe_code)]

/// The columns a [`Message`] is read from, as a literal (statements stay `&'static str`).
macro_rules! message_columns {
    () => {
        "hop, message_id, agency, route, message_type, mode, idempotency_key, body_sha256, body_size, delivery, \
         request, status, upstream_status, receipt, detail, accepted_us, updated_us, attempts, answer_type"
    };
}

/// The same columns from `messages m`, with a pending delivery's live attempts and last note from its outbox row.
macro_rules! joined_message_columns {
    () => {
        "m.hop, m.message_id, m.agency, m.route, m.message_type, m.mode, m.idempotency_key, m.body_sha256, \
         m.body_size, m.delivery, m.request, m.status, m.upstream_status, m.receipt, COALESCE(o.detail, m.detail), \
         m.accepted_us, m.updated_us, COALESCE(o.attempts, m.attempts), m.answer_type \
         FROM messages m LEFT JOIN outbox o ON o.hop = m.hop AND o.message_id = m.message_id"
    };
}

pub mod chain;
mod disk;
mod model;
mod read;
pub mod record;
mod redo;
mod schema;
mod store;
pub mod time;
mod verify;
mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyConnection, AnyPool, Connection};
use sqlx::{Executor, Row};
use tokio::sync::{mpsc, oneshot};

pub use model::{
    Accepted, Admission, ApprovalReport, ApprovalSent, Claimed, Delivery, Held, Message, Outcome,
    ProfileSent, Quota, ReportRow, Request, Status,
};
pub use read::RecordRef;
pub use schema::Dialect;
pub use verify::{Finding, Rebuilt, Verified};
pub use writer::{Quotas, WriterStats};

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
    /// The store cannot be written or read now (database down, read-only file): fail closed.
    #[error("the journal is unavailable: {0}")]
    Unavailable(String),
    #[error("no message {0} at this hop (or its delivery is another process's now)")]
    UnknownMessage(String),
    #[error("the journal does not verify: {0}")]
    Broken(#[from] Finding),
    #[error("the journal store is not usable: {0}")]
    Open(String),
    /// The agency holds as much undelivered as its quota allows.
    #[error("agency {agency} holds {} packets ({} bytes) undelivered; its quota is {} packets, {} bytes", held.packets, held.bytes, quota.packets, quota.bytes)]
    OverQuota {
        agency: String,
        held: Held,
        quota: Quota,
    },
    /// Less free disk than `[journal] min_free_disk`: no new packet is written.
    #[error("{free} bytes free on the journal's disk, below min_free_disk ({min})")]
    DiskFull { free: u64, min: u64 },
    /// A journal opened for reading was asked to write.
    #[error("this journal was opened for reading only")]
    ReadOnly,
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

/// The detail of a message found in progress with no process holding its delivery (its consumer stopped, or it
/// was written by a version without leases), settled as failed by [`Journal::settle_orphans`].
pub const ORPHAN_DETAIL: &str = "the gateway stopped, or could not write its journal, before the upstream's answer was recorded; the upstream may hold the packet: a resend under the same Idempotency-Key delivers it again under the same message id";

/// Where the journal lives, how long it keeps what, and what one agency may hold.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `sqlite://path` (created when missing) or `postgres://…`.
    pub url: String,
    /// How long a packet's body stays after it arrived (bodies of undelivered packets stay until delivered).
    pub keep_bodies: Duration,
    /// How long records stay (the audit period).
    pub retention: Duration,
    /// This process's chain (`[A-Za-z0-9._-]`, 1–64): one per replica writing the same database.
    pub chain: String,
    pub quotas: Quotas,
    /// Below this much free disk (SQLite), new packets are refused.
    pub min_free_disk: u64,
    /// How often this chain links the others' heads (when there are others).
    pub anchor_every: Duration,
}

impl Settings {
    /// Settings for `url` with the embedded defaults (tests, tools).
    pub fn new(url: impl Into<String>) -> Settings {
        Settings {
            url: url.into(),
            keep_bodies: Duration::from_secs(30 * 86_400),
            retention: Duration::from_secs(1825 * 86_400),
            chain: "main".into(),
            quotas: Quotas {
                default: Quota {
                    packets: 10_000,
                    bytes: 1 << 30,
                },
                agencies: HashMap::new(),
            },
            min_free_disk: 0,
            anchor_every: Duration::from_secs(10),
        }
    }
}

/// Whether `name` may name a chain.
/// What an operator reading the SQLite journal at `url` beside (or after) its gateway should know of the writer's
/// redo log (`redo.rs`): what is answered but not committed yet is not read. `None` for PostgreSQL, or nothing to say.
pub fn redo_note(url: &str) -> Option<String> {
    match dialect_of(url) {
        Ok(Dialect::Sqlite) => redo::note(url),
        _ => None,
    }
}

pub fn valid_chain(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// An open journal.
#[derive(Clone)]
pub struct Journal {
    pool: AnyPool,
    dialect: Dialect,
    /// `None`: opened for reading.
    writer: Option<mpsc::Sender<writer::Job>>,
    up: Arc<AtomicBool>,
    shared: Arc<writer::Shared>,
    owner: Arc<str>,
    chain: Arc<str>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("dialect", &self.dialect)
            .field("chain", &self.chain)
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

/// What every connection to a journal runs first. The connections that migrate put a SQLite file in WAL mode,
/// durable at commit (the WAL fsynced before a transaction is said to be written); the readers' connections refuse
/// to write (only the writer writes), on PostgreSQL too.
async fn prepare_connection(
    conn: &mut AnyConnection,
    dialect: Dialect,
    read_only: bool,
) -> Result<(), sqlx::Error> {
    match (dialect, read_only) {
        (Dialect::Sqlite, false) => {
            conn.execute("PRAGMA journal_mode = WAL").await?;
            conn.execute("PRAGMA synchronous = FULL").await?;
            conn.execute("PRAGMA busy_timeout = 5000").await?;
        }
        (Dialect::Sqlite, true) => {
            conn.execute("PRAGMA busy_timeout = 5000").await?;
            conn.execute("PRAGMA query_only = ON").await?;
        }
        (Dialect::Postgres, true) => {
            conn.execute("SET default_transaction_read_only = on")
                .await?;
        }
        (Dialect::Postgres, false) => {}
    }
    Ok(())
}

/// A connection of its own (the writer's on PostgreSQL).
pub(crate) async fn connect_one(url: &str, dialect: Dialect) -> Result<AnyConnection, sqlx::Error> {
    let mut conn = AnyConnection::connect(&store_url(url, dialect)).await?;
    prepare_connection(&mut conn, dialect, false).await?;
    Ok(conn)
}

/// Connects without migrating: a pool of readers, or (`read_only` false) the connections that migrate.
async fn connect(url: &str, read_only: bool) -> Result<(AnyPool, Dialect), JournalError> {
    sqlx::any::install_default_drivers();
    let dialect = dialect_of(url)?;
    let url = store_url(url, dialect);
    let options = AnyPoolOptions::new()
        .max_connections(match (dialect, read_only) {
            (_, false) => 1,
            (Dialect::Sqlite, true) => 4,
            (Dialect::Postgres, true) => 8,
        })
        .acquire_timeout(Duration::from_secs(5))
        .after_connect(move |conn, _| Box::pin(prepare_connection(conn, dialect, read_only)));
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
    let heads = if version < 5 {
        "SELECT seq AS n FROM journal_head WHERE id = 1"
    } else {
        "SELECT COALESCE(SUM(seq - pruned_through), 0) AS n FROM journal_chains"
    };
    let records: i64 = sqlx::query(heads)
        .fetch_one(&pool)
        .await
        .and_then(|r| r.try_get("n"))
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
    migrate_through(url, i64::MAX).await
}

/// Applies the migrations not yet applied up to `version` (tests build a journal of an older version with it).
#[doc(hidden)]
pub async fn migrate_through(url: &str, version: i64) -> Result<Vec<i64>, JournalError> {
    let (pool, dialect) = connect(url, false).await?;
    let applied = migrate_pool_through(&pool, dialect, version).await;
    pool.close().await;
    applied
}

async fn migrate_pool(pool: &AnyPool, dialect: Dialect) -> Result<Vec<i64>, JournalError> {
    migrate_pool_through(pool, dialect, i64::MAX).await
}

async fn migrate_pool_through(
    pool: &AnyPool,
    dialect: Dialect,
    through: i64,
) -> Result<Vec<i64>, JournalError> {
    let db = |e: sqlx::Error| JournalError::Open(format!("migrating the journal: {e}"));
    sqlx::query(schema::SCHEMA_TABLE)
        .execute(pool)
        .await
        .map_err(db)?;
    let mut applied = Vec::new();
    for m in schema::MIGRATIONS.iter().filter(|m| m.version <= through) {
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
    /// Opens (creating and migrating as needed) the journal at `settings.url`, and starts its writer, which takes
    /// up at once the deliveries this chain's previous process left under way.
    pub async fn open(settings: Settings) -> Result<Journal, JournalError> {
        if !valid_chain(&settings.chain) {
            return Err(JournalError::Open(format!(
                "chain `{}` is not 1–64 of A–Z a–z 0–9 . _ -",
                settings.chain
            )));
        }
        if dialect_of(&settings.url)? == Dialect::Sqlite {
            redo::recover_file(&settings.url).map_err(|e| JournalError::Open(e.0))?;
        }
        let (migrator, dialect) = connect(&settings.url, false).await?;
        let migrated = migrate_pool(&migrator, dialect).await;
        migrator.close().await;
        migrated?;
        let (pool, _) = connect(&settings.url, true).await?;
        let owner = format!("{}:{}:{:x}", settings.chain, std::process::id(), now_us());
        let shared = Arc::new(writer::Shared::new(settings.quotas.clone()));
        let config = writer::Config {
            url: settings.url.clone(),
            dialect,
            chain: settings.chain.clone(),
            owner: owner.clone(),
            keep_bodies_us: i64::try_from(settings.keep_bodies.as_micros()).unwrap_or(i64::MAX),
            retention_us: i64::try_from(settings.retention.as_micros()).unwrap_or(i64::MAX),
            min_free_disk: settings.min_free_disk,
            anchor_every: settings.anchor_every,
            disk_dir: (dialect == Dialect::Sqlite).then(|| sqlite_dir(&settings.url)),
        };
        let writer = writer::spawn(config, shared.clone()).await?;
        Ok(Journal {
            pool,
            dialect,
            writer: Some(writer),
            up: Arc::new(AtomicBool::new(true)),
            shared,
            owner: Arc::from(owner),
            chain: Arc::from(settings.chain.as_str()),
        })
    }

    /// Opens a journal for reading only (the operator's `verify`, `export`, `report` beside a running gateway):
    /// no writer, so nothing of the running gateway's is touched; writing is refused.
    pub async fn open_reader(url: &str) -> Result<Journal, JournalError> {
        let (pool, dialect) = connect(url, true).await?;
        let version: Option<i64> = sqlx::query("SELECT MAX(version) AS v FROM journal_schema")
            .fetch_one(&pool)
            .await
            .and_then(|r| r.try_get("v"))
            .map_err(|e| JournalError::Open(format!("{url}: not a journal ({e})")))?;
        let latest = schema::MIGRATIONS.last().map_or(0, |m| m.version);
        if version != Some(latest) {
            return Err(JournalError::Open(format!(
                "{url}: schema version {version:?}, this gateway reads {latest}: run `lgsp-gateway journal migrate` (or start the gateway) first"
            )));
        }
        Ok(Journal {
            pool,
            dialect,
            writer: None,
            up: Arc::new(AtomicBool::new(true)),
            shared: Arc::new(writer::Shared::new(Settings::new(url).quotas)),
            owner: Arc::from(""),
            chain: Arc::from(""),
        })
    }

    /// This process's lease owner name (`<chain>:<pid>:<start>`): what outcomes of deliveries it holds carry.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    pub fn chain(&self) -> &str {
        &self.chain
    }

    /// Notified after each commit that put a packet in the outbox for a claim (of this process; other replicas
    /// poll).
    pub fn queued(&self) -> &tokio::sync::Notify {
        &self.shared.queued
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Whether the last write succeeded (what `/readyz` and `lgsp_journal_up` report).
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// What each agency may hold undelivered from now on (a reload of the agencies).
    pub fn set_quotas(&self, quotas: Quotas) {
        if let Ok(mut q) = self.shared.quotas.lock() {
            *q = Arc::new(quotas);
        }
    }

    /// What this process's writer has done since the journal opened (zero for a journal opened for reading).
    pub fn writer_stats(&self) -> WriterStats {
        self.shared.counters.read()
    }

    /// What each agency holds undelivered, as the writer last counted it.
    pub fn held(&self) -> HashMap<String, Held> {
        self.shared
            .held
            .lock()
            .map(|h| h.clone())
            .unwrap_or_default()
    }

    /// The queued packets of `hop` this process leases as their acceptance commits, with their bytes (the
    /// delivery workers' first source; the rest they claim). One receiver per hop; a new one replaces the old.
    pub fn handoff(&self, hop: &str) -> Handoff {
        let (tx, rx) = mpsc::channel(1024);
        if let Ok(mut h) = self.shared.handoffs.lock() {
            h.insert(hop.to_owned(), tx);
        }
        Handoff {
            rx,
            shared: self.shared.clone(),
        }
    }

    fn mark<T>(&self, r: Result<T, JournalError>) -> Result<T, JournalError> {
        match &r {
            Err(JournalError::Unavailable(e)) => {
                if self.up.swap(false, Ordering::AcqRel) {
                    tracing::error!(error = %e, "the journal cannot be written; packet routes answer 503 until it can");
                }
            }
            Err(JournalError::UnknownMessage(_) | JournalError::OverQuota { .. }) | Ok(_) => {
                self.up.store(true, Ordering::Release)
            }
            Err(_) => {}
        }
        r
    }

    /// Hands a job to the writer and waits for its commit.
    async fn ask<T>(
        &self,
        job: impl FnOnce(oneshot::Sender<Result<T, JournalError>>) -> writer::Job,
    ) -> Result<T, JournalError> {
        let Some(writer) = &self.writer else {
            return Err(JournalError::ReadOnly);
        };
        let (tx, rx) = oneshot::channel();
        let stopped = || JournalError::Unavailable("the journal writer stopped".into());
        let r = match writer.send(job(tx)).await {
            Ok(()) => rx.await.unwrap_or_else(|_| Err(stopped())),
            Err(_) => Err(stopped()),
        };
        self.mark(r)
    }

    /// Waits until everything this process handed the writer before is written — outcomes nobody waited for too —
    /// so what is read next includes it (the messages route reads its own agency's writes).
    pub async fn flush(&self) -> Result<(), JournalError> {
        if self.writer.is_none() {
            return Ok(());
        }
        self.ask(writer::Job::Flush).await
    }

    /// Marks this process's chain as no longer written (what was handed to the writer before is written first), so
    /// `journal rebuild-index` may run at once after this process ends. The journal still works afterwards: the
    /// next write marks the chain written again.
    pub async fn release(&self) -> Result<(), JournalError> {
        if self.writer.is_none() {
            return Ok(());
        }
        self.ask(writer::Job::Stop).await
    }

    /// Checks that the journal can be written now (a transaction that takes this chain's head and commits).
    pub async fn ping(&self) -> Result<(), JournalError> {
        self.ask(writer::Job::Ping).await
    }

    /// Appends an accepted packet (durably, before it is forwarded); its body, when given, is kept until its
    /// delivery ends. Over the agency's quota: [`JournalError::OverQuota`]; too little disk:
    /// [`JournalError::DiskFull`].
    pub async fn accept(&self, a: Accepted) -> Result<Admission, JournalError> {
        self.ask(|tx| writer::Job::Accept(Box::new(a), tx)).await
    }

    /// Appends how a delivery ended, and waits for the commit.
    pub async fn finish(&self, o: Outcome) -> Result<(), JournalError> {
        let o = storable(o);
        self.ask(|tx| writer::Job::Finish(Box::new(o), Some(tx)))
            .await
    }

    /// Appends how a delivery ended without waiting for the commit: the writer keeps the outcome until it is
    /// written, through an outage of the store. (A crash before that leaves the delivery leased; the next start
    /// takes it up again, and the next hop knows it by its message id.)
    pub fn finish_later(&self, o: Outcome) {
        let o = storable(o);
        if let Some(writer) = &self.writer
            && let Err(e) = writer.try_send(writer::Job::Finish(Box::new(o), None))
        {
            // The writer's queue is full (or it stopped): wait for room on a task of its own.
            let writer = writer.clone();
            let job = e.into_inner();
            tokio::spawn(async move {
                let _ = writer.send(job).await;
            });
        }
    }

    /// Leases up to `limit` due deliveries of `hop` to this process for `lease`: queued packets due, retries fallen
    /// due, and deliveries whose lease ended with the process that held it.
    pub async fn claim(
        &self,
        hop: &str,
        lease: Duration,
        limit: u32,
    ) -> Result<Vec<Claimed>, JournalError> {
        let lease_us = i64::try_from(lease.as_micros()).unwrap_or(i64::MAX);
        self.ask(|reply| writer::Job::Claim {
            hop: hop.to_owned(),
            lease_us,
            limit,
            reply,
        })
        .await
    }

    /// A delivery this process leased that must wait: due again at `at_us`, its lease released, its note kept.
    pub async fn retry_at(
        &self,
        hop: &str,
        message_id: &str,
        at_us: i64,
        detail: &str,
    ) -> Result<(), JournalError> {
        self.ask(|reply| writer::Job::Retry {
            hop: hop.to_owned(),
            message_id: message_id.to_owned(),
            at_us,
            detail: writer::storable(detail),
            reply,
        })
        .await
    }

    /// Messages left in progress with no process holding their delivery (a broker's packet whose consumer stopped,
    /// or one journalled by a version without leases), untouched since `before_us`: marked failed, so a resend
    /// under the same Idempotency-Key goes through again. The message ids marked.
    pub async fn settle_orphans(&self, before_us: i64) -> Result<Vec<String>, JournalError> {
        self.ask(|reply| writer::Job::Settle {
            before_us,
            detail: ORPHAN_DETAIL.to_owned(),
            reply,
        })
        .await
    }

    /// Drops records older than the retention (a few thousand at a time, from the start of this chain and of chains
    /// whose writer stopped long ago) and the ended messages they started; returns (records, messages). Call again
    /// while it prunes a full batch.
    pub async fn prune(&self) -> Result<(u64, u64), JournalError> {
        self.ask(writer::Job::Prune).await
    }

    /// How many records one [`Journal::prune`] removes at most, per chain.
    pub const PRUNE_BATCH: u64 = writer::PRUNE_BATCH as u64;

    /// Deletes bodies kept longer than `keep_bodies` that no pending delivery needs (a few hundred at a time; the
    /// writer also does it every few seconds); the number deleted.
    pub async fn sweep_bodies(&self) -> Result<u64, JournalError> {
        self.ask(writer::Job::Sweep).await
    }

    /// Writes the derived tables anew from the chains (`journal rebuild-index`).
    pub async fn rebuild_index(&self) -> Result<Rebuilt, JournalError> {
        self.ask(writer::Job::Rebuild).await
    }

    /// Walks every chain and checks everything derived from them; what was checked, or the first disagreement
    /// ([`JournalError::Broken`]).
    pub async fn verify(&self) -> Result<Verified, JournalError> {
        self.visible().await;
        verify::verify(&self.pool).await
    }
}

/// An outcome's texts as every store takes them (no NUL: see `writer::storable`).
fn storable(mut o: Outcome) -> Outcome {
    o.receipt = o.receipt.as_deref().map(writer::storable);
    o.detail = o.detail.as_deref().map(writer::storable);
    o.answer_type = o.answer_type.as_deref().map(writer::storable);
    o
}

/// The queued packets of one hop handed to this process's delivery workers as their acceptance commits.
pub struct Handoff {
    rx: mpsc::Receiver<Claimed>,
    shared: Arc<writer::Shared>,
}

impl Handoff {
    /// The next packet handed over; `None` once the journal is gone.
    pub async fn recv(&mut self) -> Option<Claimed> {
        let c = self.rx.recv().await?;
        self.taken(&c);
        Some(c)
    }

    /// A packet handed over already, if any.
    pub fn try_recv(&mut self) -> Option<Claimed> {
        let c = self.rx.try_recv().ok()?;
        self.taken(&c);
        Some(c)
    }

    fn taken(&self, c: &Claimed) {
        let n = c.body.as_ref().map_or(0, bytes::Bytes::len);
        self.shared
            .handoff_bytes
            .fetch_sub(n, std::sync::atomic::Ordering::AcqRel);
    }
}

/// The directory a `sqlite://` journal's file is in (its disk is the one checked).
fn sqlite_dir(url: &str) -> PathBuf {
    let path = Path::new(store::sqlite_path(url));
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}
