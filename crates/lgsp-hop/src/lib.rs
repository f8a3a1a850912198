//! What every layer of a hop shares, below the way out (lgsp-upstream), the delivery core (lgsp-delivery) and the
//! listeners and stack (lgsp-proxy): the body type and its bounded reads, the hop headers, the hop itself
//! ([`HopContext`]), routes and the route table, the step a layer hands a request to, the packet check's error,
//! and the error edge that turns any failure into problem+json.
#![forbid(unsafe_code)]

pub mod body;
pub mod edge;
pub mod headers;
pub mod hop;
pub mod packet;
pub mod route;
pub mod step;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use hop::HopContext;
pub use route::{Route, RouteError, RouteLayer, RouteTable};
pub use step::{Answer, Next, Step, unnamed};

/// Resolves once a shutdown flag is set (or its sender is gone): every background loop of a hop stops on it.
pub async fn stopped(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}
