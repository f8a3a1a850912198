//! What bounds one client connection once its handshake is done: the time to its first byte, its quiet time
//! between requests, the time each request body may take, and the share of the listener its certificate identity
//! may hold. The listener drives a connection with these; the stack never sees them.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

pub use lgsp_hop::body::BodyTimeout;

use bytes::Bytes;
use http::StatusCode;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use lgsp_problem::{Class, Problem};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use lgsp_hop::body::BoxError;

/// How long, and how much, a refused request's unread body is still read and discarded so that the client, still
/// sending, reads the answer instead of a reset (nginx's lingering close).
const LINGER_TIME: Duration = Duration::from_secs(5);
const LINGER_BYTES: usize = 16 * 1024 * 1024;

/// What a connection is doing, as its watcher needs to know: whether a byte has arrived, how many requests are in
/// flight. Changes wake the watcher.
#[derive(Default)]
pub(crate) struct Activity {
    read_any: AtomicBool,
    in_flight: AtomicUsize,
    answered: AtomicUsize,
    changed: Notify,
}

/// A request in flight on its connection, from its head until its answer has been sent (or dropped).
pub(crate) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.answered.fetch_add(1, Ordering::AcqRel);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_waiters();
    }
}

/// An answer's body, holding its request's [`InFlight`] until the body has been sent or dropped.
pub(crate) struct Answer<B> {
    body: B,
    _in_flight: InFlight,
}

impl<B> Answer<B> {
    pub(crate) fn new(body: B, in_flight: InFlight) -> Self {
        Answer {
            body,
            _in_flight: in_flight,
        }
    }
}

impl<B: HttpBody + Unpin> HttpBody for Answer<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Why a connection's watcher asks it to close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Quiet {
    /// Nothing arrived within `first_byte_timeout` of the handshake.
    NoFirstByte,
    /// No request was in flight for `idle_timeout`.
    Idle,
}

impl Quiet {
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Quiet::NoFirstByte => "first_byte_timeout",
            Quiet::Idle => "idle_timeout",
        }
    }
}

impl Activity {
    pub(crate) fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_waiters();
        InFlight(self.clone())
    }

    fn read(&self) {
        if !self.read_any.load(Ordering::Relaxed) {
            self.read_any.store(true, Ordering::Release);
            self.changed.notify_waiters();
        }
    }

    /// Resolves once a request on the connection has been answered.
    pub(crate) async fn answered(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.answered.load(Ordering::Acquire) > 0 {
                return;
            }
            changed.await;
        }
    }

    /// Resolves when the connection has been quiet too long: no byte within `first_byte` of now, or, after that,
    /// no request in flight for `idle`.
    pub(crate) async fn quiet(&self, first_byte: Duration, idle: Duration) -> Quiet {
        let deadline = Instant::now() + first_byte;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.read_any.load(Ordering::Acquire) {
                break;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Quiet::NoFirstByte;
            }
        }
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.in_flight.load(Ordering::Acquire) > 0 {
                changed.await;
            } else if tokio::time::timeout(idle, changed).await.is_err()
                && self.in_flight.load(Ordering::Acquire) == 0
            {
                return Quiet::Idle;
            }
        }
    }
}

/// Set on a listener state when a reload replaces it, so the connections served under it look again.
#[derive(Default)]
pub struct Retired {
    flag: AtomicBool,
    notify: Notify,
}

impl Retired {
    pub fn retire(&self) {
        self.flag.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    /// Resolves once retired (at once if it already is).
    pub async fn wait(&self) {
        let notified = self.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if !self.flag.load(Ordering::Acquire) {
            notified.await;
        }
    }
}

/// The connection's byte stream, telling its [`Activity`] when the first byte arrives.
pub(crate) struct Watched<I> {
    io: I,
    activity: Arc<Activity>,
}

impl<I> Watched<I> {
    pub(crate) fn new(io: I, activity: Arc<Activity>) -> Self {
        Watched { io, activity }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read();
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The body of a request as the stack reads it: it fails with [`BodyTimeout`] once its deadline passes, and, when
/// dropped unread on HTTP/1 (a request refused before its body was needed), it is read and discarded in the
/// background within [`LINGER_TIME`] and [`LINGER_BYTES`], so the client reads its answer rather than a reset.
pub(crate) struct RequestBody {
    inner: Option<Incoming>,
    deadline: Option<Pin<Box<Sleep>>>,
    after: Duration,
    linger: bool,
}

impl RequestBody {
    pub(crate) fn new(inner: Incoming, after: Duration, linger: bool) -> Self {
        // A body already complete (most GETs) needs no timer.
        let deadline = (!inner.is_end_stream()).then(|| Box::pin(tokio::time::sleep(after)));
        RequestBody {
            inner: Some(inner),
            deadline,
            after,
            linger,
        }
    }
}

impl HttpBody for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        if let Some(deadline) = this.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            // Given up: dropping the body makes the connection close after the answer.
            this.inner = None;
            return Poll::Ready(Some(Err(BodyTimeout { after: this.after }.into())));
        }
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(None) => {
                this.inner = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(r)) => Poll::Ready(Some(r.map_err(Into::into))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint)
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        let Some(body) = self.inner.take() else {
            return;
        };
        if !self.linger || body.is_end_stream() {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(linger(body));
        }
    }
}

