//! Stage two: the validated runtime config. Built from [`FileConfig`] by [`Config::from_file`], collecting every
//! problem with its line instead of stopping at the first.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use crate::error::{ConfigError, Problem, SourceMap};
use crate::file::{
    AgencyStatus, FileClientTls, FileConfig, FileHop, FileRoute, FileServerTls, HopRole, KeyKind,
    LogFormat,
};
use crate::parse::{parse_duration, parse_upstream, valid_agency_code, valid_identity};

/// A file path from the config, with the line that named it (certificate errors point back at the config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigPath {
    pub path: PathBuf,
    pub line: usize,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Where the config came from (a path, or `<embedded gateway.toml>`).
    pub source: String,
    pub admin: AdminConfig,
    pub log: LogConfig,
    pub pki: PkiConfig,
    pub hops: Vec<HopConfig>,
    pub agencies: Vec<AgencyConfig>,
    pub emulator: Option<EmulatorConfig>,
    pub validation: ValidationConfig,
    pub ratelimit: RateLimitConfig,
    pub overload: OverloadConfig,
    pub token: TokenConfig,
}

/// Bearer tokens (`POST /token`).
#[derive(Debug, Clone)]
pub struct TokenConfig {
    pub ttl: Duration,
    pub secret_file: Option<ConfigPath>,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub drain_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone)]
pub struct PkiConfig {
    pub dir: PathBuf,
    pub dev_autogen: bool,
}

#[derive(Debug, Clone)]
pub struct HopConfig {
    pub name: String,
    pub role: HopRole,
    pub listen: SocketAddr,
    pub tls: ServerTlsConfig,
    pub upstream_tls: ClientTlsConfig,
    pub peers: Vec<String>,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_connections: usize,
    pub routes: Vec<RouteConfig>,
}

#[derive(Debug, Clone)]
pub struct ServerTlsConfig {
    pub cert: ConfigPath,
    pub key: ConfigPath,
    pub client_ca: Vec<ConfigPath>,
    pub crls: Vec<ConfigPath>,
    pub identity_uri_prefix: String,
    pub handshake_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct ClientTlsConfig {
    pub cert: ConfigPath,
    pub key: ConfigPath,
    pub ca: Vec<ConfigPath>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// `host:port`, also the bounded `upstream` metric label.
    pub authority: String,
    /// Path the upstream is mounted under, without a trailing slash (may be empty).
    pub base_path: String,
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    pub methods: Vec<String>,
    pub prefix: String,
    /// Empty (no authority) on a dry-run route, which forwards nothing.
    pub upstream: Upstream,
    pub rewrite: Option<String>,
    /// A dry run: the packet at `{prefix}/{MessageType}` is validated with the full rules and the verdict
    /// answered; nothing is forwarded.
    pub dry_run: bool,
    /// Where trial-mode requests go (`base_path` replaces the matched prefix); `None`: this route takes no
    /// trial traffic. Defaults to the emulator of the same file, `/cbccvc/v1/{message type or route name}`.
    pub trial_upstream: Option<Upstream>,
    pub timeout: Duration,
    /// Agency codes allowed on this route; `None` means every known agency (`"*"`).
    pub agencies: Option<Vec<String>>,
    pub message_type: Option<String>,
    pub max_body_bytes: usize,
    /// The rate limit per (agency, route), if any.
    pub rate: Option<RateSpec>,
    /// Per-agency rates replacing `rate` for that agency.
    pub overrides: BTreeMap<String, RateSpec>,
}

/// A rate and a burst, e.g. 20 per 1 s with a burst of 40.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateSpec {
    pub count: u32,
    pub period_secs: u32,
    pub burst: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateLimitBackend {
    Local,
    Redis(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitConfig {
    pub backend: RateLimitBackend,
    /// With the shared backend unreachable: decide locally (true) or refuse with 503 (false).
    pub fallback_local: bool,
    pub timeout: Duration,
    pub key_prefix: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverloadConfig {
    pub max_in_flight: usize,
    pub max_in_flight_per_agency: usize,
    pub retry_after: Duration,
}

#[derive(Debug, Clone)]
pub struct AgencyConfig {
    pub code: String,
    pub name: Option<String>,
    pub status: AgencyStatus,
    pub keys: Vec<KeyConfig>,
    /// Unit-code patterns (MaDonVi) this agency may send for; `*` matches any run of characters.
    pub units: Vec<String>,
}

/// Where the packet schemas come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaSource {
    Embedded,
    Dir(PathBuf),
}

#[derive(Debug, Clone)]
pub struct ValidationConfig {
    pub schemas: SchemaSource,
    pub max_errors: usize,
    pub max_depth: usize,
    pub max_attributes: usize,
    pub max_text_bytes: usize,
    /// `max_errors` for trial-mode requests.
    pub trial_max_errors: usize,
    pub domain_rules: bool,
}

#[derive(Debug, Clone)]
pub struct KeyConfig {
    pub sha256: [u8; 32],
    pub kind: KeyKind,
    pub label: Option<String>,
}

#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    pub listen: SocketAddr,
    pub tls: ServerTlsConfig,
    pub max_stored: usize,
}

pub const DEFAULT_IDENTITY_URI_PREFIX: &str = "urn:lgsp:id:";
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_MAX_HEADER_BYTES: u64 = 64 * 1024;
const DEFAULT_MAX_CONNECTIONS: u64 = 10_000;
const DEFAULT_MAX_STORED: u64 = 100_000;
const DEFAULT_MAX_BODY: u64 = 8 * 1024 * 1024;
const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// Collects problems while building the runtime config.
struct Checker<'a> {
    map: &'a SourceMap<'a>,
    problems: Vec<Problem>,
}

impl<'a> Checker<'a> {
    fn problem<T>(
        &mut self,
        at: &Spanned<T>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.problems
            .push(self.map.problem(at.span(), field, message));
    }

