//! What every layer of one hop knows about the hop itself: its name, the peer gateways it trusts, and its metric
//! handles that do not depend on the request.

use std::sync::Arc;

use lgsp_config::PeerConfig;
use lgsp_metrics::{Metrics, RouteMetrics, UNKNOWN};
use lgsp_tls::{PeerIdentity, Peers};
use prometheus::IntCounter;

#[derive(Debug)]
pub struct HopContext {
    pub name: Arc<str>,
    pub peers: Peers,
    pub metrics: Arc<Metrics>,
    /// The handles of requests that match no route.
    pub unknown_route: Arc<RouteMetrics>,
    /// The handles of the token endpoint.
    pub token_route: Arc<RouteMetrics>,
    /// `lgsp_load_shed_total{hop, scope}` for scope `global` and `agency`.
    pub shed_global: IntCounter,
    pub shed_agency: IntCounter,
    /// Request headers removed before any layer reads them (`strip_headers`).
    pub strip: Vec<http::HeaderName>,
}

impl HopContext {
    pub fn new(name: &str, peers: &[PeerConfig], metrics: Arc<Metrics>) -> HopContext {
        HopContext {
            name: Arc::from(name),
            peers: Peers::new(peers),
            unknown_route: metrics.route(name, UNKNOWN),
            token_route: metrics.route(name, "token"),
            shed_global: metrics.load_shed.with_label_values(&[name, "global"]),
            shed_agency: metrics.load_shed.with_label_values(&[name, "agency"]),
            metrics,
            strip: headers_named(lgsp_config::defaults::STRIP_HEADERS.iter().copied()),
        }
    }

    /// This hop, removing `names` (the config's `strip_headers`) instead of the default list.
    pub fn stripping<'a>(mut self, names: impl IntoIterator<Item = &'a str>) -> HopContext {
        self.strip = headers_named(names);
        self
    }

    /// Whether the connection's certificate is one of the gateways this hop trusts to relay.
    pub fn is_peer(&self, identity: Option<&PeerIdentity>) -> bool {
        identity.is_some_and(|p| self.peers.admits(p))
    }
}

fn headers_named<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<http::HeaderName> {
    names
        .into_iter()
        .filter_map(|n| http::HeaderName::from_bytes(n.as_bytes()).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{identity, metrics};

    #[test]
    fn peers_are_known_by_their_certificate_identity() {
        let peers = [PeerConfig {
            id: "LGSP-DEV".into(),
            sha256: None,
        }];
        let hop = HopContext::new("ndxp", &peers, metrics());
        assert!(hop.is_peer(Some(&identity("LGSP-DEV"))));
        assert!(!hop.is_peer(Some(&identity("000.00.00.H29"))));
        assert!(!hop.is_peer(None));
        assert_eq!(
            (&*hop.unknown_route.name, &*hop.token_route.name),
            ("unknown", "token")
        );
    }
}
