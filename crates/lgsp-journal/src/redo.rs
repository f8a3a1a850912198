//! The SQLite writer's store: batches made durable by a redo log, the database committed in larger steps.
//!
//! A SQLite commit rewrites, besides each packet's own rows, the last leaf of every b-tree it touched and the pages
//! above it: 93 WAL frames (372 KiB, 93 `pwrite`s) for a commit of 16 packets, an fsync for each
//! (`benches/RESULTS.md`, "What a commit writes"). Here a batch runs in a savepoint of a transaction that stays open
//! for up to [`SETTLE_EVERY`]; what its statements changed is written to the redo log (`<file>-redo`) as the
//! statements themselves with their values, in one `write` and one `fdatasync`, and only then are its callers
//! answered. The open transaction commits (WAL fsynced) every [`SETTLE_EVERY`], when a reader asks for what was
//! written ([`Store::settle`], `Journal::flush`) and before any statement outside a batch; the log starts over at
//! its beginning after each such commit. A page rewritten by a hundred batches is written to the WAL once.
//!
//! After a crash the transaction is gone, and the log holds every batch answered since the last commit: the next
//! open runs their statements again, in order, on the state they first ran on (the last commit), so they change
//! the same rows the same way. Each batch has a number; `journal_redo.batch` holds the last one the database has,
//! so a batch is never run twice (a crash after a commit, before the next frame overwrote the log's beginning).
//! The log ends at the first frame that is torn (its checksum) or older (its number: the rest of a longer log
//! from before the last commit).
//!
//! Frame: `"LGRD"`, the database's token (`journal_redo.token`, i64 LE: a log left beside a database file made anew is
//! not its), batch (u64 LE), payload length (u32 LE), CRC-32 of the payload (u32 LE), payload. Payload: the
//! statements, each the SQL (`0`, length u32, text; or `1`, index u16 of an earlier one in this frame) and its
//! values (count u16; each a tag — 0 null, 1 integer i64, 2 text, 3 bytes, with length u32 — and its value); a
//! deferred group (`2`, its key as length u32 and text, count u16, statements); the end of one (`3`, its key).
//!
//! Deferred rows. A delivery leased to this process (a direct packet in its request, a queued one handed to this
//! process's workers) needs its outbox row (a direct packet its body too) only if the process dies before its
//! outcome is written. The writer logs those statements as a deferred group and does not run them; an outcome
//! written before the transaction commits drops them ([`Store::undefer`], an end in the log), and the commit runs
//! those still there. A statement that reads or changes outbox rows or bodies first runs them at its place
//! ([`Store::materialize`]). A redo after a crash runs each group no later frame ended after the last frame, where
//! the commit would have. A direct packet so costs its message and its two records, not a body and an outbox row
//! inserted and deleted again. A log with groups is not read by a build older than them (it stops there, as at a
//! torn frame): after a crash, start this build once before going back to an older one.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::types::Value;

use crate::Dialect;
use crate::store::{
    DbError, OwnedRow, Param, Released, Store, WAL_KEPT, checked_hash, head_of, head_sql,
    sqlite_path,
};

/// How long the writer's transaction stays open at most. Every batch in it is durable in the redo log already; a
/// commit makes the batches visible to the readers' connections and lets the log start over.
pub(crate) const SETTLE_EVERY: Duration = Duration::from_millis(50);

/// The open transaction also commits when no batch came for this long: the writer is idle, and what it answered
/// becomes visible to other processes' readers (an operator's `journal export` a moment after a packet's answer)
/// at once. Under load batches follow each other closer than this, and [`SETTLE_EVERY`] decides.
const SETTLE_IDLE: Duration = Duration::from_millis(2);

/// The open transaction also commits once its frames come to this much: what it dirtied stays within the page cache
/// (a page spilled to the WAL before the commit is written there again if a later batch changes it).
const SETTLE_BYTES: u64 = 4 * 1024 * 1024;

/// A batch whose statements (with their values) come to more than this commits the database instead of writing a
/// frame (a rebuild of the derived tables, a very large packet): the log never holds a frame larger than this.
const FRAME_MAX: usize = 32 * 1024 * 1024;

/// The log's file grows in steps of this much, written with zeros: a frame then overwrites blocks the file has,
/// and its `fdatasync` writes no metadata (an append moves the file's size, and each `fdatasync` then commits
/// ext4's journal too). After a commit the log starts over at its beginning; frames from before are told apart by
/// their batch numbers.
const GROW: u64 = 4 * 1024 * 1024;

const MAGIC: &[u8; 4] = b"LGRD";
const HEADER: usize = 4 + 8 + 8 + 4 + 4;

/// Prepared statements the writer keeps: each statement shape of a batch (a handful per table, see
/// `writer::shaped`), the head and the repeats.
const SQLITE_STATEMENTS: usize = 64;

/// The redo log of the SQLite journal at `path`.
pub(crate) fn redo_path(path: &str) -> PathBuf {
    PathBuf::from(format!("{path}-redo"))
}

/// The writer's SQLite connection with its redo log.
///
/// One writer of a file writes the redo log: the first to take its lock. Another writer of the same file (a second
/// chain: replicas tried on one machine) commits each batch as it goes, and before each takes the lock if it is
/// free — then the log's writer ended, and whatever it holds beyond the database is run again before anything else
/// is written (its writer held the database's write lock from its transaction's start to its commit, so nothing
/// else was written in between), and this writer writes the log from then on.
pub(crate) struct Sqlite {
    conn: rusqlite::Connection,
    path: String,
    redo: File,
    /// This writer holds the log's lock and writes it.
    logging: bool,
    /// Where the next frame goes (the end of this transaction's frames).
    len: u64,
    /// The file's size: zeros (or older frames) from `len` to here.
    allocated: u64,
    /// The database's token, which its frames carry.
    token: i64,
    /// The last batch number given (written, committed, or failed: a number is never given twice).
    batch: u64,
    /// Since when the writer's transaction is open (none: autocommit).
    open: Option<Instant>,
    /// When its last batch was written.
    last: Instant,
    /// A batch is under way (its savepoint open).
    in_batch: bool,
    /// The statements of the batch under way, encoded.
    frame: Vec<u8>,
    /// The SQL texts in `frame`, by index.
    texts: Vec<String>,
    /// The batch's statements came to more than [`FRAME_MAX`]: it commits the database instead.
    overflow: bool,
    /// Deferred rows, in the order they were deferred ([`Store::defer`]), and each key's place.
    deferred: BTreeMap<u64, Deferred>,
    deferred_at: HashMap<String, u64>,
    /// The next deferred group's place.
    next_deferred: u64,
    /// What the batch under way did to `deferred`, undone when it rolls back.
    undo: Vec<Undo>,
}

