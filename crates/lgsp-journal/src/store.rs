//! The journal writer's two ways into a database. PostgreSQL goes through sqlx (each statement a round trip on its
//! socket). SQLite goes through rusqlite on the writer's own thread: sqlx's SQLite driver runs every statement on a
//! worker thread of its own and hands each result and row back over a channel, and under load those thread
//! switches cost more than the SQL (`benches/RESULTS.md`, step 6). The batch itself — which statements, in which
//! order, with which values — is one code path over [`Store`] (`writer.rs`).

use std::time::Duration;

use rusqlite::types::{ToSqlOutput, Value, ValueRef};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Connection, Row};

use crate::Dialect;

/// A statement's parameter, typed even when null (PostgreSQL wants to know a null's type).
#[derive(Debug, Clone)]
pub(crate) enum Param {
    Int(Option<i64>),
    Text(Option<String>),
    Blob(Option<Vec<u8>>),
    /// A packet's bytes, shared (not copied) on SQLite.
    Bytes(Option<bytes::Bytes>),
    Bool(bool),
}

impl From<i64> for Param {
    fn from(v: i64) -> Param {
        Param::Int(Some(v))
    }
}

impl From<Option<i64>> for Param {
    fn from(v: Option<i64>) -> Param {
        Param::Int(v)
    }
}

impl From<String> for Param {
    fn from(v: String) -> Param {
        Param::Text(Some(v))
    }
}

impl From<Option<&str>> for Param {
    fn from(v: Option<&str>) -> Param {
        Param::Text(v.map(str::to_owned))
    }
}

impl From<&str> for Param {
    fn from(v: &str) -> Param {
        Param::Text(Some(v.to_owned()))
    }
}

impl From<Option<String>> for Param {
    fn from(v: Option<String>) -> Param {
        Param::Text(v)
    }
}

impl From<Option<Vec<u8>>> for Param {
    fn from(v: Option<Vec<u8>>) -> Param {
        Param::Blob(v)
    }
}

impl From<bool> for Param {
    fn from(v: bool) -> Param {
        Param::Bool(v)
    }
}

impl rusqlite::ToSql for Param {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Param::Int(Some(v)) => ToSqlOutput::Borrowed(ValueRef::Integer(*v)),
            Param::Text(Some(v)) => ToSqlOutput::Borrowed(ValueRef::Text(v.as_bytes())),
            Param::Blob(Some(v)) => ToSqlOutput::Borrowed(ValueRef::Blob(v)),
            Param::Bytes(Some(v)) => ToSqlOutput::Borrowed(ValueRef::Blob(v)),
            Param::Bool(v) => ToSqlOutput::Borrowed(ValueRef::Integer(i64::from(*v))),
            Param::Int(None) | Param::Text(None) | Param::Blob(None) | Param::Bytes(None) => {
                ToSqlOutput::Borrowed(ValueRef::Null)
            }
        })
    }
}

/// A database error, as the driver told it.
#[derive(Debug, Clone)]
pub(crate) struct DbError(pub(crate) String);

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<sqlx::Error> for DbError {
    fn from(e: sqlx::Error) -> DbError {
        DbError(e.to_string())
    }
}

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> DbError {
        DbError(e.to_string())
    }
}

/// A result row read by column position (statements list their columns, so positions are fixed).
pub(crate) trait Columns {
    fn opt_int(&self, i: usize) -> Result<Option<i64>, DbError>;
    fn opt_text(&self, i: usize) -> Result<Option<String>, DbError>;
    fn opt_blob(&self, i: usize) -> Result<Option<Vec<u8>>, DbError>;

    fn int(&self, i: usize) -> Result<i64, DbError> {
        self.opt_int(i)?
            .ok_or_else(|| DbError(format!("column {i} is null, not an integer")))
    }

    fn text(&self, i: usize) -> Result<String, DbError> {
        self.opt_text(i)?
            .ok_or_else(|| DbError(format!("column {i} is null, not text")))
    }
}

impl Columns for AnyRow {
    fn opt_int(&self, i: usize) -> Result<Option<i64>, DbError> {
        Ok(self.try_get(i)?)
    }

    fn opt_text(&self, i: usize) -> Result<Option<String>, DbError> {
        Ok(self.try_get(i)?)
    }

