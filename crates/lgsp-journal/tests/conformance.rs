//! One conformance suite, run against each backend: SQLite in a temporary file always, PostgreSQL when
//! `LGSP_TEST_POSTGRES_URL` is set (each test in a database of its own, dropped after).

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use lgsp_journal::chain::Broken;
use lgsp_journal::{
    Accepted, Admission, Delivery, Finding, Journal, JournalError, Outcome, Query, Quota, Request,
    Settings, Status,
};

/// A journal on one backend, and what to tidy after.
struct Store {
    journal: Journal,
    url: String,
    _dir: Option<tempfile::TempDir>,
    drop_db: Option<(String, String)>,
}

impl Store {
    async fn sqlite() -> Store {
        Store::sqlite_with(|_| {}).await
    }

    async fn sqlite_with(tune: impl FnOnce(&mut Settings)) -> Store {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("journal.db").display());
        Store {
            journal: open_with(&url, tune).await,
            url,
            _dir: Some(dir),
            drop_db: None,
        }
    }

    /// A fresh database on the test server, or `None` (with the reason printed) when none is configured.
    async fn postgres() -> Option<Store> {
        Store::postgres_with(|_| {}).await
    }

    async fn postgres_with(tune: impl FnOnce(&mut Settings)) -> Option<Store> {
        let Ok(base) = std::env::var("LGSP_TEST_POSTGRES_URL") else {
            eprintln!(
                "skipped: LGSP_TEST_POSTGRES_URL is not set (the PostgreSQL run of the suite)"
            );
            return None;
        };
        // Tests start together: the clock alone could name two databases alike.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let name = format!(
            "lgsp_journal_{}_{}_{}",
            std::process::id(),
            lgsp_journal::now_us(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        admin(&base, &format!("CREATE DATABASE {name}")).await;
        let url = with_database(&base, &name);
        Some(Store {
            journal: open_with(&url, tune).await,
            url,
            _dir: None,
            drop_db: Some((base, name)),
        })
    }

    async fn done(self) {
        let Store {
            journal, drop_db, ..
        } = self;
        drop(journal);
        if let Some((base, name)) = drop_db {
            admin(
                &base,
                &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            )
            .await;
        }
    }

    /// Runs raw SQL on the store, as an intruder with database access would.
    async fn raw(&self, sql: &str) {
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&self.url).await.expect("connect");
        sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        pool.close().await;
    }

    /// Another empty store of the same backend (a file beside this one, or a database named after this one), not
    /// opened; and what removes it.
    async fn sibling(
        &self,
        name: &str,
    ) -> (
        String,
        std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>,
    ) {
        match &self.drop_db {
            None => {
                let dir = self._dir.as_ref().expect("a SQLite store's directory");
                let url = format!(
                    "sqlite://{}",
                    dir.path().join(format!("{name}.db")).display()
                );
                (url, Box::pin(async {}))
            }
            Some((base, db)) => {
                let db = format!("{db}_{name}");
                admin(base, &format!("CREATE DATABASE {db}")).await;
                let url = with_database(base, &db);
                let base = base.clone();
                (
                    url,
                    Box::pin(async move {
                        admin(&base, &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).await;
                    }),
                )
            }
        }
    }

    /// Another process's journal on the same store: a replica with its own chain, or (same chain) a restart.
    async fn another(&self, chain: &str) -> Journal {
        open_with(&self.url, |s| s.chain = chain.into()).await
    }
}

fn with_database(base: &str, name: &str) -> String {
    match base.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{name}"),
        None => format!("{base}/{name}"),
    }
}

async fn admin(base: &str, sql: &str) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(base)
        .await
        .expect("PostgreSQL test server");
    // CREATE DATABASE copies template1 and fails while another session copies it too: tests start together.
    for attempt in 0.. {
        match sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&pool)
            .await
        {
            Ok(_) => return,
            Err(e)
                if attempt < 50 && e.to_string().contains("is being accessed by other users") =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{sql}: {e}"),
        }
    }
}

async fn open_with(url: &str, tune: impl FnOnce(&mut Settings)) -> Journal {
    let mut settings = Settings::new(url);
    settings.keep_bodies = Duration::ZERO;
    tune(&mut settings);
    Journal::open(settings).await.expect("journal opens")
}

fn sha(body: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(body))
}

/// A packet as a hop accepts it: its body kept (a queued or a direct delivery), leased for a minute.
fn packet(id: &str, agency: &str, key: Option<&str>, body: &[u8], delivery: Delivery) -> Accepted {
    Accepted {
        hop: "lgsp".into(),
        message_id: id.into(),
        agency: agency.into(),
        route: "HoSoCBCCVC".into(),
        message_type: Some("HoSoCBCCVC".into()),
        mode: "production".into(),
        idempotency_key: key.map(str::to_owned),
        body_sha256: sha(body),
        body_size: body.len() as u64,
        delivery,
        request: Some(Request {
            method: "POST".into(),
            path: "/lgsp/v1/HoSoCBCCVC".into(),
            headers: vec![("content-type".into(), "application/xml".into())],
            ..Request::default()
        }),
        body: Some(Bytes::copy_from_slice(body)),
        lease: Duration::from_secs(60),
        subject: None,
        approval: None,
        hop_signature: None,
    }
}

/// A packet whose delivery the journal does not hold (a broker's): no body, no lease.
fn consumed(id: &str, agency: &str) -> Accepted {
    Accepted {
        request: None,
        body: None,
        ..packet(id, agency, None, b"<c/>", Delivery::Direct)
    }
}

fn delivered(j: &Journal, id: &str) -> Outcome {
    Outcome {
        hop: "lgsp".into(),
        message_id: id.into(),
        status: Status::Delivered,
        upstream_status: Some(200),
        receipt: Some(format!("{{\"message_id\":\"{id}\"}}")),
        answer_type: Some("application/json".into()),
        detail: None,
        owner: Some(j.owner().to_owned()),
    }
}

fn verified_records(j: &Result<lgsp_journal::Verified, JournalError>) -> u64 {
    match j {
        Ok(v) => v.records,
        Err(e) => panic!("{e}"),
    }
}

const H29: &str = "000.00.00.H29";
const H26: &str = "000.00.00.H26";

async fn accepted_and_finished_messages_are_chained_and_read_back(s: &Store) {
    let j = &s.journal;
    assert_eq!(
        j.accept(packet("m1", H29, None, b"<a/>", Delivery::Direct))
            .await
            .unwrap(),
        Admission::New
    );
    j.finish(delivered(j, "m1")).await.unwrap();
    let m = j.message("lgsp", H29, "m1").await.unwrap().expect("m1");
    assert_eq!(
        (m.status, m.upstream_status, m.attempts),
        (Status::Delivered, Some(200), 1)
    );
    assert_eq!(m.receipt.as_deref(), Some("{\"message_id\":\"m1\"}"));
    assert_eq!(m.answer_type.as_deref(), Some("application/json"));
    assert_eq!(m.body_size, 4);
    // Another agency does not see it.
    assert_eq!(j.message("lgsp", H26, "m1").await.unwrap(), None);
    // An outcome for a message never accepted is refused alone.
    assert!(matches!(
        j.finish(delivered(j, "nope")).await,
        Err(JournalError::UnknownMessage(_))
    ));
    // An outcome nobody waits for is written all the same.
    j.accept(consumed("m2", H29)).await.unwrap();
    j.finish_later(Outcome {
        owner: None,
        ..delivered(j, "m2")
    });
    j.ping().await.unwrap();
    let m2 = j.message("lgsp", H29, "m2").await.unwrap().unwrap();
    assert_eq!((m2.status, m2.attempts), (Status::Delivered, 1));
    let v = j.verify().await.unwrap();
    assert_eq!((v.records, v.messages, v.chains.len()), (4, 2, 1));
    // Nothing undelivered is held now.
    assert!(j.held().is_empty(), "{:?}", j.held());
}

