//! The one writer. Every write to the journal — acceptances, outcomes, outbox claims and leases, retries, expiry,
//! pruning, rebuilding the derived tables — is a job for one task on a thread of its own, which takes as many jobs
//! as are waiting, writes them in one transaction on its own connection — its chain's head row updated first, so
//! a replica waits for no other replica — and answers each only once the commit (and its fsync) is done. Nothing
//! else writes, so no writer ever meets "database is locked", and readers read committed snapshots.
//!
//! Besides the jobs, the writer keeps what one agency holds undelivered (its quota) and the disk's free space, and
//! hands each queued packet it leases to this process straight to the hop's delivery workers with its bytes (no
//! claim statement, no body read back).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sqlx::AnyConnection;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::chain;
use crate::model::{Accepted, Admission, Claimed, Delivery, Held, Message, Outcome, Quota, Status};
use crate::record::{self, Head};
use crate::store::{Columns, DbError, Param, Store, deferred_key};
use crate::{Dialect, JournalError, MAX_RECEIPT_BYTES, now_us};

/// How long the writer waits for a new connection before failing its batch (as the pool waits for one).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// At most this many jobs per transaction.
const MAX_BATCH: usize = 512;

/// Outcomes the caller did not wait for and that could not be written yet are tried again this often.
const PENDING_RETRY: Duration = Duration::from_millis(500);

/// How often bodies past their keeping are swept, and (PostgreSQL) what other replicas hold re-read.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(5);

/// Bodies swept per housekeeping round, records and messages pruned per prune job.
const SWEEP_BATCH: i64 = 500;
pub(crate) const PRUNE_BATCH: i64 = 5000;

/// The free disk space is read again after this long.
const DISK_EVERY: Duration = Duration::from_millis(250);

/// The most of packet bytes handed to this process's delivery workers in memory at once; beyond it, queued
/// packets wait in the outbox for a claim.
const HANDOFF_BYTES: usize = 64 * 1024 * 1024;

type Reply<T> = oneshot::Sender<Result<T, JournalError>>;

pub(crate) enum Job {
    Accept(Box<Accepted>, Reply<Admission>),
    /// An outcome; without a reply the caller did not wait, and the writer keeps it until it is written.
    Finish(Box<Outcome>, Option<Reply<()>>),
    Claim {
        hop: String,
        lease_us: i64,
        limit: u32,
        reply: Reply<Vec<Claimed>>,
    },
    Retry {
        hop: String,
        message_id: String,
        at_us: i64,
        detail: String,
        reply: Reply<()>,
    },
    Ping(Reply<()>),
    /// Answered once every job sent before it is written (a batch of flushes alone writes nothing).
    Flush(Reply<()>),
    /// This process stops writing: its chain is marked as no process's.
    Stop(Reply<()>),
    Prune(Reply<(u64, u64)>),
    Sweep(Reply<u64>),
    Settle {
        before_us: i64,
        detail: String,
        reply: Reply<Vec<String>>,
    },
    Rebuild(Reply<crate::verify::Rebuilt>),
}

/// Per-agency bounds on what the journal holds undelivered.
#[derive(Debug, Clone)]
pub struct Quotas {
    pub default: Quota,
    pub agencies: HashMap<String, Quota>,
}

impl Quotas {
    pub fn of(&self, agency: &str) -> Quota {
        self.agencies.get(agency).copied().unwrap_or(self.default)
    }
}

/// What the writer is told at start.
pub(crate) struct Config {
    pub url: String,
    pub dialect: Dialect,
    pub chain: String,
    /// This process's lease owner name: `<chain>:<pid>:<random>`.
    pub owner: String,
    pub keep_bodies_us: i64,
    pub retention_us: i64,
    pub min_free_disk: u64,
    /// How often the chain links the other chains' heads (when there are others and records were written).
    pub anchor_every: Duration,
    /// The directory of a SQLite journal, whose free space is checked before a packet is written.
    pub disk_dir: Option<PathBuf>,
}

impl Shared {
    pub(crate) fn new(quotas: Quotas) -> Shared {
        Shared {
            counters: Counters::default(),
            handoffs: Mutex::default(),
            handoff_bytes: std::sync::atomic::AtomicUsize::new(0),
            held: Mutex::default(),
            queued: Notify::new(),
            quotas: Mutex::new(Arc::new(quotas)),
        }
    }

    fn quotas(&self) -> Arc<Quotas> {
        self.quotas
            .lock()
            .map(|q| q.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }
}

/// A connection that failed is not trusted with the next batch: rolled back and closed (another is opened).
async fn close<S: Store>(mut c: S) {
    c.rollback().await;
    c.close().await;
}

/// What the writer has done since it started, as counted after each batch (`lgsp_journal_*_total`): jobs per commit
/// is how well group commit works, busy time per commit what one costs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Transactions committed (each one fsync on SQLite, one commit on PostgreSQL).
    pub commits: u64,
    /// Jobs answered by those commits: acceptances, outcomes, claims, retries and the rest.
    pub jobs: u64,
    /// Records appended to this process's chain.
    pub records: u64,
    /// Time the writer spent in batches that committed, from its `BEGIN` to its commit done.
    pub busy: Duration,
    /// Batches that failed (nothing of them written; their jobs answered as the journal being unavailable, their
    /// outcomes kept).
    pub failed: u64,
}

/// [`WriterStats`] as the writer counts them.
#[derive(Default)]
pub(crate) struct Counters {
    commits: AtomicU64,
    jobs: AtomicU64,
    records: AtomicU64,
    busy_us: AtomicU64,
    failed: AtomicU64,
}

