//! Every default and every bound of the config in one place: what a field is when the file omits it, and the range
//! it may take when the file sets it. `gateway.toml` documents the same values.

use std::ops::RangeInclusive;
use std::time::Duration;

// [admin], [log], [pki]
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
pub const LOG_LEVEL: &str = "info";
pub const LOG_BUFFER_LINES: u64 = 65_536;
pub const LOG_BUFFER_LINES_RANGE: RangeInclusive<u64> = 16..=10_000_000;
/// Levels accepted as they are; anything else must be an `EnvFilter` directive list (it holds a `=`).
pub const LOG_LEVELS: &[&str] = &["error", "warn", "info", "debug", "trace"];
pub const PKI_DIR: &str = "certs";
pub const PKI_DEV_AUTOGEN: bool = false;

// [hop.tls], [emulator.tls]
pub const IDENTITY_URI_PREFIX: &str = "urn:lgsp:id:";
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

// [[hop]]
/// Request headers a client could use to claim another origin, host, URL or method to an upstream, or to carry
/// its session past the gateway: removed at every hop (a peer gateway's `Forwarded` is kept and appended to).
pub const STRIP_HEADERS: &[&str] = &[
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-real-ip",
    "true-client-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "x-original-url",
    "x-rewrite-url",
    "x-original-method",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "cookie",
];

// [hop.http] (the emulator's listener uses the same values)
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
pub const MAX_HEADER_BYTES: u64 = 64 * 1024;
pub const MAX_HEADER_BYTES_RANGE: RangeInclusive<u64> = 1024..=1024 * 1024;
pub const MAX_CONNECTIONS: u64 = 10_000;
pub const MAX_CONNECTIONS_RANGE: RangeInclusive<u64> = 1..=10_000_000;
pub const MAX_CONNECTIONS_PER_AGENCY: u64 = 100;
pub const MAX_HANDSHAKES: u64 = 256;
pub const MAX_HANDSHAKES_PER_ADDRESS: u64 = 32;
pub const MAX_HANDSHAKES_RANGE: RangeInclusive<u64> = 1..=100_000;
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(10);
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Bounds of the three timeouts above and of `header_read_timeout`.
pub const HTTP_TIMEOUT_RANGE: RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(3600);

// [hop.upstream]
/// Below the default `max_connections_per_agency` (100) of the next hop, so one relaying hop never takes more of a
/// peer's listener than an agency may.
pub const UPSTREAM_MAX_CONNECTIONS: u64 = 64;
pub const UPSTREAM_MAX_CONNECTIONS_RANGE: RangeInclusive<u64> = 1..=100_000;

// [[hop.route]]
pub const ROUTE_TIMEOUT: Duration = Duration::from_secs(30);
pub const MAX_BODY_BYTES: u64 = 8 * 1024 * 1024;
pub const MAX_BODY_BYTES_RANGE: RangeInclusive<u64> = 1..=1024 * 1024 * 1024;
pub const BURST_RANGE: RangeInclusive<u64> = 1..=1_000_000;
pub const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
/// Where a trial request goes when the route names no `trial_upstream` and this file runs an emulator.
pub const EMULATOR_BASE_PATH: &str = "/cbccvc/v1";

// [emulator]
pub const EMULATOR_MAX_STORED: u64 = 100_000;
pub const EMULATOR_MAX_STORED_RANGE: RangeInclusive<u64> = 1..=100_000_000;

// [validation]
pub const MAX_ERRORS: u64 = 20;
pub const MAX_ERRORS_RANGE: RangeInclusive<u64> = 1..=1000;
pub const TRIAL_MAX_ERRORS: u64 = 1000;
pub const TRIAL_MAX_ERRORS_RANGE: RangeInclusive<u64> = 1..=10_000;
pub const MAX_DEPTH: u64 = 32;
pub const MAX_DEPTH_RANGE: RangeInclusive<u64> = 1..=256;
pub const MAX_ATTRIBUTES: u64 = 32;
pub const MAX_ATTRIBUTES_RANGE: RangeInclusive<u64> = 1..=1024;
pub const MAX_TEXT_BYTES: u64 = 64 * 1024;
pub const MAX_TEXT_BYTES_RANGE: RangeInclusive<u64> = 1..=16 * 1024 * 1024;
pub const DOMAIN_RULES: bool = true;

