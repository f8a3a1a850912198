//! Broker sources (`[[consumer]]`): one task per consumer reads its JetStream durable consumer or RabbitMQ queue and
//! delivers each packet to its route's upstream through the hop's own [`Forward`](lgsp_upstream::forward::Forward) — mTLS as
//! the hop, its hop headers, its timeout — journalled as a direct delivery of that hop under the message id the
//! packet carries. The broker is acknowledged only once the upstream took the packet, or refused it for good and
//! the packet went to the dead-letter target with the reason; anything else (the upstream out of reach, 5xx, the
//! journal unavailable) has the broker deliver it again after the outbox's backoff. A packet handed out again after a
//! crash finds its message id in the journal: already delivered, it is acknowledged without a second delivery;
//! still in progress, it is delivered again under the same id, which the upstream takes as the same delivery.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Request, header};
use lgsp_auth::Caller;
use lgsp_broker::{Brokers, ClientIdentity, Incoming, Publication, Source};
use lgsp_config::{ConsumerConfig, KeyKind};
use lgsp_journal::{Accepted, Admission, Delivery, Journal, Outcome, Status};
use prometheus::{IntCounter, IntGauge};
use sha2::{Digest, Sha256};
use tokio::sync::{Semaphore, watch};
use tower::Service;

use crate::judge::{Verdict, judge};
use crate::outbox::{LiveTarget, backoff};
use lgsp_hop::body::full;
use lgsp_hop::headers::{self, HopPath, MessageId, TraceContext};

/// `lgsp_consumer_packets_total{consumer,outcome}`, every outcome exported from 0.
pub const OUTCOMES: [&str; 5] = [
    "delivered",
    "duplicate",
    "retried",
    "dead_lettered",
    "unreadable",
];

/// The header that tells the dead-letter target why a packet is there.
pub const DEAD_REASON: &str = "x-lgsp-dead-reason";

/// How often the lag gauge is read from the broker.
const LAG_EVERY: Duration = Duration::from_secs(5);

/// The wait before opening a source again after it failed or ended.
const REOPEN: Duration = Duration::from_secs(1);

struct Counters {
    by_outcome: Vec<IntCounter>,
    lag: IntGauge,
}

impl Counters {
    fn count(&self, outcome: &str) {
        if let Some(i) = OUTCOMES.iter().position(|o| *o == outcome)
            && let Some(c) = self.by_outcome.get(i)
        {
            c.inc();
        }
    }
}

/// One `[[consumer]]` at work.
pub struct Consumer {
    config: ConsumerConfig,
    journal: Journal,
    target: LiveTarget,
    identity: Option<ClientIdentity>,
    brokers: Brokers,
    counters: Arc<Counters>,
}

/// What one packet carried that a delivery needs.
struct Carried {
    message_id: String,
    agency: String,
    mode: KeyKind,
    hops: HopPath,
    trace: TraceContext,
    content_type: Option<String>,
}

