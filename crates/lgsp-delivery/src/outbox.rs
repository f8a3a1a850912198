//! Store-and-forward: the delivery workers of one hop. They take the packets the journal owes: each queued packet
//! handed over with its bytes as its acceptance commits, and otherwise what they claim from the outbox (leased, so
//! replicas sharing one PostgreSQL never take the same packet) — retries fallen due, and deliveries whose process
//! stopped: this chain's at once when it starts again, another replica's when their lease ends, direct ones
//! included. Each is replayed through the hop's own [`Forward`] — the same upstream, rewrite, trial routing, hop
//! headers and timeout as a direct delivery — under its first message id (the next hop knows it), judged by the one
//! judge (`judge.rs`), and journalled: delivered, rejected for good, or — a queued packet — due again after an
//! exponential backoff with jitter until `delivery.max_age` expires it; a direct one taken up again gets one
//! attempt, as its sender would have (failed: a resend under its key tries again).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{HeaderMap, HeaderName, HeaderValue, Request};
use lgsp_auth::Caller;
use lgsp_config::{DeliveryConfig, KeyKind, RouteConfig};
use lgsp_journal::{Claimed, Delivery as Kind, Journal, Outcome, Status, now_us};
use prometheus::IntCounter;
use tokio::sync::{Notify, watch};
use tower::Service;

use crate::judge::{Verdict, judge};
use lgsp_hop::HopContext;
use lgsp_hop::body::{Body, full};
use lgsp_hop::headers::{HopPath, MessageId, TraceContext};
use lgsp_hop::route::{Route, RouteTable};
use lgsp_upstream::forward::Forward;

/// The `outcome` label of `lgsp_deliveries_total`, every value exported from 0.
pub const OUTCOMES: [&str; 5] = ["delivered", "rejected", "failed", "retried", "expired"];

/// `lgsp_deliveries_total{hop,route,outcome}` of one hop, per route (by [`Route::index`]) and outcome.
pub struct Deliveries(Vec<[IntCounter; 5]>);

impl Deliveries {
    pub fn new(hop: &HopContext, routes: &[RouteConfig]) -> Deliveries {
        Deliveries(
            routes
                .iter()
                .map(|r| {
                    OUTCOMES.map(|o| {
                        hop.metrics.deliveries.with_label_values(&[
                            hop.name.as_ref(),
                            r.name.as_str(),
                            o,
                        ])
                    })
                })
                .collect(),
        )
    }

    /// Counts one delivery of route `index` ending as `outcome` (a [`Status`] name, or `retried`).
    pub fn count(&self, index: usize, outcome: &str) {
        let at = OUTCOMES.iter().position(|o| *o == outcome);
        if let (Some(route), Some(at)) = (self.0.get(index), at) {
            route[at].inc();
        }
    }
}

/// What a hop's workers deliver with; swapped whole by a reload, so a delivery uses the routes and upstream
/// identity of the config serving when it starts.
pub struct DeliveryTarget {
    pub hop: Arc<HopContext>,
    pub routes: Arc<RouteTable>,
    pub forward: Forward,
    pub deliveries: Arc<Deliveries>,
    pub settings: DeliveryConfig,
}

pub type LiveTarget = Arc<ArcSwap<DeliveryTarget>>;

/// The wait before attempt `attempts + 1`: `initial` doubled per attempt made, at most `max`, with jitter (a
/// uniform draw from its upper half, so replicas that failed together do not retry together), and never less than
/// the upstream's Retry-After.
pub fn backoff(settings: &DeliveryConfig, attempts: u32, hint: Option<Duration>) -> Duration {
    let doubled = settings
        .initial_backoff
        .saturating_mul(1u32 << attempts.saturating_sub(1).min(20));
    let capped = doubled.min(settings.max_backoff);
    let mut b = [0u8; 4];
    let unit = if getrandom::fill(&mut b).is_ok() {
        f64::from(u32::from_le_bytes(b)) / f64::from(u32::MAX)
    } else {
        1.0
    };
    let jittered = capped.mul_f64(0.5 + unit / 2.0);
    jittered.max(hint.unwrap_or_default())
}