async fn idempotency_keys_replay_refuse_or_retry(s: &Store) {
    let j = &s.journal;
    let first = packet("k1", H29, Some("key-1"), b"<a/>", Delivery::Direct);
    assert_eq!(j.accept(first.clone()).await.unwrap(), Admission::New);
    // While in progress: the existing message, still in progress.
    let again = packet("k2", H29, Some("key-1"), b"<a/>", Delivery::Direct);
    match j.accept(again.clone()).await.unwrap() {
        Admission::Existing(m) => assert_eq!(
            (m.message_id.as_str(), m.status),
            ("k1", Status::InProgress)
        ),
        other => panic!("{other:?}"),
    }
    // A failed delivery: the same key and body try again under the first id.
    j.finish(Outcome {
        status: Status::Failed,
        upstream_status: Some(502),
        receipt: None,
        detail: Some("connect refused".into()),
        ..delivered(j, "k1")
    })
    .await
    .unwrap();
    match j.accept(again.clone()).await.unwrap() {
        Admission::Again(m) => assert_eq!(m.message_id, "k1"),
        other => panic!("{other:?}"),
    }
    j.finish(delivered(j, "k1")).await.unwrap();
    // Delivered: replayed, with its receipt.
    match j.accept(again.clone()).await.unwrap() {
        Admission::Existing(m) => {
            assert_eq!(
                (m.status, m.receipt.as_deref()),
                (Status::Delivered, Some("{\"message_id\":\"k1\"}"))
            );
        }
        other => panic!("{other:?}"),
    }
    // Another body under the key: the existing message says so by its SHA-256.
    let other_body = packet("k3", H29, Some("key-1"), b"<b/>", Delivery::Direct);
    match j.accept(other_body.clone()).await.unwrap() {
        Admission::Existing(m) => {
            assert_eq!(m.message_id, "k1");
            assert_ne!(m.body_sha256, other_body.body_sha256);
        }
        other => panic!("{other:?}"),
    }
    // The same key on another route: the existing message, which names its route.
    let elsewhere = Accepted {
        route: "BienDong".into(),
        ..packet("k5", H29, Some("key-1"), b"<a/>", Delivery::Queued)
    };
    match j.accept(elsewhere).await.unwrap() {
        Admission::Existing(m) => assert_eq!(m.route, "HoSoCBCCVC"),
        other => panic!("{other:?}"),
    }
    // The same key in trial mode is another message (a batch tried in trial, then sent officially).
    let trial = Accepted {
        mode: "trial".into(),
        ..packet("k6", H29, Some("key-1"), b"<a/>", Delivery::Direct)
    };
    assert_eq!(j.accept(trial).await.unwrap(), Admission::New);
    // Another agency's key of the same name is its own.
    assert_eq!(
        j.accept(packet("k4", H26, Some("key-1"), b"<a/>", Delivery::Direct))
            .await
            .unwrap(),
        Admission::New
    );
    // A peer resending the same message id (no key) finds it.
    assert!(matches!(
        j.accept(packet("k4", H26, None, b"<a/>", Delivery::Direct))
            .await
            .unwrap(),
        Admission::Existing(_)
    ));
    // The same message id for another agency shows nothing of the first agency's message.
    assert_eq!(
        j.accept(packet("k4", H29, None, b"<a/>", Delivery::Direct))
            .await
            .unwrap(),
        Admission::Taken
    );
    // accepted, failed, accepted again, delivered (k1); accepted (k6, k4): replays append nothing.
    assert_eq!(verified_records(&j.verify().await), 6);
}

async fn concurrent_appends_share_commits_and_keep_one_chain(s: &Store) {
    let j = &s.journal;
    let before = j.writer_stats();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let j = j.clone();
            tokio::spawn(async move {
                j.accept(packet(
                    &format!("c{i}"),
                    H29,
                    Some(&format!("c{i}")),
                    format!("x{}", i % 7).as_bytes(),
                    Delivery::Direct,
                ))
                .await
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), Admission::New);
    }
    // The writer's own counts (`lgsp_journal_*_total`): 200 records, in fewer commits than packets.
    let after = j.writer_stats();
    assert_eq!(after.records - before.records, 200, "{after:?}");
    assert!(after.jobs - before.jobs >= 200, "{after:?}");
    let commits = after.commits - before.commits;
    assert!(
        (1..200).contains(&commits),
        "{commits} commits for 200 packets"
    );
    assert!(after.busy > before.busy);
    assert_eq!(after.failed, before.failed);
    assert_eq!(verified_records(&j.verify().await), 200);
    let page = j
        .messages(&Query {
            hop: "lgsp".into(),
            agency: H29.into(),
            limit: 1000,
            ..Query::default()
        })
        .await
        .unwrap();
    assert_eq!(page.len(), 200);
    // Seven distinct bodies, each kept once; all 200 held undelivered.
    let v = j.verify().await.unwrap();
    assert_eq!((v.bodies, v.outbox), (7, 200));
    assert_eq!(j.held()[H29].packets, 200);
}

/// Outcomes sent at once share commits: each message gets its own outcome and record, one never accepted is
/// refused alone, and a second outcome of the same message (in the same batch or not) finds it ended.
async fn many_outcomes_at_once_each_land_on_their_message(s: &Store) {
    let j = &s.journal;
    for i in 0..60 {
        j.accept(consumed(&format!("o{i}"), H29)).await.unwrap();
    }
    let tasks: Vec<_> = (0..60)
        .flat_map(|i| {
            let mut outcomes = vec![(format!("o{i}"), i % 3 == 0)];
            if i % 10 == 0 {
                outcomes.push((format!("never-{i}"), false));
            }
            outcomes
        })
        .map(|(id, failed)| {
            let j = j.clone();
            tokio::spawn(async move {
                let mut o = Outcome {
                    owner: None,
                    ..delivered(&j, &id)
                };
                if failed {
                    o.status = Status::Failed;
                    o.upstream_status = Some(503);
                    o.receipt = None;
                    o.detail = Some(format!("{id} failed"));
                }
                (id, j.finish(o).await)
            })
        })
        .collect();
    let mut refused = 0;
    let mut written = 0;
    for t in tasks {
        let (id, r) = t.await.unwrap();
        match r {
            Ok(()) => written += 1,
            Err(JournalError::UnknownMessage(m)) if m == id && id.starts_with("never-") => {
                refused += 1
            }
            Err(e) => panic!("{id}: {e}"),
        }
    }
    assert_eq!((written, refused), (60, 6));
    // A second outcome of an ended message is refused: the first one stands.
    assert!(matches!(
        j.finish(Outcome {
            owner: None,
            ..delivered(j, "o0")
        })
        .await,
        Err(JournalError::UnknownMessage(_))
    ));
    for i in 0..60 {
        let m = j
            .message("lgsp", H29, &format!("o{i}"))
            .await
            .unwrap()
            .expect("message");
        if i % 3 == 0 {
            assert_eq!(m.status, Status::Failed, "o{i}");
            assert_eq!(m.detail.as_deref(), Some(format!("o{i} failed").as_str()));
            assert_eq!(m.receipt, None);
        } else {
            assert_eq!(
                (m.status, m.upstream_status),
                (Status::Delivered, Some(200)),
                "o{i}"
            );
        }
    }
    assert_eq!(verified_records(&j.verify().await), 120);
}

