//! Metrics: one Prometheus registry with every family the gateway exports (help text, bounded labels), the
//! per-request label slot the layers fill in, and the admin listener serving `/metrics`, `/healthz`, `/readyz`.
#![forbid(unsafe_code)]

mod admin;
mod labels;

use std::sync::Arc;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub use admin::{
    AdminAccess, AdminError, AdminHandle, LiveAccess, Readiness, ReloadHook, serve_admin,
};
pub use labels::{RequestLabels, RouteMetrics, UNKNOWN};

/// Every metric family of the gateway.
pub struct Metrics {
    registry: Registry,
    /// `lgsp_requests_total{hop,route,agency,mode,status}`.
    pub requests: IntCounterVec,
    /// `lgsp_request_duration_seconds{hop,route}`.
    pub duration: HistogramVec,
    /// `lgsp_upstream_errors_total{hop,upstream,kind}`.
    pub upstream_errors: IntCounterVec,
    /// `lgsp_auth_failures_total{hop,reason}`.
    pub auth_failures: IntCounterVec,
    /// `lgsp_tls_handshake_failures_total{hop,reason}`.
    pub tls_handshake_failures: IntCounterVec,
    /// `lgsp_validation_failures_total{hop,route,message_type,rule}`.
    pub validation_failures: IntCounterVec,
    /// `lgsp_ratelimited_total{hop,route,agency}`.
    pub ratelimited: IntCounterVec,
    /// `lgsp_load_shed_total{hop,scope}`.
    pub load_shed: IntCounterVec,
    /// `lgsp_ratelimit_backend_up{backend}`.
    pub ratelimit_backend_up: IntGaugeVec,
    /// `lgsp_certificate_expiry_timestamp_seconds{hop,role,subject}`.
    pub certificate_expiry: prometheus::GaugeVec,
    /// `lgsp_config_reloads_total{result}`.
    pub config_reloads: IntCounterVec,
    /// `lgsp_connections_open{hop}`.
    pub connections_open: IntGaugeVec,
    /// `lgsp_journal_up`: 1 while the journal can be written, 0 while packet routes answer 503.
    pub journal_up: prometheus::IntGauge,
    /// `lgsp_journal_append_seconds{hop}`: from a packet handed to the journal to its record durable.
    pub journal_append: HistogramVec,
    /// `lgsp_journal_commits_total`, `lgsp_journal_committed_jobs_total`, `lgsp_journal_records_total`,
    /// `lgsp_journal_writer_busy_seconds_total`, `lgsp_journal_failed_batches_total`: the journal writer's group
    /// commits, as it counts them.
    pub journal_writer: JournalWriter,
    /// `lgsp_outbox_depth{hop}`: queued packets waiting for delivery.
    pub outbox_depth: IntGaugeVec,
    /// `lgsp_outbox_oldest_age_seconds{hop}`: how long the oldest queued packet has waited.
    pub outbox_oldest_age: prometheus::GaugeVec,
    /// `lgsp_deliveries_total{hop,route,outcome}`: delivery attempts by how they ended.
    pub deliveries: IntCounterVec,
    /// `lgsp_broker_publish_total{hop,route,broker,outcome}`: publications to broker targets by how they ended.
    pub broker_publish: IntCounterVec,
    /// `lgsp_broker_confirm_seconds{hop,route,broker}`: from publishing to the broker's confirmation.
    pub broker_confirm: HistogramVec,
    /// `lgsp_consumer_packets_total{consumer,outcome}`: packets read from broker sources by how they ended.
    pub consumer_packets: IntCounterVec,
    /// `lgsp_consumer_lag{consumer}`: packets waiting in a source that its consumer has not been handed yet.
    pub consumer_lag: IntGaugeVec,
    /// `lgsp_log_lines_dropped_total`: log lines dropped because the output was slower than the gateway.
    pub log_lines_dropped: prometheus::IntCounter,
    /// `lgsp_connections_closed_total{hop,reason}`: connections the gateway closed or refused for a bound.
    pub connections_closed: IntCounterVec,
    /// `lgsp_emulator_packets_total{message_type,result}`.
    pub emulator_packets: IntCounterVec,
    /// `lgsp_build_info{version,rustc}` (always 1).
    pub build_info: IntGaugeVec,
}