/// A delivery's rows, deferred.
struct Deferred {
    key: String,
    released: Released,
    statements: Vec<(&'static str, Vec<Param>)>,
}

/// A change of the batch under way to the deferred rows.
enum Undo {
    Added(u64),
    Removed(u64, Deferred),
}

/// Whether a statement can change anything (reads are not logged).
fn changes(sql: &str) -> bool {
    let head = sql.trim_start();
    !(head.len() >= 6 && head[..6].eq_ignore_ascii_case("select"))
}

/// Opens a SQLite journal file for writing: WAL, fsynced at every commit, waiting up to 5 s for the write lock; the
/// WAL bounded, and bodies spilled to overflow pages without a temporary copy.
fn open_sqlite(path: &str) -> Result<rusqlite::Connection, DbError> {
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(DbError(format!(
            "{path}: the journal file is in {mode} mode, not WAL"
        )));
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "journal_size_limit", WAL_KEPT)?;
    // The writer's transaction holds the pages its batches dirtied until it commits: room for them, so they are
    // not spilled to the WAL before (and written again at) the commit. A batch's savepoint keeps the pages it
    // changes first in memory, not in a temporary file.
    conn.pragma_update(None, "cache_size", -16384)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // Checkpoints are the checkpointer's (`store::checkpointer`): copying the WAL into the file is off the writer's
    // core.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    conn.set_prepared_statement_cache_capacity(SQLITE_STATEMENTS);
    Ok(conn)
}

fn io(path: &Path, what: &str, e: &std::io::Error) -> DbError {
    DbError(format!("{}: {what}: {e}", path.display()))
}

/// Statements read back from the log, with their values.
type Statements = Vec<(String, Vec<Param>)>;

/// One frame read back from the log.
struct Frame {
    batch: u64,
    entries: Vec<Entry>,
}

/// What a frame holds, in the order the writer did it.
enum Entry {
    /// A statement the writer ran.
    Run(String, Vec<Param>),
    /// A leased delivery's rows, deferred under its key ([`Store::defer`]): run after the last frame unless a later
    /// [`Entry::Ended`] names the key.
    Deferred(String, Statements),
    /// The deferred rows of a key dropped (its delivery ended) or run at this point (as the `Run`s after it).
    Ended(String),
}

impl Frame {
    fn statements(&self) -> usize {
        self.entries
            .iter()
            .map(|e| match e {
                Entry::Run(..) => 1,
                Entry::Deferred(_, s) => s.len(),
                Entry::Ended(_) => 0,
            })
            .sum()
    }
}

/// Entry tags of a frame's payload: a statement with its SQL text, one with an SQL text given before (its index),
/// a deferred group, the end of one.
const TAG_TEXT: u8 = 0;
const TAG_KNOWN: u8 = 1;
const TAG_DEFERRED: u8 = 2;
const TAG_ENDED: u8 = 3;

/// The frames of the redo log of the database whose token is `token`, up to its first torn or foreign one.
fn read_frames(bytes: &[u8], token: i64) -> Vec<Frame> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while let Some(header) = bytes.get(at..at + HEADER) {
        if &header[..4] != MAGIC
            || i64::from_le_bytes(header[4..12].try_into().unwrap_or_default()) != token
        {
            break;
        }
        let batch = u64::from_le_bytes(header[12..20].try_into().unwrap_or_default());
        let len = u32::from_le_bytes(header[20..24].try_into().unwrap_or_default()) as usize;
        let crc = u32::from_le_bytes(header[24..28].try_into().unwrap_or_default());
        let Some(payload) = bytes.get(at + HEADER..at + HEADER + len) else {
            break;
        };
        if crc32fast::hash(payload) != crc {
            break;
        }
        let Some(entries) = decode(payload) else {
            break;
        };
        out.push(Frame { batch, entries });
        at += HEADER + len;
    }
    out
}