impl Counters {
    fn committed(&self, jobs: usize, records: u64, busy: Duration) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.jobs.fetch_add(jobs as u64, Ordering::Relaxed);
        self.records.fetch_add(records, Ordering::Relaxed);
        let us = u64::try_from(busy.as_micros()).unwrap_or(u64::MAX);
        self.busy_us.fetch_add(us, Ordering::Relaxed);
    }

    pub(crate) fn read(&self) -> WriterStats {
        WriterStats {
            commits: self.commits.load(Ordering::Relaxed),
            jobs: self.jobs.load(Ordering::Relaxed),
            records: self.records.load(Ordering::Relaxed),
            busy: Duration::from_micros(self.busy_us.load(Ordering::Relaxed)),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

/// What the writer shares with the journal's handles.
pub(crate) struct Shared {
    /// What the writer has done so far.
    pub counters: Counters,
    /// Each hop's delivery workers in this process, handed packets as their acceptance commits.
    pub handoffs: Mutex<HashMap<String, mpsc::Sender<Claimed>>>,
    /// Bytes handed over and not yet taken by a worker.
    pub handoff_bytes: std::sync::atomic::AtomicUsize,
    /// What each agency holds undelivered, as the writer last counted it.
    pub held: Mutex<HashMap<String, Held>>,
    /// Told after every commit that put a packet in the outbox for a claim.
    pub queued: Notify,
    /// What each agency may hold undelivered (swapped by a reload of the agencies).
    pub quotas: Mutex<Arc<Quotas>>,
}

/// Starts the writer on a thread of its own, after it connected, made its chain's head row and took up the
/// leases of this chain's previous processes: each statement of a batch is a round trip to the database (a
/// PostgreSQL socket, or SQLite run by this thread itself), and a writer task on the request runtime would wait
/// behind the requests in its run queue after every one of them (measured under load: 2.2 ms a batch there, 1.1 ms
/// here).
pub(crate) async fn spawn(
    config: Config,
    shared: Arc<Shared>,
) -> Result<mpsc::Sender<Job>, JournalError> {
    let (tx, rx) = mpsc::channel::<Job>(4 * MAX_BATCH);
    let (ready_tx, ready_rx) = oneshot::channel();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if config.dialect == Dialect::Sqlite {
        crate::store::checkpointer(&config.url, stop.clone());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| JournalError::Open(format!("the journal writer's runtime: {e}")))?;
    std::thread::Builder::new()
        .name("lgsp-journal-writer".into())
        // Ends when every sender is gone (the journal dropped), and the checkpointer with it.
        .spawn(move || {
            match config.dialect {
                Dialect::Sqlite => {
                    runtime.block_on(run::<crate::redo::Sqlite>(config, shared, rx, ready_tx))
                }
                Dialect::Postgres => {
                    runtime.block_on(run::<AnyConnection>(config, shared, rx, ready_tx))
                }
            }
            stop.store(true, Ordering::Release);
        })
        .map_err(|e| JournalError::Open(format!("the journal writer's thread: {e}")))?;
    ready_rx
        .await
        .unwrap_or_else(|_| Err(JournalError::Open("the journal writer stopped".into())))?;
    Ok(tx)
}

/// The writer's state between batches.
struct Writer<S: Store> {
    config: Config,
    shared: Arc<Shared>,
    conn: Option<S>,
    /// What each agency holds undelivered (the writer's own count; PostgreSQL: re-read each housekeeping round,
    /// so other replicas' packets count too).
    held: HashMap<String, Held>,
    /// Outcomes no caller waits for, not written yet (the journal was down): written with the next batch.
    pending: Vec<Outcome>,
    last_anchor: Instant,
    /// Records appended since the last anchor.
    since_anchor: u64,
    last_housekeeping: Instant,
    disk: Option<(Instant, u64)>,
    /// This chain's head as this writer last committed it.
    last_head: Option<(i64, String)>,
    /// Jobs in the last batch.
    last_batch: usize,
    /// When a shared chain was last warned of.
    warned: Option<Instant>,
}

/// The writer's loop: takes as many jobs as are waiting and writes them in one transaction.
async fn run<S: Store>(
    config: Config,
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<Job>,
    ready: oneshot::Sender<Result<(), JournalError>>,
) {
    let mut w = Writer::<S> {
        config,
        shared,
        conn: None,
        held: HashMap::new(),
        pending: Vec::new(),
        last_anchor: Instant::now(),
        since_anchor: 0,
        last_housekeeping: Instant::now(),
        disk: None,
        last_head: None,
        last_batch: 0,
        warned: None,
    };
    match w.start().await {
        Ok(()) => {
            let _ = ready.send(Ok(()));
        }
        Err(e) => {
            let _ = ready.send(Err(JournalError::Open(e.0)));
            return;
        }
    }
    // After the last handle is gone, outcomes still unwritten get this many more tries (the next start takes their
    // deliveries up again, and the next hop knows their message ids).
    let mut tries_left = 10u32;
    // Outcomes nobody waits for, held back a little for the next batch that has to commit anyway (see
    // [`OUTCOMES_WAIT`]), and since when.
    let mut deferred: Vec<Job> = Vec::new();
    let mut deferred_since: Option<Instant> = None;
    loop {
        let closed = rx.is_closed() && rx.is_empty();
        if closed && deferred.is_empty() && (w.pending.is_empty() || tries_left == 0) {
            break;
        }
        let first = if closed {
            if deferred.is_empty() {
                tries_left -= 1;
                tokio::time::sleep(PENDING_RETRY).await;
            }
            None
        } else if w.pending.is_empty() {
            let wait = deferred_since.map_or(HOUSEKEEPING_EVERY, |t| {
                OUTCOMES_WAIT.saturating_sub(t.elapsed())
            });
            // The writer's open transaction commits when due, busy or not.
            let wait = w.unsettled().map_or(wait, |due| wait.min(due));
            match tokio::time::timeout(wait, rx.recv()).await {
                Ok(Some(j)) => Some(j),
                Ok(None) => continue,
                Err(_) => None,
            }
        } else {
            let wait = deferred_since.map_or(PENDING_RETRY, |t| {
                PENDING_RETRY.min(OUTCOMES_WAIT.saturating_sub(t.elapsed()))
            });
            tokio::time::timeout(wait, rx.recv()).await.ok().flatten()
        };
        // Outcomes kept from a failed batch go in a batch of their own: one the store refuses (whatever it holds)
        // holds up no acceptance.
        if !w.pending.is_empty() {
            let kept: Vec<Job> = w
                .pending
                .drain(..)
                .map(|o| Job::Finish(Box::new(o), None))
                .collect();
            w.write(kept).await;
        }
        let mut jobs: Vec<Job> = std::mem::take(&mut deferred);
        jobs.extend(first);
        gather(&mut rx, &mut jobs, w.last_batch);
        if !closed
            && !jobs.is_empty()
            && jobs.len() < MAX_BATCH
            && jobs.iter().all(|j| matches!(j, Job::Finish(_, None)))
            && deferred_since.is_none_or(|t| t.elapsed() < OUTCOMES_WAIT)
        {
            deferred_since.get_or_insert_with(Instant::now);
            deferred = jobs;
            continue;
        }
        deferred_since = None;
        if jobs.is_empty() {
        } else if jobs.iter().all(|j| matches!(j, Job::Flush(_))) {
            let done = match w.settle(true).await {
                Ok(()) => Done::Ping,
                Err(e) => Done::Failed(e.0),
            };
            for job in jobs {
                let done = match &done {
                    Done::Failed(e) => Done::Failed(e.clone()),
                    _ => Done::Ping,
                };
                answer(job, done);
            }
        } else if jobs.iter().any(|j| matches!(j, Job::Stop(_))) {
            let (stops, rest): (Vec<Job>, Vec<Job>) =
                jobs.into_iter().partition(|j| matches!(j, Job::Stop(_)));
            let written = rest.is_empty() || w.write(rest).await;
            let released = w.stopped().await;
            for job in stops {
                let r = if written && released {
                    Done::Ping
                } else {
                    Done::Failed(
                        "the journal could not be written before this process stopped writing"
                            .into(),
                    )
                };
                answer(job, r);
            }
        } else {
            w.last_batch = jobs.len();
            w.write(jobs).await;
        }
        if w.last_housekeeping.elapsed() >= HOUSEKEEPING_EVERY {
            w.last_housekeeping = Instant::now();
            w.housekeeping().await;
        }
        if let Err(e) = w.settle(false).await {
            tracing::warn!(error = %e, "journal: committing the writer's transaction failed; its batches are in the redo log");
        }
    }
    w.stopped().await;
}

/// Takes the jobs waiting. Under load — the last batch held several jobs, so their callers are on their way back —
/// it waits once, [`GATHER`] (a fraction of one commit's fsync), when fewer jobs are there than the last batch held:
/// otherwise callers woken one after another by a commit's answers would each find the writer busy with a batch of
/// one or two, and every commit would serve a handful (measured: 2.4 jobs a commit at 256 concurrent appenders,
/// against a few hundred with the wait). One sleep, not a poll every 20 µs: the writer made 23 context switches a
/// batch polling (`benches/RESULTS.md`).
fn gather(rx: &mut mpsc::Receiver<Job>, jobs: &mut Vec<Job>, last_batch: usize) {
    let drain = |rx: &mut mpsc::Receiver<Job>, jobs: &mut Vec<Job>| {
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
    };
    drain(rx, jobs);
    if last_batch < 2 || jobs.is_empty() {
        return;
    }
    if jobs.len() < last_batch.min(MAX_BATCH) {
        std::thread::sleep(GATHER);
        drain(rx, jobs);
    }
}

/// How long outcomes nobody waits for (a direct delivery's, answered already) are held for a batch that commits
/// anyway: alone they would make a commit (and its fsync) of their own between every two batches of acceptances
/// (measured under direct load: 3.7 packets a commit). Holding them changes nothing a crash could show: until it is
/// written, an outcome's delivery stays leased to this process, and the next start takes it up again.
const OUTCOMES_WAIT: Duration = Duration::from_millis(2);

/// The most a batch waits for jobs to gather (see [`gather`]).
const GATHER: Duration = Duration::from_micros(200);

/// What one job came to, answered once its transaction commits.
enum Done {
    /// A job that could not be done (its reason), answered as the journal being unavailable.
    Failed(String),
    Accept(Result<Admission, JournalError>),
    Finish(Result<(), JournalError>),
    Claim(Vec<Claimed>),
    Retry(Result<(), JournalError>),
    Ping,
    Prune((u64, u64)),
    Sweep(u64),
    Settle(Vec<String>),
    Rebuild(crate::verify::Rebuilt),
}

/// What a committed batch changes outside the database.
#[derive(Default)]
struct Effects {
    /// Per agency: packets and bytes added to (and taken from) the outbox.
    added: HashMap<String, Held>,
    removed: HashMap<String, Held>,
    /// Packets leased to this process, for its delivery workers.
    handoffs: Vec<(mpsc::OwnedPermit<Claimed>, Claimed)>,
    /// A packet went to the outbox for a claim.
    queued: bool,
    /// Something besides records was written (a lease, a retry, a prune): the batch commits even without records.
    changed: bool,
}

/// A record waiting for its place in the chain.
pub(crate) struct Pending {
    pub at_us: i64,
    pub kind: &'static str,
    pub hop: String,
    pub message_id: String,
    pub agency: String,
    pub content: String,
}

impl<S: Store> Writer<S> {
    /// Connects, makes this chain's head row, takes up at once what this chain's previous processes held (they
    /// stopped: a chain is one process's at a time), and counts what each agency holds.
    async fn start(&mut self) -> Result<(), DbError> {
        let chain = self.config.chain.clone();
        let prefix = format!("{chain}:");
        let owner = self.config.owner.clone();
        let at = now_us();
        let mut conn = self.take_connection().await?;
        let r: Result<Vec<S::Row>, DbError> = async {
            conn.fetch(
                "INSERT INTO journal_chains (chain, seq, hash, pruned_through, alive_us) VALUES ($1, 0, $2, 0, $3)
                 ON CONFLICT (chain) DO NOTHING",
                vec![chain.clone().into(), chain::GENESIS.into(), at.into()],
            )
            .await?;
            let (seq, hash) = conn.begin(&chain).await?;
            let taken = conn
                .fetch(
                    "UPDATE outbox SET due_us = $1, lease_owner = NULL
                     WHERE substr(lease_owner, 1, CAST($2 AS INTEGER)) = $3 AND lease_owner <> $4 RETURNING hop",
                    vec![
                        at.into(),
                        i64::try_from(prefix.len()).unwrap_or(0).into(),
                        prefix.clone().into(),
                        owner.clone().into(),
                    ],
                )
                .await?;
            conn.commit(&chain, seq, &hash).await?;
            self.last_head = Some((seq, hash));
            Ok(taken)
        }
        .await;
        let taken = match r {
            Ok(t) => t,
            Err(e) => {
                close(conn).await;
                return Err(e);
            }
        };
        self.conn = Some(conn);
        if !taken.is_empty() {
            tracing::warn!(
                chain,
                deliveries = taken.len(),
                "journal: deliveries this chain's previous process left under way are taken up again now"
            );
            self.shared.queued.notify_waiters();
        }
        self.count_held().await?;
        Ok(())
    }

    /// The writer's connection, taken out (a new one when there is none); put back with `self.conn = Some(…)`
    /// once it did its work, or closed with [`close`] after a failure.
    async fn take_connection(&mut self) -> Result<S, DbError> {
        if let Some(c) = self.conn.take() {
            return Ok(c);
        }
        match tokio::time::timeout(CONNECT_TIMEOUT, S::connect(&self.config.url)).await {
            Ok(c) => c,
            Err(_) => Err(DbError(format!(
                "no connection to the journal within {} s",
                CONNECT_TIMEOUT.as_secs()
            ))),
        }
    }

    /// Re-reads what each agency holds undelivered (every replica's packets).
    async fn count_held(&mut self) -> Result<(), DbError> {
        let mut conn = self.take_connection().await?;
        let rows = conn
            .fetch(
                "SELECT agency, COUNT(*), CAST(COALESCE(SUM(bytes), 0) AS BIGINT) FROM outbox GROUP BY agency",
                Vec::new(),
            )
            .await;
        let rows = match rows {
            Ok(r) => {
                self.conn = Some(conn);
                r
            }
            Err(e) => {
                close(conn).await;
                return Err(e);
            }
        };
        let mut held = HashMap::new();
        for r in &rows {
            held.insert(
                r.text(0)?,
                Held {
                    packets: u64::try_from(r.int(1)?).unwrap_or(0),
                    bytes: u64::try_from(r.int(2)?).unwrap_or(0),
                },
            );
        }
        self.held = held;
        self.publish_held();
        Ok(())
    }

    fn publish_held(&self) {
        if let Ok(mut h) = self.shared.held.lock() {
            h.clone_from(&self.held);
        }
    }

    /// The journal was dropped: its chain is marked as no process's (`journal rebuild-index` may run at once);
    /// whether that was written.
    async fn stopped(&mut self) -> bool {
        let chain = self.config.chain.clone();
        let Ok(mut conn) = self.take_connection().await else {
            return false;
        };
        match conn
            .fetch(
                "UPDATE journal_chains SET alive_us = 0 WHERE chain = $1",
                vec![chain.into()],
            )
            .await
        {
            Ok(_) => {
                self.conn = Some(conn);
                true
            }
            Err(_) => {
                close(conn).await;
                false
            }
        }
    }

    /// Between batches: bodies past their keeping swept, and (PostgreSQL) the quotas' counts re-read.
    async fn housekeeping(&mut self) {
        if let Err(e) = self.sweep_bodies().await {
            tracing::warn!(error = %e, "journal: sweeping kept bodies failed; trying again later");
        }
        if self.config.dialect == Dialect::Postgres
            && let Err(e) = self.count_held().await
        {
            tracing::warn!(error = %e, "journal: counting what agencies hold failed");
        }
    }

    /// Between batches, in a transaction of its own: [`sweep`].
    async fn sweep_bodies(&mut self) -> Result<(), DbError> {
        let chain = self.config.chain.clone();
        let keep = self.config.keep_bodies_us;
        let mut conn = self.take_connection().await?;
        let r = async {
            let (seq, hash) = conn.begin(&chain).await?;
            sweep(&mut conn, now_us(), keep).await?;
            conn.commit(&chain, seq, &hash).await
        }
        .await;
        match r {
            Ok(()) => {
                self.conn = Some(conn);
                Ok(())
            }
            Err(e) => {
                close(conn).await;
                Err(e)
            }
        }
    }

    /// Is there room on the disk for a packet? (SQLite only: a PostgreSQL server watches its own disk.)
    fn free_disk(&mut self) -> Option<u64> {
        let dir = self.config.disk_dir.as_ref()?;
        if let Some((at, free)) = self.disk
            && at.elapsed() < DISK_EVERY
        {
            return Some(free);
        }
        let free = crate::disk::free_bytes(dir).ok()?;
        self.disk = Some((Instant::now(), free));
        Some(free)
    }

    /// Commits what the writer's open transaction holds (SQLite, `redo.rs`): at once when `now`, else when due. A
    /// failure closes the connection; its batches are in the redo log, and the next connection runs them again.
    async fn settle(&mut self, now: bool) -> Result<(), DbError> {
        if self.conn.is_none() && now && self.config.dialect == Dialect::Sqlite {
            // The last connection failed: a new one runs its batches again from the redo log.
            let conn = self.take_connection().await?;
            self.conn = Some(conn);
        }
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        let r = conn.settle(now).await;
        if r.is_err()
            && let Some(conn) = self.conn.take()
        {
            close(conn).await;
        }
        r
    }

    /// How long until the open transaction is due to commit.
    fn unsettled(&self) -> Option<Duration> {
        self.conn.as_ref().and_then(Store::unsettled)
    }

    /// Writes `jobs` in one transaction and answers each; whether it was written.
    async fn write(&mut self, jobs: Vec<Job>) -> bool {
        let mut effects = Effects::default();
        let written = match self.take_connection().await {
            Ok(mut conn) => {
                let r = self.write_batch(&mut conn, &jobs, &mut effects).await;
                match &r {
                    Ok(_) => self.conn = Some(conn),
                    Err(_) => close(conn).await,
                }
                r
            }
            Err(e) => Err(e),
        };
        // A flush asks for what was written to be readable: the open transaction commits now.
        let unsettled = match &written {
            Ok(_) if jobs.iter().any(|j| matches!(j, Job::Flush(_))) => {
                self.settle(true).await.err()
            }
            _ => None,
        };
        match written {
            Ok(done) => {
                for (agency, h) in &effects.added {
                    self.held.entry(agency.clone()).or_default().add(*h);
                }
                for (agency, h) in &effects.removed {
                    if let Some(held) = self.held.get_mut(agency) {
                        held.sub(*h);
                    }
                }
                if !effects.added.is_empty() || !effects.removed.is_empty() {
                    self.held.retain(|_, h| h.packets > 0 || h.bytes > 0);
                    self.publish_held();
                }
                for (permit, claimed) in effects.handoffs {
                    permit.send(claimed);
                }
                if effects.queued {
                    self.shared.queued.notify_waiters();
                }
                for (job, done) in jobs.into_iter().zip(done) {
                    match (&job, &unsettled) {
                        (Job::Flush(_), Some(e)) => answer(job, Done::Failed(e.0.clone())),
                        _ => answer(job, done),
                    }
                }
                true
            }
            // Everything in the batch fails together: nothing of it was written. Outcomes nobody waits for are
            // kept and written with a later batch.
            Err(e) => {
                tracing::debug!(error = %e, "journal batch failed");
                self.shared.counters.failed.fetch_add(1, Ordering::Relaxed);
                // Packets reserved for this process's workers were not written: their room is given back.
                let reserved: usize = effects
                    .handoffs
                    .iter()
                    .map(|(_, c)| c.body.as_ref().map_or(0, Bytes::len))
                    .sum();
                self.shared
                    .handoff_bytes
                    .fetch_sub(reserved, std::sync::atomic::Ordering::AcqRel);
                for job in jobs {
                    match job {
                        Job::Finish(o, None) => self.pending.push(*o),
                        job => fail(job, &e),
                    }
                }
                if !self.pending.is_empty() {
                    tracing::warn!(
                        outcomes = self.pending.len(),
                        error = %e,
                        "journal: outcomes kept in memory until the journal can be written"
                    );
                }
                false
            }
        }
    }

    async fn write_batch(
        &mut self,
        conn: &mut S,
        jobs: &[Job],
        effects: &mut Effects,
    ) -> Result<Vec<Done>, DbError> {
        let at = now_us();
        let chain = self.config.chain.clone();
        let free = if jobs.iter().any(|j| matches!(j, Job::Accept(..))) {
            self.free_disk()
        } else {
            None
        };
        let mut done: Vec<Option<Done>> = (0..jobs.len()).map(|_| None).collect();
        let mut records: Vec<Pending> = Vec::new();
        let started = Instant::now();
        let (mut seq, mut prev) = conn.begin(&chain).await?;
        if let Some(last) = &self.last_head
            && (last.0 != seq || last.1 != prev)
            && self
                .warned
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
        {
            // Another process wrote this chain since this one's last commit: two processes share a chain name
            // (correct, but they take turns, and a restart of one takes up the other's deliveries).
            self.warned = Some(Instant::now());
            tracing::error!(
                chain,
                "journal: another process writes this chain too; give each replica its own [journal] chain"
            );
        }
        let quotas = self.shared.quotas();
        let mut batch = Batch {
            config: &self.config,
            quotas: &quotas,
            shared: &self.shared,
            held: &self.held,
            at,
            done: &mut done,
            records: &mut records,
            effects,
        };
        // Outcomes first: a resend in the same batch as its message's outcome finds the message ended.
        batch.finishes(conn, jobs).await?;
        batch.accepts(conn, jobs, free).await?;
        batch.the_rest(conn, jobs).await?;
        // The other chains' heads, linked into this one now and then (replicas' chains verify together).
        if self.last_anchor.elapsed() >= self.config.anchor_every
            && (self.since_anchor > 0 || !records.is_empty())
        {
            let heads = conn
                .fetch(
                    "SELECT chain, seq, hash FROM journal_chains WHERE chain <> $1 AND seq > 0 ORDER BY chain",
                    vec![chain.clone().into()],
                )
                .await?;
            let heads: Vec<Head> = heads
                .iter()
                .map(|r| {
                    Ok(Head {
                        chain: r.text(0)?,
                        seq: r.int(1)?,
                        hash: r.text(2)?,
                    })
                })
                .collect::<Result<_, DbError>>()?;
            if !heads.is_empty() {
                records.push(Pending {
                    at_us: at,
                    kind: record::ANCHOR,
                    hop: String::new(),
                    message_id: String::new(),
                    agency: String::new(),
                    content: record::anchor(&chain, &heads, at),
                });
            }
        }
        let appended = records.len() as u64;
        if records.is_empty() && !effects.changed {
            // Nothing was written (refusals, look-ups, empty claims): no commit, no fsync.
            conn.rollback().await;
            return Ok(done.into_iter().map(|d| d.unwrap_or(Done::Ping)).collect());
        }
        for chunk in shaped(&records, self.config.dialect) {
            let params = record_params(&chain, chunk, &mut seq, &mut prev);
            conn.fetch(records_sql(chunk.len()), params).await?;
        }
        conn.commit(&chain, seq, &prev).await?;
        self.shared
            .counters
            .committed(jobs.len(), appended, started.elapsed());
        self.last_head = Some((seq, prev));
        if records.iter().any(|r| r.kind == record::ANCHOR) {
            self.last_anchor = Instant::now();
            self.since_anchor = 0;
        } else {
            self.since_anchor += appended;
        }
        Ok(done.into_iter().map(|d| d.unwrap_or(Done::Ping)).collect())
    }
}

/// One batch under way: what it decided per job and the records it appends.
struct Batch<'a> {
    config: &'a Config,
    quotas: &'a Quotas,
    shared: &'a Shared,
    held: &'a HashMap<String, Held>,
    at: i64,
    done: &'a mut [Option<Done>],
    records: &'a mut Vec<Pending>,
    effects: &'a mut Effects,
}

/// Whether an acceptance tries `m` again: the same packet (body, route, key and mode) after a delivery that
/// failed or expired. Anything else found under its key or message id is answered as it stands.
fn again_allowed(m: &Message, a: &Accepted) -> bool {
    m.status.retryable()
        && m.body_sha256 == a.body_sha256
        && m.route == a.route
        && m.mode == a.mode
        && m.idempotency_key == a.idempotency_key
}

/// Whether the agency may hold `more` on top of what it holds, what this batch added and less what this batch's
/// outcomes released (they are written before its acceptances, in the same transaction).
fn quota_allows(
    quotas: &Quotas,
    held: &HashMap<String, Held>,
    (added, removed): (&HashMap<String, Held>, &HashMap<String, Held>),
    agency: &str,
    more: Held,
) -> Result<(), JournalError> {
    let quota = quotas.of(agency);
    let mut now = held.get(agency).copied().unwrap_or_default();
    if let Some(a) = added.get(agency) {
        now.add(*a);
    }
    if let Some(r) = removed.get(agency) {
        now.sub(*r);
    }
    if now.fits(more, quota) {
        Ok(())
    } else {
        Err(JournalError::OverQuota {
            agency: agency.to_owned(),
            held: now,
            quota,
        })
    }
}

/// The outbox row of a packet the journal holds, and whether it is leased to this process now.
struct OutboxRow<'a> {
    a: &'a Accepted,
    message_id: String,
    lease_until: Option<i64>,
}