    fn addr(&mut self, v: &Spanned<String>, field: &str) -> SocketAddr {
        match v.get_ref().parse() {
            Ok(a) => a,
            Err(_) => {
                self.problem(
                    v,
                    field,
                    format!(
                        "`{}` is not an address; write it as \"127.0.0.1:8443\"",
                        v.get_ref()
                    ),
                );
                SocketAddr::from(([127, 0, 0, 1], 0))
            }
        }
    }

    fn duration(
        &mut self,
        v: Option<&Spanned<String>>,
        field: &str,
        default: Duration,
    ) -> Duration {
        let Some(v) = v else { return default };
        match parse_duration(v.get_ref()) {
            Ok(d) => d,
            Err(e) => {
                self.problem(v, field, e);
                default
            }
        }
    }

    fn path(&self, base: &std::path::Path, v: &Spanned<String>) -> ConfigPath {
        let p = PathBuf::from(v.get_ref());
        let path = if p.is_absolute() { p } else { base.join(p) };
        ConfigPath {
            path,
            line: self.map.line_of(v.span().start),
        }
    }

    fn paths(
        &mut self,
        base: &std::path::Path,
        v: &[Spanned<String>],
        field: &str,
        required: bool,
    ) -> Vec<ConfigPath> {
        if required && v.is_empty() {
            self.problems
                .push(Problem::without_line(field, "needs at least one PEM file"));
        }
        v.iter().map(|p| self.path(base, p)).collect()
    }

    fn server_tls(
        &mut self,
        base: &std::path::Path,
        t: &FileServerTls,
        field: &str,
    ) -> ServerTlsConfig {
        let prefix = match &t.identity_uri_prefix {
            Some(p) if p.get_ref().is_empty() => {
                self.problem(
                    p,
                    format!("{field}.identity_uri_prefix"),
                    "must not be empty; the default is \"urn:lgsp:id:\"",
                );
                DEFAULT_IDENTITY_URI_PREFIX.to_owned()
            }
            Some(p) => p.get_ref().clone(),
            None => DEFAULT_IDENTITY_URI_PREFIX.to_owned(),
        };
        ServerTlsConfig {
            cert: self.path(base, &t.cert),
            key: self.path(base, &t.key),
            client_ca: self.paths(base, &t.client_ca, &format!("{field}.client_ca"), true),
            crls: self.paths(base, &t.crls, &format!("{field}.crls"), false),
            identity_uri_prefix: prefix,
            handshake_timeout: self.duration(
                t.handshake_timeout.as_ref(),
                &format!("{field}.handshake_timeout"),
                DEFAULT_HANDSHAKE_TIMEOUT,
            ),
        }
    }

