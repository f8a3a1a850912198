//! Stage one: the file as written. Every struct rejects unknown keys; fields whose meaning is checked in stage two
//! keep their span so an error can name the line.

use serde::Deserialize;
use toml::Spanned;

/// The whole `gateway.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Admin listener: `/metrics`, `/healthz`, `/readyz`.
    pub admin: FileAdmin,
    /// Logging.
    #[serde(default)]
    pub log: FileLog,
    /// Where the dev PKI lives and whether it is made on start.
    #[serde(default)]
    pub pki: FilePki,
    /// Hops this process plays (`[[hop]]`), each its own mTLS listener.
    #[serde(default, rename = "hop")]
    pub hops: Vec<FileHop>,
    /// Agencies known to this deployment (`[[agency]]`).
    #[serde(default, rename = "agency")]
    pub agencies: Vec<FileAgency>,
    /// The national-endpoint emulator, when this process runs one.
    pub emulator: Option<FileEmulator>,
    /// Packet validation.
    #[serde(default)]
    pub validation: FileValidation,
    /// Where rate-limit decisions are made.
    #[serde(default)]
    pub ratelimit: FileRateLimit,
    /// Load shedding: caps on requests in flight.
    #[serde(default)]
    pub overload: FileOverload,
    /// Bearer tokens issued by `POST /token`.
    #[serde(default)]
    pub token: FileToken,
    /// Failed authentications: how many a certificate identity or a source address may make.
    #[serde(default)]
    pub auth: FileAuth,
    /// The message journal (its store, how long it keeps bodies and records).
    #[serde(default)]
    pub journal: FileJournal,
    /// Queued deliveries: retries, expiry, workers.
    #[serde(default)]
    pub delivery: FileDelivery,
    /// Broker sources (`[[consumer]]`): queues whose packets this process delivers to a route's upstream.
    #[serde(default, rename = "consumer")]
    pub consumers: Vec<FileConsumer>,
    /// Signed approvals (`PheDuyetDuLieu`): the signing CAs and the approval window.
    pub signing: Option<FileSigning>,
}

/// `[[consumer]]`: a JetStream durable consumer or a RabbitMQ queue read by one hop, each packet delivered to one of
/// its routes' upstream over mTLS as that hop.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConsumer {
    /// Metric label `consumer`, unique in the file.
    pub name: Spanned<String>,
    /// The hop that delivers (its client identity, its journal).
    pub hop: Spanned<String>,
    /// The route of that hop whose upstream takes the packets.
    pub route: Spanned<String>,
    /// `nats://host:port/<stream>?consumer=<durable>` or `amqp://user:pass@host:port/<vhost>?queue=<queue>`.
    pub source: Spanned<String>,
    /// Where packets the upstream refuses for good go, with the reason: a broker target URL.
    pub dead_letter: Spanned<String>,
    /// Packets delivered at once.
    pub max_in_flight: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileJournal {
    /// `sqlite://FILE` (relative to the config's directory) or `postgres://…`.
    pub url: Option<Spanned<String>>,
    pub keep_bodies: Option<Spanned<String>>,
    pub retention: Option<Spanned<String>>,
    /// This process's chain of records (one per replica writing the same database).
    pub chain: Option<Spanned<String>>,
    /// What one agency may hold accepted and not yet delivered.
    pub agency_quota: Option<Spanned<FileQuota>>,
    /// Below this much free disk (SQLite), new packets are refused.
    pub min_free_disk: Option<Spanned<FileSize>>,
}

/// `{ packets = N, bytes = "SIZE" }`: a bound on what one agency holds undelivered.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileQuota {
    pub packets: Option<u64>,
    pub bytes: Option<FileSize>,
}

