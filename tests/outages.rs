//! Crashes and outages with real processes and a real upstream: the built binary as an LGSP hop whose packet
//! routes are queued, the emulator as a process of its own (so what it received outlives the gateway), and agencies
//! sending under load with an `Idempotency-Key` per packet, resending with the same key whatever went unanswered.
//! After each: every packet that got 202 is at the emulator, stored once, with the SHA-256 it was sent with.
//!
//! - `kill -9` of the gateway under load, then a restart (SQLite, and PostgreSQL);
//! - the emulator out of reach for 30 s under load (a relay the test cuts; the emulator keeps its state);
//! - two replicas on one PostgreSQL outbox, one killed mid-delivery;
//! - two replicas behind HAProxy sharing PostgreSQL and Redis, one killed under load;
//! - the crash matrix: three processes (emulator, NDXP, LGSP), 8 agencies' senders, and one fault — `kill -9` of
//!   the LGSP or of the NDXP, the LGSP's journal cut (its PostgreSQL through a relay, or its SQLite file made
//!   unwritable), its disk filled to the last byte, or the broker between the hops cut (NATS or RabbitMQ: the
//!   LGSP's route publishes to it, the NDXP's `[[consumer]]` reads it) — on a direct or a queued route, on SQLite
//!   or PostgreSQL:
//!   every packet acknowledged is at the emulator once, both journals verify, and `journal report --end-to-end`
//!   finds nothing missing.
//!
//! A delivery cut short by a crash is made again after its lease ends (at least once); the next hop knows a packet
//! by its message id and answers the repeat as a duplicate without storing it twice — the counts printed below.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lgsp_testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_lgsp-gateway");
const KEY_H29: &str = "lgsp_dev_000.00.00.H29_production";
/// Retries every 100 ms – 2 s; a crashed process's claims are taken back after 5 s (twice the 2 s route timeout).
const DELIVERY: &str = "[delivery]\nmax_age = \"10m\"\ninitial_backoff = \"100ms\"\nmax_backoff = \"2s\"\nworkers = 8\nlease = \"5s\"\n";

fn block<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// The emulator as a process: its address and its admin address.
fn emulator(pki: &TestPki) -> (Proc, SocketAddr, SocketAddr) {
    let dir = pki.dir();
    let mut p = Proc::spawn(
        BIN,
        &[
            "run",
            "--config",
            &write(dir, "emu.toml", &emulator_config(pki)),
        ],
        dir,
    );
    let addr = block(|| p.port("listening: emulator"));
    let admin = block(|| admin_of(&mut p));
    (p, ([127, 0, 0, 1], addr).into(), admin)
}

fn admin_of(p: &mut Proc) -> SocketAddr {
    let line = p.line("metrics: http://");
    line.trim_start_matches("metrics: http://")
        .trim_end_matches("/metrics")
        .parse()
        .expect("admin address")
}

/// An LGSP hop forwarding every packet route, queued, to `upstream`'s emulator paths, journalling at `journal`.
fn lgsp_text(pki: &TestPki, upstream: SocketAddr, journal: Option<&str>) -> String {
    let text = queued(&hop_config(
        pki,
        "lgsp",
        "/lgsp/v1",
        upstream,
        "/cbccvc/v1",
        &[],
    ))
    .replace("\ntimeout = \"5s\"\n", "\ntimeout = \"2s\"\n");
    let text = match journal {
        Some(url) => text.replacen(&journal_url_in(&text), url, 1),
        None => text,
    };
    format!("{text}\n{DELIVERY}")
}

/// A gateway process of `text`: the process, its LGSP hop's address and its admin address.
fn gateway(pki: &TestPki, name: &str, text: &str) -> (Proc, SocketAddr, SocketAddr) {
    let dir = pki.dir();
    let path = write(dir, &format!("{name}.toml"), text);
    let mut p = Proc::spawn(BIN, &["run", "--config", &path], dir);
    let port = block(|| p.port("listening: hop lgsp"));
    let admin = block(|| admin_of(&mut p));
    (p, ([127, 0, 0, 1], port).into(), admin)
}

/// The packet sent under `key`: the sample with the key in its name, so every packet is its own.
fn packet(key: &str) -> String {
    sample("valid/HoSoCBCCVC-02-toi-thieu.xml")
        .replace("Nguyễn Văn An", &format!("Nguyễn Văn An {key}"))
}

