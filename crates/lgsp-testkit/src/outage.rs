//! Outages a test can cause and end: a TCP relay it cuts and restores (a database or an upstream that stays up
//! for everyone else), and a SQLite journal held locked by another writer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A TCP relay to `target` on a port of its own. `cut` closes every relayed connection and refuses new ones until
/// `restore`; the listening port stays the same throughout.
pub struct Relay {
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    /// Bumped by every cut: relayed connections end when it changes.
    cuts: watch::Sender<u64>,
}

impl Relay {
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("relay port");
        let addr = listener.local_addr().expect("relay address");
        let up = Arc::new(AtomicBool::new(true));
        let (cuts, _) = watch::channel(0u64);
        let (up2, cuts2) = (up.clone(), cuts.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up2.load(Ordering::Acquire) {
                    drop(inbound);
                    continue;
                }
                let mut cut = cuts2.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Relay { addr, up, cuts }
    }

    /// Every connection through the relay dropped, new ones refused (closed at once).
    pub fn cut(&self) {
        self.up.store(false, Ordering::Release);
        self.cuts.send_modify(|n| *n += 1);
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::Release);
    }
}

/// `text` with its journal written to chain `chain`: each replica on one PostgreSQL writes a chain of its own (one
/// host's replicas would otherwise share the host's name).
pub fn with_chain(text: &str, chain: &str) -> String {
    text.replacen(
        "[journal]\n",
        &format!("[journal]\nchain = \"{chain}\"\n"),
        1,
    )
}

/// The `[journal] url` a config text names.
pub fn journal_url_in(text: &str) -> String {
    text.lines()
        .find_map(|l| {
            l.strip_prefix("url = \"sqlite://")
                .map(|rest| format!("sqlite://{}", rest.trim_end_matches('"')))
        })
        .expect("the config names a sqlite journal")
}

/// Another writer holding a SQLite journal's write lock (`BEGIN EXCLUSIVE`): the gateway's appends wait its busy
/// timeout and fail, as on a store that cannot be written. Released when dropped.
pub struct JournalLock {
    conn: Option<sqlx::pool::PoolConnection<sqlx::Any>>,
}

impl JournalLock {
    pub async fn hold(url: &str) -> JournalLock {
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(url).await.expect("open the journal");
        let mut conn = pool.acquire().await.expect("a connection");
        sqlx::query("BEGIN EXCLUSIVE")
            .execute(&mut *conn)
            .await
            .expect("the journal's write lock");
        JournalLock { conn: Some(conn) }
    }

    /// Runs `sql` under the held lock (a test's raw change, kept by [`JournalLock::commit`]).
    pub async fn execute(&mut self, sql: &str) {
        if let Some(c) = self.conn.as_mut() {
            sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(&mut **c)
                .await
                .expect("raw SQL on the journal");
        }
    }

    pub async fn commit(mut self) {
        if let Some(mut c) = self.conn.take() {
            sqlx::query("COMMIT")
                .execute(&mut *c)
                .await
                .expect("commit");
        }
    }

    pub async fn release(mut self) {
        if let Some(mut c) = self.conn.take() {
            let _ = sqlx::query("ROLLBACK").execute(&mut *c).await;
        }
    }
}

/// A database of its own on the test PostgreSQL server (`LGSP_TEST_POSTGRES_URL`), for one test; `None`, with the
/// reason printed, when no server is configured.
pub struct PgDatabase {
    /// The database's URL on the server.
    pub url: String,
    server: String,
    name: String,
}

impl PgDatabase {
    pub async fn create(what: &str) -> Option<PgDatabase> {
        let Ok(server) = std::env::var("LGSP_TEST_POSTGRES_URL") else {
            eprintln!("skipped {what}: LGSP_TEST_POSTGRES_URL is not set (.ci/run sets it)");
            return None;
        };
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let name = format!(
            "lgsp_test_{}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            time::OffsetDateTime::now_utc().unix_timestamp_nanos() % 1_000_000_000
        );
        admin(&server, &format!("CREATE DATABASE {name}")).await;
        let url = match server.rsplit_once('/') {
            Some((s, _)) => format!("{s}/{name}"),
            None => format!("{server}/{name}"),
        };
        Some(PgDatabase { url, server, name })
    }

