//! The proxy: TLS listeners, the tower stack of a hop (observe → token → auth → route → limit → validate →
//! forward), the upstream client, hop headers and the error edge; [`prepare`] turns a config into everything a
//! gateway serves with, and [`Gateway`] starts every listener of it.
#![forbid(unsafe_code)]

pub mod body;
pub mod confirm;
mod connect;
mod connection;
pub mod consume;
pub mod coverage;
pub mod edge;
mod forward;
mod gateway;
pub mod headers;
mod hop;
pub mod inbox;
pub mod journal;
pub mod judge;
pub mod limit;
mod listener;
pub mod messages;
mod observe;
pub mod outbox;
mod prepare;
pub mod proxy_protocol;
pub mod publish;
mod route;
mod stack;
mod step;
#[cfg(test)]
mod testing;
pub mod token;
pub mod validate;

pub use connect::{Reach, connect};
pub use connection::{BodyTimeout, Retired, TooManyConnections};
pub use forward::{
    Forward, ForwardError, UpstreamClient, UpstreamFailure, upstream_client, upstream_uri,
};
pub use gateway::{Bound, Gateway, Reloader, StartError, journal_settings};
pub use hop::HopContext;
pub use lgsp_tls::ClientAddr;
pub use listener::{
    KnowsIdentity, ListenerSpec, ListenerState, LiveState, serve_connection, spawn_tls_listener,
};
pub use observe::{HopHeaderError, ObserveLayer};
pub use outbox::DeliveryTarget;
pub use prepare::{Prepared, PreparedHop, prepare, signing_policy};
pub use route::{Route, RouteError, RouteLayer, RouteTable};
pub use stack::{HopParts, HopService, hop_stack};
pub use step::Step;
