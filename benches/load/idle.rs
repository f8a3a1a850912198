//! Idle-connection memory: many mTLS connections opened to one server, each served one request and then left
//! open, and the server's resident memory before and after, divided by their number. The connections are held by
//! this process (oha cannot hold connections idle); it only opens them, so it measures nothing of its own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use lgsp_testkit::{AGENCY_OK, TestPki};
use rustls::pki_types::ServerName;
use tokio::sync::Semaphore;

use crate::oha::Protocol;
use crate::servers::Server;

/// Connections opened at once: below the gateway's default `max_handshakes_per_address` (32).
const OPENING_AT_ONCE: usize = 16;

/// One connection held open: the request sender keeps the HTTP/2 connection, the task drives it.
enum Held {
    Http1(
        #[allow(dead_code)] hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
        tokio::task::JoinHandle<()>,
    ),
    Http2(
        #[allow(dead_code)] hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
        tokio::task::JoinHandle<()>,
    ),
}

impl Drop for Held {
    fn drop(&mut self) {
        match self {
            Held::Http1(_, t) | Held::Http2(_, t) => t.abort(),
        }
    }
}

/// Opens one connection, sends `GET /idle` (answered 404 by both servers) and keeps it.
async fn open(
    tls: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    protocol: Protocol,
    headers: Arc<Vec<(String, String)>>,
) -> Result<Held, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let mut req = Request::get("https://localhost/idle");
    for (k, v) in headers.iter() {
        req = req.header(k, v);
    }
    let req = req.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
    let io = TokioIo::new(stream);
    let (answer, held) = if protocol == Protocol::Http2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| e.to_string())?;
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        let answer = sender.send_request(req).await;
        (answer, Held::Http2(sender, task))
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        let answer = sender.send_request(req).await;
        (answer, Held::Http1(sender, task))
    };
    let answer = answer.map_err(|e| e.to_string())?;
    answer
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(held)
}

/// What one server's idle connections cost.
#[derive(Clone, Debug)]
pub struct IdleCost {
    pub connections: usize,
    pub kib_per_connection: f64,
}

/// Opens `n` connections to `server` at `addr` over `protocol`, measures, and closes them.
pub fn measure(
    pki: &TestPki,
    server: &dyn Server,
    addr: SocketAddr,
    protocol: Protocol,
    n: usize,
    headers: &[(&str, &str)],
) -> IdleCost {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let alpn: &[&[u8]] = if protocol == Protocol::Http2 {
        &[b"h2"]
    } else {
        &[b"http/1.1"]
    };
    let tls = Arc::new(pki.client_tls(Some(AGENCY_OK), alpn));
    let headers: Arc<Vec<(String, String)>> = Arc::new(
        headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    );
    let settle = || std::thread::sleep(Duration::from_secs(2));
    settle();
    let before = server.rss_kib();
    let held = rt.block_on(async {
        let gate = Arc::new(Semaphore::new(OPENING_AT_ONCE));
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let (gate, tls, headers) = (gate.clone(), tls.clone(), headers.clone());
                tokio::spawn(async move {
                    let _permit = gate.acquire_owned().await;
                    open(tls, addr, protocol, headers).await
                })
            })
            .collect();
        let mut held = Vec::with_capacity(n);
        for t in tasks {
            match t.await {
                Ok(Ok(h)) => held.push(h),
                Ok(Err(e)) => panic!("idle connection {} failed: {e}", held.len()),
                Err(e) => panic!("idle connection task: {e}"),
            }
        }
        held
    });
    settle();
    let after = server.rss_kib();
    let opened = held.len();
    drop(held);
    rt.shutdown_timeout(Duration::from_secs(5));
    IdleCost {
        connections: opened,
        kib_per_connection: after.saturating_sub(before) as f64 / opened.max(1) as f64,
    }
}