fn sha256(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

/// One agency sending: key → the message id of its 202 (or of the replayed first outcome).
type Accepted = BTreeMap<String, String>;

/// Sends `key` to whichever of `targets` answers, until one accepts it (202, or the replayed outcome of the first
/// attempt); `None` when none did within `within`.
async fn send_until_accepted(
    client: &TestClient,
    targets: &std::sync::Mutex<Vec<SocketAddr>>,
    key: &str,
    within: Duration,
) -> Option<String> {
    let deadline = Instant::now() + within;
    let body = packet(key);
    let h = [
        ("x-api-key", KEY_H29),
        ("content-type", "application/xml"),
        ("idempotency-key", key),
    ];
    let mut turn = 0;
    while Instant::now() < deadline {
        let at = {
            let now = targets.lock().unwrap();
            now[turn % now.len()]
        };
        turn += 1;
        let url = format!("https://localhost:{}/lgsp/v1/HoSoCBCCVC", at.port());
        if let Ok(a) = client.send("POST", &url, &h, &body).await {
            // Queued: 202; direct: the national endpoint's receipt (or its replay).
            if a.status.is_success() {
                return a.headers["x-lgsp-message-id"]
                    .to_str()
                    .ok()
                    .map(str::to_owned);
            }
            // Anything else says "not now": the journal or the next hop down (503, 502, 504), or the first attempt
            // still under way somewhere on the chain (409).
            assert!(
                matches!(a.status.as_u16(), 409 | 502 | 503 | 504),
                "{key}: {} {}",
                a.status,
                String::from_utf8_lossy(&a.body)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// `agencies` senders, each sending its own keys one after another (`pause` between), to `targets` while `go` holds.
fn load(
    pki: &TestPki,
    agencies: usize,
    targets: Arc<std::sync::Mutex<Vec<SocketAddr>>>,
    go: Arc<AtomicBool>,
    pause: Duration,
) -> Vec<tokio::task::JoinHandle<Accepted>> {
    (0..agencies)
        .map(|t| {
            let client = TestClient::new(pki, Some(AGENCY_OK), false);
            let (targets, go) = (targets.clone(), go.clone());
            tokio::spawn(async move {
                let mut accepted = Accepted::new();
                let mut i = 0;
                while go.load(Ordering::Acquire) {
                    let key = format!("load-{t}-{i}");
                    match send_until_accepted(&client, &targets, &key, Duration::from_secs(60))
                        .await
                    {
                        Some(id) => {
                            accepted.insert(key, id);
                        }
                        None => panic!("{key} was never accepted"),
                    }
                    i += 1;
                    tokio::time::sleep(pause).await;
                }
                accepted
            })
        })
        .collect()
}

async fn collect(tasks: Vec<tokio::task::JoinHandle<Accepted>>) -> Accepted {
    let mut all = Accepted::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// One plain HTTP/1.1 GET to an admin listener; the body.
async fn admin_get(addr: SocketAddr, path: &str) -> String {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tcp.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    text.split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_owned())
}

fn sample_value(metrics: &str, sample: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(sample)
                .map(|v| v.trim().parse().unwrap_or(f64::NAN))
        })
        .unwrap_or(0.0)
}

/// Waits until the emulator has stored `n` HoSoCBCCVC packets; then checks each accepted one is there once with
/// its SHA-256, and nothing more is. Prints how many deliveries were repeats.
async fn every_accepted_packet_is_at_the_emulator_once(
    pki: &TestPki,
    emulator: SocketAddr,
    emulator_admin: SocketAddr,
    accepted: &Accepted,
    what: &str,
) {
    let stored = |m: &str| {
        sample_value(
            m,
            "lgsp_emulator_packets_total{message_type=\"HoSoCBCCVC\",result=\"accepted\"}",
        )
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let m = admin_get(emulator_admin, "/metrics").await;
        let n = stored(&m);
        if n as usize >= accepted.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the emulator holds {n} of {} packets",
            accepted.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let client = TestClient::new(pki, Some(AGENCY_OK), true);
    for (key, id) in accepted {
        let url = format!(
            "https://localhost:{}/cbccvc/v1/BienNhan/{id}",
            emulator.port()
        );
        let r = client
            .send("GET", &url, &[("x-lgsp-client", H29)], "")
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{what}: {key} ({id}) is not at the emulator");
        assert_eq!(
            r.json()["sha256"],
            sha256(&packet(key)),
            "{what}: {key} arrived changed"
        );
    }
    // Nothing beyond what was accepted: each message id stored once.
    let m = admin_get(emulator_admin, "/metrics").await;
    assert_eq!(
        stored(&m) as usize,
        accepted.len(),
        "{what}: the emulator stored more than was accepted"
    );
    let repeats = sample_value(
        &m,
        "lgsp_emulator_packets_total{message_type=\"HoSoCBCCVC\",result=\"duplicate\"}",
    );
    eprintln!(
        "{what}: {} packets accepted, each stored once at the emulator; {repeats} repeated deliveries answered as duplicates",
        accepted.len()
    );
}

async fn kill_9_under_load_then_restart(journal: Option<&str>, what: &str) {
    let pki = TestPki::new();
    let (_emu, emu_addr, emu_admin) = emulator(&pki);
    let text = lgsp_text(&pki, emu_addr, journal);
    let (first, addr, _) = gateway(&pki, "lgsp", &text);
    let targets = Arc::new(std::sync::Mutex::new(vec![addr]));
    let go = Arc::new(AtomicBool::new(true));
    let senders = load(
        &pki,
        4,
        targets.clone(),
        go.clone(),
        Duration::from_millis(5),
    );
    // Under load, with deliveries under way: killed without a chance to finish anything.
    let mut m = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while sample_value(
        &m,
        "lgsp_emulator_packets_total{message_type=\"HoSoCBCCVC\",result=\"accepted\"}",
    ) < 40.0
    {
        assert!(Instant::now() < deadline, "no deliveries under load");
        tokio::time::sleep(Duration::from_millis(100)).await;
        m = admin_get(emu_admin, "/metrics").await;
    }
    drop(first);
    // Restarted on the same journal (a new port): the senders resend what went unanswered under the same keys.
    let (_second, addr, _) = gateway(&pki, "lgsp-again", &text);
    *targets.lock().unwrap() = vec![addr];
    tokio::time::sleep(Duration::from_secs(2)).await;
    go.store(false, Ordering::Release);
    let accepted = collect(senders).await;
    every_accepted_packet_is_at_the_emulator_once(&pki, emu_addr, emu_admin, &accepted, what).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_under_load_loses_no_accepted_packet_on_sqlite() {
    kill_9_under_load_then_restart(None, "kill -9, SQLite").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_under_load_loses_no_accepted_packet_on_postgresql() {
    let Some(db) = PgDatabase::create("the PostgreSQL kill -9 test").await else {
        return;
    };
    kill_9_under_load_then_restart(Some(&db.url), "kill -9, PostgreSQL").await;
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_out_of_reach_for_30_s_is_waited_out() {
    let pki = TestPki::new();
    let (_emu, emu_addr, emu_admin) = emulator(&pki);
    let relay = Relay::start(emu_addr).await;
    let (_g, addr, admin) = gateway(&pki, "lgsp", &lgsp_text(&pki, relay.addr, None));
    let targets = Arc::new(std::sync::Mutex::new(vec![addr]));
    let go = Arc::new(AtomicBool::new(true));
    let senders = load(&pki, 4, targets, go.clone(), Duration::from_millis(100));
    tokio::time::sleep(Duration::from_secs(2)).await;
    relay.cut();
    tokio::time::sleep(Duration::from_secs(30)).await;
    // Packets kept coming and were accepted throughout; the outbox holds them.
    let m = admin_get(admin, "/metrics").await;
    let depth = sample_value(&m, "lgsp_outbox_depth{hop=\"lgsp\"}");
    let age = sample_value(&m, "lgsp_outbox_oldest_age_seconds{hop=\"lgsp\"}");
    assert!(
        depth > 0.0 && age > 20.0,
        "outbox depth {depth}, oldest {age} s"
    );
    relay.restore();
    tokio::time::sleep(Duration::from_secs(2)).await;
    go.store(false, Ordering::Release);
    let accepted = collect(senders).await;
    every_accepted_packet_is_at_the_emulator_once(
        &pki,
        emu_addr,
        emu_admin,
        &accepted,
        "upstream out of reach 30 s",
    )
    .await;
    let m = admin_get(admin, "/metrics").await;
    assert!(
        sample_value(
            &m,
            "lgsp_deliveries_total{hop=\"lgsp\",outcome=\"retried\",route=\"HoSoCBCCVC\"}"
        ) > 0.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_on_one_postgresql_outbox_deliver_each_packet_once_when_one_is_killed() {
    let Some(db) = PgDatabase::create("the two-replica test").await else {
        return;
    };
    let pki = TestPki::new();
    let (_emu, emu_addr, emu_admin) = emulator(&pki);
    let text = lgsp_text(&pki, emu_addr, Some(&db.url));
    let (one, a, _) = gateway(&pki, "replica-1", &with_chain(&text, "replica-1"));
    let (_two, b, b_admin) = gateway(&pki, "replica-2", &with_chain(&text, "replica-2"));
    let targets = Arc::new(std::sync::Mutex::new(vec![a, b]));
    let go = Arc::new(AtomicBool::new(true));
    let senders = load(
        &pki,
        4,
        targets.clone(),
        go.clone(),
        Duration::from_millis(5),
    );
    let mut m = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while sample_value(
        &m,
        "lgsp_emulator_packets_total{message_type=\"HoSoCBCCVC\",result=\"accepted\"}",
    ) < 40.0
    {
        assert!(Instant::now() < deadline, "no deliveries under load");
        tokio::time::sleep(Duration::from_millis(100)).await;
        m = admin_get(emu_admin, "/metrics").await;
    }
    // Killed with its claims in flight; the agencies go on with the other replica.
    drop(one);
    *targets.lock().unwrap() = vec![b];
    tokio::time::sleep(Duration::from_secs(2)).await;
    go.store(false, Ordering::Release);
    let accepted = collect(senders).await;
    every_accepted_packet_is_at_the_emulator_once(
        &pki,
        emu_addr,
        emu_admin,
        &accepted,
        "two replicas, one killed",
    )
    .await;
    let m = admin_get(b_admin, "/metrics").await;
    assert!(
        sample_value(
            &m,
            "lgsp_deliveries_total{hop=\"lgsp\",outcome=\"delivered\",route=\"HoSoCBCCVC\"}"
        ) > 0.0
    );
    db.drop_now().await;
}

/// The sum of a gateway's `lgsp_requests_total` samples for `route` (any agency, mode, status).
fn requests_on(metrics: &str, route: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("lgsp_requests_total{") && l.contains(&format!("route=\"{route}\""))
        })
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// One attempt to send a packet: when it started and ended, and the message id of its 202 (or replayed outcome) or
/// why not.
struct Attempt {
    key: String,
    started: Instant,
    ended: Instant,
    outcome: Result<String, String>,
}

/// `agencies` senders through one address (the balancer), a new connection per request, each packet sent until
/// accepted under its own `Idempotency-Key`; every attempt is kept.
fn load_through(
    pki: &TestPki,
    agencies: usize,
    at: SocketAddr,
    go: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<Attempt>>> {
    (0..agencies)
        .map(|t| {
            let client = TestClient::fresh_connections(pki, Some(AGENCY_OK));
            let go = go.clone();
            let url = format!("https://localhost:{}/lgsp/v1/HoSoCBCCVC", at.port());
            tokio::spawn(async move {
                let mut attempts = Vec::new();
                let mut i = 0;
                while go.load(Ordering::Acquire) {
                    let key = format!("lb-{t}-{i}");
                    let body = packet(&key);
                    let h = [
                        ("x-api-key", KEY_H29),
                        ("content-type", "application/xml"),
                        ("idempotency-key", key.as_str()),
                    ];
                    let deadline = Instant::now() + Duration::from_secs(60);
                    loop {
                        let started = Instant::now();
                        let outcome = match client.send("POST", &url, &h, &body).await {
                            Ok(a)
                                if a.status == 202
                                    || (a.status == 200
                                        && a.headers.contains_key("x-lgsp-replayed")) =>
                            {
                                a.headers["x-lgsp-message-id"]
                                    .to_str()
                                    .map(str::to_owned)
                                    .map_err(|e| e.to_string())
                            }
                            Ok(a) => {
                                Err(format!("{} {}", a.status, String::from_utf8_lossy(&a.body)))
                            }
                            Err(e) => Err(e),
                        };
                        let done = outcome.is_ok();
                        attempts.push(Attempt {
                            key: key.clone(),
                            started,
                            ended: Instant::now(),
                            outcome,
                        });
                        if done {
                            break;
                        }
                        assert!(Instant::now() < deadline, "{key} was never accepted");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    i += 1;
                }
                attempts
            })
        })
        .collect()
}

/// Behind HAProxy (TCP mode, PROXY protocol v2, TLS ending at the gateways) two replicas share a PostgreSQL journal
/// and a Redis rate limit: requests spread over both, a route's limit holds across both, and when one is killed
/// (`kill -9`) the only requests that fail are those it held at that moment — each resent under its key and then
/// accepted — while every accepted packet reaches the emulator once.
#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_behind_haproxy_share_limits_and_lose_only_in_flight_requests_when_one_is_killed()
 {
    if !tool("haproxy") {
        return;
    }
    let Ok(redis) = std::env::var("LGSP_TEST_REDIS_URL") else {
        eprintln!(
            "skipped: LGSP_TEST_REDIS_URL is not set (.ci/run sets it to the machine's Redis)"
        );
        return;
    };
    let Some(db) = PgDatabase::create("the replicas behind HAProxy test").await else {
        return;
    };
    let pki = TestPki::new();
    let (_emu, emu_addr, emu_admin) = emulator(&pki);
    let prefix = unique_name("lgsp:test:replicas:");
    let text = behind_balancer(&lgsp_text(&pki, emu_addr, Some(&db.url)), "").replacen(
        "message_type = \"BienDong\"\n",
        "message_type = \"BienDong\"\nrate = \"1/h\"\nburst = 4\n",
        1,
    ) + &format!(
        "\n[ratelimit]\nbackend = \"{redis}\"\nkey_prefix = \"{prefix}\"\ntimeout = \"2s\"\n"
    );
    let (one, a, a_admin) = gateway(&pki, "replica-1", &with_chain(&text, "replica-1"));
    let (_two, b, b_admin) = gateway(&pki, "replica-2", &with_chain(&text, "replica-2"));
    let haproxy = Haproxy::start(pki.dir(), &[a, b]);
    let lb: SocketAddr = ([127, 0, 0, 1], haproxy.port).into();

    // The limit: BienDong allows a burst of 4 per agency, wherever the requests land.
    let client = TestClient::fresh_connections(&pki, Some(AGENCY_OK));
    let url = format!("https://localhost:{}/lgsp/v1/BienDong", lb.port());
    let body = sample("valid/BienDong-01-dieu-dong.xml");
    let h = [("x-api-key", KEY_H29), ("content-type", "application/xml")];
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(client.status("POST", &url, &h, &body).await);
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 202).count(),
        4,
        "the burst of 4 holds across both replicas: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 202 || *s == 429),
        "{statuses:?}"
    );
    let (ma, mb) = (
        admin_get(a_admin, "/metrics").await,
        admin_get(b_admin, "/metrics").await,
    );
    assert!(
        requests_on(&ma, "BienDong") >= 1.0 && requests_on(&mb, "BienDong") >= 1.0,
        "HAProxy sent every request to one replica"
    );

    // Load through the balancer until both replicas have accepted packets and deliveries are under way.
    let go = Arc::new(AtomicBool::new(true));
    let senders = load_through(&pki, 4, lb, go.clone());
    eventually(
        "both replicas serve and deliver",
        Duration::from_secs(60),
        || async {
            let (ma, mb, me) = (
                admin_get(a_admin, "/metrics").await,
                admin_get(b_admin, "/metrics").await,
                admin_get(emu_admin, "/metrics").await,
            );
            requests_on(&ma, "HoSoCBCCVC") >= 10.0
                && requests_on(&mb, "HoSoCBCCVC") >= 10.0
                && sample_value(
                    &me,
                    "lgsp_emulator_packets_total{message_type=\"HoSoCBCCVC\",result=\"accepted\"}",
                ) >= 40.0
        },
    )
    .await;
    // Killed mid-load: gone once `drop` returns (killed and reaped, its sockets closed).
    let killing = Instant::now();
    drop(one);
    let dead = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    go.store(false, Ordering::Release);
    let mut attempts = Vec::new();
    for s in senders {
        attempts.extend(s.await.expect("sender"));
    }

    // Failed attempts: only those under way when the replica died, and resends of those same packets.
    let in_flight: std::collections::BTreeSet<&str> = attempts
        .iter()
        .filter(|t| t.outcome.is_err() && t.started < dead)
        .map(|t| t.key.as_str())
        .collect();
    for t in attempts.iter().filter(|t| t.outcome.is_err()) {
        let why = t.outcome.as_ref().err().map_or("", String::as_str);
        if t.started < killing {
            assert!(
                t.ended >= killing && !why.starts_with('4') && !why.starts_with('5'),
                "{} failed, and not for the kill: {why}",
                t.key
            );
        } else if t.started >= dead {
            assert!(
                in_flight.contains(t.key.as_str()) && why.starts_with("409"),
                "{} failed after the replica was gone: {why}",
                t.key
            );
        }
    }
    let accepted: Accepted = attempts
        .iter()
        .filter_map(|t| {
            t.outcome
                .as_ref()
                .ok()
                .map(|id| (t.key.clone(), id.clone()))
        })
        .collect();
    assert!(
        attempts
            .iter()
            .any(|t| t.started >= dead && t.outcome.is_ok()),
        "nothing was sent after the kill"
    );
    eprintln!(
        "behind HAProxy: {} attempts, {} packets accepted, {} in flight at the kill (resent, then accepted)",
        attempts.len(),
        accepted.len(),
        in_flight.len()
    );
    every_accepted_packet_is_at_the_emulator_once(
        &pki,
        emu_addr,
        emu_admin,
        &accepted,
        "two replicas behind HAProxy, one killed",
    )
    .await;
    // The survivor still holds the shared limit.
    assert_eq!(client.status("POST", &url, &h, &body).await, 429);
    drop(haproxy);
    db.drop_now().await;
}

/// A rolling restart behind HAProxy whose health checks ask each replica's `/readyz`: each replica in turn gets
/// SIGTERM — with `[admin] shutdown_delay` it reports not ready and serves on until HAProxy has taken it out —,
/// exits, and starts again on the same ports. Under load meanwhile no request fails, and every accepted packet
/// reaches the emulator once. (Without the delay, requests that HAProxy had just passed to the stopping replica
/// fail as it closes.)
#[tokio::test(flavor = "multi_thread")]
async fn a_rolling_restart_behind_haproxy_fails_no_request() {
    if !tool("haproxy") {
        return;
    }
    let Some(db) = PgDatabase::create("the rolling restart test").await else {
        return;
    };
    let pki = TestPki::new();
    let (_emu, emu_addr, emu_admin) = emulator(&pki);
    let base = behind_balancer(&lgsp_text(&pki, emu_addr, Some(&db.url)), "").replacen(
        "drain_timeout = \"5s\"\n",
        "drain_timeout = \"5s\"\nshutdown_delay = \"2s\"\n",
        1,
    );
    // Fixed ports (the admin listener's first, then the hop's), so a replica restarts where HAProxy expects it.
    let replicas: Vec<(String, SocketAddr, u16)> = (0..2)
        .map(|i| {
            let (hop, admin) = (free_port(), free_port());
            let text = with_chain(&base, &format!("replica-{i}"))
                .replacen(
                    "listen = \"127.0.0.1:0\"",
                    &format!("listen = \"127.0.0.1:{admin}\""),
                    1,
                )
                .replacen(
                    "listen = \"127.0.0.1:0\"",
                    &format!("listen = \"127.0.0.1:{hop}\""),
                    1,
                );
            (text, ([127, 0, 0, 1], hop).into(), admin)
        })
        .collect();
    let mut running: Vec<Option<Proc>> = replicas
        .iter()
        .enumerate()
        .map(|(i, (text, _, _))| Some(gateway(&pki, &format!("replica-{i}"), text).0))
        .collect();
    let haproxy = Haproxy::start_with_readyz(
        pki.dir(),
        &replicas
            .iter()
            .map(|(_, hop, admin)| (*hop, *admin))
            .collect::<Vec<_>>(),
    );
    let lb: SocketAddr = ([127, 0, 0, 1], haproxy.port).into();
    let admin_of = |i: usize| -> SocketAddr { ([127, 0, 0, 1], replicas[i].2).into() };
    let serving = |i: usize| async move {
        requests_on(&admin_get(admin_of(i), "/metrics").await, "HoSoCBCCVC") >= 10.0
    };

    let go = Arc::new(AtomicBool::new(true));
    let senders = load_through(&pki, 4, lb, go.clone());
    for i in 0..2 {
        eventually("the replica serves", Duration::from_secs(60), || serving(i)).await;
    }
    for (i, slot) in running.iter_mut().enumerate() {
        // Stopped cleanly (SIGTERM: not ready, served on for the delay, drained), then started again.
        let stopping = slot.take().expect("running");
        assert!(block(|| stopping.terminate()), "replica {i} did not exit 0");
        *slot = Some(gateway(&pki, &format!("replica-{i}-again"), &replicas[i].0).0);
        eventually(
            "the restarted replica is back in HAProxy's rotation",
            Duration::from_secs(60),
            || serving(i),
        )
        .await;
    }
    go.store(false, Ordering::Release);
    let mut attempts = Vec::new();
    for s in senders {
        attempts.extend(s.await.expect("sender"));
    }
    let failed: Vec<String> = attempts
        .iter()
        .filter_map(|t| {
            t.outcome
                .as_ref()
                .err()
                .map(|why| format!("{}: {why}", t.key))
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during the rolling restart: {:?}",
        failed.len(),
        attempts.len(),
        &failed[..failed.len().min(5)]
    );
    let accepted: Accepted = attempts
        .iter()
        .filter_map(|t| {
            t.outcome
                .as_ref()
                .ok()
                .map(|id| (t.key.clone(), id.clone()))
        })
        .collect();
    eprintln!(
        "rolling restart behind HAProxy: {} requests, none failed",
        attempts.len()
    );
    every_accepted_packet_is_at_the_emulator_once(
        &pki,
        emu_addr,
        emu_admin,
        &accepted,
        "rolling restart behind HAProxy",
    )
    .await;
    drop(haproxy);
    db.drop_now().await;
}

/// What fails in one run of the crash matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    KillLgsp,
    KillNdxp,
    CutLgspJournal,
    /// The LGSP's SQLite journal on a small disk, filled to the last byte for 3 s.
    FullDisk,
    /// The broker between the hops cut for 3 s: the LGSP's HoSoCBCCVC route publishes to it and the NDXP's
    /// `[[consumer]]` reads it, both through one relay. NATS JetStream on the SQLite runs, RabbitMQ on the
    /// PostgreSQL ones.
    CutBroker,
}

/// The broker of a [`Fault::CutBroker`] run and what the hops are configured with to reach it.
struct BrokerLink {
    relay: Relay,
    /// The LGSP route's upstream.
    upstream: String,
    /// The NDXP's `[[consumer]]` table.
    consumer: String,
    held: Held,
}

/// What the run made at the broker, dropped at its end.
enum Held {
    Nats {
        js: async_nats::jetstream::Context,
        streams: [String; 2],
    },
    Amqp {
        _conn: lapin::Connection,
        ch: lapin::Channel,
        queues: [String; 2],
    },
}

impl BrokerLink {
    /// A stream (NATS) or queue (RabbitMQ) of the run's own, with its dead-letter twin; `None` when the broker's
    /// URL is not set (the skip is printed).
    async fn make(nats: bool) -> Option<BrokerLink> {
        let consumer = |source: &str, dead: &str| {
            format!(
                "[[consumer]]\nname = \"ndxp-in\"\nhop = \"ndxp\"\nroute = \"HoSoCBCCVC\"\nsource = \"{source}\"\ndead_letter = \"{dead}\"\nmax_in_flight = 8\n"
            )
        };
        if nats {
            let (url, addr) = test_broker("LGSP_TEST_NATS_URL")?;
            let (js, input, subject) = test_stream(&url, "LGSPMX", "lgspmx.").await;
            let (_, dead, dead_subject) = test_stream(&url, "LGSPMXDEAD", "lgspmxdead.").await;
            let relay = Relay::start(addr).await;
            let at = relay.addr;
            Some(BrokerLink {
                upstream: format!("nats://{at}/{subject}.HoSoCBCCVC"),
                consumer: consumer(
                    &format!("nats://{at}/{input}?consumer=ndxp-in"),
                    &format!("nats://{at}/{dead_subject}.HoSoCBCCVC"),
                ),
                relay,
                held: Held::Nats {
                    js,
                    streams: [input, dead],
                },
            })
        } else {
            let (url, addr) = test_broker("LGSP_TEST_AMQP_URL")?;
            let (conn, ch) = amqp_channel(&url).await;
            let (queue, dlq) = (unique_name("lgspmx.in."), unique_name("lgspmx.dead."));
            for q in [&queue, &dlq] {
                durable_queue(&ch, q).await;
            }
            let userinfo = url
                .split_once("://")
                .and_then(|(_, r)| r.rsplit_once('@'))
                .map_or("guest:guest", |(u, _)| u)
                .to_owned();
            let relay = Relay::start(addr).await;
            let at = relay.addr;
            Some(BrokerLink {
                upstream: format!("amqp://{userinfo}@{at}/%2f?routing_key={queue}"),
                consumer: consumer(
                    &format!("amqp://{userinfo}@{at}/%2f?queue={queue}"),
                    &format!("amqp://{userinfo}@{at}/%2f?routing_key={dlq}"),
                ),
                relay,
                held: Held::Amqp {
                    _conn: conn,
                    ch,
                    queues: [queue, dlq],
                },
            })
        }
    }

    /// How many packets were dead-lettered: every one should have reached the emulator.
    async fn dead_lettered(&self) -> u64 {
        match &self.held {
            Held::Nats { js, streams } => {
                js.get_stream(&streams[1])
                    .await
                    .expect("dead-letter stream")
                    .info()
                    .await
                    .expect("info")
                    .state
                    .messages
            }
            Held::Amqp { ch, queues, .. } => u64::from(
                ch.queue_declare(
                    queues[1].clone().into(),
                    lapin::options::QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    lapin::types::FieldTable::default(),
                )
                .await
                .expect("dead-letter queue")
                .message_count(),
            ),
        }
    }

    async fn drop_now(self) {
        match self.held {
            Held::Nats { js, streams } => {
                for s in streams {
                    let _ = js.delete_stream(&s).await;
                }
            }
            Held::Amqp { ch, queues, .. } => {
                for q in queues {
                    let _ = ch
                        .queue_delete(q.into(), lapin::options::QueueDeleteOptions::default())
                        .await;
                }
            }
        }
    }
}

/// `text` listening on fixed ports (admin first, then the hop), so a restart comes back where it was.
fn on_ports(text: &str, admin: u16, hop: u16) -> String {
    text.replacen(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{admin}\""),
        1,
    )
    .replacen(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{hop}\""),
        1,
    )
}

/// A gateway process on fixed ports, `hop` named in its "listening" line.
fn hop_process(pki: &TestPki, name: &str, hop: &str, text: &str) -> Proc {
    let path = write(pki.dir(), &format!("{name}.toml"), text);
    let mut p = Proc::spawn(BIN, &["run", "--config", &path], pki.dir());
    block(|| p.port(&format!("listening: hop {hop}")));
    p
}

/// `lgsp-gateway journal` with `args` on the journal of config `name`: exit code and stdout.
fn journal_of(pki: &TestPki, name: &str, args: &[&str]) -> (Option<i32>, String) {
    let config = pki.dir().join(format!("{name}.toml"));
    let out = block(|| {
        std::process::Command::new(BIN)
            .arg("journal")
            .arg("--config")
            .arg(&config)
            .args(args)
            .current_dir(pki.dir())
            .output()
            .expect("journal command")
    });
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// One run: load, the fault, recovery, then the checks. `None` when PostgreSQL is wanted and not configured.
async fn crash_run(fault: Fault, queue: bool, postgres: bool) -> Option<()> {
    let what = format!(
        "{fault:?}, {} route, {}",
        if queue { "queued" } else { "direct" },
        if postgres { "PostgreSQL" } else { "SQLite" }
    );
    if fault == Fault::FullDisk && postgres {
        // A PostgreSQL server minds its own disk; its outage is the journal cut.
        return Some(());
    }
    let (lgsp_db, ndxp_db) = if postgres {
        let a = PgDatabase::create(&format!("the crash matrix ({what})")).await?;
        let b = PgDatabase::create(&format!("the crash matrix ({what})")).await?;
        (Some(a), Some(b))
    } else {
        (None, None)
    };
    let pki = TestPki::new();
    let (_emu, emu_addr, emu_admin) = emulator(&pki);
    let (ndxp_port, ndxp_admin) = (free_port(), free_port());
    let (lgsp_port, lgsp_admin) = (free_port(), free_port());
    let mut ndxp_text = hop_config(
        &pki,
        "ndxp",
        "/ndxp/v1",
        emu_addr,
        "/cbccvc/v1",
        &["LGSP-DEV"],
    )
    .replace("\ntimeout = \"5s\"\n", "\ntimeout = \"2s\"\n");
    if let Some(db) = &ndxp_db {
        ndxp_text = with_chain(
            &ndxp_text.replacen(&journal_url_in(&ndxp_text), &db.url, 1),
            "ndxp",
        );
    }
    let broker = if fault == Fault::CutBroker {
        Some(BrokerLink::make(!postgres).await?)
    } else {
        None
    };
    if let Some(b) = &broker {
        ndxp_text = format!("{ndxp_text}\n{DELIVERY}{}", b.consumer);
    }
    let ndxp_text = on_ports(&ndxp_text, ndxp_admin, ndxp_port);
    let ndxp_addr: SocketAddr = ([127, 0, 0, 1], ndxp_port).into();
    let mut lgsp_text = hop_config(&pki, "lgsp", "/lgsp/v1", ndxp_addr, "/ndxp/v1", &[])
        .replace("\ntimeout = \"5s\"\n", "\ntimeout = \"2s\"\n");
    if let Some(b) = &broker {
        let old = format!(
            "upstream = \"https://localhost:{ndxp_port}\"\nrewrite = \"/ndxp/v1/HoSoCBCCVC\"\n"
        );
        assert!(lgsp_text.contains(&old), "{what}: no HoSoCBCCVC route");
        lgsp_text = lgsp_text.replacen(&old, &format!("upstream = \"{}\"\n", b.upstream), 1);
    }
    if queue {
        lgsp_text = queued(&lgsp_text);
    }
    let small = if fault == Fault::FullDisk {
        let disk = SmallDisk::mount(&pki.dir().join("lgsp-disk"), "64m")?;
        let url = format!(
            "sqlite://{}/journal.db",
            pki.dir().join("lgsp-disk").display()
        );
        lgsp_text = lgsp_text
            .replacen(&journal_url_in(&lgsp_text), &url, 1)
            .replacen("min_free_disk = \"1MiB\"", "min_free_disk = \"8MiB\"", 1);
        Some(disk)
    } else {
        None
    };
    let sqlite_journal = journal_url_in(&lgsp_text);
    let relay = match &lgsp_db {
        Some(db) => Some(Relay::start(db.server_addr()).await),
        None => None,
    };
    if let (Some(db), Some(relay)) = (&lgsp_db, &relay) {
        lgsp_text = with_chain(
            &lgsp_text.replacen(&journal_url_in(&lgsp_text), &db.via(relay), 1),
            "lgsp",
        );
    }
    let lgsp_text = on_ports(&format!("{lgsp_text}\n{DELIVERY}"), lgsp_admin, lgsp_port);
    let lgsp_addr: SocketAddr = ([127, 0, 0, 1], lgsp_port).into();
    let mut ndxp = Some(hop_process(&pki, "ndxp", "ndxp", &ndxp_text));
    let mut lgsp = Some(hop_process(&pki, "lgsp", "lgsp", &lgsp_text));
    let targets = Arc::new(std::sync::Mutex::new(vec![lgsp_addr]));
    let go = Arc::new(AtomicBool::new(true));
    let senders = load(&pki, 8, targets, go.clone(), Duration::from_millis(5));
    // Under load, with deliveries under way at both hops.
    let mut m = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while sample_value(
        &m,
        "lgsp_emulator_packets_total{message_type=\"HoSoCBCCVC\",result=\"accepted\"}",
    ) < 40.0
    {
        assert!(
            Instant::now() < deadline,
            "{what}: no deliveries under load"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        m = admin_get(emu_admin, "/metrics").await;
    }
    match fault {
        Fault::KillLgsp => {
            drop(lgsp.take());
            lgsp = Some(hop_process(&pki, "lgsp", "lgsp", &lgsp_text));
        }
        Fault::KillNdxp => {
            drop(ndxp.take());
            tokio::time::sleep(Duration::from_secs(1)).await;
            ndxp = Some(hop_process(&pki, "ndxp", "ndxp", &ndxp_text));
        }
        Fault::FullDisk => {
            if let Some(disk) = &small {
                disk.fill(true);
                tokio::time::sleep(Duration::from_secs(3)).await;
                disk.fill(false);
            }
        }
        Fault::CutBroker => {
            if let Some(b) = &broker {
                b.relay.cut();
                tokio::time::sleep(Duration::from_secs(3)).await;
                b.relay.restore();
            }
        }
        Fault::CutLgspJournal => match &relay {
            Some(relay) => {
                relay.cut();
                tokio::time::sleep(Duration::from_secs(3)).await;
                relay.restore();
            }
            None => {
                assert!(
                    journal_read_only(&sqlite_journal, true),
                    "{what}: the journal file cannot be made read-only here"
                );
                tokio::time::sleep(Duration::from_secs(3)).await;
                journal_read_only(&sqlite_journal, false);
            }
        },
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    go.store(false, Ordering::Release);
    let accepted = collect(senders).await;
    every_accepted_packet_is_at_the_emulator_once(&pki, emu_addr, emu_admin, &accepted, &what)
        .await;
    // Both journals verify; the LGSP's month is at the national endpoint, message for message.
    for hop in ["lgsp", "ndxp"] {
        let (code, out) = journal_of(&pki, hop, &["verify"]);
        assert_eq!(code, Some(0), "{what}: {hop}'s journal: {out}");
    }
    // Every outcome is written before the report reads the journal: the deliveries left are settled.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, month, _) = sh("date -u -d '+7 hours' +%Y-%m");
        let (code, out) = journal_of(
            &pki,
            "lgsp",
            &["report", "--month", month.trim(), "--end-to-end"],
        );
        let row = out
            .lines()
            .find(|l| l.starts_with("lgsp ") && l.contains("HoSoCBCCVC"))
            .unwrap_or_default()
            .to_owned();
        let cells: Vec<&str> = row.split_whitespace().collect();
        // received delivered rejected pending failed
        let settled = cells.get(5).is_some_and(|p| *p == "0") && cells.get(6) == Some(&"0");
        if code == Some(0) && settled {
            let delivered: usize = cells.get(4).and_then(|d| d.parse().ok()).unwrap_or(0);
            assert_eq!(
                delivered,
                accepted.len(),
                "{what}: the report's delivered against the packets acknowledged\n{out}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the report never settled\n{out}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The agency's own list, reconciled end to end through the LGSP: every packet delivered, none lost.
    let mut sent = String::from("idempotency_key,sha256,message_id\n");
    for (key, id) in &accepted {
        sent.push_str(&format!("{key},{},{id}\n", sha256(&packet(key))));
    }
    write(pki.dir(), "sent.csv", &sent);
    let out = block(|| {
        std::process::Command::new(BIN)
            .args([
                "reconcile",
                "--url",
                &format!("https://localhost:{lgsp_port}/lgsp/v1"),
                "--cert",
                &format!("{AGENCY_OK}.pem"),
                "--key",
                &format!("{AGENCY_OK}.key"),
                "--ca",
                "ca.pem",
                "--api-key",
                KEY_H29,
                "--from",
                "2000-01-01",
                "--to",
                "2100-01-01",
                "--sent",
                "sent.csv",
                "--end-to-end",
            ])
            .current_dir(pki.dir())
            .output()
            .expect("reconcile")
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let n = accepted.len();
    assert!(
        out.status.success()
            && stdout.ends_with(&format!(
                "{n} sent: {n} delivered, 0 pending, 0 rejected, 0 failed, 0 changed, 0 missing, 0 lost; 0 unexpected\n"
            )),
        "{what}: reconcile\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    if let Some(b) = broker {
        assert_eq!(b.dead_lettered().await, 0, "{what}: packets dead-lettered");
        drop((lgsp, ndxp));
        b.drop_now().await;
    } else {
        drop((lgsp, ndxp));
    }
    eprintln!("{what}: clean");
    drop(small);
    for db in [lgsp_db, ndxp_db].into_iter().flatten() {
        db.drop_now().await;
    }
    Some(())
}

/// The runs CI makes; `LGSP_CRASH_MATRIX=full` makes every fault on both route kinds and both stores,
/// `LGSP_CRASH_MATRIX_FAULT` keeps one fault's, and `LGSP_CRASH_MATRIX_RUNS=N` repeats them.
fn matrix() -> Vec<(Fault, bool, bool)> {
    let full = std::env::var("LGSP_CRASH_MATRIX").is_ok_and(|v| v == "full");
    let mut runs = Vec::new();
    for fault in [
        Fault::KillLgsp,
        Fault::KillNdxp,
        Fault::CutLgspJournal,
        Fault::FullDisk,
        Fault::CutBroker,
    ] {
        for queued in [false, true] {
            for postgres in [false, true] {
                runs.push((fault, queued, postgres));
            }
        }
    }
    if !full {
        // The ones the other tests here do not already make (they kill the LGSP under a queued route on both
        // stores): the NDXP killed under each kind of route, the LGSP's journal cut.
        runs = vec![
            (Fault::KillNdxp, true, false),
            (Fault::KillNdxp, false, true),
            (Fault::CutLgspJournal, true, true),
            (Fault::CutBroker, false, true),
        ];
    }
    // `LGSP_CRASH_MATRIX_FAULT=FullDisk` keeps one fault's runs.
    if let Ok(only) = std::env::var("LGSP_CRASH_MATRIX_FAULT") {
        runs.retain(|(f, _, _)| format!("{f:?}") == only);
    }
    let times: usize = std::env::var("LGSP_CRASH_MATRIX_RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    runs.iter()
        .copied()
        .cycle()
        .take(runs.len() * times)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_crash_matrix_loses_nothing_and_stores_nothing_twice() {
    for (fault, queued, postgres) in matrix() {
        if crash_run(fault, queued, postgres).await.is_none() {
            eprintln!("skipped: {fault:?} (the reason is above)");
        }
    }
}