/// A reader over a frame's payload.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2)?.try_into().ok().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)?.try_into().ok().map(u32::from_le_bytes)
    }
    fn i64(&mut self) -> Option<i64> {
        self.take(8)?.try_into().ok().map(i64::from_le_bytes)
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn text(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
}

fn decode(payload: &[u8]) -> Option<Vec<Entry>> {
    let mut c = Cursor(payload);
    let mut texts: Vec<String> = Vec::new();
    let mut out = Vec::new();
    while !c.0.is_empty() {
        out.push(match c.u8()? {
            TAG_DEFERRED => {
                let key = c.text()?;
                let n = c.u16()?;
                let mut statements = Vec::with_capacity(usize::from(n));
                for _ in 0..n {
                    let tag = c.u8()?;
                    statements.push(statement(&mut c, &mut texts, tag)?);
                }
                Entry::Deferred(key, statements)
            }
            TAG_ENDED => Entry::Ended(c.text()?),
            tag => {
                let (sql, params) = statement(&mut c, &mut texts, tag)?;
                Entry::Run(sql, params)
            }
        });
    }
    Some(out)
}

/// One statement after its tag ([`TAG_TEXT`] or [`TAG_KNOWN`]).
fn statement(c: &mut Cursor<'_>, texts: &mut Vec<String>, tag: u8) -> Option<(String, Vec<Param>)> {
    let sql = match tag {
        TAG_TEXT => {
            let t = c.text()?;
            texts.push(t.clone());
            t
        }
        TAG_KNOWN => texts.get(usize::from(c.u16()?))?.clone(),
        _ => return None,
    };
    let n = c.u16()?;
    let mut params = Vec::with_capacity(usize::from(n));
    for _ in 0..n {
        params.push(match c.u8()? {
            0 => Param::Int(None),
            1 => Param::Int(Some(c.i64()?)),
            2 => Param::Text(Some(c.text()?)),
            3 => Param::Blob(Some(c.bytes()?.to_vec())),
            _ => return None,
        });
    }
    Some((sql, params))
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&u32::try_from(b.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(b);
}

/// Appends one statement to a frame's payload; false when it does not fit the format (a value over 4 GiB, more
/// than 65,535 values or SQL texts): the batch then commits the database instead.
fn encode(out: &mut Vec<u8>, texts: &mut Vec<String>, sql: &str, params: &[Param]) -> bool {
    match texts.iter().position(|t| t == sql) {
        Some(i) => {
            let Ok(i) = u16::try_from(i) else {
                return false;
            };
            out.push(TAG_KNOWN);
            out.extend_from_slice(&i.to_le_bytes());
        }
        None => {
            if texts.len() >= usize::from(u16::MAX) {
                return false;
            }
            out.push(TAG_TEXT);
            put_bytes(out, sql.as_bytes());
            texts.push(sql.to_owned());
        }
    }
    let Ok(n) = u16::try_from(params.len()) else {
        return false;
    };
    out.extend_from_slice(&n.to_le_bytes());
    for p in params {
        let fits = |b: &[u8]| u32::try_from(b.len()).is_ok();
        match p {
            Param::Int(None) | Param::Text(None) | Param::Blob(None) | Param::Bytes(None) => {
                out.push(0)
            }
            Param::Int(Some(v)) => {
                out.push(1);
                out.extend_from_slice(&v.to_le_bytes());
            }
            Param::Bool(v) => {
                out.push(1);
                out.extend_from_slice(&i64::from(*v).to_le_bytes());
            }
            Param::Text(Some(v)) => {
                if !fits(v.as_bytes()) {
                    return false;
                }
                out.push(2);
                put_bytes(out, v.as_bytes());
            }
            Param::Blob(Some(v)) => {
                if !fits(v) {
                    return false;
                }
                out.push(3);
                put_bytes(out, v);
            }
            Param::Bytes(Some(v)) => {
                if !fits(v) {
                    return false;
                }
                out.push(3);
                put_bytes(out, v);
            }
        }
    }
    true
}

/// Runs `sql` with `params` on `conn` and copies its rows out.
fn query(
    conn: &rusqlite::Connection,
    sql: &str,
    params: &[Param],
) -> Result<Vec<OwnedRow>, DbError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let width = stmt.column_count();
    let mut rows = stmt.query(rusqlite::params_from_iter(params.iter()))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let mut values = Vec::with_capacity(width);
        for i in 0..width {
            values.push(row.get::<_, Value>(i)?);
        }
        out.push(values);
    }
    Ok(out)
}

/// The last batch the database at `conn` holds and its token (none: a journal older than the redo log's migration).
fn applied(conn: &rusqlite::Connection) -> Result<Option<(u64, i64)>, DbError> {
    let exists: i64 = conn.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'journal_redo'",
        [],
        |r| r.get(0),
    )?;
    if exists == 0 {
        return Ok(None);
    }
    let (batch, token): (i64, i64) = conn.query_row(
        "SELECT batch, token FROM journal_redo WHERE id = 1",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok(Some((u64::try_from(batch).unwrap_or(0), token)))
}

/// The frames the database does not hold: consecutive batches from the one after `marker` (whatever follows a
/// break is older: a log that started over and was not cut back before a crash). A log whose first frame beyond the
/// database is not the next batch: that frame's number.
fn beyond(frames: &[Frame], marker: u64) -> Result<Vec<&Frame>, u64> {
    let mut rest = frames.iter().skip_while(|f| f.batch <= marker).peekable();
    if let Some(first) = rest.peek()
        && first.batch != marker + 1
    {
        return Err(first.batch);
    }
    let mut next = marker + 1;
    Ok(rest
        .take_while(|f| {
            let ok = f.batch == next;
            next += 1;
            ok
        })
        .collect())
}

/// Runs again the batches of the redo log of the journal at `path` that its database does not hold, and commits
/// them. Returns the last batch number the database holds and how many batches were run again.
/// Called before anything else writes the file (the writer's connect; `Journal::open` before migrating).
pub(crate) fn recover(
    conn: &rusqlite::Connection,
    path: &str,
) -> Result<(u64, i64, usize), DbError> {
    let log = redo_path(path);
    let Some((marker, token)) = applied(conn)? else {
        return Ok((0, 0, 0));
    };
    let mut bytes = Vec::new();
    match File::open(&log) {
        Ok(mut f) => {
            f.read_to_end(&mut bytes)
                .map_err(|e| io(&log, "reading the redo log", &e))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((marker, token, 0)),
        Err(e) => return Err(io(&log, "opening the redo log", &e)),
    }
    let frames = read_frames(&bytes, token);
    let run = match beyond(&frames, marker) {
        Ok(run) => run,
        Err(first) => {
            return Err(DbError(format!(
                "{}: the redo log starts at batch {first} but the database holds batches up to {marker}: the \
                 database file was replaced (restored from a backup?) while its redo log stayed. Move the redo \
                 log away to open the journal as the database file stands",
                log.display(),
            )));
        }
    };
    let last = run.last().map_or(marker, |f| f.batch);
    if !run.is_empty() {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let replayed: Result<(), DbError> = (|| {
            let failed = |batch: u64, e: DbError| {
                DbError(format!(
                    "{}: running batch {batch} of the redo log again failed: {e}",
                    log.display(),
                ))
            };
            // Deferred rows whose delivery had not ended by the last frame, in the order they were deferred: the
            // writer would have run them before its commit, after everything else.
            let mut deferred: Vec<(u64, &str, &Statements)> = Vec::new();
            for f in &run {
                for e in &f.entries {
                    match e {
                        // As the writer ran it (its rows, a `RETURNING`'s, read and dropped).
                        Entry::Run(sql, params) => {
                            query(conn, sql, params).map_err(|e| failed(f.batch, e))?;
                        }
                        Entry::Deferred(key, statements) => {
                            deferred.push((f.batch, key, statements))
                        }
                        Entry::Ended(key) => deferred.retain(|(_, k, _)| k != key),
                    }
                }
            }
            for (batch, _, statements) in deferred {
                for (sql, params) in statements {
                    query(conn, sql, params).map_err(|e| failed(batch, e))?;
                }
            }
            conn.execute(
                "UPDATE journal_redo SET batch = ?1 WHERE id = 1",
                [i64::try_from(last).unwrap_or(i64::MAX)],
            )?;
            Ok(())
        })();
        if let Err(e) = replayed {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e);
        }
        conn.execute_batch("COMMIT")?;
        tracing::warn!(
            path,
            batches = run.len(),
            statements = run.iter().map(|f| f.statements()).sum::<usize>(),
            "journal: batches written to the redo log before the last process stopped are in the database now"
        );
    }
    Ok((last, token, run.len()))
}

