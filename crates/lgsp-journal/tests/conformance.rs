//! One conformance suite, run against each backend: SQLite in a temporary file always, PostgreSQL when
//! `LGSP_TEST_POSTGRES_URL` is set (each test in a database of its own, dropped after).

use std::time::Duration;

use lgsp_journal::{
    Accepted, Admission, Delivery, Journal, JournalError, Outcome, Query, Request, Settings, Status,
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
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("journal.db").display());
        Store {
            journal: open(&url).await,
            url,
            _dir: Some(dir),
            drop_db: None,
        }
    }

    /// A fresh database on the test server, or `None` (with the reason printed) when none is configured.
    async fn postgres() -> Option<Store> {
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
            journal: open(&url).await,
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
            .expect("raw SQL");
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

async fn open(url: &str) -> Journal {
    Journal::open(Settings {
        url: url.to_owned(),
        keep_bodies: Duration::ZERO,
        retention: Duration::from_secs(5 * 365 * 86_400),
    })
    .await
    .expect("journal opens")
}

fn packet(id: &str, agency: &str, key: Option<&str>, body: &[u8], delivery: Delivery) -> Accepted {
    use sha2::Digest;
    Accepted {
        hop: "lgsp".into(),
        message_id: id.into(),
        agency: agency.into(),
        route: "HoSoCBCCVC".into(),
        message_type: Some("HoSoCBCCVC".into()),
        mode: "production".into(),
        idempotency_key: key.map(str::to_owned),
        body_sha256: hex::encode(sha2::Sha256::digest(body)),
        body_size: body.len() as u64,
        delivery,
        request: (delivery == Delivery::Queued).then(|| Request {
            method: "POST".into(),
            path: "/lgsp/v1/HoSoCBCCVC".into(),
            headers: vec![("content-type".into(), "application/xml".into())],
            ..Request::default()
        }),
        body: (delivery == Delivery::Queued).then(|| body.to_vec()),
        subject: None,
        approval: None,
        hop_signature: None,
    }
}

fn delivered(id: &str) -> Outcome {
    Outcome {
        hop: "lgsp".into(),
        message_id: id.into(),
        status: Status::Delivered,
        upstream_status: Some(200),
        receipt: Some(format!("{{\"message_id\":\"{id}\"}}")),
        detail: None,
        owner: None,
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
    j.finish(delivered("m1")).await.unwrap();
    let m = j.message("lgsp", H29, "m1").await.unwrap().expect("m1");
    assert_eq!(
        (m.status, m.upstream_status),
        (Status::Delivered, Some(200))
    );
    assert_eq!(m.receipt.as_deref(), Some("{\"message_id\":\"m1\"}"));
    assert_eq!(m.body_size, 4);
    // Another agency does not see it.
    assert_eq!(j.message("lgsp", H26, "m1").await.unwrap(), None);
    // An outcome for a message never accepted is refused alone.
    assert!(matches!(
        j.finish(delivered("nope")).await,
        Err(JournalError::UnknownMessage(_))
    ));
    assert_eq!(j.verify().await.unwrap(), 2);
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
        ..delivered("k1")
    })
    .await
    .unwrap();
    match j.accept(again.clone()).await.unwrap() {
        Admission::Again(m) => assert_eq!(m.message_id, "k1"),
        other => panic!("{other:?}"),
    }
    j.finish(delivered("k1")).await.unwrap();
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
            assert_eq!(m.body_sha256, again.body_sha256);
            assert_ne!(m.body_sha256, other_body.body_sha256);
        }
        other => panic!("{other:?}"),
    }
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
    // accepted, failed, accepted again, delivered (k1); accepted (k4): replays append nothing.
    assert_eq!(j.verify().await.unwrap(), 5);
}

async fn concurrent_appends_share_commits_and_keep_one_chain(s: &Store) {
    let j = &s.journal;
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let j = j.clone();
            tokio::spawn(async move {
                j.accept(packet(
                    &format!("c{i}"),
                    H29,
                    Some(&format!("c{i}")),
                    b"x",
                    Delivery::Direct,
                ))
                .await
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), Admission::New);
    }
    assert_eq!(j.verify().await.unwrap(), 200);
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
}