/// Reads the packet's identity from its headers, or says why it cannot be delivered.
fn carried(m: &Incoming) -> Result<Carried, String> {
    let message_id = m
        .header(headers::MESSAGE_ID)
        .map(str::to_owned)
        .or_else(|| m.message_id.clone())
        .filter(|id| !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or("the packet carries no message id (x-lgsp-message-id, Nats-Msg-Id or message_id), or one that is not 1–128 printable characters")?;
    let agency = m
        .header(headers::CLIENT)
        .filter(|a| lgsp_config::valid_agency_code(a))
        .ok_or("the packet names no agency (x-lgsp-client) with a valid agency code")?
        .to_owned();
    let mode = match m.header(headers::MODE) {
        None | Some("production") => KeyKind::Production,
        Some("trial") => KeyKind::Trial,
        Some(other) => {
            return Err(format!(
                "x-lgsp-mode `{other}` is neither production nor trial"
            ));
        }
    };
    let hops = HopPath::parse(m.header(headers::HOPS).unwrap_or_default())
        .map_err(|e| format!("x-lgsp-hops: {e}"))?;
    let mut trace = http::HeaderMap::new();
    if let Some(v) = m
        .header(headers::TRACEPARENT)
        .and_then(|t| HeaderValue::from_str(t).ok())
    {
        trace.insert(headers::TRACEPARENT, v);
    }
    Ok(Carried {
        message_id,
        agency,
        mode,
        hops,
        trace: TraceContext::continue_or_start(&trace),
        content_type: m.header(header::CONTENT_TYPE.as_str()).map(str::to_owned),
    })
}

impl Consumer {
    pub fn new(
        config: ConsumerConfig,
        journal: Journal,
        target: LiveTarget,
        identity: Option<ClientIdentity>,
        metrics: &lgsp_metrics::Metrics,
    ) -> Consumer {
        let counters = Arc::new(Counters {
            by_outcome: OUTCOMES
                .iter()
                .map(|o| {
                    metrics
                        .consumer_packets
                        .with_label_values(&[config.name.as_str(), o])
                })
                .collect(),
            lag: metrics
                .consumer_lag
                .with_label_values(&[config.name.as_str()]),
        });
        Consumer {
            config,
            journal,
            target,
            identity,
            brokers: Brokers::new(),
            counters,
        }
    }

    /// Reads until `shutdown`, opening the source again whenever it fails or ends. Packets handed out and not yet
    /// acknowledged when it stops are handed out again by the broker.
    pub fn spawn(self, mut shutdown: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        let me = Arc::new(self);
        tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(me.config.max_in_flight));
            loop {
                let source = tokio::select! {
                    _ = lgsp_hop::stopped(&mut shutdown) => return,
                    s = me.open() => s,
                };
                match source {
                    Ok(mut source) => {
                        tracing::info!(consumer = %me.config.name, "reading its source");
                        let mut lag_at = tokio::time::Instant::now();
                        loop {
                            if lag_at.elapsed() >= LAG_EVERY {
                                lag_at = tokio::time::Instant::now();
                                if let Ok(n) = source.lag().await {
                                    me.counters.lag.set(i64::try_from(n).unwrap_or(i64::MAX));
                                }
                            }
                            let permit = tokio::select! {
                                _ = lgsp_hop::stopped(&mut shutdown) => return,
                                p = slots.clone().acquire_owned() => p,
                            };
                            let Ok(permit) = permit else { return };
                            let next = tokio::select! {
                                _ = lgsp_hop::stopped(&mut shutdown) => return,
                                n = tokio::time::timeout(LAG_EVERY, source.next()) => n,
                            };
                            match next {
                                // Nothing for a while: read the lag again.
                                Err(_) => continue,
                                Ok(Some(Ok(m))) => {
                                    let me = me.clone();
                                    tokio::spawn(async move {
                                        me.handle(m).await;
                                        drop(permit);
                                    });
                                }
                                Ok(Some(Err(e))) => {
                                    tracing::warn!(consumer = %me.config.name, error = %e, "the source failed; opening it again");
                                    break;
                                }
                                Ok(None) => {
                                    tracing::warn!(consumer = %me.config.name, "the source ended; opening it again");
                                    break;
                                }
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(consumer = %me.config.name, error = %e, "the source cannot be opened; trying again");
                    }
                }
                tokio::select! {
                    _ = lgsp_hop::stopped(&mut shutdown) => return,
                    _ = tokio::time::sleep(REOPEN) => {}
                }
            }
        })
    }

    async fn open(&self) -> Result<Source, String> {
        let target = self.target.load_full();
        let timeout = target
            .routes
            .named(&self.config.route)
            .map_or(Duration::from_secs(30), |r| r.config.timeout);
        Source::open(
            &target.hop.name,
            self.identity.as_ref(),
            &self.config.authority,
            &self.config.source,
            self.config.max_in_flight,
            // A packet whose delivery is still under way is not handed out twice.
            timeout.saturating_mul(2).max(Duration::from_secs(30)),
        )
        .await
    }

    /// One packet, to its end: acknowledged, dead-lettered and acknowledged, or handed back for later.
    async fn handle(&self, m: Incoming) {
        let target = self.target.load_full();
        let settings = &target.settings;
        let attempts = u32::try_from(m.deliveries).unwrap_or(u32::MAX);
        let c = match carried(&m) {
            Ok(c) => c,
            Err(why) => {
                self.counters.count("unreadable");
                return self.dead_letter(m, None, &why).await;
            }
        };
        let Some(route) = target.routes.named(&self.config.route).cloned() else {
            tracing::error!(consumer = %self.config.name, route = %self.config.route, "the consumer's route is gone (reloaded away); packets wait in the source");
            return self.retry(m, settings.max_backoff).await;
        };
        // The route's body bound holds here as over HTTPS (the broker's own limit may be larger).
        if m.body.len() > route.config.max_body_bytes {
            self.counters.count("dead_lettered");
            let why = format!(
                "the packet is {} bytes; route {} takes at most {} (max_body_bytes)",
                m.body.len(),
                route.name,
                route.config.max_body_bytes
            );
            return self.dead_letter(m, Some(&c), &why).await;
        }
        let hop = target.hop.name.to_string();
        let sha256 = hex::encode(Sha256::digest(&m.body));
        let accepted = Accepted {
            hop: hop.clone(),
            message_id: c.message_id.clone(),
            agency: c.agency.clone(),
            route: route.name.to_string(),
            message_type: route.config.message_type.clone(),
            mode: c.mode.as_str().to_owned(),
            idempotency_key: None,
            body_sha256: sha256.clone(),
            body_size: m.body.len() as u64,
            delivery: Delivery::Direct,
            // The broker holds the packet and hands it out again: the journal keeps no body and no lease.
            request: None,
            body: None,
            lease: Duration::ZERO,
            subject: None,
            approval: None,
            hop_signature: None,
        };
        match self.journal.accept(accepted).await {
            Err(e) => {
                tracing::warn!(consumer = %self.config.name, error = %e, "the journal cannot take the packet; the broker keeps it");
                self.counters.count("retried");
                return self.retry(m, backoff(settings, attempts, None)).await;
            }
            Ok(Admission::Existing(prior)) if prior.status == Status::Delivered => {
                // Delivered before the broker heard so (a crash between the two): not delivered twice.
                self.counters.count("duplicate");
                return self.ack(m).await;
            }
            Ok(Admission::Existing(prior)) if prior.status == Status::Rejected => {
                let why = prior
                    .detail
                    .clone()
                    .unwrap_or_else(|| "refused by the upstream".into());
                self.counters.count("dead_lettered");
                return self.dead_letter(m, Some(&c), &why).await;
            }
            Ok(Admission::Taken) => {
                self.counters.count("dead_lettered");
                let why = format!(
                    "message id {} is already another agency's at hop {hop}",
                    c.message_id
                );
                return self.dead_letter(m, Some(&c), &why).await;
            }
            // Another packet under this message id (another body, another route): not this one's to deliver.
            Ok(Admission::Existing(prior))
                if prior.body_sha256 != sha256 || prior.route != route.name.as_ref() =>
            {
                self.counters.count("dead_lettered");
                let why = format!(
                    "message id {} already names another packet at hop {hop} (message of route {}, SHA-256 {})",
                    c.message_id, prior.route, prior.body_sha256
                );
                return self.dead_letter(m, Some(&c), &why).await;
            }
            // Its delivery is leased (a packet that came in over HTTPS, queued or in progress): the lease's holder
            // delivers it; the broker keeps this copy until then.
            Ok(Admission::Existing(prior)) if prior.request.is_some() && prior.status.pending() => {
                self.counters.count("retried");
                return self.retry(m, backoff(settings, attempts, None)).await;
            }
            // A failed or expired delivery this copy may not take over (another mode, or a packet that came in over
            // HTTPS, which its sender resends under its key): set aside with the reason, not looped on.
            Ok(Admission::Existing(prior)) if prior.status.retryable() => {
                self.counters.count("dead_lettered");
                let why = format!(
                    "message id {} ended {} at hop {hop} and is not this consumer's to deliver again",
                    c.message_id,
                    prior.status.as_str()
                );
                return self.dead_letter(m, Some(&c), &why).await;
            }
            // New, a failed one again, or one still in progress when its consumer stopped: delivered (again)
            // under the same message id.
            Ok(Admission::New | Admission::Again(_) | Admission::Existing(_)) => {}
        }
        let built = Request::builder()
            .method("POST")
            .uri(route.config.prefix.as_str())
            .body(full(m.body.clone()));
        let mut req = match built {
            Ok(r) => r,
            Err(e) => {
                // The prefix was checked as a path when the config loaded: not expected, and not a reason to drop.
                tracing::error!(consumer = %self.config.name, error = %e, "the delivery request does not build; the broker keeps the packet");
                self.counters.count("retried");
                return self.retry(m, settings.max_backoff).await;
            }
        };
        if let Some(v) = c
            .content_type
            .as_deref()
            .and_then(|v| HeaderValue::from_str(v).ok())
        {
            req.headers_mut().insert(header::CONTENT_TYPE, v);
        }
        let mut hops = c.hops.clone();
        hops.0.push(hop.clone());
        let e = req.extensions_mut();
        e.insert(route.clone());
        e.insert(Caller {
            agency: Arc::from(c.agency.as_str()),
            kind: c.mode,
            via: None,
        });
        e.insert(MessageId(c.message_id.clone()));
        e.insert(hops);
        e.insert(c.trace.clone());
        // Forward is always ready (its limits are per upstream, inside the call).
        let answer = target.forward.clone().call(req).await;
        let judged = judge(&hop, &c.message_id, &route, answer).await;
        let status = judged.verdict.outcome();
        let finished = self
            .journal
            .finish(Outcome {
                hop,
                message_id: c.message_id.clone(),
                status,
                upstream_status: judged.upstream_status,
                receipt: judged.receipt.clone(),
                answer_type: judged.answer_type,
                detail: judged.detail.clone(),
                owner: None,
            })
            .await;
        if let Err(e) = finished {
            // The outcome is not recorded: the broker hands the packet out again and the journal's in-progress
            // record makes it a redelivery under the same id.
            tracing::warn!(consumer = %self.config.name, error = %e, "the outcome could not be journalled");
        }
        match judged.verdict {
            Verdict::Delivered => {
                self.counters.count("delivered");
                self.ack(m).await;
            }
            Verdict::Rejected => {
                self.counters.count("dead_lettered");
                let said = judged.detail.or(judged.receipt).unwrap_or_default();
                let why = match judged.upstream_status {
                    Some(code) => {
                        format!("the upstream refused the packet for good ({code}): {said}")
                    }
                    None => format!("refused for good: {said}"),
                };
                self.dead_letter(m, Some(&c), &why).await;
            }
            Verdict::Again { after } => {
                self.counters.count("retried");
                self.retry(m, backoff(settings, attempts, after)).await;
            }
        }
    }

    async fn ack(&self, m: Incoming) {
        if let Err(e) = m.ack().await {
            tracing::warn!(consumer = %self.config.name, error = %e, "acknowledging the broker failed; it hands the packet out again");
        }
    }

    async fn retry(&self, m: Incoming, after: Duration) {
        if let Err(e) = m.retry(after).await {
            tracing::warn!(consumer = %self.config.name, error = %e, "handing the packet back failed; the broker hands it out again after its ack wait");
        }
    }

    /// Publishes the packet with `why` to the dead-letter target, then acknowledges it; if the dead-letter target
    /// cannot take it, the packet goes back to the source instead (nothing is dropped).
    async fn dead_letter(&self, m: Incoming, c: Option<&Carried>, why: &str) {
        let target = self.target.load_full();
        let dl = &self.config.dead_letter;
        let Some(broker) = &dl.broker else {
            return self.retry(m, target.settings.max_backoff).await;
        };
        let mut headers: Vec<(String, String)> = m
            .headers
            .iter()
            .filter(|(n, _)| !n.eq_ignore_ascii_case("Nats-Msg-Id"))
            .cloned()
            .collect();
        let reason: String = why
            .chars()
            .filter(|ch| !ch.is_control())
            .take(1024)
            .collect();
        headers.push((DEAD_REASON.to_owned(), reason));
        headers.push(("x-lgsp-consumer".to_owned(), self.config.name.clone()));
        let message_id = c
            .map(|c| c.message_id.clone())
            .or_else(|| m.message_id.clone())
            .unwrap_or_else(|| format!("dead-{}", hex::encode(Sha256::digest(&m.body))));
        let p = Publication {
            message_id,
            headers,
            content_type: c.and_then(|c| c.content_type.clone()),
            body: m.body.clone(),
        };
        let sent = self
            .brokers
            .publish(
                &target.hop.name,
                self.identity.as_ref(),
                &dl.authority,
                broker,
                p,
                Duration::from_secs(30),
            )
            .await;
        match sent {
            Ok(_) => {
                tracing::warn!(consumer = %self.config.name, reason = %why, "packet sent to the dead-letter target");
                self.ack(m).await;
            }
            Err(e) => {
                tracing::error!(consumer = %self.config.name, error = %e, "the dead-letter target cannot take the packet; it goes back to the source");
                self.retry(m, target.settings.max_backoff).await;
            }
        }
    }
}