impl Batch<'_> {
    /// Acceptances: new messages inserted (a key or message id already there is skipped, then looked at), their
    /// bodies stored once, their outbox rows, their records.
    async fn accepts<S: Store>(
        &mut self,
        conn: &mut S,
        jobs: &[Job],
        free: Option<u64>,
    ) -> Result<(), DbError> {
        let accepts: Vec<(usize, &Accepted)> = jobs
            .iter()
            .enumerate()
            .filter_map(|(i, j)| match j {
                Job::Accept(a, _) => Some((i, &**a)),
                _ => None,
            })
            .collect();
        if accepts.is_empty() {
            return Ok(());
        }
        if let Some(free) = free
            && free < self.config.min_free_disk
        {
            for (i, _) in &accepts {
                self.done[*i] = Some(Done::Accept(Err(JournalError::DiskFull {
                    free,
                    min: self.config.min_free_disk,
                })));
            }
            return Ok(());
        }
        // An agency already at its quota gets no insert: only a look-up (a resend of what it holds is answered),
        // so a flood past the quota writes nothing.
        let mut budget = self.effects.added.clone();
        type Numbered<'a> = Vec<(usize, &'a Accepted)>;
        let (fits, over): (Numbered<'_>, Numbered<'_>) = accepts.into_iter().partition(|(_, a)| {
            let Some(body) = &a.body else { return true };
            let more = Held {
                packets: 1,
                bytes: body.len() as u64,
            };
            let ok = quota_allows(
                self.quotas,
                self.held,
                (&budget, &self.effects.removed),
                &a.agency,
                more,
            )
            .is_ok();
            if ok {
                budget.entry(a.agency.clone()).or_default().add(more);
            }
            ok
        });
        let all: Vec<&Accepted> = fits.iter().map(|(_, a)| *a).collect();
        // By position in `fits`: one message id twice in a batch is inserted once, for its first acceptance.
        let mut inserted: HashSet<usize> = HashSet::new();
        let mut start = 0;
        for chunk in shaped(&all, self.config.dialect) {
            if self.config.dialect == Dialect::Sqlite {
                // One row a statement: inserted when it changed a row.
                let changed = conn
                    .execute(SQLITE_MESSAGE_SQL, message_params(chunk, self.at))
                    .await?;
                if changed > 0 {
                    inserted.insert(start);
                }
                start += chunk.len();
                continue;
            }
            let rows = conn
                .fetch(messages_sql(chunk.len()), message_params(chunk, self.at))
                .await?;
            for row in rows {
                let (hop, id) = (row.text(0)?, row.text(1)?);
                if let Some(k) = chunk.iter().enumerate().position(|(k, a)| {
                    a.hop == hop && a.message_id == id && !inserted.contains(&(start + k))
                }) {
                    inserted.insert(start + k);
                }
            }
            start += chunk.len();
        }
        let mut outbox: Vec<OutboxRow<'_>> = Vec::new();
        for (k, (i, a)) in fits.into_iter().enumerate() {
            let admission = if inserted.contains(&k) {
                Ok(self.admit(a, &mut outbox))
            } else {
                self.repeated(conn, a, &mut outbox).await?
            };
            self.done[i] = Some(Done::Accept(admission));
        }
        for (i, a) in over {
            self.done[i] = Some(Done::Accept(self.over_quota(conn, a, &mut outbox).await?));
        }
        // Deliveries leased to this process: their outbox rows (and a direct packet's body) deferred where the
        // store can (SQLite's redo log), so one that ends before the next commit never writes them. A queued
        // packet's body is kept `keep_bodies` after its delivery: written now.
        let mut bodies: Vec<&Accepted> = Vec::with_capacity(outbox.len());
        let mut outbox_now = Vec::with_capacity(outbox.len());
        for r in outbox {
            if r.lease_until.is_some() && self.defer(conn, &r) {
                if r.a.delivery == Delivery::Queued {
                    bodies.push(r.a);
                }
                continue;
            }
            bodies.push(r.a);
            outbox_now.push(r);
        }
        let outbox = outbox_now;
        self.store_bodies(conn, bodies).await?;
        for chunk in shaped(&outbox, self.config.dialect) {
            let params = self.outbox_params(chunk);
            conn.fetch(outbox_sql(chunk.len()), params).await?;
        }
        Ok(())
    }

    /// Room in the agency's quota for `a`'s packet (nothing to hold: always).
    fn room_for(&self, a: &Accepted) -> Result<(), JournalError> {
        let Some(body) = &a.body else { return Ok(()) };
        let more = Held {
            packets: 1,
            bytes: body.len() as u64,
        };
        quota_allows(
            self.quotas,
            self.held,
            (&self.effects.added, &self.effects.removed),
            &a.agency,
            more,
        )
    }

    /// A new message inserted: its acceptance record, and its delivery held.
    fn admit<'b>(&mut self, a: &'b Accepted, outbox: &mut Vec<OutboxRow<'b>>) -> Admission {
        self.records.push(Pending {
            at_us: self.at,
            kind: record::ACCEPTED,
            hop: a.hop.clone(),
            message_id: a.message_id.clone(),
            agency: a.agency.clone(),
            content: record::accepted(a, &a.message_id, record::ACCEPTED, self.at),
        });
        self.hold(a, &a.message_id, outbox);
        Admission::New
    }

    /// Notes the outbox row of a packet the journal now holds (its body is there), leased to this process when a
    /// delivery starts now: a direct one (under way in the request), or a queued one a worker of this process
    /// takes at once.
    fn hold<'b>(&mut self, a: &'b Accepted, message_id: &str, outbox: &mut Vec<OutboxRow<'b>>) {
        let Some(body) = &a.body else { return };
        let size = body.len() as u64;
        self.effects
            .added
            .entry(a.agency.clone())
            .or_default()
            .add(Held {
                packets: 1,
                bytes: size,
            });
        let lease_until = self
            .at
            .saturating_add(i64::try_from(a.lease.as_micros()).unwrap_or(i64::MAX));
        let leased = match a.delivery {
            Delivery::Direct => true,
            Delivery::Queued => self.hand_over(a, message_id),
        };
        if !leased {
            self.effects.queued = true;
        }
        outbox.push(OutboxRow {
            a,
            message_id: message_id.to_owned(),
            lease_until: leased.then_some(lease_until),
        });
    }

    /// Reserves room with the hop's delivery workers of this process for a queued packet; after the commit it is
    /// handed to them with its bytes.
    fn hand_over(&mut self, a: &Accepted, message_id: &str) -> bool {
        use std::sync::atomic::Ordering;
        let Some(body) = &a.body else { return false };
        let sender = match self.shared.handoffs.lock() {
            Ok(h) => h.get(&a.hop).cloned(),
            Err(_) => None,
        };
        let Some(sender) = sender else { return false };
        let bytes = body.len();
        if self.shared.handoff_bytes.load(Ordering::Acquire) + bytes > HANDOFF_BYTES {
            return false;
        }
        let Ok(permit) = sender.try_reserve_owned() else {
            return false;
        };
        self.shared.handoff_bytes.fetch_add(bytes, Ordering::AcqRel);
        let message = Message {
            hop: a.hop.clone(),
            message_id: message_id.to_owned(),
            agency: a.agency.clone(),
            route: a.route.clone(),
            message_type: a.message_type.clone(),
            mode: a.mode.clone(),
            idempotency_key: a.idempotency_key.clone(),
            body_sha256: a.body_sha256.clone(),
            body_size: a.body_size,
            delivery: a.delivery,
            status: Status::Queued,
            upstream_status: None,
            receipt: None,
            answer_type: None,
            detail: None,
            accepted_us: self.at,
            updated_us: self.at,
            attempts: 0,
            request: a.request.clone(),
        };
        self.effects.handoffs.push((
            permit,
            Claimed {
                message,
                body: Some(body.clone()),
                attempts: 1,
                last: None,
            },
        ));
        true
    }

    /// Hands a leased delivery's outbox row (and a direct packet's body) to the store to write only if it is
    /// still under way when the transaction commits ([`Store::defer`]); false when the store writes nothing later.
    fn defer<S: Store>(&self, conn: &mut S, r: &OutboxRow<'_>) -> bool {
        let a = r.a;
        let Some(body) = &a.body else { return false };
        let bytes = i64::try_from(body.len()).unwrap_or(i64::MAX);
        let mut statements = Vec::with_capacity(2);
        if a.delivery == Delivery::Direct {
            statements.push((bodies_sql(self.config.dialect), self.body_params(a)));
        }
        statements.push((outbox_sql(1), self.outbox_params(std::slice::from_ref(r))));
        conn.defer(
            deferred_key(&a.hop, &r.message_id),
            (a.agency.clone(), bytes, 1),
            statements,
        )
    }

    fn body_params(&self, a: &Accepted) -> Vec<Param> {
        vec![
            Param::from(a.body_sha256.clone()),
            i64::try_from(a.body_size).unwrap_or(i64::MAX).into(),
            self.at.into(),
            Param::Bytes(a.body.clone()),
        ]
    }

    /// Bodies of the packets held, once per SHA-256 (a body already there stays as it is).
    async fn store_bodies<S: Store>(
        &mut self,
        conn: &mut S,
        mut bodies: Vec<&Accepted>,
    ) -> Result<(), DbError> {
        let mut seen = HashSet::new();
        bodies.retain(|a| seen.insert(a.body_sha256.as_str()));
        // In one order on every replica: two batches that share bodies lock them in the same order (no deadlock).
        bodies.sort_by(|a, b| a.body_sha256.cmp(&b.body_sha256));
        // One body a statement, on PostgreSQL too: sqlx leaves Nagle's algorithm on, so a statement that does not fit
        // one TCP segment waits for the server's delayed ACK of the first — 40 ms a batch of 16 bodies on loopback
        // (the append bench: 625 records/s). A body that fits a segment goes at once.
        for a in bodies {
            let params = self.body_params(a);
            conn.fetch(bodies_sql(self.config.dialect), params).await?;
        }
        Ok(())
    }

    fn outbox_params(&self, chunk: &[OutboxRow<'_>]) -> Vec<Param> {
        let mut params = Vec::with_capacity(chunk.len() * 10);
        for r in chunk {
            let a = r.a;
            params.extend([
                Param::from(a.hop.clone()),
                r.message_id.clone().into(),
                a.agency.clone().into(),
                a.body_sha256.clone().into(),
                i64::try_from(a.body.as_ref().map_or(0, Bytes::len))
                    .unwrap_or(i64::MAX)
                    .into(),
                a.delivery.as_str().into(),
                self.at.into(),
                r.lease_until.unwrap_or(self.at).into(),
                i64::from(r.lease_until.is_some()).into(),
                r.lease_until.map(|_| self.config.owner.clone()).into(),
            ]);
        }
        params
    }

    /// An acceptance whose key (or message id) is already there: the message as it stands, or — when its delivery
    /// failed or expired, on the same route with the same body — the same message tried again.
    async fn repeated<'b, S: Store>(
        &mut self,
        conn: &mut S,
        a: &'b Accepted,
        outbox: &mut Vec<OutboxRow<'b>>,
    ) -> Result<Result<Admission, JournalError>, DbError> {
        let Some(m) = self.known(conn, a).await? else {
            // Its key's first use in this batch was refused (over the quota) and is gone again: this one is new.
            return self.insert_one(conn, a, outbox).await;
        };
        if m.agency != a.agency {
            return Ok(Ok(Admission::Taken));
        }
        if !again_allowed(&m, a) {
            return Ok(Ok(Admission::Existing(Box::new(m))));
        }
        if let Err(e) = self.room_for(a) {
            return Ok(Err(e));
        }
        let status = match a.delivery {
            Delivery::Direct => Status::InProgress,
            Delivery::Queued => Status::Queued,
        };
        let rows = conn
            .fetch(
                &format!(
                    "UPDATE messages SET status = $1, delivery = $2, request = $3,
                         updated_us = {greatest}(updated_us + 1, $4), accepted_us = {greatest}(updated_us + 1, $4),
                         upstream_status = NULL, receipt = NULL, answer_type = NULL, detail = NULL,
                         message_type = $5, subject = $6, approval = $7, hop_signature = $8
                     WHERE hop = $9 AND message_id = $10 RETURNING updated_us",
                    greatest = greatest(self.config.dialect)
                ),
                vec![
                    status.as_str().into(),
                    a.delivery.as_str().into(),
                    request_json(a).into(),
                    self.at.into(),
                    a.message_type.clone().into(),
                    a.subject.clone().into(),
                    a.approval.clone().into(),
                    a.hop_signature.clone().into(),
                    m.hop.clone().into(),
                    m.message_id.clone().into(),
                ],
            )
            .await?;
        let at = rows
            .first()
            .map(|r| r.int(0))
            .transpose()?
            .unwrap_or(self.at);
        self.records.push(Pending {
            at_us: at,
            kind: record::ACCEPTED_AGAIN,
            hop: a.hop.clone(),
            message_id: m.message_id.clone(),
            agency: a.agency.clone(),
            content: record::accepted(a, &m.message_id, record::ACCEPTED_AGAIN, at),
        });
        self.hold(a, &m.message_id, outbox);
        Ok(Ok(Admission::Again(Box::new(m))))
    }

    /// An acceptance past its agency's quota: the message as it stands when its key (or message id) is known (a
    /// resend is answered as always, never tried again meanwhile), else refused — nothing written either way.
    async fn over_quota<'b, S: Store>(
        &mut self,
        conn: &mut S,
        a: &'b Accepted,
        outbox: &mut Vec<OutboxRow<'b>>,
    ) -> Result<Result<Admission, JournalError>, DbError> {
        let known = self.known(conn, a).await?;
        if let Some(m) = &known {
            if m.agency != a.agency {
                return Ok(Ok(Admission::Taken));
            }
            if !again_allowed(m, a) {
                return Ok(Ok(Admission::Existing(Box::new(m.clone()))));
            }
        }
        match self.room_for(a) {
            Err(e) => Ok(Err(e)),
            // Room again after all (the batch's outcomes freed some): an acceptance as any other — tried again when
            // the journal knows it, inserted when it does not.
            Ok(()) if known.is_some() => self.repeated(conn, a, outbox).await,
            Ok(()) => self.insert_one(conn, a, outbox).await,
        }
    }

    /// The message an acceptance's key (in its agency and mode), or else its message id, names already.
    async fn known<S: Store>(
        &mut self,
        conn: &mut S,
        a: &Accepted,
    ) -> Result<Option<Message>, DbError> {
        let mut rows = match &a.idempotency_key {
            Some(key) => {
                conn.fetch(
                    concat!(
                        "SELECT ",
                        message_columns!(),
                        " FROM messages WHERE hop = $1 AND agency = $2 AND mode = $3 AND idempotency_key = $4"
                    ),
                    vec![
                        a.hop.clone().into(),
                        a.agency.clone().into(),
                        a.mode.clone().into(),
                        key.clone().into(),
                    ],
                )
                .await?
            }
            None => Vec::new(),
        };
        if rows.is_empty() {
            rows = conn
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
        rows.first().map(Message::from_row).transpose()
    }

    /// One acceptance inserted on its own, within the agency's quota.
    async fn insert_one<'b, S: Store>(
        &mut self,
        conn: &mut S,
        a: &'b Accepted,
        outbox: &mut Vec<OutboxRow<'b>>,
    ) -> Result<Result<Admission, JournalError>, DbError> {
        if let Err(e) = self.room_for(a) {
            return Ok(Err(e));
        }
        let rows = conn
            .fetch(messages_sql(1), message_params(&[a], self.at))
            .await?;
        if rows.is_empty() {
            return Err(DbError(format!(
                "message {} was neither inserted nor found at hop {}",
                a.message_id, a.hop
            )));
        }
        Ok(Ok(self.admit(a, outbox)))
    }

    /// Outcomes, together, in runs that keep the batch's order (a run ends before a second outcome of the same
    /// message): the outbox row of a leased delivery taken away (only by the lease's owner), the message's state set
    /// (only while it is pending), the outcome's record appended.
    async fn finishes<S: Store>(&mut self, conn: &mut S, jobs: &[Job]) -> Result<(), DbError> {
        let mut run: Vec<(usize, &Outcome)> = Vec::new();
        for (i, job) in jobs.iter().enumerate() {
            if let Job::Finish(o, _) = job {
                if run
                    .iter()
                    .any(|(_, r)| r.hop == o.hop && r.message_id == o.message_id)
                {
                    for (i, r) in self.finish_run(conn, &mut run).await? {
                        self.done[i] = Some(Done::Finish(r));
                    }
                }
                run.push((i, o));
            }
        }
        for (i, r) in self.finish_run(conn, &mut run).await? {
            self.done[i] = Some(Done::Finish(r));
        }
        Ok(())
    }

    /// One run of outcomes; each one's index with whether it was written (not when its message is not pending, or
    /// its lease is another process's).
    async fn finish_run<S: Store>(
        &mut self,
        conn: &mut S,
        run: &mut Vec<(usize, &Outcome)>,
    ) -> Result<Vec<(usize, Result<(), JournalError>)>, DbError> {
        let mut results = Vec::with_capacity(run.len());
        if run.is_empty() {
            return Ok(results);
        }
        // Leased deliveries: their outbox rows, taken only by the lease's owner; rows still deferred are dropped
        // unwritten (a delivery of this process that ended before the transaction committed).
        let mut released: HashMap<(String, String), (String, i64, i64)> = HashMap::new();
        let owned: Vec<&(usize, &Outcome)> = run
            .iter()
            .filter(|(_, o)| o.owner.is_some())
            .filter(|(_, o)| {
                if o.owner.as_deref() != Some(self.config.owner.as_str()) {
                    return true;
                }
                match conn.undefer(&deferred_key(&o.hop, &o.message_id)) {
                    Some(r) => {
                        released.insert((o.hop.clone(), o.message_id.clone()), r);
                        false
                    }
                    None => true,
                }
            })
            .collect();
        for chunk in shaped(&owned, self.config.dialect) {
            if let ([(_, o)], Dialect::Sqlite) = (chunk, self.config.dialect) {
                let key = [
                    Param::from(o.hop.clone()),
                    o.message_id.clone().into(),
                    o.owner.clone().into(),
                ];
                let rows = conn
                    .fetch(
                        "SELECT agency, bytes, attempts FROM outbox
                         WHERE hop = $1 AND message_id = $2 AND lease_owner = $3",
                        key.to_vec(),
                    )
                    .await?;
                if let Some(row) = rows.first() {
                    conn.execute(
                        "DELETE FROM outbox WHERE hop = $1 AND message_id = $2 AND lease_owner = $3",
                        key.to_vec(),
                    )
                    .await?;
                    released.insert(
                        (o.hop.clone(), o.message_id.clone()),
                        (row.text(0)?, row.int(1)?, row.int(2)?),
                    );
                }
                continue;
            }
            let sql = release_sql(chunk.len());
            let mut params = Vec::with_capacity(chunk.len() * 3);
            for (_, o) in chunk {
                params.extend([
                    Param::from(o.hop.clone()),
                    o.message_id.clone().into(),
                    o.owner.clone().into(),
                ]);
            }
            for row in conn.fetch(sql, params).await? {
                released.insert(
                    (row.text(0)?, row.text(1)?),
                    (row.text(2)?, row.int(3)?, row.int(4)?),
                );
            }
        }
        // An outcome without a lease never ends a message whose delivery is leased (its holder decides).
        let unowned: Vec<&(usize, &Outcome)> =
            run.iter().filter(|(_, o)| o.owner.is_none()).collect();
        let mut leased: HashSet<(String, String)> = HashSet::new();
        for chunk in shaped(&unowned, self.config.dialect) {
            let sql = leased_sql(chunk.len());
            let mut params = Vec::with_capacity(chunk.len() * 2);
            for (_, o) in chunk {
                params.extend([Param::from(o.hop.clone()), o.message_id.clone().into()]);
            }
            for row in conn.fetch(sql, params).await? {
                leased.insert((row.text(0)?, row.text(1)?));
            }
        }
        for (_, o) in &unowned {
            if conn.is_deferred(&deferred_key(&o.hop, &o.message_id)) {
                leased.insert((o.hop.clone(), o.message_id.clone()));
            }
        }
        let settled: Vec<&(usize, &Outcome)> = run
            .iter()
            .filter(|(_, o)| {
                let key = (o.hop.clone(), o.message_id.clone());
                match o.owner {
                    None => !leased.contains(&key),
                    Some(_) => released.contains_key(&key),
                }
            })
            .collect();
        let mut written: HashMap<(String, String), (String, i64, i64)> = HashMap::new();
        for chunk in shaped(&settled, self.config.dialect) {
            let sql = outcome_sql(self.config.dialect, chunk.len());
            let sqlite = self.config.dialect == Dialect::Sqlite;
            let mut params: Vec<Param> = Vec::with_capacity(1 + chunk.len() * 8);
            params.push(self.at.into());
            for (_, o) in chunk {
                let attempts = released
                    .get(&(o.hop.clone(), o.message_id.clone()))
                    .map_or(-1, |(_, _, n)| *n);
                params.extend([
                    Param::from(o.hop.clone()),
                    o.message_id.clone().into(),
                    o.status.as_str().into(),
                    o.upstream_status.map(i64::from).into(),
                    keep_receipt(o).into(),
                    o.answer_type.clone().into(),
                    o.detail.clone().into(),
                    attempts.into(),
                ]);
            }
            if let ([(_, o)], true) = (chunk, sqlite) {
                if conn.execute(sql, params).await? > 0 {
                    let rows = conn
                        .fetch(
                            "SELECT agency, updated_us, attempts FROM messages
                             WHERE hop = $1 AND message_id = $2",
                            vec![Param::from(o.hop.clone()), o.message_id.clone().into()],
                        )
                        .await?;
                    if let Some(row) = rows.first() {
                        written.insert(
                            (o.hop.clone(), o.message_id.clone()),
                            (row.text(0)?, row.int(1)?, row.int(2)?),
                        );
                    }
                }
                continue;
            }
            for row in conn.fetch(sql, params).await? {
                written.insert(
                    (row.text(0)?, row.text(1)?),
                    (row.text(2)?, row.int(3)?, row.int(4)?),
                );
            }
        }
        self.effects.changed |= !released.is_empty();
        for (i, o) in run.drain(..) {
            let key = (o.hop.clone(), o.message_id.clone());
            if let Some((agency, bytes, _)) = released.get(&key) {
                self.effects
                    .removed
                    .entry(agency.clone())
                    .or_default()
                    .add(Held {
                        packets: 1,
                        bytes: u64::try_from(*bytes).unwrap_or(0),
                    });
            }
            results.push((
                i,
                match written.get(&key) {
                    Some((agency, at, attempts)) => {
                        self.records.push(Pending {
                            at_us: *at,
                            kind: record::OUTCOME,
                            hop: o.hop.clone(),
                            message_id: o.message_id.clone(),
                            agency: agency.clone(),
                            content: record::outcome(
                                o,
                                keep_receipt(o).as_deref(),
                                agency,
                                *attempts,
                                *at,
                            ),
                        });
                        Ok(())
                    }
                    None => Err(JournalError::UnknownMessage(o.message_id.clone())),
                },
            ));
        }
        Ok(results)
    }

    /// Claims, retries and the operator's jobs, in the batch's order.
    async fn the_rest<S: Store>(&mut self, conn: &mut S, jobs: &[Job]) -> Result<(), DbError> {
        for (i, job) in jobs.iter().enumerate() {
            let d = match job {
                Job::Accept(..) | Job::Finish(..) => continue,
                Job::Ping(_) => {
                    // A ping proves the store takes a commit.
                    self.effects.changed = true;
                    Done::Ping
                }
                Job::Flush(_) | Job::Stop(_) => Done::Ping,
                Job::Claim {
                    hop,
                    lease_us,
                    limit,
                    ..
                } => {
                    let claimed = self.claim(conn, hop, *lease_us, *limit).await?;
                    self.effects.changed |= !claimed.is_empty();
                    Done::Claim(claimed)
                }
                Job::Retry {
                    hop,
                    message_id,
                    at_us,
                    detail,
                    ..
                } => {
                    conn.materialize(Some(&deferred_key(hop, message_id)))
                        .await?;
                    let rows = conn
                        .fetch(
                            "UPDATE outbox SET due_us = $1, lease_owner = NULL, detail = $2
                             WHERE hop = $3 AND message_id = $4 AND lease_owner = $5 RETURNING hop",
                            vec![
                                (*at_us).into(),
                                detail.clone().into(),
                                hop.clone().into(),
                                message_id.clone().into(),
                                self.config.owner.clone().into(),
                            ],
                        )
                        .await?;
                    if !rows.is_empty() {
                        self.effects.queued = true;
                        self.effects.changed = true;
                    }
                    Done::Retry(if rows.is_empty() {
                        Err(JournalError::UnknownMessage(message_id.clone()))
                    } else {
                        Ok(())
                    })
                }
                // The operator's jobs read the outbox and the bodies as they stand: rows deferred are written
                // first (the body sweep does so itself, from housekeeping too).
                Job::Prune(_) => {
                    self.effects.changed = true;
                    conn.materialize(None).await?;
                    Done::Prune(self.prune(conn).await?)
                }
                Job::Sweep(_) => {
                    self.effects.changed = true;
                    Done::Sweep(sweep(conn, self.at, self.config.keep_bodies_us).await?)
                }
                Job::Settle {
                    before_us, detail, ..
                } => {
                    self.effects.changed = true;
                    conn.materialize(None).await?;
                    Done::Settle(self.settle(conn, *before_us, detail).await?)
                }
                Job::Rebuild(_) => {
                    self.effects.changed = true;
                    conn.materialize(None).await?;
                    Done::Rebuild(crate::verify::rebuild(conn, self.config.dialect, self.at).await?)
                }
            };
            self.done[i] = Some(d);
        }
        Ok(())
    }

    /// Leases up to `limit` due deliveries of `hop` to this process (a new packet, a retry fallen due, or one whose
    /// lease ended with the process that held it), with what a delivery needs.
    async fn claim<S: Store>(
        &mut self,
        conn: &mut S,
        hop: &str,
        lease_us: i64,
        limit: u32,
    ) -> Result<Vec<Claimed>, DbError> {
        let until = self.at.saturating_add(lease_us);
        // Replicas on one PostgreSQL skip each other's rows; SQLite has one writer.
        let lock = match self.config.dialect {
            Dialect::Postgres => "FOR UPDATE SKIP LOCKED",
            Dialect::Sqlite => "",
        };
        let rows = conn
            .fetch(
                &format!(
                    "UPDATE outbox SET lease_owner = $1, due_us = $2, attempts = attempts + 1
                     WHERE (hop, message_id) IN (
                         SELECT hop, message_id FROM outbox WHERE hop = $3 AND due_us <= $4
                         ORDER BY due_us LIMIT $5 {lock})
                     RETURNING message_id, attempts, detail"
                ),
                vec![
                    self.config.owner.clone().into(),
                    until.into(),
                    hop.to_owned().into(),
                    self.at.into(),
                    i64::from(limit).into(),
                ],
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let id = r.text(0)?;
            let found = conn
                .fetch(
                    concat!(
                        "SELECT ",
                        message_columns!(),
                        ", (SELECT body FROM journal_bodies b WHERE b.sha256 = messages.body_sha256)
                         FROM messages WHERE hop = $1 AND message_id = $2"
                    ),
                    vec![hop.to_owned().into(), id.clone().into()],
                )
                .await?;
            let Some(row) = found.first() else {
                // An outbox row without its message (a tampered journal): left for `verify` to name.
                continue;
            };
            out.push(Claimed {
                message: Message::from_row(row)?,
                body: row.opt_blob(19)?.map(Bytes::from),
                attempts: u32::try_from(r.int(1)?).unwrap_or(u32::MAX),
                last: r.opt_text(2)?,
            });
        }
        Ok(out)
    }

    /// Messages left in progress with no lease (a broker's packet whose consumer stopped, or a journal older than
    /// the outbox rows), untouched since `before_us`: failed, each with its outcome record.
    async fn settle<S: Store>(
        &mut self,
        conn: &mut S,
        before_us: i64,
        detail: &str,
    ) -> Result<Vec<String>, DbError> {
        let rows = conn
            .fetch(
                "SELECT hop, message_id FROM messages m
                 WHERE status = 'in_progress' AND request IS NULL AND updated_us < $1
                   AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.hop = m.hop AND o.message_id = m.message_id)
                 ORDER BY updated_us LIMIT 1000",
                vec![before_us.into()],
            )
            .await?;
        let outcomes: Vec<Outcome> = rows
            .iter()
            .map(|r| {
                Ok(Outcome {
                    hop: r.text(0)?,
                    message_id: r.text(1)?,
                    status: Status::Failed,
                    upstream_status: None,
                    receipt: None,
                    answer_type: None,
                    detail: Some(detail.to_owned()),
                    owner: None,
                })
            })
            .collect::<Result<_, DbError>>()?;
        let mut run: Vec<(usize, &Outcome)> = outcomes.iter().enumerate().collect();
        let written = self.finish_run(conn, &mut run).await?;
        Ok(written
            .into_iter()
            .filter(|(_, r)| r.is_ok())
            .filter_map(|(i, _)| outcomes.get(i).map(|o| o.message_id.clone()))
            .collect())
    }

    /// Records past the retention, from the start of this chain and of chains whose writer stopped long ago (the
    /// head remembering how far), a few thousand at a time; the messages they started go with them once ended.
    async fn prune<S: Store>(&mut self, conn: &mut S) -> Result<(u64, u64), DbError> {
        let cutoff = self.at.saturating_sub(self.config.retention_us);
        let gone = self.at.saturating_sub(3_600_000_000);
        let chains = conn
            .fetch(
                "SELECT chain, pruned_through FROM journal_chains WHERE chain = $1 OR alive_us < $2",
                vec![self.config.chain.clone().into(), gone.into()],
            )
            .await?;
        let mut records = 0u64;
        let mut messages = 0u64;
        for c in &chains {
            let (chain, pruned) = (c.text(0)?, c.int(1)?);
            let page = conn
                .fetch(
                    "SELECT seq, at_us FROM journal_records WHERE chain = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                    vec![chain.clone().into(), pruned.into(), PRUNE_BATCH.into()],
                )
                .await?;
            let mut through = None;
            for r in &page {
                if r.int(1)? >= cutoff {
                    break;
                }
                through = Some(r.int(0)?);
            }
            let Some(mut through) = through else { continue };
            // A packet still owed keeps its acceptance record, and so everything after it.
            let owed = conn
                .fetch(
                    "SELECT MIN(r.seq) FROM journal_records r JOIN messages m
                         ON m.hop = r.hop AND m.message_id = r.message_id
                     WHERE r.chain = $1 AND r.seq > $2 AND r.seq <= $3
                       AND r.kind IN ('accepted', 'accepted_again') AND m.status IN ('queued', 'in_progress')",
                    vec![chain.clone().into(), pruned.into(), through.into()],
                )
                .await?;
            if let Some(first) = owed.first().map(|r| r.opt_int(0)).transpose()?.flatten() {
                through = first - 1;
            }
            if through <= pruned {
                continue;
            }
            // The messages these records started, ended and past the retention, go first (their keys too).
            messages += conn
                .fetch(
                    "DELETE FROM messages WHERE (hop, message_id) IN (
                         SELECT hop, message_id FROM journal_records
                         WHERE chain = $1 AND seq > $2 AND seq <= $3 AND kind IN ('accepted', 'accepted_again'))
                       AND accepted_us < $4 AND status NOT IN ('queued', 'in_progress')
                     RETURNING hop",
                    vec![
                        chain.clone().into(),
                        pruned.into(),
                        through.into(),
                        cutoff.into(),
                    ],
                )
                .await?
                .len() as u64;
            records += conn
                .fetch(
                    "DELETE FROM journal_records WHERE chain = $1 AND seq > $2 AND seq <= $3 RETURNING seq",
                    vec![chain.clone().into(), pruned.into(), through.into()],
                )
                .await?
                .len() as u64;
            conn.fetch(
                "UPDATE journal_chains SET pruned_through = $1 WHERE chain = $2",
                vec![through.into(), chain.into()],
            )
            .await?;
        }
        Ok((records, messages))
    }
}