    fn client_tls(
        &mut self,
        base: &std::path::Path,
        t: &FileClientTls,
        field: &str,
    ) -> ClientTlsConfig {
        ClientTlsConfig {
            cert: self.path(base, &t.cert),
            key: self.path(base, &t.key),
            ca: self.paths(base, &t.ca, &format!("{field}.ca"), true),
        }
    }

    fn route(&mut self, r: &FileRoute, field: &str, known: &HashSet<&str>) -> RouteConfig {
        let mut methods = Vec::new();
        if r.methods.is_empty() {
            self.problem(
                &r.name,
                format!("{field}.methods"),
                "list at least one method, e.g. [\"POST\"]",
            );
        }
        for m in &r.methods {
            let up = m.get_ref().to_ascii_uppercase();
            if METHODS.contains(&up.as_str()) {
                methods.push(up);
            } else {
                self.problem(
                    m,
                    format!("{field}.methods"),
                    format!("`{}` is not one of {}", m.get_ref(), METHODS.join(", ")),
                );
            }
        }
        let prefix = self.path_prefix(&r.prefix, &format!("{field}.prefix"));
        let rewrite = r
            .rewrite
            .as_ref()
            .map(|w| self.path_prefix(w, &format!("{field}.rewrite")));
        let none = Upstream {
            authority: String::new(),
            base_path: String::new(),
        };
        let upstream = match (&r.upstream, r.dry_run) {
            (Some(u), false) => match parse_upstream(u.get_ref()) {
                Ok(u) => u,
                Err(e) => {
                    self.problem(u, format!("{field}.upstream"), e);
                    none
                }
            },
            (None, true) => none,
            (Some(u), true) => {
                self.problem(
                    u,
                    format!("{field}.upstream"),
                    "a dry-run route forwards nothing; remove `upstream`",
                );
                none
            }
            (None, false) => {
                self.problem(
                    &r.name,
                    format!("{field}.upstream"),
                    "name the upstream, e.g. upstream = \"https://ndxp.example:8444\" (or set dry_run = true)",
                );
                none
            }
        };
        if r.dry_run
            && let Some(m) = &r.message_type
        {
            self.problem(
                m,
                format!("{field}.message_type"),
                "a dry-run route takes the message type from the path ({prefix}/{MessageType}); remove `message_type`",
            );
        }
        let trial_upstream =
            r.trial_upstream
                .as_ref()
                .and_then(|t| match parse_upstream(t.get_ref()) {
                    Ok(u) => Some(u),
                    Err(e) => {
                        self.problem(t, format!("{field}.trial_upstream"), e);
                        None
                    }
                });
        let mut agencies = Some(Vec::new());
        if r.agencies.is_empty() {
            self.problem(
                &r.name,
                format!("{field}.agencies"),
                "list the agency codes allowed here, or [\"*\"] for every agency",
            );
        }
        for a in &r.agencies {
            if a.get_ref() == "*" {
                agencies = None;
            } else if !known.contains(a.get_ref().as_str()) {
                self.problem(
                    a,
                    format!("{field}.agencies"),
                    format!("`{}` is not an [[agency]] code in this file", a.get_ref()),
                );
            } else if let Some(list) = agencies.as_mut() {
                list.push(a.get_ref().clone());
            }
        }
        let message_type = r.message_type.as_ref().and_then(|m| {
            if lgsp_schema::MESSAGE_TYPES.contains(&m.get_ref().as_str()) {
                Some(m.get_ref().clone())
            } else {
                self.problem(
                    m,
                    format!("{field}.message_type"),
                    format!(
                        "`{}` is not a message type; use one of {}",
                        m.get_ref(),
                        lgsp_schema::MESSAGE_TYPES.join(", ")
                    ),
                );
                None
            }
        });
        let max_body = r
            .max_body_bytes
            .as_ref()
            .map_or(DEFAULT_MAX_BODY, |v| *v.get_ref());
        if let Some(v) = &r.max_body_bytes
            && !(1..=1024 * 1024 * 1024).contains(&max_body)
        {
            self.problem(
                v,
                format!("{field}.max_body_bytes"),
                "choose between 1 and 1073741824 bytes",
            );
        }
        let rate = match (&r.rate, &r.burst) {
            (Some(rate), Some(burst)) => self.rate(rate, burst, &format!("{field}.rate")),
            (None, None) => None,
            (Some(rate), None) => {
                self.problem(
                    rate,
                    format!("{field}.burst"),
                    "a rate needs a burst too, e.g. burst = 40",
                );
                None
            }
            (None, Some(burst)) => {
                self.problem(
                    burst,
                    format!("{field}.rate"),
                    "a burst needs a rate too, e.g. rate = \"20/s\"",
                );
                None
            }
        };
        let mut overrides = BTreeMap::new();
        for (k, o) in r.overrides.iter().enumerate() {
            let of = format!("{field}.overrides[{k}]");
            if !known.contains(o.agency.get_ref().as_str()) {
                self.problem(
                    &o.agency,
                    format!("{of}.agency"),
                    format!(
                        "`{}` is not an [[agency]] code in this file",
                        o.agency.get_ref()
                    ),
                );
            }
            if let Some(spec) = self.rate(&o.rate, &o.burst, &format!("{of}.rate")) {
                overrides.insert(o.agency.get_ref().clone(), spec);
            }
        }
        RouteConfig {
            rate,
            overrides,
            name: r.name.get_ref().clone(),
            methods,
            prefix,
            upstream,
            rewrite,
            dry_run: r.dry_run,
            trial_upstream,
            timeout: self.duration(
                r.timeout.as_ref(),
                &format!("{field}.timeout"),
                DEFAULT_ROUTE_TIMEOUT,
            ),
            agencies,
            message_type,
            max_body_bytes: usize::try_from(max_body).unwrap_or(usize::MAX),
        }
    }