    /// The URL through `relay` (which must lead to the server) instead of straight to the server.
    pub fn via(&self, relay: &Relay) -> String {
        let rest = self.url.split_once("://").map_or("", |(_, r)| r);
        let (user, rest) = rest.split_once('@').map_or(("", rest), |(u, r)| (u, r));
        let path = rest.split_once('/').map_or("", |(_, p)| p);
        let at = if user.is_empty() {
            String::new()
        } else {
            format!("{user}@")
        };
        format!("postgres://{at}{}/{path}", relay.addr)
    }

    /// The server's address, for a relay in front of it.
    pub fn server_addr(&self) -> SocketAddr {
        let rest = self.url.split_once("://").map_or("", |(_, r)| r);
        let host = rest.split_once('@').map_or(rest, |(_, r)| r);
        let host = host.split('/').next().unwrap_or("127.0.0.1:5432");
        let host = if host.contains(':') {
            host.to_owned()
        } else {
            format!("{host}:5432")
        };
        std::net::ToSocketAddrs::to_socket_addrs(&host.replace("localhost", "127.0.0.1"))
            .ok()
            .and_then(|mut a| a.next())
            .expect("the PostgreSQL server's address")
    }

    pub async fn drop_now(self) {
        admin(
            &self.server,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        )
        .await;
    }
}

async fn admin(server: &str, sql: &str) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(server)
        .await
        .expect("the PostgreSQL test server");
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
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{sql}: {e}"),
        }
    }
}

/// `text` with every packet route (`message_type = …`) delivering from the outbox.
pub fn queued(text: &str) -> String {
    text.lines()
        .map(|l| {
            if l.starts_with("message_type = ") {
                format!("{l}\ndelivery = \"queued\"")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// Makes a SQLite journal's files unwritable (`chattr +i` as root, whom modes do not stop; `chmod a-w`
/// otherwise), or undoes it. False when the file system refuses (the caller skips, saying why).
pub fn journal_read_only(url: &str, read_only: bool) -> bool {
    let path = url.trim_start_matches("sqlite://");
    let path = path.split('?').next().unwrap_or(path);
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    // Not the -shm file: SQLite maps it into memory, and a mapped page the kernel may not write is SIGBUS. The redo
    // log too: its frames are what makes a batch durable.
    ["", "-wal", "-redo"].iter().all(|suffix| {
        let file = format!("{path}{suffix}");
        if !std::path::Path::new(&file).exists() {
            return true;
        }
        let (cmd, arg) = match (root, read_only) {
            (true, true) => ("chattr", "+i"),
            (true, false) => ("chattr", "-i"),
            (false, true) => ("chmod", "a-w"),
            (false, false) => ("chmod", "u+w"),
        };
        std::process::Command::new(cmd)
            .args([arg, &file])
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// A small file system of a test's own (tmpfs; mounting takes root), detached when dropped, even by a failing
/// assertion: a disk a test can fill.
pub struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    /// `None`, with the reason printed, where it cannot be mounted.
    pub fn mount(dir: &std::path::Path, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir_all(dir).ok()?;
        let (ok, _, err) = crate::sh(&format!(
            "mount -t tmpfs -o size={size} tmpfs {}",
            dir.display()
        ));
        if !ok {
            eprintln!("skipped: a file system of the test's own cannot be mounted here ({err})");
            return None;
        }
        Some(SmallDisk(dir.to_owned()))
    }

    /// Fills it to the last byte (`filler` in it), or frees what `fill` took.
    pub fn fill(&self, full: bool) {
        let filler = self.0.join("filler");
        if full {
            crate::sh(&format!(
                "head -c 1000000000 /dev/zero > {}",
                filler.display()
            ));
        } else {
            let _ = std::fs::remove_file(filler);
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        crate::sh(&format!("umount -l {}", self.0.display()));
    }
}