/// Deletes bodies stored longer than `keep_us` ago that no pending delivery needs, a few hundred at a time; the
/// number deleted. On SQLite the outbox has no index of its rows' bodies (a b-tree more for every acceptance and
/// outcome to write): the bodies the outbox holds are gathered once per sweep instead.
async fn sweep<S: Store>(conn: &mut S, at: i64, keep_us: i64) -> Result<u64, DbError> {
    // A queued packet handed to this process's workers has its body written and its outbox row deferred: the row
    // goes in first, or the body would look unneeded.
    conn.materialize(None).await?;
    let cutoff = at.saturating_sub(keep_us);
    let sql = match S::DIALECT {
        Dialect::Sqlite => {
            "DELETE FROM journal_bodies WHERE sha256 IN (
                 SELECT sha256 FROM journal_bodies b WHERE b.stored_us <= $1
                   AND b.sha256 NOT IN (SELECT body_sha256 FROM outbox)
                 ORDER BY b.stored_us LIMIT $2)"
        }
        Dialect::Postgres => {
            "DELETE FROM journal_bodies WHERE sha256 IN (
                 SELECT sha256 FROM journal_bodies b WHERE b.stored_us <= $1
                   AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.body_sha256 = b.sha256)
                 ORDER BY b.stored_us LIMIT $2)"
        }
    };
    conn.execute(sql, vec![cutoff.into(), SWEEP_BATCH.into()])
        .await
}

