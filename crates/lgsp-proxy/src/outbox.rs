//! Store-and-forward: the delivery workers of one hop. They claim due packets from the journal's outbox (leased,
//! so replicas sharing one PostgreSQL never take the same packet, and a crashed replica's are taken back when its
//! lease ends), replay each through the hop's own [`Forward`] — the same upstream, rewrite, trial routing, hop
//! headers and timeout as a direct delivery — and journal how it ended: delivered (2xx), rejected for good (any
//! other 4xx, with the upstream's problem), or due again after an exponential backoff with jitter (5xx, 408, 429
//! honouring Retry-After, and every failure to reach the upstream), until `delivery.max_age` expires it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, header};
use lgsp_auth::Caller;
use lgsp_config::{DeliveryConfig, KeyKind, RouteConfig};
use lgsp_journal::{Claimed, Journal, Outcome, Status, now_us};
use lgsp_problem::{BoxProblem, Class};
use prometheus::IntCounter;
use tokio::sync::{Notify, watch};
use tower::Service;

use crate::body::{Body, full, read_body};
use crate::forward::Forward;
use crate::headers::{HopPath, MessageId, TraceContext};
use crate::hop::HopContext;
use crate::journal::{ANSWER_LIMIT, problem_receipt, status_of};
use crate::route::{Route, RouteTable};

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

/// How one attempt ended.
#[derive(Debug, PartialEq)]
pub(crate) enum Verdict {
    /// Delivered or rejected for good: the outcome to journal.
    Done {
        status: Status,
        upstream_status: Option<u16>,
        receipt: Option<String>,
        detail: Option<String>,
    },
    /// To try again, not before `hint` when the upstream said so (Retry-After).
    Retry {
        detail: String,
        upstream_status: Option<u16>,
        hint: Option<Duration>,
    },
}

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

/// Retry-After in seconds (the HTTP-date form is read as no hint), at most a day.
fn retry_after(h: &HeaderMap) -> Option<Duration> {
    h.get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s.min(86_400)))
}