/// A message in progress that no process holds (a broker's packet whose consumer stopped) is settled as failed
/// once stale, with its outcome record, so a resend is tried again; one whose delivery is leased is not.
async fn orphans_left_in_progress_are_settled_as_failed(s: &Store) {
    let j = &s.journal;
    j.accept(Accepted {
        idempotency_key: Some("k-left".into()),
        ..consumed("left", H29)
    })
    .await
    .unwrap();
    j.accept(packet("leased", H29, None, b"<a/>", Delivery::Direct))
        .await
        .unwrap();
    let hour_ago = lgsp_journal::now_us() - 3_600_000_000;
    assert!(j.settle_orphans(hour_ago).await.unwrap().is_empty());
    let marked = j.settle_orphans(lgsp_journal::now_us() + 1).await.unwrap();
    assert_eq!(marked, ["left"]);
    let m = j.message("lgsp", H29, "left").await.unwrap().expect("left");
    assert_eq!(
        (m.status, m.detail.as_deref()),
        (Status::Failed, Some(lgsp_journal::ORPHAN_DETAIL))
    );
    assert_eq!(
        j.message("lgsp", H29, "leased")
            .await
            .unwrap()
            .unwrap()
            .status,
        Status::InProgress
    );
    let again = j
        .accept(Accepted {
            idempotency_key: Some("k-left".into()),
            ..consumed("left-2", H29)
        })
        .await
        .unwrap();
    assert!(
        matches!(&again, Admission::Again(m) if m.message_id == "left"),
        "{again:?}"
    );
    assert_eq!(verified_records(&j.verify().await), 4);
}

async fn one_key_sent_many_times_at_once_is_one_message(s: &Store) {
    let j = &s.journal;
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let j = j.clone();
            tokio::spawn(async move {
                j.accept(packet(
                    &format!("d{i}"),
                    H29,
                    Some("same-key"),
                    b"x",
                    Delivery::Direct,
                ))
                .await
            })
        })
        .collect();
    let mut new = 0;
    let mut ids = std::collections::BTreeSet::new();
    for t in tasks {
        match t.await.unwrap().unwrap() {
            Admission::New => new += 1,
            Admission::Existing(m) => {
                ids.insert(m.message_id);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(new, 1);
    assert!(ids.len() <= 1, "{ids:?}");
    assert_eq!(verified_records(&j.verify().await), 1);
}

fn broken(r: Result<lgsp_journal::Verified, JournalError>) -> Finding {
    match r {
        Err(JournalError::Broken(f)) => f,
        other => panic!("expected a finding, got {other:?}"),
    }
}

async fn records_removed_from_the_end_are_named_by_verify(s: &Store) {
    let j = &s.journal;
    for i in 0..3 {
        j.accept(consumed(&format!("e{i}"), H29)).await.unwrap();
    }
    s.raw("DELETE FROM journal_records WHERE seq = 3").await;
    assert_eq!(
        broken(j.verify().await),
        Finding::Chain {
            chain: "main".into(),
            broken: Broken::Truncated { last: 2, head: 3 }
        }
    );
}

/// A head moved back leaves records past it: named as such, not as records removed.
async fn records_past_the_head_are_named_by_verify(s: &Store) {
    let j = &s.journal;
    for i in 0..3 {
        j.accept(consumed(&format!("p{i}"), H29)).await.unwrap();
    }
    s.raw(
        "UPDATE journal_chains SET seq = 2, hash = (SELECT hash FROM journal_records WHERE chain = 'main' AND seq = 2)",
    )
    .await;
    assert_eq!(
        broken(j.verify().await),
        Finding::Chain {
            chain: "main".into(),
            broken: Broken::Beyond { last: 3, head: 2 }
        }
    );
}

/// `journal verify` on a live journal reads one snapshot: records, heads, messages and the outbox written while it
/// walks never look like a broken chain or a row out of step.
async fn verify_while_packets_arrive_sees_one_moment(s: &Store) {
    let j = &s.journal;
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let j = j.clone();
            tokio::spawn(async move {
                for i in 0..150 {
                    let id = format!("v{w}-{i}");
                    j.accept(packet(&id, H29, None, b"<v/>", Delivery::Direct))
                        .await
                        .unwrap();
                    if i % 2 == 0 {
                        j.finish(delivered(&j, &id)).await.unwrap();
                    }
                }
            })
        })
        .collect();
    let mut walks = 0u32;
    while writers.iter().any(|w| !w.is_finished()) {
        if let Err(e) = j.verify().await {
            panic!("verify during writes, walk {walks}: {e}");
        }
        walks += 1;
    }
    for w in writers {
        w.await.unwrap();
    }
    assert!(walks > 0, "no walk ran while packets arrived");
    j.flush().await.unwrap();
    assert_eq!(verified_records(&j.verify().await), 600 + 300);
}

async fn a_changed_record_is_named_by_verify(s: &Store) {
    let j = &s.journal;
    for i in 0..5 {
        j.accept(consumed(&format!("t{i}"), H29)).await.unwrap();
    }
    assert_eq!(verified_records(&j.verify().await), 5);
    s.raw("UPDATE journal_records SET content = replace(content, '000.00.00.H29', '000.00.00.H26') WHERE seq = 3")
        .await;
    assert_eq!(
        broken(j.verify().await),
        Finding::Chain {
            chain: "main".into(),
            broken: Broken::Content { seq: 3 }
        }
    );
}

