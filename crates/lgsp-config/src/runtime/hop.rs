//! `[[hop]]`: one mTLS listener with its TLS, its upstream identity, the peers it trusts, its HTTP limits and its
//! routes.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use toml::Spanned;

use super::check::Checker;
use super::defaults;
use super::route::{RouteConfig, route};
use super::tls::{ClientTlsConfig, ServerTlsConfig, client_tls, server_tls};
use crate::file::{FileHop, FileHttp, FilePeer, FileUpstream, HopRole};
use crate::parse::valid_identity;

#[derive(Debug, Clone)]
pub struct HopConfig {
    pub name: String,
    pub role: HopRole,
    pub listen: SocketAddr,
    pub tls: ServerTlsConfig,
    pub upstream_tls: ClientTlsConfig,
    pub peers: Vec<PeerConfig>,
    /// Request headers removed at this hop (lower case), [`defaults::STRIP_HEADERS`] unless the file says.
    pub strip_headers: Vec<String>,
    pub http: HttpConfig,
    pub upstream: UpstreamConfig,
    pub routes: Vec<RouteConfig>,
}

/// `[hop.upstream]`: how the hop holds its connections to its upstreams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamConfig {
    pub protocol: UpstreamProtocol,
    /// Requests in flight to one upstream (`host:port`) at once; more wait within the route's timeout.
    pub max_connections: usize,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            protocol: UpstreamProtocol::default(),
            max_connections: usize::try_from(defaults::UPSTREAM_MAX_CONNECTIONS)
                .unwrap_or(usize::MAX),
        }
    }
}

/// What the hop offers its upstreams by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 keep-alive connections, one request at a time on each (as nginx and Envoy do by default): measured
    /// cheaper per request than one multiplexed HTTP/2 connection (`benches/RESULTS.md`).
    #[default]
    Http1,
    /// HTTP/2 when the upstream offers it (every request multiplexed over one connection), else HTTP/1.1.
    Http2,
}

/// `[hop.http]`: what one connection and one request may hold of the listener — time and memory, bounded for
/// every client, and the share of the listener one certificate identity may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// A request head must arrive whole within this time.
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    /// Connections served at once (further ones wait in the accept queue). Takes a restart.
    pub max_connections: usize,
    /// Connections one certificate identity (an agency, or a peer gateway) may hold at once.
    pub max_connections_per_agency: usize,
    /// TLS handshakes in progress at once; a connection beyond is closed at once. Takes a restart.
    pub max_handshakes: usize,
    /// TLS handshakes in progress at once from one source address, so that one host's stalled connections
    /// cannot take all of `max_handshakes`.
    pub max_handshakes_per_address: usize,
    /// After the handshake, the first byte of the first request must arrive within this time.
    pub first_byte_timeout: Duration,
    /// A connection with no request in flight (HTTP/1.1 between requests, HTTP/2 with no open stream) is
    /// closed after this time (HTTP/2: GOAWAY first).
    pub idle_timeout: Duration,
    /// A request body must arrive whole within this time of its head (408 `packet.body_timeout`).
    pub body_read_timeout: Duration,
    /// Load balancers (address, prefix length) whose connections open with a PROXY protocol v2 header.
    pub proxy_from: Vec<(std::net::IpAddr, u8)>,
}

impl HttpConfig {
    /// Whether a connection from `ip` opens with a PROXY protocol header.
    pub fn proxied(&self, ip: std::net::IpAddr) -> bool {
        self.proxy_from
            .iter()
            .any(|(net, len)| within(ip, *net, *len))
    }
}

/// Whether `ip` lies in `net/len` (an IPv4-mapped IPv6 address counts as its IPv4 one).
fn within(ip: std::net::IpAddr, net: std::net::IpAddr, len: u8) -> bool {
    use std::net::IpAddr;
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

/// `10.0.0.0/8`, `2001:db8::/32`, or a bare address (all its bits).
fn cidr(text: &str) -> Option<(std::net::IpAddr, u8)> {
    let (addr, len) = text
        .split_once('/')
        .map_or((text, None), |(a, l)| (a, Some(l)));
    let ip: std::net::IpAddr = addr.trim().parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) => l.trim().parse::<u8>().ok().filter(|l| *l <= max)?,
    };
    Some((ip, len))
}

