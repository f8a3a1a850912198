//! Durable appends per second with group commit, at 1, 16 and 256 concurrent writers: SQLite in a temporary
//! file, and PostgreSQL when `LGSP_TEST_POSTGRES_URL` is set (a database of its own, dropped after). Each append
//! is answered only after its transaction committed (SQLite: WAL fsynced; PostgreSQL: its commit). Goal: ≥ 5,000
//! durable records/s on SQLite on a 2-core machine. `cargo bench -p lgsp-journal --bench append`.

use std::time::{Duration, Instant};

use lgsp_journal::{Accepted, Delivery, Journal, Settings};

const PER_RUN: usize = 4000;

fn packet(i: usize) -> Accepted {
    Accepted {
        hop: "lgsp".into(),
        message_id: format!("bench-{i}-{}", lgsp_journal::now_us()),
        agency: "000.00.00.H29".into(),
        route: "HoSoCBCCVC".into(),
        message_type: Some("HoSoCBCCVC".into()),
        mode: "production".into(),
        idempotency_key: Some(format!("bench-{i}-{}", lgsp_journal::now_us())),
        body_sha256: "88f33f8d1320bbd174623266e0c66ddd4fa682cdc0cec6f381d65c2322eba2b1".into(),
        body_size: 435,
        delivery: Delivery::Direct,
        request: None,
        body: None,
        subject: None,
        approval: None,
        hop_signature: None,
    }
}

/// Appends `PER_RUN` records from `writers` concurrent tasks; records per second.
async fn run(journal: &Journal, writers: usize) -> f64 {
    let start = Instant::now();
    let per = PER_RUN / writers;
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let j = journal.clone();
            tokio::spawn(async move {
                for i in 0..per {
                    j.accept(packet(w * per + i)).await.expect("append");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("writer");
    }
    (per * writers) as f64 / start.elapsed().as_secs_f64()
}

async fn bench(name: &str, url: &str) {
    let journal = Journal::open(Settings {
        url: url.to_owned(),
        keep_bodies: Duration::ZERO,
        retention: Duration::from_secs(86_400),
    })
    .await
    .expect("journal");
    for writers in [1, 16, 256] {
        let rate = run(&journal, writers).await;
        println!("{name}: {writers:>3} concurrent writers: {rate:>8.0} durable records/s");
    }
    let n = journal.verify().await.expect("chain verifies");
    println!("{name}: chain of {n} records verifies");
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    bench(
        "SQLite",
        &format!("sqlite://{}", dir.path().join("bench.db").display()),
    )
    .await;
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