fn answer(job: Job, done: Done) {
    match (job, done) {
        (Job::Accept(_, reply), Done::Accept(r)) => {
            let _ = reply.send(r);
        }
        (Job::Finish(_, Some(reply)), Done::Finish(r)) => {
            let _ = reply.send(r);
        }
        (Job::Finish(o, None), Done::Finish(Err(e))) => {
            // Its lease was taken up by another process, which decides the outcome.
            tracing::warn!(message_id = %o.message_id, error = %e, "journal: an outcome was not written");
        }
        (Job::Finish(_, None), Done::Finish(Ok(()))) => {}
        (Job::Claim { reply, .. }, Done::Claim(c)) => {
            let _ = reply.send(Ok(c));
        }
        (Job::Retry { reply, .. }, Done::Retry(r)) => {
            let _ = reply.send(r);
        }
        (Job::Ping(reply) | Job::Flush(reply) | Job::Stop(reply), Done::Ping) => {
            let _ = reply.send(Ok(()));
        }
        (Job::Prune(reply), Done::Prune(n)) => {
            let _ = reply.send(Ok(n));
        }
        (Job::Sweep(reply), Done::Sweep(n)) => {
            let _ = reply.send(Ok(n));
        }
        (Job::Settle { reply, .. }, Done::Settle(ids)) => {
            let _ = reply.send(Ok(ids));
        }
        (Job::Rebuild(reply), Done::Rebuild(r)) => {
            let _ = reply.send(Ok(r));
        }
        (job, Done::Failed(why)) => fail(job, &DbError(why)),
        (job, _) => fail(job, &DbError("journal batch out of step".into())),
    }
}