fn counter(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

impl Metrics {
    /// Builds the registry. Fails only on a programming error (a duplicate or malformed family).
    pub fn new() -> prometheus::Result<Arc<Self>> {
        let registry = Registry::new();
        let requests = counter(
            &registry,
            "lgsp_requests_total",
            "Requests answered, by hop, route, calling agency, mode (trial | production) and HTTP status.",
            &["hop", "route", "agency", "mode", "status"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "lgsp_request_duration_seconds",
                "Time from request head received to response head sent, by hop and route.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0,
            ]),
            &["hop", "route"],
        )?;
        registry.register(Box::new(duration.clone()))?;
        let upstream_errors = counter(
            &registry,
            "lgsp_upstream_errors_total",
            "Failed exchanges with an upstream, by hop, upstream (host:port) and kind (connect, tls, timeout, protocol).",
            &["hop", "upstream", "kind"],
        )?;
        let auth_failures = counter(
            &registry,
            "lgsp_auth_failures_total",
            "Requests refused by authentication or authorisation, by hop and reason.",
            &["hop", "reason"],
        )?;
        let tls_handshake_failures = counter(
            &registry,
            "lgsp_tls_handshake_failures_total",
            "TLS handshakes that failed, by hop and reason (no_client_cert, unknown_ca, expired, revoked, timeout, ...).",
            &["hop", "reason"],
        )?;
        let validation_failures = counter(
            &registry,
            "lgsp_validation_failures_total",
            "Packets refused by validation, by hop, route, message type and rule (each rule counted once per packet).",
            &["hop", "route", "message_type", "rule"],
        )?;
        let ratelimited = counter(
            &registry,
            "lgsp_ratelimited_total",
            "Requests refused with 429 by the rate limit of their (agency, route).",
            &["hop", "route", "agency"],
        )?;
        let load_shed = counter(
            &registry,
            "lgsp_load_shed_total",
            "Requests refused with 503 because too many were in flight (scope: global or agency).",
            &["hop", "scope"],
        )?;
        let ratelimit_backend_up = IntGaugeVec::new(
            Opts::new(
                "lgsp_ratelimit_backend_up",
                "Whether the shared rate-limit backend answered its last decision (1) or not (0).",
            ),
            &["backend"],
        )?;
        registry.register(Box::new(ratelimit_backend_up.clone()))?;
        let certificate_expiry = prometheus::GaugeVec::new(
            Opts::new(
                "lgsp_certificate_expiry_timestamp_seconds",
                "When each configured certificate expires (notAfter) or CRL needs replacing (nextUpdate), Unix seconds; role is server, client, ca or crl.",
            ),
            &["hop", "role", "subject"],
        )?;
        registry.register(Box::new(certificate_expiry.clone()))?;
        let config_reloads = counter(
            &registry,
            "lgsp_config_reloads_total",
            "Config reloads (SIGHUP or POST /admin/reload) by result: success, or failure (the old config keeps serving).",
            &["result"],
        )?;
        let connections_open = IntGaugeVec::new(
            Opts::new(
                "lgsp_connections_open",
                "Client connections open (after the TLS handshake), by hop.",
            ),
            &["hop"],
        )?;
        registry.register(Box::new(connections_open.clone()))?;
        let journal_up = prometheus::IntGauge::new(
            "lgsp_journal_up",
            "1 while the message journal can be written; 0 while packet routes refuse packets (503 journal.unavailable).",
        )?;
        registry.register(Box::new(journal_up.clone()))?;
        journal_up.set(1);
        let journal_append = HistogramVec::new(
            HistogramOpts::new(
                "lgsp_journal_append_seconds",
                "Time from a packet (or an outcome) handed to the journal to its record durable (group commit included), by hop.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["hop"],
        )?;
        registry.register(Box::new(journal_append.clone()))?;
        let journal_writer = JournalWriter::new(&registry)?;
        let outbox_depth = IntGaugeVec::new(
            Opts::new(
                "lgsp_outbox_depth",
                "Queued packets waiting in the outbox for delivery (first attempt or a retry), by hop.",
            ),
            &["hop"],
        )?;
        registry.register(Box::new(outbox_depth.clone()))?;
        let outbox_oldest_age = prometheus::GaugeVec::new(
            Opts::new(
                "lgsp_outbox_oldest_age_seconds",
                "How long the oldest packet in the outbox has waited since it was accepted, by hop (0 when empty).",
            ),
            &["hop"],
        )?;
        registry.register(Box::new(outbox_oldest_age.clone()))?;
        let deliveries = counter(
            &registry,
            "lgsp_deliveries_total",
            "Deliveries of journalled packets by hop, route and outcome: delivered, rejected (a 4xx, for good), failed (a direct delivery the upstream could not take), retried (a queued one to be tried again), expired (not delivered within delivery.max_age).",
            &["hop", "route", "outcome"],
        )?;
        let broker_publish = counter(
            &registry,
            "lgsp_broker_publish_total",
            "Packets published to broker targets (NATS JetStream, RabbitMQ) by hop, route, broker and outcome: confirmed, duplicate (JetStream had the message id already), unreachable, timeout, unroutable (RabbitMQ returned it), refused.",
            &["hop", "route", "broker", "outcome"],
        )?;
        let broker_confirm = HistogramVec::new(
            HistogramOpts::new(
                "lgsp_broker_confirm_seconds",
                "Time from publishing a packet to the broker's confirmation (PubAck or publisher confirm), by hop, route and broker.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["hop", "route", "broker"],
        )?;
        registry.register(Box::new(broker_confirm.clone()))?;
        let consumer_packets = counter(
            &registry,
            "lgsp_consumer_packets_total",
            "Packets read from broker sources ([[consumer]]) by consumer and outcome: delivered (upstream took it, broker acknowledged), duplicate (delivered before, acknowledged without a second delivery), retried (handed back to the broker for later), dead_lettered (refused for good, sent to the dead-letter target), unreadable (no message id or agency; dead-lettered).",
            &["consumer", "outcome"],
        )?;
        let consumer_lag = IntGaugeVec::new(
            Opts::new(
                "lgsp_consumer_lag",
                "Packets waiting in a broker source that its consumer has not been handed yet (JetStream: the durable consumer's pending count; RabbitMQ: the queue's ready messages), read every 5 s.",
            ),
            &["consumer"],
        )?;
        registry.register(Box::new(consumer_lag.clone()))?;
        let log_lines_dropped = prometheus::IntCounter::new(
            "lgsp_log_lines_dropped_total",
            "Log lines dropped because the log output (stderr) was slower than the gateway; requests never wait for the log.",
        )?;
        registry.register(Box::new(log_lines_dropped.clone()))?;
        let connections_closed = counter(
            &registry,
            "lgsp_connections_closed_total",
            "Client connections the gateway closed or refused for a bound, by hop and reason (first_byte_timeout, idle_timeout, too_many_handshakes, too_many_agency_connections).",
            &["hop", "reason"],
        )?;
        let emulator_packets = counter(
            &registry,
            "lgsp_emulator_packets_total",
            "Packets the national-endpoint emulator received, by message type and result (accepted, duplicate, refused).",
            &["message_type", "result"],
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new(
                "lgsp_build_info",
                "Build of the running gateway; the value is always 1.",
            ),
            &["version", "rustc"],
        )?;
        registry.register(Box::new(build_info.clone()))?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), env!("LGSP_RUSTC_VERSION")])
            .set(1);
        // Bounded label sets are exported from the start, so a dashboard or an alert sees 0, not "no data".
        for result in ["success", "failure"] {
            config_reloads.with_label_values(&[result]);
        }
        Ok(Arc::new(Metrics {
            registry,
            requests,
            duration,
            upstream_errors,
            auth_failures,
            tls_handshake_failures,
            validation_failures,
            ratelimited,
            load_shed,
            ratelimit_backend_up,
            certificate_expiry,
            config_reloads,
            connections_open,
            log_lines_dropped,
            journal_up,
            journal_append,
            journal_writer,
            outbox_depth,
            outbox_oldest_age,
            deliveries,
            broker_publish,
            broker_confirm,
            consumer_packets,
            consumer_lag,
            connections_closed,
            emulator_packets,
            build_info,
        }))
    }

    /// The Prometheus text exposition of every family.
    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    /// The name of every family this registry holds, samples or not (dashboards and alert rules are checked
    /// against it).
    pub fn family_names(&self) -> Vec<String> {
        use prometheus::core::Collector;
        let collectors: [&dyn Collector; 4] = [
            &self.requests,
            &self.duration,
            &self.certificate_expiry,
            &self.connections_open,
        ];
        let mut names: Vec<String> = collectors
            .iter()
            .flat_map(|c| c.desc())
            .map(|d| d.fq_name.clone())
            .collect();
        let more: [&dyn Collector; 24] = [
            &self.journal_up,
            &self.broker_publish,
            &self.broker_confirm,
            &self.consumer_packets,
            &self.consumer_lag,
            &self.journal_append,
            &self.journal_writer.commits,
            &self.journal_writer.jobs,
            &self.journal_writer.records,
            &self.journal_writer.busy,
            &self.journal_writer.failed,
            &self.outbox_depth,
            &self.outbox_oldest_age,
            &self.deliveries,
            &self.upstream_errors,
            &self.auth_failures,
            &self.tls_handshake_failures,
            &self.validation_failures,
            &self.ratelimited,
            &self.load_shed,
            &self.ratelimit_backend_up,
            &self.config_reloads,
            &self.emulator_packets,
            &self.build_info,
        ];
        names.extend(
            more.iter()
                .flat_map(|c| c.desc())
                .map(|d| d.fq_name.clone()),
        );
        names.sort();
        names
    }

    /// The handles of route `route` of hop `hop` (looked up once, when the route is loaded).
    pub fn route(&self, hop: &str, route: &str) -> Arc<RouteMetrics> {
        Arc::new(RouteMetrics {
            name: Arc::from(route),
            duration: self.duration.with_label_values(&[hop, route]),
        })
    }

    /// Counts one refusal by authentication or authorisation.
    pub fn auth_failure(&self, hop: &str, reason: &str) {
        self.auth_failures.with_label_values(&[hop, reason]).inc();
    }
}