/// Opens the redo log of the journal at `path`.
fn open_log(path: &str) -> Result<File, DbError> {
    let log = redo_path(path);
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&log)
        .map_err(|e| io(&log, "opening the redo log", &e))
}

/// Takes the redo log's lock (whether it was free): the writer holding it writes the log; a writer whose process
/// ended leaves it free (the lock goes with its file descriptor), and the next to take it runs the log again.
fn take_lock(f: &File, path: &str) -> Result<bool, DbError> {
    match f.try_lock() {
        Ok(()) => Ok(true),
        Err(std::fs::TryLockError::WouldBlock) => Ok(false),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(io(&redo_path(path), "locking the redo log", &e))
        }
    }
}

/// What an operator reading the SQLite journal at `url` from outside its writer (`journal verify`) should know of
/// its redo log: a writer holds it (what it answered in its last milliseconds is not committed yet), or batches
/// answered before its writer stopped wait there for the next start. Nothing to say: `None`.
pub(crate) fn note(url: &str) -> Option<String> {
    let path = sqlite_path(url);
    let log = redo_path(path);
    let f = File::open(&log).ok()?;
    if matches!(f.try_lock(), Err(std::fs::TryLockError::WouldBlock)) {
        return Some(format!(
            "a running gateway writes this journal: what it answered since its last commit (at most {} ms) is in \
             {} and not read here",
            SETTLE_EVERY.as_millis(),
            log.display()
        ));
    }
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .ok()?;
    let (marker, token) = applied(&conn).ok()??;
    let mut bytes = Vec::new();
    (&f).read_to_end(&mut bytes).ok()?;
    let waiting = beyond(&read_frames(&bytes, token), marker).map_or(0, |run| run.len());
    (waiting > 0).then(|| {
        format!(
            "{waiting} batch(es) answered before the gateway stopped are in {} and not yet in the database (not \
             read here): its next start writes them",
            log.display()
        )
    })
}

/// Before the journal at `url` is migrated: what its redo log holds beyond the database is run again, by the
/// statements of the version that wrote it (unless a live writer holds the log: its batches are its own to commit).
pub(crate) fn recover_file(url: &str) -> Result<usize, DbError> {
    let path = sqlite_path(url);
    let log = open_log(path)?;
    if !take_lock(&log, path)? {
        return Ok(0);
    }
    let conn = open_sqlite(path)?;
    let (_, _, replayed) = recover(&conn, path)?;
    Ok(replayed)
}

impl Sqlite {
    /// Appends `sql` to the batch's frame when it changes anything; a statement outside a batch first commits the
    /// open transaction, and runs on its own.
    async fn before(&mut self, sql: &str, params: &[Param]) -> Result<(), DbError> {
        if !self.in_batch {
            return self.settle(true).await;
        }
        if !self.logging || self.overflow || !changes(sql) {
            return Ok(());
        }
        if !encode(&mut self.frame, &mut self.texts, sql, params) || self.frame.len() > FRAME_MAX {
            self.overflow = true;
            self.frame = Vec::new();
            self.texts.clear();
        }
        Ok(())
    }