impl Default for HttpConfig {
    fn default() -> Self {
        let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        HttpConfig {
            header_read_timeout: defaults::HEADER_READ_TIMEOUT,
            max_header_bytes: size(defaults::MAX_HEADER_BYTES),
            max_connections: size(defaults::MAX_CONNECTIONS),
            max_connections_per_agency: size(defaults::MAX_CONNECTIONS_PER_AGENCY),
            max_handshakes: size(defaults::MAX_HANDSHAKES),
            max_handshakes_per_address: size(defaults::MAX_HANDSHAKES_PER_ADDRESS),
            first_byte_timeout: defaults::FIRST_BYTE_TIMEOUT,
            idle_timeout: defaults::IDLE_TIMEOUT,
            body_read_timeout: defaults::BODY_READ_TIMEOUT,
            proxy_from: Vec::new(),
        }
    }
}

/// A gateway that may relay for agencies: known by the exact identity in its certificate's SAN URI (never a
/// Common Name), and when pinned, by that certificate's SHA-256 too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    pub id: String,
    /// Lower-case hex SHA-256 of the certificate (DER).
    pub sha256: Option<String>,
}

/// Every hop, with unique names.
pub(super) fn hops(c: &mut Checker<'_>, list: &[FileHop], known: &HashSet<&str>) -> Vec<HopConfig> {
    let mut names = HashSet::new();
    let mut hops = Vec::new();
    for (i, h) in list.iter().enumerate() {
        if !names.insert(h.name.get_ref().as_str()) {
            c.problem(
                &h.name,
                format!("hop[{i}].name"),
                "hop names must be unique",
            );
        }
        hops.push(hop(c, h, &format!("hop[{i}]"), known));
    }
    hops
}

fn hop(c: &mut Checker<'_>, h: &FileHop, field: &str, known: &HashSet<&str>) -> HopConfig {
    if !valid_identity(h.name.get_ref()) {
        c.problem(
            &h.name,
            format!("{field}.name"),
            "use letters, digits, '.', '-' or '_' (it is a metric label and a header value)",
        );
    }
    let peers = peers(c, &h.peers, &format!("{field}.peers"));
    let mut names = HashSet::new();
    let mut routes = Vec::new();
    for (j, r) in h.routes.iter().enumerate() {
        let rf = format!("{field}.route[{j}]");
        if !names.insert(r.name.get_ref().as_str()) {
            c.problem(
                &r.name,
                format!("{rf}.name"),
                "route names must be unique within a hop",
            );
        }
        routes.push(route(c, r, &rf, known));
    }
    HopConfig {
        name: h.name.get_ref().clone(),
        role: h.role,
        listen: c.addr(&h.listen, &format!("{field}.listen")),
        tls: server_tls(c, &h.tls, &format!("{field}.tls")),
        upstream_tls: client_tls(c, &h.upstream_tls, &format!("{field}.upstream_tls")),
        peers,
        strip_headers: strip_headers(
            c,
            h.strip_headers.as_deref(),
            &format!("{field}.strip_headers"),
        ),
        http: http(c, &h.http, &format!("{field}.http")),
        upstream: upstream(c, &h.upstream, &format!("{field}.upstream")),
        routes,
    }
}

/// The headers to remove: header names, never one a gateway or the request path needs.
fn strip_headers(
    c: &mut Checker<'_>,
    list: Option<&[Spanned<String>]>,
    field: &str,
) -> Vec<String> {
    let Some(list) = list else {
        return defaults::STRIP_HEADERS
            .iter()
            .map(|h| (*h).to_owned())
            .collect();
    };
    let mut out = Vec::new();
    for h in list {
        let name = h.get_ref().to_ascii_lowercase();
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !valid {
            c.problem(h, field, format!("`{}` is not a header name", h.get_ref()));
        } else if [
            "host",
            "content-type",
            "content-length",
            "x-api-key",
            "authorization",
        ]
        .contains(&name.as_str())
            || name.starts_with("x-lgsp-")
        {
            c.problem(
                h,
                field,
                format!("`{name}` is read by the gateway itself; it cannot be stripped"),
            );
        } else {
            out.push(name);
        }
    }
    out
}