/// The request the hop would have forwarded at once, rebuilt from the journal.
fn rebuild(c: &Claimed, route: &Arc<Route>) -> Result<Request<Body>, String> {
    let m = &c.message;
    let r = m
        .request
        .as_ref()
        .ok_or("the journal holds no request to replay")?;
    let mut req = Request::builder()
        .method(r.method.as_str())
        .uri(r.path.as_str())
        .body(full(c.body.clone()))
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
        trace.insert(crate::headers::TRACEPARENT, v);
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

/// Reads what the upstream answered into a verdict.
pub(crate) async fn judge(answer: Result<Response<Body>, BoxProblem>, within: Duration) -> Verdict {
    match answer {
        Ok(resp) => {
            let code = resp.status();
            let hint = retry_after(resp.headers());
            let body =
                tokio::time::timeout(within, read_body(resp.into_body(), ANSWER_LIMIT)).await;
            let receipt = match body {
                Ok(Ok(b)) => Some(String::from_utf8_lossy(&b).into_owned()),
                _ => None,
            };
            match status_of(code) {
                Status::Failed => Verdict::Retry {
                    detail: format!("upstream answered {code}"),
                    upstream_status: Some(code.as_u16()),
                    hint: (code == StatusCode::TOO_MANY_REQUESTS
                        || code == StatusCode::SERVICE_UNAVAILABLE)
                        .then_some(hint)
                        .flatten(),
                },
                Status::Delivered if receipt.is_none() => Verdict::Retry {
                    detail: format!(
                        "upstream answered {code} but its answer broke or was too long to keep"
                    ),
                    upstream_status: Some(code.as_u16()),
                    hint: None,
                },
                status => Verdict::Done {
                    status,
                    upstream_status: Some(code.as_u16()),
                    receipt,
                    detail: None,
                },
            }
        }
        // Refused here for good (a trial packet on a route that no longer takes trial traffic).
        Err(p) if p.class() == Class::Client => Verdict::Done {
            status: Status::Rejected,
            upstream_status: Some(p.status().as_u16()),
            receipt: Some(problem_receipt(&p)),
            detail: Some(p.to_string()),
        },
        Err(p) => Verdict::Retry {
            detail: p.to_string(),
            upstream_status: None,
            hint: None,
        },
    }
}

/// One hop's delivery workers.
pub struct Outbox {
    journal: Journal,
    hop: String,
    /// This process's lease owner name: unique per start, so a restarted process never mistakes its
    /// predecessor's leases for its own.
    owner: Arc<str>,
    target: LiveTarget,
    in_flight: Arc<AtomicUsize>,
    done: Arc<Notify>,
}

/// How often the outbox is polled when nothing told this process of a new packet (another replica queued it, or
/// a retry fell due).
const POLL: Duration = Duration::from_millis(500);

impl Outbox {
    pub fn new(journal: Journal, hop: &str, target: LiveTarget) -> Outbox {
        let mut b = [0u8; 6];
        let _ = getrandom::fill(&mut b);
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        Outbox {
            journal,
            hop: hop.to_owned(),
            owner: Arc::from(format!(
                "{}:{}:{}",
                host.trim(),
                std::process::id(),
                hex::encode(b)
            )),
            target,
            in_flight: Arc::new(AtomicUsize::new(0)),
            done: Arc::new(Notify::new()),
        }
    }

    /// Runs the workers until `shutdown`; deliveries under way finish (or their leases end) on their own.
    pub fn spawn(self, mut shutdown: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                let target = self.target.load_full();
                let free = target
                    .settings
                    .workers
                    .saturating_sub(self.in_flight.load(Ordering::Acquire));
                let claimed = if free == 0 {
                    Vec::new()
                } else {
                    let limit = u32::try_from(free).unwrap_or(u32::MAX);
                    match self
                        .journal
                        .claim(&self.hop, &self.owner, target.settings.lease, limit)
                        .await
                    {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::warn!(hop = %self.hop, error = %e, "outbox: claiming deliveries failed; trying again");
                            Vec::new()
                        }
                    }
                };
                let idle = claimed.is_empty();
                for c in claimed {
                    self.in_flight.fetch_add(1, Ordering::AcqRel);
                    let work = Delivery {
                        journal: self.journal.clone(),
                        owner: self.owner.clone(),
                        target: target.clone(),
                    };
                    let (in_flight, done) = (self.in_flight.clone(), self.done.clone());
                    tokio::spawn(async move {
                        work.deliver(c).await;
                        in_flight.fetch_sub(1, Ordering::AcqRel);
                        done.notify_one();
                    });
                }
                if !idle && free > 0 {
                    continue;
                }
                tokio::select! {
                    _ = crate::listener::stopped(&mut shutdown) => return,
                    _ = self.journal.queued().notified(), if free > 0 => {}
                    _ = self.done.notified(), if free == 0 => {}
                    _ = tokio::time::sleep(POLL) => {}
                }
            }
        })
    }
}