    fn rate(
        &mut self,
        rate: &Spanned<String>,
        burst: &Spanned<u64>,
        field: &str,
    ) -> Option<RateSpec> {
        let parsed = crate::parse::parse_rate(rate.get_ref());
        if let Err(e) = &parsed {
            self.problem(rate, field, e.clone());
        }
        let b = *burst.get_ref();
        if !(1..=1_000_000).contains(&b) {
            self.problem(
                burst,
                field.replace(".rate", ".burst"),
                "choose a burst between 1 and 1000000",
            );
            return None;
        }
        let (count, period_secs) = parsed.ok()?;
        Some(RateSpec {
            count,
            period_secs,
            burst: u32::try_from(b).unwrap_or(u32::MAX),
        })
    }

    fn path_prefix(&mut self, v: &Spanned<String>, field: &str) -> String {
        let s = v.get_ref();
        if !s.starts_with('/') || s.contains(['?', '#', ' ']) || s.contains("//") {
            self.problem(v, field, format!("`{s}` must be an absolute path like \"/lgsp/v1/HoSoCBCCVC\" without query or spaces"));
        }
        // "/a/b/" and "/a/b" are the same prefix; "/" stays "/".
        let trimmed = s.trim_end_matches('/');
        if trimmed.is_empty() {
            "/".to_owned()
        } else {
            trimmed.to_owned()
        }
    }

