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
use crate::file::{FileHop, FilePeer, HopRole};
use crate::parse::valid_identity;

#[derive(Debug, Clone)]
pub struct HopConfig {
    pub name: String,
    pub role: HopRole,
    pub listen: SocketAddr,
    pub tls: ServerTlsConfig,
    pub upstream_tls: ClientTlsConfig,
    pub peers: Vec<PeerConfig>,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_connections: usize,
    pub routes: Vec<RouteConfig>,
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
        header_read_timeout: c.duration(
            h.http.header_read_timeout.as_ref(),
            &format!("{field}.http.header_read_timeout"),
            defaults::HEADER_READ_TIMEOUT,
        ),
        max_header_bytes: c.bounded(
            h.http.max_header_bytes.as_ref(),
            &format!("{field}.http.max_header_bytes"),
            defaults::MAX_HEADER_BYTES,
            &defaults::MAX_HEADER_BYTES_RANGE,
        ),
        max_connections: c.bounded(
            h.http.max_connections.as_ref(),
            &format!("{field}.http.max_connections"),
            defaults::MAX_CONNECTIONS,
            &defaults::MAX_CONNECTIONS_RANGE,
        ),
        routes,
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
}