    /// Writes the batch's frame and waits until it is on the disk.
    fn write_frame(&mut self, batch: u64) -> Result<(), DbError> {
        let path = self.log_path();
        let len = u32::try_from(self.frame.len())
            .map_err(|_| DbError("a redo frame over 4 GiB".into()))?;
        let mut out = Vec::with_capacity(HEADER + self.frame.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.token.to_le_bytes());
        out.extend_from_slice(&batch.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&self.frame).to_le_bytes());
        out.extend_from_slice(&self.frame);
        let end = self.len + out.len() as u64;
        if end > self.allocated {
            let to = end.div_ceil(GROW) * GROW;
            let zeros = vec![0u8; usize::try_from(to - self.allocated).unwrap_or(0)];
            self.redo
                .write_all_at(&zeros, self.allocated)
                .map_err(|e| io(&path, "growing the redo log", &e))?;
            self.allocated = to;
        }
        self.redo
            .write_all_at(&out, self.len)
            .map_err(|e| io(&path, "writing the redo log", &e))?;
        self.redo
            .sync_data()
            .map_err(|e| io(&path, "syncing the redo log", &e))?;
        self.len += out.len() as u64;
        Ok(())
    }

    fn log_path(&self) -> PathBuf {
        redo_path(&self.path)
    }

    /// A writer without the log: takes its lock when it is free, runs again what it holds, and writes it from now
    /// on. Called with no transaction open.
    fn adopt(&mut self) -> Result<(), DbError> {
        if self.logging || !take_lock(&self.redo, &self.path)? {
            return Ok(());
        }
        let (batch, token, _) = recover(&self.conn, &self.path)?;
        self.batch = batch;
        self.token = token;
        self.len = 0;
        self.allocated = self
            .redo
            .metadata()
            .map_err(|e| io(&self.log_path(), "reading the redo log's size", &e))?
            .len();
        self.logging = true;
        Ok(())
    }

    /// Takes `key`'s deferred rows out (kept for an undo of the batch), noting their end in the batch's frame.
    fn take_deferred(&mut self, key: &str) -> Option<&Deferred> {
        let at = self.deferred_at.remove(key)?;
        let d = self.deferred.remove(&at)?;
        if self.logging && !self.overflow {
            self.frame.push(TAG_ENDED);
            put_bytes(&mut self.frame, key.as_bytes());
        }
        self.undo.push(Undo::Removed(at, d));
        match self.undo.last() {
            Some(Undo::Removed(_, d)) => Some(d),
            _ => None,
        }
    }

    /// Undoes what the batch under way did to the deferred rows.
    fn undo_batch(&mut self) {
        while let Some(u) = self.undo.pop() {
            match u {
                Undo::Added(at) => {
                    if let Some(d) = self.deferred.remove(&at) {
                        self.deferred_at.remove(&d.key);
                    }
                }
                Undo::Removed(at, d) => {
                    self.deferred_at.insert(d.key.clone(), at);
                    self.deferred.insert(at, d);
                }
            }
        }
    }

    /// Commits the open transaction (the WAL fsynced), and starts the log over.
    fn commit_open(&mut self) -> Result<(), DbError> {
        if self.open.is_none() {
            return Ok(());
        }
        // Deliveries still under way: their rows go in with the commit (the log that deferred them starts over).
        for d in self.deferred.values() {
            for (sql, params) in &d.statements {
                query(&self.conn, sql, params)?;
            }
        }
        self.deferred.clear();
        self.deferred_at.clear();
        self.conn.prepare_cached("COMMIT")?.execute([])?;
        self.open = None;
        // The database holds every batch the log does: the next frames overwrite them.
        self.len = 0;
        Ok(())
    }
}

impl Store for Sqlite {
    type Row = OwnedRow;
    const DIALECT: Dialect = Dialect::Sqlite;

    /// Opens the file, runs again what its redo log holds beyond the database, and opens the log for appending.
    async fn connect(url: &str) -> Result<Self, DbError> {
        let path = sqlite_path(url).to_owned();
        let redo = open_log(&path)?;
        let conn = open_sqlite(&path)?;
        let mut s = Sqlite {
            conn,
            path,
            redo,
            logging: false,
            len: 0,
            allocated: 0,
            token: 0,
            batch: 0,
            open: None,
            last: Instant::now(),
            in_batch: false,
            frame: Vec::new(),
            texts: Vec::new(),
            overflow: false,
            deferred: BTreeMap::new(),
            deferred_at: HashMap::new(),
            next_deferred: 0,
            undo: Vec::new(),
        };
        s.adopt()?;
        Ok(s)
    }

    /// A savepoint in the writer's transaction (opened now when none is: `BEGIN IMMEDIATE` takes the write lock at
    /// once), and the chain's head.
    async fn begin(&mut self, chain: &str) -> Result<(i64, String), DbError> {
        if self.in_batch {
            return Err(DbError("a batch began inside another".into()));
        }
        if self.open.is_none() {
            self.adopt()?;
            self.conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
            self.open = Some(Instant::now());
            if !self.logging && self.redo.try_lock().is_ok() {
                // The log's writer ended after this writer's look just now: its batches first.
                self.conn.prepare_cached("ROLLBACK")?.execute([])?;
                self.open = None;
                let _ = self.redo.unlock();
                return Box::pin(self.begin(chain)).await;
            }
        }
        self.conn.prepare_cached("SAVEPOINT batch")?.execute([])?;
        self.in_batch = true;
        self.undo.clear();
        self.frame.clear();
        self.texts.clear();
        self.overflow = false;
        let rows = query(&self.conn, &head_sql(chain), &[])?;
        head_of(&rows)
    }

    async fn fetch(&mut self, sql: &str, params: Vec<Param>) -> Result<Vec<OwnedRow>, DbError> {
        self.before(sql, &params).await?;
        query(&self.conn, sql, &params)
    }

    async fn execute(&mut self, sql: &str, params: Vec<Param>) -> Result<u64, DbError> {
        self.before(sql, &params).await?;
        let mut stmt = self.conn.prepare_cached(sql)?;
        let changed = stmt.execute(rusqlite::params_from_iter(params.iter()))?;
        Ok(changed as u64)
    }

    /// The head moved, the batch's savepoint released, and its frame written and synced: the batch is durable.
    /// The transaction commits when it has been open [`SETTLE_EVERY`] (or the frame would be too large).
    async fn commit(&mut self, chain: &str, seq: i64, hash: &str) -> Result<(), DbError> {
        checked_hash(hash)?;
        let head = "UPDATE journal_chains SET seq = $1, hash = $2, alive_us = $3 WHERE chain = $4";
        let params = vec![
            Param::from(seq),
            hash.into(),
            crate::now_us().into(),
            chain.into(),
        ];
        self.execute(head, params).await?;
        if !self.logging {
            self.conn.prepare_cached("RELEASE batch")?.execute([])?;
            self.in_batch = false;
            return self.commit_open();
        }
        self.batch += 1;
        let batch = self.batch;
        self.conn
            .prepare_cached("UPDATE journal_redo SET batch = ?1 WHERE id = 1")?
            .execute([i64::try_from(batch).unwrap_or(i64::MAX)])?;
        self.conn.prepare_cached("RELEASE batch")?.execute([])?;
        self.in_batch = false;
        self.undo.clear();
        if self.overflow {
            self.frame = Vec::new();
            self.texts.clear();
            return self.commit_open();
        }
        self.write_frame(batch)?;
        self.last = Instant::now();
        if self.frame.capacity() > 4 * 1024 * 1024 {
            self.frame = Vec::new();
        }
        self.settle(false).await
    }

