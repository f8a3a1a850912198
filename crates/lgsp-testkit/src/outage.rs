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

    pub async fn release(mut self) {
        if let Some(mut c) = self.conn.take() {
            let _ = sqlx::query("ROLLBACK").execute(&mut *c).await;
        }
    }
}