fn fail(job: Job, e: &DbError) {
    let err = || JournalError::Unavailable(e.0.clone());
    match job {
        Job::Accept(_, reply) => {
            let _ = reply.send(Err(err()));
        }
        Job::Finish(_, reply) => {
            if let Some(reply) = reply {
                let _ = reply.send(Err(err()));
            }
        }
        Job::Claim { reply, .. } => {
            let _ = reply.send(Err(err()));
        }
        Job::Retry { reply, .. } | Job::Ping(reply) | Job::Flush(reply) | Job::Stop(reply) => {
            let _ = reply.send(Err(err()));
        }
        Job::Prune(reply) => {
            let _ = reply.send(Err(err()));
        }
        Job::Sweep(reply) => {
            let _ = reply.send(Err(err()));
        }
        Job::Settle { reply, .. } => {
            let _ = reply.send(Err(err()));
        }
        Job::Rebuild(reply) => {
            let _ = reply.send(Err(err()));
        }
    }
}

/// The larger of two values, as each database spells it.
pub(crate) fn greatest(d: Dialect) -> &'static str {
    match d {
        Dialect::Sqlite => "MAX",
        Dialect::Postgres => "GREATEST",
    }
}

/// Numbered placeholders `($first, $first+1, …)` for `rows` rows of `cols` values each. Every statement numbers its
/// placeholders in the order they first appear: SQLite takes `$N` as a name and binds names in that order.
pub(crate) fn values_from(rows: usize, cols: usize, first: usize) -> String {
    use std::fmt::Write;
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
            let _ = write!(out, "${}", first + r * cols + c);
        }
        out.push(')');
    }
    out
}