/// Outcomes sent at once share commits: each message gets its own outcome and record, one never accepted is
/// refused alone, and a second outcome of the same message (in the same batch or not) is written after the first.
async fn many_outcomes_at_once_each_land_on_their_message(s: &Store) {
    let j = &s.journal;
    for i in 0..60 {
        let id = format!("o{i}");
        j.accept(packet(&id, H29, None, b"x", Delivery::Direct))
            .await
            .unwrap();
    }
    let tasks: Vec<_> = (0..60)
        .flat_map(|i| {
            let mut outcomes = vec![(format!("o{i}"), i % 3 == 0)];
            if i % 10 == 0 {
                outcomes.push((format!("never-{i}"), false));
            }
            if i % 7 == 0 {
                // A second outcome of the same message: failed after delivered, written second.
                outcomes.push((format!("o{i}"), true));
            }
            outcomes
        })
        .map(|(id, failed)| {
            let j = j.clone();
            tokio::spawn(async move {
                let mut o = delivered(&id);
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
    assert_eq!((written, refused), (60 + 9, 6));
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
        } else if i % 7 != 0 {
            assert_eq!(
                (m.status, m.upstream_status),
                (Status::Delivered, Some(200)),
                "o{i}"
            );
            assert_eq!(m.receipt, Some(format!("{{\"message_id\":\"o{i}\"}}")));
        }
    }
    // 60 acceptances and 69 outcomes, one chain.
    assert_eq!(j.verify().await.unwrap(), 129);
}

/// A direct delivery left in progress (its gateway stopped before the upstream's answer was written) is marked
/// failed once stale, with its outcome record, so a resend under its key is tried again under the first id; one
/// that ended, and a queued one, are left alone.
async fn deliveries_abandoned_in_progress_are_marked_failed(s: &Store) {
    let j = &s.journal;
    for (id, key, delivery) in [
        ("left", Some("k-left"), Delivery::Direct),
        ("ended", None, Delivery::Direct),
        ("waiting", None, Delivery::Queued),
    ] {
        j.accept(packet(id, H29, key, b"<a/>", delivery))
            .await
            .unwrap();
    }
    j.finish(delivered("ended")).await.unwrap();
    let hour_ago = lgsp_journal::now_us() - 3_600_000_000;
    assert!(j.abandon_stale("lgsp", hour_ago).await.unwrap().is_empty());
    let marked = j
        .abandon_stale("lgsp", lgsp_journal::now_us() + 1)
        .await
        .unwrap();
    assert_eq!(marked, ["left"]);
    let m = j.message("lgsp", H29, "left").await.unwrap().expect("left");
    assert_eq!(
        (m.status, m.detail.as_deref()),
        (Status::Failed, Some(lgsp_journal::ABANDONED_DETAIL))
    );
    let status = |m: Option<lgsp_journal::Message>| m.expect("message").status;
    assert_eq!(
        status(j.message("lgsp", H29, "ended").await.unwrap()),
        Status::Delivered
    );
    assert_eq!(
        status(j.message("lgsp", H29, "waiting").await.unwrap()),
        Status::Queued
    );
    // Marked once: a second sweep finds nothing.
    assert!(
        j.abandon_stale("lgsp", lgsp_journal::now_us() + 1)
            .await
            .unwrap()
            .is_empty()
    );
    let again = j
        .accept(packet(
            "left-2",
            H29,
            Some("k-left"),
            b"<a/>",
            Delivery::Direct,
        ))
        .await
        .unwrap();
    assert!(
        matches!(&again, Admission::Again(m) if m.message_id == "left"),
        "{again:?}"
    );
    // Three acceptances, an outcome, the abandonment, the acceptance again.
    assert_eq!(j.verify().await.unwrap(), 6);
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
    assert_eq!(j.verify().await.unwrap(), 1);
}

async fn records_removed_from_the_end_are_named_by_verify(s: &Store) {
    let j = &s.journal;
    for i in 0..3 {
        j.accept(packet(&format!("e{i}"), H29, None, b"x", Delivery::Direct))
            .await
            .unwrap();
    }
    s.raw("DELETE FROM journal_records WHERE seq = 3").await;
    match j.verify().await {
        Err(JournalError::Broken(b)) => {
            assert_eq!(
                b,
                lgsp_journal::chain::Broken::Truncated { last: 2, head: 3 }
            )
        }
        other => panic!("{other:?}"),
    }
}

async fn a_changed_record_is_named_by_verify(s: &Store) {
    let j = &s.journal;
    for i in 0..5 {
        j.accept(packet(&format!("t{i}"), H29, None, b"x", Delivery::Direct))
            .await
            .unwrap();
    }
    assert_eq!(j.verify().await.unwrap(), 5);
    s.raw("UPDATE journal_records SET content = replace(content, '000.00.00.H29', '000.00.00.H26') WHERE seq = 3")
        .await;
    match j.verify().await {
        Err(JournalError::Broken(b)) => {
            assert_eq!(b, lgsp_journal::chain::Broken::Content { seq: 3 })
        }
        other => panic!("{other:?}"),
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
    let lease = Duration::from_millis(300);
    let claimed = j.claim("lgsp", "worker-a", lease, 10).await.unwrap();
    assert_eq!(claimed.len(), 2);
    assert_eq!(
        claimed
            .iter()
            .find(|c| c.message.message_id == "q1")
            .unwrap()
            .body,
        b"<q/>"
    );
    assert_eq!(claimed[0].message.request.as_ref().unwrap().method, "POST");
    // Leased: nobody else gets them.
    assert!(
        j.claim("lgsp", "worker-b", lease, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // q1 must wait (a 503 upstream); q2's worker dies: its lease runs out and another takes it.
    j.retry_at(
        "lgsp",
        "q1",
        "worker-a",
        lgsp_journal::now_us() + 60_000_000,
        "upstream 503",
    )
    .await
    .unwrap();
    tokio::time::sleep(lease + Duration::from_millis(100)).await;
    let taken = j.claim("lgsp", "worker-b", lease, 10).await.unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(
        (
            taken[0].message.message_id.as_str(),
            taken[0].message.attempts
        ),
        ("q2", 2)
    );
    // The first worker, back too late, cannot overwrite the outcome of the one that took the lease over.
    let by = |owner: &str| Outcome {
        owner: Some(owner.into()),
        ..delivered("q2")
    };
    assert!(matches!(
        j.finish(by("worker-a")).await,
        Err(JournalError::UnknownMessage(_))
    ));
    j.finish(by("worker-b")).await.unwrap();
    let (depth, age) = j.outbox("lgsp").await.unwrap();
    assert_eq!(depth, 1);
    assert!(age >= 0.0);
    let q1 = j.message("lgsp", H29, "q1").await.unwrap().unwrap();
    assert_eq!(
        (q1.status, q1.detail.as_deref()),
        (Status::Queued, Some("upstream 503"))
    );
}

async fn listings_page_and_the_report_counts(s: &Store) {
    let j = &s.journal;
    for i in 0..7 {
        j.accept(packet(&format!("l{i}"), H29, None, b"x", Delivery::Direct))
            .await
            .unwrap();
    }
    j.accept(packet("other", H26, None, b"x", Delivery::Direct))
        .await
        .unwrap();
    j.finish(delivered("l0")).await.unwrap();
    j.finish(Outcome {
        status: Status::Rejected,
        upstream_status: Some(422),
        ..delivered("l1")
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
            ..q.clone()
        })
        .await;
    assert!(only_delivered.is_ok());
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
    assert_eq!(first["seq"], 1);
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
        ..delivered("p3")
    })
    .await
    .unwrap();
    let sha = |b: &[u8]| {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(b))
    };
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
    assert!(j.verify().await.is_ok());
}

async fn records_past_the_retention_are_pruned_and_the_rest_still_verifies(s: &Store) {
    let j = &s.journal;
    j.accept(packet("p0", H29, Some("p0"), b"x", Delivery::Direct))
        .await
        .unwrap();
    j.finish(delivered("p0")).await.unwrap();
    j.accept(packet(
        "old-queued",
        H29,
        Some("oq"),
        b"q",
        Delivery::Queued,
    ))
    .await
    .unwrap();
    j.accept(packet("p1", H29, Some("p1"), b"y", Delivery::Direct))
        .await
        .unwrap();
    // Older than the retention: p0's two records, and p0 and the still-queued packet themselves (the columns
    // prune reads, not the chained content).
    s.raw("UPDATE journal_records SET at_us = 0 WHERE seq <= 2")
        .await;
    s.raw("UPDATE messages SET accepted_us = 0 WHERE message_id IN ('p0', 'old-queued')")
        .await;
    let (records, _) = j.prune().await.unwrap();
    assert_eq!(records, 2);
    // The chain is checked from its oldest kept record.
    assert_eq!(j.verify().await.unwrap(), 2);
    // Removing the oldest kept record by hand is not pruning: the head knows where the chain starts.
    s.raw("DELETE FROM journal_records WHERE seq = 3").await;
    match j.verify().await {
        Err(JournalError::Broken(b)) => assert_eq!(
            b,
            lgsp_journal::chain::Broken::Gap {
                seq: 4,
                expected: 3
            }
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(j.message("lgsp", H29, "p0").await.unwrap(), None);
    // A packet still waiting for delivery is never pruned, nor its body.
    let q = j
        .message("lgsp", H29, "old-queued")
        .await
        .unwrap()
        .expect("kept");
    assert_eq!(q.status, Status::Queued);
    let claimed = j
        .claim("lgsp", "w", Duration::from_secs(5), 10)
        .await
        .unwrap();
    assert_eq!(claimed[0].body, b"q");
    // Its key is kept as long as its record: a resend is still the same message.
    assert!(matches!(
        j.accept(packet("p1-again", H29, Some("p1"), b"y", Delivery::Direct))
            .await
            .unwrap(),
        Admission::Existing(_)
    ));
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
    deliveries_abandoned_in_progress_are_marked_failed,
    one_key_sent_many_times_at_once_is_one_message,
    a_changed_record_is_named_by_verify,
    records_removed_from_the_end_are_named_by_verify,
    the_outbox_leases_retries_and_delivers,
    listings_page_and_the_report_counts,
    profiles_by_subject_and_the_approval_report,
    records_past_the_retention_are_pruned_and_the_rest_still_verifies,
);