/// Every column derived from the chain, changed by hand, is named by verify; `rebuild-index` writes the derived
/// tables back as the chain says.
async fn every_derived_value_changed_by_hand_is_named_by_verify(s: &Store) {
    let j = &s.journal;
    j.accept(Accepted {
        subject: Some("001090012341".into()),
        ..packet("d1", H29, Some("k1"), b"<a/>", Delivery::Direct)
    })
    .await
    .unwrap();
    j.finish(delivered(j, "d1")).await.unwrap();
    j.accept(packet("d2", H29, Some("k2"), b"<b/>", Delivery::Queued))
        .await
        .unwrap();
    j.accept(packet("d3", H26, Some("k3"), b"<c/>", Delivery::Direct))
        .await
        .unwrap();
    j.verify().await.unwrap();
    let cases: &[(&str, &str, &str)] = &[
        (
            "UPDATE messages SET agency = '000.00.00.H26' WHERE message_id = 'd1'",
            "messages",
            "agency",
        ),
        (
            "UPDATE messages SET status = 'rejected' WHERE message_id = 'd1'",
            "messages",
            "status",
        ),
        (
            "UPDATE messages SET receipt = '{}' WHERE message_id = 'd1'",
            "messages",
            "receipt",
        ),
        (
            "UPDATE messages SET route = 'BienDong' WHERE message_id = 'd2'",
            "messages",
            "route",
        ),
        (
            "UPDATE messages SET mode = 'trial' WHERE message_id = 'd2'",
            "messages",
            "mode",
        ),
        (
            "UPDATE messages SET subject = '001090099999' WHERE message_id = 'd1'",
            "messages",
            "subject",
        ),
        (
            "UPDATE messages SET accepted_us = 0 WHERE message_id = 'd3'",
            "messages",
            "accepted_us",
        ),
        (
            "UPDATE messages SET request = '{\"method\":\"POST\",\"path\":\"/elsewhere\",\"headers\":[],\"via\":null,\"hops\":[],\"traceparent\":null}' WHERE message_id = 'd2'",
            "messages",
            "request",
        ),
        (
            "UPDATE journal_records SET agency = '000.00.00.H26' WHERE message_id = 'd1' AND kind = 'accepted'",
            "journal_records",
            "agency",
        ),
        (
            "UPDATE journal_records SET kind = 'outcome' WHERE message_id = 'd3'",
            "journal_records",
            "kind",
        ),
        (
            "UPDATE journal_records SET message_id = 'd9' WHERE message_id = 'd3'",
            "journal_records",
            "message_id",
        ),
        (
            "UPDATE outbox SET agency = '000.00.00.H26' WHERE message_id = 'd2'",
            "outbox",
            "agency",
        ),
    ];
    for (sql, table, column) in cases {
        s.raw(sql).await;
        match broken(j.verify().await) {
            Finding::Derived {
                table: t,
                column: c,
                ..
            } => assert_eq!((t, c.as_str()), (*table, *column), "{sql}"),
            other => panic!("{sql}: {other}"),
        }
        let rebuilt = j.rebuild_index().await.unwrap();
        assert!(rebuilt.records + rebuilt.messages > 0, "{sql}: {rebuilt:?}");
        let v = j.verify().await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert_eq!(v.messages, 3, "{sql}");
    }
    // A row removed, or one added, is named too.
    for (sql, table) in [
        ("DELETE FROM messages WHERE message_id = 'd3'", "messages"),
        ("DELETE FROM outbox WHERE message_id = 'd2'", "outbox"),
        (
            "INSERT INTO messages (hop, message_id, agency, route, mode, body_sha256, body_size, delivery, status, accepted_us, updated_us, attempts) VALUES ('lgsp', 'forged', '000.00.00.H29', 'HoSoCBCCVC', 'production', 'x', 1, 'direct', 'delivered', 1, 1, 1)",
            "messages",
        ),
    ] {
        s.raw(sql).await;
        match broken(j.verify().await) {
            Finding::Row { table: t, .. } => assert_eq!(t, table, "{sql}"),
            other => panic!("{sql}: {other}"),
        }
        j.rebuild_index().await.unwrap();
        j.verify().await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    // The queued packet is still owed after all that: its outbox row was written again, due now.
    let claimed = j.claim("lgsp", Duration::from_secs(5), 10).await.unwrap();
    let ids: Vec<&str> = claimed
        .iter()
        .map(|c| c.message.message_id.as_str())
        .collect();
    assert!(ids.contains(&"d2"), "{ids:?}");
    // A kept body changed by hand.
    s.raw(&format!(
        "UPDATE journal_bodies SET body = {} WHERE sha256 = '{}'",
        match j.dialect() {
            lgsp_journal::Dialect::Sqlite => "X'00'",
            lgsp_journal::Dialect::Postgres => "'\\x00'::bytea",
        },
        sha(b"<b/>")
    ))
    .await;
    match broken(j.verify().await) {
        Finding::Derived { table, .. } => assert_eq!(table, "journal_bodies"),
        other => panic!("{other}"),
    }
}

async fn the_outbox_leases_retries_and_delivers(s: &Store) {
    let j = &s.journal;
    // The workers of this process hear of a queued packet once it is committed.
    let woken = j.queued().notified();
    tokio::pin!(woken);
    woken.as_mut().enable();
    j.accept(packet("q1", H29, Some("q1"), b"<q/>", Delivery::Queued))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), woken)
        .await
        .expect("told of the queued packet");
    j.accept(packet("q2", H29, Some("q2"), b"<q2/>", Delivery::Queued))
        .await
        .unwrap();
    let (depth, _) = j.outbox("lgsp").await.unwrap();
    assert_eq!(depth, 2);
    let b = s.another("replica-b").await;
    let lease = Duration::from_secs(2);
    let claimed = j.claim("lgsp", lease, 10).await.unwrap();
    assert_eq!(claimed.len(), 2);
    let q1 = claimed
        .iter()
        .find(|c| c.message.message_id == "q1")
        .unwrap();
    assert_eq!((q1.body.as_deref(), q1.attempts), (Some(&b"<q/>"[..]), 1));
    assert_eq!(q1.message.request.as_ref().unwrap().method, "POST");
    // Leased: nobody else gets them, not another replica.
    assert!(b.claim("lgsp", lease, 10).await.unwrap().is_empty());
    // q1 must wait (a 503 upstream); q2's process dies: its lease runs out and another takes it.
    j.retry_at(
        "lgsp",
        "q1",
        lgsp_journal::now_us() + 60_000_000,
        "upstream 503",
    )
    .await
    .unwrap();
    let m = j.message("lgsp", H29, "q1").await.unwrap().unwrap();
    assert_eq!(
        (m.status, m.detail.as_deref(), m.attempts),
        (Status::Queued, Some("upstream 503"), 1)
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let taken = loop {
        let taken = b.claim("lgsp", lease, 10).await.unwrap();
        if !taken.is_empty() || std::time::Instant::now() > deadline {
            break taken;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(taken.len(), 1);
    assert_eq!(
        (taken[0].message.message_id.as_str(), taken[0].attempts),
        ("q2", 2)
    );
    // The first process, back too late, cannot overwrite the outcome of the one that took the lease over.
    assert!(matches!(
        j.finish(delivered(j, "q2")).await,
        Err(JournalError::UnknownMessage(_))
    ));
    b.finish(delivered(&b, "q2")).await.unwrap();
    let (depth, age) = j.outbox("lgsp").await.unwrap();
    assert_eq!(depth, 1);
    assert!(age >= 0.0);
    let q2 = j.message("lgsp", H29, "q2").await.unwrap().unwrap();
    assert_eq!((q2.status, q2.attempts), (Status::Delivered, 2));
    // Two chains now, each whole.
    let v = j.verify().await.unwrap();
    assert_eq!(v.chains.len(), 2, "{v:?}");
}

/// A queued packet is handed to this process's workers with its bytes as it commits, leased to it: no claim
/// finds it meanwhile, and its outcome ends the lease.
async fn queued_packets_are_handed_over_with_their_bytes(s: &Store) {
    let j = &s.journal;
    let mut handoff = j.handoff("lgsp");
    j.accept(packet("h1", H29, Some("h1"), b"<h/>", Delivery::Queued))
        .await
        .unwrap();
    let c = tokio::time::timeout(Duration::from_secs(5), handoff.recv())
        .await
        .expect("handed over")
        .expect("a packet");
    assert_eq!(
        (c.message.message_id.as_str(), c.body.as_deref(), c.attempts),
        ("h1", Some(&b"<h/>"[..]), 1)
    );
    assert!(
        j.claim("lgsp", Duration::from_secs(5), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(j.held()[H29].packets, 1);
    j.finish(delivered(j, "h1")).await.unwrap();
    assert!(j.held().is_empty());
    // Without a receiver, packets wait for a claim.
    drop(handoff);
    j.accept(packet("h2", H29, Some("h2"), b"<h2/>", Delivery::Queued))
        .await
        .unwrap();
    assert_eq!(
        j.claim("lgsp", Duration::from_secs(5), 10)
            .await
            .unwrap()
            .len(),
        1
    );
}

/// A direct delivery left under way by a process that stopped is taken up at once by the next process of its
/// chain (a restart), with its body and request, and by another replica once its lease ends.
async fn deliveries_left_under_way_are_taken_up_again(s: &Store) {
    let first = s.another("node-1").await;
    let other = s.another("node-2").await;
    first
        .accept(packet("u1", H29, Some("u1"), b"<u/>", Delivery::Direct))
        .await
        .unwrap();
    first
        .accept(Accepted {
            lease: Duration::from_secs(2),
            ..packet("u2", H29, Some("u2"), b"<u2/>", Delivery::Direct)
        })
        .await
        .unwrap();
    let stale = first.owner().to_owned();
    // A replica of another chain waits for the lease; u2's is short.
    assert!(
        other
            .claim("lgsp", Duration::from_secs(5), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let taken = loop {
        let taken = other
            .claim("lgsp", Duration::from_secs(5), 10)
            .await
            .unwrap();
        if !taken.is_empty() || std::time::Instant::now() > deadline {
            break taken;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ids: Vec<&str> = taken
        .iter()
        .map(|c| c.message.message_id.as_str())
        .collect();
    assert_eq!(ids, ["u2"]);
    // The process stops (killed); the next one of its chain takes u1 up at once.
    drop(first);
    let restarted = s.another("node-1").await;
    let taken = restarted
        .claim("lgsp", Duration::from_secs(5), 10)
        .await
        .unwrap();
    assert_eq!(taken.len(), 1);
    let u1 = &taken[0];
    assert_eq!(
        (
            u1.message.message_id.as_str(),
            u1.message.delivery,
            u1.body.as_deref(),
            u1.attempts
        ),
        ("u1", Delivery::Direct, Some(&b"<u/>"[..]), 2)
    );
    assert_eq!(
        u1.message.request.as_ref().map(|r| r.path.as_str()),
        Some("/lgsp/v1/HoSoCBCCVC")
    );
    // The stopped process's outcome no longer counts.
    assert!(matches!(
        restarted
            .finish(Outcome {
                owner: Some(stale),
                ..delivered(&restarted, "u1")
            })
            .await,
        Err(JournalError::UnknownMessage(_))
    ));
    restarted.finish(delivered(&restarted, "u1")).await.unwrap();
    other.finish(delivered(&other, "u2")).await.unwrap();
    let v = s.journal.verify().await.unwrap();
    assert_eq!(v.messages, 2);
}

/// What one agency holds undelivered is bounded; others are untouched; a repeat of a held packet is still
/// answered; delivering frees room.
async fn an_agency_over_its_quota_is_refused_and_no_other_is(s: &Store) {
    let j = s.another("quota").await;
    drop(j);
    let url = s.url.clone();
    let j = open_with(&url, |st| {
        st.chain = "quota".into();
        st.quotas.default = Quota {
            packets: 2,
            bytes: 100,
        };
        st.quotas.agencies = HashMap::from([(
            H26.to_owned(),
            Quota {
                packets: 1,
                bytes: 10,
            },
        )]);
    })
    .await;
    for i in 0..2 {
        j.accept(packet(
            &format!("a{i}"),
            H29,
            Some(&format!("a{i}")),
            b"<a/>",
            Delivery::Queued,
        ))
        .await
        .unwrap();
    }
    match j
        .accept(packet("a2", H29, Some("a2"), b"<a/>", Delivery::Queued))
        .await
    {
        Err(JournalError::OverQuota {
            agency,
            held,
            quota,
        }) => {
            assert_eq!((agency.as_str(), held.packets, quota.packets), (H29, 2, 2))
        }
        other => panic!("{other:?}"),
    }
    // A resend of a packet it holds is answered from the journal, not refused.
    assert!(matches!(
        j.accept(packet(
            "a0-again",
            H29,
            Some("a0"),
            b"<a/>",
            Delivery::Queued
        ))
        .await
        .unwrap(),
        Admission::Existing(_)
    ));
    // Its own quota for H26: 10 bytes.
    assert!(matches!(
        j.accept(packet(
            "b0",
            H26,
            None,
            b"<too many bytes/>",
            Delivery::Queued
        ))
        .await,
        Err(JournalError::OverQuota { .. })
    ));
    assert_eq!(
        j.accept(packet("b1", H26, None, b"<b/>", Delivery::Queued))
            .await
            .unwrap(),
        Admission::New
    );
    // Nothing of a refused packet stays.
    assert_eq!(j.message("lgsp", H29, "a2").await.unwrap(), None);
    let claimed = j.claim("lgsp", Duration::from_secs(5), 10).await.unwrap();
    let a0 = claimed
        .iter()
        .find(|c| c.message.message_id == "a0")
        .unwrap();
    assert_eq!(a0.message.agency, H29);
    j.finish(delivered(&j, "a0")).await.unwrap();
    assert_eq!(
        j.accept(packet("a2", H29, Some("a2"), b"<a/>", Delivery::Queued))
            .await
            .unwrap(),
        Admission::New
    );
    assert_eq!(j.held()[H29].packets, 2);
    j.verify().await.unwrap();
}

/// An outcome written in the same batch as the next acceptance frees its room for it: an agency whose quota is
/// one packet sends its next direct packet as soon as the first is delivered (the outcome handed over unwaited, so
/// the writer holds it for the next batch, the one of that acceptance).
async fn an_outcome_frees_quota_for_an_acceptance_in_its_batch(s: &Store) {
    let j = open_with(&s.url, |st| {
        st.chain = "quota-batch".into();
        st.quotas.default = Quota {
            packets: 1,
            bytes: 1000,
        };
    })
    .await;
    for i in 0..20 {
        let id = format!("one-{i}");
        let admitted = j
            .accept(packet(&id, H29, None, b"<a/>", Delivery::Direct))
            .await;
        assert_eq!(admitted.unwrap(), Admission::New, "packet {i}");
        j.finish_later(delivered(&j, &id));
    }
    j.flush().await.unwrap();
    assert_eq!(j.held().get(H29).map_or(0, |h| h.packets), 0);
    j.verify().await.unwrap();
}

/// Below `min_free_disk`, new packets are refused (SQLite: a PostgreSQL server minds its own disk) while outcomes
/// of what was accepted are still written.
async fn too_little_disk_refuses_new_packets_only(s: &Store) {
    s.journal.accept(consumed("before", H29)).await.unwrap();
    let j = open_with(&s.url, |st| {
        st.chain = "disk".into();
        st.min_free_disk = u64::MAX;
    })
    .await;
    let r = j.accept(consumed("full", H29)).await;
    match j.dialect() {
        lgsp_journal::Dialect::Sqlite => {
            assert!(
                matches!(r, Err(JournalError::DiskFull { min: u64::MAX, .. })),
                "{r:?}"
            );
            assert!(j.is_up(), "a full disk is not an unavailable journal");
        }
        lgsp_journal::Dialect::Postgres => assert_eq!(r.unwrap(), Admission::New),
    }
    j.finish(Outcome {
        owner: None,
        ..delivered(&j, "before")
    })
    .await
    .unwrap();
}

async fn bodies_are_kept_once_and_swept_when_no_delivery_needs_them(s: &Store) {
    let j = &s.journal;
    j.accept(packet("b1", H29, Some("b1"), b"<same/>", Delivery::Direct))
        .await
        .unwrap();
    j.accept(packet("b2", H29, Some("b2"), b"<same/>", Delivery::Queued))
        .await
        .unwrap();
    assert_eq!(j.verify().await.unwrap().bodies, 1);
    j.finish(delivered(j, "b1")).await.unwrap();
    // keep_bodies is 0 here, but b2 still needs the body.
    assert_eq!(j.sweep_bodies().await.unwrap(), 0);
    let c = j.claim("lgsp", Duration::from_secs(5), 10).await.unwrap();
    assert_eq!(c[0].body.as_deref(), Some(&b"<same/>"[..]));
    j.finish(delivered(j, "b2")).await.unwrap();
    assert_eq!(j.sweep_bodies().await.unwrap(), 1);
    assert_eq!(j.verify().await.unwrap().bodies, 0);
}

async fn listings_page_and_the_report_counts(s: &Store) {
    let j = &s.journal;
    for i in 0..7 {
        j.accept(consumed(&format!("l{i}"), H29)).await.unwrap();
    }
    j.accept(consumed("other", H26)).await.unwrap();
    let no_lease = |id: &str| Outcome {
        owner: None,
        ..delivered(j, id)
    };
    j.finish(no_lease("l0")).await.unwrap();
    j.finish(Outcome {
        status: Status::Rejected,
        upstream_status: Some(422),
        ..no_lease("l1")
    })
    .await
    .unwrap();
    let mut q = Query {
        hop: "lgsp".into(),
        agency: H29.into(),
        limit: 3,
        ..Query::default()
    };
    let mut seen = Vec::new();
    loop {
        let page = j.messages(&q).await.unwrap();
        let Some(last) = page.last() else { break };
        q.after = Some((last.accepted_us, last.message_id.clone()));
        seen.extend(page.into_iter().map(|m| m.message_id));
    }
    assert_eq!(seen.len(), 7, "{seen:?}");
    assert!(!seen.contains(&"other".to_owned()));
    let only_delivered = j
        .messages(&Query {
            status: Some(Status::Delivered),
            limit: 100,
            after: None,
            ..q.clone()
        })
        .await
        .unwrap();
    assert_eq!(only_delivered.len(), 1);
    let report = j.report(0, i64::MAX).await.unwrap();
    let h29 = report.iter().find(|r| r.agency == H29).unwrap();
    assert_eq!(
        (h29.received, h29.delivered, h29.rejected, h29.pending),
        (7, 1, 1, 5)
    );
    let mut out = Vec::new();
    let n = j.export(0, i64::MAX, &mut out).await.unwrap();
    assert_eq!(n, 10);
    let first: serde_json::Value =
        serde_json::from_str(std::str::from_utf8(&out).unwrap().lines().next().unwrap()).unwrap();
    assert_eq!(first["record"]["kind"], "accepted");
    assert_eq!(
        (first["seq"].as_i64(), first["chain"].as_str()),
        (Some(1), Some("main"))
    );
}

async fn profiles_by_subject_and_the_approval_report(s: &Store) {
    let j = &s.journal;
    let profile = |id: &str, cccd: &str, body: &[u8]| Accepted {
        subject: Some(cccd.into()),
        ..packet(id, H29, None, body, Delivery::Direct)
    };
    j.accept(profile("p1", "001090012341", b"v1"))
        .await
        .unwrap();
    j.accept(profile("p2", "001090012342", b"v1"))
        .await
        .unwrap();
    j.accept(profile("p2b", "001090012342", b"v2"))
        .await
        .unwrap();
    j.accept(profile("p3", "001090012343", b"v1"))
        .await
        .unwrap();
    j.finish(Outcome {
        status: Status::Rejected,
        upstream_status: Some(422),
        ..delivered(j, "p3")
    })
    .await
    .unwrap();
    let subjects = ["001090012342".to_owned(), "001090012343".to_owned()];
    let found = j.profiles("lgsp", H29, &subjects, i64::MAX).await.unwrap();
    let seen: Vec<(&str, &str)> = found
        .iter()
        .map(|p| (p.message_id.as_str(), p.subject.as_str()))
        .collect();
    // Oldest first; the rejected one did not arrive; another agency's never shows.
    assert_eq!(seen, [("p2", "001090012342"), ("p2b", "001090012342")]);
    assert!(
        j.profiles("lgsp", H26, &subjects, i64::MAX)
            .await
            .unwrap()
            .is_empty()
    );
    let approval = serde_json::json!({
        "month": "2026-11",
        "profiles": [
            {"SoCCCD": "001090012341", "BamSHA256": sha(b"v1")},
            {"SoCCCD": "001090012342", "BamSHA256": sha(b"v1")},
        ],
    });
    j.accept(Accepted {
        route: "PheDuyetDuLieu".into(),
        message_type: Some("PheDuyetDuLieu".into()),
        approval: Some(approval.to_string()),
        ..packet("a1", H29, None, b"approval", Delivery::Direct)
    })
    .await
    .unwrap();
    let report = j.approval_report("2026-11", 0, i64::MAX).await.unwrap();
    assert_eq!(report.len(), 1, "{report:?}");
    assert_eq!(report[0].approvals.len(), 1);
    assert_eq!(report[0].approvals[0].approval["month"], "2026-11");
    // p1 is approved; p2's approved version was replaced by p2b, which no approval lists.
    let unapproved: Vec<&str> = report[0]
        .unapproved
        .iter()
        .map(|p| p.message_id.as_str())
        .collect();
    assert_eq!(unapproved, ["p2b"]);
    assert!(
        j.approval_report("2026-10", 0, i64::MAX).await.unwrap()[0]
            .approvals
            .is_empty()
    );
    // The chain keeps whose profile each was and what the approval approved.
    let mut out = Vec::new();
    j.export(0, i64::MAX, &mut out).await.unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("\"subject\":\"001090012341\""), "{text}");
    assert!(text.contains("\"approval\":{"), "{text}");
    j.verify().await.unwrap();
    // An approval moved to another agency by hand is named.
    s.raw("UPDATE messages SET approval = '{\"month\":\"2026-12\"}' WHERE message_id = 'a1'")
        .await;
    match broken(j.verify().await) {
        Finding::Derived { column, .. } => assert_eq!(column, "approval"),
        other => panic!("{other}"),
    }
}

async fn records_past_the_retention_are_pruned_and_the_rest_still_verifies(s: &Store) {
    let j = open_with(&s.url, |st| {
        st.chain = "short".into();
        st.retention = Duration::from_millis(400);
    })
    .await;
    j.accept(packet("p0", H29, Some("p0"), b"x", Delivery::Direct))
        .await
        .unwrap();
    j.finish(delivered(&j, "p0")).await.unwrap();
    j.accept(packet(
        "old-queued",
        H29,
        Some("oq"),
        b"q",
        Delivery::Queued,
    ))
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    j.accept(packet("p1", H29, Some("p1"), b"y", Delivery::Direct))
        .await
        .unwrap();
    // p0's two records go, with p0; the queued packet's acceptance stays (it is still owed), and so does
    // everything after it.
    let (records, messages) = j.prune().await.unwrap();
    assert_eq!((records, messages), (2, 1));
    assert_eq!(verified_records(&j.verify().await), 2);
    assert_eq!(j.message("lgsp", H29, "p0").await.unwrap(), None);
    assert_eq!(j.prune().await.unwrap(), (0, 0));
    // Removing the oldest kept record by hand is not pruning: the head knows where the chain starts.
    s.raw("DELETE FROM journal_records WHERE chain = 'short' AND seq = 3")
        .await;
    match broken(j.verify().await) {
        Finding::Chain { chain, .. } => assert_eq!(chain, "short"),
        other => panic!("{other}"),
    }
    // A packet still waiting for delivery is never pruned, nor its body.
    let q = j
        .message("lgsp", H29, "old-queued")
        .await
        .unwrap()
        .expect("kept");
    assert_eq!(q.status, Status::Queued);
    let claimed = j.claim("lgsp", Duration::from_secs(5), 10).await.unwrap();
    assert_eq!(claimed[0].body.as_deref(), Some(&b"q"[..]));
}

/// Replicas write chains of their own, and each links the others' heads now and then: a chain rewritten whole
/// (every hash recomputed, its head moved) still verifies alone, but the anchor in the other chain names it.
async fn chains_of_replicas_anchor_each_other(s: &Store) {
    let url = s.url.clone();
    let a = open_with(&url, |st| {
        st.chain = "a".into();
        st.anchor_every = Duration::ZERO;
    })
    .await;
    let b = open_with(&url, |st| {
        st.chain = "b".into();
        st.anchor_every = Duration::ZERO;
    })
    .await;
    b.accept(consumed("from-b", H29)).await.unwrap();
    a.accept(consumed("from-a", H29)).await.unwrap();
    b.accept(consumed("from-b2", H29)).await.unwrap();
    let v = a.verify().await.unwrap();
    assert!(v.anchors >= 1, "{v:?}");
    // Rewrite chain b from its first record, as an intruder with the hash function would.
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    use sqlx::Row;
    let rows =
        sqlx::query("SELECT seq, content FROM journal_records WHERE chain = 'b' ORDER BY seq")
            .fetch_all(&pool)
            .await
            .unwrap();
    let mut prev = lgsp_journal::chain::GENESIS.to_owned();
    let mut head = (0i64, prev.clone());
    for r in &rows {
        let seq: i64 = r.try_get("seq").unwrap();
        let content: String = r.try_get("content").unwrap();
        let content = content.replace("from-b\"", "from-x\"");
        let hash = lgsp_journal::chain::hash(seq, &prev, &content);
        sqlx::query("UPDATE journal_records SET content = $1, prev_hash = $2, hash = $3, message_id = replace(message_id, 'from-b', 'from-x') WHERE chain = 'b' AND seq = $4 AND message_id <> 'from-b2'")
            .bind(content.clone())
            .bind(prev.clone())
            .bind(hash.clone())
            .bind(seq)
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("UPDATE journal_records SET content = $1, prev_hash = $2, hash = $3 WHERE chain = 'b' AND seq = $4")
            .bind(content)
            .bind(prev.clone())
            .bind(hash.clone())
            .bind(seq)
            .execute(&pool)
            .await
            .unwrap();
        head = (seq, hash.clone());
        prev = hash;
    }
    sqlx::query("UPDATE journal_chains SET seq = $1, hash = $2 WHERE chain = 'b'")
        .bind(head.0)
        .bind(head.1)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE messages SET message_id = 'from-x' WHERE message_id = 'from-b'")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    match broken(a.verify().await) {
        Finding::Anchor { chain, why, .. } => {
            assert_eq!(chain, "a");
            assert!(why.contains("chain b"), "{why}");
        }
        other => panic!("{other}"),
    }
}

/// A journal written by the version before chains and outbox rows (v4) is migrated in place: its chain verifies
/// as chain `main`, a queued packet is still owed with its body, a key used before is still known.
async fn a_journal_of_the_last_version_migrates_and_verifies(s: &Store) {
    use sqlx::Row;
    let (url, tidy) = s.sibling("v4").await;
    lgsp_journal::migrate_through(&url, 4).await.unwrap();
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    // Records as version 4 wrote them (keys in alphabetical order, no chain, outcome without agency).
    let accepted = |id: &str, at: i64, delivery: &str, key: &str, body: &[u8]| {
        serde_json::json!({
            "agency": H29, "at_us": at, "delivery": delivery, "hop": "lgsp", "idempotency_key": key,
            "kind": "accepted", "message_id": id, "message_type": "HoSoCBCCVC", "mode": "production",
            "route": "HoSoCBCCVC", "sha256": sha(body), "size": body.len(),
        })
        .to_string()
    };
    let outcome = serde_json::json!({
        "at_us": 1001, "detail": null, "hop": "lgsp", "kind": "outcome", "message_id": "d1",
        "receipt": "{}", "status": "delivered", "upstream_status": 200,
    })
    .to_string();
    let records = [
        (
            1000,
            "accepted",
            "d1",
            accepted("d1", 1000, "direct", "kd", b"<d/>"),
        ),
        (1001, "outcome", "d1", outcome),
        (
            1002,
            "accepted",
            "q1",
            accepted("q1", 1002, "queued", "kq", b"<q1/>"),
        ),
        (
            1003,
            "accepted",
            "x1",
            accepted("x1", 1003, "direct", "kx", b"<x/>"),
        ),
    ];
    let mut prev = lgsp_journal::chain::GENESIS.to_owned();
    for (i, (at, kind, id, content)) in records.iter().enumerate() {
        let seq = i as i64 + 1;
        let hash = lgsp_journal::chain::hash(seq, &prev, content);
        sqlx::query("INSERT INTO journal_records (seq, at_us, kind, hop, message_id, agency, content, prev_hash, hash) VALUES ($1, $2, $3, 'lgsp', $4, $5, $6, $7, $8)")
            .bind(seq).bind(*at).bind(*kind).bind(*id).bind(H29).bind(content.clone()).bind(prev.clone()).bind(hash.clone())
            .execute(&pool).await.unwrap();
        prev = hash;
    }
    sqlx::query("UPDATE journal_head SET seq = 4, hash = $1 WHERE id = 1")
        .bind(prev)
        .execute(&pool)
        .await
        .unwrap();
    let request = r#"{"method":"POST","path":"/lgsp/v1/HoSoCBCCVC","headers":[],"via":null,"hops":["lgsp"],"traceparent":null}"#;
    for (id, key, body, delivery, status, accepted_us, updated_us, attempts, kept) in [
        (
            "d1",
            "kd",
            &b"<d/>"[..],
            "direct",
            "delivered",
            1000,
            1001,
            0,
            false,
        ),
        (
            "q1",
            "kq",
            &b"<q1/>"[..],
            "queued",
            "queued",
            1002,
            5000,
            2,
            true,
        ),
        (
            "x1",
            "kx",
            &b"<x/>"[..],
            "direct",
            "in_progress",
            1003,
            1003,
            0,
            false,
        ),
    ] {
        sqlx::query("INSERT INTO messages (hop, message_id, agency, route, message_type, mode, idempotency_key, body_sha256, body_size, delivery, request, body, status, upstream_status, receipt, detail, accepted_us, updated_us, attempts, next_attempt_us) VALUES ('lgsp', $1, $2, 'HoSoCBCCVC', 'HoSoCBCCVC', 'production', $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)")
            .bind(id).bind(H29).bind(key).bind(sha(body)).bind(body.len() as i64).bind(delivery)
            .bind(kept.then_some(request)).bind(kept.then(|| body.to_vec())).bind(status)
            .bind((status == "delivered").then_some(200i64)).bind((status == "delivered").then_some("{}"))
            .bind((status == "queued").then_some("attempt 2: upstream answered 503"))
            .bind(accepted_us as i64).bind(updated_us as i64).bind(attempts as i64)
            .bind(kept.then_some(0i64))
            .execute(&pool).await.unwrap();
    }
    pool.close().await;
    // Opened by this version: migrated, and everything it holds checks out against the old chain.
    let j = open_with(&url, |_| {}).await;
    let v = j.verify().await.unwrap();
    assert_eq!(
        (v.records, v.messages, v.outbox, v.bodies),
        (4, 3, 1, 1),
        "{v:?}"
    );
    assert_eq!(v.chains, [("main".to_owned(), 4)]);
    // The queued packet is still owed, with its body and its attempts so far.
    let c = j.claim("lgsp", Duration::from_secs(5), 10).await.unwrap();
    assert_eq!(c.len(), 1);
    assert_eq!(
        (
            c[0].message.message_id.as_str(),
            c[0].body.as_deref(),
            c[0].attempts
        ),
        ("q1", Some(&b"<q1/>"[..]), 3)
    );
    // The delivery left in progress with no lease is settled; keys used before are known.
    assert_eq!(
        j.settle_orphans(lgsp_journal::now_us()).await.unwrap(),
        ["x1"]
    );
    assert!(matches!(
        j.accept(packet("d1-again", H29, Some("kd"), b"<d/>", Delivery::Direct)).await.unwrap(),
        Admission::Existing(m) if m.message_id == "d1"
    ));
    let v = j.verify().await.unwrap();
    assert_eq!(v.records, 5);
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    let version: i64 = sqlx::query("SELECT MAX(version) AS v FROM journal_schema")
        .fetch_one(&pool)
        .await
        .unwrap()
        .try_get("v")
        .unwrap();
    assert_eq!(version, 7);
    pool.close().await;
    drop(j);
    tidy.await;
}

/// Appends from `journals` at once (`tasks` writers each, `n` packets a writer, an outcome after each), while the
/// database is sampled every 2 ms for a writer waiting on another transaction (`transactionid`, `tuple`: a row
/// another transaction holds until its commit; extending a table's file, `extend`, is not a commit wait): (samples
/// taken, samples that found one).
async fn appends_with_lock_samples(
    url: &str,
    journals: &[Journal],
    tasks: usize,
    n: usize,
) -> (u64, u64) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.expect("connect");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        tokio::spawn(async move {
            use sqlx::Row;
            let (mut samples, mut waits) = (0u64, 0u64);
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                let row = sqlx::query(
                    "SELECT COUNT(*) AS n FROM pg_stat_activity
                     WHERE datname = current_database() AND wait_event_type = 'Lock'
                       AND wait_event IN ('transactionid', 'tuple')",
                )
                .fetch_one(&pool)
                .await
                .expect("pg_stat_activity");
                let n: i64 = row.try_get("n").unwrap_or(0);
                samples += 1;
                waits += u64::from(n > 0);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (samples, waits)
        })
    };
    let mut writers = Vec::new();
    for (r, j) in journals.iter().enumerate() {
        for t in 0..tasks {
            let j = j.clone();
            writers.push(tokio::spawn(async move {
                for i in 0..n {
                    let id = format!("r{r}-{t}-{i}-{}", lgsp_journal::now_us());
                    let body = id.as_bytes().to_vec();
                    j.accept(packet(&id, H29, Some(&id), &body, Delivery::Direct))
                        .await
                        .expect("accept");
                    j.finish_later(delivered(&j, &id));
                }
                j.flush().await.expect("flush");
            }));
        }
    }
    for w in writers {
        w.await.expect("writer");
    }
    stop.store(true, std::sync::atomic::Ordering::Release);
    sampler.await.expect("sampler")
}

/// Replicas on one PostgreSQL, each with a chain of its own, never wait for each other's commits: no sample of
/// `pg_stat_activity` finds a writer waiting for a lock while both append at full speed. (Two processes on one
/// chain — the old single head row — take turns: printed beside it.)
#[tokio::test]
async fn replicas_on_one_postgresql_never_wait_for_each_others_commits() {
    let Some(s) = Store::postgres().await else {
        return;
    };
    let (a, b) = (s.another("replica-a").await, s.another("replica-b").await);
    let (samples, waits) = appends_with_lock_samples(&s.url, &[a.clone(), b.clone()], 16, 25).await;
    let (shared_a, shared_b) = (s.another("shared").await, s.another("shared").await);
    let (shared_samples, shared_waits) =
        appends_with_lock_samples(&s.url, &[shared_a, shared_b], 16, 25).await;
    eprintln!(
        "lock waits: own chains {waits} of {samples} samples; one shared chain {shared_waits} of {shared_samples}"
    );
    assert_eq!(waits, 0, "a replica waited for the other's lock");
    let v = a.verify().await.expect("verifies");
    assert!(v.chains.len() >= 3, "{v:?}");
    s.done().await;
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let s = super::Store::sqlite().await;
                    super::$name(&s).await;
                    s.done().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let Some(s) = super::Store::postgres().await else { return };
                    super::$name(&s).await;
                    s.done().await;
                }
            )*
        }
    };
}

