//! Durable appends per second with group commit, at 1, 16 and 256 concurrent writers: SQLite in a temporary
//! file, and PostgreSQL when `LGSP_TEST_POSTGRES_URL` is set (a database of its own, dropped after). Each append
//! is answered only after its transaction committed (SQLite: WAL fsynced; PostgreSQL: its commit).
//!
//! Two workloads: `records` — acceptances alone (a broker's packets: the record and the message's row);
//! `packets` — what a hop writes for each direct packet: the acceptance with its 4.8 KiB body kept and leased,
//! then its outcome (not waited for, as the hop does), two records per packet. Goal: ≥ 50,000 durable records/s at
//! 256 writers on SQLite on a 2-core machine. The CPU the process spent per packet is printed too.
//! `cargo bench -p lgsp-journal --bench append`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use lgsp_journal::{Accepted, Delivery, Journal, Outcome, Request, Settings, Status};

/// Packets per stage; `LGSP_BENCH_PACKETS` sets another count (a longer stage for a profile).
fn per_run() -> usize {
    std::env::var("LGSP_BENCH_PACKETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8192)
}

fn packet(i: usize, body: Option<&Bytes>) -> Accepted {
    use sha2::Digest;
    // Each packet its own body (as profiles are), so each is stored.
    let body = body.map(|b| {
        let mut v = format!("{i:>16}").into_bytes();
        v.extend_from_slice(&b[16..]);
        Bytes::from(v)
    });
    let sha = body.as_ref().map_or_else(
        || format!("{i:064x}"),
        |b| hex::encode(sha2::Sha256::digest(b)),
    );
    let body = body.as_ref();
    Accepted {
        hop: "lgsp".into(),
        // Message ids are UUIDv7 at a hop: in time order.
        message_id: format!("{:016x}-{i:08}", lgsp_journal::now_us()),
        agency: "000.00.00.H29".into(),
        route: "HoSoCBCCVC".into(),
        message_type: Some("HoSoCBCCVC".into()),
        mode: "production".into(),
        idempotency_key: Some(format!("bench-{i}-{}", lgsp_journal::now_us())),
        body_sha256: sha,
        body_size: body.map_or(4900, Bytes::len) as u64,
        delivery: Delivery::Direct,
        request: body.map(|_| Request {
            method: "POST".into(),
            path: "/lgsp/v1/HoSoCBCCVC".into(),
            headers: vec![("content-type".into(), "application/xml".into())],
            hops: vec!["lgsp".into()],
            ..Request::default()
        }),
        body: body.cloned(),
        lease: Duration::from_secs(60),
        subject: Some("001090012345".into()),
        approval: None,
        hop_signature: None,
    }
}

/// The process's CPU time so far (user + system).
fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) of proc(5), counted from field 3 (the state) after the command name.
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let ticks = tick(11) + tick(12);
    Duration::from_millis(ticks * 10)
}

/// Appends [`per_run`] packets from `writers` concurrent tasks; records per second and CPU per packet.
async fn run(journal: &Journal, writers: usize, body: Option<Bytes>) -> (f64, Duration) {
    let start = Instant::now();
    let cpu0 = cpu();
    let per = per_run() / writers;
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let j = journal.clone();
            let body = body.clone();
            tokio::spawn(async move {
                let mut records = 0u64;
                for i in 0..per {
                    let p = packet(w * per + i, body.as_ref());
                    let id = p.message_id.clone();
                    j.accept(p).await.expect("append");
                    records += 1;
                    if body.is_some() {
                        j.finish_later(Outcome {
                            hop: "lgsp".into(),
                            message_id: id,
                            status: Status::Delivered,
                            upstream_status: Some(200),
                            receipt: Some(
                                "{\"receipt_id\":\"R-1\",\"status\":\"accepted\"}".into(),
                            ),
                            answer_type: Some("application/json".into()),
                            detail: None,
                            owner: Some(j.owner().to_owned()),
                        });
                        records += 1;
                    }
                }
                records
            })
        })
        .collect();
    let mut records = 0;
    for t in tasks {
        records += t.await.expect("writer");
    }
    // The outcomes nobody waited for are written before the clock stops.
    journal.ping().await.expect("ping");
    let cpu_per = (cpu() - cpu0) / u32::try_from(per * writers).unwrap_or(1);
    (records as f64 / start.elapsed().as_secs_f64(), cpu_per)
}

async fn bench(name: &str, url: &str) {
    let mut settings = Settings::new(url);
    settings.keep_bodies = Duration::from_secs(86_400);
    settings.quotas.default.packets = u64::MAX;
    settings.quotas.default.bytes = u64::MAX;
    let journal = Journal::open(settings).await.expect("journal");
    let body = Bytes::from(vec![b'x'; 4900]);
    // `LGSP_BENCH_ONLY=packets:256` runs one stage (for a profile of it).
    let only = std::env::var("LGSP_BENCH_ONLY").unwrap_or_default();
    for (workload, body) in [("records", None), ("packets", Some(body))] {
        for writers in [1, 16, 256] {
            if !only.is_empty() && only != format!("{workload}:{writers}") {
                continue;
            }
            let before = journal.writer_stats();
            let (rate, cpu) = run(&journal, writers, body.clone()).await;
            let after = journal.writer_stats();
            let per_commit =
                (after.jobs - before.jobs) as f64 / (after.commits - before.commits).max(1) as f64;
            println!(
                "{name}: {workload:<7} {writers:>3} concurrent writers: {rate:>8.0} durable records/s, {:>5.1} µs CPU per packet, {per_commit:>5.1} jobs a commit",
                cpu.as_secs_f64() * 1e6
            );
        }
    }
    if !only.is_empty() {
        return;
    }
    let v = journal.verify().await.expect("the journal verifies");
    println!(
        "{name}: {} records in {} chain(s), {} messages verify",
        v.records,
        v.chains.len(),
        v.messages
    );
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    // `LGSP_BENCH_DB=PATH` keeps the SQLite journal there (to look at its pages after).
    let db = std::env::var("LGSP_BENCH_DB")
        .map_or_else(|_| dir.path().join("bench.db"), std::path::PathBuf::from);
    bench("SQLite", &format!("sqlite://{}", db.display())).await;
    match std::env::var("LGSP_TEST_POSTGRES_URL") {
        Ok(base) => {
            sqlx::any::install_default_drivers();
            let name = format!("lgsp_journal_bench_{}", std::process::id());
            let admin = sqlx::AnyPool::connect(&base).await.expect("PostgreSQL");
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&admin)
                .await
                .expect("create database");
            let url = match base.rsplit_once('/') {
                Some((server, _)) => format!("{server}/{name}"),
                None => format!("{base}/{name}"),
            };
            bench("PostgreSQL", &url).await;
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&admin)
            .await;
        }
        Err(_) => println!("PostgreSQL: skipped (LGSP_TEST_POSTGRES_URL is not set)"),
    }
}