    fn opt_blob(&self, i: usize) -> Result<Option<Vec<u8>>, DbError> {
        Ok(self.try_get(i)?)
    }
}

/// A SQLite row, copied out of its statement.
pub(crate) type OwnedRow = Vec<Value>;

impl Columns for OwnedRow {
    fn opt_int(&self, i: usize) -> Result<Option<i64>, DbError> {
        match self.get(i) {
            Some(Value::Integer(v)) => Ok(Some(*v)),
            Some(Value::Null) => Ok(None),
            other => Err(DbError(format!("column {i} is {other:?}, not an integer"))),
        }
    }

    fn opt_text(&self, i: usize) -> Result<Option<String>, DbError> {
        match self.get(i) {
            Some(Value::Text(v)) => Ok(Some(v.clone())),
            Some(Value::Null) => Ok(None),
            other => Err(DbError(format!("column {i} is {other:?}, not text"))),
        }
    }

    fn opt_blob(&self, i: usize) -> Result<Option<Vec<u8>>, DbError> {
        match self.get(i) {
            Some(Value::Blob(v)) => Ok(Some(v.clone())),
            Some(Value::Null) => Ok(None),
            other => Err(DbError(format!("column {i} is {other:?}, not bytes"))),
        }
    }
}

/// The statement that takes this writer's chain head in a batch's transaction: the head's update comes first, so it
/// holds the write lock (SQLite) or the row lock (PostgreSQL) of that chain — and of no other — before anything is
/// read. Chain names are checked at open (`[A-Za-z0-9._-]`), so they are written into the statement.
pub(crate) fn head_sql(chain: &str) -> String {
    format!("UPDATE journal_chains SET seq = seq WHERE chain = '{chain}' RETURNING seq, hash")
}

/// A chain head's hash as the writer makes it: SHA-256 in hex (it is written into a statement).
pub(crate) fn checked_hash(hash: &str) -> Result<(), DbError> {
    if hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(DbError(format!(
            "the chain's hash {hash:?} is not SHA-256 hex"
        )))
    }
}

/// The statement that moves the head at commit. Both values are the writer's own (a counter and a SHA-256 in hex),
/// never a packet's.
fn move_head_sql(chain: &str, seq: i64, hash: &str, alive_us: i64) -> Result<String, DbError> {
    checked_hash(hash)?;
    Ok(format!(
        "UPDATE journal_chains SET seq = {seq}, hash = '{hash}', alive_us = {alive_us} WHERE chain = '{chain}'"
    ))
}

/// What the writer asks of a connection. Every method but [`Store::rollback`] fails the whole batch on error.
pub(crate) trait Store: Sized {
    type Row: Columns;

    /// The database this store writes to.
    const DIALECT: Dialect;

    /// A connection of the writer's own to `url`.
    async fn connect(url: &str) -> Result<Self, DbError>;

    /// Opens a write transaction holding `chain`'s head, and returns the head (seq, hash).
    async fn begin(&mut self, chain: &str) -> Result<(i64, String), DbError>;

    /// Runs one statement and returns its rows (those of `RETURNING` too).
    async fn fetch(&mut self, sql: &str, params: Vec<Param>) -> Result<Vec<Self::Row>, DbError>;

    /// Runs one statement without rows and returns how many rows it changed. SQLite makes a temporary table of a
    /// statement's `RETURNING` rows, opened and closed each time: its writer asks this and reads what it needs.
    async fn execute(&mut self, sql: &str, params: Vec<Param>) -> Result<u64, DbError>;

    /// Moves `chain`'s head to `(seq, hash)`, notes the writer alive, and commits.
    async fn commit(&mut self, chain: &str, seq: i64, hash: &str) -> Result<(), DbError>;

    /// Undoes what the transaction wrote (the caller then drops the connection, so a failure here leaves nothing).
    async fn rollback(&mut self);

    /// Makes what committed batches wrote visible to other connections: at once when `now`, else when it is due.
    /// (PostgreSQL: a batch's commit does.)
    async fn settle(&mut self, _now: bool) -> Result<(), DbError> {
        Ok(())
    }