/// Splits `rows` into statements. PostgreSQL: multi-row statements of 16, 8, 4, 2 or 1 rows (each statement a round
/// trip; five shapes, each prepared once and reused — 16 rows beat 8 and 32 in the append bench, and PostgreSQL
/// slowed tenfold at 32 and more). SQLite, run in this thread: one row a statement, which costs no round trip and
/// needs no statement journal (a multi-row statement that could fail midway has SQLite copy every page it touches
/// first: 11 % of the writer's time in the append bench).
pub(crate) fn shaped<T>(mut rows: &[T], dialect: Dialect) -> Vec<&[T]> {
    let mut out = Vec::new();
    let mut size = match dialect {
        Dialect::Postgres => 16,
        Dialect::Sqlite => 1,
    };
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

/// The statement text of each shape, made once.
macro_rules! shapes {
    ($name:ident, $make:expr) => {
        fn $name(rows: usize) -> &'static str {
            static SHAPES: std::sync::OnceLock<[String; 5]> = std::sync::OnceLock::new();
            let shapes = SHAPES.get_or_init(|| [1, 2, 4, 8, 16].map($make));
            let i = rows.trailing_zeros() as usize;
            shapes.get(i).map_or("", String::as_str)
        }
    };
}

shapes!(records_sql, |rows| format!(
    "INSERT INTO journal_records (chain, seq, at_us, kind, hop, message_id, agency, content, prev_hash, hash) VALUES {}",
    values_from(rows, 10, 1)
));

/// [`messages_sql`] of one row on SQLite, whose writer asks whether it changed a row (see `Store::execute`).
const SQLITE_MESSAGE_SQL: &str =
    "INSERT INTO messages (hop, message_id, agency, route, message_type, mode, idempotency_key, body_sha256,
         body_size, delivery, request, status, accepted_us, updated_us, attempts, subject, approval, hop_signature)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18) ON CONFLICT DO NOTHING";

shapes!(messages_sql, |rows| {
    format!(
    "INSERT INTO messages (hop, message_id, agency, route, message_type, mode, idempotency_key, body_sha256,
         body_size, delivery, request, status, accepted_us, updated_us, attempts, subject, approval, hop_signature)
     VALUES {} ON CONFLICT DO NOTHING RETURNING hop, message_id",
    values_from(rows, 18, 1)
)
});

// The statements of outcomes. One row is written as plain equalities: a `VALUES` list of one row would still be
// made a temporary table by SQLite, opened and closed for each outcome (a quarter of the writer's time under load).
shapes!(release_sql, |rows| if rows == 1 {
    "DELETE FROM outbox WHERE hop = $1 AND message_id = $2 AND lease_owner = $3
     RETURNING hop, message_id, agency, bytes, attempts"
        .to_owned()
} else {
    format!(
        "DELETE FROM outbox WHERE (hop, message_id, lease_owner) IN (VALUES {})
         RETURNING hop, message_id, agency, bytes, attempts",
        values_from(rows, 3, 1)
    )
});

shapes!(leased_sql, |rows| if rows == 1 {
    "SELECT hop, message_id FROM outbox WHERE hop = $1 AND message_id = $2".to_owned()
} else {
    format!(
        "SELECT hop, message_id FROM outbox WHERE (hop, message_id) IN (VALUES {})",
        values_from(rows, 2, 1)
    )
});