    /// Undoes the batch under way; the batches before it in the transaction stay.
    async fn rollback(&mut self) {
        if self.in_batch {
            self.in_batch = false;
            self.undo_batch();
            let _ = self.conn.execute_batch("ROLLBACK TO batch; RELEASE batch");
            if !self.logging {
                let _ = self.commit_open();
            }
        }
    }

    /// Commits the open transaction when it has been open [`SETTLE_EVERY`], no batch came for [`SETTLE_IDLE`] or
    /// its frames reached [`SETTLE_BYTES`]; at once when `now`.
    async fn settle(&mut self, now: bool) -> Result<(), DbError> {
        match self.open {
            Some(since)
                if now
                    || since.elapsed() >= SETTLE_EVERY
                    || self.last.elapsed() >= SETTLE_IDLE
                    || self.len >= SETTLE_BYTES =>
            {
                self.commit_open()
            }
            _ => Ok(()),
        }
    }

    fn defer(
        &mut self,
        key: String,
        released: Released,
        statements: Vec<(&'static str, Vec<Param>)>,
    ) -> bool {
        if !self.in_batch || !self.logging || self.overflow || self.deferred_at.contains_key(&key) {
            return false;
        }
        let Ok(n) = u16::try_from(statements.len()) else {
            return false;
        };
        let mark = self.frame.len();
        self.frame.push(TAG_DEFERRED);
        put_bytes(&mut self.frame, key.as_bytes());
        self.frame.extend_from_slice(&n.to_le_bytes());
        let texts = self.texts.len();
        let fits = statements
            .iter()
            .all(|(sql, params)| encode(&mut self.frame, &mut self.texts, sql, params))
            && self.frame.len() <= FRAME_MAX;
        if !fits {
            // Not in the log's format, or too large for a frame: the caller runs them now, as any statement.
            self.frame.truncate(mark);
            self.texts.truncate(texts);
            return false;
        }
        let at = self.next_deferred;
        self.next_deferred += 1;
        self.deferred_at.insert(key.clone(), at);
        self.deferred.insert(
            at,
            Deferred {
                key,
                released,
                statements,
            },
        );
        self.undo.push(Undo::Added(at));
        true
    }

    fn undefer(&mut self, key: &str) -> Option<Released> {
        self.take_deferred(key).map(|d| d.released.clone())
    }

    fn is_deferred(&self, key: &str) -> bool {
        self.deferred_at.contains_key(key)
    }

    async fn materialize(&mut self, key: Option<&str>) -> Result<(), DbError> {
        let keys: Vec<String> = match key {
            Some(k) => vec![k.to_owned()],
            None => self.deferred.values().map(|d| d.key.clone()).collect(),
        };
        for key in keys {
            let Some(statements) = self.take_deferred(&key).map(|d| d.statements.clone()) else {
                continue;
            };
            for (sql, params) in statements {
                self.execute(sql, params).await?;
            }
        }
        Ok(())
    }

    fn unsettled(&self) -> Option<Duration> {
        self.open.map(|since| {
            SETTLE_EVERY
                .saturating_sub(since.elapsed())
                .min(SETTLE_IDLE.saturating_sub(self.last.elapsed()))
        })
    }

    /// Closes without committing: the batches of the open transaction are in the redo log, and the next connect
    /// runs them again.
    async fn close(self) {
        let _ = rusqlite::Connection::close(self.conn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_read_back_as_written_and_end_at_a_torn_one() {
        let mut frame = Vec::new();
        let mut texts = Vec::new();
        let params = vec![
            Param::from(7i64),
            Param::Text(None),
            Param::from("MaDonVi".to_owned()),
            Param::Bytes(Some(bytes::Bytes::from_static(b"<HoSo/>"))),
            Param::Bool(true),
        ];
        assert!(encode(
            &mut frame,
            &mut texts,
            "INSERT INTO t VALUES ($1, $2, $3, $4, $5)",
            &params
        ));
        assert!(encode(
            &mut frame,
            &mut texts,
            "INSERT INTO t VALUES ($1, $2, $3, $4, $5)",
            &params
        ));
        assert_eq!(texts.len(), 1, "a repeated statement is named by its index");
        let mut log = Vec::new();
        for batch in [4u64, 5] {
            log.extend_from_slice(MAGIC);
            log.extend_from_slice(&77i64.to_le_bytes());
            log.extend_from_slice(&batch.to_le_bytes());
            log.extend_from_slice(&(frame.len() as u32).to_le_bytes());
            log.extend_from_slice(&crc32fast::hash(&frame).to_le_bytes());
            log.extend_from_slice(&frame);
        }
        let frames = read_frames(&log, 77);
        assert_eq!(
            frames.iter().map(|f| f.batch).collect::<Vec<_>>(),
            vec![4, 5]
        );
        let Entry::Run(sql, values) = &frames[1].entries[1] else {
            panic!("a statement");
        };
        assert_eq!(sql, "INSERT INTO t VALUES ($1, $2, $3, $4, $5)");
        assert!(matches!(values[0], Param::Int(Some(7))));
        assert!(matches!(values[1], Param::Int(None)));
        assert!(matches!(&values[2], Param::Text(Some(t)) if t == "MaDonVi"));
        assert!(matches!(&values[3], Param::Blob(Some(b)) if b == b"<HoSo/>"));
        assert!(matches!(values[4], Param::Int(Some(1))));
        // A torn last frame (cut short, or one byte changed) ends the log before it.
        assert_eq!(read_frames(&log[..log.len() - 1], 77).len(), 1);
        assert!(
            read_frames(&log, 78).is_empty(),
            "another database's frames"
        );
        let mut flipped = log.clone();
        let at = flipped.len() - 3;
        flipped[at] ^= 1;
        assert_eq!(read_frames(&flipped, 77).len(), 1);
        assert!(read_frames(b"garbage that is not a frame at all, not one", 77).is_empty());
    }

    /// A migrated journal file in a temporary directory, and its URL.
    async fn journal() -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("j.db").display());
        crate::migrate(&url).await.expect("migrates");
        (dir, url)
    }

    /// A batch of `sql` under chain `c`, committed (durable in the log), the transaction left open.
    async fn batch(s: &mut Sqlite, sql: &str) {
        let (seq, hash) = s.begin("c").await.expect("begins");
        s.fetch(sql, Vec::new()).await.expect("runs");
        s.commit("c", seq, &hash).await.expect("commits");
    }

    /// The chains the database file holds, read by a connection of its own.
    fn chains(url: &str) -> Vec<String> {
        let c = rusqlite::Connection::open(sqlite_path(url)).expect("opens");
        let mut stmt = c
            .prepare("SELECT chain FROM journal_chains ORDER BY chain")
            .expect("prepares");
        stmt.query_map([], |r| r.get(0))
            .expect("reads")
            .collect::<Result<_, _>>()
            .expect("rows")
    }

    async fn writer(url: &str) -> Sqlite {
        let mut s = Sqlite::connect(url).await.expect("connects");
        s.execute(
            &format!(
                "INSERT INTO journal_chains (chain, seq, hash, pruned_through, alive_us) VALUES ('c', 0, '{}', 0, 0) \
                 ON CONFLICT (chain) DO NOTHING",
                crate::chain::GENESIS
            ),
            Vec::new(),
        )
        .await
        .expect("head row");
        s
    }

    const ADD: &str =
        "INSERT INTO journal_chains (chain, seq, hash, pruned_through, alive_us) VALUES";

    #[tokio::test]
    async fn batches_answered_before_a_crash_are_in_the_database_after_it_once() {
        let (_dir, url) = journal().await;
        let mut s = writer(&url).await;
        batch(&mut s, &format!("{ADD} ('x1', 0, 'g', 0, 0)")).await;
        batch(
            &mut s,
            &format!("{ADD} ('x2', 0, 'g', 0, 0) RETURNING chain"),
        )
        .await;
        assert!(s.logging, "the only writer writes the log");
        // Durable in the log, not yet committed: other connections do not see them.
        assert_eq!(chains(&url), ["c"]);
        // The process dies: its transaction is gone.
        s.close().await;
        assert_eq!(chains(&url), ["c"]);
        let s = Sqlite::connect(&url).await.expect("connects again");
        assert_eq!(chains(&url), ["c", "x1", "x2"]);
        assert_eq!(s.batch, 2);
        s.close().await;
        // Opened again: nothing runs twice (a second insert of x1 would fail on its key).
        let mut s = Sqlite::connect(&url).await.expect("connects a third time");
        assert_eq!(s.batch, 2);
        batch(&mut s, &format!("{ADD} ('x3', 0, 'g', 0, 0)")).await;
        s.settle(true).await.expect("commits");
        assert_eq!(chains(&url), ["c", "x1", "x2", "x3"]);
        s.close().await;
    }

    /// Defers `INSERT … ('x…')` under `key` in the batch under way.
    fn defer_insert(s: &mut Sqlite, key: &str, chain: &str) -> bool {
        let sql: &'static str = "INSERT INTO journal_chains (chain, seq, hash, pruned_through, alive_us) \
                                 VALUES ($1, 0, 'g', 0, 0)";
        s.defer(
            key.to_owned(),
            (format!("agency of {key}"), 7, 1),
            vec![(sql, vec![Param::from(chain.to_owned())])],
        )
    }

    #[tokio::test]
    async fn deferred_rows_are_written_only_for_deliveries_still_under_way() {
        let (_dir, url) = journal().await;
        let mut s = writer(&url).await;
        let (seq, hash) = s.begin("c").await.expect("begins");
        for key in ["a", "b", "c", "e"] {
            assert!(defer_insert(&mut s, key, &format!("x{key}")));
        }
        assert!(
            !defer_insert(&mut s, "a", "xa2"),
            "a key is deferred once at a time"
        );
        s.commit("c", seq, &hash).await.expect("commits");
        // The next batch: a's delivery ended (its rows dropped), b's rows are needed now, d is written as ever.
        let (seq, hash) = s.begin("c").await.expect("begins");
        assert_eq!(
            s.undefer("a"),
            Some(("agency of a".to_owned(), 7, 1)),
            "what its outbox row would have released"
        );
        assert_eq!(s.undefer("a"), None);
        s.materialize(Some("b")).await.expect("runs b's rows");
        assert!(!s.is_deferred("b") && s.is_deferred("c"));
        s.execute(&format!("{ADD} ('xd', 0, 'g', 0, 0)"), Vec::new())
            .await
            .expect("runs");
        s.commit("c", seq, &hash).await.expect("commits");
        // A batch that fails gives back what it took: e is deferred again, f is not.
        let _ = s.begin("c").await.expect("begins");
        assert!(s.undefer("e").is_some());
        assert!(defer_insert(&mut s, "f", "xf"));
        s.rollback().await;
        assert!(s.is_deferred("e") && !s.is_deferred("f"));
        assert_eq!(chains(&url), ["c"], "nothing committed yet");
        // The process dies. The next open runs b and d where they ran, then c and e (still under way), never a.
        s.close().await;
        let mut s = Sqlite::connect(&url).await.expect("connects again");
        assert_eq!(chains(&url), ["c", "xb", "xc", "xd", "xe"]);
        // Live, the commit writes what is still deferred.
        let (seq, hash) = s.begin("c").await.expect("begins");
        assert!(defer_insert(&mut s, "g", "xg"));
        assert!(defer_insert(&mut s, "h", "xh"));
        s.commit("c", seq, &hash).await.expect("commits");
        let (seq, hash) = s.begin("c").await.expect("begins");
        assert!(s.undefer("h").is_some());
        s.commit("c", seq, &hash).await.expect("commits");
        s.settle(true).await.expect("commits the transaction");
        assert_eq!(chains(&url), ["c", "xb", "xc", "xd", "xe", "xg"]);
        assert!(!s.is_deferred("g"));
        s.close().await;
    }

    #[tokio::test]
    async fn a_writer_without_the_log_defers_nothing() {
        let (_dir, url) = journal().await;
        let mut first = writer(&url).await;
        let mut second = Sqlite::connect(&url).await.expect("connects");
        assert!(!second.logging);
        let _ = second.begin("c").await.expect("begins");
        assert!(
            !defer_insert(&mut second, "a", "xa"),
            "it commits every batch: nothing would write the rows later"
        );
        second.rollback().await;
        assert!(!defer_insert(&mut first, "a", "xa"), "outside a batch");
        first.close().await;
        second.close().await;
    }

    #[tokio::test]
    async fn the_transaction_commits_when_the_writer_is_idle_and_not_between_close_batches() {
        let (_dir, url) = journal().await;
        let mut s = writer(&url).await;
        batch(&mut s, &format!("{ADD} ('x1', 0, 'g', 0, 0)")).await;
        s.settle(false).await.expect("settles");
        assert_eq!(
            chains(&url),
            ["c"],
            "a batch just written is not committed at once"
        );
        let due = s.unsettled().expect("a commit is due");
        assert!(due <= SETTLE_IDLE, "{due:?}");
        tokio::time::sleep(SETTLE_IDLE * 2).await;
        s.settle(false).await.expect("settles");
        assert_eq!(chains(&url), ["c", "x1"]);
        assert!(s.unsettled().is_none());
        s.close().await;
    }

    #[tokio::test]
    async fn an_operator_is_told_what_the_redo_log_holds_beyond_the_database() {
        let (_dir, url) = journal().await;
        assert_eq!(note(&url), None);
        let mut s = writer(&url).await;
        batch(&mut s, &format!("{ADD} ('x1', 0, 'g', 0, 0)")).await;
        let live = note(&url).expect("a note while the writer runs");
        assert!(
            live.contains("a running gateway writes this journal"),
            "{live}"
        );
        s.close().await;
        let left = note(&url).expect("a note after the writer stopped");
        assert!(
            left.starts_with("1 batch(es) answered before the gateway stopped"),
            "{left}"
        );
        let s = Sqlite::connect(&url).await.expect("connects");
        s.close().await;
        assert_eq!(note(&url), None, "the next start wrote them");
    }

    #[tokio::test]
    async fn a_torn_frame_ends_the_log_and_a_foreign_start_is_refused() {
        let (_dir, url) = journal().await;
        let mut s = writer(&url).await;
        batch(&mut s, &format!("{ADD} ('x1', 0, 'g', 0, 0)")).await;
        batch(&mut s, &format!("{ADD} ('x2', 0, 'g', 0, 0)")).await;
        let log = redo_path(sqlite_path(&url));
        let end = s.len;
        s.close().await;
        // The second frame torn: its last byte changed, as a write cut short by a power loss leaves it.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&log)
            .expect("log");
        f.write_all_at(&[0xff], end - 1).expect("tears");
        let s = Sqlite::connect(&url).await.expect("connects");
        assert_eq!(chains(&url), ["c", "x1"]);
        s.close().await;
        // The database put back to an older state while the log stayed: refused, with what to do.
        let c = rusqlite::Connection::open(sqlite_path(&url)).expect("opens");
        c.execute_batch(
            "UPDATE journal_redo SET batch = 0; DELETE FROM journal_chains WHERE chain = 'x1'",
        )
        .expect("restores");
        let mut s = writer(&url).await;
        batch(&mut s, &format!("{ADD} ('x4', 0, 'g', 0, 0)")).await;
        s.close().await;
        c.execute_batch("UPDATE journal_redo SET batch = 0")
            .expect("restores again");
        let Err(e) = Sqlite::connect(&url).await else {
            panic!("a log that starts past the database opens");
        };
        assert!(
            e.0.contains("starts at batch") && e.0.contains("Move the redo log away"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_log_left_beside_a_database_made_anew_is_not_run_on_it() {
        let (dir, url) = journal().await;
        let mut s = writer(&url).await;
        batch(&mut s, &format!("{ADD} ('old', 0, 'g', 0, 0)")).await;
        s.close().await;
        for f in ["j.db", "j.db-wal", "j.db-shm"] {
            let _ = std::fs::remove_file(dir.path().join(f));
        }
        crate::migrate(&url).await.expect("migrates anew");
        let s = writer(&url).await;
        assert_eq!(chains(&url), ["c"]);
        s.close().await;
    }

    #[tokio::test]
    async fn a_second_writer_commits_as_it_goes_and_takes_the_log_up_when_its_writer_ends() {
        let (_dir, url) = journal().await;
        let mut a = writer(&url).await;
        let mut b = writer(&url).await;
        assert!(a.logging && !b.logging);
        batch(&mut a, &format!("{ADD} ('a1', 0, 'g', 0, 0)")).await;
        a.settle(true).await.expect("commits");
        // b commits each batch (it waits for a's write lock, which a's commit released).
        batch(&mut b, &format!("{ADD} ('b1', 0, 'g', 0, 0)")).await;
        assert_eq!(chains(&url), ["a1", "b1", "c"]);
        batch(&mut a, &format!("{ADD} ('a2', 0, 'g', 0, 0)")).await;
        // a dies with a2 only in its log; b's next batch runs it first, then writes the log itself.
        a.close().await;
        batch(&mut b, &format!("{ADD} ('b2', 0, 'g', 0, 0)")).await;
        assert!(b.logging);
        b.settle(true).await.expect("commits");
        assert_eq!(chains(&url), ["a1", "a2", "b1", "b2", "c"]);
        b.close().await;
    }

    #[test]
    fn only_statements_that_can_change_rows_are_logged() {
        assert!(!changes("  SELECT seq FROM journal_records"));
        assert!(!changes("select 1"));
        assert!(changes("UPDATE outbox SET due_us = $1 RETURNING hop"));
        assert!(changes("INSERT INTO messages VALUES ($1)"));
        assert!(changes("DELETE FROM outbox"));
    }
}