/// Reads and discards what is left of a refused request's body, within bounds.
async fn linger(mut body: Incoming) {
    let _ = tokio::time::timeout(LINGER_TIME, async {
        let mut left = LINGER_BYTES;
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref() {
                if data.len() >= left {
                    return;
                }
                left -= data.len();
            }
        }
    })
    .await;
}

/// Connections counted per key across the listener: per certificate identity once served, per source address
/// while handshaking.
#[derive(Default)]
pub(crate) struct Holders {
    by_identity: Mutex<HashMap<String, usize>>,
}

/// One connection counted against its key until dropped.
pub(crate) struct Held {
    holders: Arc<Holders>,
    identity: String,
}

impl Holders {
    /// Counts one more connection for `identity` (or address), unless it already holds `cap`.
    pub(crate) fn admit(self: &Arc<Self>, identity: &str, cap: usize) -> Option<Held> {
        let mut map = self
            .by_identity
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let n = map.entry(identity.to_owned()).or_insert(0);
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(Held {
            holders: self.clone(),
            identity: identity.to_owned(),
        })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut map = self
            .holders
            .by_identity
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.identity) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.identity);
            }
        }
    }
}

/// The answer on a connection its identity may not hold.
#[derive(Debug, thiserror::Error)]
#[error("{identity} already holds {cap} connections to this hop")]
pub struct TooManyConnections {
    pub identity: String,
    pub cap: usize,
}

impl Problem for TooManyConnections {
    fn status(&self) -> StatusCode {
        StatusCode::TOO_MANY_REQUESTS
    }

    fn code(&self) -> &'static str {
        "overload.too_many_connections"
    }

    fn class(&self) -> Class {
        Class::Client
    }

    fn detail(&self) -> String {
        format!(
            "This certificate already holds {} connections to this hop (max_connections_per_agency); reuse them \
             (keep-alive, HTTP/2) or close idle ones, then retry.",
            self.cap
        )
    }

    fn headers(&self) -> Vec<(http::HeaderName, http::HeaderValue)> {
        // The connection closes after this answer (HTTP/2: GOAWAY); the listener sees to it.
        vec![(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("1"),
        )]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_quiet_without_a_first_byte_or_between_requests() {
        let a = Arc::new(Activity::default());
        let first = Duration::from_secs(10);
        let idle = Duration::from_secs(60);
        assert_eq!(a.quiet(first, idle).await, Quiet::NoFirstByte);

        // A byte arrives, a request runs for two minutes: not idle while it runs, idle a minute after it ends.
        let a = Arc::new(Activity::default());
        a.read();
        let request = a.begin();
        let started = Instant::now();
        let watcher = tokio::spawn({
            let a = a.clone();
            async move { a.quiet(first, idle).await }
        });
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert!(!watcher.is_finished());
        drop(request);
        assert_eq!(watcher.await.unwrap(), Quiet::Idle);
        assert_eq!(started.elapsed(), Duration::from_secs(180));
    }

    fn held(h: &Holders, identity: &str) -> usize {
        h.by_identity
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(identity)
            .copied()
            .unwrap_or(0)
    }

    #[test]
    fn an_identity_holds_at_most_its_cap_and_gives_slots_back() {
        let h = Arc::new(Holders::default());
        let a1 = h.admit("000.00.00.H29", 2).unwrap();
        let _a2 = h.admit("000.00.00.H29", 2).unwrap();
        assert!(h.admit("000.00.00.H29", 2).is_none());
        // Another identity is counted apart.
        let _b = h.admit("000.00.00.H26", 2).unwrap();
        drop(a1);
        assert_eq!(held(&h, "000.00.00.H29"), 1);
        assert!(h.admit("000.00.00.H29", 2).is_some());
    }

    #[test]
    fn the_refusal_says_what_to_do() {
        let p = TooManyConnections {
            identity: "000.00.00.H29".into(),
            cap: 4,
        };
        assert_eq!(p.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(p.detail().contains("max_connections_per_agency"));
        assert!(
            p.headers()
                .iter()
                .any(|(n, _)| n == http::header::RETRY_AFTER)
        );
    }
}