    fn hop(
        &mut self,
        base: &std::path::Path,
        h: &FileHop,
        i: usize,
        known: &HashSet<&str>,
    ) -> HopConfig {
        let field = format!("hop[{i}]");
        let name = h.name.get_ref();
        if !valid_identity(name) {
            self.problem(
                &h.name,
                format!("{field}.name"),
                "use letters, digits, '.', '-' or '_' (it is a metric label and a header value)",
            );
        }
        let mut peers = Vec::new();
        for p in &h.peers {
            if valid_identity(p.get_ref()) {
                peers.push(p.get_ref().clone());
            } else {
                self.problem(p, format!("{field}.peers"), "a peer is the identity in a gateway's client certificate: letters, digits, '.', '-', '_'");
            }
        }
        let mut seen = HashSet::new();
        let mut routes = Vec::new();
        for (j, r) in h.routes.iter().enumerate() {
            let rf = format!("{field}.route[{j}]");
            if !seen.insert(r.name.get_ref().clone()) {
                self.problem(
                    &r.name,
                    format!("{rf}.name"),
                    "route names must be unique within a hop",
                );
            }
            routes.push(self.route(r, &rf, known));
        }
        let max_header_bytes = h
            .http
            .max_header_bytes
            .as_ref()
            .map_or(DEFAULT_MAX_HEADER_BYTES, |v| *v.get_ref());
        if let Some(v) = &h.http.max_header_bytes
            && !(1024..=1024 * 1024).contains(&max_header_bytes)
        {
            self.problem(
                v,
                format!("{field}.http.max_header_bytes"),
                "choose between 1024 and 1048576",
            );
        }
        let max_connections = h
            .http
            .max_connections
            .as_ref()
            .map_or(DEFAULT_MAX_CONNECTIONS, |v| *v.get_ref());
        if let Some(v) = &h.http.max_connections
            && max_connections == 0
        {
            self.problem(
                v,
                format!("{field}.http.max_connections"),
                "must be at least 1",
            );
        }
        HopConfig {
            name: name.clone(),
            role: h.role,
            listen: self.addr(&h.listen, &format!("{field}.listen")),
            tls: self.server_tls(base, &h.tls, &format!("{field}.tls")),
            upstream_tls: self.client_tls(base, &h.upstream_tls, &format!("{field}.upstream_tls")),
            peers,
            header_read_timeout: self.duration(
                h.http.header_read_timeout.as_ref(),
                &format!("{field}.http.header_read_timeout"),
                DEFAULT_HEADER_READ_TIMEOUT,
            ),
            max_header_bytes: usize::try_from(max_header_bytes).unwrap_or(usize::MAX),
            max_connections: usize::try_from(max_connections).unwrap_or(usize::MAX),
            routes,
        }
    }
}

impl Config {
    /// Validates a parsed file. `base` is the directory relative paths are resolved against.
    pub fn from_file(
        file: FileConfig,
        text: &str,
        source: &str,
        base: &std::path::Path,
    ) -> Result<Self, ConfigError> {
        let map = SourceMap::new(text);
        let mut c = Checker {
            map: &map,
            problems: Vec::new(),
        };

        let mut agencies = Vec::new();
        let mut codes = HashSet::new();
        let mut key_owner: BTreeMap<[u8; 32], String> = BTreeMap::new();
        for (i, a) in file.agencies.iter().enumerate() {
            let code = a.code.get_ref();
            if !valid_agency_code(code) {
                c.problem(&a.code, format!("agency[{i}].code"), format!(
                    "`{code}` is not an agency code (mã định danh): dot-separated groups of 0-9 and A-Z, at most 35 characters, e.g. \"000.00.00.H29\""
                ));
            }
            if !codes.insert(code.as_str()) {
                c.problem(
                    &a.code,
                    format!("agency[{i}].code"),
                    "each agency code may appear once",
                );
            }
            let mut keys = Vec::new();
            for (k, key) in a.keys.iter().enumerate() {
                let field = format!("agency[{i}].keys[{k}].sha256");
                let mut digest = [0u8; 32];
                let hex = key.sha256.get_ref();
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    c.problem(&key.sha256, field, "write the SHA-256 of the key as 64 hex digits; `lgsp-gateway keys new` prints it");
                    continue;
                }
                for (j, chunk) in hex.as_bytes().chunks(2).enumerate() {
                    let s = std::str::from_utf8(chunk).unwrap_or("00");
                    digest[j] = u8::from_str_radix(s, 16).unwrap_or(0);
                }
                if let Some(owner) = key_owner.insert(digest, code.clone()) {
                    c.problem(&key.sha256, field, format!("this key hash is already given to agency {owner}; every key belongs to one agency"));
                }
                keys.push(crate::KeyConfig {
                    sha256: digest,
                    kind: key.kind,
                    label: key.label.clone(),
                });
            }
            let units = match &a.units {
                None => vec![code.clone()],
                Some(list) => {
                    for u in list {
                        let plain = u.get_ref().replace('*', "0");
                        if u.get_ref().is_empty() || !crate::parse::valid_agency_code(&plain) {
                            c.problem(
                                u,
                                format!("agency[{i}].units"),
                                format!(
                                    "`{}` is not a unit-code pattern: a unit code such as \"000.00.00.H29\" where `*` stands for any run of characters, e.g. \"*.H29\"",
                                    u.get_ref()
                                ),
                            );
                        }
                    }
                    list.iter().map(|u| u.get_ref().clone()).collect()
                }
            };
            agencies.push(AgencyConfig {
                code: code.clone(),
                name: a.name.clone(),
                status: a.status,
                keys,
                units,
            });
        }