/// The journal writer's own counts, named (five numbers in a row are easily swapped).
#[derive(Debug, Clone, Copy, Default)]
pub struct WriterCounts {
    pub commits: u64,
    pub jobs: u64,
    pub records: u64,
    pub busy_seconds: f64,
    pub failed: u64,
}

/// The journal writer's counters. The writer counts for itself (it knows nothing of Prometheus); [`JournalWriter::sync`]
/// brings these up to its counts.
pub struct JournalWriter {
    pub commits: prometheus::IntCounter,
    pub jobs: prometheus::IntCounter,
    pub records: prometheus::IntCounter,
    pub busy: prometheus::Counter,
    pub failed: prometheus::IntCounter,
}

impl JournalWriter {
    fn new(registry: &Registry) -> prometheus::Result<JournalWriter> {
        let int = |name: &str, help: &str| -> prometheus::Result<prometheus::IntCounter> {
            let c = prometheus::IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let busy = prometheus::Counter::new(
            "lgsp_journal_writer_busy_seconds_total",
            "Time the journal writer spent in transactions that committed, from BEGIN to the commit done (its fsync included); divided by lgsp_journal_commits_total, what one commit costs.",
        )?;
        registry.register(Box::new(busy.clone()))?;
        Ok(JournalWriter {
            commits: int(
                "lgsp_journal_commits_total",
                "Transactions the journal writer committed (group commits: one fsync each on SQLite).",
            )?,
            jobs: int(
                "lgsp_journal_committed_jobs_total",
                "Jobs (acceptances, outcomes, claims, retries …) answered by the journal writer's commits; divided by lgsp_journal_commits_total, how many share a commit.",
            )?,
            records: int(
                "lgsp_journal_records_total",
                "Records this process appended to its hash chain.",
            )?,
            busy,
            failed: int(
                "lgsp_journal_failed_batches_total",
                "Journal writer batches that failed as a whole (nothing of them written; their packets refused with 503, their outcomes kept for a later batch).",
            )?,
        })
    }

    /// Brings the counters up to the writer's own counts (each only ever grows; a count below the counter's, from a
    /// journal opened anew, adds nothing).
    pub fn sync(&self, n: WriterCounts) {
        for (c, v) in [
            (&self.commits, n.commits),
            (&self.jobs, n.jobs),
            (&self.records, n.records),
            (&self.failed, n.failed),
        ] {
            c.inc_by(v.saturating_sub(c.get()));
        }
        let more = n.busy_seconds - self.busy.get();
        if more > 0.0 {
            self.busy.inc_by(more);
        }
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_writers_counts_are_taken_up_and_never_go_back() {
        let m = Metrics::new().unwrap();
        let w = &m.journal_writer;
        let n = |commits, jobs, records, busy_seconds, failed| WriterCounts {
            commits,
            jobs,
            records,
            busy_seconds,
            failed,
        };
        w.sync(n(3, 40, 70, 0.25, 0));
        w.sync(n(5, 64, 110, 0.5, 1));
        assert_eq!(
            (
                w.commits.get(),
                w.jobs.get(),
                w.records.get(),
                w.failed.get()
            ),
            (5, 64, 110, 1)
        );
        assert!((w.busy.get() - 0.5).abs() < 1e-9);
        // A journal opened anew counts from zero: the counters stay where they were.
        w.sync(n(1, 2, 2, 0.01, 0));
        assert_eq!((w.commits.get(), w.jobs.get()), (5, 64));
        assert!((w.busy.get() - 0.5).abs() < 1e-9);
        let text = m.encode();
        assert!(
            text.contains("lgsp_journal_committed_jobs_total 64"),
            "{text}"
        );
    }

    #[test]
    fn exposition_has_every_family_with_help() {
        let m = Metrics::new().unwrap();
        m.requests
            .with_label_values(&["lgsp", "r", "000.00.00.H29", "production", "200"])
            .inc();
        m.duration.with_label_values(&["lgsp", "r"]).observe(0.01);
        m.upstream_errors
            .with_label_values(&["lgsp", "localhost:1", "connect"])
            .inc();
        m.auth_failure("lgsp", "missing_key");
        m.tls_handshake_failures
            .with_label_values(&["lgsp", "revoked"])
            .inc();
        let text = m.encode();
        for family in [
            "lgsp_requests_total",
            "lgsp_request_duration_seconds",
            "lgsp_upstream_errors_total",
            "lgsp_auth_failures_total",
            "lgsp_tls_handshake_failures_total",
            "lgsp_build_info",
        ] {
            assert!(
                text.contains(&format!("# HELP {family} ")),
                "{family} missing in\n{text}"
            );
        }
        // The compiler that built it, as `rustc --version` says: `1.95.0`, never "unknown".
        let rustc = text
            .lines()
            .find_map(|l| l.strip_prefix("lgsp_build_info{"))
            .and_then(|l| l.split("rustc=\"").nth(1))
            .and_then(|l| l.split('"').next())
            .unwrap_or_default();
        assert!(
            rustc.split('.').count() >= 3
                && rustc.chars().next().is_some_and(|c| c.is_ascii_digit()),
            "rustc label {rustc:?}"
        );
        // Bounded families are there before their first event.
        assert!(
            text.contains("lgsp_config_reloads_total{result=\"failure\"} 0"),
            "{text}"
        );
    }
}