// [ratelimit]
pub const RATELIMIT_TIMEOUT: Duration = Duration::from_millis(250);
pub const RATELIMIT_KEY_PREFIX: &str = "lgsp:rl:";
pub const RATELIMIT_FALLBACK_LOCAL: bool = true;

// [overload]
pub const MAX_IN_FLIGHT: u64 = 10_000;
pub const MAX_IN_FLIGHT_RANGE: RangeInclusive<u64> = 1..=10_000_000;
pub const MAX_IN_FLIGHT_PER_AGENCY: u64 = 1_000;
pub const MAX_IN_FLIGHT_PER_AGENCY_RANGE: RangeInclusive<u64> = 1..=10_000_000;
pub const OVERLOAD_RETRY_AFTER: Duration = Duration::from_secs(1);

// [token]
pub const TOKEN_TTL: Duration = Duration::from_secs(3600);
pub const TOKEN_TTL_RANGE: RangeInclusive<Duration> =
    Duration::from_secs(60)..=Duration::from_secs(86_400);
/// Shortest `token.secret_file` accepted: an HMAC-SHA256 key of less than 256 bits is refused.
pub const TOKEN_SECRET_MIN_BYTES: usize = 32;
// [auth]
/// Failed authentications allowed per certificate identity and per source address: a burst of 10, then one
/// every 6 s (10 a minute).
pub const AUTH_FAILURE_RATE: (u32, u32) = (10, 60);
pub const AUTH_FAILURE_BURST: u32 = 10;

// [journal]
pub const JOURNAL_URL: &str = "sqlite://journal.db";
pub const JOURNAL_KEEP_BODIES: Duration = Duration::from_secs(30 * 86_400);
/// Five years: the audit period an operator sets.
pub const JOURNAL_RETENTION: Duration = Duration::from_secs(1825 * 86_400);
/// The chain of a SQLite journal (one writer); a PostgreSQL journal's default is the host's name.
pub const JOURNAL_CHAIN: &str = "main";
/// What one agency may hold undelivered: 10,000 packets, 1 GiB.
pub const JOURNAL_QUOTA_PACKETS: u64 = 10_000;
pub const JOURNAL_QUOTA_BYTES: u64 = 1 << 30;
/// Below 1 GiB of free disk, new packets are refused.
pub const JOURNAL_MIN_FREE_DISK: u64 = 1 << 30;

// [signing]
pub const SIGNING_APPROVAL_WINDOW: Duration = Duration::from_secs(5 * 86_400);
pub const SIGNING_APPROVAL_LATENESS: Duration = Duration::ZERO;

// [delivery]
pub const DELIVERY_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
pub const DELIVERY_INITIAL_BACKOFF: Duration = Duration::from_secs(1);
pub const DELIVERY_MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Measured with the load harness: 16 workers deliver twice what 4 do, at half the CPU per packet (outcomes share
/// commits), well within `[hop.upstream] max_connections`.
pub const DELIVERY_WORKERS: u64 = 16;
pub const DELIVERY_WORKERS_RANGE: RangeInclusive<u64> = 1..=256;
/// Twice the longest default route timeout (`PheDuyetDuLieu`, 60 s): see `lease_outlasts_routes`.
pub const DELIVERY_LEASE: Duration = Duration::from_secs(120);

/// Shortest admin token accepted (`[admin] token_file`): 32 characters, e.g. 128 bits as hex.
pub const ADMIN_TOKEN_MIN_CHARS: usize = 32;

/// `[[consumer]] max_in_flight`: packets one consumer delivers at once.
pub const CONSUMER_IN_FLIGHT: u64 = 16;
pub const CONSUMER_IN_FLIGHT_RANGE: RangeInclusive<u64> = 1..=1024;