        let mut hop_names = HashSet::new();
        let mut listens = HashSet::new();
        let mut hops = Vec::new();
        for (i, h) in file.hops.iter().enumerate() {
            if !hop_names.insert(h.name.get_ref().clone()) {
                c.problem(
                    &h.name,
                    format!("hop[{i}].name"),
                    "hop names must be unique",
                );
            }
            let hop = c.hop(base, h, i, &codes);
            if hop.listen.port() != 0 && !listens.insert(hop.listen) {
                c.problem(
                    &h.listen,
                    format!("hop[{i}].listen"),
                    "another listener in this file already uses this address",
                );
            }
            hops.push(hop);
        }
        if hops.is_empty() && file.emulator.is_none() {
            c.problems.push(Problem::without_line(
                "hop",
                "define at least one [[hop]] (or an [emulator]) for this process to serve",
            ));
        }

        let admin = AdminConfig {
            listen: c.addr(&file.admin.listen, "admin.listen"),
            drain_timeout: c.duration(
                file.admin.drain_timeout.as_ref(),
                "admin.drain_timeout",
                DEFAULT_DRAIN_TIMEOUT,
            ),
        };
        if admin.listen.port() != 0 && listens.contains(&admin.listen) {
            c.problem(
                &file.admin.listen,
                "admin.listen",
                "another listener in this file already uses this address",
            );
        }
        let level = file
            .log
            .level
            .as_ref()
            .map_or_else(|| "info".to_owned(), |l| l.get_ref().clone());
        if let Some(l) = &file.log.level
            && !["error", "warn", "info", "debug", "trace"].contains(&l.get_ref().as_str())
            && !l.get_ref().contains('=')
        {
            c.problem(
                l,
                "log.level",
                "use error, warn, info, debug, trace or a filter like \"info,lgsp_proxy=debug\"",
            );
        }
        let emulator = file.emulator.as_ref().map(|e| {
            let max_stored = e
                .max_stored
                .as_ref()
                .map_or(DEFAULT_MAX_STORED, |v| *v.get_ref());
            if let Some(v) = &e.max_stored
                && max_stored == 0
            {
                c.problem(v, "emulator.max_stored", "must be at least 1");
            }
            let listen = c.addr(&e.listen, "emulator.listen");
            if listen.port() != 0 && (listens.contains(&listen) || listen == admin.listen) {
                c.problem(
                    &e.listen,
                    "emulator.listen",
                    "another listener in this file already uses this address",
                );
            }
            EmulatorConfig {
                listen,
                tls: c.server_tls(base, &e.tls, "emulator.tls"),
                max_stored: usize::try_from(max_stored).unwrap_or(usize::MAX),
            }
        });
        // Trial traffic defaults to the emulator this file runs (when its port is fixed).
        if let Some(e) = emulator.as_ref().filter(|e| e.listen.port() != 0) {
            for route in hops.iter_mut().flat_map(|h| h.routes.iter_mut()) {
                if route.trial_upstream.is_none() && !route.dry_run {
                    let target = route.message_type.as_deref().unwrap_or(&route.name);
                    route.trial_upstream = Some(Upstream {
                        authority: format!("localhost:{}", e.listen.port()),
                        base_path: format!("/cbccvc/v1/{target}"),
                    });
                }
            }
        }
        let pki = PkiConfig {
            dir: file
                .pki
                .dir
                .as_ref()
                .map_or_else(|| base.join("certs"), |d| c.path(base, d).path),
            dev_autogen: file.pki.dev_autogen.unwrap_or(false),
        };