fn upstream(c: &mut Checker<'_>, u: &FileUpstream, field: &str) -> UpstreamConfig {
    let protocol = match &u.protocol {
        None => UpstreamProtocol::default(),
        Some(p) => match p.get_ref().as_str() {
            "http1" => UpstreamProtocol::Http1,
            "http2" => UpstreamProtocol::Http2,
            other => {
                c.problem(
                    p,
                    format!("{field}.protocol"),
                    format!("`{other}` is not an upstream protocol; write \"http1\" or \"http2\""),
                );
                UpstreamProtocol::default()
            }
        },
    };
    UpstreamConfig {
        protocol,
        max_connections: c.bounded(
            u.max_connections.as_ref(),
            &format!("{field}.max_connections"),
            defaults::UPSTREAM_MAX_CONNECTIONS,
            &defaults::UPSTREAM_MAX_CONNECTIONS_RANGE,
        ),
    }
}

fn http(c: &mut Checker<'_>, h: &FileHttp, field: &str) -> HttpConfig {
    let timeout = |c: &mut Checker<'_>, v: Option<&Spanned<String>>, name: &str, default| {
        c.duration_within(
            v,
            &format!("{field}.{name}"),
            default,
            &defaults::HTTP_TIMEOUT_RANGE,
        )
    };
    let max_connections = c.bounded(
        h.max_connections.as_ref(),
        &format!("{field}.max_connections"),
        defaults::MAX_CONNECTIONS,
        &defaults::MAX_CONNECTIONS_RANGE,
    );
    let cap = u64::try_from(max_connections).unwrap_or(u64::MAX);
    let max_handshakes = c.bounded(
        h.max_handshakes.as_ref(),
        &format!("{field}.max_handshakes"),
        defaults::MAX_HANDSHAKES,
        &defaults::MAX_HANDSHAKES_RANGE,
    );
    let handshakes = u64::try_from(max_handshakes).unwrap_or(u64::MAX);
    let proxy_from = h
        .proxy_protocol
        .iter()
        .flat_map(|p| p.from.iter())
        .filter_map(|v| {
            let parsed = cidr(v.get_ref());
            if parsed.is_none() {
                c.problem(
                    v,
                    format!("{field}.proxy_protocol.from"),
                    format!(
                        "`{}` is not an address or network; write the load balancers as \"10.0.0.5/32\" or \"10.0.0.0/24\"",
                        v.get_ref()
                    ),
                );
            }
            parsed
        })
        .collect();
    HttpConfig {
        proxy_from,
        header_read_timeout: timeout(
            c,
            h.header_read_timeout.as_ref(),
            "header_read_timeout",
            defaults::HEADER_READ_TIMEOUT,
        ),
        max_header_bytes: c.bounded(
            h.max_header_bytes.as_ref(),
            &format!("{field}.max_header_bytes"),
            defaults::MAX_HEADER_BYTES,
            &defaults::MAX_HEADER_BYTES_RANGE,
        ),
        max_connections,
        // Never more than the listener holds; one identity may take all of it only if the operator says so.
        max_connections_per_agency: c.bounded(
            h.max_connections_per_agency.as_ref(),
            &format!("{field}.max_connections_per_agency"),
            defaults::MAX_CONNECTIONS_PER_AGENCY.min(cap),
            &(1..=cap),
        ),
        max_handshakes,
        max_handshakes_per_address: c.bounded(
            h.max_handshakes_per_address.as_ref(),
            &format!("{field}.max_handshakes_per_address"),
            defaults::MAX_HANDSHAKES_PER_ADDRESS.min(handshakes),
            &(1..=handshakes),
        ),
        first_byte_timeout: timeout(
            c,
            h.first_byte_timeout.as_ref(),
            "first_byte_timeout",
            defaults::FIRST_BYTE_TIMEOUT,
        ),
        idle_timeout: timeout(
            c,
            h.idle_timeout.as_ref(),
            "idle_timeout",
            defaults::IDLE_TIMEOUT,
        ),
        body_read_timeout: timeout(
            c,
            h.body_read_timeout.as_ref(),
            "body_read_timeout",
            defaults::BODY_READ_TIMEOUT,
        ),
    }
}