/// The request the hop would have forwarded at once, rebuilt from the journal.
fn rebuild(c: &Claimed, route: &Arc<Route>) -> Result<Request<Body>, String> {
    let m = &c.message;
    let r = m
        .request
        .as_ref()
        .ok_or("the journal holds no request to replay")?;
    let body = c
        .body
        .clone()
        .ok_or("the journal no longer holds the packet's bytes")?;
    let mut req = Request::builder()
        .method(r.method.as_str())
        .uri(r.path.as_str())
        .body(full(body))
        .map_err(|e| format!("the stored request does not rebuild: {e}"))?;
    for (name, value) in &r.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            req.headers_mut().append(n, v);
        }
    }
    let mut trace = HeaderMap::new();
    if let Some(v) = r
        .traceparent
        .as_deref()
        .and_then(|t| HeaderValue::from_str(t).ok())
    {
        trace.insert(lgsp_hop::headers::TRACEPARENT, v);
    }
    let kind = if m.mode == "trial" {
        KeyKind::Trial
    } else {
        KeyKind::Production
    };
    let e = req.extensions_mut();
    e.insert(route.clone());
    e.insert(Caller {
        agency: Arc::from(m.agency.as_str()),
        kind,
        via: r.via.clone(),
    });
    e.insert(MessageId(m.message_id.clone()));
    e.insert(HopPath(r.hops.clone()));
    e.insert(TraceContext::continue_or_start(&trace));
    Ok(req)
}

/// One hop's delivery workers.
pub struct Outbox {
    journal: Journal,
    hop: String,
    target: LiveTarget,
    in_flight: Arc<AtomicUsize>,
    done: Arc<Notify>,
}

/// How often the outbox is polled when nothing told this process of a packet (another replica queued it, a retry
/// fell due, or another process's lease ended).
const POLL: Duration = Duration::from_millis(500);

impl Outbox {
    pub fn new(journal: Journal, hop: &str, target: LiveTarget) -> Outbox {
        Outbox {
            journal,
            hop: hop.to_owned(),
            target,
            in_flight: Arc::new(AtomicUsize::new(0)),
            done: Arc::new(Notify::new()),
        }
    }

    /// Runs the workers until `shutdown`; deliveries under way finish (or their leases end) on their own.
    pub fn spawn(self, mut shutdown: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        let mut handoff = self.journal.handoff(&self.hop);
        tokio::spawn(async move {
            loop {
                let target = self.target.load_full();
                let free = || {
                    target
                        .settings
                        .workers
                        .saturating_sub(self.in_flight.load(Ordering::Acquire))
                };
                // Packets handed over as they committed, then whatever the outbox holds due.
                let mut work = Vec::new();
                while work.len() < free() {
                    match handoff.try_recv() {
                        Some(c) => work.push(c),
                        None => break,
                    }
                }
                let room = free().saturating_sub(work.len());
                if room > 0 {
                    let limit = u32::try_from(room).unwrap_or(u32::MAX);
                    match self
                        .journal
                        .claim(&self.hop, target.settings.lease, limit)
                        .await
                    {
                        Ok(c) => work.extend(c),
                        Err(e) => {
                            tracing::warn!(hop = %self.hop, error = %e, "outbox: claiming deliveries failed; trying again");
                        }
                    }
                }
                let idle = work.is_empty();
                for c in work {
                    self.start(&target, c);
                }
                if !idle && free() > 0 {
                    continue;
                }
                tokio::select! {
                    _ = lgsp_hop::stopped(&mut shutdown) => return,
                    c = handoff.recv(), if free() > 0 => {
                        if let Some(c) = c {
                            self.start(&target, c);
                        }
                    }
                    _ = self.journal.queued().notified(), if free() > 0 => {}
                    _ = self.done.notified(), if free() == 0 => {}
                    _ = tokio::time::sleep(POLL) => {}
                }
            }
        })
    }

    /// One delivery, on a task of its own.
    fn start(&self, target: &Arc<DeliveryTarget>, c: Claimed) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let work = Delivery {
            journal: self.journal.clone(),
            target: target.clone(),
        };
        let (in_flight, done) = (self.in_flight.clone(), self.done.clone());
        tokio::spawn(async move {
            work.deliver(c).await;
            in_flight.fetch_sub(1, Ordering::AcqRel);
            done.notify_one();
        });
    }
}

/// One claimed packet on its way.
struct Delivery {
    journal: Journal,
    target: Arc<DeliveryTarget>,
}