/// An outcome's message row: its values after `$1` (the batch's time) in the order of [`Batch::finish_run`].
fn outcome_sql(dialect: Dialect, rows: usize) -> &'static str {
    fn make(dialect: Dialect, rows: usize) -> String {
        let greatest = greatest(dialect);
        if rows == 1 {
            // Out of order: SQLite binds `?N` to value N (a `$N` it would number by first appearance).
            let sql = format!(
                "UPDATE messages SET status = $4, upstream_status = $5, receipt = $6, answer_type = $7,
                     detail = $8, attempts = CASE WHEN $9 >= 0 THEN $9 ELSE attempts + 1 END,
                     updated_us = {greatest}(updated_us + 1, $1)
                 WHERE hop = $2 AND message_id = $3 AND status IN ('in_progress', 'queued')"
            );
            // SQLite's writer reads the row after (see `Store::execute`).
            return match dialect {
                Dialect::Sqlite => sql.replace('$', "?"),
                Dialect::Postgres => {
                    format!("{sql} RETURNING hop, message_id, agency, updated_us, attempts")
                }
            };
        }
        // VALUES columns are column1… in both SQLite and PostgreSQL.
        format!(
            "UPDATE messages SET status = v.column3, upstream_status = v.column4, receipt = v.column5,
                 answer_type = v.column6, detail = v.column7,
                 attempts = CASE WHEN v.column8 >= 0 THEN v.column8 ELSE messages.attempts + 1 END,
                 updated_us = {greatest}(messages.updated_us + 1, $1)
             FROM (VALUES {}) AS v
             WHERE messages.hop = v.column1 AND messages.message_id = v.column2
                 AND messages.status IN ('in_progress', 'queued')
             RETURNING messages.hop, messages.message_id, messages.agency, messages.updated_us,
                 messages.attempts",
            values_from(rows, 8, 2)
        )
    }
    static SQLITE: std::sync::OnceLock<[String; 5]> = std::sync::OnceLock::new();
    static POSTGRES: std::sync::OnceLock<[String; 5]> = std::sync::OnceLock::new();
    let shapes = match dialect {
        Dialect::Sqlite => SQLITE.get_or_init(|| [1, 2, 4, 8, 16].map(|r| make(dialect, r))),
        Dialect::Postgres => POSTGRES.get_or_init(|| [1, 2, 4, 8, 16].map(|r| make(dialect, r))),
    };
    shapes
        .get(rows.trailing_zeros() as usize)
        .map_or("", String::as_str)
}

/// A body already there is kept, its time moved to now: a sweep (of any replica) that meets it waits for this
/// transaction (the row is locked) and then finds it too young to go.
fn bodies_sql(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Sqlite => {
            "INSERT INTO journal_bodies (sha256, size, stored_us, body) VALUES ($1, $2, $3, $4)
             ON CONFLICT (sha256) DO UPDATE SET stored_us = MAX(journal_bodies.stored_us, excluded.stored_us)"
        }
        Dialect::Postgres => {
            "INSERT INTO journal_bodies (sha256, size, stored_us, body) VALUES ($1, $2, $3, $4)
             ON CONFLICT (sha256) DO UPDATE SET stored_us = GREATEST(journal_bodies.stored_us, EXCLUDED.stored_us)"
        }
    }
}

shapes!(outbox_sql, |rows| {
    format!(
    "INSERT INTO outbox (hop, message_id, agency, body_sha256, bytes, delivery, accepted_us, due_us, attempts,
         lease_owner) VALUES {}",
    values_from(rows, 10, 1)
)
});

/// Links `chunk` into `chain` after `(seq, prev)`: the values of [`records_sql`].
fn record_params(chain: &str, chunk: &[Pending], seq: &mut i64, prev: &mut String) -> Vec<Param> {
    let mut params = Vec::with_capacity(chunk.len() * 10);
    for r in chunk {
        let next = *seq + 1;
        let hash = chain::hash(next, prev, &r.content);
        params.extend([
            Param::from(chain),
            next.into(),
            r.at_us.into(),
            r.kind.into(),
            r.hop.clone().into(),
            r.message_id.clone().into(),
            r.agency.clone().into(),
            r.content.clone().into(),
            std::mem::take(prev).into(),
            hash.clone().into(),
        ]);
        *seq = next;
        *prev = hash;
    }
    params
}

/// The request a delivery replays, as stored.
fn request_json(a: &Accepted) -> Option<String> {
    a.request
        .as_ref()
        .and_then(|r| serde_json::to_string(r).ok())
}

/// The values of [`messages_sql`] for `chunk`.
fn message_params(chunk: &[&Accepted], at: i64) -> Vec<Param> {
    let mut params = Vec::with_capacity(chunk.len() * 18);
    for a in chunk {
        let status = match a.delivery {
            Delivery::Direct => Status::InProgress,
            Delivery::Queued => Status::Queued,
        };
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
            status.as_str().into(),
            at.into(),
            at.into(),
            0i64.into(),
            a.subject.clone().into(),
            a.approval.clone().into(),
            a.hop_signature.clone().into(),
        ]);
    }
    params
}

/// The receipt an outcome keeps: at most [`MAX_RECEIPT_BYTES`].
pub(crate) fn keep_receipt(o: &Outcome) -> Option<String> {
    o.receipt
        .as_ref()
        .map(|r| storable(&clip(r, MAX_RECEIPT_BYTES)))
}

/// Text as every store takes it: PostgreSQL refuses NUL in text, so an answer holding one keeps U+FFFD instead
/// (row and record alike).
pub(crate) fn storable(s: &str) -> String {
    if s.contains('\0') {
        s.replace('\0', "\u{FFFD}")
    } else {
        s.to_owned()
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

    #[tokio::test]
    async fn the_body_sweep_keeps_a_body_whose_outbox_row_is_deferred() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("j.db").display());
        crate::migrate(&url).await.expect("migrates");
        let mut conn = crate::redo::Sqlite::connect(&url).await.expect("connects");
        conn.execute(
            &format!(
                "INSERT INTO journal_chains (chain, seq, hash, pruned_through, alive_us) VALUES ('c', 0, '{}', 0, 0)",
                chain::GENESIS
            ),
            Vec::new(),
        )
        .await
        .expect("head row");
        let (seq, hash) = conn.begin("c").await.expect("begins");
        // Two bodies stored long ago; a queued packet handed to this process needs the first, its outbox row
        // deferred (as `Batch::defer` leaves it).
        for sha in ["a1", "b2"] {
            let body = Param::Bytes(Some(Bytes::from_static(b"<HoSo/>")));
            let params = vec![Param::from(sha), 7i64.into(), 0i64.into(), body];
            conn.execute(bodies_sql(Dialect::Sqlite), params)
                .await
                .expect("body");
        }
        let row: Vec<Param> = vec![
            "lgsp".into(),
            "m1".into(),
            "000.00.00.H29".into(),
            "a1".into(),
            7i64.into(),
            "queued".into(),
            1i64.into(),
            i64::MAX.into(),
            1i64.into(),
            "this-process".into(),
        ];
        assert!(conn.defer(
            deferred_key("lgsp", "m1"),
            ("000.00.00.H29".into(), 7, 1),
            vec![(outbox_sql(1), row)]
        ));
        assert_eq!(
            sweep(&mut conn, now_us(), 0).await.expect("sweeps"),
            1,
            "only the body no delivery needs"
        );
        assert!(!conn.is_deferred(&deferred_key("lgsp", "m1")));
        let left = conn
            .fetch("SELECT sha256 FROM journal_bodies", Vec::new())
            .await
            .expect("reads");
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].text(0).expect("sha256"), "a1");
        conn.commit("c", seq, &hash).await.expect("commits");
        conn.close().await;
    }

    #[test]
    fn batches_split_into_a_few_statement_shapes() {
        let rows: Vec<u32> = (0..300).collect();
        let sizes: Vec<usize> = shaped(&rows, Dialect::Postgres)
            .iter()
            .map(|c| c.len())
            .collect();
        assert_eq!(sizes.iter().sum::<usize>(), 300);
        assert!(sizes.iter().all(|s| s.is_power_of_two() && *s <= 16));
        // 300 = 18 × 16 + 8 + 4.
        assert_eq!((sizes.len(), &sizes[18..]), (20, &[8, 4][..]));
        assert_eq!(shaped::<u32>(&[], Dialect::Postgres).len(), 0);
        assert!(shaped(&rows, Dialect::Sqlite).iter().all(|c| c.len() == 1));
        assert_eq!(values_from(2, 2, 1), "($1, $2), ($3, $4)");
        assert_eq!(values_from(1, 3, 5), "($5, $6, $7)");
        assert!(records_sql(16).ends_with("$160)"));
        assert!(records_sql(1).ends_with("($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"));
    }

    #[test]
    fn a_quota_counts_what_is_held_and_what_the_batch_added() {
        let quotas = Quotas {
            default: Quota {
                packets: 2,
                bytes: 100,
            },
            agencies: HashMap::from([(
                "big".to_owned(),
                Quota {
                    packets: 10,
                    bytes: 1000,
                },
            )]),
        };
        let held = HashMap::from([(
            "a".to_owned(),
            Held {
                packets: 1,
                bytes: 40,
            },
        )]);
        let one = |b| Held {
            packets: 1,
            bytes: b,
        };
        let none = HashMap::new();
        assert!(quota_allows(&quotas, &held, (&none, &none), "a", one(60)).is_ok());
        assert!(quota_allows(&quotas, &held, (&none, &none), "a", one(61)).is_err());
        let added = HashMap::from([("a".to_owned(), one(1))]);
        match quota_allows(&quotas, &held, (&added, &none), "a", one(1)) {
            Err(JournalError::OverQuota { held, quota, .. }) => {
                assert_eq!((held.packets, quota.packets), (2, 2))
            }
            other => panic!("{other:?}"),
        }
        assert!(quota_allows(&quotas, &held, (&added, &none), "big", one(900)).is_ok());
        // An outcome earlier in the batch released a packet: its room is there for the next.
        let released = HashMap::from([("a".to_owned(), one(40))]);
        assert!(quota_allows(&quotas, &held, (&added, &released), "a", one(1)).is_ok());
    }
}