    /// How long until [`Store::settle`] is due, when something waits for it.
    fn unsettled(&self) -> Option<Duration> {
        None
    }

    /// Takes `statements` — the rows that hold a delivery leased to this process (its body, its outbox row) — into
    /// the batch's log without running them; they run before the transaction commits unless [`Store::undefer`]
    /// drops them first. A delivery that ends within its transaction so leaves no rows to insert and delete. `key`
    /// names the delivery ([`deferred_key`]); `released` is what `undefer` gives back. False: this store runs
    /// nothing later (PostgreSQL commits every batch; a SQLite writer without the redo log), and the caller runs
    /// the statements now.
    fn defer(
        &mut self,
        _key: String,
        _released: Released,
        _statements: Vec<(&'static str, Vec<Param>)>,
    ) -> bool {
        false
    }

    /// Drops the deferred rows of `key` (its delivery ended in time): what its outbox row would have released.
    fn undefer(&mut self, _key: &str) -> Option<Released> {
        None
    }

    /// Whether `key`'s rows are deferred (its delivery is leased, though the outbox does not show it yet).
    fn is_deferred(&self, _key: &str) -> bool {
        false
    }

    /// Runs the deferred rows of `key` now (all of them: `None`), for a statement about to read or change them.
    async fn materialize(&mut self, _key: Option<&str>) -> Result<(), DbError> {
        Ok(())
    }

    async fn close(self);
}

/// What a delivery's outbox row held when it is released: its agency, its bytes and its attempts.
pub(crate) type Released = (String, i64, i64);

/// The name of a delivery's deferred rows ([`Store::defer`]).
pub(crate) fn deferred_key(hop: &str, message_id: &str) -> String {
    format!("{hop}\u{0}{message_id}")
}

/// The head's row among `rows`.
pub(crate) fn head_of<R: Columns>(rows: &[R]) -> Result<(i64, String), DbError> {
    let row = rows
        .first()
        .ok_or_else(|| DbError("the journal has no head row for this writer's chain".into()))?;
    Ok((row.int(0)?, row.text(1)?))
}

/// `sql` with `params` bound, for sqlx.
fn any_query(
    sql: &str,
    params: Vec<Param>,
) -> sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments> {
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()));
    for p in params {
        q = match p {
            Param::Int(v) => q.bind(v),
            Param::Text(v) => q.bind(v),
            Param::Blob(v) => q.bind(v),
            Param::Bytes(v) => q.bind(v.map(|b| b.to_vec())),
            Param::Bool(v) => q.bind(v),
        };
    }
    q
}

impl Store for AnyConnection {
    const DIALECT: Dialect = Dialect::Postgres;
    type Row = AnyRow;

    /// Every statement the writer runs finds its rows by a key or an index; a planner working from statistics older
    /// than a fast-growing table would scan it instead (measured: an outcome batch's `UPDATE … FROM (VALUES …)` took
    /// 4.3 ms at 50 k messages, growing with the table), so the writer's session prefers the indexes outright.
    async fn connect(url: &str) -> Result<Self, DbError> {
        let mut conn = crate::connect_one(url, Dialect::Postgres).await?;
        sqlx::raw_sql("SET enable_seqscan = off")
            .execute(&mut conn)
            .await?;
        Ok(conn)
    }

    /// One round trip: `BEGIN` and the head together.
    async fn begin(&mut self, chain: &str) -> Result<(i64, String), DbError> {
        let sql = format!("BEGIN; {}", head_sql(chain));
        let rows = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .fetch_all(&mut *self)
            .await?;
        head_of(&rows)
    }

    async fn fetch(&mut self, sql: &str, params: Vec<Param>) -> Result<Vec<AnyRow>, DbError> {
        Ok(any_query(sql, params).fetch_all(&mut *self).await?)
    }

    async fn execute(&mut self, sql: &str, params: Vec<Param>) -> Result<u64, DbError> {
        Ok(any_query(sql, params)
            .execute(&mut *self)
            .await?
            .rows_affected())
    }

    /// One round trip: the head's move and `COMMIT` together.
    async fn commit(&mut self, chain: &str, seq: i64, hash: &str) -> Result<(), DbError> {
        let sql = format!(
            "{}; COMMIT",
            move_head_sql(chain, seq, hash, crate::now_us())?
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut *self)
            .await?;
        Ok(())
    }