fn peers(c: &mut Checker<'_>, list: &[Spanned<FilePeer>], field: &str) -> Vec<PeerConfig> {
    let mut out = Vec::new();
    for p in list {
        let (id, pin) = match p.get_ref() {
            FilePeer::Id(id) => (id, None),
            // `openssl x509 -fingerprint -sha256` writes `AB:CD:…`; `sha256sum` writes `abcd…`.
            FilePeer::Pinned(pinned) => (
                &pinned.id,
                Some(pinned.sha256.replace(':', "").to_ascii_lowercase()),
            ),
        };
        if !valid_identity(id) {
            c.problem(p, field, "a peer is the identity in the SAN URI of a gateway's client certificate: letters, digits, '.', '-', '_'");
            continue;
        }
        if let Some(hex) = &pin
            && (hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            c.problem(p, field, "write the SHA-256 of the peer's certificate as 64 hex digits (colons allowed), e.g. from `openssl x509 -in peer.pem -noout -fingerprint -sha256`");
            continue;
        }
        out.push(PeerConfig {
            id: id.clone(),
            sha256: pin,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::tests::problems_of;

    #[test]
    fn hop_names_are_labels_and_unique() {
        let p = problems_of("name = \"ndxp\"\nrole", "name = \"lgsp\"\nrole");
        assert_eq!(p[0].field, "hop[1].name");
        assert!(p[0].message.contains("unique"), "{p:?}");
        let p = problems_of("name = \"lgsp\"\n# \"lgsp\"", "name = \"l g\"\n# \"lgsp\"");
        assert_eq!(p[0].field, "hop[0].name");
    }

    #[test]
    fn http_limits_are_bounded() {
        let p = problems_of("max_header_bytes = 65536", "max_header_bytes = 10");
        assert_eq!(p[0].field, "hop[0].http.max_header_bytes");
        assert!(p[0].message.contains("between 1024 and 1048576"), "{p:?}");
        let p = problems_of("max_connections = 10000", "max_connections = 0");
        assert_eq!(p[0].field, "hop[0].http.max_connections");
        // One identity's share never exceeds the listener; one address's handshakes never exceed all of them.
        let p = problems_of("max_connections = 10000", "max_connections = 50");
        assert_eq!(p[0].field, "hop[0].http.max_connections_per_agency");
        assert!(p[0].message.contains("between 1 and 50"), "{p:?}");
        let p = problems_of(
            "max_handshakes_per_address = 32",
            "max_handshakes_per_address = 500",
        );
        assert_eq!(p[0].field, "hop[0].http.max_handshakes_per_address");
        let p = problems_of("idle_timeout = \"60s\"", "idle_timeout = \"2h\"");
        assert_eq!(p[0].field, "hop[0].http.idle_timeout");
        assert!(p[0].message.contains("between 100ms and 1h"), "{p:?}");
        let p = problems_of(
            "body_read_timeout = \"60s\"",
            "body_read_timeout = \"a minute\"",
        );
        assert_eq!(p[0].field, "hop[0].http.body_read_timeout");
    }

    #[test]
    fn stripped_headers_default_to_the_spoofable_ones_and_never_name_the_gateways_own() {
        let c = crate::parse(crate::EMBEDDED, "t.toml", std::path::Path::new(".")).unwrap();
        assert!(
            c.hops[0]
                .strip_headers
                .iter()
                .any(|h| h == "x-forwarded-for")
        );
        assert!(c.hops[0].strip_headers.iter().any(|h| h == "cookie"));
        let p = problems_of(
            "peers = [\"LGSP-DEV\"]",
            "peers = [\"LGSP-DEV\"]\nstrip_headers = [\"X-Debug\", \"x-api-key\", \"bad header\"]",
        );
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].message.contains("read by the gateway itself"), "{p:?}");
        assert!(p[1].message.contains("not a header name"), "{p:?}");
        assert_eq!(p[0].field, "hop[1].strip_headers");
    }

    #[test]
    fn upstream_connections_default_to_a_capped_http1_pool() {
        use super::{UpstreamConfig, UpstreamProtocol};
        let c = crate::parse(crate::EMBEDDED, "t.toml", std::path::Path::new(".")).unwrap();
        // The LGSP hop writes the defaults out; the NDXP hop writes nothing.
        assert_eq!(c.hops[0].upstream, UpstreamConfig::default());
        assert_eq!(c.hops[1].upstream, UpstreamConfig::default());
        assert_eq!(
            (
                c.hops[0].upstream.protocol,
                c.hops[0].upstream.max_connections
            ),
            (UpstreamProtocol::Http1, 64)
        );
        let text = crate::EMBEDDED.replacen("protocol = \"http1\"", "protocol = \"http2\"", 1);
        let c = crate::parse(&text, "t.toml", std::path::Path::new(".")).unwrap();
        assert_eq!(c.hops[0].upstream.protocol, UpstreamProtocol::Http2);
        let p = problems_of("protocol = \"http1\"", "protocol = \"h3\"");
        assert_eq!(p[0].field, "hop[0].upstream.protocol");
        assert!(p[0].message.contains("\"http1\" or \"http2\""), "{p:?}");
        let p = problems_of("max_connections = 64", "max_connections = 0");
        assert_eq!(p[0].field, "hop[0].upstream.max_connections");
        assert!(p[0].message.contains("between 1 and 100000"), "{p:?}");
    }

    #[test]
    fn http_defaults_hold_where_the_file_is_silent() {
        let c = crate::parse(crate::EMBEDDED, "t.toml", std::path::Path::new(".")).unwrap();
        // The NDXP hop writes no [hop.http]; the LGSP hop writes the defaults out.
        assert_eq!(c.hops[1].http, super::HttpConfig::default());
        assert_eq!(c.hops[0].http, super::HttpConfig::default());
    }

    #[test]
    fn peers_may_be_pinned_to_a_certificate() {
        let text = crate::EMBEDDED.replacen(
            "peers = [\"LGSP-DEV\"]",
            &format!(
                "peers = [\"LGSP-A\", {{ id = \"LGSP-DEV\", sha256 = \"{}\" }}]",
                ["AB"; 32].join(":")
            ),
            1,
        );
        let c = crate::parse(&text, "t.toml", std::path::Path::new(".")).unwrap();
        let peers = &c.hops[1].peers;
        assert_eq!(
            peers[0],
            super::PeerConfig {
                id: "LGSP-A".into(),
                sha256: None
            }
        );
        assert_eq!(peers[1].sha256.as_deref(), Some("ab".repeat(32).as_str()));
        let p = problems_of(
            "peers = [\"LGSP-DEV\"]",
            "peers = [{ id = \"LGSP-DEV\", sha256 = \"xyz\" }]",
        );
        assert_eq!(p[0].field, "hop[1].peers");
        assert!(p[0].message.contains("64 hex digits"), "{p:?}");
    }

    #[test]
    fn peers_and_route_names() {
        let p = problems_of("peers = [\"LGSP-DEV\"]", "peers = [\"LGSP DEV\"]");
        assert_eq!(p[0].field, "hop[1].peers");
        let p = problems_of(
            "name = \"BienChe\"\nmethods = [\"POST\"]\nprefix = \"/lgsp",
            "name = \"HoSoCBCCVC\"\nmethods = [\"POST\"]\nprefix = \"/lgsp",
        );
        assert_eq!(p[0].field, "hop[0].route[1].name");
    }

    #[test]
    fn proxy_protocol_sources_are_networks() {
        let (v4, len) = super::cidr("10.10.0.0/24").expect("network");
        assert_eq!(len, 24);
        assert!(super::within("10.10.0.77".parse().unwrap(), v4, len));
        assert!(!super::within("10.10.1.1".parse().unwrap(), v4, len));
        // An IPv4-mapped IPv6 peer address is its IPv4 one; a bare address is all its bits.
        assert!(super::within("::ffff:10.10.0.5".parse().unwrap(), v4, len));
        let (one, bits) = super::cidr("127.0.0.1").expect("address");
        assert_eq!(bits, 32);
        assert!(!super::within("127.0.0.2".parse().unwrap(), one, bits));
        assert!(super::cidr("10.0.0.0/33").is_none() && super::cidr("lb.example").is_none());
        let (v6, len6) = super::cidr("2001:db8::/32").expect("v6");
        assert!(super::within("2001:db8:1::1".parse().unwrap(), v6, len6));
    }
}