/// One claimed packet on its way.
struct Delivery {
    journal: Journal,
    owner: Arc<str>,
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
        if now_us() >= deadline {
            let last = m.detail.as_deref().unwrap_or("no attempt answered");
            let detail = format!(
                "not delivered within delivery.max_age ({}) after {} attempts; last: {last}",
                lgsp_config::human(t.settings.max_age),
                m.attempts.saturating_sub(1)
            );
            self.done(
                &m.message_id,
                index,
                Status::Expired,
                None,
                None,
                Some(detail),
            )
            .await;
            return;
        }
        let verdict = match &route {
            None => Verdict::Retry {
                detail: format!(
                    "route {} is not configured at this hop now; the packet waits for it",
                    m.route
                ),
                upstream_status: None,
                hint: None,
            },
            Some(route) => match rebuild(&c, route) {
                Err(e) => Verdict::Retry {
                    detail: e,
                    upstream_status: None,
                    hint: None,
                },
                Ok(req) => {
                    // Forward is always ready; its future is one concrete boxed type (see `step::unnamed`).
                    let answer = t.forward.clone().call(req).await;
                    judge(answer, route.config.timeout).await
                }
            },
        };
        match verdict {
            Verdict::Done {
                status,
                upstream_status,
                receipt,
                detail,
            } => {
                self.done(
                    &m.message_id,
                    index,
                    status,
                    upstream_status,
                    receipt,
                    detail,
                )
                .await
            }
            Verdict::Retry {
                detail,
                upstream_status,
                hint,
            } => {
                let wait = backoff(&t.settings, m.attempts, hint);
                let at = now_us()
                    .saturating_add(i64::try_from(wait.as_micros()).unwrap_or(i64::MAX))
                    .min(deadline);
                let note = match upstream_status {
                    Some(s) => format!("attempt {}: {detail} ({s})", m.attempts),
                    None => format!("attempt {}: {detail}", m.attempts),
                };
                if let Some(i) = index {
                    t.deliveries.count(i, "retried");
                }
                tracing::info!(hop = %t.hop.name, message_id = %m.message_id, retry_in = ?wait, "{note}");
                if let Err(e) = self
                    .journal
                    .retry_at(&t.hop.name, &m.message_id, &self.owner, at, &note)
                    .await
                {
                    tracing::warn!(message_id = %m.message_id, error = %e, "outbox: the retry could not be journalled; the lease will end and it is tried again");
                }
            }
        }
    }

    async fn done(
        &self,
        message_id: &str,
        index: Option<usize>,
        status: Status,
        upstream_status: Option<u16>,
        receipt: Option<String>,
        detail: Option<String>,
    ) {
        let t = &self.target;
        if let Some(i) = index {
            t.deliveries.count(i, status.as_str());
        }
        let outcome = Outcome {
            hop: t.hop.name.to_string(),
            message_id: message_id.to_owned(),
            status,
            upstream_status,
            receipt,
            detail,
            owner: Some(self.owner.to_string()),
        };
        match self.journal.finish(outcome).await {
            Ok(()) => {}
            // Another worker took the packet back after this one's lease ended: its outcome stands.
            Err(lgsp_journal::JournalError::UnknownMessage(_)) => {
                tracing::warn!(
                    message_id,
                    "outbox: the lease ended before the outcome was written; the worker that took it over decides"
                );
            }
            Err(e) => {
                tracing::warn!(message_id, error = %e, "outbox: the outcome could not be journalled; the lease will end and it is tried again (the next hop answers a repeat from its own journal)");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::{ForwardError, UpstreamFailure};

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
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(
            header::RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2026 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), None);
    }

    fn answer(
        status: u16,
        headers: &[(&'static str, &'static str)],
        body: &'static str,
    ) -> Result<Response<Body>, BoxProblem> {
        let mut r = Response::new(full(body));
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        for (n, v) in headers {
            r.headers_mut().insert(*n, HeaderValue::from_static(v));
        }
        Ok(r)
    }

    #[tokio::test]
    async fn an_answer_decides_delivered_rejected_or_again() {
        let within = Duration::from_secs(5);
        match judge(answer(200, &[], "{\"receipt_id\":\"r\"}"), within).await {
            Verdict::Done {
                status, receipt, ..
            } => {
                assert_eq!(
                    (status, receipt.as_deref()),
                    (Status::Delivered, Some("{\"receipt_id\":\"r\"}"))
                )
            }
            v => panic!("{v:?}"),
        }
        match judge(answer(422, &[], "{\"code\":\"schema.invalid\"}"), within).await {
            Verdict::Done {
                status,
                upstream_status,
                receipt,
                ..
            } => {
                assert_eq!((status, upstream_status), (Status::Rejected, Some(422)));
                assert!(receipt.unwrap().contains("schema.invalid"));
            }
            v => panic!("{v:?}"),
        }
        assert_eq!(
            judge(answer(429, &[("retry-after", "30")], ""), within).await,
            Verdict::Retry {
                detail: "upstream answered 429 Too Many Requests".into(),
                upstream_status: Some(429),
                hint: Some(Duration::from_secs(30)),
            }
        );
        assert!(matches!(
            judge(answer(500, &[], ""), within).await,
            Verdict::Retry { hint: None, .. }
        ));
        let down: BoxProblem = ForwardError::Upstream {
            route: Arc::from("HoSoCBCCVC"),
            upstream: "localhost:1".into(),
            kind: UpstreamFailure::Connect,
            message: "refused".into(),
        }
        .into();
        assert!(matches!(
            judge(Err(down), within).await,
            Verdict::Retry {
                upstream_status: None,
                ..
            }
        ));
        let trial: BoxProblem = ForwardError::TrialNotOffered {
            route: Arc::from("HoSoCBCCVC"),
        }
        .into();
        match judge(Err(trial), within).await {
            Verdict::Done {
                status, receipt, ..
            } => {
                assert_eq!(status, Status::Rejected);
                assert!(receipt.unwrap().contains("trial.not_offered"));
            }
            v => panic!("{v:?}"),
        }
    }
}