    async fn rollback(&mut self) {
        let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *self).await;
    }

    async fn close(self) {
        let _ = Connection::close(self).await;
    }
}

/// The file of a `sqlite://PATH[?…]` URL.
pub(crate) fn sqlite_path(url: &str) -> &str {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    rest.split('?').next().unwrap_or(rest)
}

/// How often the WAL is copied back into the journal's file. A checkpoint copies each page the WAL holds once, however
/// often commits rewrote it (a b-tree's last leaf is rewritten by nearly every commit): every 100 ms, 3.5 page copies
/// a packet in the append bench at 16 writers (the checkpointer 20 % of the process's CPU at 256); every 250 ms, 2.2.
/// Every second saved a little more but tripled the hop's p99.9 under load: a larger checkpoint's writeback delays
/// the next commit's fsync (`benches/RESULTS.md`).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// The WAL file is cut back to this size when it starts over after a checkpoint, and a checkpoint waits for the
/// writer once it is larger (`RESTART`). Cut back to 64 MiB, a WAL that had outgrown it between two checkpoints made
/// the next commits allocate its blocks again (`ftruncate` and ext4's block allocation, 3 % of the writer).
pub(crate) const WAL_KEPT: i64 = 256 * 1024 * 1024;

/// Copies a SQLite journal's WAL back into its file on a thread of its own, so the writer never does (it was 6 % of
/// the writer's time in the append bench): a passive checkpoint, which never waits for the writer nor holds it up,
/// every [`CHECKPOINT_EVERY`]. When the WAL outgrows [`WAL_KEPT`] (the checkpoints cannot keep up, or a reader holds
/// old pages) it waits for the writer once (`RESTART`), so the WAL stays bounded. Ends when `stop` is set.
pub(crate) fn checkpointer(url: &str, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::Ordering;
    let path = sqlite_path(url).to_owned();
    let spawned = std::thread::Builder::new()
        .name("lgsp-journal-checkpoint".into())
        .spawn(move || {
            let Ok(conn) = rusqlite::Connection::open(&path) else {
                tracing::error!(path, "journal checkpointer: the file does not open; the WAL is not copied back");
                return;
            };
            let _ = conn.busy_timeout(Duration::from_secs(5));
            let wal = format!("{path}-wal");
            while !stop.load(Ordering::Acquire) {
                let big = std::fs::metadata(&wal).map_or(0, |m| m.len()) > WAL_KEPT as u64;
                let mode = if big { "RESTART" } else { "PASSIVE" };
                let done: Result<i64, _> =
                    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| r.get(0));
                match done {
                    Ok(_) => sleep_unless(&stop, CHECKPOINT_EVERY),
                    Err(e) => {
                        tracing::warn!(error = %e, "journal checkpointer: a checkpoint failed; trying again");
                        std::thread::sleep(Duration::from_millis(500));
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "journal checkpointer: no thread; the WAL is not copied back");
    }
}

/// Sleeps `d`, or less once `stop` is set.
fn sleep_unless(stop: &std::sync::atomic::AtomicBool, d: Duration) {
    let step = Duration::from_millis(10);
    let until = std::time::Instant::now() + d;
    while !stop.load(std::sync::atomic::Ordering::Acquire) && std::time::Instant::now() < until {
        std::thread::sleep(step);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_name_their_file() {
        assert_eq!(
            sqlite_path("sqlite:///var/lib/j.db?mode=rwc"),
            "/var/lib/j.db"
        );
        assert_eq!(sqlite_path("sqlite://journal.db"), "journal.db");
        assert_eq!(sqlite_path("sqlite:journal.db"), "journal.db");
    }

    #[test]
    fn rows_are_read_by_position_and_type() {
        let row: OwnedRow = vec![Value::Integer(7), Value::Text("a".into()), Value::Null];
        assert_eq!(row.int(0).ok(), Some(7));
        assert_eq!(row.text(1).ok().as_deref(), Some("a"));
        assert_eq!(row.opt_text(2).ok(), Some(None));
        assert!(row.text(2).is_err());
        assert!(row.int(1).is_err());
        assert!(row.opt_int(3).is_err());
    }
}
