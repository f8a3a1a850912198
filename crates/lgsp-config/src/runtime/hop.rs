//! `[[hop]]`: one mTLS listener with its TLS, its upstream identity, the peers it trusts, its HTTP limits and its
//! routes.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use super::check::Checker;
use super::defaults;
use super::route::{RouteConfig, route};
use super::tls::{ClientTlsConfig, ServerTlsConfig, client_tls, server_tls};
use crate::file::{FileHop, HopRole};
use crate::parse::valid_identity;

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
    let mut peers = Vec::new();
    for p in &h.peers {
        if valid_identity(p.get_ref()) {
            peers.push(p.get_ref().clone());
        } else {
            c.problem(p, format!("{field}.peers"), "a peer is the identity in a gateway's client certificate: letters, digits, '.', '-', '_'");
        }
    }
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
