//! The label values one request ends up with, filled in by the layer that learns each.

use std::sync::{Arc, OnceLock};

use prometheus::Histogram;

/// The one label value for anything not known to the config (unknown agencies, unmatched routes), so label
/// cardinality stays bounded whatever clients send.
pub const UNKNOWN: &str = "unknown";

/// A route's metric handles, looked up once when the route is loaded (not per request).
#[derive(Debug)]
pub struct RouteMetrics {
    /// The `route` label: the configured name, `token`, or `unknown`.
    pub name: Arc<str>,
    /// `lgsp_request_duration_seconds{hop, route}`.
    pub duration: Histogram,
}

/// Shared between the outer observing layer (which reads it when the response is ready) and the inner layers
/// (which set the route once matched and the agency once authenticated). Travels as a request extension.
#[derive(Debug, Default, Clone)]
pub struct RequestLabels(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    route: OnceLock<Arc<RouteMetrics>>,
    agency: OnceLock<Arc<str>>,
    mode: OnceLock<&'static str>,
}

impl RequestLabels {
    /// Records the matched route (its name and handles).
    pub fn set_route(&self, route: Arc<RouteMetrics>) {
        let _ = self.0.route.set(route);
    }

    /// Records the caller's agency; pass only codes the config knows (the caller guarantees boundedness).
    pub fn set_agency(&self, agency: Arc<str>) {
        let _ = self.0.agency.set(agency);
    }

    /// Records the mode (`trial` | `production`) of the authenticated key.
    pub fn set_mode(&self, mode: &'static str) {
        let _ = self.0.mode.set(mode);
    }

    pub fn mode(&self) -> &'static str {
        self.0.mode.get().copied().unwrap_or(UNKNOWN)
    }

    pub fn route(&self) -> &str {
        self.0.route.get().map_or(UNKNOWN, |r| &r.name)
    }

    /// The matched route's handles, once a layer set them.
    pub fn route_metrics(&self) -> Option<&Arc<RouteMetrics>> {
        self.0.route.get()
    }

    pub fn agency(&self) -> &str {
        self.0.agency.get().map_or(UNKNOWN, |a| a)
    }
}