        let v = &file.validation;
        let bounded = |c: &mut Checker<'_>,
                       x: &Option<Spanned<u64>>,
                       field: &str,
                       default: u64,
                       max: u64|
         -> usize {
            let n = x.as_ref().map_or(default, |s| *s.get_ref());
            if let Some(s) = x
                && !(1..=max).contains(&n)
            {
                c.problem(
                    s,
                    format!("validation.{field}"),
                    format!("choose between 1 and {max}"),
                );
            }
            usize::try_from(n).unwrap_or(usize::MAX)
        };
        let validation = ValidationConfig {
            schemas: match &v.schemas {
                None => SchemaSource::Embedded,
                Some(s) if s.get_ref() == "embedded" => SchemaSource::Embedded,
                Some(s) => SchemaSource::Dir(c.path(base, s).path),
            },
            max_errors: bounded(&mut c, &v.max_errors, "max_errors", 20, 1000),
            trial_max_errors: bounded(&mut c, &v.trial_max_errors, "trial_max_errors", 1000, 10000),
            max_depth: bounded(&mut c, &v.max_depth, "max_depth", 32, 256),
            max_attributes: bounded(&mut c, &v.max_attributes, "max_attributes", 32, 1024),
            max_text_bytes: bounded(
                &mut c,
                &v.max_text_bytes,
                "max_text_bytes",
                64 * 1024,
                16 * 1024 * 1024,
            ),
            domain_rules: v.domain_rules.unwrap_or(true),
        };
        let token = TokenConfig {
            ttl: c.duration(
                file.token.ttl.as_ref(),
                "token.ttl",
                Duration::from_secs(3600),
            ),
            secret_file: file.token.secret_file.as_ref().map(|p| c.path(base, p)),
        };
        if let Some(t) = &file.token.ttl
            && !(Duration::from_secs(60)..=Duration::from_secs(86400)).contains(&token.ttl)
        {
            c.problem(t, "token.ttl", "choose between 1m and 24h");
        }
        let rl = &file.ratelimit;
        let backend = match &rl.backend {
            None => RateLimitBackend::Local,
            Some(b) if b.get_ref() == "local" => RateLimitBackend::Local,
            Some(b)
                if b.get_ref().starts_with("redis://") || b.get_ref().starts_with("rediss://") =>
            {
                RateLimitBackend::Redis(b.get_ref().clone())
            }
            Some(b) => {
                c.problem(
                    b,
                    "ratelimit.backend",
                    format!(
                        "`{}`: write \"local\" or a Redis URL like \"redis://127.0.0.1:6379\"",
                        b.get_ref()
                    ),
                );
                RateLimitBackend::Local
            }
        };
        let fallback_local = match &rl.on_backend_failure {
            None => true,
            Some(v) if v.get_ref() == "local" => true,
            Some(v) if v.get_ref() == "refuse" => false,
            Some(v) => {
                c.problem(
                    v,
                    "ratelimit.on_backend_failure",
                    "write \"local\" (decide in-process) or \"refuse\" (answer 503)",
                );
                true
            }
        };
        let ratelimit = RateLimitConfig {
            backend,
            fallback_local,
            timeout: c.duration(
                rl.timeout.as_ref(),
                "ratelimit.timeout",
                Duration::from_millis(250),
            ),
            key_prefix: rl
                .key_prefix
                .clone()
                .unwrap_or_else(|| "lgsp:rl:".to_owned()),
        };
        let ov = &file.overload;
        let overload = OverloadConfig {
            max_in_flight: bounded(
                &mut c,
                &ov.max_in_flight,
                "overload.max_in_flight",
                10_000,
                10_000_000,
            ),
            max_in_flight_per_agency: bounded(
                &mut c,
                &ov.max_in_flight_per_agency,
                "overload.max_in_flight_per_agency",
                1_000,
                10_000_000,
            ),
            retry_after: c.duration(
                ov.retry_after.as_ref(),
                "overload.retry_after",
                Duration::from_secs(1),
            ),
        };
        if !c.problems.is_empty() {
            return Err(ConfigError {
                source: source.to_owned(),
                problems: c.problems,
            });
        }
        Ok(Config {
            source: source.to_owned(),
            admin,
            log: LogConfig {
                format: file.log.format.unwrap_or_default(),
                level,
            },
            pki,
            hops,
            agencies,
            emulator,
            validation,
            ratelimit,
            overload,
            token,
        })
    }
}