suite!(
    accepted_and_finished_messages_are_chained_and_read_back,
    idempotency_keys_replay_refuse_or_retry,
    concurrent_appends_share_commits_and_keep_one_chain,
    many_outcomes_at_once_each_land_on_their_message,
    orphans_left_in_progress_are_settled_as_failed,
    one_key_sent_many_times_at_once_is_one_message,
    a_changed_record_is_named_by_verify,
    records_removed_from_the_end_are_named_by_verify,
    records_past_the_head_are_named_by_verify,
    verify_while_packets_arrive_sees_one_moment,
    every_derived_value_changed_by_hand_is_named_by_verify,
    the_outbox_leases_retries_and_delivers,
    queued_packets_are_handed_over_with_their_bytes,
    deliveries_left_under_way_are_taken_up_again,
    an_agency_over_its_quota_is_refused_and_no_other_is,
    an_outcome_frees_quota_for_an_acceptance_in_its_batch,
    too_little_disk_refuses_new_packets_only,
    bodies_are_kept_once_and_swept_when_no_delivery_needs_them,
    listings_page_and_the_report_counts,
    profiles_by_subject_and_the_approval_report,
    records_past_the_retention_are_pruned_and_the_rest_still_verifies,
    chains_of_replicas_anchor_each_other,
    a_journal_of_the_last_version_migrates_and_verifies,
);