impl Delivery {
    async fn deliver(self, c: Claimed) {
        let t = &self.target;
        let m = &c.message;
        let max_age = i64::try_from(t.settings.max_age.as_micros()).unwrap_or(i64::MAX);
        let deadline = m.accepted_us.saturating_add(max_age);
        let route = t.routes.named(&m.route).cloned();
        let index = route.as_ref().map(|r| r.index);
        let ended = |status, detail: String| Outcome {
            hop: t.hop.name.to_string(),
            message_id: m.message_id.clone(),
            status,
            upstream_status: None,
            receipt: None,
            answer_type: None,
            detail: Some(detail),
            owner: Some(self.journal.owner().to_owned()),
        };
        if m.delivery == Kind::Queued && now_us() >= deadline {
            let last = c.last.as_deref().unwrap_or("no attempt answered");
            let detail = format!(
                "not delivered within delivery.max_age ({}) after {} attempts; last: {last}",
                lgsp_config::human(t.settings.max_age),
                c.attempts.saturating_sub(1)
            );
            return self.done(index, ended(Status::Expired, detail));
        }
        let Some(route) = route else {
            let detail = format!(
                "route {} is not configured at this hop now; the packet waits for it",
                m.route
            );
            return self.again(&c, index, None, deadline, detail).await;
        };
        let req = match rebuild(&c, &route) {
            Ok(r) => r,
            // Nothing to send (a journal whose body or request is gone): it cannot be delivered from here.
            Err(e) => return self.done(index, ended(Status::Failed, e)),
        };
        // Forward is always ready; its future is one concrete boxed type (see `step::unnamed`).
        let answer = t.forward.clone().call(req).await;
        let judged = judge(&t.hop.name, &m.message_id, &route, answer).await;
        match (judged.verdict, m.delivery) {
            // A queued packet waits and is tried again; a direct one taken up after a crash had its attempt.
            (Verdict::Again { after }, Kind::Queued) => {
                let said = judged.detail.unwrap_or_else(|| "no answer".into());
                self.again(&c, index, after, deadline, said).await;
            }
            (verdict, _) => {
                let outcome = Outcome {
                    hop: t.hop.name.to_string(),
                    message_id: m.message_id.clone(),
                    status: verdict.outcome(),
                    upstream_status: judged.upstream_status,
                    receipt: judged.receipt,
                    answer_type: judged.answer_type,
                    detail: judged.detail,
                    owner: Some(self.journal.owner().to_owned()),
                };
                self.done(index, outcome);
            }
        }
    }

    /// Due again after the backoff (not after the packet's deadline), its lease released.
    async fn again(
        &self,
        c: &Claimed,
        index: Option<usize>,
        hint: Option<Duration>,
        deadline: i64,
        detail: String,
    ) {
        let t = &self.target;
        let m = &c.message;
        let wait = backoff(&t.settings, c.attempts, hint);
        let at = now_us()
            .saturating_add(i64::try_from(wait.as_micros()).unwrap_or(i64::MAX))
            .min(deadline);
        let note = format!("attempt {}: {detail}", c.attempts);
        if let Some(i) = index {
            t.deliveries.count(i, "retried");
        }
        tracing::info!(hop = %t.hop.name, message_id = %m.message_id, retry_in = ?wait, "{note}");
        if let Err(e) = self
            .journal
            .retry_at(&t.hop.name, &m.message_id, at, &note)
            .await
        {
            tracing::warn!(message_id = %m.message_id, error = %e, "outbox: the retry could not be journalled; the lease will end and it is tried again");
        }
    }

    /// The outcome handed to the journal without waiting for its commit, so the worker is free for the next packet
    /// at once (an outcome awaited held each worker a commit longer: the outbox fell behind the hop it drains). Until
    /// it is written the delivery stays leased to this process; a crash before leaves it to the next start, which
    /// sends it again under its message id, and the next hop answers that repeat from its own journal. An outcome
    /// whose lease another process took over is not written (the writer logs it): that process decides.
    fn done(&self, index: Option<usize>, outcome: Outcome) {
        let t = &self.target;
        if let Some(i) = index {
            t.deliveries.count(i, outcome.status.as_str());
        }
        self.journal.finish_later(outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> DeliveryConfig {
        lgsp_config::embedded().unwrap().delivery
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_its_cap_and_honours_retry_after() {
        let s = settings();
        for _ in 0..50 {
            let first = backoff(&s, 1, None);
            assert!(
                first >= s.initial_backoff / 2 && first <= s.initial_backoff,
                "{first:?}"
            );
            let fourth = backoff(&s, 4, None);
            assert!(
                fourth >= s.initial_backoff * 4 && fourth <= s.initial_backoff * 8,
                "{fourth:?}"
            );
            let late = backoff(&s, 40, None);
            assert!(
                late >= s.max_backoff / 2 && late <= s.max_backoff,
                "{late:?}"
            );
        }
        let told = Duration::from_secs(600);
        assert_eq!(backoff(&s, 1, Some(told)), told);
        let mut h = HeaderMap::new();
        h.insert(http::header::RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(crate::judge::retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(
            http::header::RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2026 07:28:00 GMT"),
        );
        assert_eq!(crate::judge::retry_after(&h), None);
    }
}