/// A size: bytes as a number, or a number with a unit (`"512MiB"`, `"1GiB"`, `"2GB"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum FileSize {
    Bytes(u64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSigning {
    /// The CAs whose certificates may sign approvals (PEM), separate from the mTLS CAs.
    pub ca: Vec<Spanned<String>>,
    /// Their CRLs (PEM).
    #[serde(default)]
    pub crls: Vec<Spanned<String>>,
    /// The SAN URI prefix of an agency's signing certificate (`<prefix><agency code>`).
    pub identity_uri_prefix: Option<Spanned<String>>,
    /// Approvals are made within the last part of the month they approve: this long before its end.
    pub approval_window: Option<Spanned<String>>,
    /// How long after its month ends an approval may still arrive.
    pub approval_lateness: Option<Spanned<String>>,
    /// Check each approved profile against the profiles this hop journalled (default true).
    pub check_coverage: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDelivery {
    pub max_age: Option<Spanned<String>>,
    pub initial_backoff: Option<Spanned<String>>,
    pub max_backoff: Option<Spanned<String>>,
    pub workers: Option<Spanned<u64>>,
    pub lease: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAuth {
    /// Failures allowed per certificate identity and per source address once `failure_burst` is spent.
    pub failure_rate: Option<Spanned<String>>,
    pub failure_burst: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileToken {
    /// How long a token lives.
    pub ttl: Option<Spanned<String>>,
    /// A file of at least 32 random bytes shared by every replica; without it each process signs with its own.
    pub secret_file: Option<Spanned<String>>,
    /// The secret before the last rotation: tokens it signed stay valid until they expire.
    pub previous_secret_file: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileValidation {
    /// `"embedded"` (the schemas compiled into the binary) or a directory with `{type}.xsd` + `{type}.schema.json`.
    pub schemas: Option<Spanned<String>>,
    pub max_errors: Option<Spanned<u64>>,
    pub max_depth: Option<Spanned<u64>>,
    pub max_attributes: Option<Spanned<u64>>,
    pub max_text_bytes: Option<Spanned<u64>>,
    /// Most errors listed for a trial-mode request (trial answers list every error up to this).
    pub trial_max_errors: Option<Spanned<u64>>,
    pub domain_rules: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAdmin {
    pub listen: Spanned<String>,
    /// How long a shutdown waits for in-flight requests.
    pub drain_timeout: Option<Spanned<String>>,
    /// How long a shutdown reports not ready while still serving, before listeners close.
    pub shutdown_delay: Option<Spanned<String>>,
    /// A file holding the token `POST /admin/reload` needs (`Authorization: Bearer …`).
    pub token_file: Option<Spanned<String>>,
    /// Names the admin listener answers to besides IP literals and `localhost`.
    #[serde(default)]
    pub hosts: Vec<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLog {
    pub format: Option<LogFormat>,
    pub level: Option<Spanned<String>>,
    /// Lines the log writer may hold while the output is slow; beyond them lines are dropped and counted.
    pub buffer_lines: Option<Spanned<u64>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePki {
    pub dir: Option<Spanned<String>>,
    pub dev_autogen: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHop {
    pub name: Spanned<String>,
    pub role: HopRole,
    pub listen: Spanned<String>,
    pub tls: FileServerTls,
    pub upstream_tls: FileClientTls,
    /// Gateways that relay for agencies: the identity in the SAN URI of their client certificate, optionally
    /// pinned to that certificate's SHA-256 (`{ id = "LGSP-DEV", sha256 = "…" }`).
    #[serde(default)]
    pub peers: Vec<Spanned<FilePeer>>,
    /// Request headers removed from every request before any layer reads it (a peer keeps its `Forwarded`).
    pub strip_headers: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub http: FileHttp,
    #[serde(default)]
    pub upstream: FileUpstream,
    #[serde(default, rename = "route")]
    pub routes: Vec<FileRoute>,
}

/// A peer gateway: its identity alone, or with its certificate's SHA-256.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum FilePeer {
    Id(String),
    Pinned(FilePinnedPeer),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePinnedPeer {
    pub id: String,
    /// SHA-256 (hex) of the peer's client certificate (DER).
    pub sha256: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HopRole {
    Lgsp,
    Ndxp,
}

impl HopRole {
    pub fn as_str(self) -> &'static str {
        match self {
            HopRole::Lgsp => "lgsp",
            HopRole::Ndxp => "ndxp",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileServerTls {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
    pub client_ca: Vec<Spanned<String>>,
    #[serde(default)]
    pub crls: Vec<Spanned<String>>,
    pub identity_uri_prefix: Option<Spanned<String>>,
    pub handshake_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileClientTls {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
    pub ca: Vec<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHttp {
    pub header_read_timeout: Option<Spanned<String>>,
    pub max_header_bytes: Option<Spanned<u64>>,
    pub max_connections: Option<Spanned<u64>>,
    pub max_connections_per_agency: Option<Spanned<u64>>,
    pub max_handshakes: Option<Spanned<u64>>,
    pub max_handshakes_per_address: Option<Spanned<u64>>,
    pub first_byte_timeout: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub body_read_timeout: Option<Spanned<String>>,
    /// The PROXY protocol v2 from these load balancers (`{ from = ["10.0.0.5/32"] }`): the client's address is
    /// read from their header; from anywhere else no header is read.
    pub proxy_protocol: Option<FileProxyProtocol>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileProxyProtocol {
    pub from: Vec<Spanned<String>>,
}

/// `[hop.upstream]`: how this hop holds its connections to its upstreams.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileUpstream {
    /// `http1` (a pool of keep-alive connections, one request at a time on each) or `http2` (every request to an
    /// upstream multiplexed over one connection, when the upstream offers h2).
    pub protocol: Option<Spanned<String>>,
    /// Requests in flight to one upstream at once (with `http1`, its connections); more wait their turn within
    /// the route's timeout.
    pub max_connections: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRoute {
    pub name: Spanned<String>,
    pub methods: Vec<Spanned<String>>,
    pub prefix: Spanned<String>,
    /// Where requests go; omitted only on a dry-run, messages or inbox route.
    pub upstream: Option<Spanned<String>>,
    pub rewrite: Option<Spanned<String>>,
    /// Validate and answer the verdict, forward nothing: `{prefix}/{MessageType}`.
    #[serde(default)]
    pub dry_run: bool,
    /// The message status and reconciliation API of this hop's journal, answered here (no upstream):
    /// `GET {prefix}/{message id}` and `GET {prefix}?from=&to=&status=&limit=&after=`; each agency sees its own.
    #[serde(default)]
    pub messages: bool,
    /// An agency's inbox, answered here from a JetStream subject per agency: `nats://host:port/<subject prefix>`;
    /// `GET {prefix}?after=<cursor>&limit=` reads `<subject prefix>.<the caller's agency code>`.
    pub inbox: Option<Spanned<String>>,
    /// Where trial-mode requests go instead of `upstream`: an https URL whose path replaces the matched prefix.
    pub trial_upstream: Option<Spanned<String>>,
    /// A look-up route: JSON Pointer (RFC 6901) into the upstream's JSON answer naming the agency the record
    /// belongs to; the answer reaches only that agency.
    pub owner: Option<Spanned<String>>,
    /// `direct` (answered with the upstream's answer) or `queued` (202 after the journal append; delivered from
    /// the outbox).
    pub delivery: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub agencies: Vec<Spanned<String>>,
    /// CBCCVC message type validated on this route (`HoSoCBCCVC`, `BienChe`, `PheDuyetDuLieu`, `BienDong`).
    pub message_type: Option<Spanned<String>>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: Option<Spanned<u64>>,
    /// Rate per (agency, route): `"20/s"`, `"600/m"`, `"10000/h"`.
    pub rate: Option<Spanned<String>>,
    /// Requests allowed at once before the rate applies.
    pub burst: Option<Spanned<u64>>,
    /// Per-agency rates on this route.
    #[serde(default)]
    pub overrides: Vec<FileOverride>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileOverride {
    pub agency: Spanned<String>,
    pub rate: Spanned<String>,
    pub burst: Spanned<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRateLimit {
    /// `"local"` (in-process) or a Redis URL shared by every replica.
    pub backend: Option<Spanned<String>>,
    /// With Redis unreachable: `"local"` (decide in-process) or `"refuse"` (answer 503).
    pub on_backend_failure: Option<Spanned<String>>,
    /// Longest wait for one Redis decision.
    pub timeout: Option<Spanned<String>>,
    /// Prefix of the Redis keys (deployments sharing one Redis use different prefixes).
    pub key_prefix: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileOverload {
    pub max_in_flight: Option<Spanned<u64>>,
    pub max_in_flight_per_agency: Option<Spanned<u64>>,
    pub retry_after: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAgency {
    pub code: Spanned<String>,
    pub name: Option<String>,
    pub status: AgencyStatus,
    #[serde(default)]
    pub keys: Vec<FileKey>,
    /// Unit codes (MaDonVi) the agency may send packets for; `*` matches any run of characters.
    pub units: Option<Vec<Spanned<String>>>,
    /// Client certificates recognised as this agency besides a SAN URI with the prefix: by the SHA-256 of the
    /// public key, or by exact subject and issuer DNs. Several, so a new certificate overlaps the old.
    #[serde(default)]
    pub certificates: Vec<Spanned<FileCertificate>>,
    /// This agency's own bound on what it holds undelivered, instead of `[journal] agency_quota`.
    pub quota: Option<Spanned<FileQuota>>,
}

/// How one client certificate is recognised: `{ spki_sha256 = "…" }` or `{ subject = "…", issuer = "…" }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCertificate {
    pub spki_sha256: Option<String>,
    pub subject: Option<String>,
    pub issuer: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgencyStatus {
    Trial,
    Official,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileKey {
    pub sha256: Spanned<String>,
    pub kind: KeyKind,
    pub label: Option<String>,
    /// The key works from this time on (RFC 3339, or a date: midnight in Vietnam).
    pub not_before: Option<Spanned<String>>,
    /// The key works until this time (exclusive); after it, 401 auth.key_outside_validity.
    pub not_after: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    Trial,
    Production,
}

impl KeyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Trial => "trial",
            KeyKind::Production => "production",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEmulator {
    pub listen: Spanned<String>,
    pub tls: FileServerTls,
    /// How many packets the emulator keeps for look-up before dropping the oldest.
    pub max_stored: Option<Spanned<u64>>,
    /// Where `POST /cbccvc/v1/ChiaSe/{agency code}` publishes data shared back to an agency:
    /// `nats://host:port/<subject prefix>` (the agency's code is appended), read by hops' inbox routes.
    pub share: Option<Spanned<String>>,
}
